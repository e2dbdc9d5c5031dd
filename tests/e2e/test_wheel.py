"""The wheel is the product: built from pyproject.toml, installed into a fresh venv (no
checkout on the path), it runs `flatnet --version` and the CNI plugin's VERSION, and it
carries the files the product reads besides Python (gateway-lua/, deploy/)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from flatnet import __version__

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    return subprocess.run(list(argv), capture_output=True, text=True, cwd="/", **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wheel"))
    src = os.path.join(out, "src")
    # a copy of the checkout: the in-tree build writes build/ and *.egg-info
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", "*.so", "test-artifacts", ".pytest_cache", ".hypothesis"
        ),
    )
    proc = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = glob.glob(os.path.join(out, "flatnet-*.whl"))
    return path


def test_wheel_holds_the_products_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "flatnet/gateway_lua/conf/nginx.conf",
        "flatnet/gateway_lua/conf/flatnet-locations.conf",
        "flatnet/gateway_lua/lib/flatnet/gateway.lua",
        "flatnet/deploy/systemd/flatnet-engine.service",
        "flatnet/deploy/systemd/flatnet-lighthouse.service",
        "flatnet/deploy/systemd/flatnet-gateway.service",
        "flatnet/deploy/systemd/flatnet-cni-warm.service",
        "flatnet/cni/__main__.py",
        "flatnet/lighthouse/__main__.py",
        "flatnet/engine/__main__.py",
    ):
        assert path in names, path
    assert any(n.startswith("flatnet/engine/crypto/_fastpath") and n.endswith(".so") for n in names)
    # one import namespace: nothing of the product lands beside other projects' packages
    assert {n.split("/")[0] for n in names} == {"flatnet", f"flatnet-{__version__}.dist-info"}, sorted(names)[:20]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: prometheus-client" in meta
    assert "Provides-Extra: test" in meta and "Provides-Extra: bench" in meta


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    base = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    venv = str(tmp_path / "venv")
    proc = run(base, "-m", "venv", venv)
    assert proc.returncode == 0, proc.stderr
    proc = run(os.path.join(venv, "bin", "python3"), "-m", "pip", "install", "-q", wheel)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = run(os.path.join(venv, "bin", "flatnet"), "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"flatnet {__version__}", out
    proc = run(os.path.join(venv, "bin", "flatnet-cni"), input="{}", env={"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0 and "1.0.0" in json.loads(proc.stdout)["supportedVersions"], proc
    # the package data is found where the wheel put it
    units = tmp_path / "units"
    proc = run(os.path.join(venv, "bin", "flatnet"), "systemd", "render", "--unit-dir", str(units))
    assert proc.returncode == 0, proc.stderr
    assert f"ExecStart={venv}/bin/flatnet-engine" in (units / "flatnet-engine.service").read_text()
    proc = run(
        os.path.join(venv, "bin", "flatnet"),
        "gateway",
        "render",
        "--prefix",
        str(tmp_path / "gw"),
        "--listen",
        "127.0.0.1:18080",
    )
    assert proc.returncode == 0, proc.stderr
    assert "site-packages/flatnet/gateway_lua/lib" in (tmp_path / "gw" / "nginx.conf").read_text()
    # the C data path loads from the installed wheel
    proc = run(os.path.join(venv, "bin", "python3"), "-c", "import flatnet.engine.crypto")
    assert proc.returncode == 0, proc.stderr
