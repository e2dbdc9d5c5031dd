"""Forwarding relayed packets (type 5; docs/protocol.md section 7), sans-IO: the one
forwarder that a lighthouse and a node with `[relay] enabled = true` both use.

    type 5 · version · 0 0 · relay id u32 LE · inner datagram (forwarded blind)

The id is a lease block: `(subnet address - network address) >> 8`. Sender -> relay,
it names the target; relay -> target, the relay has rewritten it to the sender's, so
the target knows whom to answer (through the same relay).

The owner says who may use it (`sender`: the relay id of the node allowed to send
from an address, else None) and where a block's node is reached (`target`). Both
look-ups are the owner's existing tables (a lighthouse's registry, an engine's peer
table): the forwarder keeps no table of its own, only counters. Nothing is
decrypted; handshakes inside were rate-limited per sender address by the data path
before they got here (engine/crypto/csrc/outside.c).
"""
from __future__ import annotations

import struct
from typing import Callable

from flatnet.engine.proto import endpoint as endpoints_policy
from flatnet.engine.proto.constants import TYPE_RELAYED, WIRE_VERSION
from flatnet.engine.proto.errors import RemoteProtocolError

Endpoint = tuple[str, int]
HEADER = 8
_HEADER = struct.Struct("<BBHI")


def wrap(relay_id: int, packet: bytes) -> bytes:
    """`packet` for the node `relay_id` names, to send to a relay."""
    return _HEADER.pack(TYPE_RELAYED, WIRE_VERSION, 0, relay_id) + packet


class Forwarder:
    def __init__(self, sender: Callable[[Endpoint, float], int | None],
                 target: Callable[[int], Endpoint | None]) -> None:
        """sender(src, now): the relay id (lease block) of the node that may relay
        from address `src` now, or None; target(block): the address of the node
        holding lease block `block`, or None when it may not be relayed to."""
        self.sender = sender
        self.target = target
        self.relayed = 0        # packets forwarded
        self.relayed_bytes = 0

    def forward(self, packet: bytes, src: Endpoint, now: float) -> tuple[bytes, Endpoint]:
        """(the packet to send, where), or RemoteProtocolError with the reason to count:
        `short`, `relay_refused` (the sender may not relay here) or
        `relay_unknown_target` (no node to forward to, or the sender itself)."""
        if len(packet) <= HEADER:
            raise RemoteProtocolError("short", "relayed packet")
        sender = self.sender(src, now)
        if sender is None:
            raise RemoteProtocolError("relay_refused", f"{endpoints_policy.text(src)} is not a registered node")
        block = int.from_bytes(packet[4:8], "little")
        dest = self.target(block) if block != sender else None
        if dest is None or dest == src:
            raise RemoteProtocolError("relay_unknown_target", str(block))
        self.relayed += 1
        self.relayed_bytes += len(packet)
        return packet[:4] + sender.to_bytes(4, "little") + packet[8:], dest
