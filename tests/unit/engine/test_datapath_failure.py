"""A pipeline thread that meets an error it cannot go on from (its socket or TUN
failed) must not leave the daemon up but deaf: the daemon is told, logs why, stops,
and exits 1 (systemd restarts it)."""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import io
import json
import os
import socket
import time

from flatnet.engine.datapath import DataPath, exit_on_failure
from flatnet.engine.log import Logger


def test_a_receive_thread_that_fails_stops_the_daemon_with_a_reason():
    async def main() -> tuple[list[OSError], bool]:
        loop = asyncio.get_running_loop()
        out = io.StringIO()
        log = Logger("engine", stream=out, format="json")
        stop = asyncio.Event()
        failures: list[OSError] = []
        d = DataPath(ipaddress.IPv4Network("10.87.0.0/16"), 1420)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        d.start(None, sock.fileno(), lambda slots: None, lambda items: None,
                exit_on_failure(loop, log, stop, failures))
        # the socket's descriptor now names a file that is not a socket: recvmmsg fails
        # with ENOTSOCK, which no retry fixes
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, sock.fileno())
        os.close(null)
        try:
            await asyncio.wait_for(stop.wait(), 5)
        finally:
            d.stop()
            sock.close()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        logged = any(e.get("event") == "data_path_failed" and e.get("thread") == "outside" for e in lines)
        return failures, logged

    failures, logged = asyncio.run(main())
    assert [f.errno for f in failures] == [errno.ENOTSOCK]
    assert "the outside thread stopped" in str(failures[0])
    assert logged


def test_stop_is_not_a_failure():
    failures: list[OSError] = []
    d = DataPath(ipaddress.IPv4Network("10.87.0.0/16"), 1420)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    d.start(None, sock.fileno(), lambda slots: None, lambda items: None,
            lambda thread, err: failures.append(OSError(err, thread)))
    d.stop()
    sock.close()
    assert failures == []


def test_a_queued_icmp_error_does_not_stop_the_daemon():
    """An error a socket reports once ends the receive pass, not the thread (nor the
    daemon): the next datagram is read as usual. Here ECONNREFUSED, from an ICMP port
    unreachable on a connected socket: the engine's own socket is not connected and
    does not ask for ICMP errors, so this is only the easiest one to make."""
    failures: list[OSError] = []
    d = DataPath(ipaddress.IPv4Network("10.87.0.0/16"), 1420)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    sock.connect(("127.0.0.1", port))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    d.start(None, sock.fileno(), lambda slots: None, lambda items: None,
            lambda thread, err: failures.append(OSError(err, thread)))
    try:
        sock.send(b"to nobody")   # the kernel answers with ICMP port unreachable
        time.sleep(0.3)
        sock.connect(peer.getsockname())
        before = d.io_stats()["udp_receives"]
        peer.sendto(b"\x03junk", sock.getsockname())
        deadline = time.monotonic() + 3
        while d.io_stats()["udp_receives"] == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.io_stats()["udp_receives"] > before
        assert failures == []
    finally:
        d.stop()
        for s in (sock, peer):
            s.close()
