"""Which underlay endpoints this node may be told to send to (pure).

Rules: an endpoint learned from the network (a node's own list in `register`, the
lighthouse's `peer`/`punch` lists, the source address of a packet) is used only if
another host on an ordinary network could own it. Loopback, link-local (this is where
cloud metadata services live: 169.254.169.254), multicast, broadcast and reserved
(240.0.0.0/4) addresses, and the "this network" block 0.0.0.0/8, are refused: a
certified node must not be able to make others send handshakes to 127.0.0.1:22 or to
a metadata service. Private ranges (10/8, 172.16/12, 192.168/16) and documentation
ranges stay allowed: LANs use them. Endpoints an operator wrote in a config file are
not checked here (the operator chose them).
"""
from __future__ import annotations

import ipaddress

Endpoint = tuple[str, int]

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def refused(addr: Endpoint) -> str | None:
    """Why `addr` must not be used as an endpoint, or None when it may."""
    try:
        ip = ipaddress.IPv4Address(addr[0])
    except ValueError:
        return "not an IPv4 address"
    if not isinstance(addr[1], int) or not 0 < addr[1] < 65536:
        return "port out of range"
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
