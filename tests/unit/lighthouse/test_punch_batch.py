"""The etcd store's punch batches (lighthouse/store_etcd.py): what one lighthouse
writes for another, bounded on both sides, and read back by a parser that an etcd
member (trusted less than local state) reaches: malformed input is counted, never a
traceback."""
import json

from hypothesis import given, settings, strategies as st

from flatnet.lighthouse import store_etcd
from flatnet.lighthouse.store import NodeRecord


def rec(name, cert_len=200):
    return NodeRecord(name, b"c" * cert_len, "10.87.1.0/24", [("192.0.2.1", 4787)], [], "lh-2")


def test_a_batch_reads_back_as_written_with_each_asker_once():
    a, b = rec("host-a"), rec("host-b")
    pairs = [("t1", a), ("t2", a), ("t1", b)]
    value, used = store_etcd._punch_batch(pairs, {}, 1.0)
    assert used == 3 and json.loads(value)["askers"].__len__() == 2
    got, bad = store_etcd._punch_pairs(value)
    assert bad == 0 and [(t, r.name) for t, r in got] == [("t1", "host-a"), ("t2", "host-a"), ("t1", "host-b")]
    assert got[0][1] == a


def test_an_askers_json_is_made_once_while_its_record_is_unchanged(monkeypatch):
    made = []
    real = store_etcd._record_text
    monkeypatch.setattr(store_etcd, "_record_text", lambda r, now: made.append(r.name) or real(r, now))
    texts = {}
    store_etcd._punch_batch([("t1", rec("a"))], texts, 1.0)
    store_etcd._punch_batch([("t2", rec("a"))], texts, 2.0)  # registered again: a new, equal record
    assert made == ["a"]
    moved = NodeRecord("a", b"c" * 200, "10.87.1.0/24", [("192.0.2.9", 4787)], [], "lh-2")
    value, _ = store_etcd._punch_batch([("t3", moved)], texts, 3.0)
    assert made == ["a", "a"] and store_etcd._punch_pairs(value)[0][0][1].endpoints == [("192.0.2.9", 4787)]


def test_a_batch_is_bounded_in_count_and_bytes():
    many = [(f"t{i}", rec(f"a{i}", 10)) for i in range(3 * store_etcd.PUNCH_BATCH)]
    value, used = store_etcd._punch_batch(many, {}, 1.0)
    assert used == store_etcd.PUNCH_BATCH and len(value) <= store_etcd.PUNCH_BATCH_BYTES
    big = [(f"t{i}", rec(f"a{i}", 3000)) for i in range(500)]  # ~4 KiB of JSON per asker
    value, used = store_etcd._punch_batch(big, {}, 1.0)
    assert 0 < used < 500 and len(value) <= store_etcd.PUNCH_BATCH_BYTES
    assert len(store_etcd._punch_pairs(value)[0]) == used
    huge = [("t", rec("a", store_etcd.PUNCH_BATCH_BYTES))]  # one pair larger than a batch still goes alone
    assert store_etcd._punch_batch(huge, {}, 1.0)[1] == 1


def test_a_batch_read_back_is_bounded():
    assert store_etcd._punch_pairs(b" " * (store_etcd.PUNCH_READ_BYTES + 1)) == ([], 1)
    text = json.dumps({"askers": [json.loads(store_etcd._record_text(rec("a"), 0.0))],
                       "punches": [["t", 0]] * (store_etcd.PUNCH_BATCH + 5)})
    got, bad = store_etcd._punch_pairs(text.encode())
    assert len(got) == store_etcd.PUNCH_BATCH and bad == 5


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3000) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"askers": st.lists(json_values, max_size=3),
                                        "punches": st.lists(json_values, max_size=5)}).map(
                     lambda v: json.dumps(v).encode())))
def test_fuzz_a_batch_read_back_never_raises(value):
    got, bad = store_etcd._punch_pairs(value)
    assert bad >= 0 and all(isinstance(t, str) and 0 < len(t) <= store_etcd.MAX_NAME
                            and isinstance(a, NodeRecord) for t, a in got)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.sampled_from(["a", "b", "c"])), max_size=40))
def test_fuzz_what_is_written_is_what_is_read(pairs):
    records = {n: rec(n) for n in "abc"}
    value, used = store_etcd._punch_batch([(t, records[n]) for t, n in pairs], {}, 2.0)
    got, bad = store_etcd._punch_pairs(value)
    assert used == len(pairs) and bad == 0 and [(t, r.name) for t, r in got] == pairs
