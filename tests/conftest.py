import os
import subprocess

import pytest

from tests.harness.netns import RUN_PREFIX, Netns


def pytest_collection_modifyitems(config, items):
    # privileged tiers are part of the README's test command (CI runs as root): they fail,
    # never skip, when the machine cannot run them; a plain user run skips them loudly.
    if os.geteuid() == 0:
        return
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root (run the README's test command as root)"))


@pytest.fixture
def netns_factory():
    made: list[Netns] = []

    def make(tag: str = "") -> Netns:
        ns = Netns(tag)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN_PREFIX


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces():
    yield
    left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if n.startswith(RUN_PREFIX)]
    for n in left:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
