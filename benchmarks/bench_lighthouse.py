"""Lighthouse: registry queries per second and memory with 10,000 simulated nodes (the
sans-IO registry on one core, each query also producing its punch), and the time from
the first packet to a new peer until its delivery, direct and relayed (a lab in
namespaces)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import tempfile
import time
import tracemalloc

from benchmarks.report import table, write_json
from lighthouse import wire
from lighthouse.leases import LeaseStore
from lighthouse.registry import Registry


def registry_bench(nodes: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        reg = Registry(LeaseStore(os.path.join(d, "l.db"), ipaddress.IPv4Network("10.0.0.0/8")))
        t0 = time.perf_counter()
        for i in range(nodes):
            reg.handle(f"node-{i}", b"c" * 180, wire.encode("register", endpoints=[(f"172.16.{i % 250}.2", 4787)]),
                       (f"198.51.{i // 250 % 256}.{i % 250}", 40000 + i % 20000), 0.0)
        reg_rate = nodes / (time.perf_counter() - t0)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        queries = [wire.encode("query", addr=str(ipaddress.IPv4Address(0x0A000000 + ((1 + i % nodes) << 8) + 5)))
                   for i in range(4096)]
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            # a different asker for each query, the virtual clock a second further each
            # pass: the per-node query and punch limits (registry.py) are not what is measured
            now = 1.0 + n / len(queries)
            for j, q in enumerate(queries):
                reg.handle(f"node-{(n + j) % nodes}", b"", q, ("198.51.0.7", 40007), now)
            n += len(queries)
        rate = n / (time.perf_counter() - t0)
    return {"nodes": nodes, "register_per_s": reg_rate, "queries_per_s": rate,
            "memory_mb": current / 1e6, "peak_memory_mb": peak / 1e6,
            "process_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def first_packet_bench() -> dict:
    from flatnet_cli.lab import Lab, sh
    out = {}
    for label, nat in (("direct", {}), ("relayed", {1: "cone", 2: "random"})):
        lab = Lab(f"fnbl{os.getpid() % 1000}", tempfile.mkdtemp(prefix="fnbl-"), hosts=2, lighthouse=True, nat=nat)
        try:
            lab.up(containers_per_host=1)
            a, b = lab.hosts
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20:
                if sh("ping", "-c", "1", "-W", "1", "-i", "0.2", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                      check=False).returncode == 0:
                    break
            out[label] = time.monotonic() - t0
        finally:
            lab.down()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks lighthouse", description=__doc__)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--no-lab", action="store_true", help="skip the first-packet timing (needs root)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    r = registry_bench(a.nodes, a.seconds)
    print(table(["nodes", "registers/s", "queries/s (one core)", "registry memory MB", "process RSS MB"],
                [[r["nodes"], f"{r['register_per_s']:.0f}", f"{r['queries_per_s']:.0f}", f"{r['memory_mb']:.1f}",
                  f"{r['process_rss_mb']:.0f}"]]))
    print("goal: >= 20,000 queries/s on one core, < 100 MB")
    if not a.no_lab and os.geteuid() == 0:
        fp = first_packet_bench()
        r["first_packet_s"] = fp
        print("\n" + table(["path", "first packet to delivery (s)"], [[k, f"{v:.2f}"] for k, v in fp.items()]))
        print("(includes the lighthouse query, the punch, the handshake, and for relayed the 3 s direct attempt)")
    write_json(a.json, "lighthouse", r)
    return 0
