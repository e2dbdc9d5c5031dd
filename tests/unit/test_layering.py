"""Protocol code is sans-IO: engine.proto imports no socket, asyncio, time or I/O layer;
the CNI plugin's start-up path imports no heavy module."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = {"socket", "asyncio", "time", "select", "selectors", "subprocess", "threading", "uvloop",
             "pyroute2", "flatnet.engine.io", "flatnet.engine.driver", "flatnet.engine.datapath"}


def imported(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_proto_imports_no_io():
    for path in (ROOT / "engine" / "proto").glob("*.py"):
        bad = {n for n in imported(path) if n in FORBIDDEN or any(n.startswith(f + ".") for f in FORBIDDEN)}
        assert not bad, f"{path.name} imports {bad}"


def test_cni_startup_stays_lean():
    # both front ends (CNI for Podman 4, netavark for Podman 5) and their shared core
    code = ("import sys; sys.path.insert(0, %r); import flatnet.cni.__main__, flatnet.cni.warm, flatnet.cni.commands, "
            "flatnet.cni.netavark, flatnet.cni.nvconf, flatnet.cni.core; print(' '.join(sorted(sys.modules)))" % str(ROOT))
    mods = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())
    heavy = mods & {"pyroute2", "json", "re", "typing", "dataclasses", "socket", "enum", "msgpack", "nacl",
                    "argparse", "subprocess", "datetime", "ctypes"}
    assert not heavy, f"the container plugins import {heavy} on every container start"


def test_the_warm_path_loads_no_os():
    # a warm ADD (or netavark setup) is mostly the client's start-up: `os`, not loaded under
    # -IS, costs it 1-2 ms (docs/performance.md, "CNI start-up"); flatnet/__init__.py counts too
    code = ("import sys; sys.path.insert(0, %r); import flatnet.cni.__main__, flatnet.cni.warm as w, _socket; "
            "w.socket_path(b'{\"name\": \"n\"}'); w.netavark_socket_path(b'{}'); "
            "print(' '.join(sorted(sys.modules)))" % str(ROOT))
    mods = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())
    extra = mods & {"os", "posixpath", "stat", "_collections_abc", "__future__", "typing", "json", "_json"}
    assert not extra, f"the warm path loads {extra} before it asks the daemon"
