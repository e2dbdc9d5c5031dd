"""The control plane of one host: peers, their sessions, the receiver-index table, and
the demultiplexing of what the data path hands up.

No sockets or clocks here: the driver passes `now` and gives a `send(packet, addr)`
function and the data path at construction: engine.datapath.DataPath, or a fake
(tests/harness/fakedp.py). This file imports only its interface
(engine/datapath_port.py), never the compiled C module (tests/unit/test_import_graph.py).
"""
from __future__ import annotations

import collections
import errno
import heapq
import ipaddress
import random
import struct
from dataclasses import dataclass, field
from typing import Callable

from flatnet.engine.datapath_port import (CTRL_DECRYPTED, CTRL_FORWARD, CTRL_RAW, CTRL_ROAM, CTRL_VERSION, RX_SLOTS,
                                          ControlItem, DataPathPort)
from flatnet.engine.log import Logger
from flatnet.engine.proto import cert as certs
from flatnet.engine.proto import endpoint as endpoints_policy
from flatnet.engine.proto import cookie as cookies
from flatnet.engine.proto import handshake
from flatnet.engine.proto import liveness
from flatnet.engine.proto import relay as relaying
from flatnet.engine.proto.constants import TYPE_COOKIE, TYPE_INITIATION, TYPE_RELAYED, TYPE_RESPONSE, WIRE_VERSION
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.session import (HandshakeFailed, KeysExpired, KeysInstalled, PeerSession,
                                  SendKeepalive, State)

# A node whose certificate has this group may relay (send us type-5 packets that move
# a peer's path to it); lighthouses the engine was configured with may always.
RELAY_GROUP = "relay"
# A relayed packet does not take a peer off a direct path that an authenticated direct
# packet confirmed this recently: with relay first, both copies of a handshake arrive,
# and the relayed one must not undo the direct path the other just found.
DIRECT_HOLD = 3.0


@dataclass
class Peer:
    name: str
    slot: int
    subnet: ipaddress.IPv4Network | None
    # the certificate of the current session's handshake (verified; its groups are the
    # firewall's); before the first handshake, the configured or lighthouse-given one
    cert: certs.Certificate
    endpoints: list[tuple[str, int]]
    session: PeerSession
    endpoint: tuple[str, int] | None = None  # where data goes now (last authenticated source)
    handshake_failures: int = 0
    last_error: str = ""
    relay: tuple[tuple[str, int], int] | None = None  # (relay address, the peer's id there)
    path_reason: str = ""
    direct_seen: float | None = None  # when an authenticated packet last moved us to / kept a direct path
    # the addresses a lighthouse said are the peer's own (not its NAT's); None for a
    # configured peer. path_of() tells a LAN path from a punched one by them
    own_endpoints: list[tuple[str, int]] | None = None
    live: liveness.Liveness = field(default_factory=liveness.Liveness)
    due: float = 0.0  # without path judging, handle_timer skips the peer until then


class IndexTable:
    """Receiver indexes: random 32-bit values whose low bits name a free C rx slot.

    The lowest free slot is taken, not a random one: the C table is 4096 slots of
    ~560 bytes, and a random slot per handshake would touch a new page each time
    until all 2.3 MB are resident (RSS growing with every peer restart). Lowest
    first keeps the touched part as small as the number of live sessions."""

    def __init__(self, rng: random.Random, slots: int = RX_SLOTS) -> None:
        self.rng = rng
        self.slots = slots  # the data path's (DataPath.rx_slots), a power of two
        self.owner: dict[int, str] = {}
        self.free = list(range(1, slots))  # a heap; slot 0 is never used (index 0 means none)

    def allocate(self, owner: str) -> int:
        if not self.free:
            raise RuntimeError("receiver index table full")
        slot = heapq.heappop(self.free)
        index = (self.rng.getrandbits(32 - self.slots.bit_length() + 1) * self.slots + slot) & 0xFFFFFFFF
        index = index or slot
        self.owner[index] = owner
        return index

    def release(self, index: int) -> None:
        if self.owner.pop(index, None) is not None:
            heapq.heappush(self.free, index % self.slots)


class Device:
    def __init__(self, me: handshake.Identity, datapath: DataPathPort, send: Callable[[bytes, tuple[str, int]], None],
                 wall_ns: Callable[[], int], log: Logger, rng: random.Random | None = None,
                 accept_any: bool = False, dead_after: float = liveness.DEAD_AFTER, judge_paths: bool = True) -> None:
        """accept_any: take handshakes from any node the CA certified (peers found through
        a lighthouse), not only the configured ones; such a peer starts with no subnet.
        judge_paths: probe a path that does not answer what we sent (engine.proto.liveness).
        A lighthouse passes False: what it sends are answers (a lease, a peer, a punch),
        which nobody answers in turn, so a probe would follow every query it served (a
        handshake per answer: with 10,000 nodes a storm that starved the queries); each
        node watches its own path to the lighthouse and moves away when it dies.
        Hooks the owner may set: on_relay(data, addr, now) for type-5 packets the data
        path hands up to be forwarded (CTRL_FORWARD: a relay), on_message(peer, data, addr, now) for decrypted control
        messages, on_unknown_route(route, now) for packets to an overlay /24 nobody owns,
        on_new_peer(peer, now) when an unknown node connected, on_path_dead(peer, now)
        when the peer's path stopped answering (engine.proto.liveness; the owner may
        move it to a relay), on_idle(peer, now) (judge_paths False only) when a timer
        left the peer's session with no keys and no handshake out: it is not looked at
        again until something changes it (a lighthouse forgets such a node unless it is
        registered)."""
        self.me = me
        self.accept_any = accept_any
        self.on_message: Callable[[Peer, bytes, tuple[str, int], float], None] | None = None
        self.on_unknown_route: Callable[[int, float], None] | None = None
        self.on_new_peer: Callable[[Peer, float], None] | None = None
        self.on_relay: Callable[[bytes, tuple[str, int], float], None] | None = None
        self.on_path_dead: Callable[[Peer, float], None] | None = None
        self.on_idle: Callable[[Peer, float], None] | None = None
        self.dead_after = dead_after
        self.judge_paths = judge_paths
        self.group_bits: dict[str, int] = {}  # certificate group -> firewall bit (engine.firewall)
        self.relay_names: set[str] = set()  # peers that may relay whatever their groups (lighthouses)
        # a relay's side of the TCP relay (lighthouse.tcp_relay): the loopback addresses of
        # open connections, endpoints although loopback. An engine's own TCP relay is a
        # candidate endpoint of its lighthouse instead; tcp_labels: what `flatnet peers` says
        self.shim_addrs: set[tuple[str, int]] = set()
        self.tcp_labels: dict[tuple[str, int], str] = {}
        self._relay_certified: set[str] = set()  # peers whose certificate has RELAY_GROUP
        # look-ups for relaying for others (engine.relay_node): a direct endpoint and an
        # overlay subnet -> the peer's name; checked against the peer on use
        self._at: dict[tuple[str, int], str] = {}
        self._by_subnet: dict[int, str] = {}  # keyed by the subnet's address as an int: cheap to hash
        self.dp = datapath
        self.send = send
        self.wall_ns = wall_ns
        self.log = log
        slots = getattr(datapath, "rx_slots", RX_SLOTS)  # a lighthouse's data path has more (DataPath)
        self.rng = rng or random.SystemRandom()  # receiver indexes, the sessions' rekey jitter
        self.indexes = IndexTable(self.rng, slots if isinstance(slots, int) else RX_SLOTS)
        self.peers: dict[str, Peer] = {}
        self.by_slot: dict[int, Peer] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        # what happened to sessions, all peers together (a lighthouse's status): handshakes
        # finished (as initiator / responder), sessions left without keys (their keys
        # expired and no handshake replaced them), handshakes given up, peers removed
        self.session_counts: collections.Counter[str] = collections.Counter()
        self.pinned: set[str] = set()      # peers never removed (the lighthouses the owner holds)
        self.revoked: dict[str, dict] = {}  # name -> what apply_revocations tore down (for status)
        self.version_noted: collections.OrderedDict[tuple[str, int], int] = collections.OrderedDict()
        datapath.set_identity(me.cert.key)  # handshakes to us must carry the mac1 it keys

    # ---- membership
    def add_peer(self, cert: certs.Certificate, subnet: ipaddress.IPv4Network | None,
                 endpoints: list[tuple[str, int]]) -> Peer:
        if cert.name in self.peers:
            raise ValueError(f"peer {cert.name} already known")
        slot = len(self.by_slot) + 1  # free unless a peer was removed: then look for the hole
        if slot in self.by_slot:
            slot = next(i for i in range(1, 1 << 30) if i not in self.by_slot)
        # first: a data path whose table is full (max_peers) refuses the slot (OSError),
        # and then nothing of this peer may stay behind (a half-added peer kept its
        # refused slot, and every later handshake of that node failed, also after slots freed)
        self.dp.set_peer(slot, subnet)
        session = PeerSession(self.me, cert.name, cert.key, lambda n=cert.name: self.indexes.allocate(n),
                              self.indexes.release, self.wall_ns, rng=self.rng)
        peer = Peer(cert.name, slot, subnet, cert, list(endpoints), session, live=liveness.Liveness(self.dead_after))
        self.peers[peer.name] = peer
        self.revoked.pop(peer.name, None)  # re-enrolled: a new certificate the blocklist allows
        self.by_slot[slot] = peer
        self.apply_groups(peer)
        if subnet is not None:
            self._by_subnet[int(subnet.network_address)] = peer.name
        if endpoints:
            self._set_endpoint(peer, endpoints[0])
        return peer

    def apply_groups(self, peer: Peer) -> None:
        """The firewall group bits and the relay right of `peer.cert` into effect (after
        a new certificate, or new rules: group_bits)."""
        self.dp.set_peer_groups(peer.slot, sum(self.group_bits.get(g, 0) for g in set(peer.cert.groups)))
        if RELAY_GROUP in peer.cert.groups:
            self._relay_certified.add(peer.name)
        else:
            self._relay_certified.discard(peer.name)

    def _take_session_cert(self, peer: Peer, cert: certs.Certificate) -> None:
        """A handshake finished (authenticated and fresh): the certificate the peer
        presented in it, verified (CA, validity, blocklist, its name and Noise key are
        the peer's), becomes the peer's certificate. Its groups and relay right apply
        from now on; the caller does this before the new keys reach the data path, so
        no packet under them is judged by an older certificate's groups."""
        old = peer.cert
        if cert.fingerprint == old.fingerprint:
            return
        peer.cert = cert
        self.apply_groups(peer)
        self.log.info("peer_certificate", peer=peer.name, fingerprint=cert.fingerprint[:16],
                      groups=",".join(cert.groups) or "-", previous_groups=",".join(old.groups) or "-",
                      expires=cert.not_after)

    def set_subnet(self, peer: Peer, subnet: ipaddress.IPv4Network) -> None:
        if peer.subnet != subnet:
            if peer.subnet is not None and self._by_subnet.get(int(peer.subnet.network_address)) == peer.name:
                del self._by_subnet[int(peer.subnet.network_address)]
            peer.subnet = subnet
            self._by_subnet[int(subnet.network_address)] = peer.name
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
        self._send_to(peer, packet)
        return True

    def send_messages(self, messages: list[tuple[Peer, bytes]]) -> list[Peer]:
        """Control messages to many peers at once (a lighthouse's answers): those to a
        peer whose only address is its endpoint go sealed and sent in one data-path
        call (DataPath.send_controls, one sendmmsg); the others (relayed, several
        candidate endpoints) as send_message does. Returns the peers that had no keys,
        or were removed since the message was made (their slot may be another node's
        now: the message must not be sealed under that node's keys)."""
        batch, slow, failed = [], [], []
        for peer, data in messages:
            if self.by_slot.get(peer.slot) is not peer:
                failed.append(peer)
            elif peer.relay is None and peer.endpoint is not None and (peer.endpoints == [peer.endpoint]
                                                                     or not peer.endpoints):
                batch.append((peer, data))
            else:
                slow.append((peer, data))
        if batch:
            results = self.dp.send_controls([(peer.slot, data) for peer, data in batch])
            for (peer, data), rc in zip(batch, results):
                if rc == -errno.ENOKEY or rc == -errno.EKEYEXPIRED:
                    failed.append(peer)
                elif rc:  # the path changed under us: the general way
                    slow.append((peer, data))
        for peer, data in slow:
            if not self.send_message(peer, data):
                failed.append(peer)
        return failed

    def _send_to(self, peer: Peer, packet: bytes, direct_only: bool = False) -> None:
        """To the peer's current path: its relay, else its endpoint and the other candidates.
        An initiation to a relayed peer goes both ways: through the relay, which answers
        at once, and to the direct candidates, so a direct path is found as soon as one
        works. The responder takes whichever copy comes first; the second is a replay
        to it (same TAI64N time) and changes nothing."""
        if peer.relay is not None and not direct_only:
            addr, relay_id = peer.relay
            self.send(relaying.wrap(relay_id, packet), addr)
            if packet[0] != TYPE_INITIATION:
                return
        targets = ([peer.endpoint] if peer.endpoint and peer.relay is None else []) + [
            e for e in peer.endpoints if e != peer.endpoint or peer.relay is not None]
        for target in targets:
            self.send(packet, target)

    def probe_direct(self, peer: Peer, now: float) -> None:
        """A relayed peer: try the direct candidates. With keys, a keepalive under the
        current session (no new handshake): a peer that gets it authenticated moves to
        us directly and answers at once (_set_endpoint), which moves us too. Without
        keys, a handshake to the direct candidates only."""
        packet = self.dp.seal_control(peer.slot, b"") if peer.session.current is not None else None
        if packet is None:
            peer.session.rehandshake(now)
            self._apply(peer, direct_only=True)
            return
        for target in peer.endpoints:
            self.send(packet, target)

    def handshake_now(self, peer: Peer, now: float) -> None:
        """An initiation leaves now, also when one is out and its retry timer has backed
        off (a path change must not wait up to 4 s for the next retry)."""
        peer.session.probe(now)
        self._apply(peer)

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
        self.session_counts["peers_removed"] += 1
        self._relay_certified.discard(name)
        if peer.endpoint is not None and self._at.get(peer.endpoint) == name:
            del self._at[peer.endpoint]
        if peer.subnet is not None and self._by_subnet.get(int(peer.subnet.network_address)) == name:
            del self._by_subnet[int(peer.subnet.network_address)]
        peer.session.close()
        self._apply(peer)
        self.dp.remove_peer(peer.slot)
        self.me.forget_peer(peer.cert)  # its verified certificate and ss value

    def apply_revocations(self, now: float) -> list[str]:
        """After a newer blocklist: end every session whose certificate it revokes. The
        peer is removed, so its keys leave the data path at once and a later handshake
        with a new certificate (re-enrolment) adds it again; a pinned peer (a lighthouse
        the owner holds) stays but loses its keys, and verify_peer refuses its
        handshakes while the blocklist names it."""
        rev = self.me.revocations
        gone = []
        for peer in list(self.peers.values()) if rev is not None else []:
            why = rev.reason(peer.cert)
            if why is None:
                continue
            if len(self.revoked) >= 256:
                del self.revoked[next(iter(self.revoked))]
            self.revoked[peer.name] = {"fingerprint": peer.cert.fingerprint, "reason": why}
            self.log.warning("peer_revoked", peer=peer.name, fingerprint=peer.cert.fingerprint[:16], reason=why,
                             action="keys dropped" if peer.name in self.pinned else "session torn down, peer removed")
            if peer.name in self.pinned:
                peer.session.close()
                self._apply(peer)
                self.me.forget_peer(peer.cert)  # as remove_peer: a revoked peer leaves the caches
                peer.last_error = "certificate revoked"
            else:
                self.remove_peer(peer.name)
            gone.append(peer.name)
        return gone

    def use_relay(self, peer: Peer, relay_addr: tuple[str, int], relay_id: int, reason: str) -> None:
        """Send to this peer through a relay (type 5 under relay_id); the session stays."""
        if peer.relay == (relay_addr, relay_id):
            return
        if peer.endpoint is not None and self._at.get(peer.endpoint) == peer.name:
            del self._at[peer.endpoint]
        peer.relay = (relay_addr, relay_id)
        peer.endpoint = relay_addr
        peer.path_reason = reason
        self.dp.set_endpoint(peer.slot, relay_addr)
        self.dp.set_relay(peer.slot, relay_id)
        self.log.info("path_relayed", peer=peer.name, relay=endpoints_policy.text(relay_addr), reason=reason)

    def relay_allowed(self, addr: tuple[str, int]) -> bool:
        """Whether type-5 packets from `addr` may move a peer's path: it must be an
        address of a configured lighthouse, or of a peer certified with RELAY_GROUP
        (its current endpoint, which only authenticated packets set, or a candidate)."""
        # only the few relay candidates are looked at: a flood of type 5 costs no scan of all peers
        for name in self.relay_names | self._relay_certified:
            p = self.peers.get(name)
            if p is not None and (addr == p.endpoint or addr in p.endpoints):
                return True
        return False

    def peer_at(self, addr: tuple[str, int]) -> Peer | None:
        """The peer whose current direct endpoint is `addr` (None: nobody's, or it is
        a relay's address)."""
        peer = self.peers.get(self._at.get(addr, ""))
        return peer if peer is not None and peer.endpoint == addr and peer.relay is None else None

    def peer_with_subnet(self, address: int, prefixlen: int = 24) -> Peer | None:
        """The peer whose subnet is `address`/`prefixlen` (the address as an int)."""
        peer = self.peers.get(self._by_subnet.get(address, ""))
        if peer is None or peer.subnet is None or peer.subnet.prefixlen != prefixlen \
                or int(peer.subnet.network_address) != address:
            return None
        return peer

    def _relayed_to(self, peer: Peer, relay_addr: tuple[str, int], relay_id: int, reason: str, now: float) -> None:
        """An authenticated, fresh packet came through an accepted relay: answer that way,
        unless a direct packet confirmed the direct path within DIRECT_HOLD seconds."""
        if peer.relay is None and peer.direct_seen is not None and now - peer.direct_seen < DIRECT_HOLD:
            return
        self.use_relay(peer, relay_addr, relay_id, reason)

    def _learn_endpoint(self, peer: Peer, addr: tuple[str, int], now: float | None = None) -> None:
        """The source of an authenticated, fresh packet becomes the peer's endpoint,
        unless it is an address nobody should be sent to (engine.proto.endpoint) and
        not one the peer is known by (configured, or vetted when the lighthouse said it)."""
        why = endpoints_policy.refused(addr)
        if why is not None and addr not in peer.endpoints and addr not in self.shim_addrs:
            self.errors["endpoint_refused"] += 1
            self.log.debug("endpoint_refused", peer=peer.name, endpoint=endpoints_policy.text(addr), reason=why)
            return
        if now is not None:
            peer.direct_seen = now
        self._set_endpoint(peer, addr)

    def _set_endpoint(self, peer: Peer, addr: tuple[str, int]) -> None:
        left_relay = peer.relay is not None
        if left_relay:  # an authenticated direct packet came: leave the relay
            self.log.info("path_direct", peer=peer.name, endpoint=endpoints_policy.text(addr), was="relayed")
            peer.relay = None
            peer.path_reason = "direct path answered"
            self.dp.set_relay(peer.slot, None)
            peer.endpoint = None
        if peer.endpoint != addr:
            if peer.endpoint is not None:
                self.log.info("peer_endpoint", peer=peer.name, old=endpoints_policy.text(peer.endpoint),
                              new=endpoints_policy.text(addr))
            if peer.endpoint is not None and self._at.get(peer.endpoint) == peer.name:
                del self._at[peer.endpoint]
            peer.endpoint = addr
            self.dp.set_endpoint(peer.slot, addr)
        self._at[addr] = peer.name
        if left_relay:
            # answer on the direct path at once: the peer moves too when it gets this
            # (a keepalive under the session; nothing if we have no send key yet)
            packet = self.dp.seal_control(peer.slot, b"")
            if packet:
                self.send(packet, addr)

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
                               src=endpoints_policy.text(item.addr) if item.addr else "-")

    def _wrong_version(self, item: ControlItem) -> None:
        """A handshake of another protocol version (the data path dropped and counted
        it): one log line per address, so an operator sees why that peer fails."""
        version = item.data[1] if len(item.data) > 1 else 0
        if item.addr is None or self.version_noted.get(item.addr) == version:
            return
        self.version_noted[item.addr] = version
        while len(self.version_noted) > 1024:
            self.version_noted.popitem(last=False)
        self.log.warning("peer_wrong_version", src=endpoints_policy.text(item.addr),
                         theirs="1 or older" if version == 0 else str(version), ours=str(WIRE_VERSION),
                         hint="upgrade both nodes to the same Flatnet release")

    def _control(self, item: ControlItem, now: float) -> None:
        """Rules: no path, endpoint or relay changes before the packet asking for it is
        authenticated and found fresh (the C data path checked a roam's packet; a
        handshake is checked here, by its session), and a relay is only taken from an
        address relay_allowed() accepts."""
        if item.kind == CTRL_VERSION:
            self._wrong_version(item)
            return
        if item.kind == CTRL_ROAM:
            peer = self.by_slot.get(item.peer)
            if peer is not None and item.addr is not None:
                if len(item.data) == 4:  # it came through a relay, under this id
                    if not self.relay_allowed(item.addr):
                        raise RemoteProtocolError("relay_refused", f"{item.addr[0]}:{item.addr[1]} may not relay")
                    self._relayed_to(peer, item.addr, struct.unpack("<I", item.data)[0], "peer reached us via the relay",
                                     now)
                else:
                    self._learn_endpoint(peer, item.addr, now)
            return
        if item.kind == CTRL_FORWARD:  # a type 5 for another node (we relay: set_relay_mode)
            assert item.addr is not None
            if not self._cookie_for_us(item.data):
                if self.on_relay is None:
                    raise RemoteProtocolError("relay_disabled", "this node does not relay")
                self.on_relay(item.data, item.addr, now)
                return
            item = ControlItem(CTRL_RAW, item.peer, item.data, item.addr)  # ours: as if received
        if item.kind == CTRL_DECRYPTED:
            peer = self.by_slot.get(item.peer)
            if peer is None or self.on_message is None or item.addr is None:
                self.errors["control_unhandled"] += 1
                return
            self.on_message(peer, item.data, item.addr, now)
            return
        assert item.kind == CTRL_RAW and item.addr is not None
        data, via = item.data, None
        if data[0] == TYPE_RELAYED:
            if len(data) <= 8:
                raise RemoteProtocolError("short", "relayed packet")
            if not self.relay_allowed(item.addr):  # before any cryptography: it is cheap
                raise RemoteProtocolError("relay_refused", f"{item.addr[0]}:{item.addr[1]} may not relay")
            via, data = (item.addr, struct.unpack_from("<I", data, 4)[0]), data[8:]
        kind = data[0]
        if kind == TYPE_INITIATION:
            init = handshake.consume_initiation(self.me, data, self.wall_ns() / 1e9)
            peer, new = self.peers.get(init.peer.name), False
            if peer is None and self.accept_any and init.peer.name != self.me.cert.name:
                try:
                    peer, new = self.add_peer(init.peer, None, []), True
                except OSError as exc:  # no free session slot (a lighthouse: [registry] sessions)
                    raise RemoteProtocolError("sessions_full", f"{init.peer.name}: {exc.strerror}") from None
            if peer is None:
                raise RemoteProtocolError("unknown_peer", init.peer.name)
            if init.peer.key != peer.cert.key:
                raise RemoteProtocolError("bad_cert", f"{init.peer.name} presented another key")
            # the TAI64N check (replayed_initiation) comes before the path moves: an old
            # initiation, replayed from anywhere, must change nothing
            try:
                peer.session.receive_initiation(init, None if via else item.addr, now)
            except RemoteProtocolError:
                if new:  # e.g. a time before 1970: the node stays unknown
                    self.remove_peer(peer.name)
                raise
            if via:
                self._relayed_to(peer, via[0], via[1], "peer reached us via the relay", now)
            else:
                self._learn_endpoint(peer, item.addr, now)
                if new and peer.endpoint == item.addr:
                    peer.endpoints = [item.addr]  # its only candidate until a lighthouse tells more
            if new and self.on_new_peer is not None:
                self.on_new_peer(peer, now)
            self._apply(peer)
        elif kind == TYPE_RESPONSE:
            _, receiver = handshake.response_indexes(data)
            owner = self.indexes.owner.get(receiver)
            peer = self.peers.get(owner) if owner else None
            if peer is None:
                raise RemoteProtocolError("unexpected_response", "unknown receiver index")
            peer.session.receive_response(data, now)  # authenticated and fresh (it used up the pending handshake)
            if via:
                self._relayed_to(peer, via[0], via[1], "handshake answered via the relay", now)
            else:
                self._learn_endpoint(peer, item.addr, now)
            self._apply(peer)
        elif kind == TYPE_COOKIE:
            # changes no path: it only keys mac2 of this peer's next handshake messages
            owner = self.indexes.owner.get(cookies.reply_index(data))
            peer = self.peers.get(owner) if owner else None
            if peer is None:
                raise RemoteProtocolError("unexpected_cookie", "unknown receiver index")
            peer.session.receive_cookie_reply(data, now)
        else:
            raise RemoteProtocolError("unknown_type", str(kind))

    def _cookie_for_us(self, data: bytes) -> bool:
        """A relayed cookie reply that answers one of our handshakes: the data path of a
        node relay cannot tell (the index is in our table, not its), so it asked to
        forward it."""
        return (len(data) == 8 + cookies.COOKIE_REPLY and data[8] == TYPE_COOKIE
                and struct.unpack_from("<I", data, 12)[0] in self.indexes.owner)

    # ---- timers
    def handle_timer(self, now: float) -> None:
        """Without path judging (a lighthouse, 10,000 sessions) a peer is looked at only
        when its session's own deadline has come: traffic since the last look can only
        move the session's deadlines later (a send starts the 20 s dead-peer wait from
        the last word heard, never before the 15 s keepalive deadline already taken),
        and every other change to a session passes _apply, which clears `due`. A tick
        then costs a comparison per peer, not a data-path read and a timer run each."""
        idle = []
        for peer in self.peers.values():
            if now < peer.due:
                continue
            st = self.dp.stats(peer.slot)
            peer.session.note_traffic(st.last_tx, st.last_rx)
            peer.session.handle_timer(now)
            if self.judge_paths:
                self._check_path(peer, st.last_tx, now)
            self._apply(peer)
            if not self.judge_paths:
                due = peer.session.get_timer()
                peer.due = float("inf") if due is None else due
                if due is None:  # no keys, no handshake out: never looked at again by itself
                    idle.append(peer)
        for peer in idle if self.on_idle is not None else []:  # after the loop: it may remove the peer
            self.on_idle(peer, now)

    def _check_path(self, peer: Peer, last_tx: float | None, now: float) -> None:
        """Liveness of the peer's path: probe it, say once when it dies (and let the
        owner fall back to a relay), say once when it answers again."""
        s = peer.session
        heard = max((t for t in (s.last_rx, s.last_handshake) if t is not None), default=None)
        for event in peer.live.update(last_tx, heard, now):
            if isinstance(event, liveness.Probe):
                # a handshake to every candidate endpoint, or through the relay; a session
                # without keys (expired, or closed by a revocation) has its own retries
                if s.current is not None:
                    s.probe(now)
            elif isinstance(event, liveness.PathDead):
                self.log.warning("peer_unreachable", peer=peer.name, path=self.path_of(peer), reason=event.reason)
                if self.on_path_dead is not None:
                    self.on_path_dead(peer, now)
            elif isinstance(event, liveness.PathBack):
                self.log.info("peer_reachable", peer=peer.name, path=self.path_of(peer), down_for=event.down_for)

    def get_timer(self) -> float | None:
        deadlines = [t for p in self.peers.values() for t in (p.session.get_timer(), p.live.get_timer())
                     if t is not None]
        return min(deadlines) if deadlines else None

    def start_all(self, now: float) -> None:
        """Handshake every known peer at start, so a restarted engine is reachable at once."""
        for peer in self.peers.values():
            if peer.session.state is State.IDLE:
                peer.session.want_keys(now)
                self._apply(peer)

    # ---- outputs of a session, applied to the data path and the wire
    def _apply(self, peer: Peer, direct_only: bool = False) -> None:
        peer.due = 0.0  # the session may have changed: the next tick looks at it
        s = peer.session
        events = []
        while (event := s.next_event()) is not None:
            events.append(event)
            if isinstance(event, KeysInstalled):
                # the groups of the certificate presented in this handshake go in before
                # its receive key: no packet under the new keys meets the old groups
                self._take_session_cert(peer, event.peer_cert)
                # the receive key goes in before the response leaves: the initiator sends
                # its held packets the moment the response arrives
                self.dp.add_rx(event.keys.local_index, peer.slot, event.keys.receive, event.keys.cipher)
                if not event.keys.initiator:
                    # so does the staged send key: the initiator's first packets confirm it
                    # (docs/protocol.md 5.9), and one that came before it was staged would
                    # confirm nothing; our answers then waited for another handshake
                    k = event.keys
                    self.dp.stage_tx_key(peer.slot, k.send, k.remote_index, k.local_index, k.cipher)
        for packet, addr in s.datagrams_to_send():
            if addr is not None:
                self.send(packet, addr)
            else:
                self._send_to(peer, packet, direct_only)
        for event in events:
            if isinstance(event, KeysInstalled):
                k = event.keys
                if k.initiator:
                    # the responder waits for a packet under these keys before it sends
                    # with them (DataPath.stage_tx_key): give it one now
                    self.dp.set_tx_key(peer.slot, k.send, k.remote_index, k.cipher)
                    packet = self.dp.seal_control(peer.slot, b"")
                    if packet:
                        self._send_to(peer, packet, direct_only)
                if event.retired_index is not None:
                    self.dp.remove_rx(event.retired_index)
                peer.handshake_failures = 0
                self.session_counts["handshakes_initiator" if k.initiator else "handshakes_responder"] += 1
                self.log.info("handshake_done", peer=peer.name, role="initiator" if k.initiator else "responder", cipher=k.cipher,
                              endpoint=endpoints_policy.text(peer.endpoint) if peer.endpoint else "-")
            elif isinstance(event, KeysExpired):
                for index in event.local_indexes:
                    self.dp.remove_rx(index)
                if s.current is None:
                    self.dp.clear_tx_key(peer.slot)
                    self.session_counts["sessions_expired"] += 1
                self.log.info("keys_expired", peer=peer.name)
            elif isinstance(event, SendKeepalive):
                packet = self.dp.seal_control(peer.slot, b"")
                if packet and peer.endpoint:
                    self._send_to(peer, packet)
            elif isinstance(event, HandshakeFailed):
                peer.handshake_failures += 1
                self.session_counts["handshakes_failed"] += 1
                peer.last_error = event.reason
                self.log.warning("handshake_failed", peer=peer.name, reason=event.reason)

    # ---- reporting
    def move_endpoint(self, peer: Peer, addr: tuple[str, int]) -> None:
        """The owner's decision (a TCP relay came up or went): send to this peer here."""
        self._set_endpoint(peer, addr)

    def send_message_to(self, peer: Peer, data: bytes, targets: list[tuple[str, int]]) -> bool:
        """A control message under the peer's session to these addresses, whatever its
        endpoint (a probe of a path not in use)."""
        packet = self.dp.seal_control(peer.slot, data)
        for target in targets if packet is not None else []:
            self.send(packet, target)
        return packet is not None

    def path_of(self, peer: Peer) -> str:
        if peer.relay is not None:
            tcp = self.tcp_labels.get(peer.relay[0])
            if tcp is not None:
                return f"relayed over TCP via {tcp}: UDP blocked"
            node = self.peer_at(peer.relay[0])
            if node is not None and node.name in self._relay_certified and node.name not in self.relay_names:
                return f"relayed via {node.name} ({endpoints_policy.text(peer.relay[0])})"  # a node relay
            return f"relayed via {peer.relay[0][0]}:{peer.relay[0][1]}"
        if peer.endpoint is None or peer.session.current is None:
            return "none"
        if peer.own_endpoints is None:  # a configured peer
            return "direct"
        # the lighthouse told us the peer's own addresses; anything else is its NAT's
        return "direct-LAN" if peer.endpoint in peer.own_endpoints else "direct-punched"

    def mark_unreachable(self, doc: dict) -> dict:
        """The gateway's route table (GET /routes), with each overlay upstream on a host
        whose path is unreachable marked "down": the reason. The gateway's health check
        reports that reason when its own connect fails too."""
        for route in doc.get("routes", []):
            peer = self.peers.get(route.get("node"))
            if peer is not None and peer.live.state is liveness.PathState.UNREACHABLE:
                route["upstreams"] = [dict(u, down=f"the engine cannot reach host {peer.name}: {peer.live.reason}")
                                      if u.get("kind") == "overlay" else u for u in route["upstreams"]]
        return doc

    def peer_table(self, now: float) -> list[dict]:
        rows = []
        for peer in self.peers.values():
            st = self.dp.stats(peer.slot)
            s = peer.session
            rows.append({
                "name": peer.name, "subnet": str(peer.subnet) if peer.subnet else None,
                "endpoint": endpoints_policy.text(peer.endpoint) if peer.endpoint else None,
                "state": "unreachable" if peer.live.state is liveness.PathState.UNREACHABLE else s.state.value,
                "unreachable_reason": peer.live.reason or None, "times_unreachable": peer.live.times_down,
                "path": self.path_of(peer),
                "path_reason": peer.path_reason or None,
                "handshake_age": round(now - s.last_handshake, 1) if s.last_handshake is not None else None,
                "handshakes": s.handshakes, "rekeys": s.rekeys,
                "cipher": s.current.cipher if s.current is not None else None,  # the session's transport cipher
                "tx_bytes": st.tx_bytes, "rx_bytes": st.rx_bytes,
                "tx_packets": st.tx_packets, "rx_packets": st.rx_packets, "rx_dropped": st.rx_dropped,
                "last_error": peer.last_error or None,
                "cert_expires": peer.cert.not_after, "groups": list(peer.cert.groups),
                "fingerprint": peer.cert.fingerprint,
            })
        return rows
