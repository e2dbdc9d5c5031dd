"""The harness raises the socket buffers of a daemon that sets none (Debian's
wireguard-go) from outside, through a duplicate of its socket (pidfd_getfd)."""
import os
import subprocess
import sys

import pytest

from benchmarks.bench_tunnel import udp_buffers

CHILD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # not UDP: left alone
print(s.getsockname()[1], flush=True)
sys.stdin.readline()  # the test has changed the buffers
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd and SO_*BUFFORCE need root")
def test_forced_buffers_reach_the_daemons_own_socket():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        before = udp_buffers(child.pid)
        assert [b["port"] for b in before] == [port]
        after = udp_buffers(child.pid, force=3 << 20)
        assert after[0]["rcvbuf"] == after[0]["sndbuf"] == 6 << 20  # the kernel reports double
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == [str(6 << 20), str(6 << 20)]
    finally:
        child.kill()
        child.wait(timeout=5)
