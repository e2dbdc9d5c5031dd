"""The control plane of one host: peers, their sessions, the receiver-index table, and
the demultiplexing of what the data path hands up.

No sockets or clocks here: the driver passes `now` and gives a `send(packet, addr)`
function and the DataPath (or a fake of it) at construction.
"""
from __future__ import annotations

import collections
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Callable

from engine.datapath import CTRL_DECRYPTED, CTRL_RAW, CTRL_ROAM, RX_SLOTS, ControlItem
from engine.log import Logger
from engine.proto import cert as certs
from engine.proto import handshake as hsm
from engine.proto.constants import TYPE_INITIATION, TYPE_RELAYED, TYPE_RESPONSE
from engine.proto.errors import RemoteProtocolError
from engine.proto.session import (HandshakeFailed, KeysExpired, KeysInstalled, PeerSession,
                                  SendKeepalive, State)


@dataclass
class Peer:
    name: str
    slot: int
    subnet: ipaddress.IPv4Network | None
    cert: certs.Certificate
    endpoints: list[tuple[str, int]]
    session: PeerSession
    endpoint: tuple[str, int] | None = None  # where data goes now (last authenticated source)
    handshake_failures: int = 0
    last_error: str = ""
    extra: dict = field(default_factory=dict)


class IndexTable:
    """Receiver indexes: random 32-bit values whose low bits name a free C rx slot."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.owner: dict[int, str] = {}
        self.slots_used: set[int] = set()

    def allocate(self, owner: str) -> int:
        if len(self.slots_used) >= RX_SLOTS - 1:
            raise RuntimeError("receiver index table full")
        while True:
            slot = self.rng.randrange(1, RX_SLOTS)
            if slot not in self.slots_used:
                break
        index = (self.rng.getrandbits(32 - RX_SLOTS.bit_length() + 1) * RX_SLOTS + slot) & 0xFFFFFFFF
        index = index or slot
        self.slots_used.add(slot)
        self.owner[index] = owner
        return index

    def release(self, index: int) -> None:
        if self.owner.pop(index, None) is not None:
            self.slots_used.discard(index % RX_SLOTS)


class Device:
    def __init__(self, me: hsm.Identity, datapath, send: Callable[[bytes, tuple[str, int]], None],  # noqa: ANN001
                 wall_ns: Callable[[], int], log: Logger, rng: random.Random | None = None,
                 accept_any: bool = False) -> None:
        """accept_any: take handshakes from any node the CA certified (peers found through
        a lighthouse), not only the configured ones; such a peer starts with no subnet.
        Hooks the owner may set: on_message(peer, data, addr, now) for decrypted control
        messages, on_unknown_route(route, now) for packets to an overlay /24 nobody owns,
        on_new_peer(peer, now) when an unknown node connected."""
        self.me = me
        self.accept_any = accept_any
        self.on_message: Callable[[Peer, bytes, tuple[str, int], float], None] | None = None
        self.on_unknown_route: Callable[[int, float], None] | None = None
        self.on_new_peer: Callable[[Peer, float], None] | None = None
        self.dp = datapath
        self.send = send
        self.wall_ns = wall_ns
        self.log = log
        self.indexes = IndexTable(rng or random.SystemRandom())
        self.peers: dict[str, Peer] = {}
        self.by_slot: dict[int, Peer] = {}
        self.errors: collections.Counter[str] = collections.Counter()

    # ---- membership
    def add_peer(self, cert: certs.Certificate, subnet: ipaddress.IPv4Network | None,
                 endpoints: list[tuple[str, int]]) -> Peer:
        if cert.name in self.peers:
            raise ValueError(f"peer {cert.name} already known")
        slot = next(i for i in range(1, 1 << 30) if i not in self.by_slot)
        session = PeerSession(self.me, cert.name, cert.key, lambda n=cert.name: self.indexes.allocate(n),
                              self.indexes.release, self.wall_ns)
        peer = Peer(cert.name, slot, subnet, cert, list(endpoints), session)
        self.peers[peer.name] = peer
        self.by_slot[slot] = peer
        self.dp.set_peer(slot, subnet)
        if endpoints:
            self._set_endpoint(peer, endpoints[0])
        return peer

    def set_subnet(self, peer: Peer, subnet: ipaddress.IPv4Network) -> None:
        if peer.subnet != subnet:
            peer.subnet = subnet
            self.dp.set_peer(peer.slot, subnet)

    def set_endpoints(self, peer: Peer, endpoints: list[tuple[str, int]]) -> None:
        peer.endpoints = list(endpoints)
        if peer.endpoint is None and endpoints:
            self._set_endpoint(peer, endpoints[0])

    def send_message(self, peer: Peer, data: bytes) -> bool:
        """A control message (type 4) to a peer with keys; False if there are none yet."""
        packet = self.dp.seal_control(peer.slot, data)
        if packet is None or peer.endpoint is None:
            return False
        self.send(packet, peer.endpoint)
        return True

    def connect(self, peer: Peer, now: float) -> None:
        """Start a handshake now (to every candidate endpoint) unless keys exist."""
        peer.session.want_keys(now)
        self._apply(peer)

    def rehandshake(self, peer: Peer, now: float) -> None:
        peer.session.rehandshake(now)
        self._apply(peer)

    def remove_peer(self, name: str) -> None:
        peer = self.peers.pop(name)
        del self.by_slot[peer.slot]
        peer.session.close()
        self._apply(peer)
        self.dp.remove_peer(peer.slot)

    def _set_endpoint(self, peer: Peer, addr: tuple[str, int]) -> None:
        if peer.endpoint != addr:
            if peer.endpoint is not None:
                self.log.info("peer_endpoint", peer=peer.name, old=f"{peer.endpoint[0]}:{peer.endpoint[1]}",
                              new=f"{addr[0]}:{addr[1]}")
            peer.endpoint = addr
            self.dp.set_endpoint(peer.slot, addr)

    # ---- inputs from the data path
    def on_want(self, slots: list[int], now: float) -> None:
        for slot in slots:
            if slot < 0:  # an overlay /24 without an owner: -(route index + 1)
                if self.on_unknown_route is not None:
                    self.on_unknown_route(-slot - 1, now)
                else:
                    self.dp.route_unpend(-slot - 1)
                continue
            peer = self.by_slot.get(slot)
            if peer is None:
                continue
            self.dp.clear_want(slot)  # the next packet without keys reports again
            peer.session.want_keys(now)
            self._apply(peer)

    def on_control(self, items: list[ControlItem], now: float) -> None:
        for item in items:
            try:
                self._control(item, now)
            except RemoteProtocolError as exc:
                self.errors[exc.reason] += 1
                self.log.debug("packet_dropped", reason=exc.reason, detail=str(exc),
                               src=f"{item.addr[0]}:{item.addr[1]}" if item.addr else "-")

    def _control(self, item: ControlItem, now: float) -> None:
        if item.kind == CTRL_ROAM:
            peer = self.by_slot.get(item.peer)
            if peer is not None and item.addr is not None:
                self._set_endpoint(peer, item.addr)
            return
        if item.kind == CTRL_DECRYPTED:
            peer = self.by_slot.get(item.peer)
            if peer is None or self.on_message is None or item.addr is None:
                self.errors["control_unhandled"] += 1
                return
            self.on_message(peer, item.data, item.addr, now)
            return
        assert item.kind == CTRL_RAW and item.addr is not None
        kind = item.data[0]
        if kind == TYPE_INITIATION:
            init = hsm.consume_initiation(self.me, item.data, self.wall_ns() / 1e9)
            peer = self.peers.get(init.peer.name)
            if peer is None and self.accept_any and init.peer.name != self.me.cert.name:
                peer = self.add_peer(init.peer, None, [item.addr])
                if self.on_new_peer is not None:
                    self.on_new_peer(peer, now)
            if peer is None:
                raise RemoteProtocolError("unknown_peer", init.peer.name)
            if init.peer.key != peer.cert.key:
                raise RemoteProtocolError("bad_cert", f"{init.peer.name} presented another key")
            peer.session.receive_initiation(init, item.addr, now)
            self._set_endpoint(peer, item.addr)
            self._apply(peer)
        elif kind == TYPE_RESPONSE:
            _, receiver = hsm.response_indexes(item.data)
            owner = self.indexes.owner.get(receiver)
            peer = self.peers.get(owner) if owner else None
            if peer is None:
                raise RemoteProtocolError("unexpected_response", "unknown receiver index")
            peer.session.receive_response(item.data, now)
            self._set_endpoint(peer, item.addr)
            self._apply(peer)
        elif kind == TYPE_RELAYED:
            raise RemoteProtocolError("relay_unsupported", "relaying comes with the lighthouse")
        else:
            raise RemoteProtocolError("unknown_type", str(kind))

    # ---- timers
    def handle_timer(self, now: float) -> None:
        for peer in self.peers.values():
            st = self.dp.stats(peer.slot)
            peer.session.note_traffic(st.last_tx, st.last_rx)
            peer.session.handle_timer(now)
            self._apply(peer)

    def get_timer(self) -> float | None:
        deadlines = [t for p in self.peers.values() if (t := p.session.get_timer()) is not None]
        return min(deadlines) if deadlines else None

    def start_all(self, now: float) -> None:
        """Handshake every known peer at start, so a restarted engine is reachable at once."""
        for peer in self.peers.values():
            if peer.session.state is State.IDLE:
                peer.session.want_keys(now)
                self._apply(peer)

    # ---- outputs of a session, applied to the data path and the wire
    def _apply(self, peer: Peer) -> None:
        s = peer.session
        for packet, addr in s.datagrams_to_send():
            targets = [addr] if addr is not None else ([peer.endpoint] if peer.endpoint else []) + [
                e for e in peer.endpoints if e != peer.endpoint]
            for target in targets:
                self.send(packet, target)
        while (event := s.next_event()) is not None:
            if isinstance(event, KeysInstalled):
                k = event.keys
                self.dp.add_rx(k.local_index, peer.slot, k.receive)
                self.dp.set_tx_key(peer.slot, k.send, k.remote_index)
                if event.retired_index is not None:
                    self.dp.remove_rx(event.retired_index)
                peer.handshake_failures = 0
                self.log.info("handshake_done", peer=peer.name, role="initiator" if k.initiator else "responder",
                              endpoint=f"{peer.endpoint[0]}:{peer.endpoint[1]}" if peer.endpoint else "-")
            elif isinstance(event, KeysExpired):
                for index in event.local_indexes:
                    self.dp.remove_rx(index)
                if s.current is None:
                    self.dp.clear_tx_key(peer.slot)
                self.log.info("keys_expired", peer=peer.name)
            elif isinstance(event, SendKeepalive):
                packet = self.dp.seal_control(peer.slot, b"")
                if packet and peer.endpoint:
                    self.send(packet, peer.endpoint)
            elif isinstance(event, HandshakeFailed):
                peer.handshake_failures += 1
                peer.last_error = event.reason
                self.log.warning("handshake_failed", peer=peer.name, reason=event.reason)

    # ---- reporting
    def peer_table(self, now: float) -> list[dict]:
        rows = []
        for peer in self.peers.values():
            st = self.dp.stats(peer.slot)
            s = peer.session
            rows.append({
                "name": peer.name, "subnet": str(peer.subnet) if peer.subnet else None,
                "endpoint": f"{peer.endpoint[0]}:{peer.endpoint[1]}" if peer.endpoint else None,
                "state": s.state.value, "path": "direct" if peer.endpoint else "none",
                "handshake_age": round(now - s.last_handshake, 1) if s.last_handshake is not None else None,
                "handshakes": s.handshakes, "rekeys": s.rekeys,
                "tx_bytes": st.tx_bytes, "rx_bytes": st.rx_bytes,
                "tx_packets": st.tx_packets, "rx_packets": st.rx_packets, "rx_dropped": st.rx_dropped,
                "last_error": peer.last_error or None,
                "cert_expires": peer.cert.not_after, "groups": list(peer.cert.groups),
            })
        return rows
