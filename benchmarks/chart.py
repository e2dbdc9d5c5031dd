"""A PNG chart of the tunnel benchmark (matplotlib): throughput, efficiency, small
packets and latency per system, side by side."""
from __future__ import annotations

import json
import sys


def bar_chart(path: str, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    systems = [s for s in summary if s != "underlay"]
    panels = [("tcp1_gbps", "TCP 1 stream (Gbit/s)"), ("cpu_s_per_gb", "daemon CPU s per GB (lower is better)"),
              ("udp64_rx_kpps", "UDP 64 B received (kpps)"), ("rtt_med_us", "ping RTT median (us, lower is better)")]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    colors = ["#1565c0" if s == "flatnet" else "#9e9e9e" for s in systems]
    for ax, (key, title) in zip(axes, panels):
        values = [summary[s][key] or 0 for s in systems]
        ax.bar(systems, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("Flatnet vs Nebula vs wireguard-go (python -m benchmarks tunnel, same run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":  # python -m benchmarks.chart results.json out.png
    with open(sys.argv[1]) as f:
        bar_chart(sys.argv[2], json.load(f)["results"]["summary"])
