"""Legitimate traffic during a flood of junk handshake initiations (issue 13).

Two hosts in namespaces (flatnet.demo), one container each. A sender in the lab's
underlay namespace owns 254 addresses (a `local` route) with --ports sockets each and
sends --rate junk initiations a second to host B's engine for --seconds, then stops.
Each junk message carries a valid mac1 for B's key (the worst case: the attacker knows
B's public key), so B's data path must rate-limit and answer with cookies; with
--junk random the mac1 is junk too. Measured with and without the flood, between the
two containers: ping loss and mean RTT (every 20 ms), TCP throughput (--mbytes),
B's engine CPU, and, with --restart, how long a restarted engine A takes to reach B
again (a new handshake that must pass B's cookie check).

    python -m benchmarks flood [--seconds 10] [--rate 20000] [--restart] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

from benchmarks.report import table, write_json
from flatnet.engine import pki
from flatnet.demo import CLIENT_IP, PORT, Lab, sh
from tests.harness.traffic import tcp_transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOURCES = "10.250.0.0/24"
PING_GAP = 0.02


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping_stats(src_ns: str, ip: str, seconds: float) -> dict:
    count = max(int(seconds / PING_GAP), 1)
    out = sh("ping", "-i", str(PING_GAP), "-c", str(count), "-W", "1", ip, ns=src_ns, check=False,
             timeout=seconds + 10).stdout.decode()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    sent, got = (int(m.group(1)), int(m.group(2))) if m else (count, 0)
    return {"pings": sent, "lost": sent - got, "loss_pct": round(100 * (sent - got) / max(sent, 1), 2),
            "rtt_ms": float(rtt.group(1)) if rtt else None}


def flood_sources(lab: Lab, target) -> None:  # noqa: ANN001
    """The underlay namespace owns SOURCES; the target routes them back (cookie replies)."""
    sh("ip", "-n", lab.ul_ns, "route", "replace", "local", SOURCES, "dev", "lo")
    sh("ip", "-n", target.ns, "route", "replace", SOURCES, "via", CLIENT_IP)


def start_flood(lab: Lab, target, rate: int, seconds: float, junk: str, ports: int) -> subprocess.Popen:  # noqa: ANN001
    cert = pki.load_peer_cert(f"{lab.workdir}/pki/{target.name}.crt", pki.load_ca(f"{lab.workdir}/pki/ca.crt"),
                              time.time())
    args = ["--target", f"{target.underlay_ip}:{PORT}", "--rate", str(rate), "--seconds", str(seconds),
            "--sources", SOURCES, "--ports", str(ports)]
    if junk == "mac1":
        args += ["--key", cert.key.hex()]
    return subprocess.Popen(["ip", "netns", "exec", lab.ul_ns, sys.executable, "-m", "tests.harness.flood", *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))


def measure(lab: Lab, seconds: float, mbytes: int, flood: subprocess.Popen | None) -> dict:
    """Ping (in a thread) and one TCP transfer A -> B while the flood (if any) runs."""
    a, b = lab.hosts
    src, dst, ip = a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"]
    drops0, cpu0 = lab.status(b)["drops"], cpu_seconds(b.pid)
    if flood is not None:
        time.sleep(0.5)  # the sender has opened its sockets
    result: dict = {}
    pinger = threading.Thread(target=lambda: result.update(ping_stats(src, ip, seconds - 1.0)))
    t0 = time.monotonic()
    pinger.start()
    start = time.monotonic()
    n, got, sent = tcp_transfer(src, dst, ip, mbytes << 20, port=9300)
    took = time.monotonic() - start
    pinger.join(timeout=seconds + 15)
    if flood is not None:
        out, _ = flood.communicate(timeout=seconds + 30)
        result["flood"] = json.loads(out.strip().splitlines()[-1])
    elapsed = time.monotonic() - t0
    drops1 = lab.status(b)["drops"]
    result.update({
        "tcp_ok": n == mbytes << 20 and got == sent, "tcp_mbit_s": round(8 * n / took / 1e6, 1),
        "b_cpu_pct": round(100 * (cpu_seconds(b.pid) - cpu0) / elapsed, 1),
        "b_drops": {k: drops1[k] - drops0.get(k, 0) for k in drops1 if drops1[k] != drops0.get(k, 0)},
    })
    return result


def restart_resume(lab: Lab, limit: float = 20.0) -> float | None:
    """Seconds from engine A's restart until A's container reaches B's again."""
    a, b = lab.hosts
    lab.stop_engine(a)
    start = time.monotonic()
    lab.start_engine(a)
    lab.wait_engine(a)
    while time.monotonic() - start < limit:
        probe = sh("ping", "-c", "1", "-W", "1", b.containers[0]["ip"], ns=a.containers[0]["ns"], check=False)
        if probe.returncode == 0:
            return round(time.monotonic() - start, 2)
    return None


def run(lab: Lab, seconds: float, rate: int, mbytes: int, junk: str = "mac1", ports: int = 4,
        restart: bool = False) -> dict:
    flood_sources(lab, lab.hosts[1])
    out = {"baseline": measure(lab, seconds, mbytes, None)}
    out["flood"] = measure(lab, seconds, mbytes, start_flood(lab, lab.hosts[1], rate, seconds, junk, ports))
    if restart:
        out["restart_s_baseline"] = restart_resume(lab)
        time.sleep(2)
        flood = start_flood(lab, lab.hosts[1], rate, seconds, junk, ports)
        try:
            time.sleep(1.0)  # B is under load when A comes back
            out["restart_s_flood"] = restart_resume(lab, limit=seconds)
        finally:
            flood.communicate(timeout=seconds + 30)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks flood", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--mbytes", type=int, default=50)
    p.add_argument("--ports", type=int, default=4)
    p.add_argument("--junk", choices=("mac1", "random"), default="mac1")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--json")
    a = p.parse_args(argv)
    prefix = f"fnfl{os.getpid() % 1000}"
    lab = Lab(prefix, f"/tmp/{prefix}", hosts=2)
    try:
        lab.up(containers_per_host=1)
        r = run(lab, a.seconds, a.rate, a.mbytes, a.junk, a.ports, a.restart)
    finally:
        lab.down()
    rows = [[name, r[name]["pings"], r[name]["loss_pct"], r[name]["rtt_ms"], r[name]["tcp_mbit_s"],
             r[name]["b_cpu_pct"]] for name in ("baseline", "flood")]
    print(table(["phase", "pings", "ping loss %", "ping RTT ms", "TCP Mbit/s", "engine B CPU %"], rows))
    f = r["flood"]["flood"]
    kind = "valid" if a.junk == "mac1" else "junk"
    print(f"\nflood: {f['sent']} junk initiations ({kind} mac1) in {f['seconds']} s = {f['sent'] / f['seconds']:.0f}/s "
          f"from 254 addresses x {a.ports} ports; send errors {f['errors']}")
    print(f"B's data path during the flood: {r['flood']['b_drops']}")
    if a.restart:
        print(f"engine A restarted, traffic back after: {r['restart_s_baseline']} s without flood, "
              f"{r['restart_s_flood']} s during the flood")
    write_json(a.json, "flood", r)
    return 0 if r["baseline"]["tcp_ok"] and r["flood"]["tcp_ok"] else 1
