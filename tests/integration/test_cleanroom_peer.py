"""The clean-room peer (tests/cleanroom, written from docs/protocol.md alone) against a
real engine, in two network namespaces this test makes.

The engine is a black box: its CLI makes the keys, its config names the clean-room
nodes as static peers, and its control socket gives the drop counters. Every wait is
bounded; the namespaces and the engine go away even when a test fails."""
from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cleanroom import certs, ipv4, noise, prims
from tests.cleanroom.peer import Event, Peer
from tests.harness.netns import Netns

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_UL, CLEAN_UL = "172.31.77.1", "172.31.77.2"
ENGINE_IP = "10.87.1.1"  # the engine host's own address in its /24
CLEAN = {"clean-i": ("10.87.2.0/24", 4801), "clean-r": ("10.87.3.0/24", 4802), "clean-k": ("10.87.4.0/24", 4803)}
CLONE_NEWNET = 0x40000000


def _socket_in(ns: Netns, port: int) -> socket.socket:
    """A UDP socket bound inside `ns`: a short-lived thread enters the namespace (setns acts
    on the calling thread only), so this process stays where it is."""
    out: list[object] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(ns.path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((CLEAN_UL, port))
            out.append(s)
        except Exception as e:  # handed to the caller
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if not out or isinstance(out[0], Exception):
        raise RuntimeError(f"no socket in {ns.name}: {out}")
    return out[0]  # type: ignore[return-value]


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

    def peer(self, name: str) -> Peer:
        s = _socket_in(self.clean, CLEAN[name][1])
        key = certs.read_key_file(f"{self.pki}/{name}.key")
        p = Peer(s, key, open(f"{self.pki}/{name}.crt", "rb").read(), self.ca)
        p.add_remote(self.engine_cert, (ENGINE_UL, 4787))
        return p

    def drops(self) -> dict[str, int]:
        st = _control(self.sock_path, "/status")
        assert isinstance(st, dict)
        return dict(st.get("drops") or {})

    def logtail(self) -> str:
        return open(self.log, errors="replace").read()[-3000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = str(tmp_path_factory.mktemp("cleanroom"))
    made: list[Netns] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        eng, clean = Netns("cre"), Netns("crc")
        made += [eng, clean]
        eng.run("ip", "link", "add", "ve", "type", "veth", "peer", "name", "vc", "netns", clean.name)
        eng.run("ip", "addr", "add", f"{ENGINE_UL}/24", "dev", "ve")
        eng.run("ip", "link", "set", "ve", "up")
        clean.run("ip", "addr", "add", f"{CLEAN_UL}/24", "dev", "vc")
        clean.run("ip", "link", "set", "vc", "up")
        pki = f"{d}/pki"
        cli = [sys.executable, "-m", "flatnet"]
        subprocess.run(cli + ["ca", "init", "--dir", pki], cwd=REPO, check=True, capture_output=True, timeout=60)
        for n in ["eng", *CLEAN]:
            subprocess.run(cli + ["cert", "sign", "--ca-dir", pki, "--name", n], cwd=REPO, check=True,
                           capture_output=True, timeout=60)
        peers = "".join(f'[[peers]]\nname = "{n}"\ncert = "{pki}/{n}.crt"\nendpoints = ["{CLEAN_UL}:{port}"]\n'
                        f'subnet = "{sub}"\n' for n, (sub, port) in CLEAN.items())
        conf = f"{d}/eng.toml"
        with open(conf, "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/eng.crt"\nkey = "{pki}/eng.key"\n'
                    f'[network]\nsubnet = "10.87.1.0/24"\nmasquerade = false\n'
                    f'[paths]\nrun_dir = "{d}/run"\nstate_dir = "{d}/state"\n'
                    f'[listen]\nhost = "0.0.0.0"\n[dns]\nenabled = false\n[gateway]\npodman_labels = false\n'
                    f'[log]\nlevel = "debug"\n' + peers)
        log = f"{d}/engine.log"
        with open(log, "wb") as lf:
            proc = subprocess.Popen(["ip", "netns", "exec", eng.name, sys.executable, "-m", "flatnet.engine",
                                     "--config", conf], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        sock_path = f"{d}/run/engine.sock"
        w = World(eng, clean, pki, certs.load_ca(open(f"{pki}/ca.crt", "rb").read()),
                  open(f"{pki}/eng.crt", "rb").read(), sock_path, log)
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
        p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, 0x4242, 1, b"clean room says hello"))
        got = p.poll(_is_echo(0, 1, ENGINE_IP, me), 5)
        assert got is not None, f"no echo reply; drops {dict(p.drops)}\n{world.logtail()}"
        assert ipv4.echo_fields(ipv4.parse(got.data))[3] == b"clean room says hello"  # type: ignore[arg-type,index]
        assert not p.drops, dict(p.drops)
        peers = _control(world.sock_path, "/peers")
        row = next(r for r in peers if r["name"] == "clean-i")  # type: ignore[union-attr]
        assert row["state"] == "established" and row.get("cipher") == cipher, row
    finally:
        p.sock.close()


def _ping(world: World, addr: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", world.eng.name, "ping", "-n", "-c", "1", "-W", "8", addr],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _answer_one_ping(p: Peer, me: str, timeout: float) -> Event | None:
    ev = p.poll(_is_echo(8, 1, ENGINE_IP, me), timeout)
    if ev is not None:
        f = ipv4.echo_fields(ipv4.parse(ev.data))  # type: ignore[arg-type]
        assert f is not None
        p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, f[1], f[2], f[3], reply=True))
    return ev


def test_engine_initiates_cleanroom_responds(world: World) -> None:
    p = world.peer("clean-r")
    ping = _ping(world, "10.87.3.1")
    try:
        events: list[Event] = []
        ev = p.poll(lambda e: events.append(e) is None and e.kind == "established", 8)  # type: ignore[func-returns-value]
        assert ev is not None, f"no handshake; events {events}; drops {dict(p.drops)}\n{world.logtail()}"
        assert ev.info["role"] == "responder"
        responded = next(e for e in events if e.kind == "responded")
        # the engine offers the ciphers of [tun] cipher = auto; we take its first we know
        assert ev.info["cipher"] == noise.choose_cipher(responded.info["offer"])  # type: ignore[arg-type]
        assert _answer_one_ping(p, "10.87.3.1", 6) is not None, f"no echo request\n{world.logtail()}"
        out = ping.communicate(timeout=10)[0].decode()
        assert ping.returncode == 0, out
        assert not p.drops, dict(p.drops)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait(5)
        p.sock.close()


def test_engine_takes_a_cookie_reply_and_sends_mac2(world: World) -> None:
    """5.5: the clean-room node answers the engine's first initiation with a type 6 (as a
    node under load does); the engine's next initiation must carry mac2 keyed by it."""
    p = world.peer("clean-k")
    p.under_load = True
    ping = _ping(world, "10.87.4.1")
    try:
        first = p.poll(lambda e: e.kind == "cookie_sent", 6)
        assert first is not None and first.info["mac2"] == bytes(16), f"{first}\n{world.logtail()}"
        p.under_load = True  # still under load: only a valid mac2 gets through
        ev = p.poll(_established, 8)
        assert ev is not None, f"the retry had no valid mac2; drops {dict(p.drops)}\n{world.logtail()}"
        assert p.drops["under_load_cookie_sent"] == 1  # the retry passed the cookie check
        assert _answer_one_ping(p, "10.87.4.1", 6) is not None
        assert ping.communicate(timeout=12)[0] is not None and ping.returncode == 0
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait(5)
        p.sock.close()


def test_replayed_and_tampered_packets_are_refused(world: World) -> None:
    """6.1, 6.3, 6.4: a replayed data packet is delivered once; a packet whose header was
    changed fails authentication (the header is associated data) and does not move the
    replay window, so the genuine packet with that counter still passes."""
    p = world.peer("clean-i")
    me = "10.87.2.1"
    try:
        p.initiate("eng", None)
        assert p.poll(_established, 8) is not None, world.logtail()
        first = p.send("eng", ipv4.icmp_echo(me, ENGINE_IP, 7, 100, b"once"))
        assert p.poll(_is_echo(0, 100, ENGINE_IP, me), 5) is not None
        before = world.drops()
        p._send(first, (ENGINE_UL, 4787))  # the same datagram again
        assert p.poll(_is_echo(0, 100, ENGINE_IP, me), 1.0) is None, "a replayed packet was delivered twice"
        r = p.remotes["eng"].session
        assert r is not None
        genuine = r.seal(noise.T_DATA, ipv4.icmp_echo(me, ENGINE_IP, 7, 101, b"twice"))
        tampered = bytes([noise.T_CTRL]) + genuine[1:]  # only byte 0 of the header changes
        p._send(tampered, (ENGINE_UL, 4787))
        assert p.poll(_is_echo(0, 101, ENGINE_IP, me), 1.0) is None
        after = world.drops()
        assert after.get("replay", 0) == before.get("replay", 0) + 1, (before, after)
        assert after.get("auth_failed", 0) == before.get("auth_failed", 0) + 1, (before, after)
        p._send(genuine, (ENGINE_UL, 4787))
        assert p.poll(_is_echo(0, 101, ENGINE_IP, me), 5) is not None, "the genuine packet after a forgery"
    finally:
        p.sock.close()
