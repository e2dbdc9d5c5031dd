"""A fake of engine.datapath.DataPath for control-plane tests without root, threads or C
(the interface the Device uses: engine/datapath_port.py DataPathPort).

It models what the C data path (engine/crypto/csrc/outside.c, inside.c, fastpath.c)
does for the control plane, on the clock the test passes in:
- keys: add_rx / remove_rx (receive keys by receiver index), set_tx_key (an
  initiator's send key, in use at once), stage_tx_key (a responder's send key, in use
  only after a packet arrived under its local index), clear_tx_key;
- seal_control: a type-4 control packet (type-3 keepalive for an empty payload) under
  the send key, with a counter; receive() opens type 3/4 with the receive key, checks
  replay, sets last_rx, promotes a staged key, and reports a roam note (CTRL_ROAM) when
  the source or the relay id differs from the peer's; handshakes (types 1, 2, 6) go up
  raw (CTRL_RAW); another protocol version becomes a CTRL_VERSION note; a type 5 is
  unwrapped and its inner packet checked as if direct, remembering the relay id
  (RELAY_OFF, or RELAY_OTHERS when addressed to this node), else it goes up whole to be
  forwarded (CTRL_FORWARD; only from a peer's direct endpoint, as senders.c);
- data: send_ip() is the TUN side: a route lookup by peer subnet, packets held (and a
  "want" reported) while a peer has no keys or a /24 has no owner, sealed as type 3 and
  wrapped in type 5 when the peer is relayed; received data is kept in `delivered`
  after the inner source was checked against the peer's subnet (cryptokey routing);
- stats(slot): counters, last_tx / last_rx in the clock's seconds.

Not modelled: the mac1/cookie gate, GRO/GSO, the firewall, key-exhaustion counters,
a node relay's forwarding budget per sender (RELAY_PER_SENDER).
The AEAD is ChaCha20-Poly1305 from libsodium (as in C), over a header of the same shape.
Every call is also appended to `calls` (its name), which tests use to check order.
"""
from __future__ import annotations

import collections
import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from flatnet.engine.datapath_port import (CTRL_DECRYPTED, CTRL_FORWARD, CTRL_RAW, CTRL_ROAM, CTRL_VERSION, RELAY_OFF,
                                          RELAY_OTHERS, ControlItem, PeerStats)
from flatnet.engine.proto import cookie as cookies
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.constants import (AEAD_CHACHA, TYPE_CONTROL, TYPE_COOKIE, TYPE_DATA, TYPE_INITIATION, TYPE_RELAYED,
                                    TYPE_RESPONSE, WIRE_VERSION)

Addr = tuple[str, int]
HEADER = struct.Struct("<BBHIQ")  # type, version, reserved, receiver index, counter
REPLAY_WINDOW = 2048
MAX_HELD = 64


def ipv4(src: str, dst: str, body: bytes = b"") -> bytes:
    """The smallest IPv4 packet the receive side accepts: version, source, destination."""
    return bytes([0x45]) + bytes(11) + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + body


@dataclass
class _Slot:
    subnet: ipaddress.IPv4Network | None = None
    groups: int = 0
    endpoint: Addr | None = None
    relay_id: int | None = None
    tx: tuple[bytes, int] | None = None             # (key, remote index)
    staged: tuple[bytes, int, int] | None = None    # (key, remote index, local index)
    confirmed: bool = False
    counter: int = 0
    want: bool = False
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    last_tx: float | None = None
    last_rx: float | None = None


class FakeDataPath:
    def __init__(self, clock: Callable[[], float] = lambda: 0.0,
                 network: ipaddress.IPv4Network | None = None, calls: list | None = None) -> None:
        self.clock = clock
        self.network = network
        self.calls: list = calls if calls is not None else []
        self.slots: dict[int, _Slot] = {}
        self.routes: dict[tuple[int, int], int] = {}  # (network, mask) as ints -> slot (the C route table)
        self.routes24: dict[int, int] = {}            # the /24 ones by network: one look-up
        self.rx: dict[int, tuple[int, bytes, set[int]]] = {}  # local index -> (slot, key, counters seen)
        self.relay_mode = RELAY_OFF
        self.identity: bytes | None = None
        self.wants: list[int] = []           # for Device.on_want (slots; -(route + 1) for an unowned /24)
        self.pending_routes: set[int] = set()
        self.held: collections.deque[tuple[ipaddress.IPv4Address, bytes]] = collections.deque(maxlen=MAX_HELD)
        self.delivered: list[tuple[int, bytes]] = []  # (slot, inner packet) written to the TUN
        self.drops: collections.Counter[str] = collections.Counter()
        self.send: Callable[[bytes, Addr], None] = lambda packet, addr: None  # the UDP socket (data only)
        self.changed = False  # keys, routes or paths changed since the held packets were last tried

    def _slot(self, slot: int) -> _Slot:
        return self.slots.setdefault(slot, _Slot())

    # what tests read: the endpoint and relay id the control plane set per slot
    @property
    def endpoint(self) -> dict[int, Addr | None]:
        return {s: st.endpoint for s, st in self.slots.items()}

    @property
    def relay(self) -> dict[int, int | None]:
        return {s: st.relay_id for s, st in self.slots.items()}

    # ---- the DataPath interface the control plane uses
    def set_identity(self, static_public: bytes) -> None:
        self.calls.append("set_identity")
        self.identity = static_public

    def set_relay_mode(self, mode: int) -> None:
        self.calls.append("set_relay_mode")
        self.relay_mode = int(mode)

    def _for_us(self, inner: bytes) -> bool:
        """RELAY_OTHERS: what outside.c addressed_to_us() receives instead of forwarding."""
        if len(inner) >= 4 and inner[0] in (TYPE_INITIATION, TYPE_RESPONSE):
            try:
                cookies.strip_macs(inner, self.identity or b"")
                return True
            except RemoteProtocolError:
                return False
        return len(inner) >= 32 and inner[0] in (TYPE_DATA, TYPE_CONTROL) and \
            struct.unpack_from("<I", inner, 4)[0] in self.rx

    def set_peer(self, slot: int, subnet: ipaddress.IPv4Network | None) -> None:
        self.calls.append("set_peer")
        self.changed = True
        st = self._slot(slot)
        self._unroute(st)
        st.subnet = subnet
        if subnet is not None:
            self.routes[(int(subnet.network_address), int(subnet.netmask))] = slot
            if subnet.prefixlen == 24:
                self.routes24[int(subnet.network_address)] = slot
            self.pending_routes.discard((int(subnet.network_address) >> 8) & 0xFFFF)

    def set_peer_groups(self, slot: int, bits: int) -> None:
        self.calls.append("set_peer_groups")
        self._slot(slot).groups = bits

    def remove_peer(self, slot: int) -> None:
        self.calls.append("remove_peer")
        st = self.slots.pop(slot, None)
        if st is not None:
            self._unroute(st)

    def _unroute(self, st: _Slot) -> None:
        if st.subnet is not None:
            self.routes.pop((int(st.subnet.network_address), int(st.subnet.netmask)), None)
            if st.subnet.prefixlen == 24:
                self.routes24.pop(int(st.subnet.network_address), None)

    def route_unpend(self, route: int) -> None:
        self.calls.append("route_unpend")
        self.changed = True
        self.pending_routes.discard(route)

    def set_endpoint(self, slot: int, addr: Addr) -> None:
        self.calls.append("set_endpoint")
        self.changed = True
        self._slot(slot).endpoint = addr

    def set_relay(self, slot: int, relay_id: int | None) -> None:
        self.calls.append("set_relay")
        self.changed = True
        self._slot(slot).relay_id = relay_id

    @staticmethod
    def _chacha_only(cipher: str) -> None:
        if cipher != AEAD_CHACHA:  # the real data path has AES-256-GCM; the fake does not
            raise ValueError(f"the fake data path seals {AEAD_CHACHA} only, not {cipher}")

    def set_tx_key(self, slot: int, key: bytes, remote_index: int, cipher: str = AEAD_CHACHA) -> None:
        self._chacha_only(cipher)
        self.calls.append("set_tx_key")
        self.changed = True
        st = self._slot(slot)
        st.tx, st.counter, st.want, st.staged = (key, remote_index), 0, False, None

    def stage_tx_key(self, slot: int, key: bytes, remote_index: int, local_index: int,
                     cipher: str = AEAD_CHACHA) -> None:
        self._chacha_only(cipher)
        self.calls.append("stage_tx_key")
        self.changed = True
        st = self._slot(slot)
        st.staged, st.confirmed = (key, remote_index, local_index), False

    def clear_tx_key(self, slot: int) -> None:
        self.calls.append("clear_tx_key")
        st = self._slot(slot)
        st.tx = st.staged = None

    def clear_want(self, slot: int) -> None:
        self.calls.append("clear_want")
        self._slot(slot).want = False

    def add_rx(self, local_index: int, slot: int, key: bytes, cipher: str = AEAD_CHACHA) -> None:
        self._chacha_only(cipher)
        self.calls.append("add_rx")
        self.rx[local_index] = (slot, key, set())

    def remove_rx(self, local_index: int) -> None:
        self.calls.append("remove_rx")
        self.rx.pop(local_index, None)

    def stats(self, slot: int) -> PeerStats:
        st = self._slot(slot)
        return PeerStats(st.tx_packets, st.tx_bytes, st.rx_packets, st.rx_bytes, st.rx_dropped, st.last_tx,
                         st.last_rx, st.counter, self._promote(st) is not None)

    def seal_control(self, slot: int, payload: bytes) -> bytes | None:
        self.calls.append("seal_control")
        st = self.slots.get(slot)
        if st is None:
            return None
        return self._seal(st, TYPE_CONTROL if payload else TYPE_DATA, payload)

    # ---- sealing and opening
    @staticmethod
    def _promote(st: _Slot) -> tuple[bytes, int] | None:
        if st.staged is not None and st.confirmed:  # fastpath.c tx_promote
            st.tx, st.counter, st.staged = st.staged[:2], 0, None
        return st.tx

    def _seal(self, st: _Slot, kind: int, payload: bytes) -> bytes | None:
        tx = self._promote(st)
        if tx is None:
            return None
        header = HEADER.pack(kind, WIRE_VERSION, 0, tx[1], st.counter)
        nonce = bytes(4) + struct.pack("<Q", st.counter)
        st.counter += 1
        st.last_tx = self.clock()
        return header + sodium.crypto_aead_chacha20poly1305_ietf_encrypt(payload, header, nonce, tx[0])

    def receive(self, packet: bytes, src: Addr, relayed_from: int | None = None) -> list[ControlItem]:
        """One datagram from the socket: the control items it produces (outside.c receive)."""
        if len(packet) < 4:
            self.drops["short"] += 1
            return []
        kind = packet[0]
        if packet[1] != WIRE_VERSION:
            self.drops["wrong_version"] += 1
            if kind in (TYPE_INITIATION, TYPE_RESPONSE, TYPE_RELAYED) and relayed_from is None:
                return [ControlItem(CTRL_VERSION, -1, packet[:4], src)]
            return []
        if packet[2] or packet[3]:
            self.drops["reserved_not_zero"] += 1
            return []
        if kind == TYPE_RELAYED and relayed_from is None:
            if len(packet) <= 8:
                self.drops["short"] += 1
                return []
            if self.relay_mode == RELAY_OFF or (self.relay_mode == RELAY_OTHERS and self._for_us(packet[8:])):
                return self.receive(packet[8:], src, struct.unpack_from("<I", packet, 4)[0])
            if not any(st.endpoint == src and st.relay_id is None for st in self.slots.values()):
                self.drops["relay_unknown_sender"] += 1  # a relay forwards only for its peers (senders.c)
                return []
            return [ControlItem(CTRL_FORWARD, -1, packet, src)]
        if kind in (TYPE_INITIATION, TYPE_RESPONSE, TYPE_COOKIE):
            wrap = b"" if relayed_from is None else struct.pack("<BBHI", TYPE_RELAYED, WIRE_VERSION, 0, relayed_from)
            return [ControlItem(CTRL_RAW, -1, wrap + packet, src)]
        if kind not in (TYPE_DATA, TYPE_CONTROL):
            self.drops["unknown_type"] += 1
            return []
        return self._open(packet, src, relayed_from)

    def _open(self, packet: bytes, src: Addr, relayed_from: int | None) -> list[ControlItem]:
        if len(packet) < HEADER.size + 16:
            self.drops["short"] += 1
            return []
        kind, _, _, index, counter = HEADER.unpack_from(packet)
        entry = self.rx.get(index)
        if entry is None or entry[0] not in self.slots:
            self.drops["unknown_index"] += 1
            return []
        slot, key, seen = entry
        st = self.slots[slot]
        if counter in seen or (seen and counter + REPLAY_WINDOW < max(seen)):
            self.drops["replay"] += 1
            st.rx_dropped += 1
            return []
        try:
            plain = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                packet[HEADER.size:], packet[:HEADER.size], bytes(4) + struct.pack("<Q", counter), key)
        except CryptoError:
            self.drops["auth_failed"] += 1
            st.rx_dropped += 1
            return []
        seen.add(counter)
        if len(seen) > REPLAY_WINDOW:
            seen.discard(min(seen))
        st.last_rx = self.clock()
        if st.staged is not None and st.staged[2] == index:
            st.confirmed = self.changed = True  # the initiator has our keys: the staged send key may be used
        items = []
        moved = (src != st.endpoint or st.relay_id is not None) if relayed_from is None else (
            st.relay_id != relayed_from)
        if moved:
            items.append(ControlItem(CTRL_ROAM, slot, b"" if relayed_from is None else struct.pack("<I", relayed_from),
                                     src))
        if kind == TYPE_CONTROL:
            return items + [ControlItem(CTRL_DECRYPTED, slot, plain, src)]
        if not plain:
            return items  # a keepalive
        if len(plain) < 20 or plain[0] >> 4 != 4:
            self.drops["not_ipv4"] += 1
            return items
        if st.subnet is None or ipaddress.IPv4Address(plain[12:16]) not in st.subnet:
            self.drops["source_not_allowed"] += 1
            st.rx_dropped += 1
            return items
        st.rx_packets += 1
        st.rx_bytes += len(plain)
        self.delivered.append((slot, plain))
        return items

    # ---- the TUN side
    def send_ip(self, packet: bytes) -> bool:
        """An IPv4 packet from the TUN: sealed and sent (True), or held and a want
        reported (False), as inside.c does."""
        dst = ipaddress.IPv4Address(packet[16:20])
        owner = self._owner(int(dst))
        if owner is None:
            route = (int(dst) >> 8) & 0xFFFF
            if self.network is None or dst not in self.network:
                self.drops["no_route"] += 1
                return False
            if route not in self.pending_routes:
                self.pending_routes.add(route)
                self.wants.append(-route - 1)
            self.held.append((dst, packet))
            return False
        st = self.slots[owner]
        sealed = self._seal(st, TYPE_DATA, packet) if st.endpoint is not None else None
        if sealed is None:
            if not st.want:
                st.want = True
                self.wants.append(owner)
            self.held.append((dst, packet))
            return False
        if st.relay_id is not None:
            sealed = struct.pack("<BBHI", TYPE_RELAYED, WIRE_VERSION, 0, st.relay_id) + sealed
        st.tx_packets += 1
        st.tx_bytes += len(packet)
        self.send(sealed, st.endpoint)
        return True

    def _owner(self, dst: int) -> int | None:
        """Longest prefix first: a /24 by one dict look-up, then the rest."""
        slot = self.routes24.get(dst & 0xFFFFFF00)
        if slot is not None:
            return slot
        if len(self.routes) == len(self.routes24):
            return None
        return next((s for (net, mask), s in sorted(self.routes.items(), key=lambda r: -r[0][1])
                     if mask != 0xFFFFFF00 and dst & mask == net), None)

    def take_wants(self) -> list[int]:
        wants, self.wants = self.wants, []
        return wants

    def flush_held(self) -> int:
        """Send what was held and can go now (the inside thread's next pass); returns how many."""
        if not self.changed:
            return 0
        self.changed = False
        held, self.held = list(self.held), collections.deque(maxlen=MAX_HELD)
        sent = 0
        for dst, packet in held:
            owner = self._owner(int(dst))
            st = self.slots.get(owner) if owner is not None else None
            if st is None or st.endpoint is None or self._promote(st) is None:
                self.held.append((dst, packet))  # still waiting (its want was reported when it was held)
            else:
                sent += self.send_ip(packet)
        return sent
