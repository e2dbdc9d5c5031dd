"""Clean-room nodes (tests/cleanroom, written from docs/protocol.md alone) against a
real lighthouse, in two network namespaces this test makes.

The lighthouse is a black box: the CLI makes the keys, its config file starts it and
its control socket (GET /status) gives the counters. Every wait is bounded; the
namespaces and the lighthouse go away even when a test fails."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from tests.cleanroom import certs
from tests.cleanroom.lighthouse import Catalog, Error, NamesPage, Lease, LighthouseNode, PeerInfo
from tests.harness.netns import Netns
from tests.integration.test_cleanroom_peer import _control, _sockets_in

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LH_UL, CLEAN_UL = "172.31.78.1", "172.31.78.2"
NETWORK = "10.87.0.0/16"
NODES = {"clr-a": 4801, "clr-b": 4802, "clr-c": 4803, "clr-d": 4804, "clr-e": 4805, "clr-f": 4806,
         "clr-g": 4807, "clr-r": 4808}
TCP_PORT = 4443  # the main lighthouse's TCP relay (7.1)
SMALL_NET, SMALL_PORT = "10.88.0.0/23", 4788
ENGINE, ENGINE_PORT = "clr-eng", 4790  # a real engine, in the clean-room namespace


@dataclass
class World:
    lh: Netns
    clean: Netns
    pki: str
    ca: certs.Cert
    lh_cert: bytes
    sock_path: str
    log: str
    engine_sock: str
    engine_log: str
    nodes: dict[str, LighthouseNode] = field(default_factory=dict)

    def node(self, name: str, port: int = 0, lh_port: int = 4787) -> LighthouseNode:
        key = f"{name}@{lh_port}"
        if key not in self.nodes:
            s = _sockets_in(self.clean, [(CLEAN_UL, port or NODES[name])])[0]
            n = LighthouseNode(s, certs.read_key_file(f"{self.pki}/{name}.key"),
                               open(f"{self.pki}/{name}.crt", "rb").read(), self.ca, self.lh_cert,
                               (LH_UL, lh_port))
            self.nodes[key] = n
            n.connect()
        return self.nodes[key]

    def status(self) -> dict[str, Any]:
        st = _control(self.sock_path, "/status")
        assert isinstance(st, dict)
        return st

    def logtail(self) -> str:
        return open(self.log, errors="replace").read()[-3000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = str(tmp_path_factory.mktemp("cleanroom_lh"))
    made: list[Netns] = []
    proc: subprocess.Popen[bytes] | None = None
    eproc: subprocess.Popen[bytes] | None = None
    sproc: subprocess.Popen[bytes] | None = None
    w: World | None = None
    try:
        lh, clean = Netns("crlh"), Netns("crln")
        made += [lh, clean]
        lh.link(clean, ("vl", LH_UL), ("vn", CLEAN_UL))
        pki = f"{d}/pki"
        cli = [sys.executable, "-m", "flatnet"]
        subprocess.run(cli + ["ca", "init", "--dir", pki], cwd=REPO, check=True, capture_output=True, timeout=60)
        for n in ["lighthouse", ENGINE, *NODES]:
            groups = ["--groups", "relay"] if n == "clr-r" else []  # clr-r may offer to relay (10.3)
            subprocess.run(cli + ["cert", "sign", "--ca-dir", pki, "--name", n, *groups], cwd=REPO, check=True,
                           capture_output=True, timeout=60)
        # a blocklist beside ca.crt, where the lighthouse looks by default (docs/lighthouse.md)
        subprocess.run(cli + ["cert", "revoke", "--ca-dir", pki, "clr-revoked"], cwd=REPO, check=True,
                       capture_output=True, timeout=60)
        # a second lighthouse: a /23 (one /24 to lease, block 0 never is), ttl 5 (its least)
        with open(f"{d}/small.toml", "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/lighthouse.crt"\nkey = "{pki}/lighthouse.key"\n'
                    f'[network]\ncidr = "{SMALL_NET}"\n[listen]\nhost = "0.0.0.0"\nport = {SMALL_PORT}\n'
                    f'[paths]\nstate_dir = "{d}/sstate"\nrun_dir = "{d}/srun"\n[registry]\nttl = 5\n'
                    f'[relay]\ntcp_port = 0\n[metrics]\nlisten = "127.0.0.1:9589"\n[log]\nlevel = "debug"\n')
        conf = f"{d}/lighthouse.toml"
        with open(conf, "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/lighthouse.crt"\nkey = "{pki}/lighthouse.key"\n'
                    f'[network]\ncidr = "{NETWORK}"\n[listen]\nhost = "0.0.0.0"\nport = 4787\n'
                    f'[paths]\nstate_dir = "{d}/state"\nrun_dir = "{d}/run"\n'
                    f'[relay]\ntcp_port = {TCP_PORT}\n[log]\nlevel = "debug"\n')
        log = f"{d}/lighthouse.log"
        w = World(lh, clean, pki, certs.load_ca(open(f"{pki}/ca.crt", "rb").read()),
                  open(f"{pki}/lighthouse.crt", "rb").read(), f"{d}/run/lighthouse.sock", log,
                  f"{d}/erun/engine.sock", f"{d}/engine.log")
        with open(log, "wb") as lf:
            proc = subprocess.Popen(["ip", "netns", "exec", lh.name, sys.executable, "-m", "flatnet.lighthouse",
                                     "--config", conf], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        with open(f"{d}/small.log", "wb") as lf:
            sproc = subprocess.Popen(["ip", "netns", "exec", lh.name, sys.executable, "-m", "flatnet.lighthouse",
                                      "--config", f"{d}/small.toml"], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        econf = f"{d}/engine.toml"
        with open(econf, "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/{ENGINE}.crt"\nkey = "{pki}/{ENGINE}.key"\n'
                    f'[network]\ncidr = "{NETWORK}"\nmasquerade = false\n'
                    f'[paths]\nrun_dir = "{d}/erun"\nstate_dir = "{d}/estate"\n'
                    f'[listen]\nhost = "0.0.0.0"\nport = {ENGINE_PORT}\n[dns]\nenabled = false\n'
                    f'[gateway]\npodman_labels = false\n[log]\nlevel = "debug"\n'
                    f'[[lighthouses]]\nname = "lighthouse"\ncert = "{pki}/lighthouse.crt"\n'
                    f'endpoints = ["{LH_UL}:4787"]\ntcp_port = 0\n')
        with open(w.engine_log, "wb") as lf:
            eproc = subprocess.Popen(["ip", "netns", "exec", clean.name, sys.executable, "-m", "flatnet.engine",
                                      "--config", econf], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        for pr, sock, lg in ((proc, w.sock_path, log), (sproc, f"{d}/srun/lighthouse.sock", f"{d}/small.log")):
            while True:
                try:
                    _control(sock, "/status")
                    break
                except OSError:
                    if pr.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"lighthouse did not come up:\n{open(lg).read()[-3000:]}") from None
                    time.sleep(0.1)
        yield w
    finally:
        for n in (w.nodes.values() if w is not None else ()):
            n.peer.sock.close()
        for pr in (eproc, sproc, proc):
            if pr is not None:
                pr.terminate()
                try:
                    pr.wait(5)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait(5)
        for ns in made:
            ns.delete()


def _lease(n: LighthouseNode) -> Lease:
    got = n.receive(lambda x: isinstance(x, Lease), 5)
    assert isinstance(got, Lease), f"no lease; refused: {n.errors}"
    return got


def test_register_then_query_by_addr_and_name(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([("192.0.2.10", 4801)])
    la = _lease(a)
    b.register([("198.51.100.7", 4802), ("127.0.0.1", 9)])  # loopback: refused by the endpoint rule (10.4)
    lb = _lease(b)
    net = ipaddress.IPv4Network(NETWORK)
    for le, port in ((la, 4801), (lb, 4802)):
        assert le.network == net and le.subnet.prefixlen == 24 and le.subnet.subnet_of(net)
        assert le.subnet.network_address != net.network_address  # block 0 is never leased (10.3)
        assert le.observed == (CLEAN_UL, port)
        assert le.ttl == 60 and le.relay is True and le.relays == []
    assert la.subnet != lb.subnet

    a.query(addr=str(lb.subnet.network_address + 5))
    got = a.receive(lambda x: isinstance(x, PeerInfo), 5)
    assert isinstance(got, PeerInfo), f"no peer answer; refused: {a.errors}"
    assert got.kind == "peer" and got.name == "clr-b" and got.subnet == lb.subnet
    assert got.cert.key == certs.verify_node(open(f"{world.pki}/clr-b.crt", "rb").read(), world.ca,
                                             time.time()).key
    # the observed address first, then the node's own, those the rule allows (10.3)
    assert got.endpoints == [(CLEAN_UL, 4802), ("198.51.100.7", 4802)], got.endpoints
    assert got.local == [("198.51.100.7", 4802)], got.local
    assert got.refused == 0
    # ... and the target gets a punch describing the asker
    punch = b.receive(lambda x: isinstance(x, PeerInfo), 5)
    assert isinstance(punch, PeerInfo) and punch.kind == "punch" and punch.name == "clr-a"
    assert punch.subnet == la.subnet and punch.endpoints == [(CLEAN_UL, 4801), ("192.0.2.10", 4801)]
    assert world.status()["limited"].get("endpoints_refused", 0) >= 1

    b.query(name="clr-a")
    got = b.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "peer", 5)
    assert isinstance(got, PeerInfo) and got.name == "clr-a" and got.subnet == la.subnet
    assert a.errors == [] and b.errors == []


def test_query_errors(world: World) -> None:
    a, c = world.node("clr-a"), world.node("clr-c")
    c.query(name="clr-a")  # c never registered
    e = c.receive(lambda x: isinstance(x, Error), 5)
    assert isinstance(e, Error) and e.code == "unregistered", e
    a.register([])
    _lease(a)
    for q in ({"name": "nobody"}, {"addr": "10.87.250.1"}, {"name": "clr-a"}):  # the asker itself is unknown too
        a.query(**q)
        e = a.receive(lambda x: isinstance(x, Error), 5)
        assert isinstance(e, Error) and e.code == "unknown", (q, e)


def _rejected(world: World) -> dict[str, int]:
    return dict(world.status().get("rejected") or {})


def _wait_counter(world: World, key: str, before: int) -> int:
    for _ in range(50):
        now = _rejected(world).get(key, 0)
        if now > before:
            return now
        time.sleep(0.1)
    return _rejected(world).get(key, 0)


@pytest.mark.parametrize("msg,reason", [
    ({"t": "register", "v": 1, "endpoints": [["192.0.2.1", "4787"]]}, "bad_control"),  # port as str
    ({"t": "register", "v": 1, "endpoints": [["192.0.2.1", True]]}, "bad_control"),  # bool is not int
    ({"t": "query", "v": 1, "name": b"clr-a"}, "bad_control"),  # bin where str is asked
    ({"t": "register", "v": 2}, "bad_control"),
    ({"t": b"register", "v": 1}, "bad_control"),  # t is a str, not bin (1)
    ({"t": "register", "v": "1"}, "bad_control"),
    ({"t": "register", "v": 1, "endpoints": [[b"192.0.2.1", 4787]]}, "bad_control"),
    ({"t": "register", "v": 1, "relay": 1}, "bad_control"),  # a bool, not an int
    ({"t": "catalog_query", "v": 1, "offset": 2**20 + 1}, "bad_control"),
    ({"t": "hello", "v": 1}, "bad_control"),
    ({"t": "lease", "v": 1}, "bad_control"),  # fields are checked before the direction (10.1)
    ({"t": "lease", "v": 1, "subnet": "10.87.9.0/24", "network": NETWORK, "observed": ["192.0.2.1", 1]},
     "unexpected_control"),  # a well-formed lease: a lighthouse accepts none (10.3)
    ({"t": "peer", "v": 1, "name": "x"}, "bad_control"),
    ({"t": "register", "v": 1, "endpoints": [["192.0.2.1", p] for p in range(1, 10)]}, "bad_control"),  # > 8
])
def test_lighthouse_refuses_under_the_pages_name(world: World, msg: dict[str, Any], reason: str) -> None:
    d = world.node("clr-d")
    before = _rejected(world).get(reason, 0)
    d.send_raw(msgpack.packb(msg, use_bin_type=True))
    assert _wait_counter(world, reason, before) == before + 1, world.logtail()


@pytest.mark.parametrize("size,key,reason", [(1401, "rejected", "oversized_control"),
                                             (1500, "rejected", "oversized_control"),
                                             (1501, "drops", "too_big")])
def test_oversized_control_is_refused(world: World, size: int, key: str, reason: str) -> None:
    """Over 1400 bytes is `oversized_control` (9); the data path's 1500-byte limit for
    the control plane (9, 12 `too_big`) applies to the decrypted plaintext of a type 4."""
    d = world.node("clr-d")
    before = dict(world.status().get(key) or {}).get(reason, 0)
    raw = msgpack.packb({"t": "register", "v": 1, "pad": "x" * 1000, "pad2": ""}, use_bin_type=True)
    raw = msgpack.packb({"t": "register", "v": 1, "pad": "x" * 1000, "pad2": "y" * (size - len(raw) - 2)},
                        use_bin_type=True)
    assert len(raw) == size
    d.send_raw(raw)
    for _ in range(50):
        now = dict(world.status().get(key) or {}).get(reason, 0)
        if now > before:
            break
        time.sleep(0.1)
    assert now == before + 1, world.logtail()


def test_a_closed_socket_is_fine(world: World) -> None:
    """Sanity for the fixture: the clean-room sockets live inside the namespace."""
    assert world.node("clr-a").peer.sock.getsockname() == (CLEAN_UL, NODES["clr-a"])
    assert world.node("clr-a").peer.sock.family == socket.AF_INET


def test_a_real_engine_registers_and_a_cleanroom_node_finds_it(world: World) -> None:
    g = world.node("clr-g")
    g.register([])
    lg = _lease(g)
    got = None
    for _ in range(40):  # the engine registers at start, then every 1 s until answered (8)
        g.query(name=ENGINE)
        got = g.receive(lambda x: isinstance(x, PeerInfo | Error), 2)
        if isinstance(got, PeerInfo):
            break
        time.sleep(0.25)
    assert isinstance(got, PeerInfo), f"engine never found: {got}\n{open(world.engine_log).read()[-2000:]}"
    assert got.kind == "peer" and got.name == ENGINE and got.subnet.subnet_of(ipaddress.IPv4Network(NETWORK))
    assert got.endpoints[0] == (CLEAN_UL, ENGINE_PORT), got.endpoints
    # the peer answer is enough to reach the engine: its certificate and endpoint (10.3)
    g.peer.add_remote(got.cert.raw, got.endpoints[0])
    g.peer.initiate(ENGINE)
    ev = g.peer.poll(lambda e: e.kind in ("established", "responded") and e.remote == ENGINE, 10)
    assert ev is not None, f"{dict(g.peer.drops)}\n{open(world.engine_log).read()[-2000:]}"
    # the engine took the lighthouse's punch (describing g) without a refusal
    st = _control(world.engine_sock, "/status")
    assert isinstance(st, dict)
    errs = {k: v for k, v in (st.get("control_errors") or {}).items() if v}
    assert not {"bad_control", "bad_cert", "unexpected_control"} & set(errs), errs
    assert lg.subnet != got.subnet


def test_query_with_addr_and_name_takes_addr_and_leases_are_sticky(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([])
    _lease(a)
    b.register([])
    lb = _lease(b)
    b.register([])
    assert _lease(b).subnet == lb.subnet  # sticky per certificate name (10.3)
    a.query(addr=str(lb.subnet.network_address + 9), name="nobody")
    got = a.receive(lambda x: isinstance(x, PeerInfo | Error), 5)
    assert isinstance(got, PeerInfo) and got.name == "clr-b", got


def test_error_has_a_msg(world: World) -> None:
    a = world.node("clr-a")
    a.register([])
    _lease(a)
    a.query(name="nobody")
    e = a.receive(lambda x: isinstance(x, Error), 5)
    assert isinstance(e, Error) and e.code == "unknown" and isinstance(e.msg, str) and e.service is None


def test_services_catalog_and_service_refused(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    b.register([])
    lb = _lease(b)
    inside = str(lb.subnet.network_address + 2)
    b.register([], services=[{"name": "Web-CR", "addr": inside, "port": 80},
                             {"name": "far-cr", "addr": "10.87.250.2", "port": 80}],
               gateway=[CLEAN_UL, 8080])
    assert _lease(b).subnet == lb.subnet
    e = b.receive(lambda x: isinstance(x, Error), 5)  # after the lease, one per refused service
    assert isinstance(e, Error) and e.code == "service_refused" and e.service == "far-cr", e
    a.register([])
    _lease(a)
    found = []
    offset = 0
    for _ in range(10):  # pages
        a.send({"t": "catalog_query", "offset": offset})
        cat = a.receive(lambda x: isinstance(x, Catalog), 5)
        assert isinstance(cat, Catalog), a.errors
        found += cat.services
        if cat.next == 0:
            break
        offset = cat.next
    web = [s for s in found if s.name == "web-cr"]
    assert len(web) == 1 and web[0].node == "clr-b" and web[0].addr == inside and web[0].port == 80
    assert web[0].gateway == (CLEAN_UL, 8080) and web[0].prefix == "/"
    assert not [s for s in found if s.name == "far-cr"]


def test_query_rate_limit_and_punch_limit(world: World) -> None:
    e, f = world.node("clr-e"), world.node("clr-f")
    for n in (e, f):
        n.register([])
        _lease(n)
    st = world.status()
    rl0 = (st.get("rejected") or {}).get("query_rate_limited", 0)
    pl0 = (st.get("limited") or {}).get("punches", 0)
    q0 = st["limited"]["queries"]
    for _ in range(40):
        e.query(name="clr-f")
    answers = 0
    for _ in range(40):
        if e.receive(lambda x: isinstance(x, PeerInfo), 1.0) is None:
            break
        answers += 1
    st = world.status()
    # 32 at once, then 4 a second (10.3): the 40 left within a few ms
    assert 32 <= answers <= 34, answers
    assert (st.get("rejected") or {}).get("query_rate_limited", 0) - rl0 == 40 - answers
    assert st["limited"]["queries"] - q0 == 40 - answers  # counted in both (12)
    punches = 0
    for _ in range(40):
        if f.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "punch", 0.3) is None:
            break
        punches += 1
    assert punches + (st.get("limited") or {}).get("punches", 0) - pl0 == answers


def test_two_cleanroom_nodes_talk_through_the_lighthouse_relay(world: World) -> None:
    """Section 7: type 5 with the target's block; the lighthouse rewrites it to the sender's."""
    from tests.cleanroom.lighthouse import relay_id
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([])
    la = _lease(a)
    b.register([])
    lb = _lease(b)
    a.query(name="clr-b")
    pb = a.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "peer", 5)
    b.query(name="clr-a")
    pa = b.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "peer", 5)
    assert isinstance(pb, PeerInfo) and isinstance(pa, PeerInfo)
    a.relay_to(pb)
    b.relay_to(pa)
    before = world.status().get("relayed")
    a.peer.initiate("clr-b")
    ev = b.peer.poll(lambda e: e.kind == "responded" and e.remote == "clr-a", 5)
    assert ev is not None, dict(b.peer.drops)
    assert b.peer.remotes["clr-a"].addr == ("relay", relay_id(la.subnet, la.network))
    ev = a.peer.poll(lambda e: e.kind == "established" and e.remote == "clr-b", 5)
    assert ev is not None, dict(a.peer.drops)
    assert a.peer.remotes["clr-b"].addr == ("relay", relay_id(lb.subnet, lb.network))
    a.peer.send("clr-b", b"")  # a second keepalive (the first confirmed the keys, 5.9)
    ev = b.peer.poll(lambda e: e.kind == "keepalive" and e.remote == "clr-a", 5)
    assert ev is not None, dict(b.peer.drops)
    assert world.status().get("relayed") == before + 4  # initiation, response, two keepalives


@pytest.mark.parametrize("who,block,size,key,reason", [
    # a session but never registered: the lighthouse refuses it
    ("clr-c", 1, 40, "rejected", "relay_refused"),
    # no session from this address: the data path drops it before the lighthouse
    ("stranger", 1, 40, "drops", "relay_unknown_sender"),
    ("clr-a", 250, 40, "rejected", "relay_unknown_target"),  # nobody holds block 250
    ("clr-a", 1, 8, "drops", "short"),  # 8 bytes or less: the data path again
])
def test_lighthouse_relay_refusals(world: World, who: str, block: int, size: int, key: str, reason: str) -> None:
    a = world.node("clr-a")
    a.register([])
    _lease(a)
    pkt = (bytes((5, 2, 0, 0)) + block.to_bytes(4, "little") + bytes((1, 2, 0, 0)) + bytes(64))[:size]
    before = dict(world.status().get(key) or {}).get(reason, 0)
    if who == "stranger":
        s = _sockets_in(world.clean, [(CLEAN_UL, 4899)])[0]
        try:
            s.sendto(pkt, (LH_UL, 4787))
        finally:
            s.close()
    else:
        world.node(who).peer.sock.sendto(pkt, (LH_UL, 4787))
    for _ in range(50):
        now = dict(world.status().get(key) or {}).get(reason, 0)
        if now > before:
            break
        time.sleep(0.1)
    st = world.status()
    assert now == before + 1, (st.get("rejected"), {k: v for k, v in st["drops"].items() if v}, st.get("limited"))


def test_names_pages_and_relay_offer(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([])
    la = _lease(a)
    limited0 = dict(world.status().get("limited") or {})
    b.register([], relay=True)  # no group `relay` in clr-b's certificate: ignored, counted (10.3)
    _lease(b)
    ok, far = str(la.subnet.network_address + 7), "10.87.251.7"
    a.send({"t": "names", "gen": 1, "total": 2, "offset": 0, "names": [["Db-Cr", ok], ["far-cr", far]]})
    got: list[tuple[str, str, str]] = []
    for _ in range(20):  # the lighthouse takes the list at once; bounded polls
        b.send({"t": "names_query", "version": 0, "offset": 0})
        page = b.receive(lambda x: isinstance(x, NamesPage), 3)
        assert isinstance(page, NamesPage), b.errors
        got = page.names
        if ("db-cr", ok, "clr-a") in got:
            break
        time.sleep(0.1)
    assert ("db-cr", ok, "clr-a") in got and not [n for n in got if n[0] == "far-cr"], got
    lim = dict(world.status().get("limited") or {})
    assert lim.get("names_refused", 0) - limited0.get("names_refused", 0) == 1, lim
    assert lim.get("relay_offers_refused", 0) - limited0.get("relay_offers_refused", 0) == 1, lim
    a.register([])
    assert _lease(a).relays == []


def test_endpoints_canonical_spelling_and_the_seven_own(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([])
    _lease(a)
    own = [("2001:DB8:0:0::1", 4787), ("::ffff:192.0.2.5", 4787)] + [(f"192.0.2.{i}", 4787) for i in range(20, 26)]
    b.send({"t": "register", "endpoints": [[h, p] for h, p in own]})  # 8: one more than a node sends (9)
    _lease(b)
    a.query(name="clr-b")
    got = a.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "peer", 5)
    assert isinstance(got, PeerInfo), a.errors
    # 10.1: the canonical spelling; 10.3: at most 7 own kept, the rest counted
    assert got.local == [("2001:db8::1", 4787), ("192.0.2.5", 4787)] + [(f"192.0.2.{i}", 4787) for i in range(20, 25)]
    assert got.endpoints == [(CLEAN_UL, 4802), *got.local]
    for bad in (["fe80::1%eth0", 4787], ["192.0.2.1", 0], ["192.0.2.1", 65536], ["192.0.2.1"], ["x" * 46, 1]):
        r0 = _rejected(world).get("bad_control", 0)
        b.send({"t": "register", "endpoints": [bad]})
        assert _wait_counter(world, "bad_control", r0) == r0 + 1, bad


def test_the_eighth_own_endpoint_is_counted(world: World) -> None:
    b = world.node("clr-b")
    before = dict(world.status().get("limited") or {}).get("endpoints_refused", 0)
    b.send({"t": "register", "endpoints": [[f"192.0.2.{i}", 4787] for i in range(30, 38)]})  # 8, all allowed
    _lease(b)
    assert dict(world.status().get("limited") or {}).get("endpoints_refused", 0) - before == 1


def test_blocklist_pieces_after_the_lease(world: World) -> None:
    from tests.cleanroom.lighthouse import BlocklistAssembly, BlocklistPiece
    a = world.node("clr-a")
    a.inbox.clear()
    a.register([])  # no `blocklist`: serial 0, none enforced
    _lease(a)
    asm = BlocklistAssembly(world.ca)
    bl = None
    for _ in range(70):  # at most 64 pieces of 1024 bytes
        p = a.receive(lambda x: isinstance(x, BlocklistPiece), 3)
        assert isinstance(p, BlocklistPiece), a.errors
        bl = asm.add(p)
        if bl is not None:
            break
    assert bl is not None and "clr-revoked" in bl.names and bl.serial >= 1
    a.register([], blocklist=bl.serial)  # now up to date: no pieces after the lease
    _lease(a)
    assert a.receive(lambda x: isinstance(x, BlocklistPiece), 1) is None
    assert a.errors == []


def test_exhausted_and_the_lease_ttl(world: World) -> None:
    a = world.node("clr-a", 4811, SMALL_PORT)
    b = world.node("clr-b", 4812, SMALL_PORT)
    a.register([])
    la = _lease(a)
    assert str(la.subnet) == "10.88.1.0/24" and la.ttl == 5  # block 0 is never leased
    b.register([])
    e = b.receive(lambda x: isinstance(x, Error | Lease), 5)
    assert isinstance(e, Error) and e.code == "exhausted", e
    a.query(addr="10.88.1.1")  # the asker itself: unknown
    e = a.receive(lambda x: isinstance(x, Error | PeerInfo), 5)
    assert isinstance(e, Error) and e.code == "unknown", e
    c = world.node("clr-c", 4813, SMALL_PORT)
    # c cannot register (exhausted) so it stays unregistered for queries
    c.register([])
    assert isinstance(c.receive(lambda x: isinstance(x, Error), 5), Error)
    c.query(addr="10.88.1.1")
    e = c.receive(lambda x: isinstance(x, Error | PeerInfo), 5)
    assert isinstance(e, Error) and e.code == "unregistered", e


def test_endpoints_hold_each_address_once(world: World) -> None:
    a, b = world.node("clr-a"), world.node("clr-b")
    a.register([])
    _lease(a)
    b.register([(CLEAN_UL, 4802), ("192.0.2.9", 1), (CLEAN_UL, 4802)])  # the observed one, and twice
    _lease(b)
    a.query(name="clr-b")
    got = a.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "peer", 5)
    assert isinstance(got, PeerInfo), a.errors
    assert got.endpoints == [(CLEAN_UL, 4802), ("192.0.2.9", 1)]  # 10.3: each address once
    assert got.local == [(CLEAN_UL, 4802), ("192.0.2.9", 1), (CLEAN_UL, 4802)]  # as registered


@pytest.mark.parametrize("q", [{"addr": "not-an-ip"}, {"addr": "10.87.3.5/24"}, {"addr": ""}, {"name": "x" * 65},
                               {}, {"addr": 5}, {"name": ""}, {"addr": 5, "name": "clr-b"}])
def test_query_field_rules(world: World, q: dict[str, Any]) -> None:
    d = world.node("clr-d")
    r0 = _rejected(world).get("bad_control", 0)
    d.send({"t": "query", **q})
    assert _wait_counter(world, "bad_control", r0) == r0 + 1


def test_query_with_addr_and_a_bad_name_is_refused(world: World) -> None:
    d = world.node("clr-d")
    d.register([])
    _lease(d)
    assert _refused(world, d, msgpack.packb({"t": "query", "v": 1, "addr": "10.87.3.5", "name": 5}))


def _refused(world: World, n: LighthouseNode, raw: bytes, reason: str = "bad_control") -> bool:
    """True when the lighthouse counts `raw` as `reason`, False as soon as it answers it
    (a lease, peer or error; not the blocklist pieces or punches that may still come
    from an earlier register or another node's query)."""
    r0 = _rejected(world).get(reason, 0)
    n.inbox.clear()
    n.send_raw(raw)

    def answer(x: object) -> bool:
        return isinstance(x, Lease | Error) or (isinstance(x, PeerInfo) and x.kind == "peer")

    for _ in range(50):
        if _rejected(world).get(reason, 0) > r0:
            return True
        if n.receive(answer, 0.1) is not None:
            return False
    return False


@pytest.mark.parametrize("v", [1.0, True])
def test_v_of_another_type_is_refused(world: World, v: object) -> None:
    assert _refused(world, world.node("clr-d"), msgpack.packb({"t": "register", "v": v}, use_bin_type=True))


def _tcp_in(ns: Netns, addr: tuple[str, int]) -> socket.socket:
    """A TCP socket connected from inside `ns` (Netns.inside)."""
    return ns.inside(lambda: socket.create_connection(addr, timeout=5))


def test_register_and_query_over_the_tcp_relay_stream(world: World) -> None:
    from tests.cleanroom.lighthouse import FramedTcp
    b = world.node("clr-b")
    b.register([])
    lb = _lease(b)
    tcp = FramedTcp(_tcp_in(world.clean, (LH_UL, TCP_PORT)), (LH_UL, 4787))
    try:
        n = LighthouseNode(tcp, certs.read_key_file(f"{world.pki}/clr-c.key"),  # type: ignore[arg-type]
                           open(f"{world.pki}/clr-c.crt", "rb").read(), world.ca, world.lh_cert, (LH_UL, 4787))
        n.connect()
        n.register([])
        lc = _lease(n)
        # observed: the connection's address inside the lighthouse, a loopback one (7.1)
        assert ipaddress.ip_address(lc.observed[0]).is_loopback, lc.observed
        n.query(name="clr-b")
        got = n.receive(lambda x: isinstance(x, PeerInfo), 5)
        assert isinstance(got, PeerInfo) and got.name == "clr-b" and got.subnet == lb.subnet, n.errors
        # the target's punch describes clr-c without that address: the endpoint rule (10.4)
        punch = b.receive(lambda x: isinstance(x, PeerInfo) and x.kind == "punch" and x.name == "clr-c", 5)
        assert isinstance(punch, PeerInfo) and punch.endpoints == [] and punch.refused == 0, punch
    finally:
        tcp.close()
