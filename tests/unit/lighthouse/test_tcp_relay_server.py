"""The lighthouse's TCP relay port, on loopback: what an unauthenticated client can do.
It gets its frames to the lighthouse's UDP socket (one more source address, as with
UDP) and nothing else; bad framing, too many connections, no preamble and no
registration each close the connection and are counted."""
import asyncio
import socket
import struct

import pytest

from flatnet.engine.log import Logger
from flatnet.engine.proto.tcpframe import MAX_FRAME, PREAMBLE, encode
from flatnet.lighthouse import tcp_relay


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def server(registered=lambda a: False, on_gone=lambda a: None):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    shims = set()
    srv = tcp_relay.TcpRelayServer(("127.0.0.1", 0), udp.getsockname(), shims, registered,
                                   Logger("t", stream=open("/dev/null", "w")), on_gone=on_gone)
    await srv.start()
    port = srv.server.sockets[0].getsockname()[1]
    return srv, udp, shims, port


async def closed(reader, within=5.0):
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (ConnectionResetError, asyncio.TimeoutError):
        return True


async def recv_udp(udp, within=2.0):
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(udp, 4096), within)


def test_frames_arrive_as_datagrams_from_the_connections_shim_and_answers_go_back():
    async def go():
        srv, udp, shims, port = await server()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREAMBLE + encode(b"\x01hello") + encode(b"\x04x" * 700))
        d1, src = await recv_udp(udp)
        d2, _ = await recv_udp(udp)
        assert d1 == b"\x01hello" and len(d2) == 1400 and src in shims
        udp.sendto(b"\x02answer", src)
        assert await reader.readexactly(2 + 7) == struct.pack(">H", 7) + b"\x02answer"
        udp.sendto(b"\x02spoof", ("127.0.0.1", 9))  # only the lighthouse's socket speaks to a shim
        writer.close()
        srv.close()
    run(go())


@pytest.mark.parametrize("junk,reason", [(b"GET / HTTP/1.1\r\n\r\n", "tcp_bad_preamble"),
                                         (PREAMBLE + struct.pack(">H", MAX_FRAME + 1), "tcp_bad_frame"),
                                         (PREAMBLE + b"\x00\x00", "tcp_bad_frame")])
def test_bad_framing_closes_the_connection_and_is_counted(junk, reason):
    async def go():
        srv, udp, shims, port = await server()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(junk)
        assert await closed(reader)
        await asyncio.sleep(0.05)
        assert srv.refused[reason] == 1 and not srv.conns and not shims
        srv.close()
    run(go())


def test_connection_limits_and_timeouts(monkeypatch):
    monkeypatch.setattr(tcp_relay, "MAX_PER_IP", 2)
    monkeypatch.setattr(tcp_relay, "HELLO_TIMEOUT", 0.3)
    monkeypatch.setattr(tcp_relay, "AUTH_TIMEOUT", 1.0)
    monkeypatch.setattr(tcp_relay, "CHECK_EVERY", 0.1)

    async def go():
        srv, udp, shims, port = await server()
        silent = await asyncio.open_connection("127.0.0.1", port)         # never sends the preamble
        hello = await asyncio.open_connection("127.0.0.1", port)          # never registers
        hello[1].write(PREAMBLE + encode(b"\x01x"))
        third = await asyncio.open_connection("127.0.0.1", port)          # over MAX_PER_IP
        assert await closed(third[0], 2) and srv.refused["tcp_too_many"] == 1
        assert await closed(silent[0], 2) and srv.refused["tcp_hello_timeout"] == 1
        assert await closed(hello[0], 3) and srv.refused["tcp_unauthenticated"] == 1
        await asyncio.sleep(0.05)
        assert not srv.conns and not shims and not srv.per_ip
        srv.close()
    run(go())


def test_a_registered_connection_stays():
    async def go():
        shim_seen = []
        srv, udp, shims, port = await server(registered=lambda a: a in shim_seen)
        tcp_relay_auth, tcp_relay.AUTH_TIMEOUT = tcp_relay.AUTH_TIMEOUT, 0.5
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PREAMBLE + encode(b"\x01x"))
            _, src = await recv_udp(udp)
            shim_seen.append(src)
            await asyncio.sleep(2.5)
            assert len(srv.conns) == 1
            writer.close()
        finally:
            tcp_relay.AUTH_TIMEOUT = tcp_relay_auth
            srv.close()
    run(go())


def test_an_unregistered_connection_may_send_only_a_few_frames():
    async def go():
        srv, udp, shims, port = await server()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREAMBLE + encode(b"\x01x") * (tcp_relay.PREAUTH_FRAMES + 10))
        assert await closed(reader)
        await asyncio.sleep(0.05)
        assert srv.refused["tcp_preauth_flood"] == 1 and not srv.conns
        got = 0
        while True:
            try:
                await recv_udp(udp, 0.2)
                got += 1
            except asyncio.TimeoutError:
                break
        assert got == tcp_relay.PREAUTH_FRAMES  # and not one more
        srv.close()
    run(go())


def test_a_closed_connections_shim_address_is_reported_gone():
    """The shim's port is free again once its connection closes, and the kernel may
    give it to the next connection, anyone's. The lighthouse must hear that the address
    is gone (registry.address_gone), or the node registered there stays its sender and
    target: the stranger who got the port would relay under that node's id, and get
    what is relayed to it, without a handshake."""
    async def go():
        gone = []
        srv, udp, shims, port = await server(on_gone=gone.append)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREAMBLE + encode(b"\x01x"))
        _, shim = await recv_udp(udp)
        assert gone == []
        writer.close()
        assert await closed(reader)
        await asyncio.sleep(0.1)
        assert gone == [shim] and shim not in shims
        srv.close()
    run(go())
