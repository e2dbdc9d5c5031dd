"""Network namespaces for tests: unique names per run, removed on teardown even on failure."""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

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

    def link(self, other: "Netns", mine: tuple[str, str], theirs: tuple[str, str], prefix: int = 24) -> None:
        """A veth pair between the two, up, with an address on each end:
        mine = (device, address) here, theirs likewise in `other`."""
        self.run("ip", "link", "add", mine[0], "type", "veth", "peer", "name", theirs[0], "netns", other.name)
        for ns, (dev, addr) in ((self, mine), (other, theirs)):
            ns.run("ip", "addr", "add", f"{addr}/{prefix}", "dev", dev)
            ns.run("ip", "link", "set", dev, "up")

    def inside(self, make: Callable[[], T], timeout: float = 10) -> T:
        """What `make` returns, made by a short-lived thread that entered this namespace
        (setns acts on the calling thread only), so the test process stays where it is.
        A socket made there stays in this namespace."""
        out: list[object] = []

        def run() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                out.append(make())
            except Exception as e:  # handed to the caller
                out.append(e)

        t = threading.Thread(target=run)
        t.start()
        t.join(timeout)
        if not out:
            raise RuntimeError(f"nothing made in {self.name} within {timeout} s")
        if isinstance(out[0], Exception):
            raise RuntimeError(f"in {self.name}: {out[0]}") from out[0]
        return out[0]  # type: ignore[return-value]

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
