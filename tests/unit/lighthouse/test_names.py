"""Container names through the lighthouse: the wire messages (bounded), the registry's
assembly of pages, and two engines' clients against a real Registry on a virtual clock
(a removed name is gone from the other host within 2 s)."""
import ipaddress
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.lighthouse_client import LighthouseClient
from flatnet.engine.log import Logger
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry
from tests.harness.pki import TestCA
from tests.unit.engine.test_lighthouse_client import FakeDevice

NET = ipaddress.IPv4Network("10.87.0.0/16")


@pytest.fixture
def reg(tmp_path):
    return Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)


def register(reg, name, now=0.0):
    reg.handle(name, b"cert-" + name.encode(), wire.encode("register", endpoints=[]), ("192.0.2.9", 4787), now)


def send_names(reg, name, gen, entries, now=0.0):
    for msg in wire.names_pages(gen, entries):
        assert reg.handle(name, b"cert-" + name.encode(), msg, ("192.0.2.9", 4787), now) == []


def page(reg, asker, version=0, offset=0, now=0.0):
    [(to, data)] = reg.handle(asker, b"cert-" + asker.encode(),
                              wire.encode("names_query", version=version, offset=offset), ("192.0.2.9", 4787), now)
    kind, msg = wire.decode(data)
    assert to == asker and kind == "names_page"
    return msg


def all_names(reg, asker, now=0.0):
    out, msg = [], page(reg, asker, now=now)
    out += msg["names"]
    while msg["next"]:
        msg = page(reg, asker, offset=msg["next"], now=now)
        out += msg["names"]
    return out


def test_names_wire_round_trip_and_limits():
    pages = wire.names_pages(7, [(f"c{i}", f"10.87.1.{i % 250 + 2}") for i in range(wire.MAX_NAMES + 5)])
    got = [wire.decode(p)[1] for p in pages]
    assert all(len(p) <= wire.MAX_MESSAGE for p in pages)
    assert sum(len(m["names"]) for m in got) == wire.MAX_NAMES and got[0]["total"] == wire.MAX_NAMES
    bad = [{"t": "names", "v": 1, "gen": 1, "total": 1, "offset": 0, "names": [["a", "10.87.1.2"]] * 2},
           {"t": "names", "v": 1, "gen": 1, "total": 600, "offset": 0, "names": []},
           {"t": "names", "v": 1, "gen": -1, "total": 0, "offset": 0, "names": []},
           {"t": "names", "v": 1, "gen": 1, "total": 1, "offset": 0, "names": [["a" * 64, "10.87.1.2"]]},
           {"t": "names", "v": 1, "gen": 1, "total": 1, "offset": 0, "names": [["a", "999.1.1.1"]]},
           {"t": "names", "v": 1, "gen": 1, "total": 1, "offset": 0, "names": [["a", "10.87.1.2", "x"]]},
           {"t": "names_page", "v": 1, "version": 1, "next": 0, "names": [["a", "10.87.1.2"]]},
           {"t": "names_query", "v": 1, "version": 1.5, "offset": 0}]
    for m in bad:
        with pytest.raises(RemoteProtocolError):
            wire.decode(msgpack.packb(m))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "v", "gen", "total", "offset", "names", "version", "next"]),
                       st.one_of(st.integers(-5, (1 << 64) - 1), st.text(max_size=70), st.booleans(), st.none(),
                                 st.lists(st.lists(st.text(max_size=70), max_size=4), max_size=20)), max_size=8))
def test_fuzz_names_messages_are_accepted_or_refused_never_raise(m):
    m.setdefault("v", 1)
    for t in ("names", "names_query", "names_page"):
        m["t"] = t
        try:
            wire.decode(msgpack.packb(m))
        except RemoteProtocolError:
            pass


def test_registry_takes_a_list_when_all_pages_arrived_and_checks_each_entry(reg):
    register(reg, "a")  # 10.87.1.0/24
    register(reg, "b")  # 10.87.2.0/24
    entries = [(f"web{i}", f"10.87.1.{i + 2}") for i in range(40)] + [("BAD_NAME", "10.87.1.99"),
                                                                          ("theirs", "10.87.2.5")]
    pages = wire.names_pages(5, entries)
    all_names(reg, "b")   # the first query takes the online set
    v0 = reg.names_version
    for msg in pages[:-1]:
        reg.handle("a", b"cert-a", msg, ("192.0.2.9", 4787), 0.0)
    assert all_names(reg, "b") == [] and reg.names_version == v0   # not complete yet
    reg.handle("a", b"cert-a", pages[-1], ("192.0.2.9", 4787), 0.0)
    got = all_names(reg, "b")
    assert len(got) == 40 and ("web3", "10.87.1.5", "a") in got
    assert reg.limited["names_refused"] == 2  # a bad name, an address outside a's subnet
    assert all_names(reg, "a") == []          # one's own names are not sent back
    send_names(reg, "a", 4, [("old", "10.87.1.2")])   # an older generation arriving late
    assert len(all_names(reg, "b")) == 40


def test_unchanged_version_is_one_empty_page_and_offline_nodes_vanish(reg):
    register(reg, "a")
    register(reg, "b")
    send_names(reg, "a", 1, [("web", "10.87.1.2")])
    first = page(reg, "b")
    assert first["names"] == [("web", "10.87.1.2", "a")]
    assert page(reg, "b", version=first["version"])["names"] == []
    register(reg, "b", now=500.0)   # a is silent for more than 3 x ttl
    later = page(reg, "b", version=first["version"], now=500.0)
    assert later["version"] != first["version"] and later["names"] == []


def test_names_before_register_are_refused(reg):
    [(to, data)] = reg.handle("x", b"cert-x", wire.names_pages(1, [])[0], ("192.0.2.9", 4787), 0.0)
    assert wire.decode(data)[1]["code"] == "unregistered"


class WiredDevice(FakeDevice):
    """A fake device whose messages to the lighthouse go to a real Registry."""

    def __init__(self, ca, name, net):
        super().__init__(ca)
        self.me = ca.identity(name)
        self.name, self.net = name, net

    def send_message(self, peer, data):
        self.net.queue.append((self.name, data))
        return True


class Wire:
    def __init__(self, reg):
        self.reg, self.queue, self.clients, self.now = reg, [], {}, 0.0

    def pump(self):
        for _ in range(1000):
            if not self.queue:
                return
            sender, data = self.queue.pop(0)
            for target, reply in self.reg.handle(sender, b"cert-" + sender.encode(), data, ("192.0.2.9", 4787),
                                                 self.now):
                client = self.clients[target]
                client.on_message(client.lighthouses["lh"], reply, ("192.0.2.254", 4787), self.now)

    def run(self, seconds, step=0.05):
        end = self.now + seconds
        while self.now < end:
            for c in self.clients.values():
                if c.get_timer() <= self.now:
                    c.handle_timer(self.now)
            self.pump()
            self.now = round(self.now + step, 6)


def test_two_engines_see_each_others_names_and_a_removal_within_2s(reg):
    ca = TestCA()
    net = Wire(reg)
    seen = {}
    for name in ("host-a", "host-b"):
        dev = WiredDevice(ca, name, net)
        lh = SimpleNamespace(name="lh", endpoint=("192.0.2.254", 4787), keys=True, relay=None,
                         session=SimpleNamespace(current=None, pending=None, last_handshake=None))
        net.clients[name] = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                                             lambda s: None, on_names=lambda e, n=name: seen.__setitem__(n, e))
    net.run(2)
    a = net.clients["host-a"]
    a_ip = str(a.subnet.network_address + 2)
    a.set_local_names([("web1", a_ip), ("db", a_ip)])
    net.pump()
    net.run(1.0)
    assert sorted(seen["host-b"]) == [("db", a_ip, "host-a"), ("web1", a_ip, "host-a")]
    assert seen.get("host-a", []) == []
    a.set_local_names([("db", a_ip)])
    net.pump()
    t0 = net.now
    while ("web1", a_ip, "host-a") in seen["host-b"] and net.now - t0 < 5:
        net.run(0.05)
    assert net.now - t0 < 2.0 and seen["host-b"] == [("db", a_ip, "host-a")]


def test_names_queries_are_rate_limited_per_node(reg):
    register(reg, "a")
    served = 0
    for _ in range(200):
        try:
            page(reg, "a", now=1.0)
            served += 1
        except RemoteProtocolError:
            pass
    assert served == 64 and reg.limited["names_queries"] == 136


def test_engine_drops_names_outside_the_overlay_or_breaking_the_rule():
    ca = TestCA()
    seen = []
    dev = FakeDevice(ca)
    lh = SimpleNamespace(name="lh", endpoint=("192.0.2.254", 4787), keys=True, relay=None,
                         session=SimpleNamespace(current=None, pending=None, last_handshake=None))
    client = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                              lambda s: None, on_names=seen.append)
    page = wire.encode("names_page", version=3, next=0, names=[("web", "10.87.2.2", "b"),
                                                               ("meta", "169.254.169.254", "b"),
                                                               ("bad-", "10.87.2.3", "b")])
    client.on_message(lh, page, ("192.0.2.254", 4787), 0.0)
    assert seen == [[("web", "10.87.2.2", "b")]] and dev.errors["names_refused"] == 2
