"""Lighthouse control messages: msgpack maps carried in type-4 packets (encrypted and
authenticated by the Noise session between the node and the lighthouse).

    register {endpoints: [[ip, port]...], services?, gateway?, blocklist?, relay?}  node -> lighthouse
             (services: what the node publishes; gateway: its HTTP gateway on the LAN;
              blocklist: the serial of the blocklist the node enforces, 0 for none;
              relay: the node relays for others, [relay] enabled = true)
    catalog_query {offset}                              node -> lighthouse
    catalog  {services: [...], next}                    lighthouse -> node (a page of
             every online node's services; next = offset of the next page, or 0)
    lease    {subnet, network, observed: [ip, port], ttl, relay?, relays?} lighthouse -> node
             (relays: names of nodes online that relay for others, at most MAX_RELAYS)
    query    {addr: "10.87.3.5"} or {name: "host-3"}    node -> lighthouse
    peer     {name, cert, subnet, endpoints, local}      lighthouse -> node
    punch    {name, cert, subnet, endpoints, local}      lighthouse -> target node
             (endpoints: the address the lighthouse saw first, then the node's own;
              local: the node's own addresses alone)
    error    {code, msg, service?}                       lighthouse -> node
             (code "service_refused": the service named in `service`, a string of
              1-63 characters, was not accepted; msg says why)
    blocklist {serial, total, offset, data}              lighthouse -> node (one piece
             of the CA-signed blocklist: data = its bytes [offset, offset + len); the
             node verifies the whole before use; engine.proto.revocation)
    names    {gen, total, offset, names: [[name, addr]...]}  node -> lighthouse (one page
             of the node's container names: generation `gen` of its list holds `total`
             entries, this page the ones from `offset`; a list is used once all its pages
             arrived)
    names_query {version, offset}                       node -> lighthouse
    names_page  {version, next, names: [[name, addr, node]...]}  lighthouse -> node (a
             page of every other online node's names; version changes whenever any
             list changes; version equal to the asker's and offset 0: an empty page)

An endpoint [ip, port] is an IPv4 address in dotted form or (protocol version 2) an
IPv6 address as text ("2001:db8::1", at most 45 characters; a mapped ::ffff:a.b.c.d is
read as a.b.c.d), and a port 1-65535.

Every message is a map with "t" (its type) and "v" (1). decode() checks types and
sizes and raises RemoteProtocolError for anything else: a malformed message is
dropped and counted, never trusted. Every field is bounded (limits below; integers
must be msgpack integers in their range, so `inf`/`nan` floats are refused). The
sender keeps to the same limits: a node registers at most MAX_LOCAL endpoints, and
peer_message() trims a peer/punch to MAX_ENDPOINTS and MAX_MESSAGE bytes, so the
lighthouse never builds a message its receiver would refuse.
"""
from __future__ import annotations

import ipaddress

import msgpack

from flatnet.engine.proto import endpoint
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.revocation import MAX_BYTES as BLOCKLIST_MAX

VERSION = 1
MAX_MESSAGE = 1400
MAX_ENDPOINTS = 8               # any endpoint list on the wire
MAX_LOCAL = MAX_ENDPOINTS - 1   # a node's own addresses: the observed one comes first
MAX_OFFSET = 1 << 20            # catalog paging (far above MAX_SERVICES x nodes in practice)
MAX_TTL = 86400
MAX_RELAYS = 8                  # node relays named in one lease

Endpoint = tuple[str, int]


def _endpoints(raw: object) -> list[Endpoint]:
    if not isinstance(raw, list) or len(raw) > MAX_ENDPOINTS:
        raise RemoteProtocolError("bad_control", "endpoints must be a short list")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                and 0 < item[1] < 65536):
            raise RemoteProtocolError("bad_control", "bad endpoint")
        try:  # IPv4 dotted or IPv6 text (protocol version 2), kept in its canonical spelling
            out.append((endpoint.address(item[0]), item[1]))
        except endpoint.EndpointError:
            raise RemoteProtocolError("bad_control", "bad endpoint address") from None
    return out


def _str(msg: dict, key: str, limit: int = 253) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RemoteProtocolError("bad_control", f"{key} missing or too long")
    return value


_OCTETS = {str(i): i for i in range(256)}  # the only spellings of an octet ipaddress accepts


def ipv4_int(text: str) -> int:
    """A dotted-quad IPv4 address as an int, as strictly as ipaddress.IPv4Address reads
    it (four octets "0" to "255" in ASCII digits, no leading zeros; else ValueError),
    at a fraction of its cost: every query a lighthouse answers has one."""
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"{text[:20]!r} is not an IPv4 address")
    value = 0
    for p in parts:
        octet = _OCTETS.get(p)
        if octet is None:
            raise ValueError(f"{text[:20]!r} is not an IPv4 address")
        value = value << 8 | octet
    return value


def _ipv4(msg: dict, key: str) -> str:
    text = _str(msg, key, 15)
    ipv4_int(text)  # the only spelling it accepts is the canonical one: `text` is it
    return text


def _net(msg: dict, key: str) -> str:
    value = _str(msg, key, 18)
    try:
        ipaddress.IPv4Network(value)
    except ValueError:
        raise RemoteProtocolError("bad_control", f"{key} is not a CIDR") from None
    return value


def _int(msg: dict, key: str, default: int, low: int, high: int) -> int:
    value = msg.get(key, default)
    if type(value) is not int or not low <= value <= high:  # no bool, no float (inf, nan)
        raise RemoteProtocolError("bad_control", f"{key} must be an integer in [{low}, {high}]")
    return value


def _names_list(msg: dict, key: str, limit: int) -> list[str]:
    """A list of at most `limit` node names (strings of 1 to 64 characters)."""
    value = msg.get(key, [])
    if not isinstance(value, list) or len(value) > limit:
        raise RemoteProtocolError("bad_control", f"{key}: a list of at most {limit} names")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= 64:
            raise RemoteProtocolError("bad_control", f"{key}: a name is a string of 1 to 64 characters")
    return list(value)


def _bool(msg: dict, key: str, default: bool) -> bool:
    value = msg.get(key, default)
    if type(value) is not bool:
        raise RemoteProtocolError("bad_control", f"{key} must be a boolean")
    return value


MAX_SERVICES = 32
CATALOG_PAGE = 8
MAX_NAMES = 512      # names (container names and aliases) of one node
NAMES_PAGE = 16      # entries in one names or names_page message (fewer if they do not fit)
MAX_GEN = (1 << 63) - 1


def _name_entries(raw: object, with_node: bool) -> list[tuple[str, ...]]:
    """[name, addr(, node)] entries. The name rule (engine.proto.names) is applied per
    entry by the receiver, so one bad name drops that entry alone."""
    if not isinstance(raw, list) or len(raw) > NAMES_PAGE:
        raise RemoteProtocolError("bad_control", f"names: a list of at most {NAMES_PAGE}")
    out = []
    for item in raw:
        size = 3 if with_node else 2
        if not isinstance(item, list) or len(item) != size or not all(isinstance(x, str) for x in item):
            raise RemoteProtocolError("bad_control", "names entry")
        if not item[0] or len(item[0]) > 63 or not 7 <= len(item[1]) <= 15:
            raise RemoteProtocolError("bad_control", "names entry too long")
        entry = (item[0].lower(), str(ipaddress.IPv4Address(item[1])))
        if with_node:
            if not item[2] or len(item[2]) > 64:
                raise RemoteProtocolError("bad_control", "names entry node")
            entry += (item[2],)
        out.append(entry)
    return out


def _names(m: dict) -> dict:
    total = _int(m, "total", 0, 0, MAX_NAMES)
    offset = _int(m, "offset", 0, 0, MAX_NAMES)
    entries = _name_entries(m.get("names", []), False)
    if offset + len(entries) > total:
        raise RemoteProtocolError("bad_control", "names page beyond total")
    return {"gen": _int(m, "gen", 0, 0, MAX_GEN), "total": total, "offset": offset, "names": entries}


def _service(raw: object, with_node: bool) -> dict:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("bad_control", "service must be a map")
    # the name and host rule (engine.proto.names) is applied per service by the receiver,
    # so one bad name refuses that service alone, not the whole message
    name = _str(raw, "name", 63)
    port = raw.get("port")
    if type(port) is not int or not 0 < port < 65536:
        raise RemoteProtocolError("bad_control", "service port")
    out = {"name": name.lower(), "addr": str(ipaddress.IPv4Address(_str(raw, "addr", 15))), "port": port,
           "host": _str(raw, "host", 253) if raw.get("host") else "", "prefix": str(raw.get("prefix") or "/")[:200]}
    if not out["prefix"].startswith("/"):
        raise RemoteProtocolError("bad_control", "service prefix must start with /")
    if with_node:
        out["node"] = _str(raw, "node", 64)
        gw = raw.get("gateway")
        out["gateway"] = _endpoints([gw])[0] if gw else None
    return out


def _services(raw: object, with_node: bool = False) -> list[dict]:
    if not isinstance(raw, list) or len(raw) > MAX_SERVICES:
        raise RemoteProtocolError("bad_control", f"services: a list of at most {MAX_SERVICES}")
    return [_service(item, with_node) for item in raw]


def _query(m: dict) -> dict:
    """By address, else by name. A name beside an address is checked too (every field
    keeps its rule, docs/protocol.md 10.1), though the address wins."""
    name = _str(m, "name", 64) if "name" in m or "addr" not in m else ""
    return {"addr": _ipv4(m, "addr")} if "addr" in m else {"name": name}


SCHEMA = {
    "register": lambda m: {"endpoints": _endpoints(m.get("endpoints", [])),
                           "services": _services(m.get("services", [])),
                           "gateway": _endpoints([m["gateway"]])[0] if m.get("gateway") else None,
                           "blocklist": _int(m, "blocklist", 0, 0, (1 << 63) - 1),
                           "relay": _bool(m, "relay", False)},
    "catalog_query": lambda m: {"offset": _int(m, "offset", 0, 0, MAX_OFFSET)},
    "catalog": lambda m: {"services": _services(m.get("services", []), True),
                          "next": _int(m, "next", 0, 0, MAX_OFFSET)},
    "lease": lambda m: {"subnet": _net(m, "subnet"), "network": _net(m, "network"),
                        "observed": _endpoints([m.get("observed")])[0], "ttl": _int(m, "ttl", 60, 1, MAX_TTL),
                        "relay": _bool(m, "relay", True), "relays": _names_list(m, "relays", MAX_RELAYS)},
    "query": _query,
    "peer": lambda m: {"name": _str(m, "name", 64), "cert": _bytes(m, "cert"), "subnet": _net(m, "subnet"),
                       "endpoints": _endpoints(m.get("endpoints", [])), "local": _endpoints(m.get("local", []))},
    "punch": lambda m: {"name": _str(m, "name", 64), "cert": _bytes(m, "cert"), "subnet": _net(m, "subnet"),
                        "endpoints": _endpoints(m.get("endpoints", [])), "local": _endpoints(m.get("local", []))},
    "error": lambda m: {"code": _str(m, "code", 32), "msg": _str(m, "msg", 400),
                        "service": _str(m, "service", 63) if m.get("service") else ""},
    "names": _names,
    "names_query": lambda m: {"version": _int(m, "version", 0, 0, MAX_GEN), "offset": _int(m, "offset", 0, 0, MAX_OFFSET)},
    "names_page": lambda m: {"version": _int(m, "version", 0, 0, MAX_GEN), "next": _int(m, "next", 0, 0, MAX_OFFSET),
                             "names": _name_entries(m.get("names", []), True)},
    "blocklist": lambda m: {"serial": _int(m, "serial", 0, 0, (1 << 63) - 1),
                            "total": _int(m, "total", 0, 0, BLOCKLIST_MAX),
                            "offset": _int(m, "offset", 0, 0, BLOCKLIST_MAX - 1), "data": _bytes(m, "data")},
}


def _bytes(msg: dict, key: str) -> bytes:
    value = msg.get(key)
    if not isinstance(value, bytes) or not value or len(value) > 1024:
        raise RemoteProtocolError("bad_control", f"{key} missing or too long")
    return value


def encode(kind: str, **fields: object) -> bytes:
    if kind not in SCHEMA:
        raise ValueError(f"unknown lighthouse message {kind}")
    body = {"t": kind, "v": VERSION}
    for k, v in fields.items():
        if k in ("endpoints", "local"):
            v = [list(e) for e in v]
        elif k in ("observed", "gateway") and v is not None:
            v = list(v)
        elif k == "names":
            v = [list(e) for e in v]
        elif k == "services":
            v = [dict(item, gateway=list(item["gateway"])) if item.get("gateway") else item for item in v]
        body[k] = v
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{kind} message of {len(data)} bytes is too large")
    return data


def peer_message(kind: str, name: str, cert: bytes, subnet: str, endpoints: list[Endpoint],
                 local: list[Endpoint]) -> bytes:
    """A peer or punch message that its receiver accepts: at most MAX_ENDPOINTS
    candidates, and the last ones dropped while the message is over MAX_MESSAGE bytes
    (a certificate near MAX_CERT_BYTES leaves room for fewer)."""
    endpoints = list(endpoints)[:MAX_ENDPOINTS]
    while True:
        kept = set(endpoints)
        try:
            return encode(kind, name=name, cert=cert, subnet=subnet, endpoints=endpoints,
                          local=[e for e in local if e in kept])
        except ValueError:
            if not endpoints:
                raise
            endpoints.pop()


def catalog_message(entries: list[dict], offset: int) -> bytes:
    """The catalog page starting at `offset`: up to CATALOG_PAGE entries, fewer when
    they would not fit in MAX_MESSAGE (long hosts and prefixes: a full page of them is
    about 5 KB); `next` is the offset of the next page, or 0 after the last one."""
    for size in range(CATALOG_PAGE, 0, -1):
        page = entries[offset:offset + size]
        nxt = offset + len(page) if offset + len(page) < len(entries) else 0
        try:
            return encode("catalog", services=page, next=nxt)
        except ValueError:
            continue
    raise ValueError("one catalog entry does not fit in a message")  # bounded by _service: cannot happen


def names_pages(gen: int, entries: list[tuple[str, str]]) -> list[bytes]:
    """A node's whole list (at most MAX_NAMES entries) as `names` messages; an empty
    list is one message with total 0."""
    entries = entries[:MAX_NAMES]
    out, offset = [], 0
    while True:
        for size in range(NAMES_PAGE, 0, -1):
            try:
                out.append(encode("names", gen=gen, total=len(entries), offset=offset,
                                  names=entries[offset:offset + size]))
                break
            except ValueError:
                continue
        offset += size
        if offset >= len(entries):
            return out


def names_page(version: int, entries: list[tuple[str, str, str]], offset: int) -> bytes:
    """The page of the network's names starting at `offset` (like catalog_message)."""
    for size in range(NAMES_PAGE, 0, -1):
        page = entries[offset:offset + size]
        nxt = offset + len(page) if offset + len(page) < len(entries) else 0
        try:
            return encode("names_page", version=version, next=nxt, names=page)
        except ValueError:
            continue
    raise ValueError("one names entry does not fit in a message")  # bounded by _name_entries: cannot happen


def decode(data: bytes) -> tuple[str, dict]:
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError("oversized_control", f"{len(data)} bytes")
    try:
        msg = msgpack.unpackb(data, raw=False, max_bin_len=2048, max_str_len=1024, max_array_len=64,
                              max_map_len=32)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError):
        raise RemoteProtocolError("bad_control", "not msgpack") from None
    # `type(...) is int`: 1.0 and True equal 1 in Python, and are not the integer 1 (10.1)
    if not isinstance(msg, dict) or type(msg.get("v")) is not int or msg["v"] != VERSION \
            or not isinstance(msg.get("t"), str) \
            or msg["t"] not in SCHEMA:
        raise RemoteProtocolError("bad_control", "unknown message")
    try:
        return msg["t"], SCHEMA[msg["t"]](msg)
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, IndexError):
        raise RemoteProtocolError("bad_control", f"malformed {msg['t']}") from None
