"""The engine's side of the lighthouse protocol (no sockets, no clock: `now` comes in).

- registers with every lighthouse (and again every REGISTER_EVERY seconds, which also
  keeps NAT mappings open) and takes its /24 from the first lease that comes back;
  a register goes out the moment a handshake with a lighthouse finishes (no wait for
  the next tick), and a lighthouse that has not answered (not yet, or no more) is
  handshaken with every LOST_RETRY seconds, so one that comes back is registered with
  within about a second;
- on packets to an overlay /24 nobody owns yet, asks a lighthouse who owns it: one
  at a time, in turn over the lighthouses that answer registers (the load is spread),
  and the next one when no `peer` answer came within QUERY_FAILOVER seconds;
- on a `peer` answer or a `punch` (the lighthouse telling us someone is about to
  connect), adds or updates that peer and handshakes to all its candidate endpoints at
  once, so both sides open their NATs at the same moment (simultaneous open);
- sends this host's container names (for DNS) in pages when they change and with every
  register, and polls the network's names every NAMES_EVERY seconds (a version number
  makes the poll one small message when nothing changed);
- relay first: a new peer is sent to through a relay (a node that relays for others,
  named in the lease, or a lighthouse that offers it; type 5, which it cannot
  decrypt) from the first handshake on, while the same
  initiations go to its direct candidates; a direct answer moves the peer to the
  direct path under the same session. Direct candidates are tried again after
  PROBE_DELAYS, then every DIRECT_RETRY seconds. Without a relay at that moment,
  the peer is relayed when no direct path answered within RELAY_AFTER seconds.
  A relayed peer that does not answer within RELAY_AFTER, or whose relay stops
  answering, is moved to the next relay (at most MAX_RELAY_MOVES times in a row);
- node relays (lease `relays`): this engine looks each up, handshakes with it and
  keeps the session (a handshake when not heard from for RELAY_KEEP), so that it can relay
  through it and be reached through it. A node certified with the group `relay`
  relays, and is relayed to, only through lighthouses: node relays never forward
  for each other.
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Callable

from flatnet.engine.device import RELAY_GROUP, Device, Peer
from flatnet.engine.log import Logger
from flatnet.engine.proto import liveness
from flatnet.engine.proto import endpoint as endpoints_policy
from flatnet.engine.proto import names as names_rule
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.revocation import Reassembly
from flatnet.engine.proto import control as wire

REGISTER_EVERY = 10.0
REGISTER_JITTER = 2.0    # each register up to this much early (drawn each time from the Device's rng)
REGISTER_RETRY = 1.0     # until the first lease
LOST_RETRY = 1.0         # a lighthouse that stopped answering: a handshake this often (no backoff)
ANSWER_WITHIN = 3.0      # a register not answered by then: the session is stale, handshake again
QUERY_TIMEOUT = 5.0      # then packets to that /24 may ask again
QUERY_FAILOVER = 0.5     # no `peer` answer by then: the same query to the next lighthouse
CATALOG_EVERY = 1.0      # the network's services, for the gateway (changes live within 2 s)
NAMES_EVERY = 0.5        # the network's container names, for DNS (a removed name is gone within 2 s)
RELAY_AFTER = 3.0        # no direct path by then: go through a lighthouse acting as relay
DIRECT_RETRY = 10.0      # a relayed peer: try the direct candidates again this often ...
PROBE_DELAYS = (0.5, 1.0, 2.0, 4.0)  # ... after these first (a punched NAT opens within a second)
TCP_AFTER = 3.0          # no lighthouse answered over UDP this long: use a lighthouse's TCP relay
TCP_RETRY = 5.0          # a TCP relay failed or closed: try again (the next lighthouse) after this
UDP_PROBE = 5.0          # on TCP: try UDP to the lighthouse this often; an answer moves back
LOOKUP_RETRY = 1.0       # a peer that reached us has no subnet yet: ask again after this,
LOOKUP_RETRY_MAX = 16.0  # doubling up to this (the lighthouse allows 4 queries/s per node)
MAX_RELAY_MOVES = 4      # a relayed peer that does not answer: the next relay, this many times in a row
RELAY_KEEP = 20.0        # a node relay not heard from this long: a handshake (fresh keys, NAT mapping kept)


class LighthouseClient:
    def __init__(self, device: Device, lighthouses: list[Peer], network: ipaddress.IPv4Network,
                 local_endpoints: Callable[[], list[tuple[str, int]]], log: Logger,
                 on_lease: Callable[[ipaddress.IPv4Network], None], services=None,  # noqa: ANN001
                 gateway: tuple[str, int] | None = None, remembered: list[str] | None = None,
                 on_peers_changed: Callable[[list[str]], None] | None = None,
                 on_blocklist: Callable[[bytes, str], None] | None = None,
                 on_names: Callable[[list[tuple[str, str, str]]], None] | None = None,
                 no_relay: set[str] | None = None, tcp_ports: dict[str, int] | None = None,
                 offer_relay: bool = False) -> None:
        """remembered: peers this host talked to before a restart; they are looked up
        and connected at once after the first lease, so traffic resumes within seconds
        even when the other side keeps sending under keys we lost.
        on_blocklist(raw, lighthouse): a whole blocklist a lighthouse sent, newer than
        the one we enforce (device.me.revocations), not yet verified."""
        self.device = device
        self.lighthouses = {p.name: p for p in lighthouses}
        self.network = network
        self.local_endpoints = local_endpoints
        self.log = log
        self.on_lease = on_lease
        self.subnet: ipaddress.IPv4Network | None = None
        self.observed: tuple[str, int] | None = None
        self.registered: dict[str, float] = {}   # lighthouse -> when its lease answer came
        self.awaiting: dict[str, float] = {}     # lighthouse -> when we sent a register still unanswered
        self.next_register = 0.0
        self.lost: dict[str, float] = {name: 0.0 for name in self.lighthouses}  # -> next handshake retry
        self._registered_on: dict[str, float | None] = {}  # lighthouse -> the handshake our last register used
        self._unsendable_on: dict[str, float | None] = {}  # lighthouse -> a handshake whose keys could not send yet
        self.pending: dict[int, float] = {}      # route index -> when we asked
        # "name" or "@10.87.3.1" -> (the query, lighthouses asked, when first asked)
        self.queries: dict[str, tuple[bytes, set[str], float]] = {}
        self._turn = 0                           # round robin over the lighthouses for queries
        self.connecting: dict[str, float] = {}   # peer -> when we started trying it directly
        self.next_probe: dict[str, float] = {}   # relayed peer -> next direct attempt
        self.probes_done: dict[str, int] = {}    # relayed peer -> direct attempts so far
        self.lookups: dict[str, tuple[float, float]] = {}  # peer without a subnet -> (next ask, backoff)
        self.offers_relay: dict[str, bool] = {}  # lighthouse -> its lease's `relay` (absent: True)
        self.no_relay = set(no_relay or ())      # [[lighthouses]] relay = false: never relay through these
        self.offer_relay = offer_relay           # this node relays for others (register `relay`)
        self.node_relays: list[str] = []         # the last lease's `relays`: nodes that relay for others
        # a relay node's packets are never forwarded by another node relay (engine.relay_node)
        self.use_node_relays = RELAY_GROUP not in device.me.cert.groups
        self.relay_moves: dict[str, int] = {}    # relayed peer -> relays tried without an answer
        # the TCP relay (UDP blocked): hooks the driver sets; state of this side
        self.tcp_ports = {n: p for n, p in (tcp_ports or {}).items() if p}
        self.udp_endpoints = {p.name: list(p.endpoints) for p in lighthouses if p.name in self.tcp_ports}
        self.open_tcp: Callable[[str, tuple[str, int]], None] | None = None
        self.close_tcp: Callable[[str], None] | None = None
        self.tcp: dict[str, tuple[str, int]] = {}  # lighthouse -> its open TCP relay's shim address
        self.tcp_opening: str | None = None
        self.tcp_attempts = 0
        self.tcp_tries = 0                         # in this outage (to log it once)
        self.next_tcp = 0.0
        self.udp_silent_since: float | None = None
        self.next_udp_probe = 0.0
        self.errors = 0
        self.remembered = list(remembered or [])
        self.on_peers_changed = on_peers_changed
        self.services = services            # engine.services.ServiceRegistry or None
        self._last_refusals: dict[tuple[str, str], str] = {}  # (lighthouse, service) -> reason logged
        self.gateway = gateway
        self.next_catalog = 0.0
        self._catalog_pages: list[dict] = []
        self.on_blocklist = on_blocklist
        # names: ours (sent), the network's (polled); on_names(entries) gets [(name, addr, node)]
        self.on_names = on_names
        self.local_names: list[tuple[str, str]] = []
        self.names_gen = device.wall_ns() // 1000   # grows across restarts: the lighthouse drops older lists
        self.names_version = 0
        self.next_names = 0.0
        self._names_pages: list[tuple[str, str, str]] = []
        self._names_paging = 0                       # version of the pages being collected
        # one per lighthouse: pieces from one (even a broken one) never block another's
        self._blocklist = {name: Reassembly() for name in self.lighthouses}
        device.relay_names.update(self.lighthouses)  # a lighthouse may relay (Device.relay_allowed)
        device.on_message = self.on_message
        device.on_unknown_route = self.on_unknown_route
        device.on_new_peer = self.on_new_peer
        device.on_path_dead = self.on_path_dead

    # ---- timers
    def handle_timer(self, now: float) -> None:
        for name, sent in list(self.awaiting.items()):
            if now - sent >= ANSWER_WITHIN:  # e.g. the lighthouse restarted and lost our keys
                del self.awaiting[name]
                self.registered.pop(name, None)
                self.device.rehandshake(self.lighthouses[name], now)
                self.lost[name] = now + LOST_RETRY
                self.next_register = min(self.next_register, now + REGISTER_RETRY)
        if now >= self.next_register or self._fresh_keys():
            self.register(now)
        for name, at in list(self.lost.items()):
            lh = self.lighthouses[name]
            if now >= at and name not in self.awaiting:
                self.lost[name] = now + LOST_RETRY
                if lh.session.pending is not None:  # its own retries back off to 8 s: too slow
                    self.device.handshake_now(lh, now)
                elif lh.session.current is not None:  # keys it no longer has (or gave up on)
                    self.device.rehandshake(lh, now)
                else:
                    self.device.connect(lh, now)
        for name, since in list(self.connecting.items()):
            peer = self.device.peers.get(name)
            if peer is None or (peer.session.current is not None and peer.relay is None):
                del self.connecting[name]
                self.relay_moves.pop(name, None)
            elif now - since >= RELAY_AFTER:
                del self.connecting[name]
                if peer.relay is not None and peer.session.current is None and \
                        self.relay_moves.get(name, 0) < MAX_RELAY_MOVES and \
                        self._relay(peer, now, "no answer through the relay", avoid=peer.relay[0]):
                    self.relay_moves[name] = self.relay_moves.get(name, 0) + 1
                    self.connecting[name] = now  # the next relay gets its RELAY_AFTER too
                elif peer.relay is not None:  # relayed from the start: say why it stays so
                    self.relay_moves.pop(name, None)
                    peer.path_reason = self._why_relayed(peer)
                else:
                    self._relay(peer, now)
        for name, at in list(self.next_probe.items()):
            peer = self.device.peers.get(name)
            if peer is None or peer.relay is None:
                del self.next_probe[name]
                self.probes_done.pop(name, None)
            elif now >= at:
                done = self.probes_done[name] = self.probes_done.get(name, 0) + 1
                self.next_probe[name] = now + (PROBE_DELAYS[done] - PROBE_DELAYS[done - 1]
                                               if done < len(PROBE_DELAYS) else DIRECT_RETRY)
                self.device.probe_direct(peer, now)
        self._tcp_timer(now)
        if self.services is not None and now >= self.next_catalog and self.subnet is not None:
            self.next_catalog = now + CATALOG_EVERY
            self._catalog_pages = []
            self._ask(wire.encode("catalog_query", offset=0), one=True)
        if self.on_names is not None and now >= self.next_names and self.subnet is not None:
            self.next_names = now + NAMES_EVERY
            self._names_pages, self._names_paging = [], 0
            self._ask(wire.encode("names_query", version=self.names_version, offset=0), one=True)
        for target, (msg, asked, at) in list(self.queries.items()):
            if now - at >= QUERY_TIMEOUT:
                del self.queries[target]
            elif len(asked) < len(self.lighthouses) and now - at >= QUERY_FAILOVER * max(1, len(asked)):
                self._query(target, msg, now)  # unanswered: the next lighthouse
        for name, (at, delay) in list(self.lookups.items()):
            peer = self.device.peers.get(name)
            if peer is None or peer.subnet is not None:
                del self.lookups[name]
            elif now >= at:  # the answer (or the punch) was lost or refused by the rate limit
                delay = min(2 * delay, LOOKUP_RETRY_MAX)
                self.lookups[name] = (now + delay, delay)
                self._query(name, wire.encode("query", name=name), now)
        for route, asked in list(self.pending.items()):
            if now - asked >= QUERY_TIMEOUT:
                del self.pending[route]
                self.device.dp.route_unpend(route)

    def get_timer(self) -> float:
        if self._fresh_keys():
            return 0.0  # a handshake just finished: register now
        deadlines = ([self.next_udp_probe] if self.tcp else [])
        deadlines += ([max(self.next_tcp, self.udp_silent_since + TCP_AFTER)]
                      if self.udp_silent_since is not None and not self.tcp and self.open_tcp else [])
        # a lost lighthouse's retry waits while a register to it is out (handle_timer)
        deadlines += ([self.next_register] + [at for name, at in self.lost.items() if name not in self.awaiting]
                      + ([self.next_catalog] if self.services is not None else [])
                      + ([self.next_names] if self.on_names is not None else [])
                      + [t + QUERY_TIMEOUT for t in self.pending.values()]
                      + [t + ANSWER_WITHIN for t in self.awaiting.values()]
                      # the next lighthouse to ask, or (all asked) when the query is given up
                      + [at + (QUERY_FAILOVER * max(1, len(asked)) if len(asked) < len(self.lighthouses)
                               else QUERY_TIMEOUT) for _, asked, at in self.queries.values()]
                      + [t + RELAY_AFTER for t in self.connecting.values()] + list(self.next_probe.values())
                      + [at for at, _ in self.lookups.values()])
        return min(deadlines)

    # ---- the TCP relay: when no UDP gets through, not even to a lighthouse
    def _tcp_timer(self, now: float) -> None:
        if self.open_tcp is None or not self.tcp_ports:
            return
        if self.tcp:  # on TCP: keep trying UDP; an authenticated answer over UDP moves back
            for name, shim in list(self.tcp.items()):
                lh = self.lighthouses[name]
                if lh.endpoint is not None and lh.endpoint != shim:
                    self.log.info("udp_back", lighthouse=name, endpoint=f"{lh.endpoint[0]}:{lh.endpoint[1]}",
                                  action="leaving the TCP relay")
                    if self.close_tcp is not None:
                        self.close_tcp(name)
                elif now >= self.next_udp_probe:
                    self.next_udp_probe = now + UDP_PROBE
                    # a register under the session, over UDP: the lease answer comes back the
                    # same way if UDP works (the data path then moves the lighthouse's endpoint)
                    self.device.send_message_to(lh, self._register_message(), self.udp_endpoints[name])
            return
        if self.registered:
            self.udp_silent_since = None
            self.tcp_tries = 0
            return
        if self.udp_silent_since is None:
            self.udp_silent_since = now
        if self.tcp_opening is None and now - self.udp_silent_since >= TCP_AFTER and now >= self.next_tcp:
            names = [n for n in self.lighthouses if n in self.tcp_ports]
            name = names[self.tcp_attempts % len(names)]
            self.tcp_attempts += 1
            server = (self.udp_endpoints[name][0][0], self.tcp_ports[name])
            self.tcp_opening = name
            self.next_tcp = now + TCP_RETRY
            self.tcp_tries += 1
            (self.log.warning if self.tcp_tries == 1 else self.log.debug)(  # once per outage
                "udp_blocked", reason=f"no lighthouse answered over UDP in {TCP_AFTER:.0f} s",
                action=f"connecting to the TCP relay {server[0]}:{server[1]} of {name}")
            self.open_tcp(name, server)

    def tcp_up(self, name: str, shim: tuple[str, int], label: str, now: float) -> None:
        """The driver connected the TCP relay of lighthouse `name`; `shim` is the
        loopback address its datagrams come from and go to."""
        self.tcp_opening = None
        self.tcp[name] = shim
        lh = self.lighthouses[name]
        self.device.tcp_labels[shim] = label  # (a candidate endpoint of the lighthouse, below)
        self.device.set_endpoints(lh, self.udp_endpoints[name] + [shim])
        self.device.move_endpoint(lh, shim)
        self.device.handshake_now(lh, now)  # a session over TCP: the lighthouse never heard us over UDP
        self.awaiting.pop(name, None)
        self.next_register = now
        self.next_udp_probe = now + UDP_PROBE

    def tcp_closed(self, name: str, why: str, now: float) -> None:
        """The TCP relay of `name` closed (or could not connect). Peers relayed over it
        go to the UDP relay if UDP is back, else wait for the next TCP relay."""
        if self.tcp_opening == name:
            self.tcp_opening = None
        shim = self.tcp.pop(name, None)
        self.next_tcp = now + TCP_RETRY
        self.udp_silent_since = now if not self.registered else None
        if shim is None:
            return
        lh = self.lighthouses[name]
        self.device.tcp_labels.pop(shim, None)
        self.device.set_endpoints(lh, self.udp_endpoints[name])
        if lh.endpoint == shim:  # not moved by an answer over UDP: back to the configured address
            self.device.move_endpoint(lh, self.udp_endpoints[name][0])
            self.registered.pop(name, None)
            self.udp_silent_since = now if not self.registered else None
        for peer in list(self.device.peers.values()):
            if peer.relay is not None and peer.relay[0] == shim:
                if lh.endpoint != shim and name in self.registered:
                    self.device.use_relay(peer, lh.endpoint, peer.relay[1], "UDP works again; direct being tried")
                    self.next_probe[peer.name] = now  # and try the direct path at once
                    self.probes_done[peer.name] = 0
                else:
                    self.device.use_relay(peer, self.udp_endpoints[name][0], peer.relay[1],
                                          f"TCP relay closed ({why})")

    def _register_message(self) -> bytes:
        published = list(self.services.local.values()) if self.services is not None else []
        # the lighthouse hands out our observed address first, then at most MAX_LOCAL of these
        mine = endpoints_policy.usable(self.local_endpoints())[0][:wire.MAX_LOCAL]
        extra = {"relay": True} if self.offer_relay else {}  # absent: false (older lighthouses ignore it)
        return wire.encode("register", endpoints=mine, services=published, gateway=self.gateway,
                           blocklist=self._held(), **extra)

    def register(self, now: float) -> None:
        msg = self._register_message()
        for lh in self.lighthouses.values():
            if lh.name in self.lost and lh.session.current is not None \
                    and lh.session.last_handshake == self._registered_on.get(lh.name, -1.0):
                continue  # these keys went unanswered: wait for the new handshake (lost)
            if self.device.send_message(lh, msg):
                self.awaiting.setdefault(lh.name, now)
                self._registered_on[lh.name] = lh.session.last_handshake
            elif lh.session.current is not None:
                # keys, but none to send with yet (as responder we wait for the lighthouse's
                # first packet): the next register tries again; not "fresh" until then, or
                # get_timer would say 0 again and again (a busy loop)
                self._unsendable_on[lh.name] = lh.session.last_handshake
            else:
                self.device.connect(lh, now)   # no keys yet: the handshake comes first
        if self.on_names is not None:  # a lost page or a restarted lighthouse: healed here
            self._send_names()
        self._keep_node_relays(now)
        everyone = self.subnet is not None and len(self.registered) == len(self.lighthouses)
        if not everyone:
            self.next_register = now + REGISTER_RETRY  # until all have answered
            return
        # Early by a fresh random amount each time: the engines a lighthouse restart made
        # register together (all within 2 s) would otherwise keep registering in the same
        # second for good (10,000 nodes: 0.2-0.75 lighthouse CPU-s in that second, and as
        # many store writes with etcd; benchmarks lighthouse --rekey-period).
        rng = self.device.rng
        self.next_register = now + REGISTER_EVERY - (rng.uniform(0.0, REGISTER_JITTER) if rng is not None else 0.0)

    def _keep_node_relays(self, now: float) -> None:
        """Every node relay of the lease (looked at with every register): looked up
        until known, handshaken with until keys; then, when nothing was heard from it
        for RELAY_KEEP seconds, handshaken with again. A handshake, not a keepalive: a
        keepalive gets no answer, so the path's liveness would probe it with a
        handshake 1.5 s later anyway (simnet, an idle relay session: 18 handshakes in
        120 s with a keepalive every 10 s; this way about one every 20 s, none while
        the relay is heard from). The answer keeps the keys fresh and the NAT mapping open."""
        for name in self.node_relays:
            peer = self.device.peers.get(name)
            if peer is None:
                if name not in self.queries:
                    self._query(name, wire.encode("query", name=name), now)
            elif peer.session.current is None:
                self.device.connect(peer, now)
            elif peer.relay is None and peer.session.pending is None:
                s = peer.session
                heard = max((t for t in (s.last_rx, s.last_handshake) if t is not None), default=None)
                if heard is None or now - heard >= RELAY_KEEP:
                    self.device.handshake_now(peer, now)

    def set_local_names(self, entries: list[tuple[str, str]]) -> None:
        """This host's (name, addr) list changed: send it to every lighthouse now."""
        entries = sorted(set(entries))[:wire.MAX_NAMES]
        if entries == self.local_names:
            return
        self.local_names = entries
        self.names_gen += 1
        self._send_names()

    def _send_names(self) -> None:
        for msg in wire.names_pages(self.names_gen, self.local_names):
            for lh in self.lighthouses.values():
                self.device.send_message(lh, msg)

    def _names_page(self, msg: dict) -> None:
        if self.on_names is None or msg["version"] == self.names_version:
            return  # nothing changed since the last complete list
        if self._names_paging and msg["version"] != self._names_paging:
            self._names_pages, self._names_paging = [], 0  # changed while paging: the next poll starts over
            return
        self._names_paging = msg["version"]
        if len(self._names_pages) + len(msg["names"]) > 64 * wire.MAX_NAMES:
            raise RemoteProtocolError("bad_control", "names: too many pages")
        # the lighthouse checked these; this side does not rely on it (an older or
        # misbehaving one must not make our DNS answer 169.254.169.254 for "web")
        good = [e for e in msg["names"] if not names_rule.name_problem(e[0])
                and ipaddress.IPv4Address(e[1]) in self.network]
        if len(good) != len(msg["names"]):
            self.device.errors["names_refused"] += len(msg["names"]) - len(good)
        self._names_pages += good
        if msg["next"]:
            self._ask(wire.encode("names_query", version=self.names_version, offset=msg["next"]), one=True)
            return
        self.names_version = msg["version"]
        pages, self._names_pages, self._names_paging = self._names_pages, [], 0
        self.on_names(pages)

    def _fresh_keys(self) -> bool:
        """A lighthouse we wait for has keys from a handshake our registers have not
        used yet (it just came back, or we just started)."""
        return any(name not in self.awaiting and lh.session.current is not None
                   and lh.session.last_handshake not in (self._registered_on.get(name, -1.0),
                                                         self._unsendable_on.get(name, -1.0))
                   for name, lh in self.lighthouses.items() if name in self.lost)

    # ---- hooks from the device
    def on_unknown_route(self, route: int, now: float) -> None:
        addr = ipaddress.IPv4Address((int(self.network.network_address) & 0xFF000000) | (route << 8) | 1)
        if addr not in self.network or (self.subnet is not None and addr in self.subnet):
            self.device.dp.route_unpend(route)
            return
        self.pending[route] = now
        self._query(f"@{addr}", wire.encode("query", addr=str(addr)), now)

    def on_path_dead(self, peer: Peer, now: float) -> None:
        """The peer's direct path stopped answering (engine.proto.liveness): fall back
        to a relay at once; the direct candidates are tried again every DIRECT_RETRY."""
        if peer.name in self.lighthouses:
            return
        if peer.relay is not None:  # the relay stopped answering: another one, if there is one
            self._relay(peer, now, "the relay stopped answering", avoid=peer.relay[0])
            return
        self.connecting.pop(peer.name, None)
        self._relay(peer, now, "the direct path stopped answering")

    def on_new_peer(self, peer: Peer, now: float) -> None:
        """A node we did not know connected: its subnet (which addresses it may send
        from) comes from the lighthouse. Asked again with a backoff until it is known:
        until then its traffic is dropped (source_not_allowed)."""
        if peer.name not in self.lighthouses:
            self._query(peer.name, wire.encode("query", name=peer.name), now)
            if peer.subnet is None:
                self.lookups[peer.name] = (now + LOOKUP_RETRY, LOOKUP_RETRY)

    def _query(self, target: str, msg: bytes, now: float) -> None:
        """`msg` to one lighthouse not yet asked about `target`: those answering
        registers first, in turn; then any with keys. All asked: the query waits for
        its timeout (a packet after that asks again)."""
        _, asked, since = self.queries.get(target, (msg, set(), now))
        names = list(self.lighthouses)
        self._turn = (self._turn + 1) % len(names)
        turn = names[self._turn:] + names[:self._turn]
        order = ([n for n in turn if n in self.registered and n not in self.lost]
                 + [n for n in turn if n not in self.registered or n in self.lost])
        for name in order:
            if name not in asked and self.device.send_message(self.lighthouses[name], msg):
                asked.add(name)
                self.queries[target] = (msg, asked, since)
                return
        if not asked:  # no lighthouse has keys yet: remember it, ask when the timer comes
            self.queries[target] = (msg, asked, since)

    def _ask(self, msg: bytes, one: bool = False) -> None:
        """To every lighthouse with a session (any answer will do: a dead one cannot
        delay a lookup), or with one=True to the one that answered a register last."""
        order = sorted(self.lighthouses.values(), key=lambda lh: -self.registered.get(lh.name, -1.0))
        for lh in order:
            if self.device.send_message(lh, msg) and one:
                return

    def on_message(self, peer: Peer, data: bytes, addr: tuple[str, int], now: float) -> None:
        if peer.name not in self.lighthouses:
            self.errors += 1
            self.log.warning("control_from_non_lighthouse", peer=peer.name)
            return
        try:
            kind, msg = wire.decode(data)
            if kind == "lease":
                self._lease(peer, msg, now)
            elif kind in ("peer", "punch"):
                self._peer(msg, kind, now)
            elif kind == "catalog":
                self._catalog(msg)
            elif kind == "names_page":
                self._names_page(msg)
            elif kind == "error" and msg["code"] == "service_refused" and msg["service"]:
                self._refused(peer, msg)
            elif kind == "blocklist":
                raw = self._blocklist[peer.name].feed(msg["serial"], msg["total"], msg["offset"], msg["data"],
                                                      self._held())
                if raw is not None and self.on_blocklist is not None:
                    self.on_blocklist(raw, peer.name)
            elif kind == "error":
                self.log.warning("lighthouse_error", lighthouse=peer.name, code=msg["code"], msg=msg["msg"])
            else:
                raise RemoteProtocolError("unexpected_control", kind)
        except RemoteProtocolError as exc:
            self.errors += 1
            self.device.errors[exc.reason] += 1
            self.log.warning("bad_lighthouse_message", lighthouse=peer.name, reason=exc.reason, detail=str(exc)[:200])

    def _refused(self, peer: Peer, msg: dict) -> None:
        """One of our services is not routed by the network (name or host taken, or it
        breaks the rule): listed by GET /services/rejected; logged when new."""
        if self.services is None:
            return
        if self._last_refusals.get((peer.name, msg["service"])) != msg["msg"]:
            self.log.warning("service_refused", lighthouse=peer.name, service=msg["service"], reason=msg["msg"])
        if len(self._last_refusals) > 256:  # only a lighthouse sends these; still bounded
            self._last_refusals.clear()
        self._last_refusals[(peer.name, msg["service"])] = msg["msg"]
        self.services.refuse(peer.name, msg["service"], msg["msg"])
    def _held(self) -> int:
        """The serial of the blocklist we enforce (the lighthouse sends us newer ones)."""
        rev = self.device.me.revocations
        return rev.serial if rev is not None else 0

    def _catalog(self, msg: dict) -> None:
        if self.services is None:
            return
        for service in msg["services"]:  # our gateway proxies to these: never to 169.254.169.254
            if service["gateway"] is not None and endpoints_policy.refused(service["gateway"]):
                self.device.errors["endpoint_refused"] += 1
                service["gateway"] = None
        self._catalog_pages += msg["services"]
        if msg["next"]:
            self._ask(wire.encode("catalog_query", offset=msg["next"]), one=True)
        else:
            self.services.set_remote(self._catalog_pages)
            self._catalog_pages = []

    def relays(self, target: Peer | None = None) -> list[Peer]:
        """Relays we may use now (for `target`), best first:
        - node relays the lease named, with keys on a direct path an authenticated
          packet confirmed, not unreachable (none when this node or the target is
          certified `relay`: its answers could not come back that way); in an
          order of their own per target (rendezvous hashing), so the load spreads;
        - lighthouses: registered (their lease answered and no register is overdue),
          offering it, not turned off in our config; the one that answered last first."""
        nodes = []
        # a node relay forwards neither for nor (answering) from a node certified `relay`
        ours = self.use_node_relays and (target is None or RELAY_GROUP not in target.cert.groups)
        for name in self.node_relays if ours else []:
            p = self.device.peers.get(name)
            if p is not None and p is not target and p.session.current is not None and p.relay is None \
                    and p.endpoint is not None and p.direct_seen is not None \
                    and p.live.state is not liveness.PathState.UNREACHABLE:
                nodes.append(p)
        if target is not None:
            nodes.sort(key=lambda p: hashlib.blake2b(f"{target.name}/{p.name}".encode(), digest_size=8).digest())
        ok = [lh for name, lh in self.lighthouses.items() if name in self.registered and lh.endpoint
              and self.offers_relay.get(name, True) and name not in self.no_relay]
        return nodes + sorted(ok, key=lambda lh: -self.registered[lh.name])

    @staticmethod
    def _why_relayed(peer: Peer) -> str:
        tried = len(peer.endpoints)
        return (f"no answer from {tried} direct endpoint{'s' if tried != 1 else ''} in "
                f"{RELAY_AFTER:.0f} s (NAT looks port-randomizing or filtered)")

    def _relay(self, peer: Peer, now: float, reason: str = "", avoid: tuple[str, int] | None = None) -> bool:
        relays = [r for r in self.relays(peer) if r.endpoint != avoid]
        if avoid is not None and not relays:
            return False  # no other relay: stay on this one
        if not relays or peer.subnet is None:
            self.log.warning("no_path", peer=peer.name, reason="no direct answer and no registered relay")
            return False
        block = (int(peer.subnet.network_address) - int(self.network.network_address)) >> 8
        self.device.use_relay(peer, relays[0].endpoint, block, reason or self._why_relayed(peer))
        # at once, also when an initiation is out: waiting for its retry (backed off to
        # 4 s) made a first reply take 7 s in 4 of 13 runs behind port-randomizing NATs
        self.device.handshake_now(peer, now)
        self._schedule_probes(peer, now)
        return True

    def _schedule_probes(self, peer: Peer, now: float) -> None:
        if peer.name not in self.next_probe:
            self.next_probe[peer.name] = now + PROBE_DELAYS[0]
            self.probes_done[peer.name] = 0

    def _lease(self, lh: Peer, msg: dict, now: float) -> None:
        subnet = ipaddress.IPv4Network(msg["subnet"])
        # checked before anything of the lease is used: a lighthouse that says otherwise
        # (a bug, another network's lighthouse with our CA, an old version) must not make
        # us give the TUN an address outside the overlay and route it there
        if subnet.prefixlen != 24 or not subnet.subnet_of(self.network):
            raise RemoteProtocolError("bad_control", f"lease {subnet} is not a /24 inside {self.network}")
        if self.services is not None:
            self.services.clear_refusals(lh.name)  # the lighthouse re-sends them after the lease
        self.registered[lh.name] = now
        self.offers_relay[lh.name] = msg["relay"]
        self._set_node_relays(msg["relays"], now)
        self.awaiting.pop(lh.name, None)
        self.lost.pop(lh.name, None)
        self.observed = msg["observed"]
        if subnet != self.subnet:
            if self.subnet is not None:
                self.log.warning("lease_changed", old=str(self.subnet), new=str(subnet), lighthouse=lh.name)
            self.subnet = subnet
            self.on_lease(subnet)
            for name in self.remembered:  # reconnect to whom we talked to before a restart
                self._query(name, wire.encode("query", name=name), now)
            self.remembered = []

    def _set_node_relays(self, names: list[str], now: float) -> None:
        me = self.device.me.cert.name
        names = [n for n in names if n != me and n not in self.lighthouses][:wire.MAX_RELAYS]
        if names != self.node_relays:
            self.log.info("node_relays", relays=",".join(names) or "none")
            self.node_relays = names
            self._keep_node_relays(now)

    def _peer(self, msg: dict, kind: str, now: float) -> None:
        cert = self.device.me.verify_peer(msg["cert"], self.device.wall_ns() / 1e9)
        if cert.name != msg["name"] or cert.name == self.device.me.cert.name:
            raise RemoteProtocolError("bad_control", "peer name does not match its certificate")
        subnet = ipaddress.IPv4Network(msg["subnet"])
        if not subnet.subnet_of(self.network):
            raise RemoteProtocolError("bad_control", f"{subnet} is outside {self.network}")
        # the lighthouse vets endpoints too; this side does not rely on it (an older or
        # misbehaving lighthouse must not make us send handshakes to 127.0.0.1:22)
        endpoints, refused = endpoints_policy.usable(msg["endpoints"])
        local = endpoints_policy.usable(msg["local"])[0]
        if refused:
            self.device.errors["endpoint_refused"] += len(refused)
            self.log.warning("endpoints_refused", peer=cert.name, endpoints=",".join(endpoints_policy.text(e) for e in refused))
        peer = self.device.peers.get(cert.name)
        if peer is None:
            peer = self.device.add_peer(cert, subnet, endpoints)
            if self.on_peers_changed is not None:
                self.on_peers_changed([p for p in self.device.peers if p not in self.lighthouses])
        elif peer.cert.key != cert.key:
            raise RemoteProtocolError("bad_cert", f"{cert.name} changed its key")
        self.device.set_subnet(peer, subnet)
        self.device.set_endpoints(peer, endpoints)
        peer.own_endpoints = local
        if peer.session.current is None and peer.relay is None:
            self.connecting.setdefault(peer.name, now)
            # relay first: the first packets go through the relay while the initiation
            # below also goes to the direct candidates (Device._send_to)
            n = len(endpoints)
            if self.relays(peer) and peer.subnet is not None:
                self._relay(peer, now, f"relay first, while {n} direct endpoint{'s are' if n != 1 else ' is'} tried")
                self.log.info("peer_found" if kind == "peer" else "punch_requested", peer=cert.name,
                              subnet=str(subnet), endpoints=",".join(f"{h}:{p}" for h, p in endpoints),
                              path="relay first")
                self.pending.pop((int(subnet.network_address) >> 8) & 0xFFFF, None)
                return
        elif peer.relay is not None:  # e.g. it reached us through the relay: look for a direct path
            self._schedule_probes(peer, now)
        route = (int(subnet.network_address) >> 8) & 0xFFFF
        self.pending.pop(route, None)
        self.queries.pop(cert.name, None)  # answered: by name, or by any address of its /24
        for target in [t for t in self.queries if t[0] == "@" and ipaddress.IPv4Address(t[1:]) in subnet]:
            del self.queries[target]
        self.log.info("peer_found" if kind == "peer" else "punch_requested", peer=cert.name, subnet=str(subnet),
                      endpoints=",".join(endpoints_policy.text(e) for e in endpoints))
        self.device.connect(peer, now)
