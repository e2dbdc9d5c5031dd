"""Configure Podman for the flatnet CNI plugin, and undo it (used by `flatnet install` and
`flatnet uninstall`; idempotent). Every path is a parameter, so a test installs into
temporary roots and never touches the live ones.

- a drop-in CONTAINERS_DIR/containers.conf.d/50-flatnet.conf: network_backend = "cni",
  runtime = "runc", and default_ulimits only where this host needs them. Podman 4.3
  reads drop-ins after containers.conf, so the operator's own file stays as it is;
- the plugin executable `flatnet` in a CNI plugin directory Podman searches: a few lines
  that start the installed interpreter on the installed code;
- NET_DIR/flatnet.conflist (cniVersion 1.0.0: Podman 4.3's libcni rejects 1.1.0).

Older installers rewrote containers.conf itself (keeping the operator's file as
containers.conf.flatnet-orig): `migrate_containers_conf` puts the operator's file back.
"""

from __future__ import annotations

import argparse
import json
import os
import resource

DROPIN = "50-flatnet.conf"
MARKER = "# flatnet: written by `flatnet install`; `flatnet uninstall` removes it"
OLD_HEADER = "# managed in part by flatnet scripts/install.sh"  # the pre-0.2 installer's rewrite
BACKUP_SUFFIX = ".flatnet-orig"

WRAPPER = """#!{python} -IS
{marker}
# The flatnet CNI plugin. -IS: no site, no environment, no current directory on the
# path: the plugin imports only the standard library and its own package, from here.
import sys
sys.path.insert(0, {root!r})
from flatnet.cni.__main__ import main
sys.exit(main())
"""

# Podman 4.3 (pkg/specgen/generate/oci.go) gives a root container these rlimits unless
# told otherwise; raising a hard limit above the host's needs CAP_SYS_RESOURCE.
PODMAN_DEFAULT_NOFILE = 1048576
PODMAN_DEFAULT_NPROC = 4194304
CAP_SYS_RESOURCE = 24


def conflist(name: str = "flatnet", **plugin: object) -> dict[str, object]:
    # aliases: Podman then passes --network-alias names in runtimeConfig (for the engine's DNS)
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{"type": "flatnet", "bridge": "flatnet-br0", "capabilities": {"aliases": True}, **plugin}],
    }


def _has_cap(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return False


def ulimits(has_cap_sys_resource: bool | None = None) -> tuple[list[str], str]:
    """default_ulimits for containers.conf, or [] where Podman's own defaults work; and
    the sentence for the installer's log that says which and why."""
    if has_cap_sys_resource is None:
        has_cap_sys_resource = _has_cap(CAP_SYS_RESOURCE)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]

    def low(hard: int, want: int) -> bool:
        return hard != resource.RLIM_INFINITY and hard < want

    if has_cap_sys_resource or not (low(nofile, PODMAN_DEFAULT_NOFILE) or low(nproc, PODMAN_DEFAULT_NPROC)):
        return [], "ulimits: not set (Podman's defaults fit this host's hard limits or it may raise them)"
    n = 20000 if nofile == resource.RLIM_INFINITY else min(20000, nofile)
    p = 4096 if nproc == resource.RLIM_INFINITY else min(4096, nproc)
    values = [f"nofile={n}:{n}", f"nproc={p}:{p}"]
    return values, (
        f"ulimits: default_ulimits = {values}, because this host cannot raise rlimits "
        f"(no CAP_SYS_RESOURCE) and its hard limits (nofile {nofile}, nproc {nproc}) are below "
        f"Podman's defaults ({PODMAN_DEFAULT_NOFILE}, {PODMAN_DEFAULT_NPROC}): containers would not start"
    )


def podman_major() -> int | None:
    """Podman's major version, None where Podman is not installed or does not answer."""
    import subprocess

    try:
        out = subprocess.run(["podman", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.split()
    try:
        return int(words[-1].split(".")[0]) if words else None
    except ValueError:
        return None


def cgroup_unified(root: str = "/sys/fs/cgroup") -> bool:
    """True on a pure cgroup v2 host, where crun (Podman's default runtime) works."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def podman_settings(
    limits: list[str], major: int | None = 4, unified: bool = False
) -> tuple[dict[str, dict[str, object]], list[str]]:
    """The drop-in's settings for this host, and the log lines that say why each is there
    (or why not)."""
    doc: dict[str, dict[str, object]] = {}
    why = []
    if limits:
        doc["containers"] = {"default_ulimits": limits}
    if not unified:
        doc["engine"] = {"runtime": "runc"}
        why.append("runtime: runc (crun fails on cgroups v1 or hybrid mode, which this host has)")
    if major is None or major < 5:
        doc["network"] = {"network_backend": "cni"}  # only the CNI backend calls CNI plugins
    else:
        why.append(
            f"network: Podman {major} has no CNI backend (netavark only): network_backend is left as it is; "
            "Podman will not call the flatnet CNI plugin on this host"
        )
    return doc, why


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def dump_toml(doc: dict[str, dict[str, object]], header: str = MARKER) -> str:
    """Enough TOML for containers.conf: tables of scalars and lists."""
    lines = [header]
    for table, body in doc.items():
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: str, text: str, mode: int = 0o644) -> bool:
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", mode)
    os.replace(path + ".tmp", path)
    return True


def _ours(path: str, marker: str = MARKER) -> bool:
    try:
        with open(path) as f:
            return marker in f.read(4096)
    except OSError:
        return False


def dropin_path(containers_dir: str) -> str:
    return os.path.join(containers_dir, "containers.conf.d", DROPIN)


def install_dropin(containers_dir: str, settings: dict[str, dict[str, object]]) -> tuple[str, bool]:
    path = dropin_path(containers_dir)
    return path, _write_if_changed(path, dump_toml(settings))


def migrate_containers_conf(containers_dir: str) -> str | None:
    """Undo the pre-0.2 installer's rewrite of containers.conf; None if there is none."""
    path = os.path.join(containers_dir, "containers.conf")
    if not _ours(path, OLD_HEADER):
        return None
    backup = path + BACKUP_SUFFIX
    if os.path.exists(backup):
        os.replace(backup, path)
        return (
            f"containers.conf: restored the operator's file from {backup} (flatnet's settings are in the drop-in now)"
        )
    return (
        f"containers.conf: {path} was written by an older flatnet installer and there is no backup "
        f"({backup}): left as it is; its settings match the drop-in, so you may remove it if nothing "
        "else of yours is in it"
    )


def install_plugin(plugin_dir: str, python: str, root: str) -> tuple[str, bool]:
    """The plugin executable: `python` runs the `cni` package found in `root`."""
    path = os.path.join(plugin_dir, "flatnet")
    return path, _write_if_changed(path, WRAPPER.format(python=python, root=root, marker=MARKER), 0o755)


def install_conflist(net_dir: str) -> tuple[str, bool]:
    path = os.path.join(net_dir, "flatnet.conflist")
    return path, _write_if_changed(path, json.dumps(conflist(), indent=2) + "\n")


def install(containers_dir: str, plugin_dir: str, net_dir: str, python: str, root: str) -> list[str]:
    """Everything above; returns the log lines."""
    log = []
    moved = migrate_containers_conf(containers_dir)
    if moved:
        log.append(moved)
    limits, why = ulimits()
    settings, whys = podman_settings(limits, podman_major(), cgroup_unified())
    path, changed = install_dropin(containers_dir, settings)
    log += [f"podman: {'wrote' if changed else 'unchanged'} {path}", why, *whys]
    path, changed = install_plugin(plugin_dir, python, root)
    log.append(f"plugin: {'wrote' if changed else 'unchanged'} {path} ({python}, code from {root})")
    path, changed = install_conflist(net_dir)
    log.append(f"network: {'wrote' if changed else 'unchanged'} {path}")
    return log


def uninstall(containers_dir: str, plugin_dir: str, net_dir: str) -> list[str]:
    """Remove what `install` wrote: the drop-in and the plugin (if they carry our marker) and
    the conflist (if it is ours, unchanged by the operator)."""
    log = []
    for path in (dropin_path(containers_dir), os.path.join(plugin_dir, "flatnet")):
        if _ours(path):
            os.unlink(path)
            log.append(f"removed {path}")
    path = os.path.join(net_dir, "flatnet.conflist")
    try:
        with open(path) as f:
            mine = f.read() == json.dumps(conflist(), indent=2) + "\n"
    except OSError:
        mine = False
    if mine:
        os.unlink(path)
        log.append(f"removed {path}")
    elif os.path.exists(path):
        log.append(f"left {path}: it was changed after the install (remove it by hand if unused)")
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--containers-dir",
        default="/etc/containers",
        help="Podman's configuration folder (the drop-in goes to its containers.conf.d)",
    )
    p.add_argument("--plugin-dir", default="/usr/lib/cni", help="a CNI plugin folder Podman searches")
    p.add_argument("--net-dir", default="/etc/cni/net.d", help="the CNI network folder (flatnet.conflist)")
    p.add_argument("--python", help="the interpreter the plugin runs with (required unless --uninstall)")
    p.add_argument("--root", help="the folder holding the `cni` package (required unless --uninstall)")
    p.add_argument("--uninstall", action="store_true", help="remove what an install wrote")
    a = p.parse_args(argv)
    if a.uninstall:
        lines = uninstall(a.containers_dir, a.plugin_dir, a.net_dir)
    else:
        if not a.python or not a.root:
            p.error("--python and --root are required to install")
        lines = install(a.containers_dir, a.plugin_dir, a.net_dir, a.python, a.root)
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
