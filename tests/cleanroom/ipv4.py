"""Just enough IPv4/ICMP to put a ping inside a data packet (docs/protocol.md 6.2)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ICMP, UDP = 1, 17


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def packet(src: str, dst: str, proto: int, payload: bytes, ident: int = 0, ttl: int = 64) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, ttl, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def icmp_echo(src: str, dst: str, ident: int, seq: int, data: bytes, reply: bool = False) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return packet(src, dst, ICMP, body, ident=seq)


@dataclass(frozen=True)
class Parsed:
    src: str
    dst: str
    proto: int
    payload: bytes


def parse(pkt: bytes) -> Parsed | None:
    """None for anything that is not a whole IPv4 packet with a valid header checksum."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 15) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    if ihl < 20 or total > len(pkt) or total < ihl or checksum(pkt[:ihl]) != 0:
        return None
    return Parsed(str(ipaddress.IPv4Address(pkt[12:16])), str(ipaddress.IPv4Address(pkt[16:20])), pkt[9],
                  pkt[ihl:total])


def echo_fields(p: Parsed) -> tuple[int, int, int, bytes] | None:
    """(icmp type, ident, seq, data) of a checksummed ICMP echo request or reply."""
    if p.proto != ICMP or len(p.payload) < 8 or checksum(p.payload) != 0 or p.payload[0] not in (0, 8):
        return None
    t, _c, _s, ident, seq = struct.unpack_from("!BBHHH", p.payload)
    return t, ident, seq, p.payload[8:]


def udp(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    # checksum 0: "no checksum", allowed for UDP over IPv4 (RFC 768)
    return packet(src, dst, UDP, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def udp_fields(p: Parsed) -> tuple[int, int, bytes] | None:
    """(source port, destination port, data) of a UDP packet."""
    if p.proto != UDP or len(p.payload) < 8:
        return None
    sport, dport, length, _c = struct.unpack_from("!HHHH", p.payload)
    if not 8 <= length <= len(p.payload):
        return None
    return sport, dport, p.payload[8:length]
