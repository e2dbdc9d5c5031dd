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
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02


def open_tun(name: str, persist: bool = True, offloads: bool = True) -> tuple[int, bool]:
    """(fd, vnet): with offloads the TUN hands over 64 KiB TCP super-packets (TSO) behind
    a virtio_net_hdr; where the kernel refuses, plain packets (probed, never assumed)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offloads else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        if offloads:
            return open_tun(name, persist, offloads=False)
        raise OSError(exc.errno, f"cannot open TUN {name}: {exc.strerror} "
                      "(is another engine running, or is the name used by a non-TUN device?)") from None
    vnet = False
    if offloads:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            vnet = True
        except OSError:
            os.close(fd)
            return open_tun(name, persist, offloads=False)
    return fd, vnet


def delete_tun(name: str) -> None:
    """Remove a persistent TUN (teardown)."""
    fd, _ = open_tun(name, persist=False, offloads=False)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)
