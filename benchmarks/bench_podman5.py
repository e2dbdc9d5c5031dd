"""Podman 5 + netavark in the Debian 13 test sandbox (tests/harness/sandbox.py): container
network setup through netavark with its own bridge driver (the reference) and with the
flatnet plugin (warm daemon and cold path), interleaved; the plugin's setup and teardown
called directly; and `podman run` with --network none, flatnet and podman's bridge."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from benchmarks.report import percentile, table, write_json

# Runs inside the sandbox. The warm daemon (flatnet-cni-warm) listens on the default socket
# for the whole benchmark; the cold rows set the network option warm_socket "".
SETUP = """
import json, subprocess, sys, time, uuid
NETAVARK = ["/usr/lib/podman/netavark", "--config", "/run/fnbench-nv", "--rootless", "false",
            "--plugin-directory", "/usr/local/libexec/netavark"]
plugin = "/usr/local/libexec/netavark/flatnet"
flatnet = json.load(open("/etc/containers/networks/flatnet.json"))
cold = dict(flatnet, options=dict(flatnet.get("options") or {}, warm_socket=""))
bridge = json.loads(subprocess.run(["podman", "network", "inspect", "podman"], check=True,
                                   capture_output=True).stdout)[0]
for k in ("containers", "created"):
    bridge.pop(k, None)
fl_ip = flatnet["subnets"][0]["subnet"].rsplit(".", 1)[0] + ".200"

def netavark_body(net, ip):
    return {"container_id": uuid.uuid4().hex * 2, "container_name": "b", "port_mappings": None,
            "dns_servers": None, "networks": {net["name"]: {"interface_name": "eth0", "static_ips": [ip]}},
            "network_info": {net["name"]: net}}

def plugin_body(net):
    return {"container_id": uuid.uuid4().hex * 2, "container_name": "b", "port_mappings": None, "network": net,
            "network_options": {"interface_name": "eth0", "static_ips": [fl_ip]}}

COMPARE = "/opt/flatnet/compare"  # --compare: that tree's plugin, by its own entry point, cold
rows = {  # label: (argv before the verb, body maker)
    "netavark setup, bridge (reference)": (NETAVARK, lambda: netavark_body(bridge, "10.88.0.200")),
    "netavark setup, flatnet warm": (NETAVARK, lambda: netavark_body(flatnet, fl_ip)),
    "netavark setup, flatnet cold": (NETAVARK, lambda: netavark_body(cold, fl_ip)),
    "plugin setup, warm": ([plugin], lambda: plugin_body(flatnet)),
    "plugin setup, cold": ([plugin], lambda: plugin_body(cold)),
}
if len(sys.argv) > 2:
    import os
    os.makedirs(COMPARE + "-plugin", exist_ok=True)
    with open(COMPARE + "-plugin/flatnet", "w") as f:
        f.write(f"#!{sys.executable} -IS\\nimport sys\\nsys.path.insert(0, {COMPARE!r})\\n"
                "from flatnet.cni.netavark import main\\nsys.exit(main())\\n")
    os.chmod(COMPARE + "-plugin/flatnet", 0o755)
    rows["netavark setup, flatnet compare"] = (NETAVARK[:-1] + [COMPARE + "-plugin"],
                                               lambda: netavark_body(flatnet, fl_ip))
times = {label: {"setup": [], "teardown": []} for label in rows}
for i in range(int(sys.argv[1])):
    ns = f"fnbench{i}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        order = list(rows.items())
        order = order[i % len(order):] + order[:i % len(order)]  # rotated: no row always first
        for label, (argv, make) in order:
            body = json.dumps(make()).encode()
            for verb in ("setup", "teardown"):
                t0 = time.perf_counter()
                p = subprocess.run(argv + [verb, f"/run/netns/{ns}"], input=body, capture_output=True)
                times[label][verb].append(time.perf_counter() - t0)
                assert p.returncode == 0, (label, verb, p.stdout, p.stderr)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
print(json.dumps(times))
"""


def main(argv: list[str]) -> int:
    from tests.harness.sandbox import IMAGE, PYTHON, SRC, Sandbox, import_busybox, install_flatnet
    p = argparse.ArgumentParser(prog="python -m benchmarks podman5")
    p.add_argument("-n", type=int, default=50, help="setup/teardown calls per row")
    p.add_argument("--podman-runs", type=int, default=20)
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--compare", metavar="DIR", help="another source tree (e.g. `git archive` of the code "
                   "before a change): its netavark plugin is a row of the same interleaved run; its "
                   "network is the installed one as is (no warm_socket option)")
    a = p.parse_args(argv)
    binds = ((os.path.abspath(a.compare), "/opt/flatnet/compare"),) if a.compare else ()
    sb = Sandbox(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), binds=binds)
    daemon = None
    try:
        install_flatnet(sb, "10.87.31.0/24", dns=True)  # as with an engine serving names: setup reads its dns
        import_busybox(sb)
        daemon = subprocess.Popen(sb.argv(PYTHON, "-c", f"import sys; sys.path.insert(0, {SRC!r}); "
                                          "from flatnet.cni.warmd import main; sys.exit(main())"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sb.run("sh", "-c", "for i in $(seq 100); do [ -S /run/flatnet/cni.sock ] && exit 0; sleep 0.1; done; "
               "exit 1")
        calls = json.loads(sb.run(PYTHON, "-c", SETUP, str(a.n), *(["compare"] if a.compare else []),
                                  timeout=900).stdout)
        runs: dict = {"none": [], "flatnet": [], "podman": []}  # podman: netavark's own bridge driver
        for _ in range(a.podman_runs):
            for net in runs:  # interleaved: noise hits both alike
                t0 = time.perf_counter()
                sb.podman("run", "--rm", "--pull", "never", "--network", net, IMAGE, "true")
                runs[net].append(time.perf_counter() - t0)
    finally:
        if daemon is not None:
            daemon.terminate()  # nsenter, chroot and env exec one another: this is the daemon
            daemon.wait(10)
        sb.close()

    def stats(v: list[float]) -> dict:
        return {"p50_ms": percentile(v, 0.5) * 1e3, "p95_ms": percentile(v, 0.95) * 1e3, "n": len(v)}
    ms = {f"{label}: {verb}" if verb == "teardown" else label: stats(v)
          for label, verbs in calls.items() for verb, v in verbs.items()}
    ms.update({f"podman run --network {k}": stats(v) for k, v in runs.items()})
    ref = ms["netavark setup, bridge (reference)"]["p50_ms"]
    print(table(["what", "p50 ms", "p95 ms", "n", "p50 / reference"],
                [[k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", str(v["n"]),
                  f"{v['p50_ms'] / ref:.2f}" if "teardown" not in k and "podman run" not in k else "-"]
                 for k, v in ms.items()]))
    ratio = ms["netavark setup, flatnet warm"]["p50_ms"] / ref
    print(f"\nnetavark setup p50 with the flatnet plugin (warm) / with its own bridge = {ratio:.2f} "
          f"(goal <= 1.5), n={a.n}; cold: {ms['netavark setup, flatnet cold']['p50_ms'] / ref:.2f}")
    if a.compare:
        print(f"compare ({a.compare}): {ms['netavark setup, flatnet compare']['p50_ms'] / ref:.2f}")
    if runs["none"]:
        extra = ms["podman run --network flatnet"]["p50_ms"] - ms["podman run --network none"]["p50_ms"]
        print(f"flatnet adds {extra:.0f} ms to podman run (p50, warm daemon running)")
    write_json(a.json, "podman5", {"ms": ms, "setup_ratio": ratio})
    return 0
