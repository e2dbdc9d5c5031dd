"""Kernel state the engine owns, reconciled idempotently: TUN up with MTU, the overlay
route through the TUN (source = this host's gateway address, so host-originated
traffic carries an address from this host's lease), the bridge (what it must look
like: cni/bridge.py, shared with the CNI plugin), IP forwarding. pyroute2: the engine
is long-lived, its import cost is paid once.
"""
from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.cni.bridge import ADD_ADDRESS, SET_MAC, SET_UP, BridgeSpec, conflict, repairs
from flatnet.cni.netlink import format_mac


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(ipr: IPRoute, name: str, gateway: ipaddress.IPv4Address, prefix: int, mtu: int) -> int:
    """The bridge as cni.bridge says it must be (made, or put right); its index."""
    spec = BridgeSpec(name, int(gateway), prefix, mtu)
    idx = _index(ipr, name)
    if idx is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=format_mac(spec.mac))
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: a CNI ADD made it just now
                raise
        idx = _index(ipr, name)
    link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    why = conflict(spec, info.get_attr("IFLA_INFO_KIND") if info is not None else None)
    if why is not None:
        raise RuntimeError(f"{why}; remove it or set [bridge] name")
    have = [int(ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS"))) for a in ipr.get_addr(index=idx, family=2)]
    for step in repairs(spec, link.get_attr("IFLA_ADDRESS"), have, bool(link["flags"] & 1)):  # IFF_UP
        if step == ADD_ADDRESS:
            ipr.addr("add", index=idx, address=str(gateway), prefixlen=prefix,
                     broadcast=str(ipaddress.IPv4Address(spec.broadcast)))
        elif step == SET_MAC:
            ipr.link("set", index=idx, address=format_mac(spec.mac))
        elif step == SET_UP:
            ipr.link("set", index=idx, state="up")
    return idx


def setup(tun: str, mtu: int, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
          bridge: str) -> None:
    gateway = subnet.network_address + 1
    with IPRoute() as ipr:
        tun_idx = _index(ipr, tun)
        if tun_idx is None:
            raise RuntimeError(f"TUN {tun} vanished")
        ipr.link("set", index=tun_idx, mtu=mtu, state="up")
        ensure_bridge(ipr, bridge, gateway, subnet.prefixlen, mtu)
        ipr.route("replace", dst=str(network), oif=tun_idx, prefsrc=str(gateway), scope=253)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    # the overlay is IPv4: keep the kernel's IPv6 chatter (router solicitations) off the TUN
    try:
        with open(f"/proc/sys/net/ipv6/conf/{tun}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass
