"""Build the CNI result for the cniVersion the runtime asked for (pure)."""
from __future__ import annotations

from flatnet.cni.ipv4 import Subnet, format_ip


def add_result(version: str, *, bridge: tuple[str, str], host: tuple[str, str],
               container: tuple[str, str], sandbox: str, ip: int, subnet: Subnet,
               gateway: int, dns: dict | None = None) -> dict:
    """bridge/host/container are (name, mac) pairs; the container's ip is on interface 2;
    dns ({nameservers, search}) comes from the engine's lease (Podman writes it into the
    container's resolv.conf)."""
    ip_entry: dict = {"address": f"{format_ip(ip)}/{subnet.prefix}",
                      "gateway": format_ip(gateway), "interface": 2}
    if version == "0.4.0":
        ip_entry = {"version": "4", **ip_entry}
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": bridge[0], "mac": bridge[1]},
            {"name": host[0], "mac": host[1]},
            {"name": container[0], "mac": container[1], "sandbox": sandbox},
        ],
        "ips": [ip_entry],
        "routes": [{"dst": "0.0.0.0/0", "gw": format_ip(gateway)}],
        "dns": dns or {},
    }


def version_result(version: str, supported: tuple[str, ...]) -> dict:
    return {"cniVersion": version, "supportedVersions": list(supported)}


def container_ip(prev_result: dict | None) -> tuple[str, str | None] | None:
    """(address/prefix, gateway) of the first IP on the container interface in prevResult."""
    if not prev_result:
        return None
    interfaces = prev_result.get("interfaces") or []
    for entry in prev_result.get("ips") or []:
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and not interfaces[index].get("sandbox"):
            continue
        if isinstance(entry.get("address"), str):
            return entry["address"], entry.get("gateway")
    return None

