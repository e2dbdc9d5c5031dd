"""Property tests of the TUN offload code (engine/crypto/csrc/offload.c, inside.c)
against plain Python references: the Internet checksum at every length and start
alignment, and TSO/USO super-packets of random shapes cut, sealed and sent by the
inside thread (segments built in the TUN read buffer, sealed out of place for
AES-256-GCM) compared byte for byte with a reference segmenter."""
import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.datapath import DataPath, aes_gcm_available
from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA
from tests.harness.wire import ones_sum, open_packet
from tests.unit.engine.test_datapath import LEASE, NET

MTU = 1420
KEY = os.urandom(32)




def ref_csum(data: bytes) -> bytes:
    return ((~ones_sum(data)) & 0xFFFF).to_bytes(2, "big")


# ---- checksum: csum_complete over any start (odd ones: unaligned) and any length
@settings(max_examples=400, deadline=None)
@given(data=st.data(), total=st.integers(2, 3000))
def test_checksum_completion_matches_rfc1071_at_any_start_and_length(data, total):
    start = data.draw(st.integers(0, total - 2), label="csum_start")
    offset = data.draw(st.integers(0, total - start - 2), label="csum_offset")
    pkt = bytearray(data.draw(st.binary(min_size=total, max_size=total), label="bytes"))
    if data.draw(st.booleans(), label="all ones"):
        pkt = bytearray(b"\xff" * total)  # sums with many carries
    vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, start, offset)  # NEEDS_CSUM, no GSO
    out = ffi.new("uint8_t[]", 4000)
    lens = ffi.new("uint32_t[]", 1)
    assert lib.fn_tso_segment(bytes(vnet + pkt), 10 + total, out, 4000, lens, 1) == 1
    got = bytes(ffi.buffer(out, lens[0]))
    want = bytearray(pkt)
    want[start + offset:start + offset + 2] = ref_csum(bytes(pkt[start:]))
    assert got == bytes(want)


# ---- TSO/USO through the inside thread, against a reference segmenter
def ref_segments(pkt: bytes, mss: int, udp: bool) -> list[bytes]:
    """What a super-packet becomes (the segments longer than the MTU left out)."""
    ihl = (pkt[0] & 15) * 4
    hl = ihl + (8 if udp else (pkt[ihl + 12] >> 4) * 4)
    payload = pkt[hl:]
    count = max(1, -(-len(payload) // mss))
    out = []
    for i in range(count):
        part = payload[i * mss:(i + 1) * mss]
        if hl + len(part) > MTU:
            continue
        ip = bytearray(pkt[:ihl])
        ip[2:4] = (hl + len(part)).to_bytes(2, "big")
        ip[4:6] = ((int.from_bytes(pkt[4:6], "big") + i) & 0xFFFF).to_bytes(2, "big")
        ip[10:12] = b"\0\0"
        ip[10:12] = ref_csum(bytes(ip))
        l4 = bytearray(pkt[ihl:hl])
        if udp:
            l4[4:6] = (8 + len(part)).to_bytes(2, "big")
            at = 6
        else:
            l4[4:8] = ((int.from_bytes(pkt[ihl + 4:ihl + 8], "big") + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
            if i + 1 < count:
                l4[13] &= ~0x09 & 0xFF  # FIN, PSH: last only
            if i > 0:
                l4[13] &= ~0x80 & 0xFF  # CWR: first only
            at = 16
        l4[at:at + 2] = b"\0\0"
        body = bytes(l4) + part
        pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 17 if udp else 6, len(body))
        c = ref_csum(pseudo + body)
        if udp and c == b"\0\0":
            c = b"\xff\xff"
        l4[at:at + 2] = c
        out.append(bytes(ip) + bytes(l4) + part)
    return out


@st.composite
def super_packets(draw):
    udp = draw(st.booleans())
    ip_opts = draw(st.integers(0, 10)) * 4
    tcp_opts = 0 if udp else draw(st.integers(0, 10)) * 4
    hl = 20 + ip_opts + (8 if udp else 20 + tcp_opts)
    mss = draw(st.one_of(st.integers(1, 200), st.integers(200, MTU + 100), st.just(MTU - hl), st.just(65535)))
    segs = draw(st.integers(0, 40))
    tail = draw(st.integers(0, mss - 1)) if segs else draw(st.integers(0, min(mss, 65535 - hl)))
    payload_len = min(segs * mss + tail if segs else tail, 65535 - hl)
    payload = draw(st.binary(min_size=payload_len, max_size=payload_len))
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | (5 + ip_opts // 4), draw(st.integers(0, 255)),
                     draw(st.integers(0, 0xFFFF)),  # total length: the kernel's, not trusted
                     draw(st.integers(0, 0xFFFF)), 0x4000, 64, 17 if udp else 6,
                     draw(st.integers(0, 0xFFFF)), src, dst) + draw(st.binary(min_size=ip_opts, max_size=ip_opts))
    if udp:
        l4 = struct.pack("!HHHH", 5000, 53, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    else:
        l4 = struct.pack("!HHIIBBHHH", 40000, 80, draw(st.integers(0, 2**32 - 1)), 7,
                         (5 + tcp_opts // 4) << 4, draw(st.integers(0, 255)), 65535,
                         draw(st.integers(0, 0xFFFF)), 0) + draw(st.binary(min_size=tcp_opts, max_size=tcp_opts))
    gso_type = 5 if udp else draw(st.sampled_from([1, 0x81]))  # TCPv4 (with ECN), UDP_L4
    # hdr_len, csum_start and csum_offset may lie: segmentation must not use them
    vnet = struct.pack("<BBHHHH", draw(st.sampled_from([0, 1])), gso_type, draw(st.integers(0, 0xFFFF)), mss,
                       draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    pkt = ip + l4 + payload
    return vnet, pkt, mss, udp


def run_inside(cipher: str, packets: list[bytes], want: int) -> tuple[list[bytes], dict]:
    dp = DataPath(NET, MTU)
    dp.set_local(LEASE)
    dp.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    tun_fd, tun_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("127.0.0.1", 0))
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        tun_in.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        tun_fd.setblocking(False)
        dp.set_offloads(True, False, False)
        dp.set_endpoint(1, peer.getsockname())
        dp.set_tx_key(1, KEY, 0x5555, AEAD_AES if cipher == "aes" else AEAD_CHACHA)
        for v in packets:
            tun_in.send(v)
        events = ffi.new("int32_t[]", 8)
        lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
        got = []
        for _ in range(want):
            raw = peer.recv(4096)
            if cipher == "aes":
                from tests.harness.wire import open_aes
                got.append(open_aes(KEY, raw))
            else:
                got.append(open_packet(KEY, raw)[3])
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(4096)  # nothing more was sent
        return got, dp.drops()
    finally:
        for s in (tun_fd, tun_in, udp, peer):
            s.close()


CIPHERS = ["chacha", "aes"] if aes_gcm_available() else ["chacha"]


@pytest.mark.parametrize("cipher", CIPHERS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shape=super_packets())
def test_super_packets_of_any_shape_are_sent_as_the_reference_cuts_them(cipher, shape):
    vnet, pkt, mss, udp = shape
    want = ref_segments(pkt, mss, udp)
    got, drops = run_inside(cipher, [vnet + pkt], len(want))
    assert got == want
    ihl = (pkt[0] & 15) * 4
    hl = ihl + (8 if udp else (pkt[ihl + 12] >> 4) * 4)
    count = max(1, -(-(len(pkt) - hl) // mss))
    assert drops["too_big"] == count - len(want)
    assert sum(drops.values()) == drops["too_big"]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_two_super_packets_in_one_read_round_do_not_mix(cipher):
    """The second read reuses the buffer the first was cut in: each is cut from its own
    bytes, and the segments of the first were sealed before the second was read."""
    a_payload, b_payload = os.urandom(9000), os.urandom(7000)

    def make(payload, seq, ipid):
        src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
        tcp = struct.pack("!HHIIBBHHH", 40000, 80, seq, 7, 5 << 4, 0x18, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), ipid, 0x4000, 64, 6, 0, src, dst)
        return ip + tcp + payload

    a, b = make(a_payload, 1, 100), make(b_payload, 50_000, 200)
    vnet = struct.pack("<BBHHHH", 1, 1, 40, 1000, 20, 16)
    want = ref_segments(a, 1000, False) + ref_segments(b, 1000, False)
    got, drops = run_inside(cipher, [vnet + a, vnet + b], len(want))
    assert got == want and sum(drops.values()) == 0


def _tcp4(payload: bytes, ihl: int = 5, thl: int = 5, proto: int = 6) -> bytes:
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 1, 0, 64, proto, 0, src, dst) + bytes(max(0, ihl - 5) * 4)
    return ip + struct.pack("!HHIIBBHHH", 1, 2, 3, 4, thl << 4, 0x18, 5, 0, 0) + payload


@pytest.mark.parametrize("vnet_type,mss,pkt", [
    (1, 0, _tcp4(b"x" * 3000)),                       # gso_size 0
    (4, 1000, _tcp4(b"x" * 3000)),                    # TCPv6 GSO: the overlay is IPv4
    (1, 1000, _tcp4(b"x" * 3000, proto=17)),          # TCPv4 GSO over a UDP header
    (5, 1000, _tcp4(b"x" * 3000)),                    # UDP GSO over a TCP header
    (1, 1000, _tcp4(b"", thl=4)),                     # TCP data offset below 20 bytes
    (1, 1000, _tcp4(b"", thl=15)[:70]),               # TCP options past the end
    (1, 1000, _tcp4(b"", ihl=15)[:60]),               # IPv4 options, nothing after them
    (1, 1000, b"\x60" + bytes(39) + b"x" * 3000),     # an IPv6 packet
    (1, 1000, _tcp4(b"")[:27]),                       # shorter than any header
])
def test_super_packets_with_lying_headers_are_dropped(vnet_type, mss, pkt):
    vnet = struct.pack("<BBHHHH", 1, vnet_type, 40, mss, 20, 16)
    got, drops = run_inside("chacha", [vnet + pkt], 0)
    assert got == [] and drops["not_ipv4"] == 1 and sum(drops.values()) == 1
