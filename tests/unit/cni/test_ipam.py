import multiprocessing

import pytest

from flatnet.cni import ipam
from flatnet.cni.errors import CniError
from flatnet.cni.ipv4 import format_ip, parse_subnet
from flatnet.cni.store import FileStore


class FakeStore:
    def __init__(self):
        self.by_ip: dict[int, tuple[str, str]] = {}
        self.last = None

    def reserve(self, ip, cid, ifname):
        if ip in self.by_ip:
            return False
        self.by_ip[ip] = (cid, ifname)
        return True

    def get_by_id(self, cid, ifname):
        return next((ip for ip, v in self.by_ip.items() if v == (cid, ifname)), None)

    def release_by_id(self, cid, ifname):
        freed = [ip for ip, v in self.by_ip.items() if v == (cid, ifname)]
        for ip in freed:
            del self.by_ip[ip]
        return freed

    def release(self, ip):
        self.by_ip.pop(ip, None)

    def entries(self):
        return [(ip, c, i) for ip, (c, i) in self.by_ip.items()]

    def last_reserved(self):
        return self.last

    def set_last_reserved(self, ip):
        self.last = ip


SUBNET = parse_subnet("10.87.5.0/24", "subnet")
GW = SUBNET.first_host


def test_addresses_are_distinct_and_skip_gateway():
    store = FakeStore()
    ips = [ipam.allocate(store, SUBNET, GW, f"c{i}", "eth0") for i in range(20)]
    assert len(set(ips)) == 20
    assert GW not in ips
    assert format_ip(ips[0]) == "10.87.5.2"


def test_repeated_add_returns_the_same_address():
    store = FakeStore()
    first = ipam.allocate(store, SUBNET, GW, "c1", "eth0")
    assert ipam.allocate(store, SUBNET, GW, "c1", "eth0") == first
    assert ipam.allocate(store, SUBNET, GW, "c1", "eth1") != first


def test_freed_address_is_not_reused_at_once():
    store = FakeStore()
    a = ipam.allocate(store, SUBNET, GW, "c1", "eth0")
    store.release_by_id("c1", "eth0")
    assert ipam.allocate(store, SUBNET, GW, "c2", "eth0") != a


def test_exhaustion_is_a_clear_error():
    small = parse_subnet("10.87.5.0/29", "subnet")  # .1 gateway, .2-.6 containers
    store = FakeStore()
    for i in range(5):
        ipam.allocate(store, small, small.first_host, f"c{i}", "eth0")
    with pytest.raises(CniError) as info:
        ipam.allocate(store, small, small.first_host, "c9", "eth0")
    assert info.value.code == 101
    assert "10.87.5.0/29 is exhausted" in info.value.msg


def test_wraps_around_after_the_last_address():
    small = parse_subnet("10.87.5.0/29", "subnet")
    store = FakeStore()
    store.set_last_reserved(small.broadcast - 1)
    assert format_ip(ipam.allocate(store, small, small.first_host, "c", "eth0")) == "10.87.5.2"


def test_gc_frees_what_is_not_attached():
    store = FakeStore()
    keep = ipam.allocate(store, SUBNET, GW, "alive", "eth0")
    ipam.allocate(store, SUBNET, GW, "gone", "eth0")
    freed = ipam.garbage_collect(store, {("alive", "eth0")})
    assert len(freed) == 1 and store.entries() == [(keep, "alive", "eth0")]


def _allocate_in_process(args):
    data_dir, n = args
    with FileStore(data_dir, "net") as store:
        return ipam.allocate(store, SUBNET, GW, f"proc{n}", "eth0")


def test_file_store_under_concurrency_never_hands_out_one_address_twice(tmp_path):
    with multiprocessing.get_context("fork").Pool(8) as pool:
        ips = pool.map(_allocate_in_process, [(str(tmp_path), n) for n in range(64)])
    assert len(set(ips)) == 64
    with FileStore(str(tmp_path), "net") as store:
        assert len(store.entries()) == 64


def test_file_store_persists_and_releases(tmp_path):
    with FileStore(str(tmp_path), "net") as store:
        ip = ipam.allocate(store, SUBNET, GW, "c1", "eth0")
    with FileStore(str(tmp_path), "net") as store:  # a new process after a reboot sees it
        assert store.get_by_id("c1", "eth0") == ip
        assert store.release_by_id("c1", "eth0") == [ip]
        assert store.entries() == []


def test_file_store_empty_entry_after_a_host_crash_is_skipped_and_collected(tmp_path):
    # entries are written without fsync (docs/decisions.md): a crash of the whole host may
    # leave one empty. It names no container: no ADD reuses it, the next address is handed
    # out, and GC frees it.
    subnet = parse_subnet("10.0.0.0/29", "subnet")
    gateway = subnet.network + 1
    with FileStore(str(tmp_path), "net") as store:
        (tmp_path / "net" / format_ip(subnet.network + 2)).write_text("")
        assert store.get_by_id("", "") == subnet.network + 2  # how it reads: owner ""
        ip = ipam.allocate(store, subnet, gateway, "c1", "eth0")
        assert ip != subnet.network + 2
        freed = ipam.garbage_collect(store, {("c1", "eth0")})
        assert freed == [subnet.network + 2]
        assert [e[0] for e in store.entries()] == [ip]


def test_file_store_write_failure_leaves_no_entry(tmp_path, monkeypatch):
    import os

    with FileStore(str(tmp_path), "net") as store:

        def full(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(CniError) as err:
            store.reserve(0x0A000002, "c1", "eth0")
        monkeypatch.undo()
        assert "No space left on device" in err.value.msg
        assert store.entries() == []


def test_last_reserved_is_rewritten_in_place_and_reads_back(tmp_path):
    # in place, padded to one length (no truncate or rename: docs/performance.md): a long
    # address, then a short one, then a long one again, each reads back exactly
    with FileStore(str(tmp_path), "net") as store:
        assert store.last_reserved() is None
        for text in ("10.87.255.254", "10.0.0.2", "192.168.100.200"):
            ip = parse_subnet(text + "/32", "s").network
            store.set_last_reserved(ip)
            assert store.last_reserved() == ip
            assert len((tmp_path / "net" / "last_reserved_ip").read_bytes()) == 16


def test_last_reserved_garbage_is_no_start_and_a_longer_tail_is_cut(tmp_path):
    path = tmp_path / "net" / "last_reserved_ip"
    with FileStore(str(tmp_path), "net") as store:
        path.write_text("not an address, and longer than sixteen bytes\n")
        assert store.last_reserved() is None  # e.g. a write torn by a host crash
        store.set_last_reserved(0x0A000005)
        assert path.read_text() == "10.0.0.5".ljust(15) + "\n"
        assert store.last_reserved() == 0x0A000005


def test_stats_are_counted_in_place_and_a_corrupt_file_is_replaced(tmp_path):
    import json

    from flatnet.cni.store import record

    (tmp_path / "net").mkdir()
    stats = tmp_path / "net" / "stats.json"
    stats.write_text("x" * 200)  # corrupt and longer than what replaces it
    record(str(tmp_path), "net", "ADD", "ok")
    assert json.loads(stats.read_text()) == {"ADD:ok": 1}
    for _ in range(11):
        record(str(tmp_path), "net", "ADD", "ok")
    record(str(tmp_path), "net", "DEL", "ok")
    assert json.loads(stats.read_text()) == {"ADD:ok": 12, "DEL:ok": 1}
