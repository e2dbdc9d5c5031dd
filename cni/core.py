"""What both front ends do to attach and detach a container: one core, two protocols.

The CNI plugin (cni.skel, cni.commands: Podman 4) and the netavark plugin (cni.netavark:
Podman 5) differ only in how they are called and what they answer. The subnet (the
engine's lease, or a standalone subnet), the bridge, the veth pair and its owner alias,
the container's address, MAC and routes, the IPAM store entry and undo on failure are
here, once.

Rules: `attach` registers an undo right after acquiring each resource and keeps them only
when the whole attachment succeeded; `detach` is idempotent and best-effort (the netns
may be gone, the veth may be gone, it may be called twice). Imports stay lean: this is
on every container start (docs/cni.md, "Start-up cost").
"""
from __future__ import annotations

import os

from flatnet.cni.conf import NetConf, parse_lease_dns
from flatnet.cni.errors import CniError, IP_CONFLICT, NO_LEASE
from flatnet.cni.ipv4 import Subnet, format_ip
from flatnet.cni.netlink import Link, Netlink
from flatnet.cni.netns import (configure_container, create_veth, delete_link,
                       enable_ip_forwarding, ensure_bridge, find_host_veth, free_host_veth_name,
                       netlink_in, open_netns, remove_link, veth_owner)
from flatnet.cni.store import FileStore
from flatnet.cni.undo import Undo


def resolve_lease(conf: NetConf, store: FileStore) -> tuple[Subnet, int]:
    """The subnet to allocate from: the configuration's, else the engine's lease file,
    else the last lease this host used (so containers start while the engine is down)."""
    subnet, gateway, _ = resolve_lease_dns(conf, store)
    return subnet, gateway


def resolve_lease_dns(conf: NetConf, store: FileStore) -> tuple[Subnet, int, dict | None]:
    """resolve_lease, and the engine's DNS server from the same lease, read once:
    {"nameservers": ["10.87.A.1"], "search": ["flatnet"]} while the engine serves names
    (cni.conf.lease_dns). None in standalone mode (a subnet in the configuration: no
    engine) and while the lease has no `dns`. Both plugins hand it to Podman, which
    writes it into the container's resolv.conf (docs/engine.md, "Names")."""
    if conf.subnet is not None:
        assert conf.gateway is not None
        return conf.subnet, conf.gateway, None
    try:
        with open(conf.lease_file) as f:
            text = f.read()
    except FileNotFoundError:
        cached = store.read_cached_lease()
        if cached is None:
            raise CniError(NO_LEASE, f"no subnet lease: {conf.lease_file} does not exist and this host "
                           "has never had a lease",
                           "start flatnet-engine (it writes the lease), or give the network a subnet "
                           "for standalone single-host mode") from None
        return parse_lease_dns(cached, store.dir + "/lease.json")
    except OSError as exc:
        raise CniError(NO_LEASE, f"cannot read lease file {conf.lease_file}: {exc.strerror}") from None
    lease = parse_lease_dns(text, conf.lease_file)
    store.cache_lease(text)
    return lease


class Attached:
    """What `attach` made: the names and MACs a front end reports to its runtime."""

    __slots__ = ("bridge", "host", "container")

    def __init__(self, bridge: Link, host: Link, container: Link) -> None:
        self.bridge, self.host, self.container = bridge, host, container


def reserve_static(store: FileStore, ip: int, subnet: Subnet, gateway: int, container_id: str,
                   ifname: str, undo: Undo) -> None:
    """Record an address the runtime chose (netavark: Podman allocates) in the IPAM store,
    so the store stays the one list of addresses in use on this host. The same attachment
    again is fine; another owner is a conflict, never overwritten."""
    if not subnet.contains_host(ip) or ip == gateway:
        raise CniError(IP_CONFLICT, f"address {format_ip(ip)} is not a container address of {subnet} "
                       f"(gateway {format_ip(gateway)})")
    for held, cid, ifn in store.entries():
        if held == ip:
            if (cid, ifn) == (container_id, ifname):
                return
            raise CniError(IP_CONFLICT, f"address {format_ip(ip)} is already held by container "
                           f"{cid[:12]}/{ifn} in {store.dir}",
                           "remove the stale entry if that container is gone (flatnet doctor lists them)")
    if not store.reserve(ip, container_id, ifname):  # cannot happen under the store's lock
        raise CniError(IP_CONFLICT, f"address {format_ip(ip)} was taken while reserving it")
    undo.callback(store.release, ip)


def attach(conf: NetConf, nl: Netlink, netns_fd: int, container_id: str, ifname: str, ip: int, subnet: Subnet, gateway: int, undo: Undo,
           mac: bytes | None = None, metric: int | None = None) -> Attached:
    """Bridge, veth pair, container side configured. Every resource made here is undone by
    `undo` unless the caller pops it after its own last step."""
    bridge = ensure_bridge(nl, conf.bridge, subnet, gateway, conf.mtu)
    # a repeated ADD, or a container that died without DEL: re-plumb from scratch;
    # a veth of another container under a similar name is never touched
    old = find_host_veth(nl, container_id, ifname)
    if old is not None:
        remove_link(nl, old)
    host_name = free_host_veth_name(nl, container_id, ifname)
    host = create_veth(nl, host_name, ifname, netns_fd, conf.mtu, veth_owner(container_id, ifname),
                       bridge)
    undo.callback(delete_link, nl, host_name)
    with netlink_in(netns_fd) as cnl:
        container = configure_container(cnl, ifname, ip, subnet, gateway, mac, metric)
    enable_ip_forwarding()
    # no second look at the links: the bridge's MAC is pinned (ensure_bridge) and a veth
    # keeps its MAC when it joins a bridge
    return Attached(bridge, host, container)


def detach(conf: NetConf, container_id: str, ifname: str) -> None:
    """Remove this attachment's host veth (its peer goes with it) and free its address."""
    with FileStore(conf.data_dir, conf.name) as store, Netlink() as nl:
        host = find_host_veth(nl, container_id, ifname)
        if host is not None:
            remove_link(nl, host)
        store.release_by_id(container_id, ifname)


def with_netns(path: str):  # noqa: ANN201
    """open_netns as a context manager (contextlib costs start-up time)."""
    return _NetnsFd(path)


class _NetnsFd:
    def __init__(self, path: str) -> None:
        self.fd = open_netns(path)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
