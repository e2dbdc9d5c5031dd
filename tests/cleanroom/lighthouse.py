"""A clean-room lighthouse client, written from docs/protocol.md section 10 alone.

A node makes a Noise session with the lighthouse (section 5, as with any peer), then
speaks msgpack control messages in type-4 packets: `register` -> `lease`, `query` ->
`peer` (and `punch` to the target), `catalog_query` -> `catalog`, `names_query` ->
`names_page`, and `error`. Every message it receives is checked against 10.1/10.2;
a message that breaks them raises ControlError with the page's counter name."""
from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from . import certs, noise
from .peer import Addr, Event, Peer

MAX_CONTROL = 1400  # 9: a control message
MAX_ENDPOINTS = 8  # 10.1
INT63 = 2**63 - 1
TYPES = ("register", "lease", "query", "peer", "punch", "catalog_query", "catalog", "names",
         "names_query", "names_page", "error", "blocklist")
TO_NODE = ("lease", "peer", "punch", "catalog", "names_page", "error", "blocklist")  # 10.3


class ControlError(Exception):
    """A control message the page says to refuse; `reason` is the counter name (12)."""

    def __init__(self, reason: str, msg: str = "") -> None:
        super().__init__(f"{reason}: {msg}" if msg else reason)
        self.reason = reason


def _bad(msg: str) -> ControlError:
    return ControlError("bad_control", msg)


# --- field rules (10.1) ---

def _string(m: dict[str, Any], k: str, n: int, *, optional: bool = False) -> str | None:
    v = m.get(k)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not 1 <= len(v) <= n:
        raise _bad(f"{k}: not a string of 1 to {n}")
    return v


def _int(m: dict[str, Any], k: str, lo: int, hi: int, default: int | None = None) -> int:
    if k not in m and default is not None:
        return default
    v = m.get(k)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:  # bool is not int
        raise _bad(f"{k}: not an int in [{lo}, {hi}]")
    return v


def _bool(m: dict[str, Any], k: str, default: bool) -> bool:
    v = m.get(k, default)
    if not isinstance(v, bool):
        raise _bad(f"{k}: not a bool")
    return v


def endpoint(v: object, what: str = "endpoint") -> Addr:
    if not isinstance(v, list) or len(v) != 2:
        raise _bad(f"{what}: not [address, port]")
    a, p = v
    if not isinstance(a, str) or len(a) > 45 or "%" in a:
        raise _bad(f"{what}: address")
    if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
        raise _bad(f"{what}: port")
    try:
        ip = ipaddress.ip_address(a)
    except ValueError as e:
        raise _bad(f"{what}: address {a!r}") from e
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # the canonical spelling (10.1)
    return str(ip), p


def endpoints(m: dict[str, Any], k: str) -> list[Addr]:
    v = m.get(k, [])
    if not isinstance(v, list) or len(v) > MAX_ENDPOINTS:
        raise _bad(f"{k}: not an array of at most {MAX_ENDPOINTS}")
    return [endpoint(e, k) for e in v]


def cidr(m: dict[str, Any], k: str) -> ipaddress.IPv4Network:
    v = _string(m, k, 18)
    try:
        return ipaddress.IPv4Network(v)
    except ValueError as e:
        raise _bad(f"{k}: not an IPv4 network") from e


# --- the endpoint rule (10.4) ---

_REFUSED_V4 = [ipaddress.IPv4Network(n) for n in
               ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")]
_REFUSED_V6 = [ipaddress.IPv6Network(n) for n in ("::/128", "::1/128", "fe80::/10", "fec0::/10", "ff00::/8")]


def endpoint_allowed(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = None
        if ip.ipv4_mapped is not None:
            v4 = ip.ipv4_mapped
        elif ip in ipaddress.IPv6Network("::/96") and ip not in _REFUSED_V6[:2]:
            v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip in ipaddress.IPv6Network("2002::/16"):
            v4 = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        elif ip in ipaddress.IPv6Network("64:ff9b::/96"):
            v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if v4 is None:
            return not any(ip in n for n in _REFUSED_V6)
        ip = v4
    return not any(ip in n for n in _REFUSED_V4)


# --- decoding (10.1) and the messages a node receives (10.2) ---

def encode(msg: dict[str, Any]) -> bytes:
    raw: bytes = msgpack.packb(msg, use_bin_type=True)
    if len(raw) > MAX_CONTROL:  # the sender refuses to encode it (9)
        raise ControlError("oversized_control", f"{len(raw)} bytes")
    return raw


def decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_CONTROL:
        raise ControlError("oversized_control", f"{len(raw)} bytes")
    try:
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=2048, max_str_len=1024,
                            max_array_len=64, max_map_len=32)
    except Exception as e:
        raise _bad(f"not msgpack: {e}") from e
    if not isinstance(m, dict):
        raise _bad("not a map")
    if m.get("t") not in TYPES or not isinstance(m.get("t"), str):
        raise _bad(f"unknown t {m.get('t')!r}")
    if type(m.get("v")) is not int or m.get("v") != 1:  # not a bool, not a float
        raise _bad(f"v {m.get('v')!r}")
    return m


@dataclass
class Lease:
    subnet: ipaddress.IPv4Network
    network: ipaddress.IPv4Network
    observed: Addr
    ttl: int
    relay: bool
    relays: list[str]


@dataclass
class PeerInfo:  # a `peer` or a `punch`
    kind: str
    name: str
    cert: certs.Cert
    subnet: ipaddress.IPv4Network
    endpoints: list[Addr]
    local: list[Addr]
    refused: int  # endpoints the endpoint rule dropped (each an `endpoint_refused`)


@dataclass
class Error:
    code: str
    msg: str | None
    service: str | None


def parse_lease(m: dict[str, Any]) -> Lease:
    relays = m.get("relays", [])
    if not isinstance(relays, list) or len(relays) > 8:
        raise _bad("relays: not an array of at most 8")
    names = [_string({"r": r}, "r", 64) for r in relays]
    subnet, network = cidr(m, "subnet"), cidr(m, "network")
    if "observed" not in m:
        raise _bad("observed: missing")
    return Lease(subnet, network, endpoint(m["observed"], "observed"), _int(m, "ttl", 1, 86400, 60),
                 _bool(m, "relay", True), [n for n in names if n])


def parse_peer(m: dict[str, Any], ca: certs.Cert, own_name: str, network: ipaddress.IPv4Network | None,
               now: float) -> PeerInfo:
    """`peer` / `punch`, with the engine's checks of 10.3 in their order."""
    name = _string(m, "name", 64)
    raw = m.get("cert")
    if not isinstance(raw, bytes) or not 1 <= len(raw) <= 1024:
        raise _bad("cert: not bin of 1 to 1024")
    subnet = cidr(m, "subnet")
    eps, local = endpoints(m, "endpoints"), endpoints(m, "local")
    try:
        c = certs.verify_node(raw, ca, now)
    except certs.CertError as e:
        raise ControlError("bad_cert", str(e)) from e
    if c.name != name or name == own_name:
        raise _bad("name is not the certificate's, or is our own")
    if network is not None and not subnet.subnet_of(network):
        raise _bad("subnet outside the network")
    kept = [e for e in eps if endpoint_allowed(e[0])]
    return PeerInfo(m["t"], name or "", c, subnet, kept, local, len(eps) - len(kept))


def parse_error(m: dict[str, Any]) -> Error:
    code = _string(m, "code", 32) or ""
    msg = _string(m, "msg", 400, optional=True)
    service = m.get("service")
    if code == "service_refused":
        service = _string(m, "service", 63)
    elif service not in (None, ""):
        raise _bad("service with another code than service_refused")
    return Error(code, msg, service or None)


@dataclass
class Service:
    name: str
    addr: str
    port: int
    host: str
    prefix: str
    node: str = ""  # catalog services only
    gateway: Addr | None = None


def _ipv4(v: object, what: str) -> str:
    if not isinstance(v, str) or len(v) > 15:
        raise _bad(f"{what}: not an IPv4 address")
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError as e:
        raise _bad(f"{what}: not an IPv4 address") from e


def parse_service(m: object, catalog: bool) -> Service:
    """A service (10.2); with `catalog`, also `node` and `gateway`."""
    if not isinstance(m, dict):
        raise _bad("service: not a map")
    name = (_string(m, "name", 63) or "").lower()
    host = m.get("host", "")
    if not isinstance(host, str) or len(host) > 253:
        raise _bad("service host")
    prefix = m.get("prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise _bad("service prefix")
    svc = Service(name, _ipv4(m.get("addr"), "service addr"), _int(m, "port", 1, 65535), host, prefix[:200])
    if catalog:
        svc.node = _string(m, "node", 64) or ""
        gw = m.get("gateway")
        svc.gateway = None if gw is None else endpoint(gw, "gateway")
        if svc.gateway is not None and not endpoint_allowed(svc.gateway[0]):
            svc.gateway = None  # the engine drops it (10.3, endpoint_refused)
    return svc


@dataclass
class Catalog:
    services: list[Service]
    next: int


def parse_catalog(m: dict[str, Any]) -> Catalog:
    v = m.get("services", [])
    if not isinstance(v, list) or len(v) > 32:
        raise _bad("services: not an array of at most 32")
    return Catalog([parse_service(x, True) for x in v], _int(m, "next", 0, 2**20, 0))


@dataclass
class NamesPage:
    version: int
    next: int
    names: list[tuple[str, str, str]]  # (name, addr, node)


def parse_names_page(m: dict[str, Any]) -> NamesPage:
    v = m.get("names", [])
    if not isinstance(v, list) or len(v) > 16:
        raise _bad("names: not an array of at most 16")
    out = []
    for e in v:
        if not isinstance(e, list) or len(e) != 3:
            raise _bad("names: not [name, addr, node]")
        name = _string({"n": e[0]}, "n", 63) or ""
        addr = _ipv4(e[1], "names addr")
        if len(e[1]) < 7:
            raise _bad("names addr")
        out.append((name.lower(), addr, _string({"n": e[2]}, "n", 64) or ""))
    return NamesPage(_int(m, "version", 0, INT63), _int(m, "next", 0, 2**20), out)


@dataclass
class BlocklistPiece:
    serial: int
    total: int
    offset: int
    data: bytes


def parse_blocklist_piece(m: dict[str, Any]) -> BlocklistPiece:
    serial, total = _int(m, "serial", 0, INT63), _int(m, "total", 1, 65536)
    offset = _int(m, "offset", 0, 65535)
    data = m.get("data")
    if offset % 1024 or offset >= total:
        raise ControlError("bad_blocklist", "offset")
    if not isinstance(data, bytes):
        raise _bad("data: not bin")
    if len(data) != min(1024, total - offset):
        raise ControlError("bad_blocklist", "piece of the wrong length")
    return BlocklistPiece(serial, total, offset, data)


class BlocklistAssembly:
    """Pieces of one serial larger than the one enforced (10.3); the whole file is
    checked (3.6) before any of it is used."""

    def __init__(self, ca: certs.Cert, enforced: int = 0) -> None:
        self.ca, self.enforced = ca, enforced
        self.serial, self.total, self.pieces = 0, 0, {}  # type: ignore[var-annotated]

    def add(self, p: BlocklistPiece) -> certs.Blocklist | None:
        if p.serial <= self.enforced or p.serial < self.serial:
            return None
        if p.serial > self.serial or p.total != self.total:  # a larger serial starts over
            self.serial, self.total, self.pieces = p.serial, p.total, {}
        self.pieces[p.offset] = p.data
        raw = b"".join(self.pieces[o] for o in sorted(self.pieces))
        if len(raw) < self.total:
            return None
        try:
            bl = certs.verify_blocklist(raw, self.ca)
        except certs.CertError as e:
            raise ControlError("bad_blocklist", str(e)) from e
        if bl.serial != p.serial:
            raise ControlError("bad_blocklist", "serial of the pieces is not the file's")
        self.enforced = bl.serial
        return bl


# --- relay through the lighthouse (section 7) ---

T_RELAY = 5


def relay_id(subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network) -> int:
    """Relay id = lease block: (subnet address - network address) >> 8 (7)."""
    return (int(subnet.network_address) - int(network.network_address)) >> 8


class RelayingPeer(Peer):
    """A Peer whose remotes may sit behind the lighthouse: their address is
    ("relay", id), and datagrams to it go to the lighthouse wrapped in a type 5."""

    lh_addr: Addr = ("", 0)

    def _send(self, pkt: bytes, addr: Addr) -> None:
        if addr[0] == "relay":
            pkt = noise.header(T_RELAY) + addr[1].to_bytes(4, "little") + pkt
            addr = self.lh_addr
        super()._send(pkt, addr)

    def handle(self, pkt: bytes, addr: Addr) -> list[Event]:
        if len(pkt) >= 4 and pkt[0] == T_RELAY:
            try:
                noise.check_header(pkt)
                if len(pkt) <= 8:
                    raise noise.HandshakeError("short")
                if addr != self.lh_addr:  # only our lighthouse may relay to us (7)
                    raise noise.HandshakeError("relay_refused")
                if pkt[8] == T_RELAY:  # not unwrapped twice
                    raise noise.HandshakeError("unknown_type")
            except noise.HandshakeError as e:
                self.drops[e.reason] += 1
                return [Event("drop", info={"reason": e.reason})]
            return super().handle(pkt[8:], ("relay", int.from_bytes(pkt[4:8], "little")))
        return super().handle(pkt, addr)


# --- the TCP relay stream (7.1) ---

TCP_PREAMBLE = b"FNT\x01"  # "FNT" and TCP framing version 1


class FramedTcp:
    """A connected TCP socket that looks like the UDP socket Peer uses: the preamble
    once, then frames of u16 big-endian length (1 to 2048) and one datagram."""

    def __init__(self, sock: socket.socket, peer_addr: Addr) -> None:
        self.sock, self.peer_addr = sock, peer_addr
        self.buf = b""
        sock.sendall(TCP_PREAMBLE)

    def sendto(self, pkt: bytes, _addr: Addr) -> int:
        if not 1 <= len(pkt) <= 2048:
            raise ValueError("a frame holds 1 to 2048 bytes")
        self.sock.sendall(len(pkt).to_bytes(2, "big") + pkt)
        return len(pkt)

    def recvfrom(self, _n: int) -> tuple[bytes, Addr]:
        for _ in range(4096):  # bounded: one frame is at most 2050 bytes
            if len(self.buf) >= 2:
                size = int.from_bytes(self.buf[:2], "big")
                if len(self.buf) >= 2 + size:
                    pkt, self.buf = self.buf[2:2 + size], self.buf[2 + size:]
                    return pkt, self.peer_addr
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the lighthouse closed the stream")
            self.buf += chunk
        raise ConnectionError("no whole frame")

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()


# --- the node ---

class LighthouseNode:
    """One clean-room node with one lighthouse; a thin layer over Peer."""

    def __init__(self, sock: socket.socket, key: bytes, cert: bytes, ca: certs.Cert, lh_cert: bytes,
                 lh_addr: Addr, clock: Callable[[], float] = time.time) -> None:
        self.peer = RelayingPeer(sock, key, cert, ca, clock)
        self.peer.lh_addr = lh_addr
        self.ca = ca
        self.lh = self.peer.add_remote(lh_cert, lh_addr).name
        self.lease: Lease | None = None
        self.errors: list[str] = []  # counters of refused control messages
        self.inbox: list[Any] = []  # parsed messages not yet asked for

    @property
    def name(self) -> str:
        return self.peer.name

    def connect(self, timeout: float = 10.0) -> None:
        self.peer.initiate(self.lh)
        ev = self.peer.poll(lambda e: e.kind == "established", timeout)
        if ev is None:
            raise TimeoutError(f"no handshake with the lighthouse: {dict(self.peer.drops)}")

    def send_raw(self, raw: bytes) -> bytes:
        """Send control plaintext as it is (tests send malformed ones); returns the datagram."""
        return self.peer.send(self.lh, raw, noise.T_CTRL)

    def send(self, msg: dict[str, Any]) -> bytes:
        return self.send_raw(encode({"v": 1, **msg}))

    def register(self, eps: Sequence[Addr] = (), **extra: Any) -> None:
        if len(eps) > 7:
            raise ValueError("a node registers at most 7 own endpoints (9)")
        self.send({"t": "register", "endpoints": [[a, p] for a, p in eps], **extra})

    def relay_to(self, info: PeerInfo) -> None:
        """Reach a node from a `peer` answer through the lighthouse (needs the lease)."""
        assert self.lease is not None and self.lease.relay
        r = self.peer.add_remote(info.cert.raw, None)
        r.addr = ("relay", relay_id(info.subnet, self.lease.network))

    def query(self, addr: str | None = None, name: str | None = None) -> None:
        m: dict[str, Any] = {"t": "query"}
        if addr is not None:
            m["addr"] = addr
        if name is not None:
            m["name"] = name
        self.send(m)

    def _parse(self, pt: bytes) -> Any:
        m = decode(pt)
        t = m["t"]
        if t not in TO_NODE:
            raise ControlError("unexpected_control", t)
        if t == "lease":
            self.lease = parse_lease(m)
            return self.lease
        if t in ("peer", "punch"):
            return parse_peer(m, self.ca, self.name, self.lease.network if self.lease else None,
                              self.peer.clock())
        if t == "error":
            return parse_error(m)
        if t == "catalog":
            return parse_catalog(m)
        if t == "names_page":
            return parse_names_page(m)
        return parse_blocklist_piece(m)

    def receive(self, want: Callable[[Any], bool], timeout: float) -> Any:
        """The first parsed message `want` accepts; others wait in `inbox`. Bounded."""
        for i, x in enumerate(self.inbox):
            if want(x):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ev: Event | None = self.peer.poll(lambda e: e.kind == "control", left)
            if ev is None:
                return None
            if ev.remote != self.lh:
                self.errors.append("control_from_non_lighthouse")
                continue
            try:
                x = self._parse(ev.data)
            except ControlError as e:
                self.errors.append(e.reason)
                continue
            if want(x):
                return x
            self.inbox.append(x)
        return None
