"""IPv4 addresses as ints: the few operations IPAM needs, without importing ipaddress
(kept off the plugin's start-up path)."""
from __future__ import annotations

import struct

import _socket as socket  # the C module: socket.py costs ~3 ms of start-up

from flatnet.cni.errors import CniError, INVALID_CONFIG


def parse_ip(text: str, key: str) -> int:
    try:
        return struct.unpack("!I", socket.inet_aton(text))[0] if text.count(".") == 3 else _bad(key, text)
    except (OSError, TypeError):
        return _bad(key, text)


def _bad(key: str, text: object) -> int:
    raise CniError(INVALID_CONFIG, f"invalid network config: {key}: {text!r} is not an IPv4 address")


def format_ip(ip: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", ip))


class Subnet:
    __slots__ = ("network", "prefix")

    def __init__(self, network: int, prefix: int) -> None:
        self.network = network
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subnet) and (self.network, self.prefix) == (other.network, other.prefix)

    def __hash__(self) -> int:
        return hash((self.network, self.prefix))

    def __repr__(self) -> str:
        return f"Subnet({self})"

    @property
    def mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF

    @property
    def broadcast(self) -> int:
        return self.network | (~self.mask & 0xFFFFFFFF)

    @property
    def first_host(self) -> int:
        return self.network + 1

    def contains_host(self, ip: int) -> bool:
        return self.network < ip < self.broadcast

    def __str__(self) -> str:
        return f"{format_ip(self.network)}/{self.prefix}"


def parse_subnet(text: str, key: str) -> Subnet:
    if not isinstance(text, str) or text.count("/") != 1:
        raise CniError(INVALID_CONFIG, f"invalid network config: {key}: {text!r} is not a CIDR "
                       "like 10.87.1.0/24")
    addr, _, plen = text.partition("/")
    ip = parse_ip(addr, key)
    if not plen.isdigit() or not 0 <= int(plen) <= 32:
        raise CniError(INVALID_CONFIG, f"invalid network config: {key}: bad prefix length in {text!r}")
    prefix = int(plen)
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    if ip & ~mask & 0xFFFFFFFF:
        raise CniError(INVALID_CONFIG, f"invalid network config: {key}: {text!r} has host bits set; "
                       f"did you mean {format_ip(ip & mask)}/{prefix}?")
    return Subnet(ip, prefix)
