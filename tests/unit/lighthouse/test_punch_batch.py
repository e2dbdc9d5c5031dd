"""The etcd store's punch batches (lighthouse/store_etcd.py): what one lighthouse
writes for another, bounded on both sides, and read back by a parser that an etcd
member (trusted less than local state) reaches: malformed input is counted, never a
traceback."""
import json

from hypothesis import given, settings, strategies as st

from flatnet.lighthouse import store_etcd


def test_a_batch_reads_back_as_written():
    pairs = [("t1", "host-a"), ("t2", "host-a"), ("t1", "host-b")]
    value, used = store_etcd._punch_batch(pairs, 1.0)
    assert used == 3 and json.loads(value)["v"] == 1
    assert value == b'{"v":1,"at":1.0,"punches":[["t1","host-a"],["t2","host-a"],["t1","host-b"]]}'
    assert store_etcd._punch_pairs(value) == (pairs, 0)


def test_a_batch_is_bounded_in_count_and_bytes():
    many = [(f"t{i}", f"a{i}") for i in range(3 * store_etcd.PUNCH_BATCH)]
    value, used = store_etcd._punch_batch(many, 1.0)
    assert used == store_etcd.PUNCH_BATCH and len(value) <= store_etcd.PUNCH_BATCH_BYTES
    long = [("t" * 250 + str(i), "a" * 250) for i in range(1000)]  # ~510 bytes a pair
    value, used = store_etcd._punch_batch(long, 1.0)
    assert 0 < used < 1000 and len(value) <= store_etcd.PUNCH_BATCH_BYTES
    assert store_etcd._punch_pairs(value) == (long[:used], 0)


def test_a_batch_read_back_is_bounded():
    assert store_etcd._punch_pairs(b" " * (store_etcd.PUNCH_READ_BYTES + 1)) == ([], 1)
    got, bad = store_etcd._punch_pairs(json.dumps({"punches": [["t", "a"]] * (store_etcd.PUNCH_BATCH + 5)}).encode())
    assert len(got) == store_etcd.PUNCH_BATCH and bad == 5
    long = "x" * (store_etcd.MAX_NAME + 1)
    assert store_etcd._punch_pairs(json.dumps({"punches": [[long, "a"], ["t", long], ["t", "a"]]}).encode()) \
        == ([("t", "a")], 2)


def test_malformed_batches_and_entries_are_counted():
    for value in (b"\xff", b"[" * 100_000, b"{}", b"[]", b'{"punches":{}}', b'"x"'):
        assert store_etcd._punch_pairs(value) == ([], 1), value
    value = b'{"punches":[["t","a"],["t"],["t","a","b"],[1,"a"],["","a"],"ta",null,["t",["a"]],["u","b"]]}'
    assert store_etcd._punch_pairs(value) == ([("t", "a"), ("u", "b")], 7)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3000) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"punches": st.lists(json_values, max_size=6)}).map(
                     lambda v: json.dumps(v).encode())))
def test_fuzz_a_batch_read_back_never_raises(value):
    got, bad = store_etcd._punch_pairs(value)
    assert bad >= 0 and all(isinstance(n, str) and 0 < len(n) <= store_etcd.MAX_NAME for pair in got for n in pair)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)), max_size=40))
def test_fuzz_what_is_written_is_what_is_read(pairs):
    value, used = store_etcd._punch_batch(pairs, 2.0)
    assert used == len(pairs) and store_etcd._punch_pairs(value) == (pairs, 0)
