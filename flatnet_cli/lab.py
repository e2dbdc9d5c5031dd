"""A Flatnet network on one machine: hosts are network namespaces on an underlay bridge,
each running flatnet-engine, with container namespaces attached by the CNI plugin.

Used by `flatnet up` / `flatnet down`, the integration tests and the benchmarks. All
traffic stays inside namespaces made here (the underlay has no route out). State is
written to <workdir>/lab.json so `flatnet down` can remove everything later.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDERLAY = "192.0.2"
PORT = 4787


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 30,
       input: bytes | None = None) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc


@dataclass
class Host:
    index: int
    ns: str
    name: str
    underlay_ip: str
    subnet: str
    dir: str
    pid: int = 0
    containers: list[dict] = field(default_factory=list)

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "config.toml")

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "run", "engine.sock")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "engine.log")


class Lab:
    def __init__(self, prefix: str, workdir: str, hosts: int = 2, network: str = "10.87.0.0/16",
                 mtu: int = 1420, offloads: bool = True) -> None:
        self.offloads = offloads
        self.prefix = prefix
        self.workdir = os.path.abspath(workdir)
        self.ul_ns = f"{prefix}-ul"
        self.network = network
        self.mtu = mtu
        base = network.split(".")[:2]
        self.hosts = [Host(i, f"{prefix}-h{i}", f"host-{i}", f"{UNDERLAY}.{i}",
                           f"{base[0]}.{base[1]}.{i}.0/24", os.path.join(self.workdir, f"host-{i}"))
                      for i in range(1, hosts + 1)]
        self.namespaces: list[str] = []

    # ---- persistence for `flatnet down`
    def save(self) -> None:
        state = {"prefix": self.prefix, "namespaces": self.namespaces, "network": self.network,
                 "hosts": [h.__dict__ for h in self.hosts]}
        with open(os.path.join(self.workdir, "lab.json"), "w") as f:
            json.dump(state, f, indent=1)

    @classmethod
    def load(cls, workdir: str) -> "Lab":
        with open(os.path.join(workdir, "lab.json")) as f:
            state = json.load(f)
        lab = cls(state["prefix"], workdir, 0, state["network"])
        lab.hosts = [Host(**h) for h in state["hosts"]]
        lab.namespaces = state["namespaces"]
        return lab

    # ---- build
    def _netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.save()
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def up(self, containers_per_host: int = 1, wait: float = 20.0) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.save()
        self._netns(self.ul_ns)
        sh("ip", "-n", self.ul_ns, "link", "add", "ulbr", "type", "bridge")
        sh("ip", "-n", self.ul_ns, "link", "set", "ulbr", "up")
        self._pki()
        for h in self.hosts:
            self._netns(h.ns)
            sh("ip", "link", "add", "ul0", "netns", h.ns, "type", "veth", "peer", "name", f"ul-{h.index}",
               "netns", self.ul_ns)
            sh("ip", "-n", self.ul_ns, "link", "set", f"ul-{h.index}", "master", "ulbr", "up")
            sh("ip", "-n", h.ns, "addr", "add", f"{h.underlay_ip}/24", "dev", "ul0")
            sh("ip", "-n", h.ns, "link", "set", "ul0", "mtu", "1500", "up")
            self._write_config(h)
        for h in self.hosts:
            self.start_engine(h)
        for h in self.hosts:
            self.wait_engine(h)
            for _ in range(containers_per_host):
                self.add_container(h)
        self.wait_peers(wait)
        self.save()

    def _pki(self) -> None:
        pki = os.path.join(self.workdir, "pki")
        if os.path.exists(os.path.join(pki, "ca.crt")):
            return
        self._cli("ca", "init", "--dir", pki, "--name", f"{self.prefix}-ca")
        for h in self.hosts:
            self._cli("cert", "sign", "--ca-dir", pki, "--name", h.name)

    def _cli(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "flatnet_cli", *args], cwd=REPO, capture_output=True,
                              timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"flatnet {' '.join(args)}: {proc.stderr.decode()}")

    def _write_config(self, h: Host) -> None:
        os.makedirs(os.path.join(h.dir, "run"), exist_ok=True)
        pki = os.path.join(self.workdir, "pki")
        lines = [
            "[pki]", f'ca = "{pki}/ca.crt"', f'cert = "{pki}/{h.name}.crt"', f'key = "{pki}/{h.name}.key"',
            "[network]", f'cidr = "{self.network}"', f'subnet = "{h.subnet}"',
            "[listen]", f"port = {PORT}", "[tun]", f"mtu = {self.mtu}",
            f"offloads = {'true' if self.offloads else 'false'}",
            "[paths]", f'run_dir = "{h.dir}/run"', f'state_dir = "{h.dir}/state"',
        ]
        for o in self.hosts:
            if o is not h:
                lines += ["[[peers]]", f'name = "{o.name}"', f'cert = "{pki}/{o.name}.crt"',
                          f'endpoints = ["{o.underlay_ip}:{PORT}"]', f'subnet = "{o.subnet}"']
        with open(h.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    # ---- engines
    def start_engine(self, h: Host) -> None:
        logf = open(h.log, "a")
        proc = subprocess.Popen(["ip", "netns", "exec", h.ns, sys.executable, "-m", "engine", "--config", h.config],
                                cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        h.pid = proc.pid
        self.save()

    def wait_engine(self, h: Host, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(h.socket) and os.path.exists(os.path.join(h.dir, "run", "lease.json")):
                return
            if h.pid and not _alive(h.pid):
                raise RuntimeError(f"engine of {h.name} exited; log {h.log}:\n" + _tail(h.log))
            time.sleep(0.05)
        raise RuntimeError(f"engine of {h.name} did not start in {timeout:.0f} s; log {h.log}:\n" + _tail(h.log))

    def stop_engine(self, h: Host, sig: int = signal.SIGTERM) -> None:
        if h.pid and _alive(h.pid):
            os.killpg(h.pid, sig)
            end = time.monotonic() + 10
            while _alive(h.pid) and time.monotonic() < end:
                time.sleep(0.05)
            if _alive(h.pid):
                os.killpg(h.pid, signal.SIGKILL)
        if h.pid:
            try:
                os.waitpid(h.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        h.pid = 0
        self.save()

    def peers(self, h: Host) -> list[dict]:
        from engine.io import control
        status, body = control.get(h.socket, "/peers")
        return json.loads(body)

    def wait_peers(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if all(all(p["state"] == "established" for p in self.peers(h)) for h in self.hosts):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("peers did not all connect: " + json.dumps({h.name: self.peers(h) for h in self.hosts}))

    # ---- containers (namespaces attached by the real CNI plugin, in lease mode)
    def cni_conf(self, h: Host) -> dict:
        return {"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet", "mtu": self.mtu,
                "leaseFile": os.path.join(h.dir, "run", "lease.json"), "dataDir": os.path.join(h.dir, "ipam")}

    def cni(self, h: Host, command: str, cid: str, netns: str) -> dict | None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
               "PYTHONPATH": REPO}
        proc = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-m", "cni"],
                              input=json.dumps(self.cni_conf(h)).encode(), env=env, capture_output=True, timeout=30)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} on {h.name}: {out}")
        return out

    def add_container(self, h: Host) -> dict:
        n = len(h.containers) + 1
        ns = self._netns(f"{self.prefix}-c{h.index}-{n}")
        cid = f"{self.prefix}c{h.index}x{n}".replace("-", "") + "0" * 8
        result = self.cni(h, "ADD", cid, f"/run/netns/{ns}")
        c = {"ns": ns, "id": cid, "ip": result["ips"][0]["address"].split("/")[0]}
        h.containers.append(c)
        self.save()
        return c

    # ---- teardown
    def down(self) -> None:
        for h in self.hosts:
            self.stop_engine(h)
        for ns in reversed(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        shutil.rmtree(self.workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"
