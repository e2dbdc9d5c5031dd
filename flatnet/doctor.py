"""flatnet doctor: check a host end to end and explain each problem in plain words,
with the fix. Exit status 1 when something is wrong.

Checks: kernel (TUN, IP forwarding), Podman (CNI on Podman 4 or netavark on Podman 5:
backend, plugin, network), the
engine (answers, lease, TUN route, bridge), the lighthouses, the path to each peer,
and optionally a gateway."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass


@dataclass
class Finding:
    ok: bool
    check: str
    detail: str
    fix: str = ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_kernel() -> list[Finding]:
    out = [Finding(os.path.exists("/dev/net/tun"), "TUN device",
                   "/dev/net/tun is present" if os.path.exists("/dev/net/tun") else "/dev/net/tun is missing",
                   "load the tun module: modprobe tun")]
    fwd = _read("/proc/sys/net/ipv4/ip_forward")
    out.append(Finding(fwd == "1", "IP forwarding", f"net.ipv4.ip_forward = {fwd}",
                       "sysctl -w net.ipv4.ip_forward=1 (the engine sets it at start; something turned it off)"))
    return out


def _podman_backend() -> str:
    try:
        return subprocess.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"


def check_podman(plugin_dir: str = "/usr/lib/cni", net_dir: str = "/etc/cni/net.d",
                 netavark_dir: str = "/usr/local/libexec/netavark", backend: str | None = None,
                 lease_file: str | None = None) -> list[Finding]:
    """Podman 4 uses CNI (the CNI plugin and a conflist); Podman 5 uses netavark (the
    netavark plugin and a `flatnet` network of driver flatnet). Either is fine."""
    backend = _podman_backend() if backend is None else backend
    ok = backend in ("cni", "netavark")
    out = [Finding(ok, "Podman network backend", f"Podman uses {backend or 'unknown'}",
                   "run the installer (python3 -m flatnet.cni.install_netavark): it configures CNI for Podman 4 "
                   "and netavark for Podman 5")]
    if backend == "netavark":
        return out + _check_netavark(netavark_dir, lease_file)
    plugin = os.path.join(plugin_dir, "flatnet")
    ok = os.access(plugin, os.X_OK)
    detail = f"{plugin} is installed" if ok else f"{plugin} is missing"
    if ok:
        proc = subprocess.run([plugin], input=b"", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
        ok = proc.returncode == 0 and b"supportedVersions" in proc.stdout
        detail = "the plugin answers VERSION" if ok else f"the plugin fails: {proc.stdout.decode()[:200]}"
    out.append(Finding(ok, "CNI plugin", detail, "run scripts/install.sh"))
    conflist = os.path.join(net_dir, "flatnet.conflist")
    raw = _read(conflist)
    ok = raw is not None and '"1.0.0"' in raw
    out.append(Finding(ok, "flatnet network", f"{conflist} {'is in place' if ok else 'is missing or not cniVersion 1.0.0'}",
                       "run scripts/install.sh (Podman 4.3 needs cniVersion 1.0.0)"))
    return out


def _check_netavark(plugin_dir: str, lease_file: str | None) -> list[Finding]:
    out = []
    plugin = os.path.join(plugin_dir, "flatnet")
    ok = os.access(plugin, os.X_OK)
    detail = f"{plugin} is missing"
    if ok:
        proc = subprocess.run([plugin, "info"], input=b"", capture_output=True, timeout=30)
        ok = proc.returncode == 0 and b'"api_version"' in proc.stdout
        detail = "the plugin answers info" if ok else f"the plugin fails: {proc.stdout.decode()[:200]}"
    out.append(Finding(ok, "netavark plugin", detail,
                       "run the installer; it also lists the directory in containers.conf.d "
                       "(netavark_plugin_dirs)"))
    try:
        proc = subprocess.run(["podman", "network", "inspect", "flatnet"], capture_output=True, text=True, timeout=30)
        net = json.loads(proc.stdout)[0] if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        net = None
    if net is None or net.get("driver") != "flatnet":
        out.append(Finding(False, "flatnet network", "Podman has no network 'flatnet' of driver flatnet",
                           "start flatnet-engine (it writes the lease), then run the installer again"))
        return out
    subnet = (net.get("subnets") or [{}])[0].get("subnet", "?")
    detail = f"network flatnet uses {subnet}"
    ok = True
    raw = _read(lease_file) if lease_file and (net.get("options") or {}).get("subnet_source") == "lease" else None
    if raw:
        try:
            leased = json.loads(raw).get("subnet")
        except ValueError:
            leased = None
        if leased and leased != subnet:
            ok, detail = False, f"network flatnet uses {subnet} but this host's lease is {leased}"
    out.append(Finding(ok, "flatnet network", detail,
                       "stop its containers, podman network rm flatnet, and run the installer again"))
    return out


def check_engine(socket: str, lease_file: str) -> tuple[list[Finding], dict | None, list]:
    from flatnet.engine.io import control
    out = []
    try:
        status = json.loads(control.get(socket, "/status")[1])
        peers = json.loads(control.get(socket, "/peers")[1])
    except OSError as exc:
        return [Finding(False, "engine", f"no engine answers on {socket} ({exc.strerror or exc})",
                        "start it: systemctl start flatnet-engine; its log: journalctl -u flatnet-engine")], None, []
    out.append(Finding(True, "engine", f"node {status['node']}, subnet {status['subnet']}, up {status['uptime']} s"))
    lease = _read(lease_file)
    ok = lease is not None and status["subnet"] in lease
    out.append(Finding(ok, "lease file", f"{lease_file} {'names ' + status['subnet'] if ok else 'is missing or stale'}",
                       "restart the engine: it rewrites the lease file the CNI plugin reads"))
    route = subprocess.run(["ip", "-4", "route", "show", status["network"]], capture_output=True, text=True).stdout
    ok = f"dev {status['tun']}" in route
    out.append(Finding(ok, "overlay route", f"{status['network']} " + (f"goes to {status['tun']}" if ok else
                       "has no route through the TUN: container traffic to other hosts goes nowhere"),
                       "restart the engine (it sets the route at start), or: ip route replace "
                       f"{status['network']} dev {status['tun']}"))
    addr = subprocess.run(["ip", "-4", "addr", "show", "dev", status["bridge"]], capture_output=True, text=True).stdout
    gw = status["subnet"].rsplit(".", 1)[0] + ".1"
    ok = f"inet {gw}/" in addr
    out.append(Finding(ok, "container bridge", f"{status['bridge']} " + (f"has {gw}" if ok else f"lacks {gw}"),
                       "restart the engine; or start a container (the CNI plugin adds it)"))
    for name, state in status.get("lighthouses", {}).items():
        out.append(Finding(state == "registered", f"lighthouse {name}", state,
                           "check UDP 4787 to the lighthouse and its log; the engine retries by itself"))
    if status["cert_expires_in_days"] < 30:
        out.append(Finding(False, "certificate", f"expires in {status['cert_expires_in_days']} days",
                           "flatnet cert renew, then systemctl reload flatnet-engine"))
    return out, status, peers


def check_peers(peers: list) -> list[Finding]:
    out = []
    for p in peers:
        if p["state"] == "established":
            why = f" ({p['path_reason']})" if p["path"].startswith("relayed") else ""
            out.append(Finding(True, f"peer {p['name']}", f"{p['path']} via {p['endpoint']}{why}"))
        else:
            out.append(Finding(False, f"peer {p['name']}", f"{p['state']}: " + (p.get("unreachable_reason") or
                                                                            p["last_error"] or "no session yet"),
                               "check that UDP 4787 is open between the hosts and the peer's engine runs"))
    return out


def check_gateway(url: str) -> list[Finding]:
    import urllib.request
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/_flatnet/api", timeout=5) as r:
            doc = json.loads(r.read())
        ok = doc.get("engine") is not None
        return [Finding(ok, "gateway", "answers and reads the engine" if ok else
                        f"answers but cannot read the engine: {doc.get('feed_error')}",
                        "the gateway's nginx workers need group flatnet (scripts/install.sh)")]
    except OSError as exc:
        return [Finding(False, "gateway", f"{url} does not answer ({exc})", "systemctl start flatnet-gateway")]


def run(socket: str, lease_file: str, gateway: str | None, podman: bool) -> tuple[list[Finding], int]:
    findings = check_kernel() + (check_podman(lease_file=lease_file) if podman else [])
    engine_findings, _, peers = check_engine(socket, lease_file)
    findings += engine_findings + check_peers(peers)
    if gateway:
        findings += check_gateway(gateway)
    return findings, 0 if all(f.ok for f in findings) else 1


def report(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{'ok     ' if f.ok else 'PROBLEM'}  {f.check}: {f.detail}")
        if not f.ok and f.fix:
            lines.append(f"         fix: {f.fix}")
    bad = sum(not f.ok for f in findings)
    lines.append(f"\n{len(findings) - bad} ok, {bad} problem{'s' if bad != 1 else ''}")
    return "\n".join(lines)
