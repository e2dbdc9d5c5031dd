"""The lighthouse's TCP relay port ([relay] tcp_port, 443 by default): hosts whose
network lets no UDP through reach the lighthouse, and through it their peers, over
TCP (engine.io.tcp_relay bridges each connection to the lighthouse's UDP socket).

An unauthenticated client gets nothing forwarded: each connection is only a new
source address (its loopback shim) to the lighthouse's data path. Relaying needs a
registered node at that address, and registering needs a Noise handshake. Limits,
because anyone can open a connection:
- at most MAX_CONNECTIONS connections, MAX_PER_IP from one address (more: closed);
- the preamble within HELLO_TIMEOUT, else closed;
- a node registered at the connection's address within AUTH_TIMEOUT, else closed;
- no frame for IDLE_TIMEOUT (engines register every 10 s): closed;
- at most PREAUTH_FRAMES frames before a node is registered at the connection's
  address (a handshake and a register take 3; cookie retries a few more): each frame
  costs the lighthouse's Python loop, unlike a UDP datagram, which its C data path
  drops cheaply;
- frames bounded by tcpframe.MAX_FRAME; a framing error closes the connection;
- a closed connection's shim address is gone (on_gone): the node registered there
  is no longer relayed from or to it, so whoever gets the port next is a stranger.
Every refusal is counted (status: tcp_relay.refused).
"""
from __future__ import annotations

import asyncio
import collections
import socket
from typing import Callable

from flatnet.engine.io import tcp_relay
from flatnet.engine.log import Logger

MAX_CONNECTIONS = 1024
MAX_PER_IP = 8
HELLO_TIMEOUT = 5.0
AUTH_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0
PREAUTH_FRAMES = 32
CHECK_EVERY = 1.0


class TcpRelayServer:
    def __init__(self, listen: tuple[str, int], lighthouse_udp: tuple[str, int], shim_addrs: set,
                 registered_at: Callable[[tuple[str, int]], bool], log: Logger,
                 on_gone: Callable[[tuple[str, int]], None]) -> None:
        """shim_addrs: the Device's set of loopback addresses it may learn as endpoints
        (each connection's shim while it is open); registered_at(addr): a node is
        registered at that address; on_gone(addr): a connection closed, its shim address
        is free for the next connection (registry.address_gone)."""
        self.listen = listen
        self.target = lighthouse_udp
        self.shim_addrs = shim_addrs
        self.registered_at = registered_at
        self.on_gone = on_gone
        self.log = log
        self.conns: dict[tcp_relay.Bridge, tuple[str, float]] = {}  # bridge -> (client ip, opened at)
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.accepted = 0
        self.closed_frames = [0, 0, 0]  # frames in, out, dropped of connections already closed
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        host, port = self.listen
        # like the UDP socket (engine.io.udp): "::" is dual-stack. asyncio sets IPV6_V6ONLY
        # on the sockets it makes, which would refuse every IPv4 client, so the socket is ours
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(host != "::"))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.server = await asyncio.start_server(self._accept, sock=sock, backlog=128)
        asyncio.get_running_loop().create_task(self._watch())

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for bridge in list(self.conns):
            bridge.close("lighthouse stopping")

    def status(self) -> dict:
        return {"listen": f"{self.listen[0]}:{self.listen[1]}", "connections": len(self.conns),
                "accepted": self.accepted, "refused": dict(self.refused),
                "frames_in": self.closed_frames[0] + sum(b.frames_in for b in self.conns),
                "frames_out": self.closed_frames[1] + sum(b.frames_out for b in self.conns),
                "dropped": self.closed_frames[2] + sum(b.dropped for b in self.conns)}

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = peer[0]
        if len(self.conns) >= MAX_CONNECTIONS or self.per_ip[ip] >= MAX_PER_IP:
            self.refused["tcp_too_many"] += 1
            writer.close()
            return
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        bridge = tcp_relay.Bridge(reader, writer, self.target, server_side=True, on_closed=self._closed,
                                  admit=lambda b: b.frames_in <= PREAUTH_FRAMES or self.registered_at(b.addr))
        self.conns[bridge] = (ip, loop.time())
        self.per_ip[ip] += 1
        self.shim_addrs.add(bridge.addr)
        self.accepted += 1
        bridge.start(loop)
        self.log.info("tcp_relay_open", client=f"{peer[0]}:{peer[1]}", shim=f"{bridge.addr[0]}:{bridge.addr[1]}")

    def _closed(self, bridge: tcp_relay.Bridge, why: str) -> None:
        ip, _ = self.conns.pop(bridge, ("?", 0.0))
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        self.shim_addrs.discard(bridge.addr)
        # the shim's port is free now: the next connection, anyone's, may get it, and
        # must not be taken for the node registered here (its sender and target)
        self.on_gone(bridge.addr)
        self.closed_frames[0] += bridge.frames_in
        self.closed_frames[1] += bridge.frames_out
        self.closed_frames[2] += bridge.dropped
        if why.startswith("tcp_"):
            self.refused[why] += 1
        self.log.info("tcp_relay_closed", client=ip, reason=why, frames_in=bridge.frames_in,
                      frames_out=bridge.frames_out)

    async def _watch(self) -> None:
        """Timeouts: preamble, registration, idleness (bounded: one pass a second)."""
        loop = asyncio.get_running_loop()
        while self.server is not None and self.server.is_serving():
            await asyncio.sleep(CHECK_EVERY)
            now = loop.time()
            for bridge, (_ip, opened) in list(self.conns.items()):
                age, last = now - opened, bridge.last_frame_in
                if bridge.decoder.awaiting_preamble and age >= HELLO_TIMEOUT:
                    bridge.close("tcp_hello_timeout")
                elif age >= AUTH_TIMEOUT and not self.registered_at(bridge.addr):
                    bridge.close("tcp_unauthenticated")
                elif last is not None and now - last >= IDLE_TIMEOUT:
                    bridge.close("tcp_idle")
