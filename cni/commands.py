"""ADD, DEL, CHECK, STATUS and GC.

Rules: ADD registers an undo right after acquiring each resource (Undo) and
keeps them only when the whole command succeeded; DEL is idempotent and best-effort
(the netns may be gone, the veth may be gone, DEL may come twice); CHECK compares
prevResult with the live state. The shared bridge is host infrastructure: ADD
creates it once and DEL never removes it (docs/cni.md).
"""
from __future__ import annotations

import errno
import os

from cni import ipam
from cni.conf import NetConf, parse_lease
from cni.errors import CHECK_FAILED, CniError, INVALID_CONFIG, NO_LEASE, NOT_AVAILABLE
from cni.ipv4 import Subnet, format_ip
from cni.netlink import Netlink
from cni.netns import (VETH_PREFIX, attach_to_bridge, configure_container, create_veth, delete_link,
                       enable_ip_forwarding, ensure_bridge, find_host_veth, free_host_veth_name,
                       legacy_veth_name, netlink_in, open_netns, parse_owner, veth_owner)
from cni.result import add_result, container_ip
from cni.skel import CmdArgs
from cni.store import FileStore
from cni.undo import Undo


def resolve_lease(conf: NetConf, store: FileStore) -> tuple[Subnet, int]:
    """The subnet to allocate from: the conflist's, else the engine's lease file, else
    the last lease this host used (so containers start while the engine is down)."""
    if conf.subnet is not None:
        assert conf.gateway is not None
        return conf.subnet, conf.gateway
    try:
        with open(conf.lease_file) as f:
            text = f.read()
    except FileNotFoundError:
        cached = store.read_cached_lease()
        if cached is None:
            raise CniError(NO_LEASE, f"no subnet lease: {conf.lease_file} does not exist and this host "
                           "has never had a lease",
                           "start flatnet-engine (it writes the lease), or set \"subnet\" in the "
                           "conflist for standalone single-host mode") from None
        return parse_lease(cached, store.dir + "/lease.json")
    except OSError as exc:
        raise CniError(NO_LEASE, f"cannot read lease file {conf.lease_file}: {exc.strerror}") from None
    lease = parse_lease(text, conf.lease_file)
    store.cache_lease(text)
    return lease


def cmd_add(args: CmdArgs, conf: NetConf) -> dict:
    netns_fd = open_netns(args.netns)
    try:
        with FileStore(conf.data_dir, conf.name) as store, Netlink() as nl, \
                netlink_in(netns_fd) as cnl, Undo() as undo:
            subnet, gateway = resolve_lease(conf, store)
            held = store.get_by_id(args.container_id, args.ifname)
            ip = ipam.allocate(store, subnet, gateway, args.container_id, args.ifname)
            if held != ip:
                undo.callback(store.release, ip)
            bridge = ensure_bridge(nl, conf.bridge, subnet, gateway, conf.mtu)
            # a repeated ADD, or a container that died without DEL: re-plumb from scratch;
            # a veth of another container under a similar name is never touched
            old = find_host_veth(nl, args.container_id, args.ifname)
            if old is not None:
                delete_link(nl, old.name)
            host_name = free_host_veth_name(nl, args.container_id, args.ifname)
            host = create_veth(nl, host_name, args.ifname, netns_fd, conf.mtu,
                               veth_owner(args.container_id, args.ifname))
            undo.callback(delete_link, nl, host_name)
            attach_to_bridge(nl, host, bridge)
            container = configure_container(cnl, args.ifname, ip, subnet, gateway)
            enable_ip_forwarding()
            host = nl.link_get(host_name) or host
            bridge = nl.link_get(conf.bridge) or bridge
            result = add_result(conf.cni_version, bridge=(bridge.name, bridge.mac),
                                host=(host.name, host.mac), container=(args.ifname, container.mac),
                                sandbox=args.netns, ip=ip, subnet=subnet, gateway=gateway)
            undo.pop_all()
            return result
    finally:
        os.close(netns_fd)


def cmd_del(args: CmdArgs, conf: NetConf) -> None:
    with FileStore(conf.data_dir, conf.name) as store, Netlink() as nl:
        host = find_host_veth(nl, args.container_id, args.ifname)
        if host is not None:
            delete_link(nl, host.name)
        store.release_by_id(args.container_id, args.ifname)
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
