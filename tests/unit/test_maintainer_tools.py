"""ruff and mypy, configured in pyproject.toml, run as part of the test command.

ruff check covers the whole tree (bug-finding rules only). ruff format and mypy --strict
cover the files that conform today: a module joins a list below when its owner has
formatted or typed it (never by reformatting others' files in passing)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FORMATTED = [
    "cni/install_podman.py",
    "flatnet/completion.py",
    "flatnet/install.py",
    "flatnet/paths.py",
    "tests/e2e/test_install.py",
    "tests/e2e/test_wheel.py",
    "tests/unit/cni/test_install_podman.py",
    "tests/unit/cni/test_ipam.py",
    "tests/unit/test_cli_conventions.py",
    "tests/unit/lighthouse/test_leases.py",
    "tests/unit/test_maintainer_tools.py",
    "tests/unit/test_units.py",
]

# mypy --strict (pyproject.toml [tool.mypy]); the rest of engine/proto, lighthouse/ and
# cni/ is listed in CONTRIBUTING.md as the work left
TYPED = [
    "cni/__init__.py",
    "cni/__main__.py",
    "cni/install_podman.py",
    "cni/ipam.py",
    "cni/ipv4.py",
    "cni/netlink.py",
    "cni/netns.py",
    "cni/ports.py",
    "cni/store.py",
    "cni/warm.py",
    "cni/warmd.py",
    "engine/proto/confparse.py",
    "engine/proto/__init__.py",
    "engine/proto/constants.py",
    "engine/proto/errors.py",
    "lighthouse/__init__.py",
    "lighthouse/leases.py",
    "flatnet/completion.py",
    "flatnet/install.py",
    "flatnet/paths.py",
    "flatnet/units.py",
]


def tool(module: str) -> list[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (scripts/test.sh installs the test extra: pip install -e '.[test]')")
    return [sys.executable, "-m", module]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check():
    proc = run(tool("ruff") + ["check", "--no-cache", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_of_the_formatted_files():
    proc = run(tool("ruff") + ["format", "--no-cache", "--check", *FORMATTED])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def installed_layout(tmp: pathlib.Path) -> pathlib.Path:
    """The checkout seen as it installs (flatnet/engine, flatnet/cni, ...), made of
    symbolic links: mypy names modules by their paths and does not follow the
    checkout's __path__ extension in flatnet/__init__.py."""
    pkg = tmp / "flatnet"
    pkg.mkdir()
    for path in (pathlib.Path(REPO) / "flatnet").glob("*.py"):
        (pkg / path.name).symlink_to(path)
    for top in ("engine", "cni", "lighthouse"):
        (pkg / top).symlink_to(pathlib.Path(REPO) / top)
    (tmp / "pyproject.toml").symlink_to(pathlib.Path(REPO) / "pyproject.toml")
    return tmp


def test_mypy_strict_on_the_typed_modules(tmp_path):
    mypy = tool("mypy")
    layout = installed_layout(tmp_path)
    files = [f if f.startswith("flatnet/") else f"flatnet/{f}" for f in TYPED]
    proc = subprocess.run(
        mypy + ["--no-incremental", "--follow-imports=silent", *files],
        cwd=layout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"in {len(files)} source files" in proc.stdout, proc.stdout
