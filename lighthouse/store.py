"""The lighthouse's store: one interface, two implementations chosen by `[store] backend`.

- "sqlite" (lighthouse.leases.LeaseStore, the default): leases in one SQLite file; the
  node registry lives only in the lighthouse's memory (one lighthouse, or several
  sharing one file for leases only).
- "etcd" (lighthouse.store_etcd.EtcdStore): leases, node registrations and service
  claims in an etcd cluster, so every lighthouse serves every node.

What the registry (sans-IO) needs from a store:

    lease_for(name, now) -> IPv4Network      sticky; never two names on one /24 (LeaseExhausted)
    by_address(addr) / name_of_block(block)  who holds a /24 (None: nobody)
    block_of(subnet), subnet(block), all(), network
    publish(record) / withdraw(name)        a node registered / went offline here
    remote(name) -> NodeRecord | None        a node registered through another lighthouse
    remote_nodes()                           all of those (the catalog, claims)
    request_punch(lighthouse, target, asker) ask the lighthouse holding `target` to punch it
                                             (etcd: batched, see on_punches for the other end)
    health() -> dict                         for `flatnet lighthouse status`

Reads never wait for the network: the etcd store answers them from a cache kept by a
watch. Only a name's first lease waits for etcd (a compare-and-swap transaction).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

Endpoint = tuple[str, int]



class LeaseExhausted(Exception):
    """No free /24 left in the network."""

class StoreUnavailable(OSError):
    """The store cannot take a write now (etcd without quorum): the node is told
    `error {code: "unavailable"}` and registers again by itself."""


@dataclass(frozen=True)
class NodeRecord:
    """A node's registration as other lighthouses see it."""
    name: str
    cert: bytes
    subnet: str
    endpoints: list[Endpoint]
    local: list[Endpoint]
    lighthouse: str                   # the lighthouse holding its session (punches go there)
    services: list[dict] = field(default_factory=list)
    gateway: Endpoint | None = None
    relay: bool = False               # it relays for others (registry: register `relay` + the group)


class Store:
    """The shared part: a store that keeps no node registry (SQLite) inherits these."""

    network: ipaddress.IPv4Network
    blocks: int  # the /24s of the network
    backend = "none"
    # punch requests from other lighthouses for nodes registered here: [(target, asker)],
    # called from the store's own thread
    on_punches: Callable[[list[tuple[str, NodeRecord]]], None] | None = None

    def subnet(self, block: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.network.network_address) + (block << 8), 24))

    def block_of(self, subnet: ipaddress.IPv4Network) -> int:
        return (int(subnet.network_address) - int(self.network.network_address)) >> 8

    def block_of_address(self, addr: ipaddress.IPv4Address | int) -> int | None:
        """The block holding an address (an IPv4Address, or its int), None outside the network."""
        offset = int(addr) - int(self.network.network_address)
        block = offset >> 8
        return block if 0 <= offset and block < self.blocks else None

    def by_address(self, addr: ipaddress.IPv4Address | int) -> str | None:
        block = self.block_of_address(addr)
        return None if block is None else self.name_of_block(block)

    def name_of_block(self, block: int) -> str | None:
        raise NotImplementedError

    def lease_for(self, name: str, now: float) -> ipaddress.IPv4Network:
        raise NotImplementedError

    def all(self) -> dict[str, ipaddress.IPv4Network]:
        raise NotImplementedError

    def lease_needs_io(self, name: str) -> bool:
        """True when lease_for(name) would wait for the network (the I/O driver then
        calls it in a worker thread, not in the event loop)."""
        return False

    def publish(self, record: NodeRecord) -> None:
        pass

    def withdraw(self, name: str) -> None:
        pass

    def remote(self, name: str) -> NodeRecord | None:
        return None

    def remote_nodes(self) -> list[NodeRecord]:
        return []

    def request_punch(self, lighthouse: str, target: str, asker: NodeRecord) -> None:
        pass

    def health(self) -> dict:
        return {"backend": self.backend, "healthy": True, "leases": len(self.all())}

    def close(self) -> None:
        pass
