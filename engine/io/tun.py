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
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40  # the kernel takes USO only for both families at once


def open_tun(name: str, persist: bool = True, offloads: bool = True) -> tuple[int, bool, bool]:
    """(fd, vnet, uso): with offloads the TUN hands over 64 KiB TCP (and, on kernels
    with USO, UDP) super-packets behind a virtio_net_hdr and takes them back the same
    way; where the kernel refuses, plain packets (probed, never assumed)."""
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
    if not offloads:
        return fd, False, False
    # TSO6/USO6 ride along because the kernel pairs the families; the overlay is IPv4
    # and IPv6 is off on the TUN, so no IPv6 super-packet comes (one would be dropped)
    uso_flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
    for flags, uso in ((uso_flags, True), (TUN_F_CSUM | TUN_F_TSO4, False)):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return fd, True, uso
        except OSError:
            continue
    os.close(fd)
    return open_tun(name, persist, offloads=False)
