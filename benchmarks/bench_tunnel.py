"""End to end through two hosts in namespaces (the topology of shared/bench/anchors.sh:
underlay bridge, MTU 1500, no default route): plain underlay, the floor (a tunnel with
nothing in it, benchmarks/rtt_floor.c: the least a user-space tunnel that sleeps between
packets adds), Flatnet, Nebula (AES and chachapoly), Debian's wireguard-go and, with
--wg-bin, an upstream wireguard-go build. floor-threads and floor-spin are other waits of
the floor, never in the default set (floor-spin keeps both CPUs busy for the whole run,
so run it alone with the underlay).

Every peer is set up as its own docs advise for throughput (docs/performance.md,
"Fairness"): tunnel MTU 1420, UDP socket buffers of 7-10 MiB, Nebula's default cipher,
connection tracking on in Flatnet as in Nebula. The order of the systems rotates each
repetition. Each test (iperf3 TCP 1 and 4 streams, UDP 64-byte flood counted at the
receiver, ping) meters the tunnel daemons' CPU and the host's (/proc/stat). Ratios are
paired per repetition and printed as median (min-max). --json writes every number;
--png draws a chart.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from benchmarks.report import table, write_json
from benchmarks.tunnel_stats import (fmt, fmt_ratio, host_cpu_ticks, iperf_tcp, iperf_udp_received, median, paired,
                                     per_unit, rotation, spread)
from flatnet.engine.io.udp import SO_RCVBUFFORCE, SO_SNDBUFFORCE
from flatnet.demo import delete_netns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")
UL_A, UL_B = "192.0.2.1", "192.0.2.2"
TUN_MTU = 1420             # every tunnel: 1500 underlay - 80 (WireGuard's default, the largest overhead here)
FLATNET_BUF = 8 << 20      # Flatnet's default [listen] socket_buffer
NEBULA_BUF = 10 << 20      # listen.read_buffer / write_buffer as in Nebula's config reference
WG_DEBIAN_BUF = 8 << 20    # forced by the harness on Debian's wireguard-go (it sets none itself)
# TUN queue length of every tunnel. At the kernel's 500, Nebula 1.6.1 and Debian's
# wireguard-go drop packets on the TUN in the TCP tests (each drop a TCP retransmit);
# Nebula's docs advise raising tun.tx_queue then. One value for all, set where each
# system sets it: Nebula's tun.tx_queue, `ip link ... txqueuelen` for the others.
TUN_TXQLEN = 2000
SUBJECT = "flatnet"


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Topology:
    def __init__(self, work: str) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.ul, self.a, self.b = f"fnb{self.tag}-ul", f"fnb{self.tag}-a", f"fnb{self.tag}-b"
        self.work = work
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.wg_sockets: list[str] = []

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
        # `ip netns exec` execs the command: the Popen's pid is the daemon's
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
        for path in self.wg_sockets:
            if os.path.exists(path):
                os.unlink(path)

    def wait_ping(self, target: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if sh("ping", "-c", "1", "-W", "1", target, ns=self.a, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{target} not reachable from {self.a}; logs in {self.work}")


# ---- what each daemon really got from the kernel
_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438  # same number on every Linux architecture (unified syscall table)


def _borrow_fd(pid: int, fd: int) -> int:
    """A duplicate of another process's file descriptor (pidfd_getfd(2); root, Linux 5.6+)."""
    pidfd = os.pidfd_open(pid)
    try:
        dup = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return dup
    finally:
        os.close(pidfd)


def udp_buffers(pid: int, force: int | None = None) -> list[dict]:
    """SO_RCVBUF/SO_SNDBUF (as the kernel reports them: twice the size asked for) of every
    IPv4/IPv6 UDP socket of a daemon; with `force`, first set both to that many bytes with
    SO_*BUFFORCE on the daemon's own socket (a duplicate fd refers to the same socket)."""
    out = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            dup = _borrow_fd(pid, int(name))
        except OSError:
            continue
        s = socket.socket(fileno=dup)
        try:
            if s.type != socket.SOCK_DGRAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if force:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, force)
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, force)
            out.append({"port": s.getsockname()[1], "family": s.family.name,
                        "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                        "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)})
        finally:
            s.close()
    return out


def link_knobs(ns: str, dev: str) -> dict:
    """MTU, queue length and offloads of a tunnel interface as the kernel shows them."""
    link = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", dev, ns=ns).stdout)[0]
    feats = {}
    for line in sh("ethtool", "-k", dev, ns=ns, check=False).stdout.splitlines():
        k, _, v = line.strip().partition(": ")
        if k in ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload",
                 "tx-udp-segmentation", "rx-udp-gro-forwarding", "tx-checksumming"):
            feats[k] = v.split()[0] if v else "?"
    return {"dev": dev, "mtu": link.get("mtu"), "txqlen": link.get("txqlen"), "offloads": feats}


def link_stats(ns: str, dev: str) -> dict:
    link = json.loads(sh("ip", "-j", "-s", "link", "show", "dev", dev, ns=ns, check=False).stdout or "[{}]")[0]
    st = link.get("stats64") or link.get("stats") or {}
    return {d: {k: st.get(d, {}).get(k) for k in ("packets", "dropped", "errors")} for d in ("rx", "tx")}


def _version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, out)
    return m.group(1) if m else "?"


def _deb_version(pkg: str) -> str:
    return _version(["dpkg-query", "-W", "-f", "${Version}\n", pkg], r"(\S+)")


def wg_build_label(binary: str) -> tuple[str, str]:
    """(short label, details) of a wireguard-go binary: its commit from the BUILD-INFO that
    shared/bench/build_wggo.sh leaves beside it, else its --version and a hash of the file."""
    info = os.path.join(os.path.dirname(os.path.abspath(binary)), "BUILD-INFO")
    if os.path.exists(info):
        fields = dict(line.split(":", 1) for line in open(info) if ":" in line)
        commit = fields.get("commit", "").strip()
        if commit:
            describe, go = fields.get("describe", "?").strip(), fields.get("go", "?").strip()
            return commit[:7], f"commit {commit} ({describe}), {go}"
    with open(binary, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    ver = _version([binary, "--version"], r"wireguard-go (\S+)")
    return f"{ver} sha256:{digest}", f"{binary} --version: {ver}, sha256 {digest}"


# ---- the systems
# each setup returns its overlay target IP and what it was given (for the fairness table)
def setup_underlay(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    return UL_B, {"label": f"underlay (veth + bridge, kernel {platform.release()})", "version": platform.release(),
                  "link": link_knobs(t.a, "ul0"), "devs": {"a": "ul0", "b": "ul0"}}


def setup_flatnet(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    d = os.path.join(t.work, "flatnet")
    os.makedirs(d)
    cli = [sys.executable, "-m", "flatnet"]
    subprocess.run(cli + ["ca", "init", "--dir", f"{d}/pki"], cwd=REPO, check=True, capture_output=True, timeout=60)
    for n in ("a", "b"):
        subprocess.run(cli + ["cert", "sign", "--ca-dir", f"{d}/pki", "--name", n], cwd=REPO, check=True,
                       capture_output=True, timeout=60)
    hosts = {"a": (t.a, UL_A, "10.87.1.0/24"), "b": (t.b, UL_B, "10.87.2.0/24")}
    # Connection tracking as Nebula's any/any rules: with default deny and one allow-all
    # rule, every outbound packet is tracked and every inbound one is looked up in the
    # table, then matched against the rule (engine/crypto/csrc/firewall.c).
    # The container-label watcher (`podman ps` every 3 s) is off: no peer has one, and it
    # would load the host while the other systems are measured too.
    for n, (ns, _ip, subnet) in hosts.items():
        o = "b" if n == "a" else "a"
        with open(f"{d}/{n}.toml", "w") as f:
            f.write(f'[pki]\nca = "{d}/pki/ca.crt"\ncert = "{d}/pki/{n}.crt"\nkey = "{d}/pki/{n}.key"\n'
                    f'[network]\nsubnet = "{subnet}"\n[paths]\nrun_dir = "{d}/run-{n}"\nstate_dir = "{d}/state-{n}"\n'
                    f'[listen]\nsocket_buffer = {FLATNET_BUF}\n[tun]\nmtu = {TUN_MTU}\ncipher = "{opts.flatnet_cipher}"\n'
                    f'[gateway]\npodman_labels = false\n'
                    f'[firewall]\ndefault = "deny"\n[[firewall.inbound]]\nproto = "any"\nport = "any"\n'
                    f'[[peers]]\nname = "{o}"\ncert = "{d}/pki/{o}.crt"\nendpoints = ["{hosts[o][1]}:4787"]\n'
                    f'subnet = "{hosts[o][2]}"\n')
        t.start("flatnet", ns, [sys.executable, "-m", "flatnet.engine", "--config", f"{d}/{n}.toml"], f"{d}/{n}.log")
    target = "10.87.2.1"
    t.wait_ping(target)
    for ns in (t.a, t.b):  # Flatnet has no queue-length setting of its own
        sh("ip", "link", "set", "dev", "flatnet0", "txqueuelen", str(TUN_TXQLEN), ns=ns)
    # the engine's own word that the firewall and the offloads are on (event=firewall, event=offloads)
    logged = [line.strip()[:300] for line in open(f"{d}/a.log") if "firewall" in line or "offloads" in line]
    if not any("event=firewall" in line and "default=deny" in line and "rules=1" in line for line in logged):
        raise RuntimeError(f"flatnet did not log its firewall policy; see {d}/a.log")
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip() or "?"
    # "+changes" when the code that runs differs from that commit (docs being edited do not count)
    if subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "engine", "flatnet"], capture_output=True,
                      text=True, timeout=10).stdout.strip():
        commit += "+changes"
    # the transport cipher the two engines negotiated ([tun] cipher, docs/protocol.md 5.10)
    from flatnet.engine.io import control
    rows = json.loads(control.get(f"{d}/run-a/engine.sock", "/peers")[1])
    negotiated = next((r.get("cipher") for r in rows if r["name"] == "b"), None) or "?"
    return target, {"label": f"flatnet {commit}", "version": commit,
                    "cipher": f"{negotiated} (negotiated; [tun] cipher = {opts.flatnet_cipher})",
                    "firewall": "default deny + inbound any/any; outbound flows tracked",
                    "config": open(f"{d}/a.toml").read(), "engine_log": logged, "link": link_knobs(t.a, "flatnet0"),
                    "devs": {"a": "flatnet0", "b": "flatnet0"}}


def _setup_nebula(t: Topology, system: str, cipher: str, port: int, net: str, dev: str) -> tuple[str, dict]:
    d = os.path.join(t.work, system)
    os.makedirs(d)
    subprocess.run(["nebula-cert", "ca", "-name", "bench", "-duration", "24h"], cwd=d, check=True, capture_output=True,
                   timeout=60)
    for n, ip in (("a", f"{net}.1"), ("b", f"{net}.2")):
        subprocess.run(["nebula-cert", "sign", "-ca-crt", f"{d}/ca.crt", "-ca-key", f"{d}/ca.key", "-name", n,
                        "-ip", f"{ip}/24", "-out-crt", f"{d}/{n}.crt", "-out-key", f"{d}/{n}.key"], check=True,
                       capture_output=True, timeout=60)
    for n, ns in (("a", t.a), ("b", t.b)):
        other_ip, other_ul = (f"{net}.2", UL_B) if n == "a" else (f"{net}.1", UL_A)
        # routines: 1 is the default; Nebula's docs advise at most half the cores (here 1)
        with open(f"{d}/{n}.yml", "w") as f:
            f.write(f"""pki: {{ca: {d}/ca.crt, cert: {d}/{n}.crt, key: {d}/{n}.key}}
static_host_map: {{"{other_ip}": ["{other_ul}:{port}"]}}
lighthouse: {{am_lighthouse: false, interval: 60, hosts: []}}
listen: {{host: 0.0.0.0, port: {port}, batch: 64, read_buffer: {NEBULA_BUF}, write_buffer: {NEBULA_BUF}}}
routines: 1
punchy: {{punch: true}}
cipher: {cipher}
tun: {{disabled: false, dev: {dev}, drop_local_broadcast: false, drop_multicast: false,
      tx_queue: {TUN_TXQLEN}, mtu: {TUN_MTU}}}
logging: {{level: info, format: text}}
firewall:
  conntrack: {{tcp_timeout: 12m, udp_timeout: 3m, default_timeout: 10m}}
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
""")
        t.start(system, ns, ["nebula", "-config", f"{d}/{n}.yml"], f"{d}/{n}.log")
    target = f"{net}.2"
    t.wait_ping(target)
    ver = _version(["nebula", "-version"], r"Version:\s*(\S+)")
    return target, {"label": f"nebula {ver} {cipher}", "version": f"{ver} (Debian {_deb_version('nebula')})",
                    "cipher": "AES-256-GCM" if cipher == "aes" else "ChaCha20-Poly1305",
                    "firewall": "outbound and inbound any/any (conntrack on every packet)",
                    "config": open(f"{d}/a.yml").read(), "link": link_knobs(t.a, dev), "devs": {"a": dev, "b": dev}}


def setup_nebula(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    return _setup_nebula(t, "nebula", "aes", 4242, "198.18.1", "fnbneb0")


def setup_nebula_chachapoly(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    return _setup_nebula(t, "nebula-chachapoly", "chachapoly", 4243, "198.18.4", "fnbnebc")


def _setup_wg(t: Topology, system: str, binary: str, port: int, net: str, letter: str,
              force_buf: int | None) -> tuple[str, dict]:
    d = os.path.join(t.work, system)
    os.makedirs(d)
    keys = {}
    for n in ("a", "b"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        with open(f"{d}/{n}.key", "w") as f:
            f.write(priv)
        keys[n] = pub
    devs = {}
    for n, ns in (("a", t.a), ("b", t.b)):
        # the UAPI socket directory is shared by all namespaces: names unique per run
        dev = devs[n] = f"wg{t.tag}{letter}{n}"
        t.wg_sockets.append(f"/var/run/wireguard/{dev}.sock")
        t.start(system, ns, [binary, "-f", dev], f"{d}/{n}.log", env=dict(os.environ, LOG_LEVEL="error"))
        for _ in range(50):
            if os.path.exists(f"/var/run/wireguard/{dev}.sock"):
                break
            time.sleep(0.1)
        o, o_ul = ("b", UL_B) if n == "a" else ("a", UL_A)
        ip, o_ip = (f"{net}.1", f"{net}.2") if n == "a" else (f"{net}.2", f"{net}.1")
        sh("wg", "set", dev, "listen-port", str(port), "private-key", f"{d}/{n}.key", "peer", keys[o], "endpoint",
           f"{o_ul}:{port}", "allowed-ips", f"{o_ip}/32", ns=ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "mtu", str(TUN_MTU), "txqueuelen", str(TUN_TXQLEN), "up", ns=ns)
    target = f"{net}.2"
    t.wait_ping(target)
    buffers = {}
    for n, p in zip("ab", t.procs[system], strict=True):
        # after `wg set listen-port`, which (re)binds the sockets
        buffers[n] = udp_buffers(p.pid, force=force_buf)
        if force_buf and (not buffers[n] or any(b["rcvbuf"] < 2 * force_buf for b in buffers[n])):
            raise RuntimeError(f"{system}: could not raise the socket buffers of pid {p.pid}: {buffers[n]}")
    return target, {"link": link_knobs(t.a, devs["a"]), "devs": devs, "buffers_forced": force_buf,
                    "buffers_after_force": buffers, "firewall": "none (cryptokey routing only)",
                    "cipher": "ChaCha20-Poly1305"}


def setup_wireguard(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    target, knobs = _setup_wg(t, "wireguard-go", "wireguard-go", 51820, "198.18.2", "d", WG_DEBIAN_BUF)
    ver = _version(["wireguard-go", "--version"], r"wireguard-go (\S+)")
    knobs.update(label=f"wireguard-go {ver.lstrip('v')} (Debian)",
                 version=f"{ver} (Debian {_deb_version('wireguard-go')})")
    return target, knobs


def setup_wireguard_upstream(t: Topology, opts: argparse.Namespace) -> tuple[str, dict]:
    binary = os.path.abspath(opts.wg_bin)
    target, knobs = _setup_wg(t, "wireguard-go-upstream", binary, 51821, "198.18.5", "u", None)
    short, details = wg_build_label(binary)
    knobs.update(label=f"wireguard-go {short} (upstream, offloads)", version=details, binary=binary)
    return target, knobs


FLOOR_MODES = {"floor-poll": ("poll", 7), "floor-threads": ("threads", 8), "floor-spin": ("spin", 9)}


def setup_floor(t: Topology, system: str) -> tuple[str, dict]:
    """benchmarks/rtt_floor.c: a tunnel with nothing in it (no cipher, no header, one
    packet per system call), the least a user-space TUN <-> UDP tunnel adds here."""
    mode, k = FLOOR_MODES[system]
    d = os.path.join(t.work, system)
    os.makedirs(d)
    binary = f"{d}/rtt_floor"
    subprocess.run(["gcc", "-O2", "-pthread", os.path.join(REPO, "benchmarks", "rtt_floor.c"), "-o", binary],
                   check=True, capture_output=True, timeout=120)
    net, port, dev = f"198.18.{k}", 47900 + k, f"fl{mode[0]}{t.tag}"
    for n, ns, o_ul in (("1", t.a, UL_B), ("2", t.b, UL_A)):
        p = t.start(system, ns, [binary, mode, dev, o_ul, str(port)], f"{d}/{n}.log")
        for _ in range(50):
            if "ready" in open(f"{d}/{n}.log").read() or p.poll() is not None:
                break
            time.sleep(0.1)
        sh("ip", "addr", "add", f"{net}.{n}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "mtu", str(TUN_MTU), "txqueuelen", str(TUN_TXQLEN), "up", ns=ns)
    target = f"{net}.2"
    t.wait_ping(target)
    return target, {"label": f"floor: bare TUN-UDP relay, {mode} (no cipher)", "version": mode,
                    "link": link_knobs(t.a, dev), "devs": {"a": dev, "b": dev}, "cipher": "none",
                    "firewall": "none"}


SETUP = {"underlay": setup_underlay, "flatnet": setup_flatnet, "nebula": setup_nebula,
         "nebula-chachapoly": setup_nebula_chachapoly, "wireguard-go": setup_wireguard,
         "wireguard-go-upstream": setup_wireguard_upstream,
         **{m: (lambda t, opts, m=m: setup_floor(t, m)) for m in FLOOR_MODES}}
DEFAULT_SYSTEMS = "underlay,floor-poll,flatnet,nebula,nebula-chachapoly,wireguard-go"


# ---- measuring
def daemon_cpu_seconds(procs: list[subprocess.Popen]) -> list[float]:
    """CPU seconds of each daemon: user + system time of all its threads, and of the child
    processes it has reaped (cutime + cstime), so work handed to a helper is counted."""
    out = []
    for p in procs:
        try:
            fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            out.append(sum(int(x) for x in fields[11:15]) / HZ)
        except (OSError, IndexError, ValueError):
            out.append(float("nan"))
    return out


class Meter:
    """CPU of the tunnel daemons and of the whole host over one test."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs

    def __enter__(self) -> "Meter":
        self.d0, self.h0 = daemon_cpu_seconds(self.procs), host_cpu_ticks(open("/proc/stat").read())
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        d1, h1 = daemon_cpu_seconds(self.procs), host_cpu_ticks(open("/proc/stat").read())
        self.wall = time.monotonic() - self.t0
        self.daemons = [b - a for a, b in zip(self.d0, d1, strict=True)]
        self.busy, self.steal = (h1[0] - self.h0[0]) / HZ, (h1[1] - self.h0[1]) / HZ

    def record(self, out: dict, test: str) -> None:
        out[f"{test}_cpu_daemons_s"] = self.daemons
        for host, sec in zip("ab", self.daemons, strict=False):  # a: iperf3 client side, b: server side
            out[f"{test}_cpu_{host}_s"] = sec
        out[f"{test}_cpu_daemon_s"] = sum(self.daemons) if self.procs else None
        out[f"{test}_cpu_host_s"] = self.busy + self.steal   # busy + steal, all CPUs
        out[f"{test}_steal_s"] = self.steal
        out[f"{test}_wall_s"] = self.wall


@contextlib.contextmanager
def iperf_server(t: Topology):
    """A one-shot iperf3 server in host b, started before the meter runs."""
    server = subprocess.Popen(["ip", "netns", "exec", t.b, "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh("ss", "-Hltn", ns=t.b).stdout:
                break
            time.sleep(0.1)
        yield
    finally:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf_client(t: Topology, target: str, args: list[str], seconds: int) -> dict:
    proc = sh("iperf3", "-c", target, "-p", "5201", "-t", str(seconds), "-J", *args, ns=t.a, check=False,
              timeout=seconds + 30)
    return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"error": proc.stderr.strip()[:200]}


def tun_tx_dropped(t: Topology, devs: dict) -> tuple[int, int]:
    """Packets the kernel could not queue to each tunnel daemon (TUN tx drops), hosts a and b."""
    return tuple(link_stats(ns, devs[h])["tx"]["dropped"] or 0 for h, ns in (("a", t.a), ("b", t.b)))


def measure(t: Topology, system: str, target: str, a: argparse.Namespace, devs: dict) -> dict:
    procs = t.procs.get(system, [])
    out: dict = {"errors": []}
    for test, args, secs in (("tcp1", [], a.time), ("tcp4", ["-P", "4"], a.time),
                             ("udp64", ["-u", "-l", "64", "-b", "0"], a.udp_time)):
        drops0 = tun_tx_dropped(t, devs)
        with iperf_server(t), Meter(procs) as m:
            doc = iperf_client(t, target, args, secs)
        m.record(out, test)
        out[f"{test}_tun_drops_a"], out[f"{test}_tun_drops_b"] = (
            y - x for x, y in zip(drops0, tun_tx_dropped(t, devs), strict=True))
        time.sleep(0.5)  # let queues drain before the next meter starts
        try:
            r = iperf_udp_received(doc) if test == "udp64" else iperf_tcp(doc)
        except ValueError as exc:
            out["errors"].append(f"{test}: {exc}"[:200])
            continue
        for k, v in r.items():
            out[f"{test}_{k}"] = v
    sh("ping", "-c", "5", "-i", "0.05", "-W", "1", target, ns=t.a, check=False)  # warm: ARP, handshakes
    with Meter(procs) as m:
        p = sh("ping", "-c", str(a.pings), "-i", "0.02", "-W", "1", target, ns=t.a, check=False,
               timeout=a.pings * 0.05 + 30).stdout
    m.record(out, "ping")
    rtts = [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", p)]
    out["ping_replies"] = len(rtts)
    out["rtt_med_us"] = median(rtts)
    out["rtt_min_us"] = min(rtts) if rtts else None
    for proc in procs:
        if proc.poll() is not None:
            out["errors"].append(f"daemon pid {proc.pid} exited ({proc.returncode})")
    derive(out)
    return out


def derive(r: dict) -> dict:
    """Per-unit figures of one repetition: CPU seconds per GB (TCP), per million packets
    (UDP64), milliseconds per ping; Gbit moved per daemon CPU-second."""
    for test in ("tcp1", "tcp4"):
        moved = r.get(f"{test}_bytes")   # None when the test failed: no figure, not a zero
        gb = moved / 1e9 if moved else None
        r[f"{test}_daemon_s_per_gb"] = per_unit(r.get(f"{test}_cpu_daemon_s"), gb)
        r[f"{test}_host_s_per_gb"] = per_unit(r.get(f"{test}_cpu_host_s"), gb)
        r[f"{test}_gbit_per_daemon_s"] = per_unit(8 * gb if gb else None, r.get(f"{test}_cpu_daemon_s"))
        r[f"{test}_gbit_per_host_s"] = per_unit(8 * gb if gb else None, r.get(f"{test}_cpu_host_s"))
    mpkt = r["udp64_rx_pkts"] / 1e6 if r.get("udp64_rx_pkts") else None
    r["udp64_daemon_s_per_mpkt"] = per_unit(r.get("udp64_cpu_daemon_s"), mpkt)
    r["udp64_host_s_per_mpkt"] = per_unit(r.get("udp64_cpu_host_s"), mpkt)
    n = r.get("ping_replies")
    d, h = r.get("ping_cpu_daemon_s"), r.get("ping_cpu_host_s")
    r["ping_daemon_ms_per_ping"] = per_unit(d * 1000 if d is not None else None, n)
    r["ping_host_ms_per_ping"] = per_unit(h * 1000 if h is not None else None, n)
    return r


# ---- the report
RATIO_KEYS = [("tcp1_gbps", "TCPx1"), ("tcp4_gbps", "TCPx4"), ("udp64_rx_kpps", "UDP64 rx"),
              ("tcp1_gbit_per_daemon_s", "Gbit per daemon CPU-s"), ("tcp1_host_s_per_gb", "host CPU-s/GB (lower wins)")]


def ratios(runs: dict[str, list[dict]], subject: str) -> dict:
    """The subject against every other system, paired per repetition."""
    out = {}
    for ref in runs:
        if ref == subject:
            continue
        r = {key: paired(runs[subject], runs[ref], key) for key, _ in RATIO_KEYS}
        r["rtt_added"] = paired(runs[subject], runs[ref], "rtt_med_us", base=runs["underlay"]) \
            if "underlay" in runs and ref != "underlay" else []
        out[ref] = r
    return out


def summarize(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for s, rs in runs.items():
        keys = {k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        summary[s] = {k: median([r.get(k) for r in rs]) for k in sorted(keys)}
        steal = sum(r.get(f"{t}_steal_s") or 0 for r in rs for t in ("tcp1", "tcp4", "udp64", "ping"))
        wall = sum(r.get(f"{t}_wall_s") or 0 for r in rs for t in ("tcp1", "tcp4", "udp64", "ping"))
        summary[s]["steal_pct"] = 100 * steal / (wall * (os.cpu_count() or 1)) if wall else None
    return summary


def render(summary: dict, rat: dict, knobs: dict, a: argparse.Namespace) -> str:
    label = {s: knobs.get(s, {}).get("label", s) for s in summary}
    rows = []
    for s, m in summary.items():
        udp = f"{fmt(m.get('udp64_rx_kpps'), 1)} ({fmt(m.get('udp64_loss_pct'), 0)}%)"
        retr = f"{fmt(m.get('tcp1_retr'), 0)} ({fmt(m.get('tcp1_tun_drops_a'), 0)})"
        rows.append([label[s], fmt(m.get("tcp1_gbps")), fmt(m.get("tcp4_gbps")), udp, fmt(m.get("rtt_med_us"), 0),
                     retr, fmt(m.get("tcp1_gbit_per_daemon_s")),
                     fmt(m.get("tcp1_daemon_s_per_gb"), 1), fmt(m.get("tcp1_host_s_per_gb"), 1)])
    out = [table(["system", "TCPx1 Gbit/s", "TCPx4 Gbit/s", "UDP64 rx kpps (loss)", "RTT med us",
                  "TCPx1 retr (TUN drops)", "Gbit per daemon CPU-s", "daemon CPU-s/GB", "host CPU-s/GB"], rows)]
    rows = []
    for s, m in summary.items():
        rows.append([label[s]] + [f"{fmt(m.get(f'{t}_daemon_{u}'), d)} / {fmt(m.get(f'{t}_host_{u}'), d)}"
                                  for t, u, d in (("tcp1", "s_per_gb", 1), ("tcp4", "s_per_gb", 1),
                                                  ("udp64", "s_per_mpkt", 1), ("ping", "ms_per_ping", 2))]
                    + [f"{fmt(m.get('tcp1_cpu_a_s'))} / {fmt(m.get('tcp1_cpu_b_s'))}", fmt(m.get("steal_pct"), 1)])
    out += ["", "CPU in every test, daemons (both) / host (busy + steal), medians:", "",
            table(["system", "TCPx1 s/GB", "TCPx4 s/GB", "UDP64 s per M pkts", "ping ms per ping",
                   f"TCPx1 CPU-s sender / receiver daemon ({a.time} s)", "steal %"], rows)]
    if a.subject in summary:
        rows = [[label[ref]] + [fmt_ratio(r.get(k, [])) for k, _ in RATIO_KEYS] + [fmt_ratio(r.get("rtt_added", []))]
                for ref, r in rat.items()]
        out += ["", f"{label[a.subject]} against each system, paired per repetition: median (min-max):", "",
                table(["against", *[n for _, n in RATIO_KEYS], "RTT added (lower wins)"], rows)]
    out += ["", f"{a.reps} repetitions, system order rotated each one; TCP {a.time} s, UDP {a.udp_time} s, "
                f"{a.pings} pings 20 ms apart; CPU metered in every test"]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tunnel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--systems", default=None,
                   help=f"comma list from {', '.join(SETUP)} (default {DEFAULT_SYSTEMS}, "
                        "plus wireguard-go-upstream with --wg-bin)")
    p.add_argument("--wg-bin", help="an upstream wireguard-go binary (shared/bench/build_wggo.sh) as its own row")
    p.add_argument("--flatnet-cipher", default="auto", choices=("auto", "chacha20-poly1305", "aes-256-gcm"),
                   help="Flatnet's [tun] cipher (default auto, Flatnet's default: AES-256-GCM where both have AES-NI)")
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("-t", "--time", type=int, default=10, help="iperf3 TCP seconds")
    p.add_argument("--udp-time", type=int, default=5)
    p.add_argument("--pings", type=int, default=200, help="pings per system and repetition, 20 ms apart")
    p.add_argument("--subject", default=SUBJECT, help="the system the ratios are of (default flatnet)")
    p.add_argument("--json", help="write results here")
    p.add_argument("--png", help="draw a chart here (matplotlib)")
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved run again (no measuring)")
    a = p.parse_args(argv)
    if a.report:
        with open(a.report) as f:
            doc = json.load(f)["results"]
        for k in ("reps", "time", "udp_time", "pings", "subject"):
            setattr(a, k, doc["params"][k])
        print(render(doc["summary"], {ref: {k: v["per_rep"] for k, v in r.items()} for ref, r in doc["ratios"].items()},
                     doc["knobs"], a))
        return 0
    systems = (a.systems or DEFAULT_SYSTEMS + (",wireguard-go-upstream" if a.wg_bin else "")).split(",")
    for s in systems:
        if s not in SETUP:
            raise SystemExit(f"unknown system {s}; choose from {', '.join(SETUP)}")
    if "wireguard-go-upstream" in systems and not a.wg_bin:
        raise SystemExit("wireguard-go-upstream needs --wg-bin PATH (build it with shared/bench/build_wggo.sh)")
    if a.wg_bin and not os.access(a.wg_bin, os.X_OK):
        raise SystemExit(f"--wg-bin {a.wg_bin}: not an executable file")
    if not 1 <= a.reps <= 50 or not 1 <= a.time <= 120 or not 1 <= a.udp_time <= 120 or not 1 <= a.pings <= 2000:
        raise SystemExit("bounds: 1-50 repetitions, 1-120 s per test, 1-2000 pings")
    if os.geteuid() != 0:
        raise SystemExit("the tunnel benchmark builds namespaces: run it as root")
    work = tempfile.mkdtemp(prefix="fnbench-")
    t = Topology(work)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    targets, knobs, orders = {}, {}, []
    try:
        t.up()
        t.wait_ping(UL_B)
        for s in systems:
            print(f"[tunnel] setting up {s}", file=sys.stderr, flush=True)
            targets[s], knobs[s] = SETUP[s](t, a)
        for s, procs in t.procs.items():  # what each daemon's UDP sockets got, once all run
            knobs[s]["buffers"] = {n: udp_buffers(p.pid) for n, p in zip("ab", procs, strict=True)}
        for rep in range(a.reps):
            orders.append(rotation(systems, rep))
            for s in orders[-1]:
                print(f"[tunnel] rep {rep + 1}/{a.reps}: {s}", file=sys.stderr, flush=True)
                runs[s].append(measure(t, s, targets[s], a, knobs[s]["devs"]))
        for s in systems:  # drops on the tunnel interfaces over the whole run (e.g. a full TUN queue)
            knobs[s]["link_stats"] = {h: link_stats(ns, knobs[s]["devs"][h]) for h, ns in (("a", t.a), ("b", t.b))}
    finally:
        t.down()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs)
    rat = ratios(runs, a.subject) if a.subject in runs else {}
    print(render(summary, rat, knobs, a))
    errors = [f"{s} rep {i + 1}: {e}" for s, rs in runs.items() for i, r in enumerate(rs) for e in r["errors"]]
    if errors:
        print("\nerrors:\n" + "\n".join(errors))
    host = {"rmem_max": open("/proc/sys/net/core/rmem_max").read().strip(),
            "wmem_max": open("/proc/sys/net/core/wmem_max").read().strip(),
            "rmem_default": open("/proc/sys/net/core/rmem_default").read().strip(),
            "iperf3": _version(["iperf3", "--version"], r"iperf (\S+)")}
    write_json(a.json, "tunnel", {
        "summary": summary, "runs": runs, "orders": orders, "knobs": knobs, "host_sysctls": host,
        "ratios": {ref: {k: {"per_rep": v, "min_median_max": spread(v)} for k, v in r.items()}
                   for ref, r in rat.items()},
        "labels": {s: knobs.get(s, {}).get("label", s) for s in systems},
        "params": {"reps": a.reps, "time": a.time, "udp_time": a.udp_time, "pings": a.pings, "subject": a.subject,
                   "systems": systems, "wg_bin": a.wg_bin, "argv": argv}})
    if a.png:
        from benchmarks.chart import bar_chart
        bar_chart(a.png, summary, {s: knobs.get(s, {}).get("label", s) for s in systems}, a.subject, runs)
    return 0
