"""The plugin's only side effects on the kernel: bridge, veth, addresses, routes.

Everything here goes through cni.netlink; setns(2) is used for one thing only,
creating a netlink socket inside the container's namespace (a socket stays bound
to the namespace it was created in, so no further switching is needed).
"""
from __future__ import annotations

import errno
import os

from flatnet.cni.bridge import ADD_ADDRESS, SET_MAC, SET_UP, BridgeSpec, conflict, repairs
from flatnet.cni.errors import (BRIDGE_CONFLICT, CONTAINER_UNKNOWN, CniError, NETLINK_FAILURE,
                        VETH_FAILURE)
from flatnet.cni.ipv4 import Subnet, format_ip
from flatnet.cni.netlink import IFF_UP, Link, Netlink, NetlinkError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Callable

CLONE_NEWNET = 0x40000000
LOOPBACK_INDEX = 1  # every network namespace's lo has index 1 (the kernel's LOOPBACK_IFINDEX)


VETH_PREFIX = "fn-"
ALIAS_PREFIX = "flatnet "


def veth_owner(container_id: str, ifname: str) -> str:
    """The host veth's alias (IFLA_IFALIAS): which attachment owns it. A container id
    has no '/' (args.valid_container_id); the kernel keeps at most 255 bytes."""
    return f"{ALIAS_PREFIX}{container_id[:200]}/{ifname}"


def parse_owner(alias: str) -> tuple[str, str] | None:
    if not alias.startswith(ALIAS_PREFIX) or "/" not in alias:
        return None
    cid, _, ifname = alias[len(ALIAS_PREFIX):].rpartition("/")
    return cid, ifname


def host_veth_names(container_id: str) -> list[str]:
    """Names the host end may take, in order: fn- and the first 12 characters of the
    id (Podman's short id), else the last 12 (two ids that share their first 12 are
    told apart; docs/cni.md). 3 + 12 = 15, the kernel's limit."""
    names = [VETH_PREFIX + container_id[:12], VETH_PREFIX + container_id[-12:]]
    return names[:1] if names[0] == names[1] else names


def legacy_veth_name(container_id: str) -> str:
    """The name versions before issue 13 gave (fn- + 8 characters, no owner alias)."""
    return VETH_PREFIX + container_id[:8]


def find_host_veth(nl: Netlink, container_id: str, ifname: str) -> Link | None:
    """This attachment's host veth: a candidate name whose alias names this owner.
    A link of another owner (or of none) under the same name is never ours."""
    owner = veth_owner(container_id, ifname)
    for name in host_veth_names(container_id):
        link = nl.link_get(name)
        if link is not None and link.alias == owner:
            return link
    return None


def free_host_veth_name(nl: Netlink, container_id: str, ifname: str) -> str:
    """The first candidate name no link holds; CniError naming the holders if none."""
    held = []
    for name in host_veth_names(container_id):
        link = nl.link_get(name)
        if link is None:
            return name
        held.append(f"{name} ({link.alias or 'no owner recorded'})")
    raise CniError(VETH_FAILURE, f"cannot name the host veth of container {container_id}: "
                   + ", ".join(held) + " already exist",
                   "another container's id shares its first and last 12 characters; remove the "
                   "stale interface (ip link del NAME) if its container is gone")


def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(CONTAINER_UNKNOWN, f"network namespace {path} does not exist",
                       "the container has stopped or its namespace was removed") from None
    except OSError as exc:
        raise CniError(CONTAINER_UNKNOWN, f"cannot open network namespace {path}: {exc.strerror}") from None


def _libc_setns() -> "Callable[[int, int], int]":
    """setns(2) through _ctypes, the C module under ctypes. Python 3.11 has no os.setns,
    and `import ctypes` costs 2.5-3 ms of every container start (its Python half builds
    dozens of classes); this is the few lines of it setns needs: a C function returning
    int, called with two ints, errno saved (ctypes.CDLL(None, use_errno=True).setns)."""
    import _ctypes

    class CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]
        _type_ = "i"

    class Fn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = CInt

    class Self:  # CFuncPtr((name, library)) reads library._handle
        _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]  # None: the program itself

    fn = Fn(("setns", Self()))  # type: ignore[arg-type]  # any object with _handle, as CDLL

    def setns(fd: int, nstype: int) -> int:
        """0, or the errno of a failed call."""
        return 0 if fn(fd, nstype) == 0 else int(_ctypes.get_errno())
    return setns


def netlink_in(netns_fd: int) -> Netlink:
    """A netlink socket bound inside the namespace behind netns_fd."""
    setns = _libc_setns()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        err = setns(netns_fd, CLONE_NEWNET)
        if err:
            raise CniError(CONTAINER_UNKNOWN, f"cannot enter network namespace: {os.strerror(err)}")
        try:
            return Netlink()
        finally:
            if setns(own, CLONE_NEWNET) != 0:  # cannot go home: stop before doing harm
                os._exit(70)
    finally:
        os.close(own)


def _kernel(what: str, exc: NetlinkError, code: int = NETLINK_FAILURE) -> CniError:
    return CniError(code, f"{what}: {exc.strerror}")


def ensure_bridge(nl: Netlink, name: str, subnet: Subnet, gateway: int, mtu: int) -> Link:
    """The bridge as cni.bridge says it must be (made, or put right)."""
    spec = BridgeSpec(name, gateway, subnet.prefix, mtu)
    link = nl.link_get(name)
    if link is None:
        try:
            nl.link_add_bridge(name, mtu, spec.mac)
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:  # another ADD won the race: fine
                raise _kernel(f"cannot create bridge {name}", exc, BRIDGE_CONFLICT) from None
        link = nl.link_get(name)
        assert link is not None
    why = conflict(spec, link.kind)
    if why is not None:
        raise CniError(BRIDGE_CONFLICT, why,
                       f"remove it (ip link del {name}) or set \"bridge\" in the conflist to another name")
    for step in repairs(spec, link.mac, [ip for _, ip, _ in nl.addresses(link.index)], link.up):
        if step == ADD_ADDRESS:
            try:
                nl.addr_add(link.index, gateway, spec.prefix, spec.broadcast)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise _kernel(f"cannot add {format_ip(gateway)} to bridge {name}", exc) from None
        elif step == SET_MAC:
            try:
                nl.link_set(link.index, mac=spec.mac)
            except NetlinkError as exc:
                raise _kernel(f"cannot set the address of bridge {name}", exc) from None
            link = nl.link_get(name) or link
        elif step == SET_UP:
            nl.link_set(link.index, up=True)
    return link


def create_veth(nl: Netlink, host_name: str, ifname: str, netns_fd: int, mtu: int, owner: str,
                bridge: Link) -> Link:
    """The veth pair, its host end named for its owner, enslaved to `bridge` and up.
    The kernel ignores an alias in the create request; the alias, the master and the
    up flag then go in one request (one round trip instead of three)."""
    try:
        nl.link_add_veth(host_name, ifname, netns_fd, mtu)
    except NetlinkError as exc:
        hint = (f"the container already has an interface {ifname}" if exc.errno == errno.EEXIST
                else "check that the host allows veth devices")
        raise CniError(VETH_FAILURE, f"cannot create veth pair {host_name}/{ifname}: {exc.strerror}",
                       hint) from None
    link = nl.link_get(host_name)
    if link is None:
        raise CniError(VETH_FAILURE, f"veth {host_name} vanished right after creation")
    try:
        nl.link_set(link.index, alias=owner, master=bridge.index, up=True)
    except NetlinkError as exc:
        nl.link_del(link.index)
        raise _kernel(f"cannot record the owner of {host_name} and attach it to {bridge.name}", exc,
                      VETH_FAILURE) from None
    link.alias, link.master, link.flags = owner, bridge.index, link.flags | IFF_UP
    return link


def configure_container(cnl: Netlink, ifname: str, ip: int, subnet: Subnet, gateway: int,
                        mac: bytes | None = None, metric: int | None = None) -> Link:
    """Address, link up and a default route via the gateway. `mac` is set before the link
    goes up. With `metric`, the default route is added beside any the container already
    has (a second network: `podman network connect`); without it, as the only one."""
    link = cnl.link_get(ifname)
    if link is None:
        raise CniError(VETH_FAILURE, f"{ifname} did not appear in the container namespace")
    try:
        cnl.link_set(LOOPBACK_INDEX, up=True)  # a no-op when it is up already
        if mac is not None:
            cnl.link_set(link.index, mac=mac)
        cnl.addr_add(link.index, ip, subnet.prefix, subnet.broadcast)
        cnl.link_set(link.index, up=True)
        cnl.route_add(0, 0, gateway=gateway, oif=link.index, metric=metric)
    except NetlinkError as exc:
        raise _kernel(f"cannot configure {ifname} in the container", exc) from None
    return (cnl.link_get(ifname) or link) if mac is not None else link


def delete_link(nl: Netlink, name: str) -> bool:
    link = nl.link_get(name)
    return False if link is None else remove_link(nl, link)


def remove_link(nl: Netlink, link: Link) -> bool:
    """Delete a link just looked up (no second lookup); gone already is fine."""
    try:
        nl.link_del(link.index)
    except NetlinkError as exc:
        if exc.errno not in (errno.ENODEV, errno.ENOENT):
            raise _kernel(f"cannot delete {link.name}", exc) from None
        return False
    return True


def enable_ip_forwarding() -> None:
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1")
