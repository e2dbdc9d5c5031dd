"""Configure Podman for the flatnet CNI plugin (run by scripts/install.sh; idempotent).

- containers.conf: network_backend = "cni", runtime = "runc", default_ulimits within
  this host's hard limits (Podman 4.3 on Debian 12: see docs/setup.md for why);
- the plugin executable `flatnet` in a CNI plugin directory Podman searches;
- /etc/cni/net.d/flatnet.conflist (cniVersion 1.0.0: Podman 4.3's libcni rejects 1.1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tomllib

WRAPPER = """#!{python} -IS
# flatnet CNI plugin (installed by scripts/install.sh). -S skips site: the plugin
# imports only the standard library and the project itself, and starts faster.
import sys
sys.path.insert(0, {repo!r})
from cni.__main__ import main
sys.exit(main())
"""


def conflist(name: str = "flatnet", **plugin: object) -> dict:
    return {"cniVersion": "1.0.0", "name": name,
            # aliases: Podman passes --network-alias names in runtimeConfig (for DNS)
            "plugins": [{"type": "flatnet", "bridge": "flatnet-br0", "capabilities": {"aliases": True},
                         **plugin}]}


def _limit(res: int, want: int) -> int:
    soft, hard = resource.getrlimit(res)
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def dump_toml(doc: dict) -> str:
    """Enough TOML for containers.conf: tables of scalars and lists (no nesting deeper)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for table, body in doc.items():
        if isinstance(body, dict):
            lines += ["", f"[{table}]"]
            for k, v in body.items():
                if isinstance(v, dict):
                    lines += [f"[{table}.{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
                else:
                    lines.append(f"{k} = {_toml_value(v)}")
    return "# managed in part by flatnet scripts/install.sh\n" + "\n".join(lines) + "\n"


def configure_containers_conf(path: str) -> bool:
    doc: dict = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    nofile = _limit(resource.RLIMIT_NOFILE, 20000)
    nproc = _limit(resource.RLIMIT_NPROC, 4096)
    want = {
        ("containers", "default_ulimits"): [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"],
        ("engine", "runtime"): "runc",
        ("network", "network_backend"): "cni",
    }
    changed = False
    for (table, key), value in want.items():
        if doc.get(table, {}).get(key) != value:
            doc.setdefault(table, {})[key] = value
            changed = True
    if changed:
        if os.path.exists(path) and not os.path.exists(path + ".flatnet-orig"):
            shutil.copy2(path, path + ".flatnet-orig")
        with open(path + ".tmp", "w") as f:
            f.write(dump_toml(doc))
        os.replace(path + ".tmp", path)
    return changed


def install_plugin(plugin_dir: str, python: str, repo: str) -> str:
    os.makedirs(plugin_dir, exist_ok=True)
    target = os.path.join(plugin_dir, "flatnet")
    text = WRAPPER.format(python=python, repo=repo)
    if not os.path.exists(target) or open(target).read() != text:
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
    return target


def install_conflist(net_dir: str) -> str:
    os.makedirs(net_dir, exist_ok=True)
    path = os.path.join(net_dir, "flatnet.conflist")
    text = json.dumps(conflist(), indent=2) + "\n"
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers-conf", default="/etc/containers/containers.conf")
    p.add_argument("--plugin-dir", default="/usr/lib/cni")
    p.add_argument("--net-dir", default="/etc/cni/net.d")
    p.add_argument("--python", required=True)
    p.add_argument("--repo", required=True)
    a = p.parse_args()
    changed = configure_containers_conf(a.containers_conf)
    print(f"containers.conf: {'updated' if changed else 'already configured'} ({a.containers_conf})")
    print(f"plugin: {install_plugin(a.plugin_dir, a.python, a.repo)}")
    print(f"network: {install_conflist(a.net_dir)}")


if __name__ == "__main__":
    main()
