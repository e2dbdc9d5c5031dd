"""The `flatnet` netavark plugin (Podman 5): create, setup, teardown, info.

netavark runs the plugin as `flatnet create`, `flatnet setup NETNS`, `flatnet teardown
NETNS` or `flatnet info`, with JSON on stdin, and reads JSON from stdout. An error is
{"error": "..."} with exit status 1: Podman prints the message. The attachment itself
is cni.core, shared with the CNI plugin (docs/podman5.md).

Rules: as for the CNI plugin: parse and validate everything before any side effect
(cni.nvconf), undo on failure, lean imports (this runs on every container start).
"""
from __future__ import annotations

import os

from flatnet.cni import jsonlite as json
from flatnet.cni.errors import CniError, INVALID_ENV, NOT_ROOT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

VERSION = "0.1.0"
USAGE = "usage: flatnet {create|setup NETNS|teardown NETNS|info} < JSON"


def cmd_create(network: object) -> dict:
    from flatnet.cni.core import resolve_lease
    from flatnet.cni.nvconf import SOURCE_LEASE, SOURCE_STATIC, created_network, network_conf, parse_subnets
    from flatnet.cni.store import FileStore
    conf = network_conf(network)
    assert isinstance(network, dict)
    given = parse_subnets(network)
    if given is not None:  # standalone: `podman network create -d flatnet --subnet ...`
        subnet, gateway = given
        source = SOURCE_STATIC
    else:  # the engine's lease for this host
        with FileStore(conf.data_dir, conf.name) as store:
            subnet, gateway = resolve_lease(conf, store)
        source = SOURCE_LEASE
    return created_network(network, subnet, gateway, source, conf.bridge)


def cmd_setup(netns: str, body: object) -> dict:
    from flatnet.cni.core import attach, reserve_static, resolve_lease_dns, with_netns
    from flatnet.cni.errors import NO_LEASE
    from flatnet.cni.netlink import Netlink
    from flatnet.cni.nvconf import SOURCE_LEASE, parse_exec, status_block
    from flatnet.cni.store import FileStore
    from flatnet.cni.undo import Undo
    att = parse_exec(body, setup=True)
    conf = att.conf
    with with_netns(netns) as netns_fd, FileStore(conf.data_dir, conf.name) as store, \
            Netlink() as nl, Undo() as undo:
        dns = None  # standalone (a static subnet): no engine, so no resolver to name
        if att.source == SOURCE_LEASE:
            # Podman allocated from the subnet `create` stored; the host's lease may have changed since
            subnet, gateway, dns = resolve_lease_dns(conf, store)
            if (subnet, gateway) != (att.subnet, att.gateway):
                from flatnet.cni.ipv4 import format_ip
                raise CniError(NO_LEASE, f"network {conf.name} was created for subnet {att.subnet} but this "
                               f"host's lease is now {subnet} (gateway {format_ip(gateway)})",
                               f"recreate the network: podman network rm {conf.name} && "
                               f"podman network create -d flatnet {conf.name}")
        reserve_static(store, att.ip, att.subnet, att.gateway, att.container_id, att.ifname, undo)
        names = [n for n in (att.container_name, *att.aliases) if n and "\n" not in n]
        if names:
            store.set_names(att.ip, names)  # undone with the address (store.release)
        made = attach(conf, nl, netns_fd, att.container_id, att.ifname, att.ip, att.subnet, att.gateway,
                      undo, mac=att.mac, metric=att.metric)
        undo.pop_all()
    return status_block(att.ifname, made.container.mac, att.ip, att.subnet, att.gateway, dns)


def cmd_teardown(netns: str, body: object) -> None:
    from flatnet.cni.core import detach
    from flatnet.cni.nvconf import parse_exec
    att = parse_exec(body, setup=False)
    detach(att.conf, att.container_id, att.ifname)


def _count(body: object, command: str, result: str) -> None:
    """The same per-network counters as the CNI plugin (stats.json: engine metrics)."""
    network = body.get("network") if isinstance(body, dict) else None
    if not isinstance(network, dict):
        return
    from flatnet.cni.store import record
    try:
        from flatnet.cni.nvconf import network_conf
        conf = network_conf(network)
    except CniError:
        return
    if os.path.isdir(os.path.join(conf.data_dir, conf.name)):
        record(conf.data_dir, conf.name, command, result)


def dispatch(argv: list[str], stdin: "BinaryIO", stdout: "TextIO", stderr: "TextIO") -> int:
    try:
        verb = argv[1] if len(argv) > 1 else "info"
        if verb == "info":
            stdout.write(json.dumps({"version": VERSION, "api_version": "1.0.0",
                                     "description": "Flatnet overlay: containers on this host's lease"}))
            return 0
        if verb not in ("create", "setup", "teardown"):
            raise CniError(INVALID_ENV, f"unknown subcommand {verb!r}; {USAGE}")
        if verb != "create" and (len(argv) != 3 or not argv[2].startswith("/")):
            raise CniError(INVALID_ENV, f"{verb} needs the network namespace path; {USAGE}")
        try:
            body = json.loads(stdin.read(json.MAX_INPUT + 1))
        except ValueError as exc:
            from flatnet.cni.errors import DECODE_FAILURE
            raise CniError(DECODE_FAILURE, f"input is not valid JSON: {exc}") from None
        if os.geteuid() != 0:
            raise CniError(NOT_ROOT, "the flatnet netavark plugin must run as root (it needs CAP_NET_ADMIN)",
                           "run podman as root")
        if verb == "create":
            stdout.write(json.dumps(cmd_create(body)))
            return 0
        counted = "ADD" if verb == "setup" else "DEL"
        try:
            result = cmd_setup(argv[2], body) if verb == "setup" else cmd_teardown(argv[2], body)
        except CniError as err:
            _count(body, counted, f"error-{err.code}")
            raise
        _count(body, counted, "ok")
        if result is not None:
            stdout.write(json.dumps(result))
        return 0
    except CniError as err:
        from flatnet.cni.nvconf import error_json
        stdout.write(json.dumps(error_json(err)))
        return 1
    except Exception as exc:  # our bug: still answer in netavark's format
        import traceback
        stdout.write(json.dumps({"error": f"flatnet: internal error in the netavark plugin: {exc!r}"}))
        stderr.write(traceback.format_exc(limit=5))
        return 1


def main() -> int:
    """`python -m flatnet.cni.netavark`: always the cold path. The installed plugin enters
    at flatnet.cni.__main__.netavark, which tries the warm daemon first."""
    import sys
    return dispatch(sys.argv, sys.stdin.buffer, sys.stdout, sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
