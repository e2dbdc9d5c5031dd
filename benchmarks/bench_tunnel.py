"""End to end through two hosts in namespaces (the topology of shared/bench/anchors.sh:
underlay bridge, MTU 1500, no default route), interleaved per repetition so that
noise hits every system alike: plain underlay, Flatnet, Nebula, wireguard-go.

Measures iperf3 TCP 1 and 4 streams, UDP 64-byte received packets/s, ping RTT
median, and the tunnel daemons' CPU seconds (per GB moved). Prints one table with
ratios to Nebula and wireguard-go; --json writes the numbers; --png draws a chart.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from benchmarks.report import table, write_json
from flatnet_cli.lab import delete_netns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")
UL_A, UL_B = "192.0.2.1", "192.0.2.2"
TARGETS = {"underlay": UL_B, "flatnet": "10.87.2.1", "nebula": "198.18.1.2", "wireguard-go": "198.18.2.2"}


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Topology:
    def __init__(self, work: str) -> None:
        tag = uuid.uuid4().hex[:4]
        self.ul, self.a, self.b = f"fnb{tag}-ul", f"fnb{tag}-a", f"fnb{tag}-b"
        self.work = work
        self.procs: dict[str, list[subprocess.Popen]] = {}

    def up(self) -> None:
        for ns in (self.ul, self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ul, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.ul, "link", "set", "br0", "up")
        for ns, ip, tag in ((self.a, UL_A, "a"), (self.b, UL_B, "b")):
            sh("ip", "link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name", f"sw-{tag}", "netns", self.ul)
            sh("ip", "-n", self.ul, "link", "set", f"sw-{tag}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "ul0")
            sh("ip", "-n", ns, "link", "set", "ul0", "mtu", "1500", "up")

    def start(self, system: str, ns: str, argv: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             cwd=REPO, env=env, start_new_session=True)
        self.procs.setdefault(system, []).append(p)
        return p

    def down(self) -> None:
        for procs in self.procs.values():
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(0.3)
        for ns in (self.a, self.b, self.ul):
            delete_netns(ns)
        for name in ("fnbwga", "fnbwgb"):
            for path in (f"/var/run/wireguard/{name}.sock",):
                if os.path.exists(path):
                    os.unlink(path)

    def wait_ping(self, target: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if sh("ping", "-c", "1", "-W", "1", target, ns=self.a, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{target} not reachable from {self.a}; logs in {self.work}")


# ---- the systems
def setup_flatnet(t: Topology) -> None:
    d = os.path.join(t.work, "flatnet")
    os.makedirs(d)
    cli = [sys.executable, "-m", "flatnet_cli"]
    subprocess.run(cli + ["ca", "init", "--dir", f"{d}/pki"], cwd=REPO, check=True, capture_output=True)
    for n in ("a", "b"):
        subprocess.run(cli + ["cert", "sign", "--ca-dir", f"{d}/pki", "--name", n], cwd=REPO, check=True,
                       capture_output=True)
    hosts = {"a": (t.a, UL_A, "10.87.1.0/24"), "b": (t.b, UL_B, "10.87.2.0/24")}
    for n, (ns, _ip, subnet) in hosts.items():
        o = "b" if n == "a" else "a"
        with open(f"{d}/{n}.toml", "w") as f:
            f.write(f'[pki]\nca = "{d}/pki/ca.crt"\ncert = "{d}/pki/{n}.crt"\nkey = "{d}/pki/{n}.key"\n'
                    f'[network]\nsubnet = "{subnet}"\n[paths]\nrun_dir = "{d}/run-{n}"\nstate_dir = "{d}/state-{n}"\n'
                    f'[[peers]]\nname = "{o}"\ncert = "{d}/pki/{o}.crt"\nendpoints = ["{hosts[o][1]}:4787"]\n'
                    f'subnet = "{hosts[o][2]}"\n')
        t.start("flatnet", ns, [sys.executable, "-m", "engine", "--config", f"{d}/{n}.toml"], f"{d}/{n}.log")
    t.wait_ping(TARGETS["flatnet"])


def setup_nebula(t: Topology) -> None:
    d = os.path.join(t.work, "nebula")
    os.makedirs(d)
    subprocess.run(["nebula-cert", "ca", "-name", "bench", "-duration", "24h"], cwd=d, check=True, capture_output=True)
    for n, ip in (("a", "198.18.1.1"), ("b", "198.18.1.2")):
        subprocess.run(["nebula-cert", "sign", "-ca-crt", f"{d}/ca.crt", "-ca-key", f"{d}/ca.key", "-name", n,
                        "-ip", f"{ip}/24", "-out-crt", f"{d}/{n}.crt", "-out-key", f"{d}/{n}.key"], check=True,
                       capture_output=True)
    for n, ns in (("a", t.a), ("b", t.b)):
        other_ip, other_ul = ("198.18.1.2", UL_B) if n == "a" else ("198.18.1.1", UL_A)
        with open(f"{d}/{n}.yml", "w") as f:
            f.write(f"""pki: {{ca: {d}/ca.crt, cert: {d}/{n}.crt, key: {d}/{n}.key}}
static_host_map: {{"{other_ip}": ["{other_ul}:4242"]}}
lighthouse: {{am_lighthouse: false, interval: 60, hosts: []}}
listen: {{host: 0.0.0.0, port: 4242}}
punchy: {{punch: true}}
cipher: chachapoly
tun: {{disabled: false, dev: fnbneb0, drop_local_broadcast: false, drop_multicast: false, tx_queue: 500, mtu: 1300}}
logging: {{level: info, format: text}}
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
""")
        t.start("nebula", ns, ["nebula", "-config", f"{d}/{n}.yml"], f"{d}/{n}.log")
    t.wait_ping(TARGETS["nebula"])


def setup_wireguard(t: Topology) -> None:
    d = os.path.join(t.work, "wg")
    os.makedirs(d)
    keys = {}
    for n in ("a", "b"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True).stdout.strip()
        with open(f"{d}/{n}.key", "w") as f:
            f.write(priv)
        keys[n] = pub
    for n, ns, ip in (("a", t.a, "198.18.2.1"), ("b", t.b, "198.18.2.2")):
        dev = f"fnbwg{n}"
        t.start("wireguard-go", ns, ["wireguard-go", "-f", dev], f"{d}/{n}.log", env=dict(os.environ, LOG_LEVEL="error"))
        for _ in range(50):
            if os.path.exists(f"/var/run/wireguard/{dev}.sock"):
                break
            time.sleep(0.1)
        o, o_ul, o_ip = ("b", UL_B, "198.18.2.2") if n == "a" else ("a", UL_A, "198.18.2.1")
        sh("wg", "set", dev, "listen-port", "51820", "private-key", f"{d}/{n}.key", "peer", keys[o], "endpoint",
           f"{o_ul}:51820", "allowed-ips", f"{o_ip}/32", ns=ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "mtu", "1420", "up", ns=ns)
    t.wait_ping(TARGETS["wireguard-go"])


SETUP = {"underlay": None, "flatnet": setup_flatnet, "nebula": setup_nebula, "wireguard-go": setup_wireguard}


# ---- measuring
def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """utime+stime of the daemons (the process found inside `ip netns exec`'s session)."""
    total = 0
    for p in procs:
        for pid in _session_pids(p.pid):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError):
                pass
    return total / HZ


def _session_pids(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[3]) == sid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out or [sid]


def iperf(t: Topology, target: str, args: list[str], seconds: int) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", t.b, "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if "5201" in sh("ss", "-Hltn", ns=t.b).stdout:
                break
            time.sleep(0.1)
        proc = sh("iperf3", "-c", target, "-p", "5201", "-t", str(seconds), "-J", *args, ns=t.a, check=False,
                  timeout=seconds + 30)
        return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"error": proc.stderr}
    finally:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()


def measure(t: Topology, system: str, seconds: int, udp_seconds: int, pings: int) -> dict:
    target = TARGETS[system]
    procs = t.procs.get(system, [])
    out: dict = {}
    c0 = cpu_seconds(procs)
    r = iperf(t, target, [], seconds)
    c1 = cpu_seconds(procs)
    end = r.get("end", {})
    out["tcp1_gbps"] = end.get("sum_received", {}).get("bits_per_second", 0) / 1e9
    out["tcp1_retr"] = end.get("sum_sent", {}).get("retransmits")
    bytes_moved = end.get("sum_received", {}).get("bytes", 0)
    out["cpu_s_tcp1"] = c1 - c0 if procs else None
    out["cpu_s_per_gb"] = (c1 - c0) / (bytes_moved / 1e9) if procs and bytes_moved else None
    r = iperf(t, target, ["-P", "4"], seconds)
    out["tcp4_gbps"] = r.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9
    r = iperf(t, target, ["-u", "-l", "64", "-b", "0"], udp_seconds)
    s = r.get("end", {}).get("sum", {})
    out["udp64_rx_kpps"] = ((s.get("packets", 0) - s.get("lost_packets", 0)) / s["seconds"] / 1e3) if s.get("seconds") else 0
    p = sh("ping", "-c", str(pings), "-i", "0.02", "-W", "1", target, ns=t.a, check=False).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p)]
    out["rtt_med_us"] = statistics.median(rtts) * 1000 if rtts else None
    return out


def median(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}x" if x is not None and y else "-"


def rtt_added(summary: dict, system: str) -> float | None:
    """Median RTT through the system minus the plain underlay's (same run)."""
    rtt, base = summary[system].get("rtt_med_us"), summary.get("underlay", {}).get("rtt_med_us")
    return rtt - base if rtt is not None and base is not None and system != "underlay" else None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tunnel", description=__doc__)
    p.add_argument("-s", "--systems", default="underlay,flatnet,nebula,wireguard-go")
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("-t", "--time", type=int, default=10, help="iperf3 TCP seconds")
    p.add_argument("--udp-time", type=int, default=5)
    p.add_argument("--pings", type=int, default=200, help="pings per system and repetition, 20 ms apart")
    p.add_argument("--json", help="write results here")
    p.add_argument("--png", help="draw a chart here (matplotlib)")
    a = p.parse_args(argv)
    systems = a.systems.split(",")
    for s in systems:
        if s not in SETUP:
            raise SystemExit(f"unknown system {s}; choose from {', '.join(SETUP)}")
    if os.geteuid() != 0:
        raise SystemExit("the tunnel benchmark builds namespaces: run it as root")
    work = tempfile.mkdtemp(prefix="fnbench-")
    t = Topology(work)
    results: dict[str, list[dict]] = {s: [] for s in systems}
    try:
        t.up()
        t.wait_ping(UL_B)
        for s in systems:
            if SETUP[s]:
                SETUP[s](t)
        for rep in range(a.reps):
            for s in systems:
                print(f"[tunnel] rep {rep + 1}/{a.reps}: {s}", file=sys.stderr, flush=True)
                results[s].append(measure(t, s, a.time, a.udp_time, a.pings))
    finally:
        t.down()
        shutil.rmtree(work, ignore_errors=True)
    summary = {s: {k: median([r[k] for r in runs]) for k in runs[0]} for s, runs in results.items() if runs}
    refs = [r for r in ("nebula", "wireguard-go") if r in summary]
    rows = []
    for s, m in summary.items():
        row = [s, f"{m['tcp1_gbps']:.2f}", f"{m['tcp4_gbps']:.2f}", f"{m['udp64_rx_kpps']:.1f}",
               f"{m['rtt_med_us']:.0f}" if m["rtt_med_us"] else "-",
               f"{m['cpu_s_per_gb']:.1f}" if m["cpu_s_per_gb"] else "-",
               f"{8 / m['cpu_s_per_gb']:.2f}" if m["cpu_s_per_gb"] else "-"]
        for ref in refs:
            row.append(f"{m['tcp1_gbps'] / summary[ref]['tcp1_gbps']:.2f}x" if summary[ref]["tcp1_gbps"] else "-")
        if "nebula" in summary:
            row.append(ratio(m["udp64_rx_kpps"], summary["nebula"]["udp64_rx_kpps"]))
            row.append(ratio(rtt_added(summary, s), rtt_added(summary, "nebula")))
        rows.append(row)
    print(table(["system", "TCPx1 Gbit/s", "TCPx4 Gbit/s", "UDP64 rx kpps", "RTT med us", "daemon CPU s/GB",
                 "Gbit per CPU-s"] + [f"TCPx1 / {r}" for r in refs]
                + (["UDP64 / nebula", "RTT added / nebula"] if "nebula" in summary else []), rows))
    print(f"\nmedians of {a.reps} interleaved repetitions, TCP {a.time} s, UDP {a.udp_time} s, {a.pings} pings")
    write_json(a.json, "tunnel", {"summary": summary, "runs": results,
                                  "params": {"reps": a.reps, "time": a.time, "udp_time": a.udp_time}})
    if a.png:
        from benchmarks.chart import bar_chart
        bar_chart(a.png, summary)
    return 0
