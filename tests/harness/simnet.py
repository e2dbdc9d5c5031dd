"""A simulated network for the control plane (as Nebula's e2e tests do), on a virtual clock.

Engines (engine.device.Device + engine.lighthouse_client.LighthouseClient over
tests.harness.fakedp.FakeDataPath) and lighthouses (lighthouse.registry.Registry with its
SQLite lease store, a Device in relay mode) exchange real Noise handshakes and real
lighthouse messages through an in-memory Router: LANs behind NATs (cone: one public port
per inside address; port-randomizing: one per inside address *and* destination; both
filter inbound packets to the remote addresses the inside host sent to), random loss,
a fixed latency, and cuts. Nothing sleeps: `Sim.run(seconds)` processes the event queue
in virtual time, so a minute of protocol runs in milliseconds.

Addresses: lighthouses are public (203.0.113.x), NATs' public sides 198.51.100.x, hosts
behind NAT 10.<lan>.0.<n> (a private address reaches only its own LAN, as on the
Internet). Each engine drives its Device and client as engine/driver.py does: one timer
at min(their deadlines, now + 1 s); the lighthouse glue mirrors lighthouse/server.py
(Registry.handle / Registry.relay; wall-clock seconds for the registry, the virtual
monotonic clock for sessions).
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import io
import ipaddress
import itertools
import random
from typing import Callable

from flatnet.engine.device import Device
from flatnet.engine.lighthouse_client import LighthouseClient
from flatnet.engine.log import Logger
from flatnet.engine.proto.revocation import Revocations
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import TestCA

Addr = tuple[str, int]
PORT = 4787
LATENCY = 0.010   # one way, every hop
PRIVATE = ipaddress.IPv4Network("10.0.0.0/8")  # LAN addresses in this simulation
MAX_EVENTS_PER_INSTANT = 50_000
MAX_SPINS = 3     # timer runs in a row, at one instant, that leave a deadline due: then fail
TICK = 1.0        # engine/driver.py STATS_REFRESH and lighthouse/server.py TICK


class Nat:
    """kind "cone": endpoint-independent mapping; "random": a new public port for each
    (inside address, destination). Inbound: only from a destination the mapping sent to."""

    def __init__(self, public_ip: str, kind: str, rng: random.Random) -> None:
        assert kind in ("cone", "random")
        self.public_ip, self.kind, self.rng = public_ip, kind, rng
        self.out: dict[tuple, int] = {}                # (inside[, destination]) -> public port
        self.back: dict[int, Addr] = {}                # public port -> inside
        self.allowed: set[tuple[int, Addr]] = set()    # (public port, remote) that may come in

    def outbound(self, inside: Addr, dst: Addr) -> Addr:
        key = (inside,) if self.kind == "cone" else (inside, dst)
        port = self.out.get(key)
        if port is None:
            port = next(p for p in iter(lambda: self.rng.randrange(20000, 60000), None) if p not in self.back)
            self.out[key], self.back[port] = port, inside
        self.allowed.add((port, dst))
        return self.public_ip, port

    def inbound(self, port: int, src: Addr) -> Addr | None:
        return self.back.get(port) if (port, src) in self.allowed else None


class Router:
    def __init__(self, sim: "Sim", loss: float = 0.0) -> None:
        self.sim = sim
        self.loss = loss
        self.hosts: dict[Addr, Callable[[bytes, Addr], None]] = {}
        self.lan_of: dict[str, int | None] = {}        # host ip -> its LAN (None: public)
        self.nats: dict[int, Nat] = {}                 # LAN -> its NAT
        self.by_public: dict[str, Nat] = {}
        self.cut: set[str] = set()                     # host ips whose link is down
        self.drop_if: Callable[[bytes, Addr, Addr], bool] | None = None  # a test's rule: True drops
        self.sent = self.lost = self.filtered = 0

    def add_lan(self, lan: int, nat_kind: str | None) -> None:
        if nat_kind is not None:
            nat = Nat(f"198.51.100.{lan}", nat_kind, self.sim.rng)
            self.nats[lan] = self.by_public[nat.public_ip] = nat

    def attach(self, addr: Addr, lan: int | None, receive: Callable[[bytes, Addr], None]) -> None:
        self.hosts[addr] = receive
        self.lan_of[addr[0]] = lan

    def send(self, src: Addr, packet: bytes, dst: Addr) -> None:
        self.sent += 1
        lan = self.lan_of.get(src[0])
        if src[0] in self.cut or dst[0] in self.cut or (self.drop_if is not None and self.drop_if(packet, src, dst)):
            self.lost += 1
            return
        if ipaddress.IPv4Address(dst[0]) in PRIVATE:
            if self.lan_of.get(dst[0], -1) != lan:  # a private address of another LAN: nowhere
                self.filtered += 1
                return
            seen_from = src
        else:
            seen_from = self.nats[lan].outbound(src, dst) if lan in self.nats else src
        if self.loss and self.sim.rng.random() < self.loss:
            self.lost += 1
            return
        self.sim.at(self.sim.now + LATENCY, lambda: self._arrive(packet, seen_from, dst))

    def _arrive(self, packet: bytes, src: Addr, dst: Addr) -> None:
        nat = self.by_public.get(dst[0])
        if nat is not None:
            inside = nat.inbound(dst[1], src)
            if inside is None:
                self.filtered += 1
                return
            dst = inside
        if dst[0] in self.cut:
            self.lost += 1
            return
        receive = self.hosts.get(dst)
        if receive is not None:
            receive(packet, src)


class SimLighthouse:
    """A lighthouse as lighthouse/server.py wires it, minus sockets: restart() loses
    everything but the lease store (the SQLite file)."""

    def __init__(self, sim: "Sim", name: str, addr: Addr, ttl: float = 60.0) -> None:
        self.sim, self.name, self.addr, self.ttl = sim, name, addr, ttl
        self.identity = sim.ca.identity(name)
        self.leases = LeaseStore(str(sim.tmp / f"{name}.db"), sim.network)
        self.up = False
        sim.router.attach(addr, None, self.receive)
        self.start()

    def start(self) -> None:
        self.revocations = Revocations(self.sim.ca.cert)
        if self.sim.blocklist is not None:
            self.revocations.offer(self.sim.blocklist)
        me = dataclasses.replace(self.identity, revocations=self.revocations)
        self.registry = Registry(self.leases, self.ttl, self.revocations)
        self.dp = FakeDataPath(self.sim.clock, self.sim.network)
        self.dp.set_relay_mode(True)
        self.device = Device(me, self.dp, lambda p, a: self.sim.router.send(self.addr, p, a), self.sim.wall_ns,
                             self.sim.log(self.name), rng=random.Random(self.sim.rng.random()), accept_any=True)
        self.device.on_message = self._on_message
        self.device.on_relay = self._on_relay
        self.up = True
        self.generation = self.sim.timer(self, self.sim.now + TICK)

    def stop(self) -> None:
        self.up = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def receive(self, packet: bytes, src: Addr) -> None:
        if self.up:
            self.device.on_control(self.dp.receive(packet, src), self.sim.now)

    def tick(self) -> None:
        if not self.up:
            return
        self.device.handle_timer(self.sim.now)
        self.registry.expire(self.sim.wall())
        self.sim.timer(self, self.sim.now + TICK)

    def _on_message(self, peer, data: bytes, addr: Addr, now: float) -> None:  # noqa: ANN001
        from flatnet.engine.proto.errors import RemoteProtocolError
        try:
            replies = self.registry.handle(peer.name, peer.cert.raw, data, addr, self.sim.wall())
        except RemoteProtocolError:
            return
        for target, msg in replies:
            dest = self.device.peers.get(target)
            if dest is not None:
                self.device.send_message(dest, msg)

    def _on_relay(self, data: bytes, addr: Addr, now: float) -> None:
        from flatnet.engine.proto.errors import RemoteProtocolError
        try:
            packet, dest = self.registry.relay(data, addr, self.sim.wall())
        except RemoteProtocolError:
            return
        self.sim.router.send(self.addr, packet, dest)

    def publish_blocklist(self, raw: bytes) -> None:
        """What lighthouse/server.py _poll_blocklist does with a newer blocklist file."""
        if not self.revocations.offer(raw):
            return
        self.device.apply_revocations(self.sim.now)
        self.registry.drop_revoked()
        pieces = self.registry.blocklist_messages()
        for name in self.registry.nodes:
            dest = self.device.peers.get(name)
            for msg in pieces if dest is not None else []:
                self.device.send_message(dest, msg)


class SimEngine:
    """An engine's control plane as engine/driver.py wires it with lighthouses."""

    def __init__(self, sim: "Sim", name: str, addr: Addr, lan: int | None, dead_after: float = 3.0) -> None:
        self.sim, self.name, self.addr = sim, name, addr
        self._spin_at, self._spins_here = -1.0, 0  # timer spins in a row at one instant (tick)
        self.identity = sim.ca.identity(name)
        self.revocations = Revocations(sim.ca.cert)
        me = dataclasses.replace(self.identity, revocations=self.revocations)
        self.dp = FakeDataPath(sim.clock, sim.network)
        self.dp.send = lambda p, a: sim.router.send(addr, p, a)
        self.out = io.StringIO()
        self.device = Device(me, self.dp, self.dp.send, sim.wall_ns, Logger(name, stream=self.out),
                             rng=random.Random(sim.rng.random()), accept_any=True, dead_after=dead_after)
        lhs = [self.device.add_peer(lh.identity.cert, None, [lh.addr]) for lh in sim.lighthouses]
        self.device.pinned = {p.name for p in lhs}
        self.subnet: ipaddress.IPv4Network | None = None
        self.client = LighthouseClient(self.device, lhs, sim.network, lambda: [addr], Logger(name, stream=self.out),
                                       self._on_lease, on_blocklist=self._on_blocklist)
        sim.router.attach(addr, lan, self.receive)
        self.device.start_all(sim.now)
        self.sim.timer(self, sim.now)

    def _on_lease(self, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet

    def _on_blocklist(self, raw: bytes, source: str) -> None:
        if self.revocations.offer(raw):
            self.device.apply_revocations(self.sim.now)

    @property
    def ip(self) -> str:
        assert self.subnet is not None, f"{self.name} has no lease yet"
        return str(self.subnet.network_address + 1)

    @property
    def packed_ip(self) -> bytes:
        assert self.subnet is not None, f"{self.name} has no lease yet"
        return (int(self.subnet.network_address) + 1).to_bytes(4, "big")

    def receive(self, packet: bytes, src: Addr) -> None:
        self.device.on_control(self.dp.receive(packet, src), self.sim.now)
        self._pump()

    def tick(self) -> None:
        now = self.sim.now
        self.device.handle_timer(now)
        self.client.handle_timer(now)
        self._pump()
        deadlines = [t for t in (self.device.get_timer(), self.client.get_timer()) if t is not None]
        at = min(min(deadlines, default=now + TICK), now + TICK)
        if at <= now:
            # a deadline still due right after its timer ran: it did nothing when it
            # came (a timer edge). The real driver would spin on it until its clock
            # moves on; here the clock does not move, so the run is counted (Sim.spins,
            # which the simnet tests require to be zero) and fails after MAX_SPINS
            self.sim.spins[self.name] += 1
            self._spins_here = self._spins_here + 1 if self._spin_at == now else 1
            self._spin_at = now
            if self._spins_here > MAX_SPINS:
                raise AssertionError(f"{self.name}: timer spin at virtual {now!r} s: device deadline "
                                     f"{self.device.get_timer()!r}, client deadline {self.client.get_timer()!r}")
            at = now
        self.sim.timer(self, at)

    def _pump(self) -> None:
        """Wants to the device, then held packets out (the inside thread's next pass)."""
        for _ in range(4):
            wants = self.dp.take_wants()
            if wants:
                self.device.on_want(wants, self.sim.now)
            if not self.dp.flush_held() and not self.dp.wants:
                break
        # no re-arming here (engine/driver.py re-arms after every event): every deadline
        # an event creates is at least 1 s away (handshake retry, register retry,
        # liveness), and the armed timer is never more than TICK = 1 s away

    def send_to(self, other: "SimEngine", body: bytes = b"ping") -> None:
        """An overlay packet from this host's first address to the other's."""
        self.dp.send_ip(bytes([0x45]) + bytes(11) + self.packed_ip + other.packed_ip + body)  # as fakedp.ipv4()
        self._pump()

    def received_from(self, other: "SimEngine") -> list[bytes]:
        src = other.packed_ip
        return [p[20:] for _, p in self.dp.delivered if p[12:16] == src]

    def path(self, other: "SimEngine") -> str:
        peer = self.device.peers.get(other.name)
        return self.device.path_of(peer) if peer is not None else "unknown"


class Sim:
    def __init__(self, tmp, seed: int = 1, loss: float = 0.0, network: str = "10.87.0.0/16",  # noqa: ANN001
                 lighthouses: int = 1) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.now = 0.0
        self.ca = TestCA()
        self.network = ipaddress.IPv4Network(network)
        self.blocklist: bytes | None = None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wall_last = 0
        self.armed: dict[str, float] = {}
        self.spins: collections.Counter[str] = collections.Counter()  # node -> timer runs that found nothing due
        self.router = Router(self, loss)
        self.lighthouses = [SimLighthouse(self, f"lighthouse-{i}", (f"203.0.113.{i + 1}", PORT))
                            for i in range(lighthouses)]
        self.engines: dict[str, SimEngine] = {}
        self._lans = itertools.count(1)

    # ---- clocks
    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.ca.now + self.now

    def wall_ns(self) -> int:
        """Wall time in ns, strictly increasing per read: two handshakes in one virtual
        instant still carry distinct TAI64N timestamps (as on a real clock)."""
        self._wall_last = max(self._wall_last + 1000, int(self.wall() * 1e9))
        return self._wall_last

    def log(self, name: str) -> Logger:
        return Logger(name, stream=io.StringIO())

    # ---- events
    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def timer(self, node, when: float) -> None:  # noqa: ANN001
        """Arm node.tick() at `when`; a later arming replaces an earlier one."""
        self.armed[node.name] = when
        self.at(when, lambda: self.armed.get(node.name) == when and (self.armed.pop(node.name), node.tick()))

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, done: Callable[[], bool], timeout: float, what: str = "") -> float:
        """Process events until done() holds (checked after each event) or `timeout`
        virtual seconds passed; returns the virtual time it took. With `what`, not
        getting there fails the test with that description."""
        start, end = self.now, self.now + timeout
        same = 0  # events in this one instant: a livelock shows as an endless run of them
        while not done():
            if not self._queue or self._queue[0][0] > end:
                self.now = end
                if what:
                    raise AssertionError(f"not within {timeout:g} virtual s: {what}")
                return timeout
            when, _, action = heapq.heappop(self._queue)
            same = same + 1 if when <= self.now else 0
            if same > MAX_EVENTS_PER_INSTANT:
                raise AssertionError(f"livelock at virtual {self.now:.3f} s: {same} events without time passing")
            self.now = max(self.now, when)
            action()
        return self.now - start

    # ---- building the network
    def engine(self, name: str, nat: str | None = "cone", dead_after: float = 3.0) -> SimEngine:
        """A host in a LAN of its own behind a NAT of kind `nat` ("cone", "random", None: public)."""
        lan = next(self._lans)
        if nat is None:
            addr, lan_id = (f"203.0.113.{100 + lan}", PORT), None
        else:
            self.router.add_lan(lan, nat)
            addr, lan_id = (f"10.{lan}.0.2", PORT), lan
        e = self.engines[name] = SimEngine(self, name, addr, lan_id, dead_after)
        return e

    def registered(self, *engines: SimEngine) -> bool:
        return all(e.subnet is not None and len(e.client.registered) == len(self.lighthouses)
                   for e in engines or self.engines.values())
