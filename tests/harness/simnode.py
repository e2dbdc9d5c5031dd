"""Simulated nodes that speak the real lighthouse protocol over UDP: a Noise IK
handshake with certificates (engine.proto.handshake, macs from engine.proto.cookie),
then msgpack control messages sealed as type-4 packets (tests.harness.wire, PyNaCl).
Thousands of them share a few sockets; replies find their node by receiver index.
Used by the lighthouse benchmark (10,000 nodes) and the etcd cluster tests.

A load generator must cost less than what it measures: after the handshakes,
`Swarm.attach` hands the nodes' keys to the engine's C data path (engine/datapath.py,
the same code an engine runs), which seals the nodes' messages in batches (one
sendmmsg per socket) and opens the answers in batches (recvmmsg). Answers are then
counted by their type (read from the msgpack header, after C authenticated them);
leases and errors are decoded in full, and one answer in CHECK_EVERY of the others.
For the same reason `Swarm.prepare` builds initiations before a timed phase (each with
its own fresh ephemeral key), and the nodes share one cache of verified certificates.

    python3 -m tests.harness.simnode --ca-dir D --lighthouse NAME@HOST:PORT ... \
        register --names a,b,c [--bind IP]     -> JSON {name: subnet or "error: ..."}
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from flatnet.engine.proto import cert as certs
from flatnet.engine.proto import cookie, handshake as hsm
from flatnet.engine.proto.handshake import Identity, VerifiedCerts
from flatnet.engine.proto.noise import generate_keypair
from flatnet.engine.proto import control as wire
from tests.harness import wire as hwire

try:  # the C data path (Swarm.attach); without it the swarm seals and opens in Python
    from flatnet.engine.crypto import ffi, lib
    from flatnet.engine.datapath import CTRL_DECRYPTED, CTRL_RAW, DataPath
except ImportError:
    ffi = lib = DataPath = None

DAY = 86400
# attached: one peer or punch in this many is decoded in full (with its certificate:
# about 80 us in Python, more than C's receive and open of all 64); the rest are counted
CHECK_EVERY = 64


@dataclass
class Session:
    send: bytes = b""
    receive: bytes = b""
    remote: int = 0
    counter: int = 0
    hs: object = None
    started: float = 0.0
    index: int = 0        # our receiver index
    pending_index: int = 0  # ours in the handshake out (a rekey's: index keeps the first one)
    slot: int = -1        # Swarm.attach: its slot in the C data path


@dataclass
class Node:
    ident: Identity
    sock: socket.socket
    sessions: dict[str, Session] = field(default_factory=dict)   # lighthouse -> session
    lease: str | None = None
    error: str | None = None
    answers: list = field(default_factory=list)                  # (kind, msg) received
    registered_at: float = 0.0                                   # when we last sent a register


class Lighthouse:
    def __init__(self, name: str, addr: tuple[str, int], static: bytes) -> None:
        self.name, self.addr, self.static = name, addr, static


def make_identity(ca_key: SigningKey, ca: certs.Certificate, name: str,
                  verified: VerifiedCerts | None = None) -> Identity:
    """verified: a cache of checked certificates to share (Swarm: all its nodes)."""
    private, public = generate_keypair()
    now = int(time.time())
    raw = certs.sign_node(ca_key, ca, name, public, [], now - DAY, now + 30 * DAY)
    return Identity(private, certs.decode(raw)[0], ca, verified=verified if verified is not None else VerifiedCerts())


class Swarm:
    """`n` nodes over `sockets` UDP sockets bound to `bind`."""

    def __init__(self, ca_key: SigningKey, ca: certs.Certificate, lighthouses: list[Lighthouse], names: list[str],
                 bind: str | list[str] = "127.0.0.1", sockets: int = 32) -> None:
        """bind: an address for all sockets, or one address per socket (the lighthouse
        limits handshakes per source address: many simulated hosts need many)."""
        binds = [bind] * sockets if isinstance(bind, str) else list(bind)
        sockets = len(binds)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, sockets + 256)), hard))
        self.lighthouses = {lh.name: lh for lh in lighthouses}
        self.socks = []
        for addr in binds:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((addr, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.sel = selectors.DefaultSelector()
        for s in self.socks:
            self.sel.register(s, selectors.EVENT_READ)
        # one cache of verified certificates for all the nodes: the lighthouse's
        # certificate is checked (Ed25519) once, not once per simulated node
        verified = VerifiedCerts()
        self.nodes = [Node(make_identity(ca_key, ca, n, verified), self.socks[i % sockets])
                      for i, n in enumerate(names)]
        self.prepared: dict[tuple[int, str], bytes] = {}  # (id(node), lighthouse) -> initiation
        self._handshakes = 0
        self._keep: dict[str, int] = {}  # keep_registered's place, per lighthouse
        self.by_index: dict[int, tuple[Node, str]] = {}
        self.rng = random.Random()
        self.counts = {"handshakes": 0, "messages": 0, "bad": 0, "peer": 0, "punch": 0, "error": 0}
        self.keep_answers = True  # False: only count them (a benchmark of many queries)
        self.dp = None            # attach(): the C data path holding the nodes' sessions
        self.by_slot: list[tuple[Node, str]] = []
        self.outbox: dict[int, list[tuple[int, bytes]]] = {}  # socket fd -> [(slot, payload)]
        self._ctrl = None
        # attached, but handshake answers expected (rekeys): receive and open in Python.
        # The C data path drops them: it checks mac1 under one identity, not each node's
        self.handshakes_in_python = False
        self._seen = 0

    def close(self) -> None:
        for s in self.socks:
            s.close()

    # ---- sending
    def _initiation(self, node: Node, lh: str) -> bytes:
        """A new initiation of `node` to `lh` (a fresh ephemeral key, the time now),
        its pending Session in place."""
        target = self.lighthouses[lh]
        # the low 16 bits count handshakes: unique in attach()'s receive table of 65,536
        # (indexed by the low bits, engine/crypto/csrc/fastpath.c fn_rx_add)
        index = (self.rng.getrandbits(16) or 1) << 16 | (self._handshakes & 0xFFFF)
        self._handshakes += 1
        hs, msg = hsm.create_initiation(node.ident, target.static, index, time.time_ns())
        packet, _ = cookie.add_macs(msg, target.static, None)
        old = node.sessions.get(lh)
        if old is not None and old.slot >= 0:  # attached: a rekey; C keeps the keys it holds
            old.hs, old.pending_index = hs, index
        else:
            node.sessions[lh] = Session(hs=hs, index=index, pending_index=index)
        self.by_index[index] = (node, lh)
        return packet

    def prepare(self, nodes: list[Node], lh: str) -> None:
        """Build the next initiation of each node to `lh` now, to be sent by
        `handshake` later: the load generator's X25519 and ChaCha20 work for them is
        done before a timed phase (each still has its own fresh ephemeral key and a
        TAI64N of when it was built: newer than the node's last, as a lighthouse
        requires; a node whose initiation waited in a queue looks the same)."""
        for n in nodes:
            self.prepared[(id(n), lh)] = self._initiation(n, lh)

    def handshake(self, node: Node, lh: str) -> None:
        packet = self.prepared.pop((id(node), lh), None) or self._initiation(node, lh)
        node.sessions[lh].started = time.monotonic()
        node.sock.sendto(packet, self.lighthouses[lh].addr)

    def attach(self) -> int:
        """The sessions made so far (with any lighthouse) go to a C data path, once:
        one slot per session (its send key, the lighthouse as endpoint, its receive key
        under its index). From now on their messages are sealed and sent by `flush`,
        and `pump` opens the answers in C. Before any type-4 message: C counts from 0.
        Returns the sessions attached."""
        if self.dp is not None:
            raise RuntimeError("the swarm is attached already")
        ready = [(n, lh) for n in self.nodes for lh, s in n.sessions.items() if s.send and s.counter == 0]
        # 21,846 slots or more: a receive table of 65,536, one entry per handshake's low 16 bits
        self.dp = DataPath(ipaddress.IPv4Network("10.0.0.0/8"), 1400, max_peers=max(21846, len(ready)))
        self._ctrl = ffi.new("fn_ctrl[]", 64)
        for slot, (n, lh) in enumerate(ready):
            s = n.sessions[lh]
            self.dp.set_peer(slot, None)
            self.dp.set_endpoint(slot, self.lighthouses[lh].addr)
            self.dp.set_tx_key(slot, s.send, s.remote)
            self.dp.add_rx(s.index, slot, s.receive)
            s.slot = slot
            self.by_slot.append((n, lh))
        return len(ready)

    def flush(self) -> None:
        """Attached: what `send` queued goes out, one C call (one sendmmsg) per socket."""
        for fd, msgs in self.outbox.items():
            if msgs:
                for rc in self.dp.send_controls(msgs, fd=fd):
                    if rc:
                        self.counts["send_failed"] = self.counts.get("send_failed", 0) + 1
                msgs.clear()

    def send(self, node: Node, lh: str, msg: bytes) -> bool:
        s = node.sessions.get(lh)
        if s is None or not s.send:
            return False
        if s.slot >= 0:
            self.outbox.setdefault(node.sock.fileno(), []).append((s.slot, msg))
            return True
        node.sock.sendto(hwire.seal(s.send, s.remote, s.counter, msg, kind=4), self.lighthouses[lh].addr)
        s.counter += 1
        return True

    def register(self, node: Node, lh: str) -> bool:
        node.registered_at = time.monotonic()
        return self.send(node, lh, wire.encode("register", endpoints=[]))

    def keep_registered(self, lh: str, every: float = 10.0, batch: int = 500) -> None:
        """Register again like an engine does (every 10 s): a lighthouse that hears
        nothing for 20 s after answering starts a handshake of its own, which these
        nodes do not answer. Looks at `batch` nodes per call, in turn (a turn per lighthouse)."""
        now = time.monotonic()
        start = self._keep.get(lh, 0) % max(1, len(self.nodes))
        for n in self.nodes[start:start + batch]:
            s = n.sessions.get(lh)
            if s is not None and s.send and now - n.registered_at >= every:
                self.register(n, lh)
        self._keep[lh] = start + batch

    # ---- receiving
    def pump(self, timeout: float) -> int:
        """Read what arrived (waiting up to `timeout` for the first); handled count."""
        handled = 0
        if self.dp is not None:
            self.flush()
        for key, _ in self.sel.select(timeout):
            if self.dp is not None and not self.handshakes_in_python:
                handled += self._pump_c(key.fileobj.fileno())
                continue
            for _ in range(256):
                try:
                    data, addr = key.fileobj.recvfrom(2048)
                except BlockingIOError:
                    break
                handled += 1
                self._on_datagram(data, key.fileobj, addr)
        return handled

    def _pump_c(self, fd: int) -> int:
        """Attached: up to 4 batches of 64 from this socket, received and opened by C
        (recvmmsg; a packet that fails authentication or replay is dropped there)."""
        handled = 0
        ctrl, ctx = self._ctrl, self.dp.ctx
        for _ in range(4):
            n = lib.fn_outside(ctx, fd, -1, 0, ctrl, 64)
            if n <= 0:
                break
            handled += n
            for i in range(n):
                c = ctrl[i]
                if c.kind == CTRL_DECRYPTED:
                    self._on_plain(c.peer, ffi.buffer(c.data, c.len))
                elif c.kind == CTRL_RAW:  # a late handshake answer
                    self._on_datagram(ffi.buffer(c.data, c.len)[:])
            if n < 64:
                break
        return handled

    def _on_plain(self, slot: int, data) -> None:  # noqa: ANN001 - a cffi buffer
        """An answer C opened. Its type is the msgpack header control.encode writes
        ({"t": kind, ...}, "t" first); leases and errors are decoded in full (they carry
        state), one in CHECK_EVERY of the rest too, and must say what the header said."""
        head = data[0:20]
        kind = None
        if head[1:3] == b"\xa1t" and 0xa0 <= head[3] <= 0xbf:
            kind = head[4:4 + (head[3] & 0x1F)].decode("ascii", "replace")
        self._seen += 1
        if kind not in ("peer", "punch") or self.keep_answers or self._seen % CHECK_EVERY == 0:
            node, _ = self.by_slot[slot]
            try:
                full, msg = wire.decode(data[:])
            except Exception:  # noqa: BLE001 - a benchmark counts what it could not read
                self.counts["bad"] += 1
                return
            if kind is not None and kind != full:
                self.counts["bad"] += 1
                return
            self.counts["checked"] = self.counts.get("checked", 0) + 1
            self._on_message(node, full, msg)
            return
        self.counts["messages"] += 1
        self.counts[kind] += 1

    def _on_message(self, node: Node, kind: str, msg: dict) -> None:
        self.counts["messages"] += 1
        if kind == "lease":
            node.lease = msg["subnet"]
        elif kind == "error" and msg["code"] in ("exhausted", "unregistered"):
            node.error = f"{msg['code']}: {msg['msg']}"
        else:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.keep_answers:
                node.answers.append((kind, msg))

    def _on_datagram(self, data: bytes, sock: socket.socket | None = None, addr: tuple | None = None) -> None:
        """sock, addr: where it came in, and from (used by tests/harness/simkeep.py)."""
        try:
            if data[0] == 2:
                sender, receiver = hsm.response_indexes(data)
                node, lh = self.by_index[receiver]
                s = node.sessions[lh]
                if s.hs is None or s.pending_index != receiver:
                    raise ValueError("no handshake waits for this response")
                peer, _cipher = hsm.consume_response(node.ident, s.hs, data, lh, time.time())  # no offer: ChaCha
                node.ident.remember_peer(peer, s.hs)  # as PeerSession does: accepted
                if s.slot >= 0:  # attached: a rekey; the C data path keeps the first keys
                    s.hs = None
                    self.counts["rekeys"] = self.counts.get("rekeys", 0) + 1
                    return
                s.send, s.receive = s.hs.split()
                s.remote, s.hs = sender, None
                self.counts["handshakes"] += 1
            elif data[0] == 4:
                index = int.from_bytes(data[4:8], "little")
                node, lh = self.by_index[index]
                _, _, _, plain = hwire.open_packet(node.sessions[lh].receive, data)
                kind, msg = wire.decode(plain)
                self._on_message(node, kind, msg)
        except Exception:  # noqa: BLE001 - a benchmark counts what it could not read
            self.counts["bad"] += 1

    def wait(self, done, seconds: float) -> bool:  # noqa: ANN001
        end = time.monotonic() + seconds
        while not done():
            if time.monotonic() > end:
                return False
            self.pump(0.05)
        return True


def load(ca_dir: str, specs: list[str]) -> tuple[SigningKey, certs.Certificate, list[Lighthouse]]:
    """The CA (its signing key) and lighthouses NAME@HOST:PORT whose certificate is
    ca_dir/NAME.crt."""
    from flatnet.engine import pki
    ca = pki.load_ca(os.path.join(ca_dir, "ca.crt"))
    ca_key = SigningKey(pki.read_secret(os.path.join(ca_dir, "ca.key")))
    lhs = []
    for spec in specs:
        name, _, hostport = spec.partition("@")
        host, _, port = hostport.rpartition(":")
        cert = certs.verify_node(pki.read_file(os.path.join(ca_dir, f"{name}.crt"), "cert"), ca, time.time())
        lhs.append(Lighthouse(name, (host, int(port)), cert.key))
    return ca_key, ca, lhs


def register_all(swarm: Swarm, spread: bool = True, seconds: float = 20.0) -> dict[str, str]:
    """Each node handshakes with one lighthouse (round robin when `spread`) and
    registers; retries unanswered ones every second. {name: subnet or error}."""
    names = list(swarm.lighthouses)
    choice = {id(n): names[i % len(names)] if spread else names[0] for i, n in enumerate(swarm.nodes)}
    for n in swarm.nodes:
        swarm.handshake(n, choice[id(n)])
    end = time.monotonic() + seconds
    sent: set[int] = set()
    last_retry = time.monotonic()
    while time.monotonic() < end:
        swarm.pump(0.05)
        for n in swarm.nodes:
            lh = choice[id(n)]
            if n.lease is None and n.error is None and id(n) not in sent and swarm.register(n, lh):
                sent.add(id(n))
        if all(n.lease or n.error for n in swarm.nodes):
            break
        if time.monotonic() - last_retry > 1.0:  # a lost handshake or register: again (another lighthouse)
            last_retry = time.monotonic()
            for n in swarm.nodes:
                if n.lease is None and n.error is None:
                    choice[id(n)] = names[(names.index(choice[id(n)]) + 1) % len(names)]
                    sent.discard(id(n))
                    swarm.handshake(n, choice[id(n)])
    return {n.ident.cert.name: n.lease or n.error or "error: no answer" for n in swarm.nodes}


def pair_query(ca_key, ca, lhs, names, bind, seconds) -> dict:  # noqa: ANN001
    """Node A registered through lhs[0] asks for node B registered through lhs[-1]:
    A's answer (a `peer`), and whether B got the `punch` (from its own lighthouse)."""
    out = {}
    swarms = [Swarm(ca_key, ca, [lh], [n], bind, sockets=1) for lh, n in ((lhs[0], names[0]), (lhs[-1], names[1]))]
    try:
        for sw in swarms:
            out[sw.nodes[0].ident.cert.name] = register_all(sw, seconds=seconds)[sw.nodes[0].ident.cert.name]
        a, b = swarms[0].nodes[0], swarms[1].nodes[0]
        end = time.monotonic() + seconds
        asked = 0.0
        while time.monotonic() < end and not (a.answers and b.answers):
            if time.monotonic() - asked > 1.0:  # the registration may take a moment to reach the other cache
                asked = time.monotonic()
                a.answers.clear()
                swarms[0].send(a, lhs[0].name, wire.encode("query", name=names[1]))
            for sw in swarms:
                sw.pump(0.02)
            if a.answers and a.answers[0][0] != "peer":
                a.answers.clear()
        out["answer"] = a.answers[0][0] if a.answers else None
        out["punch"] = b.answers[0][1]["name"] if b.answers and b.answers[0][0] == "punch" else None
    finally:
        for sw in swarms:
            sw.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.harness.simnode")
    p.add_argument("--ca-dir", required=True)
    p.add_argument("--lighthouse", action="append", required=True, help="NAME@HOST:PORT")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--seconds", type=float, default=20.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    reg = sub.add_parser("register")
    reg.add_argument("--names", required=True)
    pair = sub.add_parser("pair", help="A registers at the first lighthouse, B at the last; A asks for B")
    pair.add_argument("--names", required=True, help="A,B")
    a = p.parse_args(argv)
    ca_key, ca, lhs = load(a.ca_dir, a.lighthouse)
    if a.cmd == "pair":
        print(json.dumps(pair_query(ca_key, ca, lhs, a.names.split(","), a.bind, a.seconds)))
        return 0
    swarm = Swarm(ca_key, ca, lhs, a.names.split(","), a.bind, sockets=min(32, len(a.names.split(","))))
    try:
        print(json.dumps(register_all(swarm, seconds=a.seconds)))
    finally:
        swarm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
