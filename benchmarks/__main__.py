"""python -m benchmarks {cni,podman5,fastpath,tunnel,lighthouse,gateway,soak,flood,fuzz,relay} [options]"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

SUITES = {
    "cni": "benchmarks.bench_cni",
    "podman5": "benchmarks.bench_podman5",
    "fastpath": "benchmarks.bench_fastpath",
    "tunnel": "benchmarks.bench_tunnel",
    "lighthouse": "benchmarks.bench_lighthouse",
    "gateway": "benchmarks.bench_gateway",
    "soak": "benchmarks.bench_soak",
    "flood": "benchmarks.bench_flood",
    "fuzz": "benchmarks.bench_fuzz",
    "relay": "benchmarks.bench_relay",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suite", choices=sorted(SUITES))
    a, rest = p.parse_known_args(argv)
    # a SIGTERM (timeout, systemd, kill) unwinds like Ctrl-C: every suite's `finally`
    # removes its namespaces, daemons and files
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return importlib.import_module(SUITES[a.suite]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
