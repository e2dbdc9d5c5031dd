"""The lighthouse's registry (sans-IO): who is online, where they can be reached, and
which /24 each holds. Bytes in (a decrypted control message from an authenticated
node), (node name, bytes) out.

Rules: a node is known by its certificate name (the Noise session proved it); its
candidate endpoints are what the lighthouse saw (the NAT mapping) first, then what
the node reported; a query for a node also sends that node a punch with the asker's
endpoints, so both open their NATs at the same moment.

A punch makes its target send handshakes to every endpoint in it, so a certified node
must not choose where others send: endpoints nobody should be sent to (loopback,
link-local, multicast, broadcast, unspecified: engine.proto.endpoint) are dropped at
register and counted; each node may ask QUERY_BURST queries at once, then QUERY_RATE
a second; each node receives at most PUNCH_BURST punches at once, then PUNCH_RATE a
second (the asker still gets its `peer` answer). Time is the `now` passed in.

A query about a node registered through another lighthouse (a shared store: etcd) is
answered from the store's watched cache; the punch request it writes for that
lighthouse passes the same per-target punch limit here first, so etcd sees at most
PUNCH_RATE of them a second per target from each lighthouse, not one per query.

Service names and hosts are unique across online nodes: the first node to register one
holds it while it stays online (registers within 3 x ttl); another node's claim is
refused per service with an error "service_refused" naming it (docs/gateway.md, "Names").

Container names (`names`, for DNS; docs/lighthouse.md, "Names"): each node sends its
whole list in pages of one generation; the list replaces the node's previous one when
all its pages have arrived. Entries whose name breaks the rule or whose address is not
in the node's subnet are dropped alone and counted. Names are not unique: two nodes may
both have a "web" (DNS answers both addresses). `names_version` changes whenever the
network's list changes (a list committed, a node gone), so engines poll cheaply.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from flatnet.engine.proto import cert as certs, names, revocation
from flatnet.engine.proto import endpoint as endpoints_policy
from flatnet.engine.proto import relay as relaying
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.store import LeaseExhausted
from flatnet.lighthouse.store import NodeRecord, Store, StoreUnavailable

Endpoint = tuple[str, int]
Claim = tuple[str, ...]    # ("name", name) or ("host", host, prefix)


def _claims(service: dict) -> list[Claim]:
    """What a service holds network-wide: its name, and the Host (its own, else its
    name) with its path prefix."""
    host = service["host"].lower() if service["host"] else service["name"]
    return [("name", service["name"]), ("host", host, service["prefix"])]


def _describe(claim: Claim) -> str:
    return f"name {claim[1]!r}" if claim[0] == "name" else f"host {claim[1]!r} (prefix {claim[2]!r})"

QUERY_RATE = 4.0     # queries per second and asking node, after a burst of
QUERY_BURST = 32.0   # (an engine asks once per unknown /24 per 5 s, and once per new peer)
PUNCH_RATE = 8.0     # punches per second to one target node, after a burst of
PUNCH_BURST = 32.0
NAMES_RATE = 20.0    # names_query per second and asking node (an engine polls twice a second,
NAMES_BURST = 64.0   # plus one query per page of a changed list), after a burst of
RELAYS_EVERY = 1.0   # the node relays named in leases are gathered again at most this often
RELAY_GROUP = "relay"  # a node relays for others only with this group in its certificate


class TokenBucket:
    """`rate` events a second after a burst of `burst`; the clock is passed in."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, None

    def take(self, now: float) -> bool:
        if self.last is not None:  # a clock that went back gives nothing
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _bucket(buckets: dict[str, TokenBucket], name: str, rate: float, burst: float) -> TokenBucket:
    """The node's bucket, made on first use (not one made and thrown away per message,
    as dict.setdefault would)."""
    bucket = buckets.get(name)
    if bucket is None:
        bucket = buckets[name] = TokenBucket(rate, burst)
    return bucket


@dataclass
class Node:
    name: str
    cert: bytes
    subnet: ipaddress.IPv4Network
    observed: Endpoint
    local: list[Endpoint] = field(default_factory=list)
    last_seen: float = 0.0
    services: list[dict] = field(default_factory=list)
    gateway: Endpoint | None = None
    observed_ok: bool = True  # not an address nobody should be sent to (set at register)
    names: list[tuple[str, str]] = field(default_factory=list)
    names_gen: int = -1
    names_pending: tuple[int, int, dict[int, list]] | None = None  # (gen, total, offset -> entries)
    relay: bool = False       # relays for others: asked in its register, and certified with the group
    # "peer" and "punch" about this node, encoded once per registration: every query for
    # it (and every punch of it as the asker) sends the same bytes until it registers again
    encoded: dict[str, bytes] = field(default_factory=dict)
    # what the store is told about it (publish, punch requests): also made once per registration
    record: NodeRecord | None = None

    def endpoints(self) -> list[Endpoint]:
        """Where others may try this node: the observed address (unless it is one
        nobody should be sent to, e.g. a node on the lighthouse's own host via
        127.0.0.1), then its own, at most wire.MAX_ENDPOINTS in all."""
        first = [self.observed] if self.observed_ok else []
        return (first + [e for e in self.local if e != self.observed])[:wire.MAX_ENDPOINTS]


class Registry:
    def __init__(self, leases: Store, ttl: float = 60.0,
                 revocations: revocation.Revocations | None = None, relay: bool = True, me: str = "") -> None:
        """leases: the store (lighthouse.store: leases, and with etcd the nodes registered
        through other lighthouses); me: this lighthouse's name, in what it publishes.
        revocations: the network's blocklist; a node that registers holding an older
        one gets the current one, and revoked nodes are dropped (drop_revoked).
        relay: this lighthouse forwards type-5 packets (said in every lease)."""
        self.relay_enabled = relay
        self.leases = leases
        self.me = me
        self.revocations = revocations
        self.ttl = ttl
        self.nodes: dict[str, Node] = {}
        self.by_endpoint: dict[Endpoint, Node] = {}
        self.queries = 0
        self.forwarder = relaying.Forwarder(self._relay_sender, self._relay_target)
        self.claims: dict[Claim, str] = {}          # claim -> node name holding it
        self.claimed_by: dict[str, set[Claim]] = {}  # node name -> its claims
        self.refused_services = 0
        self.query_limits: dict[str, TokenBucket] = {}
        self.punch_limits: dict[str, TokenBucket] = {}
        # nodes registered through another lighthouse: their punch limit here, and their
        # `peer` message (encoded once per record the watch delivers); expire() prunes
        self.remote_punch_limits: dict[str, TokenBucket] = {}
        self.remote_encoded: dict[str, tuple[NodeRecord, bytes]] = {}
        self.names_limits: dict[str, TokenBucket] = {}
        self.limited = {"queries": 0, "punches": 0, "endpoints_refused": 0, "names_refused": 0, "names_queries": 0}
        self.names_version = 1
        self._online: set[str] = set()  # nodes whose names were in the last version
        self.relay_nodes: set[str] = set()  # nodes registered here that relay for others
        self._relays: tuple[float, list[str]] = (float("-inf"), [])  # (gathered when, names)
        # on_member(name, block, observed): the relay's sender and target tables changed
        # for one node (block None: it is gone); the lighthouse copies them into its C
        # data path, which then forwards between registered nodes without Python
        self.on_member: Callable[[str, int | None, Endpoint | None], None] | None = None

    def handle(self, name: str, cert: bytes, data: bytes, src: Endpoint, now: float) -> list[tuple[str, bytes]]:
        kind, msg = wire.decode(data)
        if kind == "register":
            return self._register(name, cert, msg, src, now)
        if kind == "query":
            return self._query(name, msg, now)
        if kind == "catalog_query":
            return self._catalog(name, msg["offset"], now)
        if kind == "names":
            return self._names(name, msg)
        if kind == "names_query":
            return self._names_query(name, msg, now)
        raise RemoteProtocolError("unexpected_control", f"{kind} is not for the lighthouse")

    def _register(self, name: str, cert: bytes, msg: dict, src: Endpoint, now: float) -> list[tuple[str, bytes]]:
        try:
            subnet = self.leases.lease_for(name, now)
        except LeaseExhausted as exc:
            return [(name, wire.encode("error", code="exhausted", msg=str(exc)))]
        except StoreUnavailable as exc:  # etcd without quorum: the node asks again (REGISTER_RETRY)
            self.limited["store_unavailable"] = self.limited.get("store_unavailable", 0) + 1
            return [(name, wire.encode("error", code="unavailable", msg=str(exc)[:400]))]
        node = self.nodes.get(name)
        if node is None or node.cert != cert:
            if node is not None and node.names:
                self.names_version += 1
            node = self.nodes[name] = Node(name, cert, subnet, src)
        if self.by_endpoint.get(node.observed) is node:
            del self.by_endpoint[node.observed]
        local, bad_endpoints = endpoints_policy.usable(msg["endpoints"])
        # past MAX_LOCAL a usable address is refused too, and counted (docs/protocol.md 10.3)
        self.limited["endpoints_refused"] += len(bad_endpoints) + max(0, len(local) - wire.MAX_LOCAL)
        local = local[:wire.MAX_LOCAL]
        if (node.observed, node.local, node.subnet) != (src, local, subnet):
            # what a peer or punch message says about it changed (a node re-registers every
            # 10 s, mostly unchanged: its encoded answers stay, as the cert is the same)
            node.encoded.clear()
        node.observed, node.local, node.last_seen, node.subnet = src, local, now, subnet
        node.record = None
        node.observed_ok = endpoints_policy.refused(src) is None
        node.services, refused = self._claim(name, subnet, msg["services"], now)
        gateway = msg["gateway"]  # other hosts' gateways proxy HTTP to it: the same rule as endpoints
        if gateway is not None and endpoints_policy.refused(gateway):
            self.limited["endpoints_refused"] += 1
            gateway = None
        node.gateway = gateway
        node.relay = self._offers_relay(node, msg["relay"])
        self.by_endpoint[src] = node
        if self.on_member is not None and self.relay_enabled:
            self.on_member(name, self.leases.block_of(subnet), src)
        self.leases.publish(self._record(node))
        lease = wire.encode("lease", subnet=str(subnet), network=str(self.leases.network), observed=src,
                            ttl=int(self.ttl), relay=self.relay_enabled, relays=self.relays_for(name, now))
        # the lease first: the node clears its list of refusals on it, then reads these
        held = msg["blocklist"]
        newer = self.revocations is not None and held < self.revocations.serial
        return ([(name, lease)] + [(name, wire.encode("error", code="service_refused", msg=reason[:400],
                                                      service=service[:63]))
                                   for service, reason in refused]
                + ([(name, m) for m in self.blocklist_messages()] if newer else []))

    def _offers_relay(self, node: Node, asked: bool) -> bool:
        """Whether a registering node relays for others: it asks (register `relay`) and
        its certificate has RELAY_GROUP, the group its peers check before they take
        relayed packets from it. Without the group the offer is refused and counted."""
        try:
            offers = asked and RELAY_GROUP in certs.decode(node.cert)[0].groups
        except (RemoteProtocolError, ValueError):  # the session checked it; still, never a traceback
            offers = False
        if asked and not offers:
            self.limited["relay_offers_refused"] = self.limited.get("relay_offers_refused", 0) + 1
        if offers != (node.name in self.relay_nodes):
            (self.relay_nodes.add if offers else self.relay_nodes.discard)(node.name)
            self._relays = (float("-inf"), [])  # gathered again for the next lease
        return offers

    def relays_for(self, asker: str, now: float) -> list[str]:
        """The node relays a lease names (lease `relays`): online ones registered here
        or (etcd) through another lighthouse, the asker left out, in name order, at
        most wire.MAX_RELAYS. Every node gets the same list, so two nodes that pick a
        relay from it both hold a session with that relay. Gathered at most every
        RELAYS_EVERY seconds (the remote ones are a scan of the store's cache)."""
        at, names_ = self._relays
        if not at <= now < at + RELAYS_EVERY:
            local = {n for n in self.relay_nodes if now - self.nodes[n].last_seen <= 3 * self.ttl}
            remote = {r.name for r in self.leases.remote_nodes() if r.relay and r.name not in self.nodes}
            names_ = sorted(local | remote)[:wire.MAX_RELAYS + 1]
            self._relays = (now, names_)
        return [n for n in names_ if n != asker][:wire.MAX_RELAYS]

    def _claim(self, name: str, subnet: ipaddress.IPv4Network, services: list[dict],
               now: float) -> tuple[list[dict], list[tuple[str, str]]]:
        """(services kept, [(service, reason)] refused). Each service is judged alone:
        its name and host must follow the rule, its address be in the node's subnet,
        and its claims be free or held by this node or by a node gone offline."""
        self._release(name)
        kept, refused = [], []
        remote = self._remote_claims() if services else {}  # once per register, not per claim
        for s in services:
            reason = self._refusal(name, subnet, s, now, remote)
            if reason:
                refused.append((s["name"], f"service {s['name']!r}: {reason}"))
                continue
            for claim in _claims(s):
                self.claims[claim] = name
                self.claimed_by.setdefault(name, set()).add(claim)
            kept.append(s)
        self.refused_services += len(refused)
        return kept, refused

    def _refusal(self, name: str, subnet: ipaddress.IPv4Network, s: dict, now: float,
                 remote: dict[Claim, str]) -> str | None:
        problem = names.name_problem(s["name"])
        if problem:
            return f"name: {problem}"
        if s["host"]:
            problem = names.host_problem(s["host"])
            if problem:
                return f"host: {problem}"
        if ipaddress.IPv4Address(s["addr"]) not in subnet:
            return f"address {s['addr']} is not in the node's subnet {subnet}"
        for claim in _claims(s):
            holder = self.claims.get(claim)
            if holder == name:
                return f"{_describe(claim)} is used twice by this node"
            other = self.nodes.get(holder) if holder else None
            if other is not None and now - other.last_seen <= 3 * self.ttl:
                return (f"{_describe(claim)} is already published by node {holder}; the first node keeps it "
                        "while it is online")
            holder = remote.get(claim)
            if holder is not None and holder != name and holder not in self.nodes:
                return (f"{_describe(claim)} is already published by node {holder} (through another lighthouse); "
                        "the first node keeps it while it is online")
        return None

    def _names(self, name: str, msg: dict) -> list[tuple[str, bytes]]:
        """One page of a node's list; the list is taken when its pages are all here.
        Memory per node is bounded by wire.MAX_NAMES entries of one generation."""
        node = self.nodes.get(name)
        if node is None:
            return [(name, wire.encode("error", code="unregistered", msg="register before sending names"))]
        gen, total = msg["gen"], msg["total"]
        if gen < node.names_gen:
            return []  # an older list arriving late
        pending = node.names_pending
        if pending is None or pending[0] != gen or pending[1] != total:
            pending = node.names_pending = (gen, total, {})
        pending[2][msg["offset"]] = msg["names"]
        got = sorted(pending[2].items())
        if sum(len(v) for _, v in got) < total and total:
            return []
        entries, at = [], 0
        for offset, page in got:
            if offset != at:
                return []  # overlapping pages: wait for a consistent set (the next register resends)
            entries += page
            at += len(page)
        node.names_pending = None
        kept = []
        for n, addr in entries:
            if names.name_problem(n) or ipaddress.IPv4Address(addr) not in node.subnet:
                self.limited["names_refused"] += 1
                continue
            kept.append((n, addr))
        kept = sorted(set(kept))
        if kept != node.names:
            self.names_version += 1
        node.names, node.names_gen = kept, gen
        return []

    def _names_query(self, asker: str, msg: dict, now: float) -> list[tuple[str, bytes]]:
        """A page of every other online node's names; nothing to send when the asker
        already holds the current version."""
        if asker not in self.nodes:
            return [(asker, wire.encode("error", code="unregistered", msg="register before querying"))]
        if not _bucket(self.names_limits, asker, NAMES_RATE, NAMES_BURST).take(now):
            self.limited["names_queries"] += 1
            raise RemoteProtocolError("query_rate_limited", asker)
        online = {n for n, node in self.nodes.items() if now - node.last_seen <= 3 * self.ttl}
        if online != self._online:  # a node went quiet (or came back) without expire() yet
            self._online = online
            self.names_version += 1
        if msg["offset"] == 0 and msg["version"] == self.names_version:
            return [(asker, wire.encode("names_page", version=self.names_version, next=0, names=[]))]
        entries = [(n, addr, node.name) for node in sorted(self.nodes.values(), key=lambda x: x.name)
                   if node.name in online and node.name != asker for n, addr in node.names]
        return [(asker, wire.names_page(self.names_version, entries, msg["offset"]))]

    def _remote_claims(self) -> dict[Claim, str]:
        """Claims of the nodes online through other lighthouses only (etcd store)."""
        return {claim: r.name for r in self.leases.remote_nodes() for s in r.services for claim in _claims(s)}

    def _record(self, node: Node) -> NodeRecord:
        """The node as the store publishes it; one object per registration (made at its
        register, after every field was set), so each remote query does not make one."""
        rec = node.record
        if rec is None:
            rec = node.record = NodeRecord(node.name, node.cert, str(node.subnet), node.endpoints(), node.local,
                                           self.me, node.services, node.gateway, node.relay)
        return rec

    def _release(self, name: str) -> None:
        for claim in self.claimed_by.pop(name, ()):
            if self.claims.get(claim) == name:
                del self.claims[claim]

    def blocklist_messages(self) -> list[bytes]:
        """The current blocklist as `blocklist` control messages (pieces of CHUNK bytes)."""
        bl = self.revocations.current if self.revocations is not None else None
        if bl is None:
            return []
        return [wire.encode("blocklist", serial=bl.serial, total=len(bl.raw), offset=off, data=data)
                for off, data in revocation.chunks(bl.raw)]

    def drop_revoked(self) -> list[str]:
        """Forget the nodes whose certificate the blocklist revokes: no query finds them,
        no relay serves them, their lease stays theirs (sticky per name)."""
        if self.revocations is None:
            return []
        gone = [n for n, node in self.nodes.items() if self.revocations.reason(certs.decode(node.cert)[0])]
        for n in gone:
            self._forget(n)
        return gone

    def _forget(self, name: str) -> None:
        node = self.nodes.pop(name)
        self.leases.withdraw(name)
        if name in self.relay_nodes:
            self.relay_nodes.discard(name)
            self._relays = (float("-inf"), [])
        self._release(name)
        if node.names:
            self.names_version += 1
        self.query_limits.pop(name, None)
        self.punch_limits.pop(name, None)
        self.names_limits.pop(name, None)
        if self.by_endpoint.get(node.observed) is node:
            del self.by_endpoint[node.observed]
        if self.on_member is not None:
            self.on_member(name, None, None)

    def _query(self, asker: str, msg: dict, now: float) -> list[tuple[str, bytes]]:
        me = self.nodes.get(asker)
        if me is None:
            return [(asker, wire.encode("error", code="unregistered", msg="register before querying"))]
        # a bucket per registered node only: expire() forgets it with the node
        if not _bucket(self.query_limits, asker, QUERY_RATE, QUERY_BURST).take(now):
            self.limited["queries"] += 1
            raise RemoteProtocolError("query_rate_limited", asker)
        self.queries += 1
        if "addr" in msg:
            target_name = self.leases.by_address(wire.ipv4_int(msg["addr"]))
        else:
            target_name = msg["name"]
        target = self.nodes.get(target_name) if target_name else None
        if target is not None and now - target.last_seen > 3 * self.ttl:
            target = None
        remote = self.leases.remote(target_name) if target is None and target_name else None
        if (target is None and remote is None) or target_name == asker:
            what = msg.get("addr") or msg.get("name")
            return [(asker, wire.encode("error", code="unknown", msg=f"no node online for {what}"))]
        if target is None:  # registered through another lighthouse: that one punches it
            if _bucket(self.remote_punch_limits, remote.name, PUNCH_RATE, PUNCH_BURST).take(now):
                self.leases.request_punch(remote.lighthouse, remote.name, self._record(me))
            else:
                self.limited["punches"] += 1
            return [(asker, self._about_remote(remote))]
        out = [(asker, self._about(target, "peer"))]
        if _bucket(self.punch_limits, target.name, PUNCH_RATE, PUNCH_BURST).take(now):
            out.append((target.name, self._about(me, "punch")))
        else:
            self.limited["punches"] += 1
        return out

    @staticmethod
    def _about(node: Node, kind: str) -> bytes:
        """The `peer` or `punch` message about a node (encoded once per registration)."""
        msg = node.encoded.get(kind)
        if msg is None:
            msg = node.encoded[kind] = wire.peer_message(kind, node.name, node.cert, str(node.subnet),
                                                         node.endpoints(), node.local)
        return msg

    def _about_remote(self, remote: NodeRecord) -> bytes:
        """The `peer` message about a node registered elsewhere: encoded again only when
        the watch brought a new record (the store replaces the record object)."""
        held = self.remote_encoded.get(remote.name)
        if held is not None and held[0] is remote:
            return held[1]
        msg = wire.peer_message("peer", remote.name, remote.cert, remote.subnet, remote.endpoints, remote.local)
        self.remote_encoded[remote.name] = (remote, msg)
        return msg

    def punch(self, target: str, asker: NodeRecord, now: float) -> list[tuple[str, bytes]]:
        """Another lighthouse answered `asker`'s query for `target`, a node registered
        here: punch it (the same per-target limit as for local queries)."""
        node = self.nodes.get(target)
        if node is None or now - node.last_seen > 3 * self.ttl or asker.name == target:
            return []
        if not _bucket(self.punch_limits, target, PUNCH_RATE, PUNCH_BURST).take(now):
            self.limited["punches"] += 1
            return []
        return [(target, wire.peer_message("punch", asker.name, asker.cert, asker.subnet, asker.endpoints,
                                           asker.local))]

    def _catalog(self, asker: str, offset: int, now: float) -> list[tuple[str, bytes]]:
        """A page of every online node's services, also those registered through other
        lighthouses (a node may publish only addresses of its own subnet: that was
        checked at register, by the lighthouse it registered with)."""
        online = [n for n in self.nodes.values() if now - n.last_seen <= 3 * self.ttl]
        online += [r for r in self.leases.remote_nodes() if r.name not in self.nodes]
        entries = [dict(s, node=n.name, gateway=n.gateway) for n in sorted(online, key=lambda n: n.name)
                   for s in n.services]
        return [(asker, wire.catalog_message(entries, max(0, offset)))]

    def relay(self, packet: bytes, src: Endpoint, now: float) -> tuple[bytes, Endpoint]:
        """A type-5 packet from a registered node: (the packet to send, where), by the
        forwarder an engine relaying for others uses too (engine.proto.relay): the id
        names the target (its lease block) and is rewritten to the sender's."""
        if not self.relay_enabled:
            raise RemoteProtocolError("relay_disabled", "[relay] enabled = false")
        return self.forwarder.forward(packet, src, now)

    @property
    def relayed(self) -> int:
        return self.forwarder.relayed

    def _relay_sender(self, src: Endpoint, now: float) -> int | None:
        """A node registered here within 3 x ttl, sending from its observed address."""
        sender = self.by_endpoint.get(src)
        if sender is None or now - sender.last_seen > 3 * self.ttl:
            return None
        return self.leases.block_of(sender.subnet)

    def _relay_target(self, block: int) -> Endpoint | None:
        """The address of the node holding `block`, while it is the node registered
        there: not after another node registered from that address (a NAT gave it
        away), or after the address went (address_gone: a TCP relay connection closed)."""
        name = self.leases.name_of_block(block)
        target = self.nodes.get(name) if name else None
        if target is None or self.by_endpoint.get(target.observed) is not target:
            return None
        return target.observed

    def address_gone(self, addr: Endpoint) -> None:
        """`addr` no longer exists: the loopback shim of a TCP relay connection that
        closed. Its port is free, and the kernel may give it to the next connection,
        anyone's; nothing may be relayed from or to it for the node registered there
        (which stays registered: it registers again from its next connection)."""
        node = self.by_endpoint.pop(addr, None)
        if node is not None and self.on_member is not None:
            self.on_member(node.name, None, None)

    def expire(self, now: float) -> list[str]:
        gone = [n for n, node in self.nodes.items() if now - node.last_seen > 3 * self.ttl]
        for n in gone:
            self._forget(n)
        for held in (self.remote_punch_limits, self.remote_encoded):  # nodes no longer registered elsewhere
            for n in [n for n in held if self.leases.remote(n) is None]:
                del held[n]
        return gone
