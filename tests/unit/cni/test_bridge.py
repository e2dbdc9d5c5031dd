"""cni/bridge.py: what the bridge must look like, and the steps that get it there."""
import pytest

from flatnet.cni.bridge import ADD_ADDRESS, SET_MAC, SET_UP, BridgeSpec, bridge_mac, conflict, repairs

GW = 0x0A57F001  # 10.87.240.1
SPEC = BridgeSpec("flatnet0", GW, 24, 1400)
RIGHT_MAC = "02:00:0a:57:f0:01"


def test_the_shape() -> None:
    assert SPEC.mac == bridge_mac(GW) == bytes.fromhex("02000a57f001")
    assert SPEC.broadcast == 0x0A57F0FF
    assert BridgeSpec("b", 0x0A570001, 16, 1400).broadcast == 0x0A57FFFF


def test_a_bridge_as_it_should_be_needs_nothing() -> None:
    assert repairs(SPEC, RIGHT_MAC, [0x0A000001, GW], True) == []


@pytest.mark.parametrize("mac, addresses, up, steps", [
    (RIGHT_MAC, [], True, [ADD_ADDRESS]),
    ("02:11:22:33:44:55", [GW], True, [SET_MAC]),
    (RIGHT_MAC, [GW], False, [SET_UP]),
    ("", [], False, [ADD_ADDRESS, SET_MAC, SET_UP]),
])
def test_each_difference_is_one_step_in_order(mac: str, addresses: list[int], up: bool, steps: list[str]) -> None:
    assert repairs(SPEC, mac, addresses, up) == steps


def test_a_link_that_is_not_a_bridge_is_named() -> None:
    assert conflict(SPEC, "bridge") is None
    assert conflict(SPEC, "veth") == "interface flatnet0 exists but is a veth device, not a bridge"
    assert conflict(SPEC, None) == "interface flatnet0 exists but is a non-bridge device, not a bridge"
