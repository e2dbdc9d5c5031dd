"""`flatnet install` and `flatnet uninstall`: the host set-up around the virtual environment.

scripts/install.sh makes the venv (PREFIX, /opt/flatnet by default) and installs the code
into it, then runs `PREFIX/bin/flatnet install`, which adds, and records in
PREFIX/flatnet-install.json:

- links BIN_DIR/flatnet, flatnet-engine, flatnet-lighthouse, flatnet-cni -> PREFIX/bin/...;
- the Podman drop-in, the CNI plugin and the flatnet network (cni/install_podman.py);
- the group whose members may use the engine's control socket (the gateway's nginx
  workers), if it did not exist.

`flatnet uninstall` reads that record and removes exactly what was added, plus units
written by `flatnet systemd install`, and finally the venv itself. Every root is a
parameter so that a test installs into temporary folders.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from flatnet.cni import install_netavark, install_podman
from flatnet.paths import code_root

MANIFEST = "flatnet-install.json"
SCRIPTS = ("flatnet", "flatnet-engine", "flatnet-lighthouse", "flatnet-cni")


@dataclass
class Roots:
    prefix: str = "/opt/flatnet"
    bin_dir: str = "/usr/local/bin"
    plugin_dir: str = "/usr/lib/cni"
    net_dir: str = "/etc/cni/net.d"
    containers_dir: str = "/etc/containers"
    unit_dir: str = "/etc/systemd/system"
    completion_dir: str = "/usr/share/bash-completion/completions"
    group: str = "flatnet"
    # what this install added (so that uninstall removes only that)
    links: list[str] = field(default_factory=list)
    completion: str = ""
    made_dirs: list[str] = field(default_factory=list)
    group_created: bool = False
    netavark_files: list[str] = field(default_factory=list)  # Podman 5: plugin, drop-in, network


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def load(prefix: str) -> Roots | None:
    try:
        with open(os.path.join(prefix, MANIFEST)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    known = set(Roots.__dataclass_fields__)
    return Roots(**{k: v for k, v in doc.items() if k in known})


def install(roots: Roots, parser: argparse.ArgumentParser) -> list[str]:
    """parser: the `flatnet` command's, for the bash completion script."""
    prefix = os.path.abspath(roots.prefix)
    python = os.path.join(prefix, "bin", "python3")
    missing = [s for s in SCRIPTS if not os.access(os.path.join(prefix, "bin", s), os.X_OK)]
    if missing or not os.path.exists(os.path.join(prefix, "pyvenv.cfg")):
        raise ValueError(
            f"{prefix} is not a flatnet virtual environment (missing {missing or 'pyvenv.cfg'}): run scripts/install.sh"
        )
    old = load(prefix)
    if old:  # a second run keeps what the first one added on the record
        roots.group_created = old.group_created
        roots.links = [link for link in old.links if os.path.islink(link)]
        roots.completion = old.completion
        roots.made_dirs = old.made_dirs
        roots.netavark_files = old.netavark_files
    dropin_dir = os.path.dirname(install_podman.dropin_path(roots.containers_dir))
    for d in (roots.bin_dir, roots.plugin_dir, roots.net_dir, dropin_dir, roots.completion_dir):
        if not os.path.isdir(d) and d not in roots.made_dirs:
            roots.made_dirs.append(d)
    log = install_podman.install(roots.containers_dir, roots.plugin_dir, roots.net_dir, python, code_root())
    log += _netavark(roots, python)
    os.makedirs(roots.bin_dir, exist_ok=True)
    for name in SCRIPTS:
        link, target = os.path.join(roots.bin_dir, name), os.path.join(prefix, "bin", name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link) and not os.path.islink(link):
            log.append(f"link: left {link} alone (a file that is not flatnet's); use {target}")
            continue
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        if link not in roots.links:
            roots.links.append(link)
        log.append(f"link: {link} -> {target}")
    comp = os.path.join(roots.completion_dir, "flatnet")
    if not os.path.exists(comp) or roots.completion == comp:
        from flatnet.completion import bash

        os.makedirs(roots.completion_dir, exist_ok=True)
        with open(comp, "w") as f:
            f.write(bash(parser))
        if roots.completion != comp:
            log.append(f"completion: {comp}")
        roots.completion = comp
    if not _group_exists(roots.group):
        subprocess.run(["groupadd", "--system", roots.group], check=True, capture_output=True, timeout=30)
        roots.group_created = True
        log.append(f"group: created {roots.group} (its members may use the engine's control socket)")
    with open(os.path.join(prefix, MANIFEST + ".tmp"), "w") as f:
        json.dump(asdict(roots), f, indent=1)
    os.replace(os.path.join(prefix, MANIFEST + ".tmp"), os.path.join(prefix, MANIFEST))
    return log


def _netavark(roots: Roots, python: str) -> list[str]:
    """Podman 5 has no CNI: the netavark plugin, its drop-in and the `flatnet` network
    (docs/podman5.md). Only for the host's own Podman (the default containers root)."""
    major = install_netavark.podman_major("/")
    if major is None or major < 5 or os.path.abspath(roots.containers_dir) != "/etc/containers":
        return []
    lines = install_netavark.install("/", python, code_root(), major=major)
    for path in (
        os.path.join(install_netavark.PLUGIN_DIR, "flatnet"),
        os.path.join(install_netavark.CONF_D, install_netavark.DROP_IN),
        os.path.join(install_netavark.NETWORKS_DIR, f"{install_netavark.NETWORK}.json"),
    ):
        if os.path.exists(path) and path not in roots.netavark_files:
            roots.netavark_files.append(path)
    return lines


def uninstall(prefix: str, keep_venv: bool = False) -> list[str]:
    prefix = os.path.abspath(prefix)
    roots = load(prefix)
    if roots is None:
        raise ValueError(f"no flatnet installation in {prefix} ({MANIFEST} not found)")
    from flatnet import units

    log = units.remove(roots.unit_dir)
    log += install_podman.uninstall(roots.containers_dir, roots.plugin_dir, roots.net_dir)
    for path in roots.netavark_files:
        if os.path.exists(path):
            os.unlink(path)
            log.append(f"removed {path}")
    for link in roots.links:
        if os.path.islink(link) and os.readlink(link).startswith(prefix + os.sep):
            os.unlink(link)
            log.append(f"removed {link}")
    if roots.completion and os.path.exists(roots.completion):
        os.unlink(roots.completion)
        log.append(f"removed {roots.completion}")
    for d in sorted(roots.made_dirs, key=len, reverse=True):
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
            log.append(f"removed {d} (empty, made by the install)")
    if roots.group_created and _group_exists(roots.group):
        subprocess.run(["groupdel", roots.group], check=True, capture_output=True, timeout=30)
        log.append(f"group: removed {roots.group}")
    if keep_venv:
        os.unlink(os.path.join(prefix, MANIFEST))
    else:
        shutil.rmtree(prefix)
        log.append(f"removed {prefix}")
    return log


def add_arguments(install_p: argparse.ArgumentParser, uninstall_p: argparse.ArgumentParser) -> None:
    d = Roots()
    here = sys.prefix if os.path.exists(os.path.join(sys.prefix, "pyvenv.cfg")) else d.prefix
    install_p.add_argument("--prefix", default=here, help=f"the flatnet venv (default: this one, {here})")
    install_p.add_argument("--bin-dir", default=d.bin_dir, help="where the command links go")
    install_p.add_argument("--plugin-dir", default=d.plugin_dir, help="the CNI plugin folder Podman searches")
    install_p.add_argument("--net-dir", default=d.net_dir, help="the CNI network folder (flatnet.conflist)")
    install_p.add_argument(
        "--containers-dir",
        default=d.containers_dir,
        help="Podman's configuration folder (drop-in in containers.conf.d/)",
    )
    install_p.add_argument("--unit-dir", default=d.unit_dir, help="where `flatnet systemd install` writes units")
    install_p.add_argument("--completion-dir", default=d.completion_dir, help="where the bash completion goes")
    install_p.add_argument("--group", default=d.group, help="the group allowed on the engine's control socket")
    uninstall_p.add_argument("--prefix", default=here, help=f"the flatnet venv to remove (default: {here})")
    uninstall_p.add_argument("--keep-venv", action="store_true", help="remove the host set-up but keep the venv")


def cmd_install(a: argparse.Namespace) -> int:
    roots = Roots(
        prefix=a.prefix,
        bin_dir=a.bin_dir,
        plugin_dir=a.plugin_dir,
        net_dir=a.net_dir,
        containers_dir=a.containers_dir,
        unit_dir=a.unit_dir,
        completion_dir=a.completion_dir,
        group=a.group,
    )
    for line in install(roots, a.parser):
        print(f"[install] {line}")
    return 0


def cmd_uninstall(a: argparse.Namespace) -> int:
    for line in uninstall(a.prefix, a.keep_venv):
        print(f"[uninstall] {line}")
    return 0
