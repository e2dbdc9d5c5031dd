"""A lighthouse forgets the session of a node that never registered once its keys
expired (no handshake for 180 s), and keeps a registered node's until the registry
expires it. Before, nothing removed a node the registry never knew (its register was
refused, e.g. no /24 left, or it never sent one): each such node kept a session slot
for good, and a full table refuses every new node (sessions_full)."""
import io
import ipaddress

from flatnet.engine.datapath import DataPath
from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import control as wire
from flatnet.lighthouse import server
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry
from tests.harness.pki import TestCA

NET = ipaddress.IPv4Network("10.87.0.0/16")


class Clock:
    """server.time for _tick: monotonic() and time() from the test."""
    def __init__(self, wall):
        self.t, self.wall = 0.0, wall  # wall: the test CA's time (certificates are valid then)

    def monotonic(self):
        return self.t

    def time(self):
        return self.wall + self.t

    def time_ns(self):
        return int(self.time() * 1e9)


class Loop:
    def call_later(self, delay, fn):
        pass


class NoBlocklist:
    def read_if_changed(self):
        return None


def lighthouse(ca):
    lh = object.__new__(server.Lighthouse)  # no sockets, store thread or control socket
    lh.log = Logger("t", stream=io.StringIO())
    lh.dp = DataPath(NET, 1420, max_peers=8)
    lh._allocating = set()
    lh.registry = Registry(LeaseStore(":memory:", NET), ttl=600)
    lh.loop, lh.blocklist_file = Loop(), NoBlocklist()
    lh.wire = []
    lh._send = lambda pkt, addr: lh.wire.append(pkt)
    lh.device = lh._make_device(ca.identity("lh"))
    return lh


def connect(ca, lh, name, i, now):
    """`name` handshakes with the lighthouse from 192.0.2.i."""
    node = Device(ca.identity(name), DataPath(NET, 1420, max_peers=4), lambda pkt, addr: out.append(pkt),
                  lambda: ca.now * 10**9, Logger("t", stream=io.StringIO()))
    out = []
    node.add_peer(lh.device.me.cert, None, [("192.0.2.100", 4787)])
    node.connect(node.peers["lh"], now)
    init = next(pkt for pkt in out if pkt[0] == 1)
    lh.device.on_control([ControlItem(CTRL_RAW, -1, init, (f"192.0.2.{i}", 4787))], now)
    assert name in lh.device.peers and lh.device.peers[name].session.current is not None


def test_an_unregistered_nodes_session_is_forgotten_when_its_keys_expire(monkeypatch):
    ca = TestCA()
    clock = Clock(ca.now)
    monkeypatch.setattr(server, "time", clock)
    lh = lighthouse(ca)
    connect(ca, lh, "node-1", 1, 1.0)
    connect(ca, lh, "node-2", 2, 1.0)
    peer1 = lh.device.peers["node-1"]
    [(to, lease)] = lh.registry.handle("node-1", peer1.cert.raw, wire.encode("register", endpoints=[]),
                                       ("192.0.2.1", 4787), clock.time())
    assert wire.decode(lease)[0] == "lease"
    # keys made at 1.0 expire at 181.0 (REJECT_AFTER_TIME); the lighthouse's own rekey
    # (the responder's, at 131.0) gives up 90 s later: nothing is left of the session
    for t in range(2, 240):
        clock.t = float(t)
        lh._tick()
    assert "node-2" not in lh.device.peers and len(lh.device.by_slot) == 1  # its slot is free again
    assert "node-1" in lh.device.peers  # registered: the registry decides (3 x ttl)
    # what the status says of it (benchmarks/lighthouse_period.py reads these)
    assert lh.session_status() == {"held": 1, "with_keys": 0, "rekeys_started": 1, "handshakes_initiator": 0,
                                   "handshakes_responder": 2, "sessions_expired": 2, "handshakes_failed": 2,
                                   "peers_removed": 1}
    connect(ca, lh, "node-2", 2, 240.0)  # it may come back


def test_a_session_whose_first_lease_failed_after_its_keys_expired_is_forgotten(monkeypatch):
    """A first lease with etcd waits in a worker (server._allocating). When it takes
    longer than the session's keys live (about 3.5 minutes: etcd slow, or many
    allocations queued for the 8 workers) and then fails, the idle check had skipped
    the node (it was allocating) and never looks at a session without keys again: its
    slot stayed taken for good. Fails before the fix (node-2 kept its slot)."""
    from flatnet.lighthouse.store import StoreUnavailable

    class SlowEtcd(LeaseStore):
        def lease_needs_io(self, name):
            return True

        def lease_for(self, name, now):
            raise StoreUnavailable("no new lease now: etcd /v3/kv/txn: no member answered")

    ca = TestCA()
    clock = Clock(ca.now)
    monkeypatch.setattr(server, "time", clock)
    lh = lighthouse(ca)
    lh.registry = Registry(SlowEtcd(":memory:", NET), ttl=600)
    lh.leases, lh._out, lh.rejected = lh.registry.leases, [], {}
    lh._flush = lh._out.clear  # no socket here (the error answer has no key to be sealed with anyway)
    connect(ca, lh, "node-2", 2, 1.0)
    peer = lh.device.peers["node-2"]
    register = wire.encode("register", endpoints=[])
    lh._allocating.add("node-2")  # its register went to a worker (what _on_message does)
    for t in range(2, 240):  # the allocation outlasts the keys
        clock.t = float(t)
        lh._tick()
    assert "node-2" in lh.device.peers  # skipped while it allocates
    lh._allocate("node-2")  # the worker: etcd failed
    lh._allocated(peer, register, ("192.0.2.2", 4787), 1.0)
    assert "node-2" not in lh.device.peers and len(lh.device.by_slot) == 0  # its slot is free again
    connect(ca, lh, "node-2", 2, 240.0)  # it may come back
