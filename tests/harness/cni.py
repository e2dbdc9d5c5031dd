"""Calling the CNI plugin the way a runtime does: environment, config on stdin, JSON out."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_plugin(command: str, conf: dict | bytes, *, container_id: str = "", netns: str = "",
               ifname: str = "eth0", user: int | None = None, extra_env: dict | None = None) -> tuple[int, dict | None]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni",
           "PYTHONPATH": REPO}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    env.update(extra_env or {})
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    argv = [sys.executable, "-m", "flatnet.cni"]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
    proc = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=30, cwd=REPO)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


def netconf(name: str, **plugin: object) -> dict:
    # warmSocket "": the code under test does the work, never a warm daemon the machine
    # may run from an installed version (tests of the warm path pass their own socket)
    conf = {"cniVersion": "1.0.0", "name": name, "type": "flatnet", "warmSocket": ""}
    conf.update(plugin)
    return conf
