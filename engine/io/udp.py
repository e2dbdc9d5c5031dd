"""The engine's one UDP socket, with large buffers (the anchors lose packets at the
208 KiB default)."""
from __future__ import annotations

import socket

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32


def open_udp(host: str, port: int, buffer_bytes: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
        raise OSError(exc.errno, f"cannot listen on UDP {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


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
