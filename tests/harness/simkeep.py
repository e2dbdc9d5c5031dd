"""Simulated nodes that keep their lighthouse sessions the way engines do, for a
real-time rekey period (`python3 -m benchmarks lighthouse --rekey-period`).

Each node's session with its lighthouse is the engine's own `PeerSession`
(engine/proto/session.py): when it rekeys, how it retries, cookies, keepalives, the
dead-peer handshake and key expiry are the engine's code and constants, not numbers
of this file. `EngineSwarm` is a `simnode.Swarm` whose handshakes go through those
sessions and whose nodes also answer a lighthouse's own initiation (the responder's
rekey at 130 s): the node is found by the initiation's mac1, which is keyed by its
static key. What a session outputs goes to the wire and to the swarm's C data path as
engine/device.py `_apply` does: an initiator's new send key at once (with a keepalive
under it, so the lighthouse starts using the keys it staged), a responder's only
after a packet under the new keys arrived.

Before `Swarm.attach` a node's first keys live in Python as in the plain swarm (its
first register is its first packet under them: no keepalive, so `attach` takes the
session). During the period every datagram is read in Python
(`handshakes_in_python`: the C data path checks mac1 under one identity).

`Schedule` and `PerSecond` are pure (a virtual clock in tests/unit/benchmarks).
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import time
from typing import Hashable

from flatnet.engine.proto import control as wire
from flatnet.engine.proto import cookie as cookies
from flatnet.engine.proto import handshake as hsm
from flatnet.engine.proto.session import HandshakeFailed, KeysExpired, KeysInstalled, PeerSession, SendKeepalive
from tests.harness import simnode
from tests.harness import wire as hwire


class Schedule:
    """When each session wants its timer run: a heap of (deadline, key). `arm` a key
    again after running it; an older entry of the same key is skipped when it comes
    up (a deadline that moved)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._at: dict[Hashable, float] = {}
        self._seq = 0

    def arm(self, key: Hashable, deadline: float | None) -> None:
        if deadline is None:
            self._at.pop(key, None)
            return
        self._at[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))

    def due(self, now: float) -> list[Hashable]:
        """The keys whose deadline is at or before `now`, each once, earliest first;
        they are disarmed until armed again."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            if self._at.get(key) == deadline:
                del self._at[key]
                out.append(key)
        return out

    def __len__(self) -> int:
        return len(self._at)


class PerSecond:
    """Events counted in one-second buckets from `t0`."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.series: dict[str, dict[int, int]] = {}

    def note(self, kind: str, t: float, n: int = 1) -> None:
        b = self.series.setdefault(kind, {})
        s = max(0, int(t - self.t0))
        b[s] = b.get(s, 0) + n

    def total(self, kind: str) -> int:
        return sum(self.series.get(kind, {}).values())

    def summary(self, kind: str, seconds: int) -> dict:
        """Over `seconds` one-second buckets (the empty ones too): total, the busiest
        second, the 99th percentile (nearest rank), the seconds with any, first and
        last such second."""
        b = self.series.get(kind, {})
        counts = sorted(b.get(s, 0) for s in range(seconds))
        busy = sorted(s for s, n in b.items() if n)
        p99 = counts[max(0, math.ceil(0.99 * len(counts)) - 1)] if counts else 0
        return {"total": sum(b.values()), "max_per_s": counts[-1] if counts else 0, "p99_per_s": p99,
                "seconds_with_any": len(busy), "first_s": busy[0] if busy else None,
                "last_s": busy[-1] if busy else None}

    def timeline(self, kind: str, seconds: int) -> list[int]:
        b = self.series.get(kind, {})
        return [b.get(s, 0) for s in range(seconds)]


class _Passive(PeerSession):
    """A node that never starts a rekey itself (its lighthouse's must keep the session);
    everything else is the engine's."""

    def _rekey_at(self, cur):  # noqa: ANN001, ANN202 - PeerSession's hook
        return math.inf


class EngineSwarm(simnode.Swarm):
    """A Swarm whose nodes hold engine sessions (module docstring). `passive`: names
    of nodes that do not rekey by themselves."""

    def __init__(self, *args, passive: frozenset[str] = frozenset(), **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.passive = passive
        self.ps: dict[tuple[int, str], PeerSession] = {}
        self.node_of: dict[int, simnode.Node] = {id(n): n for n in self.nodes}
        self.rx: dict[int, tuple[simnode.Node, str, bytes]] = {}   # our receive index -> keys
        self.staged: dict[tuple[int, str], object] = {}          # a responder's keys, until confirmed
        self.on_sock: dict[int, list[tuple[bytes, simnode.Node]]] = {}  # fd -> (mac1 key, node)
        for n in self.nodes:
            self.on_sock.setdefault(n.sock.fileno(), []).append((hwire.mac1_key(n.ident.static_public), n))
        self.lh_at = {lh.addr: name for name, lh in self.lighthouses.items()}
        self.schedule = Schedule()
        self.stats: PerSecond | None = None  # set by start_period: events counted per second
        self.last_lease: dict[int, float] = {}  # id(node) -> when its last lease answer came
        self.on_rekey = None  # called with the age of the keys a node starts to rekey (run_timers)

    # ---- the engine's session of a node
    def session(self, node: simnode.Node, lh: str) -> PeerSession:
        key = (id(node), lh)
        ps = self.ps.get(key)
        if ps is None:
            cls = _Passive if node.ident.cert.name in self.passive else PeerSession
            ps = cls(node.ident, lh, self.lighthouses[lh].static, lambda: self._new_index(node, lh),
                     self._release, time.time_ns, rng=self.rng)  # as engine/device.py makes it
            self.ps[key] = ps
        return ps

    def _new_index(self, node: simnode.Node, lh: str) -> int:
        # the low 16 bits count handshakes, as simnode.Swarm._initiation's
        index = (self.rng.getrandbits(16) or 1) << 16 | (self._handshakes & 0xFFFF)
        self._handshakes += 1
        self.by_index[index] = (node, lh)
        return index

    def _release(self, index: int) -> None:
        self.by_index.pop(index, None)
        self.rx.pop(index, None)

    def _initiation(self, node: simnode.Node, lh: str) -> bytes:
        """The session's initiation now (a new one even if one is out: `probe`)."""
        ps = self.session(node, lh)
        ps.probe(time.monotonic())
        [(packet, _)] = ps.datagrams_to_send()
        s = node.sessions.get(lh)
        if s is None:
            s = node.sessions[lh] = simnode.Session()
        s.hs, s.pending_index = ps, ps.pending.local_index
        if s.slot < 0:
            s.index = ps.pending.local_index
        return packet

    def register(self, node: simnode.Node, lh: str) -> bool:
        sent = super().register(node, lh)
        if sent:
            self.ps[(id(node), lh)].note_traffic(node.registered_at, None)
            if self.stats is not None:
                self.stats.note("registers_sent", node.registered_at)
        return sent

    # ---- receiving (every handshake message goes to Python: pump's fallback)
    def _on_datagram(self, data: bytes, sock=None, addr: tuple | None = None) -> None:  # noqa: ANN001
        now = time.monotonic()
        try:
            kind = data[0]
            if kind == 2:
                _, receiver = hsm.response_indexes(data)
                node, lh = self.by_index[receiver]
                self.session(node, lh).receive_response(data, now)
            elif kind == 1:
                node, lh = self._whose_initiation(data, sock, addr)
                init = hsm.consume_initiation(node.ident, data, time.time())
                self.session(node, lh).receive_initiation(init, addr, now)
            elif kind == 6:
                node, lh = self.by_index[cookies.reply_index(data)]
                self.session(node, lh).receive_cookie_reply(data, now)
                self._count("cookies", now)
            elif kind in (3, 4):
                self._on_transport(data, now)
                return
            else:
                raise ValueError(f"type {kind}")
            self._apply(node, lh, now)
        except Exception:  # noqa: BLE001 - a benchmark counts what it could not read
            self.counts["bad"] += 1

    def _whose_initiation(self, data: bytes, sock, addr: tuple | None) -> tuple[simnode.Node, str]:  # noqa: ANN001
        lh = self.lh_at.get(tuple(addr[:2]) if addr else None)
        if lh is None or sock is None:
            raise ValueError("an initiation not from a lighthouse")
        body, mac1 = data[:-cookies.MACS], data[-cookies.MACS:-cookies.MAC]
        for key, node in self.on_sock.get(sock.fileno(), []):
            if hmac.compare_digest(hashlib.blake2b(body, digest_size=cookies.MAC, key=key).digest(), mac1):
                return node, lh
        raise ValueError("an initiation for none of this socket's nodes")

    def _on_transport(self, data: bytes, now: float) -> None:
        index = int.from_bytes(data[4:8], "little")
        node, lh, key = self.rx[index]
        _, _, _, plain = hwire.open_packet(key, data)
        ps = self.ps[(id(node), lh)]
        ps.note_traffic(None, now)
        k = self.staged.get((id(node), lh))
        if k is not None and k.local_index == index:  # the lighthouse has our new keys
            del self.staged[(id(node), lh)]
            self._set_tx(node, lh, k)
        if data[0] == 4:
            kind, msg = wire.decode(plain)
            self._on_message(node, kind, msg)

    def _on_message(self, node: simnode.Node, kind: str, msg: dict) -> None:
        if kind == "lease":
            self.last_lease[id(node)] = time.monotonic()
            if self.stats is not None:
                self.stats.note("leases", self.last_lease[id(node)])
        super()._on_message(node, kind, msg)

    # ---- what a session asks for, applied (engine/device.py _apply)
    def _set_tx(self, node: simnode.Node, lh: str, k) -> None:  # noqa: ANN001 - session.Keys
        s = node.sessions[lh]
        if s.slot >= 0:
            self.dp.set_tx_key(s.slot, k.send, k.remote_index, k.cipher)
        else:
            s.counter = 0
        s.send, s.remote = k.send, k.remote_index

    def _keepalive(self, node: simnode.Node, lh: str) -> None:
        s = node.sessions[lh]
        packet = self.dp.seal_control(s.slot, b"") if s.slot >= 0 else None
        if packet:
            node.sock.sendto(packet, self.lighthouses[lh].addr)
            self.ps[(id(node), lh)].note_traffic(time.monotonic(), None)

    def _apply(self, node: simnode.Node, lh: str, now: float) -> None:
        ps, s = self.ps[(id(node), lh)], node.sessions[lh]
        events = []
        while (e := ps.next_event()) is not None:
            events.append(e)
            if isinstance(e, KeysInstalled):
                self.rx[e.keys.local_index] = (node, lh, e.keys.receive)
        for packet, addr in ps.datagrams_to_send():
            node.sock.sendto(packet, addr or self.lighthouses[lh].addr)
            if packet[0] == 1:
                self._count("initiations_sent", now)
        for e in events:
            if isinstance(e, KeysInstalled):
                k = e.keys
                first = not s.send
                if k.initiator:
                    self._set_tx(node, lh, k)
                    if first:
                        s.receive, s.index = k.receive, k.local_index  # for attach (simnode.Swarm)
                        self.counts["handshakes"] += 1
                    else:
                        self._keepalive(node, lh)
                        self._count("rekeys_done", now)
                else:
                    self.staged[(id(node), lh)] = k
                    self._count("lighthouse_rekeys_answered", now)
                if e.retired_index is not None:
                    self.rx.pop(e.retired_index, None)
            elif isinstance(e, KeysExpired):
                for index in e.local_indexes:
                    self.rx.pop(index, None)
                if ps.current is None:
                    if s.slot >= 0:
                        self.dp.clear_tx_key(s.slot)
                    s.send = b""
                    self._count("sessions_lost", now)
            elif isinstance(e, SendKeepalive):
                self._keepalive(node, lh)
                self._count("keepalives", now)
            elif isinstance(e, HandshakeFailed):
                self._count("handshakes_failed", now)
        if ps.pending is None:
            s.hs = None
        if self.stats is not None:
            self.schedule.arm((id(node), lh), ps.get_timer())

    def _count(self, kind: str, now: float) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.stats is not None:
            self.stats.note(kind, now)

    # ---- the period
    def start_period(self, now: float) -> None:
        """From now on the sessions' timers run (run_timers) and events are counted per
        second; every datagram is read in Python."""
        self.stats = PerSecond(now)
        self.handshakes_in_python = True
        for (nid, lh), ps in self.ps.items():
            self.schedule.arm((nid, lh), ps.get_timer())

    def run_timers(self, now: float) -> int:
        """Each session whose deadline came: its timer, as an engine's driver runs it."""
        due = self.schedule.due(now)
        for nid, lh in due:
            ps = self.ps[(nid, lh)]
            rekeys, keys = ps.rekeys, ps.current
            ps.handle_timer(now)
            if ps.rekeys != rekeys:
                self._count("rekeys_started", now)
                if self.on_rekey is not None and keys is not None:
                    self.on_rekey(now - keys.created)
            self._apply(self.node_of[nid], lh, now)
        return len(due)
