"""Kernel state the engine owns, reconciled idempotently: TUN up with MTU, the overlay
route through the TUN (source = this host's gateway address, so host-originated
traffic carries an address from this host's lease), the bridge with the gateway
address, IP forwarding. pyroute2: the engine is long-lived, its import cost is paid once.
"""
from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.cni.netlink import format_mac
from flatnet.cni.netns import bridge_mac


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(ipr: IPRoute, name: str, gateway: ipaddress.IPv4Address, prefix: int, mtu: int) -> int:
    idx = _index(ipr, name)
    mac = format_mac(bridge_mac(int(gateway)))  # fixed: see cni.netns.bridge_mac
    if idx is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=mac)
        except NetlinkError as exc:
            if exc.code != 17:
                raise
        idx = _index(ipr, name)
    link = ipr.get_links(idx)[0]
    kind = link.get_attr("IFLA_LINKINFO")
    if kind is None or kind.get_attr("IFLA_INFO_KIND") != "bridge":
        raise RuntimeError(f"interface {name} exists but is not a bridge; remove it or set [bridge] name")
    if link.get_attr("IFLA_ADDRESS") != mac:
        ipr.link("set", index=idx, address=mac)
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if str(gateway) not in have:
        ipr.addr("add", index=idx, address=str(gateway), prefixlen=prefix)
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
