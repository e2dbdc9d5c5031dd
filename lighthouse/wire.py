"""Lighthouse control messages: msgpack maps carried in type-4 packets (encrypted and
authenticated by the Noise session between the node and the lighthouse).

    register {endpoints: [[ip, port]...], services?, gateway?, blocklist?}  node -> lighthouse
             (services: what the node publishes; gateway: its HTTP gateway on the LAN;
              blocklist: the serial of the blocklist the node enforces, 0 for none)
    catalog_query {offset}                              node -> lighthouse
    catalog  {services: [...], next}                    lighthouse -> node (a page of
             every online node's services; next = offset of the next page, or 0)
    lease    {subnet, network, observed: [ip, port], ttl} lighthouse -> node
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

Every message is a map with "t" (its type) and "v" (1). decode() checks types and
sizes and raises RemoteProtocolError for anything else: a malformed message is
dropped and counted, never trusted.
"""
from __future__ import annotations

import ipaddress

import msgpack

from engine.proto.errors import RemoteProtocolError
from engine.proto.revocation import MAX_BYTES as BLOCKLIST_MAX

VERSION = 1
MAX_MESSAGE = 1400
MAX_ENDPOINTS = 8

Endpoint = tuple[str, int]


def _endpoints(raw: object) -> list[Endpoint]:
    if not isinstance(raw, list) or len(raw) > MAX_ENDPOINTS:
        raise RemoteProtocolError("bad_control", "endpoints must be a short list")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int)
                and 0 < item[1] < 65536):
            raise RemoteProtocolError("bad_control", "bad endpoint")
        try:
            ipaddress.IPv4Address(item[0])
        except ValueError:
            raise RemoteProtocolError("bad_control", "bad endpoint address") from None
        out.append((item[0], item[1]))
    return out


def _str(msg: dict, key: str, limit: int = 253) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RemoteProtocolError("bad_control", f"{key} missing or too long")
    return value


def _net(msg: dict, key: str) -> str:
    value = _str(msg, key, 18)
    try:
        ipaddress.IPv4Network(value)
    except ValueError:
        raise RemoteProtocolError("bad_control", f"{key} is not a CIDR") from None
    return value


MAX_SERVICES = 32
CATALOG_PAGE = 8


def _service(raw: object, with_node: bool) -> dict:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("bad_control", "service must be a map")
    # the name and host rule (engine.proto.names) is applied per service by the receiver,
    # so one bad name refuses that service alone, not the whole message
    name = _str(raw, "name", 63)
    port = raw.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
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


SCHEMA = {
    "register": lambda m: {"endpoints": _endpoints(m.get("endpoints", [])),
                           "services": _services(m.get("services", [])),
                           "gateway": _endpoints([m["gateway"]])[0] if m.get("gateway") else None,
                           "blocklist": _uint(m, "blocklist", 1 << 63)},
    "catalog_query": lambda m: {"offset": int(m.get("offset", 0))},
    "catalog": lambda m: {"services": _services(m.get("services", []), True), "next": int(m.get("next", 0))},
    "lease": lambda m: {"subnet": _net(m, "subnet"), "network": _net(m, "network"),
                        "observed": _endpoints([m.get("observed")])[0], "ttl": int(m.get("ttl", 60))},
    "query": lambda m: ({"addr": str(ipaddress.IPv4Address(_str(m, "addr", 15)))} if "addr" in m
                        else {"name": _str(m, "name", 64)}),
    "peer": lambda m: {"name": _str(m, "name", 64), "cert": _bytes(m, "cert"), "subnet": _net(m, "subnet"),
                       "endpoints": _endpoints(m.get("endpoints", [])), "local": _endpoints(m.get("local", []))},
    "punch": lambda m: {"name": _str(m, "name", 64), "cert": _bytes(m, "cert"), "subnet": _net(m, "subnet"),
                        "endpoints": _endpoints(m.get("endpoints", [])), "local": _endpoints(m.get("local", []))},
    "error": lambda m: {"code": _str(m, "code", 32), "msg": _str(m, "msg", 400),
                        "service": _str(m, "service", 63) if m.get("service") else ""},
    "blocklist": lambda m: {"serial": _uint(m, "serial", 1 << 63), "total": _uint(m, "total", BLOCKLIST_MAX + 1),
                            "offset": _uint(m, "offset", BLOCKLIST_MAX), "data": _bytes(m, "data")},
}


def _uint(msg: dict, key: str, below: int) -> int:
    """An optional non-negative integer under `below` (absent: 0)."""
    value = msg.get(key, 0)
    if type(value) is not int or not 0 <= value < below:
        raise RemoteProtocolError("bad_control", f"{key} must be an integer 0..{below - 1}")
    return value


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
        elif k == "services":
            v = [dict(item, gateway=list(item["gateway"])) if item.get("gateway") else item for item in v]
        body[k] = v
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{kind} message of {len(data)} bytes is too large")
    return data


def decode(data: bytes) -> tuple[str, dict]:
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError("oversized_control", f"{len(data)} bytes")
    try:
        msg = msgpack.unpackb(data, raw=False, max_bin_len=2048, max_str_len=1024, max_array_len=64,
                              max_map_len=32)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError):
        raise RemoteProtocolError("bad_control", "not msgpack") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION or not isinstance(msg.get("t"), str) \
            or msg["t"] not in SCHEMA:
        raise RemoteProtocolError("bad_control", "unknown message")
    try:
        return msg["t"], SCHEMA[msg["t"]](msg)
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, IndexError):
        raise RemoteProtocolError("bad_control", f"malformed {msg['t']}") from None
