"""Install the Flatnet front end that matches the host's Podman (idempotent).

Podman 4 talks CNI: the `flatnet` CNI plugin and a conflist (cni/install_podman.py).
Podman 5 has no CNI: netavark runs the `flatnet` netavark plugin from a directory listed
in containers.conf `[network] netavark_plugin_dirs` (a containers.conf.d drop-in), and a
network is a JSON file under /etc/containers/networks with driver "flatnet".

Every path is under an explicit `root` (a chroot, an image being built, or "/"), so
scripts/install.sh calls it the same way for the host and for tests:

    python3 -m flatnet.cni.install_netavark --root / --python /opt/flatnet/bin/python3 --repo SRC
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess

from flatnet.cni import install_podman
from flatnet.cni.conf import DEFAULT_BRIDGE, DEFAULT_DATA_DIR, DEFAULT_LEASE_FILE, NetConf
from flatnet.cni.errors import CniError, INVALID_CONFIG

PLUGIN_DIR = "/usr/local/libexec/netavark"
# Podman's own defaults: a drop-in that sets the list replaces them, so they are kept
DEFAULT_PLUGIN_DIRS = ("/usr/local/libexec/netavark", "/usr/libexec/netavark", "/usr/local/lib/netavark",
                       "/usr/lib/netavark")
CONF_D = "/etc/containers/containers.conf.d"
DROP_IN = "50-flatnet-netavark.conf"
NETWORKS_DIR = "/etc/containers/networks"
NETWORK = "flatnet"

WRAPPER = """#!{python} -IS
# flatnet netavark plugin (Podman 5), written by the installer (cni/install_netavark.py).
# -IS: no site, no environment, no current directory on the path: fast start-up.
import sys
sys.path.insert(0, {repo!r})
from flatnet.cni.__main__ import netavark
sys.exit(netavark())
"""


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def podman_major(root: str = "/") -> int | None:
    """The major version of the Podman in `root` (None: no Podman there)."""
    argv = ["podman", "--version"] if root == "/" else ["chroot", root, "podman", "--version"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "podman version 5.4.2"
    version = out.strip().rpartition(" ")[2]
    head = version.partition(".")[0]
    return int(head) if head.isdigit() else None


def install_plugin(root: str, python: str, repo: str, plugin_dir: str = PLUGIN_DIR) -> str:
    path = _under(root, os.path.join(plugin_dir, "flatnet"))
    install_podman._write_if_changed(path, WRAPPER.format(python=python, repo=repo), 0o755)
    return path


def drop_in_text(plugin_dir: str = PLUGIN_DIR) -> str:
    dirs = [plugin_dir] + [d for d in DEFAULT_PLUGIN_DIRS if d != plugin_dir]
    return ("# flatnet: Podman 5 runs the flatnet netavark plugin from here (cni/install_netavark.py)\n"
            "[network]\n"
            'network_backend = "netavark"\n'
            f"netavark_plugin_dirs = [{', '.join(json.dumps(d) for d in dirs)}]\n")


def install_drop_in(root: str, plugin_dir: str = PLUGIN_DIR, conf_d: str = CONF_D) -> str:
    path = _under(root, os.path.join(conf_d, DROP_IN))
    install_podman._write_if_changed(path, drop_in_text(plugin_dir))
    return path


def network_file(name: str, subnet: str, gateway: str, source: str, net_id: str, created: str,
                 bridge: str = DEFAULT_BRIDGE) -> dict:
    """A Podman 5 network definition as `podman network create -d flatnet` writes it (the
    plugin's `create` answer plus Podman's id and creation time)."""
    return {"name": name, "id": net_id, "driver": "flatnet", "network_interface": bridge,
            "created": created, "subnets": [{"subnet": subnet, "gateway": gateway}],
            "ipv6_enabled": False, "internal": False, "dns_enabled": False,
            "options": {"subnet_source": source}}


def install_network(root: str, name: str = NETWORK, subnet: str | None = None,
                    networks_dir: str = NETWORKS_DIR, lease_file: str = DEFAULT_LEASE_FILE,
                    data_dir: str = DEFAULT_DATA_DIR) -> tuple[str, str]:
    """Write the `flatnet` network: the given subnet (standalone), else this host's lease.
    Returns (path, what happened). Raises CniError (NO_LEASE) when there is neither."""
    from flatnet.cni.core import resolve_lease
    from flatnet.cni.ipv4 import format_ip, parse_subnet
    from flatnet.cni.store import FileStore
    if subnet is not None:
        net = parse_subnet(subnet, "--subnet")
        gw, source = net.first_host, "static"
    else:
        conf = NetConf(cni_version="1.0.0", name=name, lease_file=_under(root, lease_file),
                       data_dir=_under(root, data_dir))
        with FileStore(conf.data_dir, name) as store:
            net, gw = resolve_lease(conf, store)
        source = "lease"
    path = _under(root, os.path.join(networks_dir, f"{name}.json"))
    net_id, created = os.urandom(32).hex(), datetime.datetime.now(datetime.timezone.utc).isoformat()
    try:
        with open(path) as f:
            old = json.load(f)
        if old.get("driver") != "flatnet":
            raise CniError(INVALID_CONFIG, f"{path} is a {old.get('driver')!r} network, not flatnet's; remove it "
                           f"(podman network rm {name}) or choose another name")
        net_id, created = old.get("id", net_id), old.get("created", created)
    except (OSError, ValueError):
        old = None
    doc = network_file(name, str(net), format_ip(gw), source, net_id, created)
    if old == doc:
        return path, "already in place"
    install_podman._write_if_changed(path, json.dumps(doc, indent=5) + "\n")
    return path, ("updated: restart containers on it" if old else "created")


def install(root: str, python: str, repo: str, major: int | None = None, subnet: str | None = None,
            network: str = NETWORK) -> list[str]:
    """Install what this root's Podman needs; returns lines for the operator."""
    major = podman_major(root) if major is None else major
    if major is None:
        return ["podman: not found; nothing to configure for containers"]
    if major < 5:  # CNI (Podman 4.x)
        lines = [f"podman {major}: CNI backend"]
        lines.append(f"plugin: {install_podman.install_plugin(_under(root, '/usr/lib/cni'), python, repo)}")
        lines.append(f"network: {install_podman.install_conflist(_under(root, '/etc/cni/net.d'))}")
        return lines
    lines = [f"podman {major}: netavark backend",
             f"plugin: {install_plugin(root, python, repo)}",
             f"containers.conf drop-in: {install_drop_in(root)}"]
    try:
        path, what = install_network(root, network, subnet)
        lines.append(f"network: {path} ({what})")
    except CniError as err:
        lines.append(f"network: not created yet: {err.msg}. Start flatnet-engine, then run this again "
                     "(or pass --subnet for a standalone host)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/", help="install under this root (default /)")
    p.add_argument("--python", required=True, help="the interpreter the plugin runs with (inside root)")
    p.add_argument("--repo", required=True, help="where the flatnet sources are (inside root)")
    p.add_argument("--podman-major", type=int, help="skip detection (4: CNI, 5: netavark)")
    p.add_argument("--subnet", help="standalone host: the flatnet network's subnet instead of the lease")
    p.add_argument("--network", default=NETWORK)
    a = p.parse_args(argv)
    for line in install(a.root, a.python, a.repo, a.podman_major, a.subnet, a.network):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
