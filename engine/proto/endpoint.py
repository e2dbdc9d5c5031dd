"""Underlay endpoints: how they are written, read and which ones this node may be
told to send to (pure).

An endpoint is (address string, port). The address is an IPv4 address in dotted form
("192.0.2.1") or an IPv6 address in its compressed form ("2001:db8::1"); an
IPv4-mapped IPv6 address (::ffff:192.0.2.1, what a dual-stack socket reports for an
IPv4 sender) is always turned into the IPv4 form, so one host has one spelling.
Written out: "192.0.2.1:4787" and "[2001:db8::1]:4787".

Rules: an endpoint learned from the network (a node's own list in `register`, the
lighthouse's `peer`/`punch` lists, the source address of a packet) is used only if
another host on an ordinary network could own it. Loopback, link-local (this is where
cloud metadata services live: 169.254.169.254), multicast, broadcast and reserved
(240.0.0.0/4) addresses, and the "this network" block 0.0.0.0/8, are refused: a
certified node must not be able to make others send handshakes to 127.0.0.1:22 or to
a metadata service. IPv6 has the same rules: :: and ::1, fe80::/10, ff00::/8 are
refused, and a form that carries an IPv4 address (mapped ::ffff:0:0/96, compatible
::/96, 6to4 2002::/16, NAT64 64:ff9b::/96) is judged as that IPv4 address
(::ffff:127.0.0.1 is loopback). Private ranges (10/8, 172.16/12,
192.168/16, IPv6 unique-local fc00::/7) and documentation ranges stay allowed: LANs
use them. Endpoints an operator wrote in a config file are not checked here (the
operator chose them).
"""
from __future__ import annotations

import ipaddress

Endpoint = tuple[str, int]

MAX_TEXT = 64  # "[" + 45 characters of IPv6 text + "]:65535", with room to spare

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, scoped like link-local
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EndpointError(ValueError):
    """Not an endpoint; the message says why, for config errors and logs."""


def address(text: str) -> str:
    """The canonical spelling of an IP address (IPv4 dotted, IPv6 compressed, a mapped
    IPv4 address as IPv4); EndpointError if `text` is not a literal address. Scope ids
    (fe80::1%eth0) are not addresses a peer can be given: refused."""
    if not isinstance(text, str) or not text or len(text) > 45 or "%" in text:
        raise EndpointError(f"{text!r} is not an IP address")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(f"{text!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse(text: str, names: bool = False) -> Endpoint:
    """'192.0.2.1:4787', '[2001:db8::1]:4787' (or, with names=True, 'host.example:4787')
    as an endpoint; EndpointError with the reason otherwise. A bare IPv6 address without
    brackets is refused: its last group would read as a port."""
    if not isinstance(text, str) or len(text) > MAX_TEXT + 253:
        raise EndpointError("not HOST:PORT")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise EndpointError(f"{text!r} is not [IPV6]:PORT")
        host = address(host)  # [::ffff:192.0.2.1]:4787 is read as 192.0.2.1:4787
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise EndpointError(f"{text!r}: write an IPv6 endpoint as [ADDRESS]:PORT")
        try:
            host = address(host)
        except EndpointError:
            if not names:
                raise EndpointError(f"{host!r} is not an IP address") from None
            host = hostname(host)
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise EndpointError(f"port {port!r} is not 1-65535")
    return host, int(port)


def hostname(text: str) -> str:
    """A DNS host name (letters, digits, hyphens, dots; labels of 1-63, 253 in all),
    lower-cased; EndpointError otherwise."""
    name = text.lower().rstrip(".") if isinstance(text, str) else ""
    labels = name.split(".")
    if (not name or len(name) > 253 or not name.isascii() or name.replace(".", "").isdigit()
            or any(not l or len(l) > 63 or l[0] == "-" or l[-1] == "-"
                   or not all(c.isalnum() or c == "-" for c in l) for l in labels)):
        raise EndpointError(f"{text!r} is neither an IP address nor a host name")
    return name


def is_ip(host: str) -> bool:
    try:
        address(host)
        return True
    except EndpointError:
        return False


def text(addr: Endpoint) -> str:
    """How an endpoint is written: 192.0.2.1:4787, [2001:db8::1]:4787."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def refused(addr: Endpoint) -> str | None:
    """Why `addr` must not be used as an endpoint, or None when it may."""
    try:
        ok = isinstance(addr[0], str) and len(addr[0]) <= 45 and "%" not in addr[0]  # no scope ids (fe80::1%eth0)
        ip = ipaddress.ip_address(addr[0]) if ok else None
    except ValueError:
        ip = None
    if ip is None:
        return "not an IP address"
    if not isinstance(addr[1], int) or isinstance(addr[1], bool) or not 0 < addr[1] < 65536:
        return "port out of range"
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and int(ip) >> 32 == 0 and int(ip) > 1:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # ::a.b.c.d, IPv4-compatible (deprecated)
        if carried is None and ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            why = refused((str(carried), addr[1]))
            return f"{why} (IPv4 inside IPv6)" if why else None
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_loopback:
            return "loopback"
        if ip.is_link_local or ip in _SITE_LOCAL:
            return "link-local"
        if ip.is_multicast:
            return "multicast"
        return None
    if ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:  # 240.0.0.0/4, with the broadcast address 255.255.255.255
        return "broadcast or reserved"
    return None


def usable(endpoints: list[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
    """(the endpoints that may be used, in order; the refused ones)."""
    kept, dropped = [], []
    for e in endpoints:
        (dropped if refused(e) else kept).append(e)
    return kept, dropped
