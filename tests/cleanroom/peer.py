"""A tiny UDP driver around the sans-IO parts: one clean-room node with static peers.

Enough of docs/protocol.md to interoperate with an engine: initiator and responder
(5.7, 5.8), key confirmation (5.9), transport both ways (6), cookie replies received
and, when `under_load` is set, sent (5.5). No relay, no lighthouse."""
from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import certs, noise, prims
from .transport import Session, TransportError

Addr = tuple[str, int]
RETRY_FIRST, RETRY_MAX = 1.0, 8.0  # 8: handshake retry 1 s doubling, at most 8 s


@dataclass
class Remote:
    name: str
    cert: certs.Cert  # the one held for the name; its key must not change (5.7 step 10)
    addr: Addr | None
    last_ts: bytes = b""  # the last accepted TAI64N (5.7 step 11)
    cookie: bytes | None = None
    cookie_at: float = 0.0
    session: Session | None = None  # the one we send with
    staged: Session | None = None  # a responder's session until the first packet under it (5.9)
    presented: certs.Cert | None = None  # the certificate of the current session's handshake


@dataclass
class Pending:
    remote: Remote
    hs: noise.Handshake
    offer: list[str] | None
    mac1: bytes  # of the last message sent, to open a cookie reply
    sent_at: float
    retry: float = RETRY_FIRST


@dataclass
class Event:
    kind: str  # "established", "data", "control", "keepalive", "cookie", "drop", "cookie_sent"
    remote: str = ""
    data: bytes = b""
    info: dict[str, object] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class Peer:
    def __init__(self, sock: socket.socket, static_private: bytes, cert: bytes, ca: certs.Cert,
                 clock: Callable[[], float] = time.time, accepted: tuple[str, ...] = noise.KNOWN_CIPHERS) -> None:
        self.sock = sock
        self.s = static_private
        self.s_pub = prims.x25519_public(static_private)
        self.cert = cert
        self.ca = ca
        self.clock = clock
        self.accepted = accepted
        own = certs.verify_node(cert, ca, clock())
        if own.key != self.s_pub:
            raise certs.CertError("certificate key is not the key file's public key")
        self.name = own.name
        self.remotes: dict[str, Remote] = {}
        self.pending: dict[int, Pending] = {}
        self.sessions: dict[int, tuple[Remote, Session]] = {}
        self.drops: Counter[str] = Counter()
        self.last_ts_sent = 0
        self.backlog: list[Event] = []  # events poll() has not handed out yet
        self.under_load = False
        self.confirm_with_keepalive = True
        self.force_response_aead: str | None = None  # answer handshakes without our cookie in mac2 with a type 6
        self._cookie_secret = secrets.token_bytes(32)
        self._cookie_nonce = 0
        self._cookie_nonce_prefix = secrets.token_bytes(16)

    def add_remote(self, cert: bytes, addr: Addr | None) -> Remote:
        c = certs.verify_node(cert, self.ca, self.clock())
        r = Remote(c.name, c, addr)
        self.remotes[c.name] = r
        return r

    def _index(self) -> int:
        while True:  # 5.6: non-zero, unique among our live sessions and handshakes, random
            i = secrets.randbits(32)
            if i and i not in self.pending and i not in self.sessions:
                return i

    def _send(self, pkt: bytes, addr: Addr) -> None:
        self.sock.sendto(pkt, addr)

    # --- initiator ---

    def initiate(self, name: str, offer: list[str] | None = None) -> int:
        """Send a new initiation (new ephemeral key, index and timestamp). Returns the index."""
        r = self.remotes[name]
        assert r.addr is not None
        for idx in [i for i, p in self.pending.items() if p.remote is r]:
            del self.pending[idx]  # only the newest initiation may be answered (5.8 step 5)
        # TAI64N only moves forward between initiations to one peer (5.3)
        ns = max(time.time_ns(), self.last_ts_sent + 1)
        self.last_ts_sent = ns
        hs = noise.Handshake(True, self.s, r.cert.key)
        payload = noise.initiation_payload(self.cert, noise.tai64n(ns), offer)
        idx = self._index()
        pkt = noise.initiation(idx, hs.write_message1(payload, os.urandom(32)), r.cert.key, self._cookie_for(r))
        self.pending[idx] = Pending(r, hs, offer, pkt[-32:-16], self.clock())
        self._send(pkt, r.addr)
        return idx

    def _cookie_for(self, r: Remote) -> bytes | None:
        if r.cookie and self.clock() - r.cookie_at < noise.COOKIE_LIFETIME:
            return r.cookie
        return None

    def _on_response(self, pkt: bytes, addr: Addr) -> list[Event]:
        sidx, ridx, msg = noise.split_response(pkt, self.s_pub)
        p = self.pending.get(ridx)
        if p is None:
            raise noise.HandshakeError("unexpected_response")
        hs = p.hs.copy()  # a junk response under the right index changes nothing (5.8 step 6)
        cert_bytes, chosen = noise.parse_response_payload(hs.read_message2(msg))
        try:
            c = certs.verify_node(cert_bytes, self.ca, self.clock())
        except certs.CertError as e:
            raise noise.HandshakeError("bad_cert", str(e)) from e
        if c.key != p.remote.cert.key or c.name != p.remote.name:
            raise noise.HandshakeError("bad_cert", "another key or name than the initiation was for")
        cipher = noise.cipher_of_response(p.offer, chosen)
        del self.pending[ridx]
        send, recv = hs.keys()
        s = Session(ridx, sidx, send, recv, cipher)
        r = p.remote
        r.presented, r.session, r.staged, r.addr = c, s, None, addr
        self.sessions[ridx] = (r, s)
        # key confirmation: a keepalive under the new keys at once (5.9); a caller may turn
        # it off and confirm with its own first packet, as the page allows
        if self.confirm_with_keepalive:
            self._send(s.seal(noise.T_DATA, b""), addr)
        return [Event("established", r.name, info={"role": "initiator", "cipher": cipher, "index": ridx})]

    def _on_cookie(self, pkt: bytes) -> list[Event]:
        if len(pkt) != 64:
            raise noise.HandshakeError("short")
        idx = struct.unpack_from("<I", pkt, 4)[0]
        p = self.pending.get(idx)
        if p is None:
            raise noise.HandshakeError("unexpected_cookie")
        _i, cookie = noise.open_cookie_reply(pkt, p.remote.cert.key, p.mac1)
        p.remote.cookie, p.remote.cookie_at = cookie, self.clock()
        return [Event("cookie", p.remote.name, cookie)]  # no send: the retry carries mac2

    # --- responder ---

    def _cookie_value(self, addr: Addr) -> bytes:
        ip = socket.inet_pton(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, addr[0])
        return prims.blake2b(ip + struct.pack("!H", addr[1]), 16, self._cookie_secret)

    def _on_initiation(self, pkt: bytes, addr: Addr) -> list[Event]:
        sidx, msg = noise.split_initiation(pkt, self.s_pub)
        if self.under_load and not noise.mac2_ok(pkt, self._cookie_value(addr)):
            nonce = self._cookie_nonce_prefix + struct.pack("<Q", self._cookie_nonce)
            self._cookie_nonce += 1
            self._send(noise.cookie_reply(sidx, nonce, self.s_pub, pkt[-32:-16], self._cookie_value(addr)), addr)
            self.drops["under_load_cookie_sent"] += 1
            return [Event("cookie_sent", info={"mac2": pkt[-16:]})]
        hs = noise.Handshake(False, self.s)
        ip = noise.parse_initiation_payload(hs.read_message1(msg))
        try:
            c = certs.verify_node(ip.cert, self.ca, self.clock())
        except certs.CertError as e:
            raise noise.HandshakeError("bad_cert", str(e)) from e
        if c.key != hs.rs:
            raise noise.HandshakeError("bad_cert", "certificate key is not the Noise static key")
        if len(ip.ts) != 12:
            raise noise.HandshakeError("bad_handshake", "ts is not 12 bytes")
        cipher = noise.choose_cipher(ip.offer, self.accepted)
        r = self.remotes.get(c.name)
        if r is None:
            raise noise.HandshakeError("unknown_peer")
        if c.key != r.cert.key:
            raise noise.HandshakeError("bad_cert", "presented another key")
        if ip.ts <= r.last_ts:  # 96-bit big-endian compare
            raise noise.HandshakeError("replayed_initiation")
        # authenticated and fresh: only now does anything change
        r.last_ts = ip.ts
        idx = self._index()
        chosen = cipher if ip.offer is not None else None
        if self.force_response_aead is not None:  # tests: a responder that breaks 5.10
            chosen = self.force_response_aead
        payload = noise.response_payload(self.cert, chosen)
        out = noise.response(idx, sidx, hs.write_message2(payload, os.urandom(32)), c.key, self._cookie_for(r))
        send, recv = hs.keys()
        s = Session(idx, sidx, send, recv, cipher)
        self.sessions[idx] = (r, s)  # receive key in place before the response leaves
        r.presented, r.staged, r.addr = c, s, addr
        self._send(out, addr)
        return [Event("responded", r.name, info={"cipher": cipher, "index": idx, "offer": ip.offer})]

    # --- transport ---

    def _on_transport(self, pkt: bytes, addr: Addr) -> list[Event]:
        if len(pkt) < 32:
            raise TransportError("short")
        idx = struct.unpack_from("<I", pkt, 4)[0]
        got = self.sessions.get(idx)
        if got is None:
            raise TransportError("unknown_index")
        r, s = got
        ptype, _ctr, pt = s.open(pkt)
        ev = []
        if r.staged is s:  # the initiator has our response: our send key goes into use (5.9)
            r.session, r.staged = s, None
            ev.append(Event("established", r.name, info={"role": "responder", "cipher": s.cipher, "index": idx}))
        r.addr = addr  # roaming: only authenticated packets move a peer (6.3 step 8)
        info: dict[str, object] = {"index": idx}
        if ptype == noise.T_CTRL:
            ev.append(Event("control", r.name, pt, info))
        elif pt:
            ev.append(Event("data", r.name, pt, info))
        else:
            ev.append(Event("keepalive", r.name, info=info))
        return ev

    def send(self, name: str, plaintext: bytes, ptype: int = noise.T_DATA) -> bytes:
        """Seal and send under the current session; returns the datagram (tests replay it)."""
        r = self.remotes[name]
        if r.session is None or r.addr is None:
            raise TransportError("no_session")
        pkt = r.session.seal(ptype, plaintext)
        self._send(pkt, r.addr)
        return pkt

    # --- the loop ---

    def handle(self, pkt: bytes, addr: Addr) -> list[Event]:
        """One datagram in; events out. Bad input is a counted drop, never an exception."""
        try:
            t = noise.check_header(pkt)
            if t == noise.T_INIT:
                return self._on_initiation(pkt, addr)
            if t == noise.T_RESP:
                return self._on_response(pkt, addr)
            if t == noise.T_COOKIE:
                return self._on_cookie(pkt)
            if t in (noise.T_DATA, noise.T_CTRL):
                return self._on_transport(pkt, addr)
            raise noise.HandshakeError("unknown_type")  # no relay here
        except noise.HandshakeError as e:
            self.drops[e.reason] += 1
            return [Event("drop", info={"reason": e.reason, "error": str(e)})]
        except Exception as e:  # a bug in the clean room: still a counted drop
            self.drops["internal"] += 1
            return [Event("drop", info={"reason": "internal", "error": repr(e)})]

    def timers(self) -> None:
        """Retry pending initiations (1 s doubling, at most 8 s), each a new initiation."""
        now = self.clock()
        for p in list(self.pending.values()):
            if now - p.sent_at >= p.retry:
                retry = min(p.retry * 2, RETRY_MAX)
                self.initiate(p.remote.name, p.offer)
                for q in self.pending.values():
                    if q.remote is p.remote:
                        q.retry = retry

    def poll(self, until: Callable[[Event], bool], timeout: float, max_packets: int = 1000) -> Event | None:
        """Handle datagrams until `until(event)` is true; bounded in time and count."""
        while self.backlog:  # events that came with an earlier match
            ev = self.backlog.pop(0)
            if until(ev):
                return ev
        deadline = time.monotonic() + timeout
        for _ in range(max_packets):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.2))
            try:
                pkt, addr = self.sock.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                self.timers()
                continue
            evs = self.handle(pkt, addr[:2])
            for i, ev in enumerate(evs):
                if until(ev):
                    self.backlog.extend(evs[i + 1:])
                    return ev
            self.timers()
        return None
