"""Little traffic, few wake-ups: with `[tun] spin` on (the default) one engine thread
serves both directions while the other stays parked, so a ping wakes one thread per
host; with it off each thread waits on its own fd (two wake-ups) and traffic is the
same. Counted from the threads' voluntary context switches in /proc."""
import os

import pytest

from flatnet_cli.lab import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer

pytestmark = pytest.mark.integration
PINGS = 100


def switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def wakeups_per_ping(lab: Lab) -> list[float]:
    a, b = lab.hosts
    sh("ping", "-c", "5", "-i", "0.05", b.containers[0]["ip"], ns=a.containers[0]["ns"])  # sessions up
    before = [switches(h.pid) for h in lab.hosts]
    sh("ping", "-c", str(PINGS), "-i", "0.02", "-W", "2", b.containers[0]["ip"], ns=a.containers[0]["ns"])
    return [(switches(h.pid) - n) / PINGS for h, n in zip(lab.hosts, before)]


@pytest.mark.parametrize("spin", [True, False], ids=["spin", "no-spin"])
def test_a_ping_wakes_one_thread_per_host(tmp_path, spin):
    lab = Lab(f"{RUN_PREFIX}i", str(tmp_path / "lab"), hosts=2, spin=spin)
    try:
        lab.up(containers_per_host=1)
        per_ping = wakeups_per_ping(lab)
        if spin:
            assert all(w < 1.5 for w in per_ping), per_ping   # measured 1.1
        else:
            assert all(w > 1.8 for w in per_ping), per_ping   # measured 2.1: the count can tell
        a, b = lab.hosts
        n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 5 << 20)
        assert n == 5 << 20 and got == sent
    finally:
        lab.down()
