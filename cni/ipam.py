"""Address allocation over a Store (pure logic: the store is the only state).

A repeated ADD for the same (container id, ifname) returns the address it already
holds; new addresses are searched round-robin from the last one handed out, so a
just-freed address is not reused at once (stale ARP/conntrack entries elsewhere).
"""
from __future__ import annotations

from flatnet.cni.errors import CniError, SUBNET_EXHAUSTED
from flatnet.cni.ipv4 import Subnet

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms at start-up)
if TYPE_CHECKING:
    from flatnet.cni.ports import Store


def allocate(store: "Store", subnet: Subnet, gateway: int, container_id: str, ifname: str) -> int:
    held = store.get_by_id(container_id, ifname)
    if held is not None and subnet.contains_host(held) and held != gateway:
        return held
    first, last = subnet.network + 1, subnet.broadcast - 1
    start = store.last_reserved()
    if start is None or not first <= start <= last:
        start = last
    size = last - first + 1
    for step in range(1, size + 1):
        ip = first + (start - first + step) % size
        if ip != gateway and store.reserve(ip, container_id, ifname):
            store.set_last_reserved(ip)
            return ip
    raise CniError(SUBNET_EXHAUSTED,
                   f"subnet {subnet} is exhausted: all {size - 1} container addresses are in use",
                   "remove stopped containers (podman rm) or run 'podman network prune'; "
                   "stale entries of deleted containers are freed by CNI GC")


def garbage_collect(store: "Store", valid: set[tuple[str, str]]) -> list[int]:
    """Free every entry whose (container id, ifname) is not a valid attachment."""
    freed = []
    for ip, cid, ifname in list(store.entries()):
        if (cid, ifname) not in valid and (cid, "") not in valid:
            store.release(ip)
            freed.append(ip)
    return freed
