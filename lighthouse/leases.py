"""Subnet leases: one /24 of the network per certificate name, sticky, never
overlapping, kept in SQLite so they survive a lighthouse restart.

The UNIQUE constraint on the block index is what guarantees that two nodes never
hold the same /24, even if two lighthouse processes shared one database file.
"""
from __future__ import annotations

import ipaddress
import sqlite3


class LeaseExhausted(Exception):
    pass


class LeaseStore:
    def __init__(self, path: str, network: ipaddress.IPv4Network) -> None:
        if network.prefixlen > 24:
            raise ValueError(f"network {network} is smaller than a /24")
        self.network = network
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, block INTEGER UNIQUE NOT NULL, "
                        "created REAL NOT NULL, last_seen REAL NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key='network'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('network', ?)", (str(network),))
        elif row[0] != str(network):
            raise ValueError(f"lease database {path} belongs to network {row[0]}, not {network}")
        self.blocks = 1 << (24 - network.prefixlen)

    def subnet(self, block: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.network.network_address) + (block << 8), 24))

    def lease_for(self, name: str, now: float) -> ipaddress.IPv4Network:
        """The node's /24: the one it had, else the lowest free one (block 0 is kept
        back: 10.87.0.0/24 stays free for the network's own use)."""
        row = self.db.execute("SELECT block FROM leases WHERE name=?", (name,)).fetchone()
        if row is not None:
            self.db.execute("UPDATE leases SET last_seen=? WHERE name=?", (now, name))
            return self.subnet(row[0])
        self.db.execute("BEGIN IMMEDIATE")
        try:
            used = {b for (b,) in self.db.execute("SELECT block FROM leases")}
            block = next((b for b in range(1, self.blocks) if b not in used), None)
            if block is None:
                raise LeaseExhausted(f"network {self.network} has no free /24 left ({self.blocks - 1} leased)")
            self.db.execute("INSERT INTO leases VALUES (?, ?, ?, ?)", (name, block, now, now))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.subnet(block)

    def by_address(self, addr: ipaddress.IPv4Address) -> str | None:
        if addr not in self.network:
            return None
        block = (int(addr) - int(self.network.network_address)) >> 8
        row = self.db.execute("SELECT name FROM leases WHERE block=?", (block,)).fetchone()
        return row[0] if row else None

    def block_of(self, subnet: ipaddress.IPv4Network) -> int:
        return (int(subnet.network_address) - int(self.network.network_address)) >> 8

    def name_of_block(self, block: int) -> str | None:
        row = self.db.execute("SELECT name FROM leases WHERE block=?", (block,)).fetchone()
        return row[0] if row else None

    def all(self) -> dict[str, ipaddress.IPv4Network]:
        return {name: self.subnet(block) for name, block in self.db.execute("SELECT name, block FROM leases")}

    def close(self) -> None:
        self.db.close()
