"""What the control plane (engine/device.py) needs of a data path, without the data path.

engine/datapath.py is the real one: it loads the compiled C module at import.
tests/harness/fakedp.py is a fake for tests without root, threads or C. Both satisfy
`DataPathPort`; the Device takes either at construction and imports only this file.

The numbers below are the C header's (engine/crypto/csrc/fastpath.h: FN_CTRL_*,
FN_RX_SLOTS); engine/datapath.py checks at import that they still agree.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# the kinds of ControlItem the data path hands up
CTRL_RAW = 0        # a handshake or relayed packet, as received
CTRL_DECRYPTED = 1  # a control message (type 4), opened: data is its payload
CTRL_ROAM = 2       # an authenticated packet from a new source (data: b"" or the relay id)
CTRL_VERSION = 3    # a handshake of another protocol version: data is its first 4 bytes
CTRL_FORWARD = 4    # relay mode: a type-5 packet for another node, whole, to forward
# DataPath.set_relay_mode: type 5 received (an engine); all forwarded (a lighthouse);
# forwarded unless addressed to this node (an engine with [relay] enabled = true)
RELAY_OFF, RELAY_ALL, RELAY_OTHERS = 0, 1, 2
RX_SLOTS = 4096     # receiver-index slots of the default data path (a power of two)


@dataclass(frozen=True)
class PeerStats:
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    rx_dropped: int
    last_tx: float | None  # monotonic seconds, as time.monotonic()
    last_rx: float | None
    tx_counter: int
    has_keys: bool


class ControlItem(NamedTuple):
    """What the data path hands up (a NamedTuple: one is made per control message, and a
    frozen dataclass costs twice as much to build)."""

    kind: int
    peer: int
    data: bytes
    addr: tuple[str, int] | None


class DataPathPort(Protocol):
    """The calls the Device makes. `rx_slots` (optional attribute) overrides RX_SLOTS."""

    def set_identity(self, static_public: bytes) -> None: ...
    def set_peer(self, slot: int, subnet: ipaddress.IPv4Network | None) -> None: ...
    def set_peer_groups(self, slot: int, bits: int) -> None: ...
    def remove_peer(self, slot: int) -> None: ...
    def route_unpend(self, route: int) -> None: ...
    def set_endpoint(self, slot: int, addr: tuple[str, int]) -> None: ...
    def set_relay(self, slot: int, relay_id: int | None) -> None: ...
    # cipher: the session's transport cipher, an engine.proto.constants AEAD_* name
    def set_tx_key(self, slot: int, key: bytes, remote_index: int, cipher: str = ...) -> None: ...
    def stage_tx_key(self, slot: int, key: bytes, remote_index: int, local_index: int,
                     cipher: str = ...) -> None: ...
    def clear_tx_key(self, slot: int) -> None: ...
    def clear_want(self, slot: int) -> None: ...
    def add_rx(self, local_index: int, slot: int, key: bytes, cipher: str = ...) -> None: ...
    def remove_rx(self, local_index: int) -> None: ...
    def stats(self, slot: int) -> PeerStats: ...
    def seal_control(self, slot: int, payload: bytes) -> bytes | None: ...
