"""An engine that relays for others (`[relay] enabled = true`; docs/engine.md, "Relaying
for others"). No sockets or clocks here: the driver passes `send` and `now`.

The data path (RELAY_OTHERS) receives what is addressed to this node and hands up
the other type-5 packets; they go through the forwarder the lighthouse uses too
(engine.proto.relay), over this engine's own peer table:

- the sender must be a peer we hold a session with, sending from the direct endpoint
  an authenticated packet of it came from, whose /24 a lighthouse told us (a
  registered node) and whose certificate does not have the group `relay` (one hop
  only: a packet a relay forwarded is never forwarded again, so relays cannot bounce
  packets between them);
- the target is such a peer too, by its lease block, on a direct path (never through
  another relay).

The tables are the peer table's (bounded by its size); handshakes inside are
rate-limited per sender address by the data path, as at a lighthouse.
"""
from __future__ import annotations

import ipaddress
from typing import Callable

from flatnet.engine.device import RELAY_GROUP, Device, Peer
from flatnet.engine.proto import cert as certs
from flatnet.engine.proto import liveness
from flatnet.engine.proto import relay as relaying
from flatnet.engine.proto.errors import RemoteProtocolError

Endpoint = tuple[str, int]


def certificate_problem(config_path: str, cert_path: str, cert: certs.Certificate) -> str | None:
    """Why this node may not relay for others with this certificate, or None. Its peers
    take relayed packets only from a node certified with RELAY_GROUP (Device.relay_allowed):
    without it, what it forwards would be refused, so the engine does not start."""
    if RELAY_GROUP in cert.groups:
        return None
    return (f"{config_path}: relay.enabled = true needs a certificate with the group \"{RELAY_GROUP}\" "
            f"({cert_path} has {', '.join(cert.groups) or 'no groups'}); sign one with: "
            f"flatnet cert sign --name {cert.name} --groups {','.join(list(cert.groups) + [RELAY_GROUP])}")


class NodeRelay:
    def __init__(self, device: Device, network: ipaddress.IPv4Network,
                 send: Callable[[bytes, Endpoint], None]) -> None:
        self.device = device
        self.network = network
        self.send = send
        self.forwarder = relaying.Forwarder(self._sender, self._target)
        self.refused: dict[str, int] = {}  # reason -> packets not forwarded
        # per packet, blocks and subnets are plain ints: making (or hashing) an
        # IPv4Network costs microseconds
        self._base = int(network.network_address)
        self._blocks = 1 << (24 - network.prefixlen)
        device.on_relay = self.on_relay

    def _usable(self, peer: Peer | None) -> bool:
        """A registered node with keys, on a direct path an authenticated packet confirmed."""
        return (peer is not None and peer.session.current is not None and peer.relay is None
                and peer.direct_seen is not None and peer.subnet is not None and peer.subnet.prefixlen == 24
                and peer.name not in self.device.relay_names
                and peer.live.state is not liveness.PathState.UNREACHABLE)

    def _block(self, subnet: ipaddress.IPv4Network) -> int:
        return (int(subnet.network_address) - self._base) >> 8

    def _sender(self, src: Endpoint, now: float) -> int | None:
        peer = self.device.peer_at(src)
        if not self._usable(peer) or RELAY_GROUP in peer.cert.groups:  # type: ignore[union-attr]
            return None
        return self._block(peer.subnet)  # type: ignore[union-attr,arg-type]

    def _target(self, block: int) -> Endpoint | None:
        if not 0 < block < self._blocks:
            return None
        peer = self.device.peer_with_subnet(self._base + (block << 8), 24)
        return peer.endpoint if self._usable(peer) else None  # type: ignore[union-attr]

    def on_relay(self, data: bytes, addr: Endpoint, now: float) -> None:
        try:
            packet, dest = self.forwarder.forward(data, addr, now)
        except RemoteProtocolError as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            return
        self.send(packet, dest)

    def status(self) -> dict:
        return {"relayed": self.forwarder.relayed, "relayed_bytes": self.forwarder.relayed_bytes,
                "refused": dict(self.refused)}
