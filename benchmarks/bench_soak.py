"""Soak: a lighthouse and three hosts in namespaces for N minutes with traffic between
all of them, container churn (CNI ADD/DEL), engine restarts and lighthouse restarts,
bounded in time. At the end: RSS growth and open fds of the engines that ran the whole
time, leaked veths / IPAM entries / namespaces, failed transfers, sessions lost.
Not part of CI: `python -m benchmarks soak --minutes 30`."""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import time

from benchmarks.report import table, write_json
from flatnet.demo import Lab, sh
from tests.harness.traffic import tcp_transfer


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ping(src_ns: str, ip: str) -> bool:
    return sh("ping", "-c", "1", "-W", "2", ip, ns=src_ns, check=False).returncode == 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--json")
    a = p.parse_args(argv)
    rng = random.Random(7)
    prefix = f"fnsoak{os.getpid() % 1000}"
    lab = Lab(prefix, f"/tmp/{prefix}", hosts=3, lighthouse=True)
    stats = {"transfers": 0, "transfer_failures": 0, "pings": 0, "ping_failures": 0, "adds": 0, "dels": 0,
             "engine_restarts": 0, "lighthouse_restarts": 0}
    try:
        lab.up(containers_per_host=1)
        steady = lab.hosts[:2]  # never restarted: their growth is what we measure
        for h in lab.hosts:
            for o in lab.hosts:
                if o is not h:
                    end = time.monotonic() + 15
                    while time.monotonic() < end and not ping(h.containers[0]["ns"], o.containers[0]["ip"]):
                        pass
        time.sleep(5)  # warm-up done: take the baseline
        base = {h.name: (rss_kb(h.pid), fds(h.pid)) for h in steady}
        deadline = time.monotonic() + a.minutes * 60
        next_engine, next_lh = time.monotonic() + 120, time.monotonic() + 300
        extra: dict[str, list[dict]] = {h.name: [] for h in lab.hosts}
        while time.monotonic() < deadline:
            src, dst = rng.sample(lab.hosts, 2)
            stats["pings"] += 1
            if not ping(src.containers[0]["ns"], dst.containers[0]["ip"]):
                stats["ping_failures"] += 1
            if rng.random() < 0.3:
                stats["transfers"] += 1
                try:
                    n, got, sent = tcp_transfer(src.containers[0]["ns"], dst.containers[0]["ns"],
                                                dst.containers[0]["ip"], 1 << 20, port=9100 + rng.randrange(100))
                    if n != 1 << 20 or got != sent:
                        stats["transfer_failures"] += 1
                except (subprocess.SubprocessError, ValueError, OSError):
                    stats["transfer_failures"] += 1
            # churn: a container namespace comes or goes
            h = rng.choice(lab.hosts)
            if extra[h.name] and rng.random() < 0.5:
                c = extra[h.name].pop()
                lab.cni(h, "DEL", c["id"], f"/run/netns/{c['ns']}")
                sh("ip", "netns", "del", c["ns"], check=False)
                stats["dels"] += 1
            elif len(extra[h.name]) < 5:
                extra[h.name].append(lab.add_container(h))
                h.containers.pop()  # keep containers[0] as the traffic endpoint
                stats["adds"] += 1
            now = time.monotonic()
            if now >= next_engine:
                victim = lab.hosts[2]
                lab.stop_engine(victim, signal.SIGKILL if stats["engine_restarts"] % 2 else signal.SIGTERM)
                lab.start_engine(victim)
                lab.wait_engine(victim)
                stats["engine_restarts"] += 1
                next_engine = now + 120
            if now >= next_lh:
                lab.stop_lighthouse()
                lab.start_lighthouse()
                stats["lighthouse_restarts"] += 1
                next_lh = now + 300
            time.sleep(0.5)
        # end: every pair talks, nothing leaked inside the hosts
        lost = sum(1 for h in lab.hosts for o in lab.hosts if o is not h and not any(
            ping(h.containers[0]["ns"], o.containers[0]["ip"]) for _ in range(5)))
        growth = {h.name: {"rss_kb_start": base[h.name][0], "rss_kb_end": rss_kb(h.pid),
                           "rss_growth_pct": round((rss_kb(h.pid) / base[h.name][0] - 1) * 100, 2),
                           "fds_start": base[h.name][1], "fds_end": fds(h.pid)} for h in steady}
        leaks = {}
        for h in lab.hosts:
            for c in extra[h.name]:
                lab.cni(h, "DEL", c["id"], f"/run/netns/{c['ns']}")
                sh("ip", "netns", "del", c["ns"], check=False)
            veths = [l for l in sh("ip", "-o", "link", "show", ns=h.ns).stdout.decode().splitlines() if ": fn-" in l]
            ipam = [n for n in os.listdir(os.path.join(h.dir, "ipam", "flatnet")) if n[0].isdigit()]
            leaks[h.name] = {"veths": len(veths) - len(h.containers), "ipam": len(ipam) - len(h.containers)}
    finally:
        lab.down()
    left_ns = [n for n in sh("ip", "netns", "list").stdout.decode().split() if n.startswith(prefix)]
    result = {"minutes": a.minutes, **stats, "sessions_lost": lost, "growth": growth, "leaks": leaks,
              "namespaces_left": len(left_ns)}
    rows = [[k, v] for k, v in stats.items()] + [["sessions lost at the end", lost],
                                                  ["namespaces left after teardown", len(left_ns)]]
    rows += [[f"{n} RSS growth", f"{g['rss_growth_pct']}% ({g['rss_kb_start']} -> {g['rss_kb_end']} KiB)"]
             for n, g in growth.items()]
    rows += [[f"{n} open fds", f"{g['fds_start']} -> {g['fds_end']}"] for n, g in growth.items()]
    rows += [[f"{n} leaked veths / IPAM entries", f"{l['veths']} / {l['ipam']}"] for n, l in leaks.items()]
    print(table(["soak", "value"], rows))
    write_json(a.json, "soak", result)
    return 0
