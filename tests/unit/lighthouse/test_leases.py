import ipaddress
import multiprocessing

import pytest

from flatnet.lighthouse.leases import LeaseExhausted, LeaseStore

NET = ipaddress.IPv4Network("10.87.0.0/16")


def test_sticky_and_distinct(tmp_path):
    db = str(tmp_path / "l.db")
    store = LeaseStore(db, NET)
    a, b = store.lease_for("host-a", 1.0), store.lease_for("host-b", 1.0)
    assert a != b and a == ipaddress.IPv4Network("10.87.1.0/24")
    assert store.lease_for("host-a", 2.0) == a
    store.close()
    again = LeaseStore(db, NET)  # a restarted lighthouse keeps every lease
    assert again.lease_for("host-b", 3.0) == b
    assert again.by_address(ipaddress.IPv4Address("10.87.2.9")) == "host-b"


def test_exhaustion_is_a_clear_error(tmp_path):
    store = LeaseStore(str(tmp_path / "l.db"), ipaddress.IPv4Network("10.87.0.0/22"))  # 3 leasable /24s
    for i in range(3):
        store.lease_for(f"n{i}", 0)
    with pytest.raises(LeaseExhausted, match="no free /24"):
        store.lease_for("one-too-many", 0)


def test_database_of_another_network_is_refused(tmp_path):
    LeaseStore(str(tmp_path / "l.db"), NET).close()
    with pytest.raises(ValueError, match="belongs to network 10.87.0.0/16"):
        LeaseStore(str(tmp_path / "l.db"), ipaddress.IPv4Network("10.88.0.0/16"))


def _lease(args):
    db, name = args
    store = LeaseStore(db, NET)
    try:
        return str(store.lease_for(name, 0))
    finally:
        store.close()


def test_many_nodes_registering_at_once_never_overlap(tmp_path):
    db = str(tmp_path / "l.db")
    LeaseStore(db, NET).close()
    with multiprocessing.get_context("fork").Pool(8) as pool:
        subnets = pool.map(_lease, [(db, f"node-{i}") for i in range(200)])
    assert len(set(subnets)) == 200


@pytest.mark.parametrize(
    "addr, block",
    [
        ("10.87.0.0", 0),
        ("10.87.2.9", 2),
        ("10.87.255.255", 255),
        ("10.86.255.255", None),
        ("10.88.0.0", None),
        ("0.0.0.0", None),
        ("255.255.255.255", None),
    ],
)
def test_the_block_of_an_address_and_the_edges_of_the_network(tmp_path, addr, block):
    store = LeaseStore(str(tmp_path / "l.db"), NET)
    assert store.block_of_address(ipaddress.IPv4Address(addr)) == block
    assert store.block_of_address(int(ipaddress.IPv4Address(addr))) == block  # the registry passes an int
