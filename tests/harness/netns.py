"""Network namespaces for tests: unique names per run, removed on teardown even on failure."""
from __future__ import annotations

import os
import subprocess
import uuid

RUN_PREFIX = "fnt" + uuid.uuid4().hex[:5]  # unique per test run: parallel runs never collide


def sh(*cmd: str, check: bool = True, ns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class Netns:
    """One namespace; `Netns.path` is what CNI_NETNS takes."""

    counter = 0

    def __init__(self, tag: str = "") -> None:
        Netns.counter += 1
        self.name = f"{RUN_PREFIX}-{tag or 'ns'}{Netns.counter}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(*cmd, check=check, ns=self.name, timeout=timeout)

    def delete(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def leftover_links(prefix: str) -> list[str]:
    out = sh("ip", "-o", "link", "show").stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if line.split(": ")[1].startswith(prefix)]
