"""Relay throughput: TCP through the lighthouse's UDP relay beside its TCP relay
(issue 18), in namespaces, one iperf3 TCP stream host 1 -> host 2 for each.

    python -m benchmarks relay [--seconds 5] [--json F]

- direct: the two hosts on one LAN (for scale);
- UDP relay: UDP between the two hosts dropped (iptables on host 1): through the
  lighthouse (type 5, forwarded by the lighthouse's C data path: relay.c);
- TCP relay: host 1 behind a router that drops all UDP: over the lighthouse's TCP
  relay (port 443, frames bridged by engine.io.tcp_relay on both ends).
Each figure is the receiver's rate and the retransmissions, with the lighthouse's CPU
and the packets it relayed (`relayed` in its status: in C and in Python together).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time

from benchmarks.report import table, write_json
from flatnet.demo import Lab, sh


def iperf(lab: Lab, seconds: int) -> dict:
    a, b = lab.hosts
    server = subprocess.Popen(["ip", "netns", "exec", b.containers[0]["ns"], "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        proc = sh("iperf3", "-c", b.containers[0]["ip"], "-p", "5201", "-t", str(seconds), "-J",
                  ns=a.containers[0]["ns"], check=False, timeout=seconds + 30)
        doc = json.loads(proc.stdout) if proc.stdout.strip().startswith(b"{") else {}
        end = doc.get("end", {})
        return {"mbit_s": round(end.get("sum_received", {}).get("bits_per_second", 0) / 1e6, 1),
                "retransmits": end.get("sum_sent", {}).get("retransmits")}
    finally:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lighthouse_pid(lab: Lab) -> int:
    out = subprocess.run(["pgrep", "-s", str(lab.lh_pid), "-f", "-m1", "lighthouse"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return max(pids) if pids else lab.lh_pid


def settled_path(lab: Lab, name: str) -> str:
    """The path host 1 uses to host 2 once it settled. Relay first: the relayed copy
    of the first handshake can win the race, and the session moves direct at the
    first probe 0.5 s later; "direct" waits for that (up to 5 s), or it measured the
    relay (seen once the lighthouse forwarded in C, as fast as the LAN)."""
    a, b = lab.hosts
    end = time.monotonic() + 5
    while True:
        path = next(p for p in lab.peers(a) if p["name"] == b.name)["path"]
        if name != "direct" or not path.startswith("relayed") or time.monotonic() > end:
            return path
        time.sleep(0.1)


def case(name: str, seconds: int) -> dict:
    work = tempfile.mkdtemp(prefix="bench-relay-")
    nat = {1: "cone"} if name == "tcp relay" else {}
    lab = Lab(f"fnbr{int(time.time()) % 10000}", work, hosts=2, lighthouse=True, nat=nat)
    if name == "tcp relay":
        plain = lab._router

        def router(h, kind):  # type: ignore[no-untyped-def]
            r = plain(h, kind)
            sh("iptables", "-I", "FORWARD", "-p", "udp", "-j", "DROP", ns=r)
            return r
        lab._router = router  # type: ignore[method-assign]
    try:
        lab.up(containers_per_host=1, wait=30)
        a, b = lab.hosts
        if name == "udp relay":
            for chain, flag in (("OUTPUT", "-d"), ("INPUT", "-s")):
                sh("iptables", "-A", chain, flag, b.underlay_ip, "-p", "udp", "-j", "DROP", ns=a.ns)
        sh("ping", "-c", "3", "-i", "0.2", "-W", "3", b.containers[0]["ip"], ns=a.containers[0]["ns"], check=False)
        path = settled_path(lab, name)
        pid = lighthouse_pid(lab)
        c0, relayed0 = cpu(pid), lab.lighthouse_status()["relayed"]
        r = iperf(lab, seconds)
        r["lighthouse_cpu_s"] = round(cpu(pid) - c0, 2)
        r["relayed_packets"] = lab.lighthouse_status()["relayed"] - relayed0
        r["lighthouse_us_per_packet"] = round(r["lighthouse_cpu_s"] * 1e6 / r["relayed_packets"], 2) \
            if r["relayed_packets"] else None
        r["path"] = path
        return r
    finally:
        lab.down()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks relay", description=__doc__)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args(argv)
    results = {name: case(name, a.seconds) for name in ("direct", "udp relay", "tcp relay")}
    print(table(["case", "path", "Mbit/s", "retransmits", "lighthouse CPU s", "relayed", "lh us/packet"],
                [[n, r["path"], r["mbit_s"], r["retransmits"], r["lighthouse_cpu_s"], r["relayed_packets"],
                  r["lighthouse_us_per_packet"]] for n, r in results.items()]))
    write_json(a.json, "relay", results)
    return 0
