"""The TCP relay's I/O: one TCP stream bridged to a data path's UDP socket through a
loopback UDP socket (the shim). The data path sees the stream as one more source
address (the shim's), so handshakes, sessions, rate limits, cookies and the relay
rules work on it unchanged; framing in engine.proto.tcpframe.

    engine data path --UDP--> shim 127.0.0.1:X --TCP frames--> lighthouse shim 127.0.0.1:Y --UDP--> lighthouse

Bridge is used by both sides: TcpRelayClient (engine) and lighthouse.tcp_relay
(the server).
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable

from flatnet.engine.io.udp import UDP_GRO, UDP_SEGMENT
from flatnet.engine.proto import tcpframe

MAX_QUEUED = 256 << 10  # bytes waiting for TCP: above it datagrams are dropped, as UDP would
CONNECT_TIMEOUT = 5.0
RECV_SIZE = 1 << 16     # one UDP GRO buffer: up to 64 KiB of datagrams of one size
READS_PER_WAKEUP = 64   # bounded per wake-up: the loop serves others too
GSO_MAX_SEGS = 64       # the kernel's limit of datagrams in one UDP GSO send
GSO_MAX_BYTES = 65000
SHIM_BUFFER = 1 << 20   # the shim's receive buffer (the kernel doubles it)
_GRO_CMSG = socket.CMSG_SPACE(4)
_LEN = struct.Struct(">H")


def loopback_of(host: str, port: int) -> tuple[str, int]:
    """Where a shim on this host sends to reach a socket bound to host:port."""
    # the shim's socket is IPv4; a dual-stack socket bound to "::" takes IPv4 too
    return ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host, port)


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The datagram size UDP GRO reports for a receive buffer (0: one datagram)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(data) >= 4:
            return max(0, int.from_bytes(data[:4], "little", signed=True))
    return 0


def split_gro(buf: bytes, seg: int) -> list[memoryview]:
    """The datagrams of one receive buffer: back to back, `seg` bytes each, the last
    maybe shorter (seg 0, or not shorter than the buffer: one datagram)."""
    view = memoryview(buf)
    if seg <= 0 or seg >= len(buf):
        return [view]
    return [view[i:i + seg] for i in range(0, len(buf), seg)]


def gso_runs(datagrams: list[bytes], gso: bool) -> list[tuple[list[bytes], int]]:
    """Datagrams in order, grouped for UDP GSO sends: (run, segment size). One run has
    one size, except that its last datagram may be shorter; at most GSO_MAX_SEGS
    datagrams and GSO_MAX_BYTES bytes. Without GSO every datagram is a run of one."""
    runs: list[tuple[list[bytes], int]] = []
    run: list[bytes] = []
    seg = total = 0
    for d in datagrams:
        n = len(d)
        if run and gso and n <= seg and len(run) < GSO_MAX_SEGS and total + n <= GSO_MAX_BYTES \
                and len(run[-1]) == seg:
            run.append(d)
            total += n
            continue
        if run:
            runs.append((run, seg))
        run, seg, total = [d], n, n
    if run:
        runs.append((run, seg))
    return runs


class Bridge:
    """Datagrams between a loopback UDP socket and a TCP stream. `target` is the only
    UDP address the shim takes datagrams from and sends them to (the data path's
    socket). Counts what it moved and dropped.

    Per wake-up, not per datagram: the shim receives with UDP GRO (the data path sends
    a run of datagrams to it as one UDP GSO send, which arrives as one buffer), the
    frames of a wake-up go to TCP in one write, and the datagrams of one TCP read go
    to the data path in UDP GSO sends of one size each. Each datagram was a Python
    round trip and a syscall before (about 30,000 a second in all)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int],
                 server_side: bool, on_closed: Callable[["Bridge", str], None],
                 admit: Callable[["Bridge"], bool] | None = None) -> None:
        """admit(bridge), asked for every frame that came in (its count is
        frames_in): False closes the connection ("tcp_preauth_flood")."""
        self.reader, self.writer, self.target = reader, writer, target
        self.decoder = tcpframe.Decoder(expect_preamble=server_side)
        self.on_closed = on_closed
        self.admit = admit
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        # room for the bursts a data path sends between two wake-ups of this loop: with
        # the default (208 KiB) a relayed TCP stream lost ~5% of its packets here
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SHIM_BUFFER)
        self.gso = self.gro = True
        try:
            self.sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        except OSError:  # an old kernel: one datagram per receive
            self.gro = False
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.frames_in = self.frames_out = self.dropped = 0
        self.last_frame_in: float | None = None
        self.closed = False
        self._task: asyncio.Task | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self._from_udp)
        self._task = loop.create_task(self._from_tcp(loop))

    def _from_udp(self) -> None:
        out: list[bytes | memoryview] = []
        queued = self.writer.transport.get_write_buffer_size()
        for _ in range(READS_PER_WAKEUP):
            try:
                data, anc, flags, src = self.sock.recvmsg(RECV_SIZE, _GRO_CMSG)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if src != self.target or not data or flags & socket.MSG_TRUNC:
                self.dropped += 1
                continue
            for datagram in split_gro(data, gro_segment_size(anc)):
                n = len(datagram)
                if n > tcpframe.MAX_FRAME or queued > MAX_QUEUED:
                    self.dropped += 1
                    continue
                out += (_LEN.pack(n), datagram)
                queued += 2 + n
                self.frames_out += 1
        if out:
            self.writer.write(b"".join(out))

    def _to_udp(self, datagrams: list[bytes]) -> None:
        for run, seg in gso_runs(datagrams, self.gso):
            if len(run) > 1:
                try:
                    self.sock.sendmsg([b"".join(run)], [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", seg))],
                                      0, self.target)
                    continue
                except (BlockingIOError, InterruptedError):
                    self.dropped += len(run)  # the socket buffer is full: as UDP would
                    continue
                except OSError:  # no UDP GSO here: one at a time from now on
                    self.gso = False
            for datagram in run:
                try:
                    self.sock.sendto(datagram, self.target)
                except OSError:
                    self.dropped += 1

    async def _from_tcp(self, loop: asyncio.AbstractEventLoop) -> None:
        why = "closed by the other side"
        try:
            while True:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    break
                datagrams = self.decoder.feed(chunk)
                if not datagrams:
                    continue
                self.last_frame_in = loop.time()
                for i in range(len(datagrams)):
                    self.frames_in += 1
                    if self.admit is not None and not self.admit(self):
                        self._to_udp(datagrams[:i])  # what came before it was admitted
                        raise tcpframe.FrameError("tcp_preauth_flood", "too many frames before registering")
                self._to_udp(datagrams)
        except tcpframe.FrameError as exc:
            why = exc.reason
        except (OSError, asyncio.IncompleteReadError) as exc:
            why = f"connection error: {exc}"
        except asyncio.CancelledError:
            why = "closed"
        self.close(why)

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass
        self.sock.close()
        self.writer.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self.on_closed(self, why)


async def connect(server: tuple[str, int], engine_udp: tuple[str, int],
                  on_closed: Callable[[Bridge, str], None]) -> Bridge:
    """The engine's side: a TCP connection to a relay, its preamble sent, bridged to
    the engine's UDP socket (engine_udp). Raises OSError when it cannot connect."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*server), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:
        raise OSError(110, f"TCP relay {server[0]}:{server[1]}: no answer in {CONNECT_TIMEOUT:.0f} s") from None
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(tcpframe.PREAMBLE)
    bridge = Bridge(reader, writer, engine_udp, server_side=False, on_closed=on_closed)
    bridge.start(loop)
    return bridge
