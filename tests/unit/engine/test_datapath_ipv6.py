"""The C data path on IPv6 loopback sockets (::1) and on a dual-stack socket: sealing to
an IPv6 endpoint, opening from one, roaming reported with the IPv6 source, IPv4 peers
seen as ::ffff:a.b.c.d matching their stored endpoint, and handshake rate-limit buckets
per source on a dual-stack socket."""
import ipaddress
import os
import socket

import pytest

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.datapath import CTRL_RAW, CTRL_ROAM, DataPath, parse_sockaddr, sockaddr
from tests.harness.wire import handshake, ipv4_udp, open_packet, seal

NET = ipaddress.IPv4Network("10.87.0.0/16")
KEY_RX, KEY_TX = os.urandom(32), os.urandom(32)
RX_INDEX = 0xABC00001  # low 12 bits: slot 1
STATIC_PUBLIC = os.urandom(32)


def udp6(host: str = "::1", v6only: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    s.settimeout(2)
    return s


def udp4(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    return s


@pytest.fixture
def dp():
    d = DataPath(NET, 1420, socket.AF_INET6)
    d.set_local(ipaddress.IPv4Network("10.87.1.0/24"))
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.add_rx(RX_INDEX, 1, KEY_RX)
    d.set_identity(STATIC_PUBLIC)
    return d


@pytest.fixture
def tun():
    tun_fd, tun_other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_fd.setblocking(False)
    tun_other.setblocking(False)
    yield tun_fd, tun_other
    tun_fd.close()
    tun_other.close()


def receive(dp, udp, tun_fd, tun_other):
    """One receive pass of the outside thread: (packets written to the TUN, control items)."""
    ctrl = ffi.new("fn_ctrl[]", 64)
    items = []
    while True:
        n = lib.fn_outside(dp.ctx, udp.fileno(), tun_fd.fileno(), 50, ctrl, 64)
        items += [(ctrl[i].kind, parse_sockaddr(ffi.buffer(ctrl[i].addr, ctrl[i].addrlen)[:])) for i in range(n)]
        if n == 0:
            break
    delivered = []
    while True:
        try:
            delivered.append(tun_other.recv(65536))
        except BlockingIOError:
            return delivered, items


def test_sockaddr_round_trips_and_maps_ipv4_on_a_dual_stack_socket():
    for addr in [("2001:db8::1", 4787), ("::1", 1), ("192.0.2.1", 65535)]:
        assert parse_sockaddr(sockaddr(addr, socket.AF_INET6)) == addr
    raw = sockaddr(("192.0.2.1", 4787), socket.AF_INET6)
    assert len(raw) == 28 and raw[8:24] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert parse_sockaddr(sockaddr(("192.0.2.1", 4787))) == ("192.0.2.1", 4787)
    assert parse_sockaddr(sockaddr(("2001:db8::1", 4787), socket.AF_INET)) == ("2001:db8::1", 4787)
    assert parse_sockaddr(b"\x0a\x00") is None and parse_sockaddr(bytes(28)) is None


def test_sealing_to_an_ipv6_endpoint_and_to_an_ipv4_one_from_a_dual_stack_socket(dp, tun):
    tun_fd, tun_in = tun
    udp, peer6, peer4 = udp6("::", v6only=False), udp6(), udp4()
    events = ffi.new("int32_t[]", 8)
    packet = ipv4_udp("10.87.1.9", "10.87.2.5", b"payload")
    try:
        dp.set_tx_key(1, KEY_TX, 0x5555)
        for n, peer in enumerate((peer6, peer4)):
            dp.set_endpoint(1, peer.getsockname()[:2])
            tun_in.send(packet)
            lib.fn_inside(dp.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
            kind, index, counter, pt = open_packet(KEY_TX, peer.recv(2048))
            assert (kind, index, counter, pt) == (3, 0x5555, n, packet)
    finally:
        for s in (udp, peer6, peer4):
            s.close()


def test_opening_from_ipv6_and_roaming_reports_the_ipv6_source(dp, tun):
    udp, peer, moved = udp6(), udp6(), udp6()
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"hello")
    try:
        dp.set_endpoint(1, peer.getsockname()[:2])
        peer.sendto(seal(KEY_RX, RX_INDEX, 0, good), udp.getsockname())
        delivered, items = receive(dp, udp, *tun)
        assert delivered == [good] and items == []  # from the endpoint it has: no roam
        moved.sendto(seal(KEY_RX, RX_INDEX, 1, good), udp.getsockname())
        delivered, items = receive(dp, udp, *tun)
        assert delivered == [good] and items == [(CTRL_ROAM, ("::1", moved.getsockname()[1]))]
        # a forgery from yet another address opens nothing and reports nothing
        moved.sendto(seal(os.urandom(32), RX_INDEX, 2, good), udp.getsockname())
        assert receive(dp, udp, *tun) == ([], [])
        assert dp.drops()["auth_failed"] == 1
    finally:
        for s in (udp, peer, moved):
            s.close()


def test_an_ipv4_peer_on_a_dual_stack_socket_matches_its_endpoint(dp, tun):
    """It arrives as ::ffff:127.0.0.1 and is stored as that: no roam on every packet."""
    udp, peer = udp6("::", v6only=False), udp4()
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"hello")
    try:
        dp.set_endpoint(1, peer.getsockname())
        for counter in range(3):
            peer.sendto(seal(KEY_RX, RX_INDEX, counter, good), ("127.0.0.1", udp.getsockname()[1]))
        delivered, items = receive(dp, udp, *tun)
        assert delivered == [good] * 3 and items == []
    finally:
        udp.close()
        peer.close()


def test_handshake_buckets_are_per_source_on_a_dual_stack_socket(dp, tun):
    """A flood from one IPv4 source must not use up the bucket of another (both come as
    IPv6 addresses on this socket: before, every non-IPv4 family shared one bucket)."""
    udp = udp6("::", v6only=False)
    flooder, other4, other6 = udp4("127.0.0.1"), udp4("127.0.0.2"), udp6()
    port = udp.getsockname()[1]
    try:
        for i in range(60):
            flooder.sendto(handshake(1, i, os.urandom(150), STATIC_PUBLIC), ("127.0.0.1", port))
        _, items = receive(dp, udp, *tun)
        assert 20 <= len(items) <= 25 and dp.drops()["handshake_rate_limited"] >= 35
        for i in range(5):
            other4.sendto(handshake(1, 100 + i, os.urandom(150), STATIC_PUBLIC), ("127.0.0.1", port))
            other6.sendto(handshake(1, 200 + i, os.urandom(150), STATIC_PUBLIC), ("::1", port))
        _, items = receive(dp, udp, *tun)
        assert sorted(addr for kind, addr in items if kind == CTRL_RAW) == sorted(
            [("127.0.0.2", other4.getsockname()[1])] * 5 + [("::1", other6.getsockname()[1])] * 5)
    finally:
        for s in (udp, flooder, other4, other6):
            s.close()


def test_an_ipv6_endpoint_on_an_ipv4_only_socket_is_a_counted_send_failure(tun):
    """A lighthouse may hand an IPv6 endpoint to a node that listens on IPv4 only: no
    exception anywhere, the send is counted as failed, and the next endpoint works."""
    d = DataPath(NET, 1420)  # an IPv4 socket
    d.set_local(ipaddress.IPv4Network("10.87.1.0/24"))
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    tun_fd, tun_in = tun
    udp, peer = udp4(), udp4()
    events = ffi.new("int32_t[]", 8)
    packet = ipv4_udp("10.87.1.9", "10.87.2.5", b"payload")
    try:
        d.set_tx_key(1, KEY_TX, 0x5555)
        d.set_endpoint(1, ("2001:db8::1", 4787))
        tun_in.send(packet)
        lib.fn_inside(d.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
        assert d.drops()["send_failed"] == 1
        d.set_endpoint(1, peer.getsockname())
        tun_in.send(packet)
        lib.fn_inside(d.ctx, tun_fd.fileno(), udp.fileno(), 0, events, 8)
        assert open_packet(KEY_TX, peer.recv(2048))[3] == packet
    finally:
        udp.close()
        peer.close()
