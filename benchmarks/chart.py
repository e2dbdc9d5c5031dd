"""A PNG chart of the tunnel benchmark (matplotlib): throughput, efficiency, host CPU,
small packets and latency per system, side by side (medians of the repetitions)."""
from __future__ import annotations

import json
import sys

PANELS = [("tcp1_gbps", "TCP 1 stream (Gbit/s)"), ("tcp1_gbit_per_daemon_s", "Gbit per daemon CPU-s"),
          ("tcp1_host_s_per_gb", "host CPU-s per GB, TCPx1\n(busy + steal, lower is better)"),
          ("udp64_rx_kpps", "UDP 64 B received (kpps)"), ("rtt_med_us", "ping RTT median\n(us, lower is better)")]


def bar_chart(path: str, summary: dict, labels: dict | None = None, subject: str = "flatnet",
              runs: dict | None = None) -> None:
    """Bars are medians; with `runs` (per repetition), whiskers span min to max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = labels or {}
    systems = [s for s in summary if s != "underlay"]
    names = [labels.get(s, s).replace(" (", "\n(") for s in systems]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 4.6))
    colors = ["#1565c0" if s == subject else "#9e9e9e" for s in systems]
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        values = [summary[s].get(key) or 0 for s in systems]
        err = None
        if runs:
            reps = [[r[key] for r in runs.get(s, []) if r.get(key) is not None] or [v]
                    for s, v in zip(systems, values, strict=True)]
            err = [[v - min(x) for v, x in zip(values, reps, strict=True)],
                   [max(x) - v for v, x in zip(values, reps, strict=True)]]
        ax.bar(range(len(systems)), values, color=colors, yerr=err, capsize=3, ecolor="#424242")
        if key == "tcp1_gbps" and summary.get("underlay", {}).get(key):
            title += f"\nunderlay: {summary['underlay'][key]:.1f}"
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(names, fontsize=6.5, rotation=60, ha="right")
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            top = v + (err[1][i] if err else 0)  # above the whisker
            ax.text(i, top, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle("Tunnels tuned as their docs advise, one run (python -m benchmarks tunnel): medians", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":  # python -m benchmarks.chart results.json out.png
    with open(sys.argv[1]) as f:
        doc = json.load(f)["results"]
    bar_chart(sys.argv[2], doc["summary"], doc.get("labels"), doc.get("params", {}).get("subject", "flatnet"),
              doc.get("runs"))
