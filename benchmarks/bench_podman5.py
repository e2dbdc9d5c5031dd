"""Podman 5 + netavark in the Debian 13 test sandbox (tests/harness/sandbox.py): the
netavark plugin's setup and teardown called directly, beside `podman run` with
--network none and with --network flatnet."""
from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.report import percentile, table, write_json

SETUP = """
import json, os, subprocess, sys, time, uuid
net = json.load(open("/etc/containers/networks/flatnet.json"))
plugin = "/usr/local/libexec/netavark/flatnet"
times = {"setup": [], "teardown": []}
for i in range(int(sys.argv[1])):
    ns = f"fnbench{i}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        body = json.dumps({"container_id": uuid.uuid4().hex, "container_name": "b", "port_mappings": None,
                           "network": net, "network_options": {"interface_name": "eth0",
                           "static_ips": [net["subnets"][0]["subnet"].rsplit(".", 1)[0] + ".200"]}})
        for verb in ("setup", "teardown"):
            t0 = time.perf_counter()
            p = subprocess.run([plugin, verb, f"/run/netns/{ns}"], input=body.encode(), capture_output=True)
            times[verb].append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns])
print(json.dumps(times))
"""


def main(argv: list[str]) -> int:
    from tests.harness.sandbox import IMAGE, PYTHON, Sandbox, import_busybox, install_flatnet
    p = argparse.ArgumentParser(prog="python -m benchmarks podman5")
    p.add_argument("-n", type=int, default=50, help="plugin setup/teardown calls")
    p.add_argument("--podman-runs", type=int, default=20)
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    sb = Sandbox(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        install_flatnet(sb, "10.87.31.0/24", dns=True)  # as with an engine serving names: setup reads its dns
        import_busybox(sb)
        plugin = json.loads(sb.run(PYTHON, "-c", SETUP, str(a.n), timeout=600).stdout)
        runs: dict = {"none": [], "flatnet": [], "podman": []}  # podman: netavark's own bridge driver
        for _ in range(a.podman_runs):
            for net in runs:  # interleaved: noise hits both alike
                t0 = time.perf_counter()
                sb.podman("run", "--rm", "--pull", "never", "--network", net, IMAGE, "true")
                runs[net].append(time.perf_counter() - t0)
    finally:
        sb.close()
    ms = {k: {"p50_ms": percentile(v, 0.5) * 1e3, "p95_ms": percentile(v, 0.95) * 1e3, "n": len(v)}
          for k, v in {**plugin, **{f"podman run --network {k}": v for k, v in runs.items()}}.items()}
    print(table(["what", "p50 ms", "p95 ms", "n"],
                [[k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", str(v["n"])] for k, v in ms.items()]))
    extra = ms["podman run --network flatnet"]["p50_ms"] - ms["podman run --network none"]["p50_ms"]
    print(f"\nflatnet adds {extra:.0f} ms to podman run (p50), setup+teardown p50 "
          f"{ms['setup']['p50_ms'] + ms['teardown']['p50_ms']:.0f} ms")
    write_json(a.json, "podman5", ms)
    return 0
