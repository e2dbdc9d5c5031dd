"""The demo and test lab, not an operator's tool: a Flatnet network on one machine.
Hosts are network namespaces on an underlay bridge, each running flatnet-engine, with
container namespaces attached by the CNI plugin.

Used by `flatnet up` / `flatnet down` (scripts/demo.sh), the integration and e2e tests
and the benchmarks. All traffic stays inside namespaces made here (the underlay has no
route out). State is written to <workdir>/lab.json so `flatnet down` can remove
everything later. It runs the code this interpreter imports (flatnet.paths.code_root),
from a checkout or an installed wheel alike.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from flatnet.paths import code_root

UNDERLAY = "192.0.2"
PORT = 4787
GATEWAY_PORT = 8080
METRICS_PORT = 9587
CLIENT_IP = f"{UNDERLAY}.200"  # the underlay bridge's own address: a "LAN client" in the lab
UNDERLAY6 = "2001:db8:f1a7:"   # Lab(ipv6=True): host i is 2001:db8:f1a7::i, the lighthouse ::fe
LIGHTHOUSE_NAME = "lighthouse.lab.invalid"  # Lab(lighthouse_by_name=True): the name in the hosts file


def hostport(ip: str, port: int) -> str:
    """An endpoint as configs write it: 192.0.2.1:4787, [2001:db8::1]:4787."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
                 mtu: int = 1420, offloads: bool = True, spin: bool = True, moderation_us: int = 100,
                 lighthouse: bool = False,
                 nat: dict[int, str] | None = None, gateways: bool = False,
                 groups: dict[int, list[str]] | None = None, extra_config: dict[int, str] | None = None,
                 lighthouses: int = 1, compact_cipher: dict[int, bool] | None = None,
                 cipher: dict[int, str] | None = None,
                 ipv6: bool = False, lighthouse_by_name: bool = False, lighthouse_relay: bool = True,
                 lighthouse_config: str = "") -> None:
        """lighthouse: hosts find each other and take their /24 through a lighthouse
        (no static peers); nat: {host index: "cone" | "random"} puts that host behind
        a router namespace doing MASQUERADE (random: --random-fully); ipv6: the underlay
        has IPv6 addresses only (no IPv4 at all; not with nat or more lighthouses);
        lighthouse_by_name: engines are given the lighthouse as LIGHTHOUSE_NAME:PORT and
        a hosts file ([resolve] hosts) that maps it; lighthouse_relay: false writes
        `[relay] enabled = false` for the lighthouses (only node relays relay);
        lighthouse_config: TOML appended to every lighthouse's config (e.g. a [store])."""
        self.lighthouse_relay = lighthouse_relay
        self.lighthouse_config = lighthouse_config
        self.ipv6 = ipv6
        self.lighthouse_by_name = lighthouse_by_name
        self.offloads = offloads
        self.spin = spin
        self.moderation_us = moderation_us
        self.gateways = gateways
        self.groups = groups or {}              # host index -> certificate groups
        self.extra_config = extra_config or {}  # host index -> TOML appended to its config
        self.compact_cipher = compact_cipher or {}  # host index -> [tun] compact_cipher
        self.cipher = cipher or {}  # host index (host-N: N) -> [tun] cipher (default auto)
        self.lighthouse = lighthouse
        self.nat = nat or {}
        self.n_lighthouses = lighthouses if lighthouse else 0
        self.lh_ns = f"{prefix}-lh"
        self.lh_pid = 0
        self.lh_pids: dict[int, int] = {}   # lighthouse 2..n (they share lighthouse 1's lease database)
        self.prefix = prefix
        self.workdir = os.path.abspath(workdir)
        self.ul_ns = f"{prefix}-ul"
        self.network = network
        self.mtu = mtu
        base = network.split(".")[:2]
        self.hosts = [Host(i, f"{prefix}-h{i}", f"host-{i}", f"{UNDERLAY6}:{i}" if ipv6 else f"{UNDERLAY}.{i}",
                           f"{base[0]}.{base[1]}.{i}.0/24", os.path.join(self.workdir, f"host-{i}"))
                      for i in range(1, hosts + 1)]
        self.namespaces: list[str] = []

    # ---- persistence for `flatnet down`
    def save(self) -> None:
        state = {"prefix": self.prefix, "namespaces": self.namespaces, "network": self.network,
                 "hosts": [h.__dict__ for h in self.hosts], "lh_pid": self.lh_pid,
                 "lh_pids": {str(k): v for k, v in self.lh_pids.items()}}
        with open(os.path.join(self.workdir, "lab.json"), "w") as f:
            json.dump(state, f, indent=1)

    @classmethod
    def load(cls, workdir: str) -> "Lab":
        with open(os.path.join(workdir, "lab.json")) as f:
            state = json.load(f)
        lab = cls(state["prefix"], workdir, 0, state["network"])
        lab.hosts = [Host(**h) for h in state["hosts"]]
        lab.namespaces = state["namespaces"]
        lab.lh_pid = state.get("lh_pid", 0)
        lab.lh_pids = {int(k): v for k, v in state.get("lh_pids", {}).items()}
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
        os.chmod(self.workdir, 0o755)  # gateways' nginx workers (not root) reach the engines' sockets
        self.save()
        self._netns(self.ul_ns)
        sh("ip", "-n", self.ul_ns, "link", "add", "ulbr", "type", "bridge")
        sh("ip", "-n", self.ul_ns, "link", "set", "ulbr", "up")
        if self.ipv6:
            sh("ip", "-n", self.ul_ns, "addr", "add", f"{UNDERLAY6}:c8/64", "dev", "ulbr", "nodad")
        else:
            sh("ip", "-n", self.ul_ns, "addr", "add", f"{CLIENT_IP}/24", "dev", "ulbr")
        self._pki()
        if self.lighthouse:
            self._start_lighthouse()
        for h in self.hosts:
            self._netns(h.ns)
            uplink_ns = h.ns
            if h.index in self.nat:
                uplink_ns = self._router(h, self.nat[h.index])
            sh("ip", "link", "add", "ul0", "netns", uplink_ns, "type", "veth", "peer", "name", f"ul-{h.index}",
               "netns", self.ul_ns)
            sh("ip", "-n", self.ul_ns, "link", "set", f"ul-{h.index}", "master", "ulbr", "up")
            sh("ip", "-n", uplink_ns, "addr", "add", *self._underlay_addr(h.underlay_ip), "dev", "ul0")
            sh("ip", "-n", uplink_ns, "link", "set", "ul0", "mtu", "1500", "up")
            self._write_config(h)
        for h in self.hosts:
            self.start_engine(h)
        for h in self.hosts:
            self.wait_engine(h)
            for _ in range(containers_per_host):
                self.add_container(h)
        self.wait_peers(wait)
        if self.gateways:
            for h in self.hosts:
                self.start_gateway(h)
        self.save()

    def _underlay_addr(self, ip: str) -> list[str]:
        # nodad: usable at once (duplicate address detection would hold it ~2 s)
        return [f"{ip}/64", "nodad"] if ":" in ip else [f"{ip}/24"]

    @property
    def lighthouse_ip(self) -> str:
        return f"{UNDERLAY6}:fe" if self.ipv6 else f"{UNDERLAY}.254"

    # ---- gateways (nginx + gateway-lua) on each host's underlay address
    def gateway_prefix(self, h: Host) -> str:
        return os.path.join(h.dir, "gateway")

    def start_gateway(self, h: Host) -> None:
        from flatnet import gateway
        gateway.render(self.gateway_prefix(h), f"{h.underlay_ip}:{GATEWAY_PORT}", h.socket)
        gateway.start(self.gateway_prefix(h), netns=h.ns)

    def stop_gateways(self) -> None:
        from flatnet import gateway
        for h in self.hosts:
            if os.path.exists(os.path.join(self.gateway_prefix(h), "nginx.pid")):
                gateway.stop(self.gateway_prefix(h), netns=h.ns)

    def _router(self, h: Host, kind: str) -> str:
        """A home router: the host sits on 172.16.<i>.0/24 behind it; the router has the
        host's underlay address and masquerades. A cone NAT drops unsolicited inbound
        packets to itself (DESIGN.md: otherwise an early punch takes the port); random
        maps every flow to a random port."""
        r = self._netns(f"{self.prefix}-r{h.index}")
        sh("ip", "link", "add", "lan0", "netns", h.ns, "type", "veth", "peer", "name", "lan0", "netns", r)
        sh("ip", "-n", r, "addr", "add", f"172.16.{h.index}.1/24", "dev", "lan0")
        sh("ip", "-n", h.ns, "addr", "add", f"172.16.{h.index}.2/24", "dev", "lan0")
        sh("ip", "-n", r, "link", "set", "lan0", "up")
        sh("ip", "-n", h.ns, "link", "set", "lan0", "up")
        sh("ip", "-n", h.ns, "route", "add", "default", "via", f"172.16.{h.index}.1")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        masq = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "ul0", "-j", "MASQUERADE"]
        sh(*(masq + (["--random-fully"] if kind == "random" else [])), ns=r)
        sh("iptables", "-A", "INPUT", "-i", "ul0", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP",
           ns=r)
        return r

    def _start_lighthouse(self) -> None:
        self._netns(self.lh_ns)
        sh("ip", "link", "add", "ul0", "netns", self.lh_ns, "type", "veth", "peer", "name", "ul-lh", "netns",
           self.ul_ns)
        sh("ip", "-n", self.ul_ns, "link", "set", "ul-lh", "master", "ulbr", "up")
        sh("ip", "-n", self.lh_ns, "addr", "add", *self._underlay_addr(self.lighthouse_ip), "dev", "ul0")
        sh("ip", "-n", self.lh_ns, "link", "set", "ul0", "up")
        d = os.path.join(self.workdir, "lighthouse")
        os.makedirs(d, exist_ok=True)
        pki = os.path.join(self.workdir, "pki")
        with open(os.path.join(d, "lighthouse.toml"), "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/lighthouse.crt"\nkey = "{pki}/lighthouse.key"\n'
                    f'[network]\ncidr = "{self.network}"\n[paths]\nstate_dir = "{d}/state"\nrun_dir = "{d}/run"\n'
                    + ("" if self.lighthouse_relay else "[relay]\nenabled = false\n") + self.lighthouse_config)
        self.start_lighthouse()
        for i in range(2, self.n_lighthouses + 1):
            self._extra_lighthouse(i)

    def _extra_lighthouse(self, i: int) -> None:
        """Lighthouse i at 192.0.2.(255-i), sharing lighthouse 1's lease database: one
        lease authority, several places to register, query and relay."""
        ns = self._netns(f"{self.prefix}-lh{i}")
        sh("ip", "link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name", f"ul-lh{i}", "netns", self.ul_ns)
        sh("ip", "-n", self.ul_ns, "link", "set", f"ul-lh{i}", "master", "ulbr", "up")
        sh("ip", "-n", ns, "addr", "add", f"{UNDERLAY}.{255 - i}/24", "dev", "ul0")
        sh("ip", "-n", ns, "link", "set", "ul0", "up")
        d, first = os.path.join(self.workdir, f"lighthouse-{i}"), os.path.join(self.workdir, "lighthouse")
        os.makedirs(d, exist_ok=True)
        pki = os.path.join(self.workdir, "pki")
        with open(os.path.join(d, "lighthouse.toml"), "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/lighthouse-{i}.crt"\nkey = "{pki}/lighthouse-{i}.key"\n'
                    f'[network]\ncidr = "{self.network}"\n[paths]\nstate_dir = "{first}/state"\nrun_dir = "{d}/run"\n'
                    + ("" if self.lighthouse_relay else "[relay]\nenabled = false\n") + self.lighthouse_config)
        logf = open(os.path.join(d, "lighthouse.log"), "a")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "flatnet.lighthouse", "--config",
                                 os.path.join(d, "lighthouse.toml")], cwd=code_root(), stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.lh_pids[i] = proc.pid
        self.save()

    def start_lighthouse(self) -> None:
        d = os.path.join(self.workdir, "lighthouse")
        logf = open(os.path.join(d, "lighthouse.log"), "a")
        proc = subprocess.Popen(["ip", "netns", "exec", self.lh_ns, sys.executable, "-m", "flatnet.lighthouse", "--config",
                                 os.path.join(d, "lighthouse.toml")], cwd=code_root(), stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.lh_pid = proc.pid
        self.save()
        end = time.monotonic() + 15
        while not os.path.exists(os.path.join(d, "run", "lighthouse.sock")):
            if time.monotonic() > end or not _alive(proc.pid):
                raise RuntimeError("lighthouse did not start:\n" + _tail(os.path.join(d, "lighthouse.log")))
            time.sleep(0.05)

    def stop_lighthouse(self, sig: int = signal.SIGTERM, i: int = 1) -> None:
        if i != 1:
            pid = self.lh_pids.pop(i, 0)
            if pid and _alive(pid):
                os.killpg(pid, sig)
            self.save()
            return
        if self.lh_pid and _alive(self.lh_pid):
            os.killpg(self.lh_pid, sig)
            end = time.monotonic() + 10
            while _alive(self.lh_pid) and time.monotonic() < end:
                time.sleep(0.05)
        try:
            os.unlink(os.path.join(self.workdir, "lighthouse", "run", "lighthouse.sock"))
        except FileNotFoundError:
            pass
        self.lh_pid = 0
        self.save()

    def lighthouse_status(self) -> dict:
        from flatnet.engine.io import control
        return json.loads(control.get(os.path.join(self.workdir, "lighthouse", "run", "lighthouse.sock"),
                                      "/status")[1])

    def _pki(self) -> None:
        pki = os.path.join(self.workdir, "pki")
        if os.path.exists(os.path.join(pki, "ca.crt")):
            return
        self._cli("ca", "init", "--dir", pki, "--name", f"{self.prefix}-ca")
        for h in self.hosts:
            self._cli("cert", "sign", "--ca-dir", pki, "--name", h.name, "--groups", ",".join(self.groups.get(h.index, [])))
        if self.lighthouse:
            self._cli("cert", "sign", "--ca-dir", pki, "--name", "lighthouse")
            for i in range(2, self.n_lighthouses + 1):
                self._cli("cert", "sign", "--ca-dir", pki, "--name", f"lighthouse-{i}")

    def _cli(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "flatnet", *args], cwd=code_root(), capture_output=True,
                              timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"flatnet {' '.join(args)}: {proc.stderr.decode()}")

    def _write_config(self, h: Host) -> None:
        os.makedirs(os.path.join(h.dir, "run"), exist_ok=True)
        pki = os.path.join(self.workdir, "pki")
        lines = [
            "[pki]", f'ca = "{pki}/ca.crt"', f'cert = "{pki}/{h.name}.crt"', f'key = "{pki}/{h.name}.key"',
            "[network]", f'cidr = "{self.network}"',
        ] + ([] if self.lighthouse else [f'subnet = "{h.subnet}"']) + [
            "[listen]", f"port = {PORT}", "[tun]", f"mtu = {self.mtu}",
            f"offloads = {'true' if self.offloads else 'false'}", f"spin = {'true' if self.spin else 'false'}",
            f"moderation_us = {self.moderation_us}",
            f"compact_cipher = {'true' if self.compact_cipher.get(h.index, True) else 'false'}",
            f'cipher = "{self.cipher.get(h.index, "auto")}"',
            "[paths]", f'run_dir = "{h.dir}/run"', f'state_dir = "{h.dir}/state"',
        ]
        # lab hosts share the machine's Podman: they must not publish its containers
        lines += ["[gateway]", "podman_labels = false"]
        if self.gateways:
            lines += [f'lan_address = "{hostport(h.underlay_ip, GATEWAY_PORT)}"']
        # metrics on the host namespace's own loopback; CNI counters from this host's IPAM dir
        lines += ["[metrics]", f'listen = "127.0.0.1:{METRICS_PORT}"', f'cni_data_dir = "{h.dir}/ipam"']
        if self.lighthouse and self.lighthouse_by_name:
            with open(os.path.join(h.dir, "hosts"), "w") as f:
                f.write(f"# the lab's own names (not the machine's /etc/hosts)\n{self.lighthouse_ip} {LIGHTHOUSE_NAME}\n")
            lines += ["[resolve]", f'hosts = "{h.dir}/hosts"']
        if self.lighthouse:
            first = f"{LIGHTHOUSE_NAME}:{PORT}" if self.lighthouse_by_name else hostport(self.lighthouse_ip, PORT)
            lines += ["[[lighthouses]]", 'name = "lighthouse"', f'cert = "{pki}/lighthouse.crt"',
                      f'endpoints = ["{first}"]']
            for i in range(2, self.n_lighthouses + 1):
                lines += ["[[lighthouses]]", f'name = "lighthouse-{i}"', f'cert = "{pki}/lighthouse-{i}.crt"',
                          f'endpoints = ["{UNDERLAY}.{255 - i}:{PORT}"]']
        else:
            for o in self.hosts:
                if o is not h:
                    lines += ["[[peers]]", f'name = "{o.name}"', f'cert = "{pki}/{o.name}.crt"',
                              f'endpoints = ["{hostport(o.underlay_ip, PORT)}"]', f'subnet = "{o.subnet}"']
        with open(h.config, "w") as f:
            f.write("\n".join(lines) + "\n" + self.extra_config.get(h.index, ""))

    # ---- engines
    def start_engine(self, h: Host) -> None:
        logf = open(h.log, "a")
        proc = subprocess.Popen(["ip", "netns", "exec", h.ns, sys.executable, "-m", "flatnet.engine", "--config", h.config],
                                cwd=code_root(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
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
        from flatnet.engine.io import control
        status, body = control.get(h.socket, "/peers")
        return json.loads(body)

    def status(self, h: Host) -> dict:
        from flatnet.engine.io import control
        return json.loads(control.get(h.socket, "/status")[1])

    def wait_peers(self, timeout: float) -> None:
        if self.lighthouse:  # peers are found on demand: wait for the leases instead
            for h in self.hosts:
                h.subnet = self.status(h)["subnet"]
            self.save()
            return
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

    def cni(self, h: Host, command: str, cid: str, netns: str, name: str = "",
            aliases: tuple[str, ...] = ()) -> dict | None:
        """name and aliases are passed as Podman 4.3 does (CNI_ARGS K8S_POD_NAME,
        runtimeConfig.aliases)."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
               "PYTHONPATH": code_root(), "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={name}" if name else ""}
        conf = self.cni_conf(h)
        if aliases:
            conf["runtimeConfig"] = {"aliases": {conf["name"]: list(aliases)}}
        proc = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-m", "flatnet.cni"],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=30)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} on {h.name}: {out}")
        return out

    def add_container(self, h: Host, name: str = "", aliases: tuple[str, ...] = ()) -> dict:
        n = len(h.containers) + 1
        while f"{self.prefix}-c{h.index}-{n}" in self.namespaces:  # names stay unique under churn
            n += 1
        ns = self._netns(f"{self.prefix}-c{h.index}-{n}")
        cid = uuid.uuid4().hex + uuid.uuid4().hex  # like Podman's: the host veth is fn-<first 12>
        result = self.cni(h, "ADD", cid, f"/run/netns/{ns}", name, aliases)
        c = {"ns": ns, "id": cid, "ip": result["ips"][0]["address"].split("/")[0], "name": name,
             "dns": result.get("dns") or {}}
        h.containers.append(c)
        self.save()
        return c

    def remove_container(self, h: Host, c: dict) -> None:
        """CNI DEL (as Podman on stop), then the namespace goes."""
        self.cni(h, "DEL", c["id"], f"/run/netns/{c['ns']}")
        h.containers.remove(c)
        delete_netns(c["ns"])
        self.namespaces.remove(c["ns"])
        self.save()

    # ---- teardown
    def down(self) -> None:
        self.stop_gateways()
        for h in self.hosts:
            self.stop_engine(h)
        for i in list(self.lh_pids):
            self.stop_lighthouse(i=i)
        self.stop_lighthouse()
        for ns in reversed(self.namespaces):
            delete_netns(ns)
        self.namespaces = []
        shutil.rmtree(self.workdir, ignore_errors=True)


def delete_netns(ns: str) -> None:
    """Kill whatever still runs in the namespace, then delete it (teardown, also after a failure)."""
    for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", ns, check=False)


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
