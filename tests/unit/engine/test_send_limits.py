"""Limits of the C data path that only long uptimes or a short-of-memory kernel reach:
a token bucket quiet for days, and a send the kernel keeps refusing with ENOBUFS."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from flatnet.engine.crypto import lib

NS = 1_000_000_000
DAY = 86_400 * NS
RELAY_RATE, RELAY_BURST = 20_000, 2_000  # internal.h RELAY_PER_SENDER, RELAY_BURST
REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("quiet", [1 * NS, 5 * DAY, 6 * DAY, 60 * DAY, 400 * DAY])
def test_a_bucket_quiet_for_days_is_full(quiet):
    """A relay's budget for a sender that forwarded nothing for 5.3 days or more: the
    refill multiplied the quiet time by the rate and overflowed 64 bits, so the bucket
    came out empty (or negative) and that node's relayed traffic was dropped for minutes."""
    start = 1_000 * NS
    assert lib.fn_rate_refill(0, start, start + quiet, RELAY_RATE, RELAY_BURST) == RELAY_BURST * 1000


def test_a_bucket_refills_at_its_rate_and_never_past_its_burst():
    assert lib.fn_rate_refill(0, 0, NS // 1000, RELAY_RATE, RELAY_BURST) == 20_000 // 1000 * 1000
    assert lib.fn_rate_refill(5_000, 10, 10, RELAY_RATE, RELAY_BURST) == 5_000
    assert lib.fn_rate_refill(RELAY_BURST * 1000 - 1, 0, NS, RELAY_RATE, RELAY_BURST) == RELAY_BURST * 1000
    # a clock that seems to go back adds nothing
    assert lib.fn_rate_refill(7_000, 10 * NS, 9 * NS, RELAY_RATE, RELAY_BURST) == 7_000
    # a rate of 0 (a handshake limit set to nothing) refills nothing and does not divide by it
    assert lib.fn_rate_refill(3_000, 0, 5 * DAY, 0, RELAY_BURST) == 3_000


PRELOAD_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
/* every sendmmsg fails as under memory pressure; the count goes to FN_TEST_CALLS */
static int calls;
int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags) {
    (void)fd; (void)v; (void)n; (void)flags;
    calls++;
    errno = ENOBUFS;
    return -1;
}
int fn_test_sendmmsg_calls(void) { return calls; }
"""

CHILD = textwrap.dedent("""
    import ctypes, ipaddress, json, socket, sys
    from flatnet.engine.datapath import DataPath
    d = DataPath(ipaddress.IPv4Network("10.87.0.0/16"), 1420, max_peers=4)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    d.set_peer(1, None)
    d.set_endpoint(1, peer.getsockname())
    d.set_tx_key(1, bytes(range(32)), 0x1111)
    d._udp_fd = udp.fileno()
    before = d.drops()["send_failed"]
    rc = d.send_controls([(1, b"lease"), (1, b"punch")])
    calls = ctypes.CDLL(sys.argv[1]).fn_test_sendmmsg_calls()
    print(json.dumps([rc, d.drops()["send_failed"] - before, calls]))
""")


def test_a_send_refused_with_enobufs_is_dropped_not_retried_forever(tmp_path):
    """ENOBUFS (no memory for the packet): poll() says the socket is writable at once,
    so the old wait-and-retry loop called sendmmsg again and again for as long as the
    shortage lasted, with the send lock held: the engine's thread hung. Now a flush
    waits a bounded number of times, then drops the message and counts it."""
    so = tmp_path / "enobufs.so"
    src = tmp_path / "enobufs.c"
    src.write_text(PRELOAD_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], check=True)
    env = dict(os.environ, LD_PRELOAD=str(so), PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", CHILD, str(so)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    rc, dropped, calls = json.loads(done.stdout)
    assert rc == [0, 0]          # both sealed and handed to sendmmsg
    assert dropped == 2          # ... which the kernel refused: both counted as dropped
    assert 2 <= calls <= 12      # a bounded number of tries, not a spin

