"""Render the systemd units in deploy/systemd/ for this installation (python path and
repository), for `flatnet systemd install` and the tests' `systemd-analyze verify`."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = ("flatnet-engine.service", "flatnet-lighthouse.service", "flatnet-gateway.service")


def render(target_dir: str, python: str = sys.executable) -> list[str]:
    os.makedirs(target_dir, exist_ok=True)
    out = []
    for unit in UNITS:
        with open(os.path.join(REPO, "deploy", "systemd", unit)) as f:
            text = f.read().replace("{{PYTHON}}", python).replace("{{REPO}}", REPO)
        path = os.path.join(target_dir, unit)
        with open(path, "w") as f:
            f.write(text)
        out.append(path)
    return out
