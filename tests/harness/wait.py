"""Waiting on a condition instead of sleeping: a test that sleeps and then asserts passes
or fails with the machine's load; one that waits for the condition (a port listening, a
log line, a counter, a peer state) with a deadline fails only when the condition never
comes, and says which one.

    wait_for(lambda: status()["drops"]["firewall"] > before, 5, "a firewall drop counted")
"""
from __future__ import annotations

import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """predicate()'s first true value, polled every `step` s (up to 1 s as it waits);
    AssertionError naming `what`, the timeout and the last value if none came in time."""
    end = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(step)
        step = min(step * 1.5, 1.0)


def listening(ns: str | None, port: int, proto: str = "tcp") -> bool:
    """Whether a socket listens (tcp) or is bound (udp) on `port` in namespace `ns`."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + ["ss", "-Hln" + ("t" if proto == "tcp" else "u"),
                                                          f"sport = :{port}"]
    return bool(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip())


def wait_listening(ns: str | None, port: int, proto: str = "tcp", timeout: float = 10) -> None:
    wait_for(lambda: listening(ns, port, proto), timeout, f"{proto}/{port} listening in {ns or 'the host'}")


def file_contains(path: str, text: str) -> bool:
    try:
        with open(path, errors="replace") as f:
            return text in f.read()
    except FileNotFoundError:
        return False


def seconds_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> float:
    """How long until predicate() held (for tests that also bound the time); fails like wait_for."""
    start = time.monotonic()
    wait_for(predicate, timeout, what, step)
    return time.monotonic() - start


def tcp_established(ns: str | None, port: int) -> bool:
    """Whether a TCP connection to local `port` is established in namespace `ns`."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + ["ss", "-Htn", "state", "established", f"sport = :{port}"]
    return bool(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip())
