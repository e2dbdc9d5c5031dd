"""The DNS server on the bridge gateway address (UDP and TCP port 53): answers overlay
names through engine.proto.dnsanswer, forwards everything else to the host's
resolvers.

Bounds: at most MAX_OUTSTANDING forwarded queries at once (more are dropped and
counted: the client retries), each upstream tried for UPSTREAM_TIMEOUT seconds; at
most MAX_TCP client connections, each idle for at most TCP_IDLE seconds and serving at
most TCP_QUERIES queries. A forwarded query goes out from a fresh socket (a random
source port and a random id), and only an answer with that id from that upstream
counts. Only clients inside the overlay are served (`clients`): the server is no open
resolver for whatever else can reach the bridge address.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import struct

from flatnet.engine.proto.dnsanswer import ANSWER, FORWARD, MAX_QUERY, Responder, formerr

MAX_OUTSTANDING = 256
UPSTREAM_TIMEOUT = 2.0
MAX_TCP = 64
TCP_IDLE = 10.0
TCP_QUERIES = 100


def read_resolv_conf(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's IPv4 nameservers (at most 3, as the C library reads). A loopback stub
    such as systemd-resolved's 127.0.0.53 works: the engine runs on the host."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    out.append((parts[1], 53))
    except OSError:
        pass
    return out[:3]


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, want_id: int, done: asyncio.Future) -> None:
        self.want_id, self.done = want_id, done

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # connected socket: only the upstream
        if len(data) >= 12 and int.from_bytes(data[:2], "big") == self.want_id and data[2] & 0x80 \
                and not self.done.done():
            self.done.set_result(data)


class DnsServer:
    def __init__(self, responder: Responder, upstreams: list[tuple[str, int]], log,  # noqa: ANN001
                 clients: ipaddress.IPv4Network | None = None) -> None:
        self.responder = responder
        self.clients = clients
        self.upstreams = upstreams
        self.log = log
        self.outstanding = 0
        self.tcp_clients = 0
        self.counters = {"udp_queries": 0, "tcp_queries": 0, "forward_dropped": 0, "upstream_timeouts": 0,
                         "upstream_failed": 0, "refused_clients": 0}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._rng = random.SystemRandom()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int = 53) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class _Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple) -> None:
                if not server._allowed(addr):
                    return
                server.counters["udp_queries"] += 1
                server._udp_query(data, addr)

        self._udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(host, port), reuse_port=False)
        self._tcp = await asyncio.start_server(self._tcp_client, host, port, reuse_address=True)

    def _allowed(self, addr: tuple | None) -> bool:
        try:
            ok = self.clients is None or (addr is not None and ipaddress.IPv4Address(addr[0]) in self.clients)
        except ValueError:
            ok = False
        if not ok:
            self.counters["refused_clients"] += 1
        return ok

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    # ---- one query
    def decide(self, wire: bytes, tcp: bool) -> tuple[bool, bytes | None]:
        """(forward?, answer): the responder's decision; never raises."""
        try:
            action, response = self.responder.handle(wire, tcp)
        except Exception:  # noqa: BLE001  a dnspython path we did not foresee: never a traceback
            self.responder.counters["formerr"] += 1
            return False, formerr(wire)
        if action == ANSWER:
            return False, response
        if action != FORWARD:
            return False, None
        if self.outstanding >= MAX_OUTSTANDING or not self.upstreams:
            self.counters["forward_dropped"] += 1
            return False, None
        return True, None

    async def forward(self, wire: bytes, tcp: bool) -> bytes | None:
        self.outstanding += 1
        try:
            return await self._forward(wire, tcp)
        finally:
            self.outstanding -= 1

    async def _forward(self, wire: bytes, tcp: bool) -> bytes | None:
        client_id = wire[:2]
        for host, port in self.upstreams:
            qid = self._rng.randrange(65536)
            query = qid.to_bytes(2, "big") + wire[2:]
            try:
                data = await asyncio.wait_for(self._ask_tcp(host, port, query, qid) if tcp
                                              else self._ask_udp(host, port, query, qid), UPSTREAM_TIMEOUT)
            except asyncio.TimeoutError:
                self.counters["upstream_timeouts"] += 1
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.counters["upstream_failed"] += 1
                continue
            return client_id + data[2:]
        return None

    async def _ask_udp(self, host: str, port: int, query: bytes, qid: int) -> bytes:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Upstream(qid, done), remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await done
        finally:
            transport.close()

    async def _ask_tcp(self, host: str, port: int, query: bytes, qid: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(size)
            if len(data) < 12 or int.from_bytes(data[:2], "big") != qid:
                raise ValueError("upstream answer does not match")
            return data
        finally:
            writer.close()

    # ---- transports
    def _udp_query(self, data: bytes, addr: tuple) -> None:
        """Answers go out at once; only a forwarded query (at most MAX_OUTSTANDING) is a task."""
        go, out = self.decide(data, tcp=False)
        if out is not None and self._udp is not None:
            self._udp.sendto(out, addr)
        if not go:
            return

        async def run() -> None:
            answer = await self.forward(data, tcp=False)
            if answer is not None and self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(answer, addr)
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)  # a task nobody holds may be collected before it ends
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_clients >= MAX_TCP or not self._allowed(writer.get_extra_info("peername")):
            writer.close()
            return
        self.tcp_clients += 1
        try:
            for _ in range(TCP_QUERIES):
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                size = struct.unpack("!H", head)[0]
                if size > MAX_QUERY or size == 0:
                    break  # nothing a client needs; the stream cannot be resynchronised
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                self.counters["tcp_queries"] += 1
                go, out = self.decide(data, tcp=True)
                if go:
                    out = await self.forward(data, tcp=True)
                if out is None:
                    continue
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.tcp_clients -= 1
            writer.close()
