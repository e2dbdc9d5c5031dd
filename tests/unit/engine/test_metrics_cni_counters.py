"""The engine reads the CNI plugin's per-network counters (stats.json), which the plugin
rewrites in place under an exclusive flock: a scrape reads under a shared one and skips a
network whose file is being written, instead of reading it half-written or waiting."""
import fcntl
import os

from flatnet.cni.store import record
from flatnet.engine.metrics import cni_counters


def test_counters_are_read_and_a_file_being_written_is_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    record(str(tmp_path), "a", "ADD", "ok")
    record(str(tmp_path), "b", "DEL", "error-7")
    assert cni_counters(str(tmp_path)) == {("a", "ADD", "ok"): 1, ("b", "DEL", "error-7"): 1}
    fd = os.open(tmp_path / "b" / "stats.json", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the plugin, between its read and its write
        assert cni_counters(str(tmp_path)) == {("a", "ADD", "ok"): 1}
    finally:
        os.close(fd)
    assert cni_counters(str(tmp_path)) == {("a", "ADD", "ok"): 1, ("b", "DEL", "error-7"): 1}
