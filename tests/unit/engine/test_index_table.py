"""Receiver indexes: unique, naming a C rx slot in their low bits, and reusing the
lowest free slots so the C table's resident part stays as small as the live sessions."""
import random

import pytest

from flatnet.engine.datapath_port import RX_SLOTS
from flatnet.engine.device import IndexTable


def test_indexes_are_unique_and_name_distinct_slots() -> None:
    t = IndexTable(random.Random(1))
    idx = [t.allocate("p") for _ in range(100)]
    assert len(set(idx)) == 100
    assert sorted(i % RX_SLOTS for i in idx) == list(range(1, 101))
    assert all(i != 0 for i in idx)


def test_a_session_churn_keeps_using_the_same_few_slots() -> None:
    """1,000 handshakes with at most 3 live indexes: never past slot 3 (a random slot
    each time would have touched most of the 4096-slot table)."""
    t = IndexTable(random.Random(2))
    live: list[int] = []
    for _ in range(1000):
        live.append(t.allocate("peer"))
        if len(live) == 3:
            t.release(live.pop(0))
    assert max(i % RX_SLOTS for i in live) <= 3


def test_a_full_table_is_a_clear_error() -> None:
    t = IndexTable(random.Random(3))
    for _ in range(RX_SLOTS - 1):
        t.allocate("p")
    with pytest.raises(RuntimeError, match="receiver index table full"):
        t.allocate("p")


def test_releasing_an_unknown_index_changes_nothing() -> None:
    t = IndexTable(random.Random(4))
    a = t.allocate("p")
    t.release(12345)
    t.release(a)
    t.release(a)  # twice: the slot is freed once
    assert t.allocate("p") % RX_SLOTS == a % RX_SLOTS
    assert t.allocate("p") % RX_SLOTS == 2
