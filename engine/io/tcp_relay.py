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
from typing import Callable

from flatnet.engine.proto import tcpframe

MAX_QUEUED = 256 << 10  # bytes waiting for TCP: above it datagrams are dropped, as UDP would
CONNECT_TIMEOUT = 5.0


def loopback_of(host: str, port: int) -> tuple[str, int]:
    """Where a shim on this host sends to reach a socket bound to host:port."""
    # the shim's socket is IPv4; a dual-stack socket bound to "::" takes IPv4 too
    return ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host, port)


class Bridge:
    """Datagrams between a loopback UDP socket and a TCP stream. `target` is the only
    UDP address the shim takes datagrams from and sends them to (the data path's
    socket). Counts what it moved and dropped."""

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
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.frames_in = self.frames_out = self.dropped = 0
        self.last_frame_in: float | None = None
        self.closed = False
        self._task: asyncio.Task | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self._from_udp)
        self._task = loop.create_task(self._from_tcp(loop))

    def _from_udp(self) -> None:
        for _ in range(256):  # bounded per wake-up: the loop serves others too
            try:
                data, src = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if src != self.target or not data or len(data) > tcpframe.MAX_FRAME:
                self.dropped += 1
                continue
            if self.writer.transport.get_write_buffer_size() > MAX_QUEUED:
                self.dropped += 1
                continue
            self.writer.write(tcpframe.encode(data))
            self.frames_out += 1

    async def _from_tcp(self, loop: asyncio.AbstractEventLoop) -> None:
        why = "closed by the other side"
        try:
            while True:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    break
                for datagram in self.decoder.feed(chunk):
                    self.frames_in += 1
                    self.last_frame_in = loop.time()
                    if self.admit is not None and not self.admit(self):
                        raise tcpframe.FrameError("tcp_preauth_flood", "too many frames before registering")
                    try:
                        self.sock.sendto(datagram, self.target)
                    except OSError:
                        self.dropped += 1
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
