"""A lean rtnetlink client: only the link, address and route calls the plugin makes.

Why not pyroute2: importing it costs ~0.25-0.3 s on this kind of machine, more than
ten times a whole ADD of the reference Go plugin, and Podman runs this plugin on
every container start. This module imports only socket/struct/os (docs/cni.md has
the measurements). The engine, a long-lived daemon, uses pyroute2.
"""
from __future__ import annotations

import os
import struct

import _socket as socket  # the C module: socket.py imports enum & selectors (~3 ms)

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
F_REQUEST, F_ACK, F_DUMP = 0x1, 0x4, 0x300
F_EXCL, F_CREATE = 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_IFALIAS = 20
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused a request; errno is the kernel's."""


class Link:
    __slots__ = ("index", "name", "kind", "flags", "mtu", "master", "mac", "alias")

    def __init__(self, index: int, name: str, kind: str, flags: int, mtu: int, master: int,
                 mac: str, alias: str = "") -> None:
        self.index, self.name, self.kind, self.flags = index, name, kind, flags
        self.mtu, self.master, self.mac, self.alias = mtu, master, mac, alias

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def ip_bytes(ip: int) -> bytes:
    return struct.pack("!I", ip)


class Netlink:
    """One NETLINK_ROUTE socket, bound in whatever network namespace created it."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), msg_type, F_REQUEST | flags, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, rtype, _, rseq, _ = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size:offset + length]
                offset += (length + 3) & ~3
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return replies
                if rtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return replies
                replies.append((rtype, payload))
                if not flags & F_DUMP and not flags & F_ACK:
                    return replies

    # ---- links
    def _parse_link(self, payload: bytes) -> Link:
        _, _, index, flags, _ = _IFINFO.unpack_from(payload)
        attrs = parse_attrs(payload, _IFINFO.size)
        kind = ""
        if IFLA_LINKINFO in attrs:
            info = parse_attrs(attrs[IFLA_LINKINFO])
            kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        mac = format_mac(attrs.get(IFLA_ADDRESS, b""))
        mtu = struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0
        master = struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
        name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        alias = attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace")
        return Link(index, name, kind, flags, mtu, master, mac, alias)

    def link_get(self, name: str) -> Link | None:
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))
        except NetlinkError as exc:
            if exc.errno in (19, 2):  # ENODEV, ENOENT
                return None
            raise
        return self._parse_link(replies[0][1]) if replies else None

    def links(self) -> list[Link]:
        return [self._parse_link(payload)
                for _, payload in self.request(RTM_GETLINK, F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0))]

    def link_add_bridge(self, name: str, mtu: int, mac: bytes) -> None:
        body = (_IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_MTU, mtu)
                + attr(IFLA_ADDRESS, mac) + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
        self.request(RTM_NEWLINK, F_ACK | F_CREATE | F_EXCL, body)

    def link_add_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int) -> None:
        peer_body = (_IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer)
                     + attr_u32(IFLA_MTU, mtu) + attr_u32(IFLA_NET_NS_FD, peer_netns_fd))
        body = (_IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_MTU, mtu)
                + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                         nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_body))))
        self.request(RTM_NEWLINK, F_ACK | F_CREATE | F_EXCL, body)

    def link_set(self, index: int, *, up: bool | None = None, mtu: int | None = None,
                 master: int | None = None, mac: bytes | None = None, alias: str | None = None) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if mtu is not None:
            attrs += attr_u32(IFLA_MTU, mtu)
        if mac is not None:
            attrs += attr(IFLA_ADDRESS, mac)
        if master is not None:
            attrs += attr_u32(IFLA_MASTER, master)
        if alias is not None:  # IFLA_IFALIAS: up to 255 bytes; the kernel ignores it at creation
            attrs += attr_str(IFLA_IFALIAS, alias)
        self.request(RTM_NEWLINK, F_ACK, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def link_del(self, index: int) -> None:
        self.request(RTM_DELLINK, F_ACK, _IFINFO.pack(0, 0, index, 0, 0))

    # ---- addresses
    def addr_add(self, index: int, ip: int, prefix: int, broadcast: int | None = None) -> None:
        body = (_IFADDR.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index)
                + attr(IFA_LOCAL, ip_bytes(ip)) + attr(IFA_ADDRESS, ip_bytes(ip)))
        if broadcast is not None:
            body += attr(IFA_BROADCAST, ip_bytes(broadcast))
        self.request(RTM_NEWADDR, F_ACK | F_CREATE | F_EXCL, body)

    def addresses(self, index: int | None = None) -> list[tuple[int, int, int]]:
        """(ifindex, ip, prefix) of every IPv4 address, or of one link's."""
        out = []
        for _, payload in self.request(RTM_GETADDR, F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
            _, prefix, _, _, ifindex = _IFADDR.unpack_from(payload)
            attrs = parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw and (index is None or ifindex == index):
                out.append((ifindex, struct.unpack("!I", raw)[0], prefix))
        return out

    # ---- routes
    def route_add(self, dst: int, prefix: int, *, gateway: int | None = None,
                  oif: int | None = None, metric: int | None = None) -> None:
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        body = _RTMSG.pack(socket.AF_INET, prefix, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if prefix:
            body += attr(RTA_DST, ip_bytes(dst))
        if gateway is not None:
            body += attr(RTA_GATEWAY, ip_bytes(gateway))
        if oif is not None:
            body += attr_u32(RTA_OIF, oif)
        if metric is not None:
            body += attr_u32(RTA_PRIORITY, metric)
        self.request(RTM_NEWROUTE, F_ACK | F_CREATE | F_EXCL, body)

    def routes(self) -> list[tuple[int, int, int | None, int]]:
        """(dst, prefix, gateway, oif) of the main table's IPv4 routes."""
        out = []
        for _, payload in self.request(RTM_GETROUTE, F_DUMP, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            _, prefix, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
            attrs = parse_attrs(payload, _RTMSG.size)
            table_id = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
            if table_id != RT_TABLE_MAIN:
                continue
            dst = struct.unpack("!I", attrs[RTA_DST])[0] if RTA_DST in attrs else 0
            gw = struct.unpack("!I", attrs[RTA_GATEWAY])[0] if RTA_GATEWAY in attrs else None
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append((dst, prefix, gw, oif))
        return out
