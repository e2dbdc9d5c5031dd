"""No packet waits on an fd nobody watches. The two data-path threads hand their fds to
each other as they go idle, park, go up to Python and come back (idle.c); a mistake
there shows as a packet that sits on the TUN or the UDP socket until something else
wakes a thread (a 200 ms timeout, the next packet). These tests mix the patterns that
move the threads through their states, in both directions at once, and bound every
packet's wait: ping-pong with random gaps, bursts and silences, gaps across the
threads' 200 ms timeout, a flood one way while single packets go the other way, and a
flood that fills the UDP send buffer. Each run is bounded in count and time; the
limits are generous against a stall (200 ms), except where a short wait is the point."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import wait_listening

pytestmark = pytest.mark.integration
STALL_MS = 200      # a packet that waited this long was left on an unwatched fd
ECHO, SINK = 7000, 7001


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}s", str(tmp_path_factory.mktemp("lab")), hosts=2)
    try:
        lab.up(containers_per_host=1)
        a, b = lab.hosts
        sh("ping", "-c", "3", "-i", "0.05", b.containers[0]["ip"], ns=a.containers[0]["ns"])  # sessions up
        yield lab
    finally:
        lab.down()


class Probes:
    """udpprobe processes in container namespaces; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, ns: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=REPO)
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.harness.udpprobe", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self.procs.append(p)
        return p

    def server(self, ns: str, mode: str, port: int, seconds: float, *extra: str) -> subprocess.Popen:
        p = self.start(ns, mode, "--port", str(port), "--seconds", str(seconds), *extra)
        wait_listening(ns, port, "udp")
        return p

    @staticmethod
    def result(p: subprocess.Popen, timeout: float = 60) -> dict:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        return json.loads(out)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def probes():
    p = Probes()
    try:
        yield p
    finally:
        p.close()


def containers(lab: Lab) -> tuple[dict, dict]:
    a, b = lab.hosts
    return a.containers[0], b.containers[0]


def echo_both_ways(lab, probes, key: str, rounds: int, mode: str, *args: str) -> None:
    """Each container runs an echo server and a `mode` client to the other at once, for
    `rounds` rounds within 15 s: nothing lost, no answer later than STALL_MS."""
    ca, cb = containers(lab)
    for c in (ca, cb):
        probes.server(c["ns"], "echo", ECHO, 20)
    clients = [probes.start(src["ns"], mode, "--to", f"{dst['ip']}:{ECHO}", "--rounds", str(rounds), *args,
                            "--seconds", "15") for src, dst in ((ca, cb), (cb, ca))]
    for p in clients:
        r = probes.result(p)
        assert r["lost"] == 0 and len(r[key]) == rounds, r["lost"]
        assert max(r[key]) < STALL_MS, sorted(r[key])[-5:]


def test_ping_pong_with_random_gaps_both_ways(lab, probes):
    """Each host sends and answers at once, 0-5 ms apart: the threads park, help and
    ring each other all the time."""
    echo_both_ways(lab, probes, "rtt_ms", 300, "pingpong", "--gaps", "0,5")


def test_bursts_and_silences_both_ways(lab, probes):
    """Bursts of 1-32 datagrams (some above the few a helping thread takes without
    ringing the owner), then 0-60 ms of silence, both ways at once."""
    echo_both_ways(lab, probes, "burst_ms", 80, "bursts")


def test_gaps_across_the_threads_timeout(lab, probes):
    """Silences of 150-260 ms: the threads' 200 ms timeout takes them up to Python (AWAY)
    and back in every state, while packets come."""
    echo_both_ways(lab, probes, "rtt_ms", 14, "pingpong", "--gaps", "150,260")


@pytest.mark.parametrize("flooded", ["a", "b"])
def test_a_flood_one_way_does_not_starve_the_other_way(lab, probes, flooded):
    """A's container floods B's (64-byte datagrams, ~3 s); meanwhile B's container sends
    single datagrams to A's, 0-5 ms apart. On B the outside thread is busy with the flood
    and the inside thread parked: the singles on B's TUN go out only if the busy thread
    tries the TUN after each pass. On A the inside thread is busy and the outside one
    parked: the singles arriving on A's socket likewise. `flooded`: which host receives
    the flood (the singles go the other way)."""
    ca, cb = containers(lab)
    src, dst = (ca, cb) if flooded == "b" else (cb, ca)
    probes.server(dst["ns"], "sink", SINK, 20)                      # the flood's sink
    sink = probes.server(src["ns"], "sink", SINK + 1, 20, "--expect", "400")  # the singles'
    flood = probes.start(src["ns"], "flood", "--to", f"{dst['ip']}:{SINK}", "--count", "2000000",
                         "--seconds", "3")
    time.sleep(0.3)  # the flood is under way
    single = probes.start(dst["ns"], "singles", "--to", f"{src['ip']}:{SINK + 1}", "--count", "400",
                          "--gaps", "0,5", "--seconds", "10")
    assert probes.result(single)["sent"] == 400
    got = probes.result(sink)
    assert probes.result(flood)["sent"] > 10000
    assert got["got"] == 400, got["got"]
    lat = got["lat_ms"]
    assert max(lat) < STALL_MS, sorted(lat)[-5:]


def test_a_full_send_buffer_does_not_hold_up_what_arrives(lab, probes):
    """A's uplink is slow (a 50 Mbit/s token bucket with a deep queue, as a slow NIC
    under a deep qdisc) and A's container floods it: the UDP send buffer fills, and A's
    inside thread waits for room (up to 4 x 10 ms a batch). Single datagrams B's
    container sends to A's meanwhile must not wait for it: the outside thread, parked
    while the inside one was at work, has to read the socket itself. Before the fix the
    median one-way wait was 8 ms (the inside thread's 10 ms waits), after it 0.2 ms,
    as before the parking change."""
    ca, cb = containers(lab)
    a = lab.hosts[0]
    sh("tc", "qdisc", "add", "dev", "ul0", "root", "tbf", "rate", "50mbit", "burst", "64kb", "limit", "64mb",
       ns=a.ns)
    try:
        before = lab.status(a)["drops"]["send_failed"]
        probes.server(cb["ns"], "sink", SINK, 20)
        sink = probes.server(ca["ns"], "sink", SINK + 1, 20, "--expect", "400")
        flood = probes.start(ca["ns"], "flood", "--to", f"{cb['ip']}:{SINK}", "--count", "2000000", "--size",
                             "1400", "--seconds", "3")
        time.sleep(0.5)  # the send buffer is full
        single = probes.start(cb["ns"], "singles", "--to", f"{ca['ip']}:{SINK + 1}", "--count", "400",
                              "--gaps", "0,5", "--seconds", "10")
        assert probes.result(single)["sent"] == 400
        got = probes.result(sink)
        probes.result(flood)
        assert lab.status(a)["drops"]["send_failed"] > before  # the socket was full: sends were refused
    finally:
        sh("tc", "qdisc", "del", "dev", "ul0", "root", ns=a.ns)
    assert got["got"] == 400, got["got"]
    lat = got["lat_ms"]
    assert statistics.median(lat) < 3, (statistics.median(lat), sorted(lat)[-5:])
    assert max(lat) < STALL_MS, sorted(lat)[-5:]
