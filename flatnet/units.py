"""systemd units for this installation: `flatnet systemd install|uninstall|render`.

The templates are deploy/systemd/*.service (package data in a wheel); {{BIN}} becomes
the folder of this installation's commands (the venv's bin/)."""
from __future__ import annotations

import os
import subprocess
import sys

from flatnet.paths import data_dir, docs_dir

UNITS = ("flatnet-engine.service", "flatnet-lighthouse.service", "flatnet-gateway.service",
         "flatnet-cni-warm.service")
MARKER = "# flatnet: written by `flatnet systemd install`; `flatnet uninstall` removes it"
DEFAULT_UNIT_DIR = "/etc/systemd/system"


def render(target_dir: str, bin_dir: str | None = None) -> list[str]:
    """Write the units into target_dir; returns their paths."""
    bin_dir = bin_dir or os.path.dirname(sys.executable)
    docs = docs_dir()
    os.makedirs(target_dir, exist_ok=True)
    out = []
    for unit in UNITS:
        with open(os.path.join(data_dir("deploy"), "systemd", unit)) as f:
            text = f.read()
        lines = [MARKER]
        for line in text.replace("{{BIN}}", bin_dir).splitlines():
            if "{{DOCS}}" in line:  # an installed wheel has no docs/: no Documentation= line
                if docs is None:
                    continue
                line = line.replace("{{DOCS}}", docs)
            lines.append(line)
        path = os.path.join(target_dir, unit)
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(path + ".tmp", path)
        out.append(path)
    return out


def _systemd_running(unit_dir: str) -> bool:
    return os.path.isdir("/run/systemd/system") and os.path.abspath(unit_dir) == DEFAULT_UNIT_DIR


def install(unit_dir: str = DEFAULT_UNIT_DIR, bin_dir: str | None = None) -> list[str]:
    paths = render(unit_dir, bin_dir)
    if _systemd_running(unit_dir):
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    return [f"wrote {p}" for p in paths]


def remove(unit_dir: str = DEFAULT_UNIT_DIR) -> list[str]:
    """Stop, disable and delete the units that carry our marker; others stay."""
    log = []
    for unit in UNITS:
        path = os.path.join(unit_dir, unit)
        try:
            with open(path) as f:
                ours = MARKER in f.read()
        except OSError:
            continue
        if not ours:
            log.append(f"left {path}: not written by flatnet")
            continue
        if _systemd_running(unit_dir):
            subprocess.run(["systemctl", "disable", "--now", unit], check=False, capture_output=True, timeout=120)
        os.unlink(path)
        log.append(f"removed {path}")
    if log and _systemd_running(unit_dir):
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    return log
