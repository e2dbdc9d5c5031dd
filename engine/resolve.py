"""Host names of lighthouses into addresses (blocking: call it from an executor).

A lighthouse endpoint in the config may be HOST:PORT. The name is looked up in the
optional hosts file first (`[resolve] hosts`, the /etc/hosts format: an address, then
names; '#' starts a comment), then by the system resolver (getaddrinfo: /etc/hosts,
DNS, in the order the system prefers, IPv6 first where it has a route). The engine
looks names up at start and again while a lighthouse does not answer (engine.driver).
Names come from the operator's config, so the addresses they give are not held to
the endpoint policy (engine.proto.endpoint); the handshake still proves who answers.
"""
from __future__ import annotations

import socket

from flatnet.engine.proto import endpoint

MAX_HOSTS_FILE = 1 << 20   # bytes read from a hosts file
MAX_ADDRESSES = 8          # per name, as on the wire (engine.proto.control.MAX_ENDPOINTS)


class ResolveError(Exception):
    pass


def read_hosts(text: str) -> dict[str, list[str]]:
    """name -> its addresses, in file order. Lines that are not ADDRESS NAME... are skipped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = endpoint.address(fields[0])
        except endpoint.EndpointError:
            continue
        for name in fields[1:]:
            try:
                out.setdefault(endpoint.hostname(name), []).append(addr)
            except endpoint.EndpointError:
                continue
    return out


def lookup(name: str, hosts_file: str = "", ipv6: bool = True) -> list[str]:
    """The addresses of `name` (IPv6 ones only if ipv6: the socket can reach them);
    ResolveError with the reason if there are none."""
    if hosts_file:
        try:
            with open(hosts_file, encoding="utf-8", errors="replace") as f:
                found = read_hosts(f.read(MAX_HOSTS_FILE)).get(name, [])
        except OSError as exc:
            raise ResolveError(f"cannot read hosts file {hosts_file}: {exc.strerror}") from None
        found = [a for a in found if ipv6 or ":" not in a]
        if found:
            return list(dict.fromkeys(found))[:MAX_ADDRESSES]
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveError(f"cannot resolve {name}: {exc}") from None
    found = []
    for family, _, _, _, sa in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and "%" not in sa[0]:
            found.append(endpoint.address(sa[0]))
    if not found:
        raise ResolveError(f"{name} has no usable address")
    return list(dict.fromkeys(found))[:MAX_ADDRESSES]


def endpoints(configured: tuple[endpoint.Endpoint, ...], hosts_file: str = "", ipv6: bool = True
              ) -> tuple[list[endpoint.Endpoint], list[str]]:
    """(the configured endpoints with every host name replaced by its addresses, in
    order; an error message per name that did not resolve)."""
    out, errors = [], []
    for host, port in configured:
        if endpoint.is_ip(host):
            if ipv6 or ":" not in host:
                out.append((host, port))
            continue
        try:
            out.extend((a, port) for a in lookup(host, hosts_file, ipv6))
        except ResolveError as exc:
            errors.append(str(exc))
    return list(dict.fromkeys(out))[:MAX_ADDRESSES], errors


def has_names(configured: tuple[endpoint.Endpoint, ...]) -> bool:
    return any(not endpoint.is_ip(host) for host, _ in configured)
