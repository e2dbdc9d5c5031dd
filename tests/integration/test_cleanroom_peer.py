"""The clean-room peer (tests/cleanroom, written from docs/protocol.md alone) against a
real engine, in two network namespaces this test makes.

The engine is a black box: its CLI makes the keys, its config names the clean-room
nodes as static peers, and its control socket gives the drop counters. Every wait is
bounded; the namespaces and the engine go away even when a test fails."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.cleanroom import certs, ipv4, noise, prims
from tests.cleanroom.peer import Event, Peer
from tests.harness.netns import Netns

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_UL, CLEAN_UL = "172.31.77.1", "172.31.77.2"
ENGINE_IP = "10.87.1.1"  # the engine host's own address in its /24
CLEAN = {"clean-i": ("10.87.2.0/24", 4801), "clean-r": ("10.87.3.0/24", 4802), "clean-k": ("10.87.4.0/24", 4803),
         "clean-n": ("10.87.5.0/24", 4804), "clean-f": ("10.87.6.0/24", 4805),
         "clean-a": ("10.87.7.0/24", 4806), "clean-x": ("10.87.8.0/24", 4807),
         "clean-h1": ("10.87.9.0/24", 4808), "clean-h2": ("10.87.10.0/24", 4809),
         "clean-h3": ("10.87.11.0/24", 4810)}
# The engine initiates to every configured peer at start and retries (1 s doubling).
# Nodes that only initiate are configured with a port nobody listens on, so no engine
# initiation crosses their tests: the engine must take their real address from their
# authenticated initiation (5.7 step 13).
ELSEWHERE = {"clean-i": 4891, "clean-n": 4894, "clean-f": 4895, "clean-x": 4897,
             "clean-h1": 4898, "clean-h2": 4899, "clean-h3": 4900}


def _socket_in(ns: Netns, port: int) -> socket.socket:
    return _sockets_in(ns, [(CLEAN_UL, port)])[0]


def _sockets_in(ns: Netns, binds: list[tuple[str, int]]) -> list[socket.socket]:
    """UDP sockets bound inside `ns` (Netns.inside); none is left open on failure."""
    def make() -> list[socket.socket]:
        made: list[socket.socket] = []
        try:
            for addr in binds:
                made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                made[-1].bind(addr)
        except OSError:
            for x in made:
                x.close()
            raise
        return made
    return ns.inside(make)


def _control(sock_path: str, path: str) -> object:
    """GET on the engine's control socket (HTTP/JSON over a Unix socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n".encode())
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@dataclass
class World:
    eng: Netns
    clean: Netns
    pki: str
    ca: certs.Cert
    engine_cert: bytes
    sock_path: str
    log: str

    peers: dict[str, Peer] = field(default_factory=dict)

    def peer(self, name: str) -> Peer:
        """One clean-room node per name for the whole module: like a real node it keeps
        its previous receive keys (6.5), which the engine may still send under."""
        if name not in self.peers:
            s = _socket_in(self.clean, CLEAN[name][1])
            key = certs.read_key_file(f"{self.pki}/{name}.key")
            p = Peer(s, key, open(f"{self.pki}/{name}.crt", "rb").read(), self.ca)
            p.add_remote(self.engine_cert, (ENGINE_UL, 4787))
            self.peers[name] = p
        return self.peers[name]

    def idle(self, p: Peer) -> None:
        """Between tests: forget what queued up, so the next test starts from now."""
        p.backlog.clear()
        p.sock.setblocking(False)
        for _ in range(1000):
            try:
                p.sock.recv(4096)
            except OSError:
                break
        p.sock.setblocking(True)
        p.drops.clear()
        p.under_load = False
        p.force_response_aead = None

    def drops(self, key: str = "drops") -> dict[str, int]:
        st = _control(self.sock_path, "/status")
        assert isinstance(st, dict)
        return dict(st.get(key) or {})

    def logtail(self) -> str:
        return open(self.log, errors="replace").read()[-3000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = str(tmp_path_factory.mktemp("cleanroom"))
    made: list[Netns] = []
    proc: subprocess.Popen[bytes] | None = None
    w: World | None = None
    try:
        eng, clean = Netns("cre"), Netns("crc")
        made += [eng, clean]
        eng.link(clean, ("ve", ENGINE_UL), ("vc", CLEAN_UL))
        pki = f"{d}/pki"
        cli = [sys.executable, "-m", "flatnet"]
        subprocess.run(cli + ["ca", "init", "--dir", pki], cwd=REPO, check=True, capture_output=True, timeout=60)
        for n in ["eng", *CLEAN]:
            subprocess.run(cli + ["cert", "sign", "--ca-dir", pki, "--name", n], cwd=REPO, check=True,
                           capture_output=True, timeout=60)
        peers = "".join(f'[[peers]]\nname = "{n}"\ncert = "{pki}/{n}.crt"\n'
                        f'endpoints = ["{CLEAN_UL}:{ELSEWHERE.get(n, port)}"]\n'
                        f'subnet = "{sub}"\n' for n, (sub, port) in CLEAN.items())
        conf = f"{d}/eng.toml"
        with open(conf, "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/eng.crt"\nkey = "{pki}/eng.key"\n'
                    f'[network]\nsubnet = "10.87.1.0/24"\nmasquerade = false\n'
                    f'[paths]\nrun_dir = "{d}/run"\nstate_dir = "{d}/state"\n'
                    f'[listen]\nhost = "0.0.0.0"\n[dns]\nenabled = false\n[gateway]\npodman_labels = false\n'
                    f'[log]\nlevel = "debug"\n' + peers)
        log = f"{d}/engine.log"
        w = World(eng, clean, pki, certs.load_ca(open(f"{pki}/ca.crt", "rb").read()),
                  open(f"{pki}/eng.crt", "rb").read(), f"{d}/run/engine.sock", log)
        # Every clean-room socket exists before the engine starts: the engine initiates to
        # its configured peers at once (docs/protocol.md 8), and the engine-initiated tests
        # answer what queued up instead of waiting seconds for its next retry.
        for n in CLEAN:
            w.peer(n)
        with open(log, "wb") as lf:
            proc = subprocess.Popen(["ip", "netns", "exec", eng.name, sys.executable, "-m", "flatnet.engine",
                                     "--config", conf], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                w.drops()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not come up:\n{w.logtail()}") from None
                time.sleep(0.1)
        yield w
    finally:
        for p in (w.peers.values() if w is not None else ()):
            p.sock.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in made:
            ns.delete()


def _is_echo(kind: int, seq: int, src: str, dst: str):  # noqa: ANN202
    def match(ev: Event) -> bool:
        if ev.kind != "data":
            return False
        p = ipv4.parse(ev.data)
        f = ipv4.echo_fields(p) if p else None
        return bool(p and f and f[0] == kind and f[2] == seq and p.src == src and p.dst == dst)
    return match


def _established(ev: Event) -> bool:
    return ev.kind == "established"


def _raw_udp_in(ns: Netns) -> socket.socket:
    """A raw socket that sees the UDP datagrams reaching `ns`; the kernel still answers
    "port unreachable" for ports nobody listens on."""
    return ns.inside(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP))


def test_engine_answers_at_once_on_a_session_it_responded_to(world: World) -> None:
    """5.9, 6.3 step 7: the responder's staged send key goes into use with the first
    packet under its new receive index, so the answer to a packet that follows the
    key-confirming keepalive comes at once. Three nodes initiate 0.1, 0.5 and 0.9 s
    after one of the engine's own initiations to their old (closed) endpoints. Before
    f5aaef7 about half such answers were held until the engine's own next handshake
    (1.1-1.9 s) or dropped after its 3 s hold (no_session)."""
    names = ["clean-h1", "clean-h2", "clean-h3"]
    raw = _raw_udp_in(world.clean)
    try:
        raw.settimeout(10)
        dead = ELSEWHERE[names[-1]].to_bytes(2, "big")
        for _ in range(10000):  # the engine initiates to all three at the same moments
            pkt = raw.recv(4096)
            if pkt[22:24] == dead and pkt[28] == noise.T_INIT:
                break
        tick = time.monotonic()
        late = {}
        for name, delay in zip(names, (0.1, 0.5, 0.9)):
            p = world.peer(name)
            me = CLEAN[name][0].replace("0/24", "1")
            time.sleep(max(0.0, tick + delay - time.monotonic()))
            p.initiate("eng", None)
            assert p.poll(_established, 5) is not None
            t0 = time.monotonic()
            p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, 7, 100, b"once"))
            ok = p.poll(_is_echo(0, 100, ENGINE_IP, me), 1.0)
            late[name] = round(ok.at - t0, 3) if ok else None
            world.idle(p)
        assert all(v is not None and v < 0.5 for v in late.values()), late
    finally:
        raw.close()


@pytest.mark.parametrize("offer,cipher", [(None, prims.CHACHA), ([prims.AES, prims.CHACHA], prims.AES),
                                          ([prims.CHACHA], prims.CHACHA)])
def test_cleanroom_initiates_and_pings_the_engine(world: World, offer: list[str] | None, cipher: str) -> None:
    p = world.peer("clean-i")
    try:
        p.initiate("eng", offer)
        ev = p.poll(_established, 8)
        assert ev is not None, f"no response; drops {dict(p.drops)}\n{world.logtail()}"
        assert ev.info["cipher"] == cipher and ev.info["role"] == "initiator"
        assert p.remotes["eng"].presented is not None and p.remotes["eng"].presented.name == "eng"
        me = "10.87.2.1"
        seq = {None: 1, 2: 2, 1: 3}[len(offer) if offer else None]
        p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, 0x4242, seq, b"clean room says hello"))
        got = p.poll(_is_echo(0, seq, ENGINE_IP, me), 5)
        assert got is not None, f"no echo reply; drops {dict(p.drops)}\n{world.logtail()}"
        assert ipv4.echo_fields(ipv4.parse(got.data))[3] == b"clean room says hello"  # type: ignore[arg-type,index]
        assert not p.drops, dict(p.drops)
        peers = _control(world.sock_path, "/peers")
        row = next(r for r in peers if r["name"] == "clean-i")  # type: ignore[union-attr]
        assert row["state"] == "established" and row.get("cipher") == cipher, row
    finally:
        world.idle(p)


def test_engine_refuses_a_response_choosing_a_cipher_it_did_not_offer(world: World) -> None:
    """5.8 step 10a, 5.10: the engine initiates (it does at start, to every configured
    peer); a response whose "aead" names a cipher the initiation did not offer is
    refused as bad_handshake, and no keys are installed."""
    p = world.peer("clean-a")
    p.force_response_aead = "rot13-poly1305"
    try:
        before = world.drops("control_errors")
        errs, offers = before, []
        deadline = time.monotonic() + 10
        # queued initiations may be older retries (the engine then counts unexpected_response)
        while time.monotonic() < deadline and errs.get("bad_handshake", 0) == before.get("bad_handshake", 0):
            ev = p.poll(lambda e: e.kind == "responded", 0.5)
            if ev is not None:
                offers.append(ev.info["offer"])
            time.sleep(0.05)
            errs = world.drops("control_errors")
        assert offers and all(offers), f"the engine ([tun] cipher = auto) offers its ciphers: {offers}"
        assert errs.get("bad_handshake", 0) == before.get("bad_handshake", 0) + 1, (before, errs)
        row = next(r for r in _control(world.sock_path, "/peers") if r["name"] == "clean-a")  # type: ignore[union-attr]
        assert row["state"] != "established" and row.get("cipher") is None, row
    finally:
        world.idle(p)


def _engine_side_udp(world: World, p: Peer, me: str, timeout: float) -> tuple[list[Event], bytes]:
    """A UDP socket inside the engine's namespace sends to `me` (behind the clean-room
    node) until the clean-room node gets one; it answers through the tunnel, and the
    answer must come out of the engine's TUN to that socket. Returns the clean-room
    events and the answer. The engine retries its handshake on its own schedule
    (1 s doubling), so the probes repeat rather than rely on its 3 s hold."""
    s = _sockets_in(world.eng, [("0.0.0.0", 0)])[0]
    seen: list[Event] = []
    try:
        port = s.getsockname()[1]
        deadline = time.monotonic() + timeout
        got = None
        for n in range(200):
            if time.monotonic() > deadline:
                break
            s.sendto(b"probe %d" % n, (me, 7000))

            def match(ev: Event) -> bool:
                seen.append(ev)
                q = ipv4.parse(ev.data) if ev.kind == "data" else None
                f = ipv4.udp_fields(q) if q else None
                return bool(q and f and q.src == ENGINE_IP and q.dst == me and f[:2] == (port, 7000))
            got = p.poll(match, 0.3)
            if got is not None:
                break
        assert got is not None, f"nothing reached the clean-room node: {seen[-5:]}; drops {dict(p.drops)}"
        data = ipv4.udp_fields(ipv4.parse(got.data))[2]  # type: ignore[arg-type,index]
        assert data.startswith(b"probe ")
        p.send("eng", ipv4.udp(me, 7000, ENGINE_IP, port, b"answer to " + data))
        s.settimeout(3)
        answer, src = s.recvfrom(2048)
        assert src == (me, 7000)
        return seen, answer
    finally:
        s.close()


def test_engine_initiates_cleanroom_responds(world: World) -> None:
    p = world.peer("clean-r")
    try:
        seen, answer = _engine_side_udp(world, p, "10.87.3.1", 12)
        assert answer.startswith(b"answer to probe ")
        done = [e for e in seen if e.kind == "established"]
        assert done and done[0].info["role"] == "responder", seen
        responded = next(e for e in seen if e.kind == "responded")
        # the engine offers the ciphers of [tun] cipher = auto; we take its first we know
        assert done[0].info["cipher"] == noise.choose_cipher(responded.info["offer"])  # type: ignore[arg-type]
        assert not p.drops, dict(p.drops)
    finally:
        world.idle(p)


def test_engine_takes_a_cookie_reply_and_sends_mac2(world: World) -> None:
    """5.5: the clean-room node answers the engine's initiations without a valid mac2
    with a type 6, as a node under load does; the engine's next initiation must carry
    mac2 keyed by that cookie, and only then is it answered."""
    p = world.peer("clean-k")
    p.under_load = True
    try:
        seen, answer = _engine_side_udp(world, p, "10.87.4.1", 16)
        assert answer.startswith(b"answer to probe ")
        kinds = [e.kind for e in seen if e.kind in ("cookie_sent", "responded")]
        assert kinds[0] == "cookie_sent" and "responded" in kinds, kinds
        cookie_sent = [e for e in seen if e.kind == "cookie_sent"]
        assert cookie_sent[0].info["mac2"] == bytes(16)  # before the cookie: zero mac2
        # only an initiation with mac2 keyed by our cookie was answered (p.under_load)
        assert p.drops["under_load_cookie_sent"] >= 1, dict(p.drops)
    finally:
        world.idle(p)


def test_replayed_and_tampered_packets_are_refused(world: World) -> None:
    """6.1, 6.3, 6.4: a replayed data packet is delivered once; a packet whose header was
    changed fails authentication (the header is associated data) and does not move the
    replay window, so the genuine packet with that counter still passes; the window's
    edges are where the page puts them."""
    p = world.peer("clean-n")
    me = "10.87.5.1"
    to = (ENGINE_UL, 4787)
    try:
        p.initiate("eng", None)
        assert p.poll(_established, 8) is not None, world.logtail()
        p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, 7, 100, b"warm"))
        assert p.poll(_is_echo(0, 100, ENGINE_IP, me), 1.0) is not None, f"drops {dict(p.drops)}"
        # Every packet below goes under this one session, with the counter we choose. If the
        # engine handshakes again meanwhile (it probes after 1.5 s without hearing us), this
        # key stays its previous receive key (6.5), and its answers come under the new one.
        r = p.remotes["eng"].session
        assert r is not None

        def echo(seq: int, ctr: int | None = None, tamper: bool = False) -> bytes:
            plain = ipv4.icmp_echo(me, ENGINE_IP, 7, seq, b"x")
            if ctr is not None and ctr >= 2**60:  # our Session refuses to send it (6.1): by hand
                hdr = noise.header(noise.T_DATA) + struct.pack("<IQ", r.remote_index, ctr)
                pkt = hdr + prims.aead_seal(r.cipher, r.send_key, ctr, hdr, plain)
            else:
                if ctr is not None:
                    r.send_counter = ctr
                pkt = r.seal(noise.T_DATA, plain)
            p._send(bytes([noise.T_CTRL]) + pkt[1:] if tamper else pkt, to)
            return pkt

        def answered(seq: int, wait: float) -> bool:
            return p.poll(_is_echo(0, seq, ENGINE_IP, me), wait) is not None

        before = world.drops()
        first = echo(200)
        assert answered(200, 3)
        p._send(first, to)  # the same datagram again
        assert not answered(200, 0.4), "a replayed packet was delivered twice"
        genuine = echo(201, tamper=True)  # only byte 0 of the header changes: type 3 -> 4
        assert not answered(201, 0.4)
        p._send(genuine, to)
        assert answered(201, 3), "the genuine packet after a forgery of its header"
        # 6.4: with top = 5000, counter 968 (top - 4032) is new and 967 too old; 2^60 - 1
        # is the last counter a receiver takes, 2^60 is refused.
        edges = {}
        for seq, ctr in ((300, 5000), (301, 968), (302, 967), (303, 2**60), (304, 2**60 - 1)):
            echo(seq, ctr)
            edges[ctr] = answered(seq, 0.4 if ctr in (967, 2**60) else 3)
        assert edges == {5000: True, 968: True, 967: False, 2**60: False, 2**60 - 1: True}, edges
        after = world.drops()
        assert after.get("replay", 0) - before.get("replay", 0) == 3, (before, after)
        assert after.get("auth_failed", 0) - before.get("auth_failed", 0) == 1, (before, after)
    finally:
        world.idle(p)


def test_engine_counts_each_refusal_as_the_page_names_it(world: World) -> None:
    """Sections 4, 5.5, 5.7 step 11, 6.2, 6.3 and 7 name a counter for each refusal: send
    one bad datagram at a time and see exactly that counter move."""
    p = world.peer("clean-x")
    me = "10.87.8.1"
    to = (ENGINE_UL, 4787)
    engine_static = certs.parse(world.engine_cert).key
    try:
        sent: list[bytes] = []
        send = p._send
        p._send = lambda pkt, addr: (sent.append(pkt), send(pkt, addr))[1]  # type: ignore[method-assign]
        p.initiate("eng", None)
        assert p.poll(_established, 8) is not None, world.logtail()
        initiation = next(x for x in sent if x[0] == noise.T_INIT)
        r = p.remotes["eng"].session
        assert r is not None

        def data(plain: bytes) -> bytes:
            return r.seal(noise.T_DATA, plain)

        good = data(ipv4.icmp_echo(me, ENGINE_IP, 9, 1, b"ok"))
        bad_mac1 = bytearray(noise.add_macs(initiation[:-32], engine_static, None))
        bad_mac1[-20] ^= 1
        cases: list[tuple[str, str, bytes]] = [
            ("drops", "short", b"\x03\x02\x00"),
            ("drops", "wrong_version", bytes([3, 1, 0, 0]) + good[4:]),
            ("drops", "reserved_not_zero", bytes([3, 2, 0, 1]) + good[4:]),
            ("drops", "unknown_type", bytes([7, 2, 0, 0]) + good[4:]),
            ("drops", "short", good[:31]),
            ("drops", "unknown_index", good[:4] + struct.pack("<I", r.remote_index ^ 0x5A5A0000) + good[8:]),
            ("drops", "bad_mac1", bytes(bad_mac1)),
            ("control_errors", "replayed_initiation", initiation),
            ("drops", "source_not_allowed", data(ipv4.icmp_echo("10.87.9.9", ENGINE_IP, 9, 2, b"x"))),
            ("drops", "destination_not_allowed", data(ipv4.icmp_echo(me, "10.87.3.7", 9, 3, b"x"))),
            ("drops", "not_ipv4", data(b"\x60" + bytes(39))),
        ]
        for key, reason, pkt in cases:
            before = world.drops(key)
            send(pkt, to)
            after = before
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and after.get(reason, 0) == before.get(reason, 0):
                time.sleep(0.02)
                after = world.drops(key)
            moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            assert moved == {reason: 1}, (reason, moved)
        send(good, to)  # the session still works
        assert p.poll(_is_echo(0, 1, ENGINE_IP, me), 3) is not None
        # Section 7: a type 5 from an address that may not relay (not a lighthouse, no group
        # "relay"): a handshake inside is refused before any cryptography; an authenticated
        # data packet inside is delivered (its keys prove it) but moves no path.
        def relayed(inner: bytes) -> bytes:
            return noise.header(noise.T_RELAY) + struct.pack("<I", 8) + inner  # id = our /24 block

        for inner, answered in ((initiation, False), (data(ipv4.icmp_echo(me, ENGINE_IP, 9, 4, b"r")), True)):
            before = world.drops("control_errors")
            send(relayed(inner), to)
            got = p.poll(_is_echo(0, 4, ENGINE_IP, me), 1.0 if answered else 0.3)
            after = world.drops("control_errors")
            moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            assert moved == {"relay_refused": 1} and (got is not None) == answered, (inner[0], moved, got)
        assert "event=peer_wrong_version" not in open(world.log).read()  # only for handshakes
        send(bytes([1, 0, 0, 0]) + initiation[4:], to)  # a "version 1" handshake
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and "event=peer_wrong_version" not in open(world.log).read():
            time.sleep(0.05)
        assert "event=peer_wrong_version" in open(world.log).read()
    finally:
        world.idle(p)


FLOOD_SOURCES = 130  # x 20 tokens each (5.5) is more than the global burst of 2000


def _junk_initiation(engine_static: bytes) -> bytes:
    """A type 1 with a valid mac1 and random Noise bytes: it passes the data-path gate."""
    body = noise.header(noise.T_INIT) + os.urandom(4 + 200)
    return noise.add_macs(body, engine_static, None)


def test_engine_under_load_sends_a_cookie_reply(world: World) -> None:
    """5.5: a flood of initiations from many sources puts the engine under load; then our
    initiation without mac2 gets a type-6 reply that opens with our mac1, and the retry
    with mac2 keyed by that cookie is answered while the flood goes on."""
    # many source addresses, in one `ip -batch`
    batch = "".join(f"addr add 172.31.77.{100 + i}/24 dev vc\n" for i in range(FLOOD_SOURCES))
    subprocess.run(["ip", "-n", world.clean.name, "-batch", "-"], input=batch.encode(), check=True,
                   capture_output=True, timeout=20)
    flood = _sockets_in(world.clean, [(f"172.31.77.{100 + i}", 0) for i in range(FLOOD_SOURCES)])
    p = world.peer("clean-f")
    stop = threading.Event()
    engine_static = certs.parse(world.engine_cert).key
    junk = [_junk_initiation(engine_static) for _ in range(64)]

    def keep_flooding() -> None:
        # under load every message without mac2 takes a global token (2000/s): send more
        end = time.monotonic() + 6
        n = 0
        while not stop.is_set() and time.monotonic() < end:
            flood[n % 8].sendto(junk[n % 64], (ENGINE_UL, 4787))
            n += 1
            if n % 100 == 0:
                time.sleep(0.03)  # about 3000 a second

    t = threading.Thread(target=keep_flooding)
    try:
        before = world.drops()
        for s in flood:  # 20 from each source: every source bucket and the global one run dry
            for j in range(20):
                s.sendto(junk[j], (ENGINE_UL, 4787))
        t.start()
        started = time.monotonic()
        p.initiate("eng", None)
        ev = p.poll(lambda e: e.kind in ("cookie", "established"), 3)
        assert ev is not None and ev.kind == "cookie", f"{ev} drops {dict(p.drops)}\n{world.logtail()}"
        ev = p.poll(_established, 5)  # the retry, 1 s later, carries mac2
        assert ev is not None, f"the retry with mac2 was not answered; drops {dict(p.drops)}"
        assert ev.info["role"] == "initiator" and time.monotonic() - started > 0.9  # it was the retry
        after = world.drops()
        assert after.get("under_load_cookie_sent", 0) > before.get("under_load_cookie_sent", 0)
    finally:
        stop.set()
        if t.is_alive() or t.ident:
            t.join(10)
        for s in flood:
            s.close()
        world.idle(p)
