"""Interleaved A/B of Flatnet builds on one host (docs/performance.md, step 13).

    python3 -m benchmarks.tunnel_ab --rounds 6 --json out.json DIR_A DIR_B [DIR_C ...]

Each DIR is a checkout of this repository with its C module built
(`python3 engine/crypto/_build.py` there). Every build gets its own topology (the
namespaces and engines of `benchmarks tunnel`'s `setup_flatnet`, its default config),
all set up first and kept running; then each round measures every build once with the
harness's own `measure()` (TCPx1, TCPx4, UDP64, pings), the order rotated each round.
On a shared host the load of other work moves a whole `benchmarks tunnel` run more
than a small change does; rounds seconds apart see nearly the same load, so the
ratios are paired per round against the first build. Run it as root, under the
benchmark lock when the host is shared.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile

from benchmarks import bench_tunnel as bt

FIGURES = ("tcp1_gbps", "tcp1_gbit_per_daemon_s", "tcp1_host_s_per_gb", "tcp4_gbps", "tcp4_gbit_per_daemon_s",
           "udp64_rx_kpps", "udp64_daemon_s_per_mpkt", "udp64_host_s_per_mpkt", "rtt_med_us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tunnel_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="checkouts to compare; ratios are against the first")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("-t", "--time", type=int, default=5, help="iperf3 TCP seconds")
    p.add_argument("--udp-time", type=int, default=4)
    p.add_argument("--pings", type=int, default=100)
    p.add_argument("--flatnet-cipher", default="auto", choices=("auto", "chacha20-poly1305", "aes-256-gcm"))
    p.add_argument("--json", help="write every measurement here")
    a = p.parse_args(argv)
    if not 2 <= len(a.dirs) <= 4 or not 1 <= a.rounds <= 50 or not 1 <= a.time <= 60 or not 1 <= a.udp_time <= 60 \
            or not 1 <= a.pings <= 1000:
        raise SystemExit("bounds: 2-4 builds, 1-50 rounds, 1-60 s per test, 1-1000 pings")
    names = [chr(ord("A") + i) for i in range(len(a.dirs))]
    tops: dict[str, bt.Topology] = {}
    targets, devs, labels, works = {}, {}, {}, []
    res: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for name, d in zip(names, a.dirs, strict=True):
            bt.REPO = d  # setup_flatnet runs the engine from REPO and labels it with its commit
            works.append(tempfile.mkdtemp(prefix=f"fnab{name}-"))
            t = tops[name] = bt.Topology(works[-1])
            t.up()
            t.wait_ping(bt.UL_B)
            targets[name], knobs = bt.setup_flatnet(t, a)
            devs[name], labels[name] = knobs["devs"], f"{knobs['label']} ({d}; {knobs['cipher']})"
            print(f"[ab] {name}: {labels[name]}", file=sys.stderr, flush=True)
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                m = bt.measure(tops[name], "flatnet", targets[name], a, devs[name])
                res[name].append(m)
                print(f"[ab] round {r + 1} {name}: " + " ".join(f"{k} {m.get(k) or 0:.2f}" for k in FIGURES)
                      + (f" errors {m['errors']}" if m["errors"] else ""), file=sys.stderr, flush=True)
    finally:
        for t in tops.values():
            t.down()
        for w in works:
            shutil.rmtree(w, ignore_errors=True)
    print("| figure | " + " | ".join(f"{n} median" for n in names) + " | "
          + " | ".join(f"{n}/A paired, median (min-max)" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    for k in FIGURES:
        cols = [f"{statistics.median([m[k] for m in res[n] if m.get(k)] or [0]):.2f}" for n in names]
        for n in names[1:]:
            pr = sorted(y[k] / x[k] for x, y in zip(res["A"], res[n], strict=True) if x.get(k) and y.get(k))
            cols.append(f"{statistics.median(pr):.3f} ({pr[0]:.3f}-{pr[-1]:.3f})" if pr else "-")
        print(f"| {k} | " + " | ".join(cols) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"labels": labels, "rounds": res, "params": vars(a)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
