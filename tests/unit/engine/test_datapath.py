"""The C data path, driven directly: replay window edges, routing and sealing (inside),
opening, cryptokey routing and counting (outside), and 100k malformed inputs."""
import errno
import ipaddress
import os
import random
import socket
from typing import NamedTuple

import pytest

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.datapath import CTRL_RAW, DataPath
from tests.harness.wire import handshake, ipv4_udp, ones_sum, open_packet, seal

NET = ipaddress.IPv4Network("10.87.0.0/16")
KEY_RX, KEY_TX = os.urandom(32), os.urandom(32)
RX_INDEX = 0xABC00001  # low 12 bits: slot 1
STATIC_PUBLIC = os.urandom(32)  # "our" static public key: handshakes need its mac1


# ---- replay window (RFC 6479), at least 2048 counters
def window():
    return ffi.new("fn_replay *")


def test_replay_in_order_and_duplicates():
    w = window()
    assert all(lib.fn_replay_accept(w, c) for c in range(100))
    assert not lib.fn_replay_accept(w, 50)
    assert not lib.fn_replay_accept(w, 99)


def test_replay_out_of_order_inside_the_window():
    w = window()
    assert lib.fn_replay_accept(w, 5000)
    assert lib.fn_replay_accept(w, 5000 - 2048)   # 2048 back: still inside
    assert lib.fn_replay_accept(w, 4999)
    assert not lib.fn_replay_accept(w, 4999)


def test_replay_too_old_is_rejected():
    w = window()
    assert lib.fn_replay_accept(w, 10_000)
    assert not lib.fn_replay_accept(w, 10_000 - 4033)  # beyond the 4032-counter window


def test_replay_big_jump_clears_the_ring():
    w = window()
    for c in range(64):
        lib.fn_replay_accept(w, c)
    assert lib.fn_replay_accept(w, 1_000_000)
    assert lib.fn_replay_accept(w, 1_000_000 - 1)
    assert not lib.fn_replay_accept(w, 10)


def test_replay_limit_of_messages():
    assert not lib.fn_replay_accept(window(), 1 << 60)


# ---- pipelines
LEASE = ipaddress.IPv4Network("10.87.1.0/24")  # this host's


@pytest.fixture
def dp():
    d = DataPath(NET, 1420)
    d.set_local(LEASE)
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.add_rx(RX_INDEX, 1, KEY_RX)
    d.set_identity(STATIC_PUBLIC)
    return d


def outside(dp, packets, max_ctrl=64):
    udp_in, udp_fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_fd, tun_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (udp_in, udp_fd, tun_fd, tun_out):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tun_out.setblocking(False)
    tun_fd.setblocking(False)  # as the real TUN: the outside thread may read it (inside_try)
    ctrl = ffi.new("fn_ctrl[]", max_ctrl)
    delivered, controls = [], []
    try:
        for i in range(0, len(packets), 256):
            for p in packets[i:i + 256]:
                udp_in.send(p)
            while True:
                n = lib.fn_outside(dp.ctx, udp_fd.fileno(), tun_fd.fileno(), 0, ctrl, max_ctrl)
                controls += [(ctrl[j].kind, ffi.buffer(ctrl[j].data, ctrl[j].len)[:]) for j in range(n)]
                if n == 0:
                    break
            while True:
                try:
                    delivered.append(tun_out.recv(65536))
                except BlockingIOError:
                    break
    finally:
        for s in (udp_in, udp_fd, tun_fd, tun_out):
            s.close()
    return delivered, controls


def test_outside_opens_checks_source_and_counts(dp):
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"hello")
    spoofed = ipv4_udp("10.87.3.5", "10.87.1.9", b"evil")
    packets = [seal(KEY_RX, RX_INDEX, 0, good), seal(KEY_RX, RX_INDEX, 0, good),   # replay
               seal(KEY_RX, RX_INDEX, 1, spoofed), seal(os.urandom(32), RX_INDEX, 2, good),
               seal(KEY_RX, RX_INDEX, 3, b""),   # keepalive
               seal(KEY_RX, RX_INDEX + 4096, 4, good)]   # right slot, wrong index
    delivered, _ = outside(dp, packets)
    assert delivered == [good]
    drops = dp.drops()
    assert drops["replay"] == 1 and drops["source_not_allowed"] == 1
    assert drops["auth_failed"] == 1 and drops["unknown_index"] == 1
    st = dp.stats(1)
    assert st.rx_packets == 1 and st.rx_bytes == len(good) and st.last_rx is not None


def test_handshake_and_control_packets_go_up_to_python(dp):
    _, controls = outside(dp, [handshake(1, 7, bytes(100), STATIC_PUBLIC), handshake(2, 8, bytes(50), STATIC_PUBLIC),
                               seal(KEY_RX, RX_INDEX, 0, b"ctl", kind=4)])
    kinds = [k for k, _ in controls]
    assert kinds.count(CTRL_RAW) == 2
    assert (lib.FN_CTRL_DECRYPTED, b"ctl") in controls


class InsideIO(NamedTuple):
    tun_fd: socket.socket  # the engine's end of the "TUN"
    tun_in: socket.socket  # what the kernel would write into it
    udp: socket.socket     # the engine's UDP socket
    peer: socket.socket    # the other host


@pytest.fixture
def io():
    tun_fd, tun_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    tun_fd.setblocking(False)
    yield InsideIO(tun_fd, tun_in, udp, peer)
    for sock in (tun_fd, tun_in, udp, peer):
        sock.close()


def test_inside_routes_seals_and_asks_for_keys(dp, io):
    tun_fd, tun_in, udp, peer = io
    events = ffi.new("int32_t[]", 8)
    packet = ipv4_udp("10.87.1.9", "10.87.2.5", b"payload")
    tun_in.send(packet)
    # no keys yet: dropped, and Python is asked once for a handshake
    assert lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8) == 1 and events[0] == 1
    dp.set_endpoint(1, peer.getsockname())
    dp.set_tx_key(1, KEY_TX, 0x5555)
    for _ in range(3):
        tun_in.send(packet)
    tun_in.send(ipv4_udp("10.87.1.9", "10.87.77.1", b"nowhere"))   # no peer owns it: ask, once
    tun_in.send(ipv4_udp("10.87.1.9", "10.87.77.2", b"nowhere"))
    tun_in.send(ipv4_udp("10.87.1.9", "192.168.1.1", b"outside"))  # not in the overlay
    assert lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8) == 1
    assert events[0] == -(((0x0A574D01 >> 8) & 0xFFFF) + 1)
    # the packet that waited for keys goes first, then the three
    got = [open_packet(KEY_TX, peer.recv(2048)) for _ in range(4)]
    assert [(k, i, c) for k, i, c, _ in got] == [(3, 0x5555, n) for n in range(4)]
    assert all(pt == packet for *_, pt in got)
    # the two to 10.87.77.x wait for their owner to be found; 192.168.1.1 cannot go
    assert dp.drops()["no_route"] == 1 and dp.drops()["no_session"] == 0
    assert dp.io_stats()["held"] == 3


def test_a_responder_key_is_used_only_once_the_initiator_sent_under_it(dp, io):
    """A responder's new send key is staged: packets keep the old key (or wait, with
    none) until a packet arrives on the new receive index."""
    new_rx, new_tx, old_tx = 0xABC00002, os.urandom(32), KEY_TX
    dp.add_rx(new_rx, 1, KEY_RX)
    tun_fd, tun_in, udp, peer = io
    events = ffi.new("int32_t[]", 8)
    packet = ipv4_udp("10.87.1.9", "10.87.2.5", b"payload")

    def send_one():
        tun_in.send(packet)
        lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
        return open_packet(*keys_for(peer.recv(2048)))

    def keys_for(raw):
        index = int.from_bytes(raw[4:8], "little")
        return ({0x5555: old_tx, 0x6666: new_tx}[index], raw)

    dp.set_endpoint(1, peer.getsockname())
    dp.set_tx_key(1, old_tx, 0x5555)
    dp.stage_tx_key(1, new_tx, 0x6666, new_rx)
    assert send_one()[1] == 0x5555          # still the old key
    outside(dp, [seal(KEY_RX, RX_INDEX, 0, b"")])   # a keepalive on the OLD index: no
    assert send_one()[1] == 0x5555
    outside(dp, [seal(KEY_RX, new_rx, 0, b"")])     # the initiator's first packet on the new one
    kind, index, counter, pt = send_one()
    assert (index, counter, pt) == (0x6666, 0, packet)
    # an initiator's keys replace a staged key that was never confirmed: a packet on
    # the staged key's index no longer promotes it
    dp.add_rx(0xABC00003, 1, KEY_RX)
    dp.stage_tx_key(1, os.urandom(32), 0x7777, 0xABC00003)
    dp.set_tx_key(1, old_tx, 0x5555)
    outside(dp, [seal(KEY_RX, 0xABC00003, 0, b"")])
    assert send_one()[1] == 0x5555


def test_100k_malformed_inputs_are_dropped_and_counted_and_forwarding_goes_on(dp):
    rng = random.Random(1234)
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"still alive")
    inputs, counter, valid = [], 10, []
    for i in range(100_000):
        shape = rng.randrange(7)
        if shape == 0:
            p = rng.randbytes(rng.randrange(0, 300))
        elif shape == 1:   # data/control header, wrong index (or version, or reserved bytes)
            p = bytes([rng.choice((3, 4)), rng.choice((2, 2, 2, 0, 1, 3))]) + rng.randbytes(rng.randrange(0, 80))
        elif shape == 2:   # right index, garbage ciphertext
            p = bytes([3, 2, 0, 0]) + RX_INDEX.to_bytes(4, "little") + rng.randbytes(rng.randrange(0, 120))
        elif shape == 3:   # truncated real packet
            p = seal(KEY_RX, RX_INDEX, 5_000_000 + i, good)[:rng.randrange(0, 40)]
        elif shape == 4:   # unknown types
            p = bytes([rng.randrange(7, 256), 2, 0, 0]) + rng.randbytes(rng.randrange(0, 64))
        elif shape == 5:   # handshake, relayed and cookie-reply headers: the gate (cookie.c)
            inner = bytes([rng.choice((1, 2, 3, 4, 5, 6)), 2, 0, 0]) + rng.randbytes(rng.choice((60, 4, 40, 100)))
            p = inner if rng.random() < 0.5 else bytes([5, 2, 0, 0]) + rng.randbytes(4) + inner
        else:              # a valid packet now and then
            p = seal(KEY_RX, RX_INDEX, counter, good)
            counter += 1
            valid.append(p)
        inputs.append(p)
    delivered, controls = outside(dp, inputs)
    assert len(delivered) == len(valid)
    # roaming notes are extra events; version notes come with a counted drop
    handed_up = [k for k, _ in controls if k not in (lib.FN_CTRL_ROAM, lib.FN_CTRL_VERSION)]
    assert sum(dp.drops().values()) + len(delivered) + len(handed_up) == len(inputs)
    # and afterwards a fresh packet still goes through
    assert outside(dp, [seal(KEY_RX, RX_INDEX, counter, good)])[0] == [good]


# ---- TSO segmentation (offload.c)


def _tcp_super(payload: bytes, flags: int = 0x18) -> bytes:
    import struct as st
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    tcp = st.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, flags, 65535, 0, 0)
    ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 0xFFFF if len(payload) + 40 > 0xFFFF else 40 + len(payload),
                 77, 0x4000, 64, 6, 0, src, dst)
    return ip + tcp + payload


def test_tso_super_packet_is_cut_into_valid_segments():
    import struct as st
    payload = os.urandom(10_000)
    pkt = _tcp_super(payload, flags=0x19)  # PSH|FIN|ACK on the super-packet
    vnet = st.pack("<BBHHHH", 1, 1, 40, 1380, 20, 16)  # NEEDS_CSUM, TCPV4, mss 1380
    out = ffi.new("uint8_t[]", 64 * 1500)
    lens = ffi.new("uint32_t[]", 64)
    n = lib.fn_tso_segment(vnet + pkt, len(vnet) + len(pkt), out, 1500, lens, 64)
    assert n == 8  # ceil(10000 / 1380)
    got = b""
    for i in range(n):
        seg = ffi.buffer(out + i * 1500, lens[i])[:]
        assert ones_sum(seg[:20]) == 0xFFFF                       # IPv4 header checksum
        assert st.unpack("!H", seg[2:4])[0] == len(seg)
        pseudo = seg[12:20] + st.pack("!BBH", 0, 6, len(seg) - 20)
        assert ones_sum(pseudo + seg[20:]) == 0xFFFF             # TCP checksum
        seq = st.unpack("!I", seg[24:28])[0]
        assert seq == 1000 + i * 1380
        flags = seg[33]
        assert bool(flags & 0x09) == (i == n - 1)                  # FIN/PSH only on the last
        got += seg[40:]
    assert got == payload


def test_checksums_of_every_length_near_the_word_steps():
    """The checksum sums 16 bytes a step in two carry chains, then 8, 4, 2, 1: every
    remainder, against Python's RFC 1071 sum."""
    import struct as st
    out = ffi.new("uint8_t[]", 1500)
    lens = ffi.new("uint32_t[]", 1)
    for n in [*range(0, 70), *range(1360, 1381), 1392]:
        payload = os.urandom(n)
        src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
        pseudo_sum = ones_sum(src + dst + st.pack("!BBH", 0, 17, 8 + n))
        udp = st.pack("!HHHH", 5000, 53, 8 + n, pseudo_sum)  # the kernel leaves the pseudo-header sum
        ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + n, 9, 0, 64, 17, 0, src, dst)
        vnet = st.pack("<BBHHHH", 1, 0, 0, 0, 20, 6)  # NEEDS_CSUM at 20 + 6
        assert lib.fn_tso_segment(vnet + ip + udp + payload, 38 + n, out, 1500, lens, 1) == 1
        seg = ffi.buffer(out, lens[0])[:]
        pseudo = seg[12:20] + st.pack("!BBH", 0, 17, 8 + n)
        assert ones_sum(pseudo + seg[20:]) == 0xFFFF, n


def test_tso_rejects_garbage():
    import struct as st
    out = ffi.new("uint8_t[]", 1500 * 4)
    lens = ffi.new("uint32_t[]", 4)
    vnet = st.pack("<BBHHHH", 0, 1, 40, 1380, 0, 0)
    assert lib.fn_tso_segment(vnet + b"\x45" + b"\0" * 10, 21, out, 1500, lens, 4) == -1
    assert lib.fn_tso_segment(b"\0" * 5, 5, out, 1500, lens, 4) == -1


def test_uso_super_packet_is_cut_into_valid_datagrams():
    import struct as st
    payload = os.urandom(3000)
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    udp = st.pack("!HHHH", 5000, 53, 8 + len(payload), 0)
    ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 9, 0, 64, 17, 0, src, dst)
    vnet = st.pack("<BBHHHH", 1, 5, 28, 1000, 20, 6)  # NEEDS_CSUM, UDP_L4, 1000-byte datagrams
    out = ffi.new("uint8_t[]", 8 * 1500)
    lens = ffi.new("uint32_t[]", 8)
    n = lib.fn_tso_segment(vnet + ip + udp + payload, 10 + 28 + len(payload), out, 1500, lens, 8)
    assert n == 3
    got = b""
    for i in range(n):
        seg = ffi.buffer(out + i * 1500, lens[i])[:]
        assert ones_sum(seg[:20]) == 0xFFFF
        assert st.unpack("!H", seg[24:26])[0] == len(seg) - 20
        pseudo = seg[12:20] + st.pack("!BBH", 0, 17, len(seg) - 20)
        assert ones_sum(pseudo + seg[20:]) == 0xFFFF
        got += seg[28:]
    assert got == payload


def _open_any(key: bytes, cipher: str, raw: bytes) -> bytes:
    from tests.harness.wire import open_aes
    return open_aes(key, raw) if cipher == "aes" else open_packet(key, raw)[3]


@pytest.mark.parametrize("cipher", ["chacha", "aes"])
def test_the_inside_thread_sends_the_segments_fn_tso_segment_cuts(dp, io, cipher):
    """The inside thread builds each segment in the TUN read buffer (headers written
    just before the segment's payload, over the segments already sent) and seals from
    there: what the peer opens is, byte for byte, what fn_tso_segment cuts into
    separate slots (checked above), for TCP with options and FIN/PSH/CWR, for UDP, and
    for a lone packet whose checksum the kernel left to us."""
    import struct as st
    from flatnet.engine.datapath import aes_gcm_available
    from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA
    if cipher == "aes" and not aes_gcm_available():
        pytest.skip("no AES-256-GCM here")
    tun_fd, tun_in, udp, peer = io
    tun_in.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    dp.set_offloads(True, False, False)
    dp.set_endpoint(1, peer.getsockname())
    dp.set_tx_key(1, KEY_TX, 0x5555, AEAD_AES if cipher == "aes" else AEAD_CHACHA)
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    opts = bytes([1, 1, 8, 10]) + os.urandom(8)  # NOP NOP timestamps
    tcp = st.pack("!HHIIBBHHH", 40000, 80, 0xFFFFF000, 7, 8 << 4, 0x80 | 0x19, 65535, 0, 0) + opts
    tcp_payload = os.urandom(30_001)
    tcp_ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(tcp_payload), 0xFFFE, 0x4000, 64, 6, 0, src, dst)
    udp_payload = os.urandom(5000)
    udp_hdr = st.pack("!HHHH", 5000, 53, 8 + len(udp_payload), 0)
    udp_ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(udp_payload), 9, 0, 64, 17, 0, src, dst)
    lone = ipv4_udp("10.87.1.2", "10.87.2.2", os.urandom(900))
    inputs = [st.pack("<BBHHHH", 1, 1, 52, 1360, 20, 16) + tcp_ip + tcp + tcp_payload,
              st.pack("<BBHHHH", 1, 5, 28, 1000, 20, 6) + udp_ip + udp_hdr + udp_payload,
              st.pack("<BBHHHH", 1, 0, 0, 0, 20, 6) + lone]
    want = []
    for v in inputs:
        out = ffi.new("uint8_t[]", 64 * 1500)
        lens = ffi.new("uint32_t[]", 64)
        n = lib.fn_tso_segment(v, len(v), out, 1500, lens, 64)
        assert n > 0
        want += [ffi.buffer(out + i * 1500, lens[i])[:] for i in range(n)]
    events = ffi.new("int32_t[]", 8)
    for v in inputs:
        tun_in.send(v)
    lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
    got = [_open_any(KEY_TX, cipher, peer.recv(2048)) for _ in want]
    assert len(want) == 23 + 5 + 1
    assert got == want
    assert sum(dp.drops().values()) == 0


def test_a_flood_of_initiations_is_rate_limited(dp):
    flood = [handshake(1, i, os.urandom(150), STATIC_PUBLIC) for i in range(1000)]
    _, controls = outside(dp, flood)
    handed_up = [k for k, _ in controls if k == CTRL_RAW]
    assert len(handed_up) <= 40  # the burst, plus what trickles in while the test runs
    assert dp.drops()["handshake_rate_limited"] >= 960
    # data keeps flowing meanwhile
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"still here")
    assert outside(dp, [seal(KEY_RX, RX_INDEX, 99, good)])[0] == [good]


# ---- issue 13: what an authenticated peer may send
@pytest.mark.parametrize("dst", ["169.254.169.254", "192.168.1.10", "172.17.0.2", "127.0.0.1", "10.87.3.4",
                                 "10.87.2.9", "255.255.255.255"])
def test_a_peer_cannot_send_outside_this_hosts_lease(dp, dst):
    """Metadata service, the LAN, other bridges, loopback, other overlay subnets: the
    peer authenticates, yet the packet is dropped and counted; the lease still works."""
    evil = ipv4_udp("10.87.2.5", dst, b"evil")
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"container")
    delivered, _ = outside(dp, [seal(KEY_RX, RX_INDEX, 0, evil), seal(KEY_RX, RX_INDEX, 1, good)])
    assert delivered == [good]
    assert dp.drops()["destination_not_allowed"] == 1
    assert dp.stats(1).rx_dropped == 1


def test_before_the_lease_is_known_nothing_is_delivered():
    d = DataPath(NET, 1420)
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.add_rx(RX_INDEX, 1, KEY_RX)
    delivered, _ = outside(d, [seal(KEY_RX, RX_INDEX, 0, ipv4_udp("10.87.2.5", "10.87.1.9", b"early"))])
    assert delivered == [] and d.drops()["destination_not_allowed"] == 1
    with pytest.raises(OSError):
        d.set_local(ipaddress.IPv4Network("192.168.0.0/24"))  # outside the overlay


def test_a_peer_without_a_subnet_cannot_inject_even_from_0_0_0_0(dp):
    """A lighthouse (no lease) has keys but owns no address: 0.0.0.0 matched its
    'subnet 0 / mask /32' before."""
    lh_index = 0xABC00007
    dp.set_peer(7, None)
    dp.add_rx(lh_index, 7, KEY_TX)
    packets = [seal(KEY_TX, lh_index, 0, ipv4_udp("0.0.0.0", "10.87.1.9", b"x")),
               seal(KEY_TX, lh_index, 1, ipv4_udp("10.87.2.5", "10.87.1.9", b"y"))]
    delivered, _ = outside(dp, packets)
    assert delivered == [] and dp.drops()["source_not_allowed"] == 2


def test_a_relayed_full_size_packet_fits_the_receive_slot_without_udp_gro():
    """MTU 1440: header + MTU + tag fill 23 slots of 64 bytes exactly, so the 8 bytes of
    a relay header made the kernel cut the datagram (then: auth_failed)."""
    d = DataPath(NET, 1440)
    d.set_local(LEASE)
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.add_rx(RX_INDEX, 1, KEY_RX)
    full = ipv4_udp("10.87.2.5", "10.87.1.9", os.urandom(1440 - 28))
    relayed = bytes([5, 2, 0, 0]) + (0x0A570200).to_bytes(4, "little") + seal(KEY_RX, RX_INDEX, 0, full)
    delivered, _ = outside(d, [relayed])
    assert delivered == [full]
    assert sum(d.drops().values()) == 0


def test_an_oversized_datagram_is_counted_as_too_big_not_as_a_forgery(dp):
    big = seal(KEY_RX, RX_INDEX, 0, ipv4_udp("10.87.2.5", "10.87.1.9", os.urandom(3000)))
    outside(dp, [big])
    assert dp.drops()["too_big"] == 1 and dp.drops()["auth_failed"] == 0


def test_a_tso_segment_longer_than_the_mtu_is_dropped_and_never_written_past_its_slot(dp, io):
    """gso_size comes from the vnet header: a segment of gso_size bytes must not be
    written into a slot sized for the MTU. The write itself (past the out arena's end
    when the batch has filled it) shows under ASan: tests/unit/engine/test_fuzz.py."""
    import struct as st
    tun_fd, tun_in, udp, peer = io
    dp.set_offloads(True, False, False)
    dp.set_endpoint(1, peer.getsockname())
    dp.set_tx_key(1, KEY_TX, 0x5555)
    src, dst = socket.inet_aton("10.87.1.2"), socket.inet_aton("10.87.2.2")
    payload = os.urandom(60_000)
    tcp = st.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, 0x10, 65535, 0, 0)
    ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 0xFFFF, 1, 0x4000, 64, 6, 0, src, dst)
    events = ffi.new("int32_t[]", 8)
    tun_in.send(st.pack("<BBHHHH", 0, 1, 40, 20_000, 0, 0) + ip + tcp + payload)
    lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
    assert dp.drops()["too_big"] == 3
    assert dp.stats(1).tx_packets == 0
    # fn_tso_segment refuses segments longer than its slots (it wrote them across slots)
    out = ffi.new("uint8_t[]", 4 * 1500)
    lens = ffi.new("uint32_t[]", 4)
    vnet = st.pack("<BBHHHH", 0, 1, 40, 3000, 0, 0)
    assert lib.fn_tso_segment(vnet + ip + tcp + payload[:5000], 10 + 40 + 5000, out, 1500, lens, 4) == -1


def test_send_controls_seals_each_under_its_peers_key_in_one_sendmmsg(io):
    """A lighthouse's answers: one C call seals each message under its peer's send key
    (its own counter) and sends them all with one sendmmsg; a peer without keys, a
    relayed one or one without an endpoint is reported, not sent."""
    tun_fd, tun_in, udp, peer = io
    d = DataPath(NET, 1420, max_peers=8)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    try:
        for slot, sock, key, remote in ((1, peer, KEY_TX, 0x1111), (2, other, KEY_RX, 0x2222)):
            d.set_peer(slot, None)
            d.set_endpoint(slot, sock.getsockname())
            d.set_tx_key(slot, key, remote)
        d.set_peer(3, None)                      # no keys
        d.set_peer(4, None)
        d.set_endpoint(4, peer.getsockname())
        d.set_tx_key(4, KEY_TX, 0x4444)
        d.set_relay(4, 9)                        # relayed: the caller wraps it
        with pytest.raises(OSError):
            d.send_controls([(1, b"x")])         # before start(): no socket
        d._udp_fd = udp.fileno()
        sends = d.io_stats()["udp_sends"]
        rc = d.send_controls([(1, b"lease"), (2, b"peer"), (1, b"punch"), (3, b"nokey"), (4, b"relayed"),
                              (99, b"bad slot"), (1, bytes(2000))])
        assert rc == [0, 0, 0, -errno.ENOKEY, -errno.EXDEV, -errno.EINVAL, -errno.EMSGSIZE]
        assert d.io_stats()["udp_sends"] == sends + 1 and d.io_stats()["udp_datagrams_out"] == 3
        assert [open_packet(KEY_TX, peer.recv(2048)) for _ in range(2)] == [(4, 0x1111, 0, b"lease"),
                                                                           (4, 0x1111, 1, b"punch")]
        assert open_packet(KEY_RX, other.recv(2048)) == (4, 0x2222, 0, b"peer")
        assert d.send_controls([]) == []
    finally:
        other.close()
