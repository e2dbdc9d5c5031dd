"""The engine's one UDP socket, with large buffers (the anchors lose packets at the
208 KiB default).

Listening on "::" (the default) gives one dual-stack socket: IPv6 peers and IPv4 peers
(seen as ::ffff:a.b.c.d) on the same port. On a host with IPv6 turned off it falls
back to 0.0.0.0. An IPv4 address listens on IPv4 only, an IPv6 one on IPv6 only.
"""
from __future__ import annotations

import errno
import socket

from flatnet.engine.proto import endpoint

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32


def open_udp(host: str, port: int, buffer_bytes: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if host != "::" or exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        host, sock = "0.0.0.0", socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # IPv6 is off on this host
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(host != "::"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:  # root may exceed net.core.rmem_max; others get what the sysctl allows
            sock.setsockopt(socket.SOL_SOCKET, force, buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, buffer_bytes)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on UDP {endpoint.text((host, port))}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def to_socket(sock: socket.socket, addr: endpoint.Endpoint) -> tuple:
    """The address `sendto` on `sock` takes for an endpoint: an IPv4 endpoint on a
    dual-stack socket goes as ::ffff:a.b.c.d."""
    if sock.family == socket.AF_INET6 and ":" not in addr[0]:
        return "::ffff:" + addr[0], addr[1]
    return addr


def from_socket(addr: tuple) -> endpoint.Endpoint:
    """An address `recvfrom` returned, as an endpoint (::ffff:a.b.c.d as a.b.c.d)."""
    host = addr[0]
    return (host[7:] if host.startswith("::ffff:") and "." in host else host), addr[1]


UDP_SEGMENT = 103
UDP_GRO = 104


def enable_offloads(sock: socket.socket, want: bool = True) -> tuple[bool, bool]:
    """(gso, gro): UDP segmentation offload for sends (UDP_SEGMENT, passed per message)
    and receive coalescing (UDP_GRO), each probed on this kernel."""
    if not want:
        return False, False
    gso = gro = False
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1400)
        sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 0)
        gso = True
    except OSError:
        pass
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        gro = True
    except OSError:
        pass
    return gso, gro
