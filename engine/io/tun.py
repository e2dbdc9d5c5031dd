"""The TUN device: open (or re-attach to) a persistent layer-3 TUN without packet info.

Persistent, so that a restarted engine finds the same device with its routes, and
packets for other hosts are dropped (not misrouted) while the engine is down.
"""
from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str, persist: bool = True) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"cannot open TUN {name}: {exc.strerror} "
                      "(is another engine running, or is the name used by a non-TUN device?)") from None
    return fd


def delete_tun(name: str) -> None:
    """Remove a persistent TUN (teardown)."""
    fd = open_tun(name, persist=False)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)
