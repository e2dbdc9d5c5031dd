"""The pure parts of the tunnel benchmark: the order of systems in each repetition,
what iperf3's JSON and /proc/stat say, and ratios paired per repetition.

No I/O here, so each rule of the comparison is unit-tested
(tests/unit/benchmarks/test_tunnel_stats.py).
"""
from __future__ import annotations

import statistics


def rotation(systems: list[str], rep: int) -> list[str]:
    """The order of the systems in repetition `rep` (0-based): shifted by one each time,
    so no system always runs first (cold caches) or right after the same neighbour."""
    if not systems:
        return []
    k = rep % len(systems)
    return systems[k:] + systems[:k]


def iperf_tcp(doc: dict) -> dict:
    """Throughput the receiver counted, and the sender's retransmits."""
    end = doc.get("end") or {}
    rx, tx = end.get("sum_received"), end.get("sum_sent") or {}
    if not rx or not rx.get("seconds"):
        raise ValueError(f"iperf3 gave no receiver sum: {doc.get('error', 'no end.sum_received')}")
    return {"gbps": rx["bits_per_second"] / 1e9, "bytes": rx["bytes"], "seconds": rx["seconds"],
            "retr": tx.get("retransmits")}


def iperf_udp_received(doc: dict) -> dict:
    """Datagrams the receiving iperf3 read, per second.

    `end.sum_received.bytes` is what the receiver read; divided by the datagram size
    it is the packets that arrived. `end.sum` is not used: iperf3 3.12 fills it with
    the sender's counts, where datagrams lost at the tail count as received."""
    end = doc.get("end") or {}
    rx, tx = end.get("sum_received"), end.get("sum_sent") or {}
    blksize = ((doc.get("start") or {}).get("test_start") or {}).get("blksize")
    if not rx or not rx.get("seconds") or not blksize:
        raise ValueError(f"iperf3 gave no receiver sum: {doc.get('error', 'no end.sum_received')}")
    rx_pkts = rx["bytes"] // blksize
    tx_pkts = tx.get("packets")
    secs = rx["seconds"]
    return {"rx_pkts": rx_pkts, "rx_kpps": rx_pkts / secs / 1e3,
            "tx_kpps": tx_pkts / secs / 1e3 if tx_pkts else None,
            "loss_pct": 100.0 * (1 - rx_pkts / tx_pkts) if tx_pkts else None}


def host_cpu_ticks(proc_stat: str) -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of all CPUs from /proc/stat's `cpu ` line.
    busy = user + nice + system + irq + softirq (guest time is inside user already)."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            f += [0] * (8 - len(f))
            user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
            busy = user + nice + system + irq + softirq
            return busy, steal, busy + steal + idle + iowait
    raise ValueError("no 'cpu ' line in /proc/stat")


def per_unit(amount: float | None, units: float | None) -> float | None:
    return amount / units if amount is not None and units else None


def paired(num: list[dict], den: list[dict], key: str, base: list[dict] | None = None) -> list[float]:
    """num[i][key] / den[i][key] for every repetition i where both were measured.

    With `base` (the underlay's runs), both sides are first taken over the base of the
    same repetition: (num - base) / (den - base), e.g. RTT added by each tunnel."""
    out = []
    for i in range(min(len(num), len(den))):
        x, y = num[i].get(key), den[i].get(key)
        if base is not None:
            b = base[i].get(key) if i < len(base) else None
            if b is None:
                continue
            x, y = (x - b if x is not None else None), (y - b if y is not None else None)
        if x is not None and y:
            out.append(x / y)
    return out


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(min, median, max), or None when nothing was measured."""
    v = [x for x in values if x is not None]
    return (min(v), statistics.median(v), max(v)) if v else None


def median(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt_ratio(values: list[float]) -> str:
    """'3.71x (3.50-3.90)': median of the paired ratios, then min-max; '-' if none."""
    s = spread(values)
    if s is None:
        return "-"
    lo, med, hi = s
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
