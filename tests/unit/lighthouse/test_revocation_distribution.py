"""How a blocklist travels: the lighthouse hands it (in pieces) to a node that registers
with an older serial, forgets revoked nodes (no query finds them, no relay serves them);
the engine's lighthouse client puts the pieces together and passes the whole on."""
import ipaddress
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.log import Logger
from flatnet.engine.proto import revocation as rv
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.handshake import Identity
from flatnet.engine.lighthouse_client import LighthouseClient
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry
from tests.harness.pki import TestCA
from tests.unit.engine.test_lighthouse_client import FakeDevice

NET = ipaddress.IPv4Network("10.87.0.0/16")
NOW = TestCA().now


@pytest.fixture
def net(tmp_path):
    ca = TestCA()
    rev = rv.Revocations(ca.cert)
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60, revocations=rev)
    return ca, rev, reg


def register(reg, ident, src, held=0, now=0.0):
    out = reg.handle(ident.cert.name, ident.cert.raw, wire.encode("register", endpoints=[], blocklist=held), src, now)
    return [wire.decode(data) for _, data in out]


def test_a_node_holding_an_older_blocklist_gets_the_current_one_in_pieces(net):
    ca, rev, reg = net
    a = ca.identity("host-a")
    # big enough for several pieces
    raw = rv.create(ca.key, ca.cert, 40, NOW, {f"old-{i}": NOW for i in range(200)}, [])
    assert rev.offer(raw)
    msgs = register(reg, a, ("192.0.2.1", 4787), held=0)
    assert msgs[0][0] == "lease"
    pieces = [m for k, m in msgs[1:] if k == "blocklist"]
    assert len(pieces) == len(msgs) - 1 > 1
    assert b"".join(p["data"] for p in pieces) == raw and {p["serial"] for p in pieces} == {40}
    # up to date: the lease alone
    assert [k for k, _ in register(reg, a, ("192.0.2.1", 4787), held=40)] == ["lease"]


def test_revoked_nodes_are_forgotten_and_cannot_be_found(net):
    ca, rev, reg = net
    a, b = ca.identity("host-a"), ca.identity("host-b")
    register(reg, a, ("192.0.2.1", 4787))
    register(reg, b, ("192.0.2.2", 4787))
    rev.offer(rv.create(ca.key, ca.cert, 2, NOW, {"host-b": NOW}, []))
    assert reg.drop_revoked() == ["host-b"]
    [(to, data)] = reg.handle("host-a", a.cert.raw, wire.encode("query", name="host-b"), ("192.0.2.1", 4787), 1.0)
    assert wire.decode(data)[1]["code"] == "unknown"
    with pytest.raises(RemoteProtocolError, match="not a registered node"):
        reg.relay(b"\x05\x00\x00\x00\x01\x00\x00\x00payload", ("192.0.2.2", 4787), 1.0)


def test_the_engine_client_reassembles_and_hands_the_blocklist_on(net):
    ca, rev, reg = net
    raw = rv.create(ca.key, ca.cert, 40, NOW, {f"old-{i}": NOW for i in range(200)}, [])
    rev.offer(raw)
    dev = FakeDevice(ca)
    dev.me = Identity(dev.me.static_private, dev.me.cert, dev.me.ca, rv.Revocations(ca.cert))
    lh = SimpleNamespace(name="lh", endpoint=("192.0.2.254", 4787), keys=True, session=SimpleNamespace(current=None, pending=None, last_handshake=None),
                         relay=None)
    got = []
    client = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                              lambda s: None, on_blocklist=lambda data, src: got.append((data, src)))
    client.register(0.0)
    assert dev.sent[-1][1][1]["blocklist"] == 0  # it tells the lighthouse what it holds
    for data in reg.blocklist_messages():
        client.on_message(lh, data, ("192.0.2.254", 4787), 1.0)
    assert got == [(raw, "lh")]
    dev.me.revocations.offer(raw)
    client.register(2.0)
    assert dev.sent[-1][1][1]["blocklist"] == 40
    for data in reg.blocklist_messages():  # what it holds already: not collected again
        client.on_message(lh, data, ("192.0.2.254", 4787), 3.0)
    assert len(got) == 1 and client.errors == 0


def test_wire_blocklist_piece_limits():
    ok = wire.encode("blocklist", serial=1, total=10, offset=0, data=b"x" * 10)
    assert wire.decode(ok)[1] == {"serial": 1, "total": 10, "offset": 0, "data": b"x" * 10}
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("blocklist", serial=-1, total=10, offset=0, data=b"x"))
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("blocklist", serial=1, total=rv.MAX_BYTES + 1, offset=0, data=b"x"))
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("blocklist", serial=1, total=10, offset=0, data=b""))
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("register", endpoints=[], blocklist="7"))


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, (1 << 64) - 1), st.floats(), st.text(max_size=8),
                   st.binary(max_size=1100), st.lists(st.integers(-9, 9), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["serial", "total", "offset", "data", "blocklist", "endpoints"]), VALUES,
                       max_size=6), st.sampled_from(["blocklist", "register"]))
def test_fuzz_blocklist_and_register_fields(fields, kind):
    data = msgpack.packb(dict(fields, t=kind, v=wire.VERSION), use_bin_type=True)
    try:
        got_kind, msg = wire.decode(data)
    except RemoteProtocolError:
        return
    assert got_kind == kind
    if kind == "blocklist":
        assert 0 < len(msg["data"]) <= 1024 and 0 <= msg["total"] <= rv.MAX_BYTES


def test_config_blocklist_paths():
    from flatnet.engine.config import parse as engine_parse
    from flatnet.lighthouse.config import parse as lighthouse_parse
    assert lighthouse_parse('[pki]\nca = "/srv/pki/ca.crt"\n').blocklist == "/srv/pki/blocklist.bin"  # beside the CA
    assert lighthouse_parse('[pki]\nblocklist = "/x/b.bin"\n').blocklist == "/x/b.bin"
    assert engine_parse('[network]\nsubnet = "10.87.1.0/24"\n').blocklist == ""                     # only if set
    assert engine_parse('[pki]\nblocklist = "/x/b.bin"\n[network]\nsubnet = "10.87.1.0/24"\n').blocklist == "/x/b.bin"


def test_pieces_from_one_lighthouse_do_not_block_another(net):
    """A broken (or hostile) lighthouse announces a huge serial and never finishes; the
    blocklist from the other lighthouse still gets through."""
    ca, rev, reg = net
    raw = rv.create(ca.key, ca.cert, 40, NOW, {f"old-{i}": NOW for i in range(200)}, [])
    rev.offer(raw)
    dev = FakeDevice(ca)
    dev.me = Identity(dev.me.static_private, dev.me.cert, dev.me.ca, rv.Revocations(ca.cert))
    lhs = [SimpleNamespace(name=n, endpoint=("192.0.2.254", 4787), keys=True, session=SimpleNamespace(current=None, pending=None, last_handshake=None),
                           relay=None) for n in ("lh1", "lh2")]
    got = []
    client = LighthouseClient(dev, lhs, NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                              lambda s: None, on_blocklist=lambda data, src: got.append(src))
    client.on_message(lhs[0], wire.encode("blocklist", serial=(1 << 63) - 1, total=4000, offset=0, data=b"x" * 1024),
                      ("192.0.2.254", 4787), 0.0)
    for data in reg.blocklist_messages():
        client.on_message(lhs[1], data, ("192.0.2.254", 4787), 1.0)
    assert got == ["lh2"]
