"""etcd clusters for tests: Debian's `etcd` binary, members on loopback addresses with
free ports (or inside a namespace the test made), a temporary data dir each; every
member is killed and its files removed on stop(), also after a failed test."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def available() -> bool:
    return os.path.exists(ETCD)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Member:
    def __init__(self, name: str, host: str, client_port: int, peer_port: int, data_dir: str) -> None:
        self.name, self.host, self.client_port, self.peer_port, self.data_dir = name, host, client_port, peer_port, data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"


class EtcdCluster:
    def __init__(self, base_dir: str, size: int = 1, hosts: list[str] | None = None, ns: str | None = None,
                 token: str = "flatnet-test") -> None:
        """hosts: one address per member (default 127.0.0.1 for all); ns: run members in
        this network namespace (then the ports are chosen as fixed numbers: 23790+)."""
        self.base_dir, self.ns, self.token = base_dir, ns, token
        hosts = hosts or ["127.0.0.1"] * size
        self.members = []
        for i, host in enumerate(hosts):
            cport = 23790 + 2 * i if ns else _free_port(host)
            pport = 23791 + 2 * i if ns else _free_port(host)
            self.members.append(Member(f"m{i}", host, cport, pport, os.path.join(base_dir, f"m{i}")))
        self.log_files: list = []

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30) -> "EtcdCluster":
        for m in self.members:
            self.start_member(m, new=True)
        self.wait_healthy(timeout)
        return self

    def start_member(self, m: Member, new: bool = False) -> None:
        os.makedirs(m.data_dir, exist_ok=True)
        initial = ",".join(f"{o.name}=http://{o.host}:{o.peer_port}" for o in self.members)
        argv = [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", f"http://{m.host}:{m.client_port}",
                "--advertise-client-urls", f"http://{m.host}:{m.client_port}",
                "--listen-peer-urls", f"http://{m.host}:{m.peer_port}",
                "--initial-advertise-peer-urls", f"http://{m.host}:{m.peer_port}",
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                # quick elections on a busy shared test machine; small WAL
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--snapshot-count", "5000", "--quota-backend-bytes", str(256 * 1024 * 1024),
                "--log-level", "warn", "--logger", "zap"]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns] + argv
        log = open(os.path.join(self.base_dir, f"{m.name}.log"), "ab")
        self.log_files.append(log)
        m.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def kill_member(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(timeout=10)
        m.proc = None

    def healthy(self, m: Member) -> bool:
        try:
            if self.ns:
                probe = (f"import urllib.request; print(urllib.request.urlopen('http://{m.endpoint}/health', "
                         "timeout=1).read().decode())")
                out = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", probe],
                                     capture_output=True, text=True, timeout=5)
                return '"true"' in out.stdout
            with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, subprocess.TimeoutExpired):
            return False

    def wait_healthy(self, timeout: float = 30, members: list[Member] | None = None) -> None:
        end = time.monotonic() + timeout
        for m in members or [m for m in self.members if m.proc is not None]:
            while not self.healthy(m):
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited: see {self.base_dir}/{m.name}.log")
                if time.monotonic() > end:
                    raise TimeoutError(f"etcd member {m.name} not healthy within {timeout} s")
                time.sleep(0.1)

    def stop(self) -> None:
        for m in self.members:
            self.kill_member(m)
        for f in self.log_files:
            f.close()
