"""What a host's Flatnet bridge must look like, in one place.

Two callers make the bridge and put it right: the CNI plugin at every container start
(cni/netns.py, with the lean netlink client cni/netlink.py) and the engine at start
(engine/io/netlink.py, with pyroute2). Both read the link as it is, ask `repairs()`
what to change and do those steps with their own netlink client, so the two always
agree on the name, address, broadcast, MAC, MTU and state. No I/O here, and nothing
heavy to import: it is on the plugin's start-up path (tests/unit/test_layering.py).

Rules:
- A link of that name that is not a bridge is never changed: `conflict()` says why.
- The MTU is set when the bridge is made; an existing bridge's MTU is left alone (the
  kernel keeps a bridge's MTU at its ports' lowest unless one was set).
- The MAC is fixed (bridge_mac): a bridge without a set address takes the lowest of its
  ports' and changes it as containers come and go; every other container then talks to
  a stale gateway MAC until its ARP entry is probed again (the soak measured gaps of up
  to 33 s).
"""
from __future__ import annotations

from flatnet.cni.netlink import format_mac

ADD_ADDRESS = "add_address"  # the gateway address, with the prefix and broadcast
SET_MAC = "set_mac"          # bridge_mac(gateway)
SET_UP = "set_up"


def bridge_mac(gateway: int) -> bytes:
    """The bridge's MAC: locally administered 02:00 + its gateway's IPv4 address."""
    return b"\x02\x00" + gateway.to_bytes(4, "big")


class BridgeSpec:
    """The bridge `name` with the gateway address (an IPv4 address as an int) of a
    subnet of `prefix` bits, and `mtu` when it is made."""

    __slots__ = ("name", "gateway", "prefix", "mtu")

    def __init__(self, name: str, gateway: int, prefix: int, mtu: int) -> None:
        self.name, self.gateway, self.prefix, self.mtu = name, gateway, prefix, mtu

    @property
    def broadcast(self) -> int:
        return self.gateway | (0xFFFFFFFF >> self.prefix)

    @property
    def mac(self) -> bytes:
        return bridge_mac(self.gateway)


def conflict(spec: BridgeSpec, kind: str | None) -> str | None:
    """Why the link named spec.name cannot be used (it is not a bridge); None if it can.
    Each caller adds the hint for its own config (the conflist, the engine's)."""
    if kind == "bridge":
        return None
    return f"interface {spec.name} exists but is a {kind or 'non-bridge'} device, not a bridge"


def repairs(spec: BridgeSpec, mac: str, addresses: list[int], up: bool) -> list[str]:
    """The steps, in order, that make an existing bridge (its current MAC as text,
    its IPv4 addresses, whether it is up) look as `spec` says; [] when it does."""
    steps = []
    if spec.gateway not in addresses:
        steps.append(ADD_ADDRESS)
    if mac != format_mac(spec.mac):  # made by an older version, or by hand
        steps.append(SET_MAC)
    if not up:
        steps.append(SET_UP)
    return steps
