"""ADD, DEL, CHECK, STATUS and GC.

Rules: ADD and DEL are the CNI protocol around cni.core (shared with the netavark
plugin): ADD registers an undo right after acquiring each resource (Undo) and keeps
them only when the whole command succeeded; DEL is idempotent and best-effort (the
netns may be gone, the veth may be gone, DEL may come twice); CHECK compares
prevResult with the live state. The shared bridge is host infrastructure: ADD
creates it once and DEL never removes it (docs/cni.md).
"""
from __future__ import annotations

import errno
import os

from flatnet.cni import ipam
from flatnet.cni.conf import NetConf
from flatnet.cni.core import attach, detach, resolve_lease, resolve_lease_dns, with_netns
from flatnet.cni.errors import CHECK_FAILED, CniError, INVALID_CONFIG, NOT_AVAILABLE
from flatnet.cni.ipv4 import format_ip
from flatnet.cni.netlink import Netlink
from flatnet.cni.netns import (VETH_PREFIX, find_host_veth, legacy_veth_name, netlink_in, open_netns,
                       parse_owner, veth_owner)
from flatnet.cni.result import add_result, container_ip
from flatnet.cni.args import CmdArgs
from flatnet.cni.store import FileStore
from flatnet.cni.undo import Undo


MAX_ALIASES = 32


def container_names(args: CmdArgs, conf: NetConf) -> list[str]:
    """The container's name (Podman 4.3 passes CNI_ARGS K8S_POD_NAME) and its network
    aliases (runtimeConfig.aliases[<network name>], with the `aliases` capability), as
    the store keeps them (one a line: printable, no spaces)."""
    found = []
    for item in args.args.split(";")[:64]:
        key, _, value = item.partition("=")
        if key == "K8S_POD_NAME":
            found = [value]
    runtime = conf.raw.get("runtimeConfig")
    aliases = runtime.get("aliases") if isinstance(runtime, dict) else None
    mine = aliases.get(conf.name) if isinstance(aliases, dict) else None
    found += mine[:MAX_ALIASES] if isinstance(mine, list) else []
    return [n for n in found if isinstance(n, str) and 0 < len(n) <= 253 and n.isprintable() and " " not in n]


def cmd_add(args: CmdArgs, conf: NetConf) -> dict:
    with with_netns(args.netns) as netns_fd, FileStore(conf.data_dir, conf.name) as store, \
            Netlink() as nl, Undo() as undo:
        subnet, gateway, dns = resolve_lease_dns(conf, store)
        held = store.get_by_id(args.container_id, args.ifname)
        ip = ipam.allocate(store, subnet, gateway, args.container_id, args.ifname)
        if held != ip:
            undo.callback(store.release, ip)
        made = attach(conf, nl, netns_fd, args.container_id, args.ifname, ip,
                      subnet, gateway, undo)
        result = add_result(conf.cni_version, bridge=(made.bridge.name, made.bridge.mac),
                            host=(made.host.name, made.host.mac),
                            container=(args.ifname, made.container.mac),
                            sandbox=args.netns, ip=ip, subnet=subnet, gateway=gateway,
                            dns=dns)
        names = container_names(args, conf)
        if names:
            try:  # for the engine's DNS; removed with the address (store.release)
                store.set_names(ip, names)
            except OSError:
                pass  # a convenience: the container is attached all the same
        undo.pop_all()
        return result


def cmd_del(args: CmdArgs, conf: NetConf) -> None:
    detach(conf, args.container_id, args.ifname)
    return None


def cmd_check(args: CmdArgs, conf: NetConf) -> None:
    prev = container_ip(conf.prev_result)
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult with the container's address")
    address, gateway = prev
    netns_fd = open_netns(args.netns)
    try:
        with netlink_in(netns_fd) as cnl, Netlink() as nl:
            _check_live(args, conf, cnl, nl, address, gateway)
    finally:
        os.close(netns_fd)
    with FileStore(conf.data_dir, conf.name) as store:
        held = store.get_by_id(args.container_id, args.ifname)
    if held is None or f"{format_ip(held)}/" not in address + "/":
        raise CniError(CHECK_FAILED, f"IPAM store has no entry for {address} of this container")
    return None


def _check_live(args: CmdArgs, conf: NetConf, cnl: Netlink, nl: Netlink, address: str,
                gateway: str | None) -> None:
    def fail(msg: str) -> CniError:
        return CniError(CHECK_FAILED, msg)

    link = cnl.link_get(args.ifname)
    if link is None:
        raise fail(f"interface {args.ifname} is missing in the container")
    if not link.up:
        raise fail(f"interface {args.ifname} in the container is down")
    have = {f"{format_ip(ip)}/{prefix}" for _, ip, prefix in cnl.addresses(link.index)}
    if address not in have:
        raise fail(f"address {address} is missing on {args.ifname} (has: {', '.join(sorted(have)) or 'none'})")
    if gateway and not any(dst == 0 and plen == 0 and gw is not None and format_ip(gw) == gateway
                           for dst, plen, gw, _ in cnl.routes()):
        raise fail(f"default route via {gateway} is missing in the container")
    host = find_host_veth(nl, args.container_id, args.ifname)
    bridge = nl.link_get(conf.bridge)
    if host is None:
        raise fail(f"host interface of {args.container_id}/{args.ifname} is missing (no fn-* link with "
                   f"alias {veth_owner(args.container_id, args.ifname)!r})")
    if bridge is None or host.master != bridge.index:
        raise fail(f"host interface {host.name} is not attached to bridge {conf.bridge}")


def cmd_status(args: CmdArgs, conf: NetConf) -> None:
    try:
        with FileStore(conf.data_dir, conf.name) as store:
            resolve_lease(conf, store)
    except CniError as err:
        raise CniError(NOT_AVAILABLE, f"flatnet cannot attach containers now: {err.msg}",
                       err.details) from None
    return None


def cmd_gc(args: CmdArgs, conf: NetConf) -> None:
    valid = set(conf.valid_attachments or ())
    with FileStore(conf.data_dir, conf.name) as store, Netlink() as nl:
        ipam.garbage_collect(store, valid)
        # links made before owner aliases (fn- + 8 characters) are kept by name
        legacy = {legacy_veth_name(cid) for cid, _ in valid}
        bridge = nl.link_get(conf.bridge)
        if bridge is None:
            return None
        for link in list(nl.links()):
            if not link.name.startswith(VETH_PREFIX) or link.master != bridge.index:
                continue
            owner = parse_owner(link.alias)
            if owner is None:
                stale = link.name not in legacy
            else:
                stale = owner not in valid and (owner[0], "") not in valid
            if not stale:
                continue
            try:
                nl.link_del(link.index)
            except OSError as exc:
                if exc.errno not in (errno.ENODEV, errno.ENOENT):
                    raise
    return None


COMMANDS = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc,
}
