"""ADD/DEL latency of the flatnet plugin vs the reference bridge + host-local plugins, on the
same kind of namespace in the same run, and `podman run` time on both networks."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from benchmarks.report import percentile, table, write_json

PLUGIN_DIR = "/usr/lib/cni"


def call(plugin: str, command: str, conf: dict, cid: str, netns: str) -> float:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": PLUGIN_DIR}
    t0 = time.perf_counter()
    exe = plugin if os.path.isabs(plugin) else os.path.join(PLUGIN_DIR, plugin)
    proc = subprocess.run([exe], input=json.dumps(conf).encode(),
                          env=env, capture_output=True, timeout=30)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{plugin} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def plugin_latency(n: int, tmp: str, tag: str, flatnet: str = "flatnet", compare: str | None = None,
                   warm: str = "", compare_warm: str = "") -> dict:
    confs = {
        "flatnet": {"cniVersion": "1.0.0", "name": f"bf{tag}", "type": "flatnet", "bridge": f"bf{tag}",
                    "subnet": "10.87.244.0/24", "dataDir": f"{tmp}/fl", "warmSocket": warm},
        "bridge+host-local": {"cniVersion": "1.0.0", "name": f"br{tag}", "type": "bridge", "bridge": f"br{tag}",
                              "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.87.245.0/24",
                                                          "dataDir": f"{tmp}/hl"}},
    }
    plugins = {"flatnet": flatnet, "bridge+host-local": "bridge"}
    if compare:  # another build of the plugin (e.g. before a change), in the same interleaved run
        confs["flatnet (compare)"] = {**confs["flatnet"], "name": f"bc{tag}", "bridge": f"bc{tag}",
                                      "subnet": "10.87.248.0/24", "dataDir": f"{tmp}/fc", "warmSocket": compare_warm}
        plugins["flatnet (compare)"] = compare
    results: dict = {name: {"add": [], "del": []} for name in confs}
    namespaces = []
    try:
        for i in range(n):
            ns = f"fnbench{tag}{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            namespaces.append(ns)
            for name, conf in confs.items():  # interleaved: noise hits both alike
                plugin = plugins[name]
                cid = uuid.uuid4().hex
                results[name]["add"].append(call(plugin, "ADD", conf, cid, f"/run/netns/{ns}"))
                results[name]["del"].append(call(plugin, "DEL", conf, cid, f"/run/netns/{ns}"))
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for conf in confs.values():
            subprocess.run(["ip", "link", "del", conf["bridge"]], capture_output=True)
    return {name: {op: {"p50_ms": percentile(v, 0.5) * 1e3, "p95_ms": percentile(v, 0.95) * 1e3, "n": len(v)}
                   for op, v in ops.items()} for name, ops in results.items()}


def podman_run_time(n: int, tmp: str, tag: str) -> dict:
    from tests.harness.podman import IMAGE, ensure_image
    ensure_image()
    nets = {
        "flatnet": {"type": "flatnet", "bridge": f"pf{tag}", "subnet": "10.87.246.0/24", "dataDir": f"{tmp}/pf"},
        "bridge+host-local": {"type": "bridge", "bridge": f"pb{tag}", "isGateway": True,
                              "ipam": {"type": "host-local", "subnet": "10.87.247.0/24", "dataDir": f"{tmp}/pb"}},
    }
    paths, times = [], {k: [] for k in nets}
    try:
        for plugin in nets.values():
            path = f"/etc/cni/net.d/fnbench-{tag}-{plugin['bridge']}.conflist"
            with open(path, "w") as f:
                json.dump({"cniVersion": "1.0.0", "name": f"fnbench-{plugin['bridge']}", "plugins": [plugin]}, f)
            paths.append(path)
        for _ in range(n):
            for name, plugin in nets.items():
                t0 = time.perf_counter()
                subprocess.run(["podman", "run", "--rm", "--pull", "never", "--network",
                                f"fnbench-{plugin['bridge']}", IMAGE, "true"], check=True, capture_output=True,
                               timeout=60)
                times[name].append(time.perf_counter() - t0)
    finally:
        for p in paths:
            os.unlink(p)
        for plugin in nets.values():
            subprocess.run(["ip", "link", "del", plugin["bridge"]], capture_output=True)
    return {name: {"p50_ms": percentile(v, 0.5) * 1e3, "p95_ms": percentile(v, 0.95) * 1e3, "n": len(v)}
            for name, v in times.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks cni")
    p.add_argument("-n", type=int, default=50, help="ADD/DEL calls per plugin (>= 50)")
    p.add_argument("--podman-runs", type=int, default=10)
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--flatnet", default="flatnet",
                   help="the flatnet plugin to time (default: the installed one in /usr/lib/cni); "
                        "e.g. a wrapper running a worktree's code")
    p.add_argument("--compare", help="a second flatnet plugin executable (e.g. the code before a change), "
                   "timed in the same interleaved run")
    p.add_argument("--warm", default="", metavar="SOCKET",
                   help="the flatnet row uses the warm daemon on SOCKET (flatnet-cni-warm --socket SOCKET); "
                        "default: the cold path (warmSocket \"\")")
    p.add_argument("--compare-warm", default="", metavar="SOCKET",
                   help="the --compare row uses the warm daemon on SOCKET (e.g. one started from the "
                        "code before a change); default: cold")
    a = p.parse_args(argv)
    if not os.path.exists(os.path.join(PLUGIN_DIR, "bridge")):
        raise SystemExit("reference plugins missing: apt-get install containernetworking-plugins")
    tag = uuid.uuid4().hex[:4]
    tmp = tempfile.mkdtemp(prefix="fnbench-")
    try:
        lat = plugin_latency(a.n, tmp, tag, a.flatnet, a.compare, a.warm, a.compare_warm)
        run = podman_run_time(a.podman_runs, tmp, tag) if a.podman_runs else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [[name, f"{v['add']['p50_ms']:.1f}", f"{v['add']['p95_ms']:.1f}", f"{v['del']['p50_ms']:.1f}",
             f"{v['del']['p95_ms']:.1f}", f"{run[name]['p50_ms']:.0f}" if name in run else "-"] for name, v in lat.items()]
    print(table(["plugin", "ADD p50 ms", "ADD p95 ms", "DEL p50 ms", "DEL p95 ms", "podman run p50 ms"], rows))
    ratio = lat["flatnet"]["add"]["p50_ms"] / lat["bridge+host-local"]["add"]["p50_ms"]
    if a.warm:
        print(f"(the flatnet row went through the warm daemon on {a.warm})")
    print(f"\nflatnet ADD p50 / reference ADD p50 = {ratio:.2f} (goal <= 1.5), n={a.n}")
    if a.compare:
        print(f"(the compare row went through the warm daemon on {a.compare_warm})" if a.compare_warm else
              "(the compare row took the cold path)")
        print(f"compare ADD p50 / reference ADD p50 = "
              f"{lat['flatnet (compare)']['add']['p50_ms'] / lat['bridge+host-local']['add']['p50_ms']:.2f}")
    write_json(a.json, "cni", {"plugin": lat, "podman_run": run, "add_ratio": ratio})
    return 0
