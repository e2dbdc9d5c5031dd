"""Subnet leases: one /24 of the network per certificate name, sticky, never
overlapping, kept in SQLite so they survive a lighthouse restart.

The UNIQUE constraint on the block index is what guarantees that two nodes never
hold the same /24, even if two lighthouse processes shared one database file.
"""
from __future__ import annotations

import ipaddress
import sqlite3

from flatnet.lighthouse.store import LeaseExhausted, Store


class LeaseStore(Store):
    """The "sqlite" store: leases on disk; the node registry stays in memory (Store)."""

    backend = "sqlite"

    def __init__(self, path: str, network: ipaddress.IPv4Network) -> None:
        if network.prefixlen > 24:
            raise ValueError(f"network {network} is smaller than a /24")
        self.network = network
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per lease; a power cut may lose the newest leases, never
        # corrupt the file, and a node that lost its lease gets one again on register
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, block INTEGER UNIQUE NOT NULL, "
                        "created REAL NOT NULL, last_seen REAL NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key='network'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('network', ?)", (str(network),))
        elif row[0] != str(network):
            raise ValueError(f"lease database {path} belongs to network {row[0]}, not {network}")
        self.blocks = 1 << (24 - network.prefixlen)
        self._used = self._load_used()
        self._hint = 1
        # leases found or made, by name and by block: a lease never changes hands, so a
        # query (by address) or a renewal needs no SELECT (measured: 37 us each, a
        # tenth of the lighthouse's work per query). Misses still read the file: another
        # lighthouse process sharing it may have added leases.
        self._names: dict[str, int] = {}
        self._owners: dict[int, str] = {}

    def _load_used(self) -> set[int]:
        return {b for (b,) in self.db.execute("SELECT block FROM leases")}

    def _free_block(self) -> int | None:
        for block in range(self._hint, self.blocks):
            if block not in self._used:
                return block
        return next((b for b in range(1, self._hint) if b not in self._used), None)

    def lease_for(self, name: str, now: float) -> ipaddress.IPv4Network:
        """The node's /24: the one it had, else the lowest free one after the last handed
        out (block 0 is kept back: 10.87.0.0/24 stays free for the network's own use)."""
        if name in self._names:
            return self.subnet(self._names[name])
        # each lost race reloads the used blocks, so a retry only loses to an insert made
        # since: with N writers at once, N rounds at most; 64 is room for many processes
        for _ in range(64):
            row = self.db.execute("SELECT block FROM leases WHERE name=?", (name,)).fetchone()
            if row is not None:  # a renewal: nothing to write (liveness is kept in memory)
                self._names[name], self._owners[row[0]] = row[0], name
                return self.subnet(row[0])
            block = self._free_block()
            if block is None:
                self._used = self._load_used()  # another process may have freed some
                block = self._free_block()
                if block is None:
                    raise LeaseExhausted(f"network {self.network} has no free /24 left ({self.blocks - 1} leased)")
            try:
                self.db.execute("INSERT INTO leases VALUES (?, ?, ?, ?)", (name, block, now, now))
            except sqlite3.IntegrityError:  # another process took this block or this name first
                self._used = self._load_used()
                continue
            self._used.add(block)
            self._hint = block + 1
            self._names[name], self._owners[block] = block, name
            return self.subnet(block)
        raise sqlite3.OperationalError("lease table kept changing under us; try again")

    def name_of_block(self, block: int) -> str | None:
        if block in self._owners:
            return self._owners[block]
        row = self.db.execute("SELECT name FROM leases WHERE block=?", (block,)).fetchone()
        if row is None:
            return None
        name: str = row[0]
        self._names[name], self._owners[block] = block, name
        return name

    def all(self) -> dict[str, ipaddress.IPv4Network]:
        return {name: self.subnet(block) for name, block in self.db.execute("SELECT name, block FROM leases")}

    def close(self) -> None:
        self.db.close()
