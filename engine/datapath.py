"""The C data path (engine/crypto/csrc/fastpath.c) behind a small typed interface.

Two threads sit in C with the GIL released: `inside` (TUN -> UDP) and `outside`
(UDP -> TUN). They come back to Python only when something needs the control plane:
a peer without keys has packets waiting, or a handshake / control packet / roaming
peer arrived. Per-packet work never runs in Python.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import threading
from typing import Callable

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.log import Logger
from flatnet.engine.datapath_port import (CTRL_DECRYPTED, CTRL_FORWARD, CTRL_RAW, CTRL_ROAM,  # noqa: F401
                                          CTRL_VERSION, RELAY_ALL, RELAY_OFF, RELAY_OTHERS, RX_SLOTS, ControlItem,
                                          PeerStats)
from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA

DROP_REASONS = {
    lib.FN_DROP_SHORT: "short", lib.FN_DROP_TYPE: "unknown_type", lib.FN_DROP_INDEX: "unknown_index",
    lib.FN_DROP_AUTH: "auth_failed", lib.FN_DROP_REPLAY: "replay", lib.FN_DROP_SOURCE: "source_not_allowed",
    lib.FN_DROP_NOROUTE: "no_route", lib.FN_DROP_NOSESSION: "no_session", lib.FN_DROP_SEND: "send_failed",
    lib.FN_DROP_TUNWRITE: "tun_write_failed", lib.FN_DROP_NOTIPV4: "not_ipv4",
    lib.FN_DROP_KEY_EXHAUSTED: "key_exhausted", lib.FN_DROP_CTRL_FULL: "control_queue_full",
    lib.FN_DROP_TOO_BIG: "too_big", lib.FN_DROP_RATE_LIMITED: "handshake_rate_limited",
    lib.FN_DROP_FIREWALL: "firewall", lib.FN_DROP_VERSION: "wrong_version",
    lib.FN_DROP_RESERVED: "reserved_not_zero", lib.FN_DROP_MAC1: "bad_mac1",
    lib.FN_DROP_COOKIE: "under_load_cookie_sent",
    lib.FN_DROP_DESTINATION: "destination_not_allowed",
    lib.FN_DROP_RELAY_SENDER: "relay_unknown_sender", lib.FN_DROP_RELAY_RATE: "relay_rate_limited",
}
IO_COUNTERS = {
    lib.FN_IO_TUN_READS: "tun_reads", lib.FN_IO_TSO_SUPER: "tso_super_packets", lib.FN_IO_UDP_SENDS: "udp_sends",
    lib.FN_IO_UDP_DGRAMS_OUT: "udp_datagrams_out", lib.FN_IO_UDP_RECVS: "udp_receives",
    lib.FN_IO_UDP_DGRAMS_IN: "udp_datagrams_in", lib.FN_IO_TUN_WRITES: "tun_writes",
    lib.FN_IO_WAKEUPS_IN: "wakeups_inside", lib.FN_IO_WAKEUPS_OUT: "wakeups_outside", lib.FN_IO_SPINS: "spins",
    lib.FN_IO_SPIN_HITS: "spin_hits", lib.FN_IO_HELD: "held", lib.FN_IO_MODERATED: "moderation_pauses",
    lib.FN_IO_RELAYED: "relayed", lib.FN_IO_RELAYED_BYTES: "relayed_bytes",
}
# the control plane's copy of the C header's numbers (engine/device.py imports no C)
if (CTRL_RAW, CTRL_DECRYPTED, CTRL_ROAM, CTRL_VERSION, CTRL_FORWARD, RX_SLOTS, RELAY_OFF, RELAY_ALL, RELAY_OTHERS) != (
        lib.FN_CTRL_RAW, lib.FN_CTRL_DECRYPTED, lib.FN_CTRL_ROAM, lib.FN_CTRL_VERSION, lib.FN_CTRL_FORWARD,
        lib.FN_RX_SLOTS, lib.FN_RELAY_OFF, lib.FN_RELAY_ALL, lib.FN_RELAY_OTHERS):
    raise ImportError("engine/datapath_port.py and engine/crypto/csrc/fastpath.h disagree on "
                      "FN_CTRL_*/FN_RX_SLOTS/FN_RELAY_*")
MAX_PEERS = lib.FN_MAX_PEERS
RELAY_BLOCKS = 1 << 16  # relay ids relay.c forwards for: /24 blocks of an overlay of /8 or longer
CIPHERS = {AEAD_CHACHA: lib.FN_CIPHER_CHACHA, AEAD_AES: lib.FN_CIPHER_AES256GCM}  # the C numbers of the suites


def aes_gcm_available() -> bool:
    """AES-256-GCM can be offered: this CPU has AES-NI and PCLMULQDQ and OpenSSL has
    the cipher (engine/crypto/csrc/aead_aes.c checks both), and the operator did not
    hide AES-NI or PCLMULQDQ from OpenSSL with OPENSSL_ia32cap."""
    return bool(lib.fn_aes_gcm_available()) and openssl_ia32cap_keeps_aes(os.environ.get("OPENSSL_ia32cap"))


def aes_gcm_impl() -> str:
    """Which code seals and opens AES-256-GCM in this process: "vaes" (our own, where
    the CPU has VAES and VPCLMULQDQ; aes_gcm_vaes.c), "openssl" (OpenSSL's functions;
    also with FLATNET_AES_IMPL=openssl in the environment), or "none" (not offered)."""
    if not aes_gcm_available():
        return "none"
    return {lib.FN_AES_IMPL_VAES: "vaes", lib.FN_AES_IMPL_OPENSSL: "openssl"}.get(lib.fn_aes_gcm_impl(), "none")


def exit_on_failure(loop: asyncio.AbstractEventLoop, log: Logger, stop: asyncio.Event,
                    failures: list[OSError]) -> Callable[[str, int], None]:
    """DataPath.start's on_fatal for a daemon: a pipeline thread that ended on an error
    (its socket or TUN failed) would leave the daemon up but deaf or mute, so the
    daemon logs `data_path_failed`, stops, and its run() raises the error (exit 1;
    systemd restarts it)."""
    def failed(thread: str, err: int) -> None:
        failures.append(OSError(err, f"data path: the {thread} thread stopped: {os.strerror(err)}"))
        log.error("data_path_failed", thread=thread, error=os.strerror(err), errno=err, action="exiting")
        stop.set()
    return lambda thread, err: loop.call_soon_threadsafe(failed, thread, err)


# OpenSSL's capability bits (OPENSSL_ia32cap(3)): AES-NI, PCLMULQDQ, and FXSR, whose
# mask also masks both of them
_AESNI = 1 << 57
_PCLMULQDQ = 1 << 33
_FXSR = 1 << 24


def _openssl_strtouint64(text: str) -> int:
    """A number as OpenSSL 3.0 reads it here (crypto/cpuid.c): "0x" hex, a leading 0
    octal, else decimal; digits up to the first character that is none; nothing read
    is 0; wraps at 64 bits."""
    base, i = 10, 0
    if text[:1] == "0":
        base, i = 8, 1
        if text[i:i + 1].lower() == "x":
            base, i = 16, i + 1
    value = 0
    for c in text[i:]:
        digit = int(c, 16) if c in "0123456789abcdefABCDEF" else 16
        if digit >= base:
            break
        value = (value * base + digit) & (1 << 64) - 1
    return value


def openssl_ia32cap_keeps_aes(env: str | None) -> bool:
    """False when OPENSSL_ia32cap (read as OpenSSL 3.0 reads it at start-up) leaves
    OpenSSL without AES-NI or PCLMULQDQ: its AES-256-GCM would then be the table code,
    slower and not constant-time, so it is not offered. "~MASK" clears bits of what
    the CPU has (clearing FXSR clears both); ":..." keeps the CPU's first word; any
    other value replaces it, so bits it does not set are hidden (even text that is no
    number: OpenSSL reads it as 0)."""
    if env is None:
        return True
    need = _AESNI | _PCLMULQDQ
    if env.startswith("~"):
        return not _openssl_strtouint64(env[1:]) & (need | _FXSR)
    if env.startswith(":"):
        return True
    return _openssl_strtouint64(env) & need == need


def sockaddr(addr: tuple[str, int], family: int = socket.AF_INET) -> bytes:
    """The C struct for an endpoint on a socket of `family`: sockaddr_in, or
    sockaddr_in6 (an IPv4 endpoint as ::ffff:a.b.c.d, which is how a dual-stack socket
    reports such a sender, so outside.c's same_addr compares like with like). An IPv6
    endpoint on an IPv4-only socket stays sockaddr_in6: the kernel refuses to send there
    and the data path counts it (send_failed); the peer's other candidates still work."""
    if family == socket.AF_INET6 or ":" in addr[0]:
        raw = socket.inet_pton(socket.AF_INET6, addr[0] if ":" in addr[0] else "::ffff:" + addr[0])
        return struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", addr[1], 0) + raw + bytes(4)
    return struct.pack("<H", socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_aton(addr[0]) + bytes(8)


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """An endpoint from a C sockaddr (::ffff:a.b.c.d as a.b.c.d); None if unknown."""
    if len(raw) >= 8 and struct.unpack_from("<H", raw)[0] == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    if len(raw) >= 24 and struct.unpack_from("<H", raw)[0] == socket.AF_INET6:
        ip = ipaddress.IPv6Address(raw[8:24])  # the spelling engine.proto.endpoint.address gives
        return str(ip.ipv4_mapped or ip), struct.unpack_from("!H", raw, 2)[0]
    return None


class DataPath:
    def __init__(self, network: ipaddress.IPv4Network, mtu: int, family: int = socket.AF_INET,
                 max_peers: int = MAX_PEERS) -> None:
        """family: the UDP socket's (engine.io.udp.open_udp), for the endpoints given to C.
        max_peers: sessions the C tables hold (an engine: 4096; a lighthouse: one per
        node of the network, lighthouse.config sessions); receive indexes: the next power
        of two of 3 per session (current, previous and a handshake in progress)."""
        self.max_peers = max_peers
        self.rx_slots = RX_SLOTS if max_peers <= MAX_PEERS else 1 << (3 * max_peers - 1).bit_length()
        ctx = lib.fn_new_sized(int(network.network_address), network.prefixlen, mtu, max_peers, self.rx_slots)
        if ctx == ffi.NULL:
            raise ValueError(f"data path refuses network {network} / mtu {mtu} / {max_peers} peers")
        self.ctx = ffi.gc(ctx, lib.fn_free)
        self.mtu = mtu
        self.family = family
        self._threads: list[threading.Thread] = []
        self._on_fatal: Callable[[str, int], None] | None = None
        self._udp_fd: int | None = None  # start(): the socket send_controls uses
        self._stopping = False

    # ---- peers and keys (control plane; any thread)
    def set_peer(self, slot: int, subnet: ipaddress.IPv4Network | None) -> None:
        """subnet None: the peer owns no overlay addresses (a lighthouse)."""
        if subnet is None:
            self._check(lib.fn_peer_set(self.ctx, slot, 0, lib.FN_NO_SUBNET), "set peer")
        else:
            self._check(lib.fn_peer_set(self.ctx, slot, int(subnet.network_address), subnet.prefixlen), "set peer")

    def set_local(self, subnet: ipaddress.IPv4Network) -> None:
        """This host's lease: decrypted packets to any other destination are dropped
        (counted as destination_not_allowed). Until set, all of them are."""
        self._check(lib.fn_set_local(self.ctx, int(subnet.network_address), subnet.prefixlen), "set local subnet")

    def route_unpend(self, route: int) -> None:
        """Let packets to this overlay /24 be reported again (its owner was not found)."""
        lib.fn_route_unpend(self.ctx, route)

    def remove_peer(self, slot: int) -> None:
        self._check(lib.fn_peer_remove(self.ctx, slot), "remove peer")

    def set_endpoint(self, slot: int, addr: tuple[str, int]) -> None:
        raw = sockaddr(addr, self.family)
        self._check(lib.fn_peer_endpoint(self.ctx, slot, raw, len(raw)), "set endpoint")

    def set_tx_key(self, slot: int, key: bytes, remote_index: int, cipher: str = AEAD_CHACHA) -> None:
        self._check(lib.fn_peer_tx_key(self.ctx, slot, key, remote_index, CIPHERS[cipher]), "set tx key")

    def stage_tx_key(self, slot: int, key: bytes, remote_index: int, local_index: int,
                     cipher: str = AEAD_CHACHA) -> None:
        """A responder's send key: used once a packet arrives on local_index (the
        initiator has the keys); the previous send key stays in use until then."""
        self._check(lib.fn_peer_tx_key_staged(self.ctx, slot, key, remote_index, local_index, CIPHERS[cipher]),
                    "stage tx key")

    def clear_tx_key(self, slot: int) -> None:
        self._check(lib.fn_peer_tx_clear(self.ctx, slot), "clear tx key")

    def set_relay(self, slot: int, relay_id: int | None) -> None:
        """relay_id: send this peer's data wrapped in type 5 to its endpoint (a relay)
        under this id; None: send directly."""
        self._check(lib.fn_peer_relay(self.ctx, slot, int(relay_id is not None), relay_id or 0), "set relay")

    def set_relay_member(self, slot: int, block: int | None, addr: tuple[str, int] | None = None) -> bool:
        """A lighthouse: the session in `slot` is a node registered from `addr` with
        relay id `block` (its lease block), so the data path forwards its type-5
        packets to other members in C (engine/crypto/csrc/relay.c); None: no longer.
        False when the session is not at `addr` (then Python forwards for it)."""
        if block is None:
            self._check(lib.fn_relay_member(self.ctx, slot, -1, ffi.NULL, 0), "clear relay member")
            return True
        if addr is None or not 0 <= block < RELAY_BLOCKS:
            raise ValueError(f"relay member: block {block} at {addr}")
        raw = sockaddr(addr, self.family)
        rc = lib.fn_relay_member(self.ctx, slot, block, raw, len(raw))
        if rc == -errno.EADDRNOTAVAIL:
            return False
        self._check(rc, "set relay member")
        return True

    def clear_want(self, slot: int) -> None:
        lib.fn_peer_clear_want(self.ctx, slot)

    def add_rx(self, local_index: int, slot: int, key: bytes, cipher: str = AEAD_CHACHA) -> None:
        self._check(lib.fn_rx_add(self.ctx, local_index, slot, key, CIPHERS[cipher]), "add rx key")

    def remove_rx(self, local_index: int) -> None:
        lib.fn_rx_remove(self.ctx, local_index)

    def set_offloads(self, vnet: bool, udp_gso: bool, udp_gro: bool) -> None:
        lib.fn_set_offloads(self.ctx, int(vnet), int(udp_gso), int(udp_gro))

    def set_tun_uso(self, on: bool) -> None:
        lib.fn_set_tun_uso(self.ctx, int(on))

    def set_firewall(self, default_allow: bool, rules: list[tuple[int, int, int, int, int, int]]) -> None:
        """rules: (ip protocol or 0, port low, port high, group bits, network, mask) as ints."""
        n = len(rules)
        cols = list(zip(*rules)) if rules else [(), (), (), (), (), ()]
        self._check(lib.fn_firewall_set(self.ctx, int(default_allow), ffi.new("uint8_t[]", list(cols[0]) or [0]),
                                        ffi.new("uint16_t[]", list(cols[1]) or [0]),
                                        ffi.new("uint16_t[]", list(cols[2]) or [0]),
                                        ffi.new("uint64_t[]", list(cols[3]) or [0]),
                                        ffi.new("uint32_t[]", list(cols[4]) or [0]),
                                        ffi.new("uint32_t[]", list(cols[5]) or [0]), n), "set firewall")

    def set_peer_groups(self, slot: int, bits: int) -> None:
        """The peer's firewall group bits; set before a new session's add_rx, so its
        packets are judged by its certificate's groups (firewall.c fn_peer_groups)."""
        self._check(lib.fn_peer_groups(self.ctx, slot, bits), "set peer groups")

    def set_relay_mode(self, mode: int) -> None:
        """RELAY_ALL: every type-5 packet goes up to be forwarded (CTRL_FORWARD), none
        is opened (a lighthouse). RELAY_OTHERS: those addressed to this node (a data
        or control packet under one of its receive indexes, a handshake with its
        mac1) are received as usual, the rest go up to be forwarded (a node relay).
        RELAY_OFF: every type 5 is received."""
        lib.fn_set_relay_mode(self.ctx, int(mode))

    def set_identity(self, static_public: bytes) -> None:
        """This node's static public key: handshake messages must carry the mac1 it
        keys, or the data path drops them (engine/crypto/csrc/cookie.c)."""
        if len(static_public) != 32:
            raise ValueError("a static public key is 32 bytes")
        lib.fn_set_identity(self.ctx, static_public)

    def set_handshake_limit(self, per_second: int) -> None:
        """Handshake messages per second from everyone together before the data path
        asks for cookies (mac2); 0: always (tests)."""
        lib.fn_set_handshake_limit(self.ctx, per_second)

    @staticmethod
    def set_compact_cipher(on: bool) -> None:
        """Packets under 256 bytes sealed and opened by the compact ChaCha20-Poly1305
        (aead_small.c) or, off, by libsodium like the rest. The output is the same;
        one switch for the whole process."""
        lib.fn_set_compact_cipher(int(on))

    @staticmethod
    def compact_cipher() -> bool:
        return bool(lib.fn_compact_cipher())

    @staticmethod
    def large_cipher() -> bool:
        """Packets of FN_AEAD_LARGE_MIN (576) bytes and more go through OpenSSL's
        libcrypto (aead_large.c, same bytes, faster here); False: OpenSSL's
        ChaCha20-Poly1305 was not found and libsodium takes them."""
        return bool(lib.fn_large_cipher())

    def set_spin(self, on: bool) -> None:
        lib.fn_set_spin(self.ctx, int(on))

    def set_moderation(self, usec: int) -> None:
        """Pause this long after a pass that moved many packets (0: never)."""
        lib.fn_set_moderation(self.ctx, usec)

    def io_stats(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", lib.FN_NIO)
        lib.fn_io_stats(self.ctx, out)
        return {name: out[i] for i, name in IO_COUNTERS.items()}

    def stats(self, slot: int) -> PeerStats:
        s = ffi.new("fn_peer_stats *")
        lib.fn_peer_stats_get(self.ctx, slot, s)
        return PeerStats(s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes, s.rx_dropped,
                         s.last_tx_ns / 1e9 if s.last_tx_ns else None,
                         s.last_rx_ns / 1e9 if s.last_rx_ns else None, s.tx_counter, bool(s.tx_valid))

    def drops(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", lib.FN_NDROPS)
        lib.fn_drops(self.ctx, out)
        return {name: out[i] for i, name in DROP_REASONS.items()}

    def seal_control(self, slot: int, payload: bytes) -> bytes | None:
        """A type-4 control packet (or, for an empty payload, a type-3 keepalive)."""
        out = ffi.new("uint8_t[]", len(payload) + 32)
        n = lib.fn_seal_control(self.ctx, slot, payload, len(payload), out, len(payload) + 32)
        return ffi.buffer(out, n)[:] if n > 0 else None

    def send_controls(self, messages: list[tuple[int, bytes]], fd: int | None = None) -> list[int]:
        """Control messages [(slot, payload)] sealed and sent to each peer's endpoint in
        one C call (one sendmmsg, inside.c fn_send_control) on the socket given to
        start(), or on `fd` (a load generator without the pipeline threads, whose
        simulated nodes have a socket each: tests/harness/simnode.py). Per message 0,
        or -errno: ENOKEY (no send key), EXDEV (the peer is relayed: the caller wraps
        it), EDESTADDRREQ (no endpoint), EMSGSIZE, EINVAL."""
        n = len(messages)
        if not n:
            return []
        fd = self._udp_fd if fd is None else fd
        if fd is None:
            raise OSError(errno.ENOTCONN, "data path: send_controls before start()")
        results = ffi.new("int32_t[]", n)
        rc = lib.fn_send_control(self.ctx, fd, ffi.new("int32_t[]", [slot for slot, _ in messages]),
                                 b"".join([m for _, m in messages]), ffi.new("uint32_t[]", [len(m) for _, m in messages]),
                                 n, results)
        self._check(rc, "send control")
        return ffi.unpack(results, n)

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc < 0:
            raise OSError(-rc, f"data path: {what} failed")

    # ---- the two pipeline threads
    def start(self, tun_fd: int | None, udp_fd: int, on_want: Callable[[list[int]], None],
              on_control: Callable[[list[ControlItem]], None],
              on_fatal: Callable[[str, int], None] | None = None) -> None:
        """tun_fd None: receive side only (a lighthouse has no TUN). on_fatal(thread,
        errno): a pipeline thread met an error it cannot go on from (its socket or TUN
        failed) and ended; called from that thread, not at stop()."""
        self._udp_fd = udp_fd
        self._on_fatal = on_fatal
        self._threads = [threading.Thread(target=self._outside, args=(udp_fd, -1 if tun_fd is None else tun_fd,
                                                                       on_control), name="outside", daemon=True)]
        if tun_fd is not None:
            self._threads.append(threading.Thread(target=self._inside, args=(tun_fd, udp_fd, on_want), name="inside",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stopping = True
        lib.fn_stop(self.ctx)
        for t in self._threads:
            t.join(timeout=2)

    def _ended(self, thread: str, err: int) -> None:
        # A thread that ends on an error while the daemon runs would leave it up but
        # deaf (or mute): the owner is told, so it can say so and exit.
        if not self._stopping and self._on_fatal is not None:
            self._on_fatal(thread, err)

    def _inside(self, tun_fd: int, udp_fd: int, on_want: Callable[[list[int]], None]) -> None:
        events = ffi.new("int32_t[]", 64)
        while True:
            n = lib.fn_inside(self.ctx, tun_fd, udp_fd, 200, events, 64)
            if n < 0:
                self._ended("inside", -n)
                return
            if n > 0:
                on_want([events[i] for i in range(n)])
            elif self._stopping:
                return

    def _outside(self, udp_fd: int, tun_fd: int, on_control: Callable[[list[ControlItem]], None]) -> None:
        ctrl = ffi.new("fn_ctrl[]", 64)
        while True:
            n = lib.fn_outside(self.ctx, udp_fd, tun_fd, 200, ctrl, 64)
            if n < 0:
                self._ended("outside", -n)
                return
            if n > 0:
                on_control([ControlItem(c.kind, c.peer, ffi.buffer(c.data, c.len)[:],
                                        parse_sockaddr(ffi.buffer(c.addr, c.addrlen)[:]))
                            for c in (ctrl[i] for i in range(n))])
            elif self._stopping:
                return
