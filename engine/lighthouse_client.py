"""The engine's side of the lighthouse protocol (no sockets, no clock: `now` comes in).

- registers with every lighthouse (and again every REGISTER_EVERY seconds, which also
  keeps NAT mappings open) and takes its /24 from the first lease that comes back;
- on packets to an overlay /24 nobody owns yet, asks the lighthouses who owns it;
- on a `peer` answer or a `punch` (the lighthouse telling us someone is about to
  connect), adds or updates that peer and handshakes to all its candidate endpoints at
  once, so both sides open their NATs at the same moment (simultaneous open);
- when no direct path answers within RELAY_AFTER seconds, sends through a lighthouse
  as relay (type 5, which it cannot decrypt), and keeps trying the direct candidates
  every DIRECT_RETRY seconds; a direct answer moves the peer back, keeping its session.
"""
from __future__ import annotations

import ipaddress
from typing import Callable

from engine.device import Device, Peer
from engine.log import Logger
from engine.proto import endpoint as endpoints_policy
from engine.proto.errors import RemoteProtocolError
from engine.proto.revocation import Reassembly
from lighthouse import wire

REGISTER_EVERY = 10.0
REGISTER_RETRY = 1.0     # until the first lease
ANSWER_WITHIN = 3.0      # a register not answered by then: the session is stale, handshake again
QUERY_TIMEOUT = 5.0      # then packets to that /24 may ask again
CATALOG_EVERY = 1.0      # the network's services, for the gateway (changes live within 2 s)
RELAY_AFTER = 3.0        # no direct path by then: go through a lighthouse acting as relay
DIRECT_RETRY = 10.0      # a relayed peer: try the direct candidates again this often


class LighthouseClient:
    def __init__(self, device: Device, lighthouses: list[Peer], network: ipaddress.IPv4Network,
                 local_endpoints: Callable[[], list[tuple[str, int]]], log: Logger,
                 on_lease: Callable[[ipaddress.IPv4Network], None], services=None,  # noqa: ANN001
                 gateway: tuple[str, int] | None = None, remembered: list[str] | None = None,
                 on_peers_changed: Callable[[list[str]], None] | None = None,
                 on_blocklist: Callable[[bytes, str], None] | None = None) -> None:
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
        self.pending: dict[int, float] = {}      # route index -> when we asked
        self.connecting: dict[str, float] = {}   # peer -> when we started trying it directly
        self.next_probe: dict[str, float] = {}   # relayed peer -> next direct attempt
        self.errors = 0
        self.remembered = list(remembered or [])
        self.on_peers_changed = on_peers_changed
        self.services = services            # engine.services.ServiceRegistry or None
        self._last_refusals: dict[tuple[str, str], str] = {}  # (lighthouse, service) -> reason logged
        self.gateway = gateway
        self.next_catalog = 0.0
        self._catalog_pages: list[dict] = []
        self.on_blocklist = on_blocklist
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
                self.next_register = min(self.next_register, now + REGISTER_RETRY)
        if now >= self.next_register:
            self.register(now)
        for name, since in list(self.connecting.items()):
            peer = self.device.peers.get(name)
            if peer is None or (peer.session.current is not None and peer.relay is None):
                del self.connecting[name]
            elif now - since >= RELAY_AFTER:
                del self.connecting[name]
                self._relay(peer, now)
        for name, at in list(self.next_probe.items()):
            peer = self.device.peers.get(name)
            if peer is None or peer.relay is None:
                del self.next_probe[name]
            elif now >= at:
                self.next_probe[name] = now + DIRECT_RETRY
                self.device.probe_direct(peer, now)
        if self.services is not None and now >= self.next_catalog and self.subnet is not None:
            self.next_catalog = now + CATALOG_EVERY
            self._catalog_pages = []
            self._ask(wire.encode("catalog_query", offset=0), one=True)
        for route, asked in list(self.pending.items()):
            if now - asked >= QUERY_TIMEOUT:
                del self.pending[route]
                self.device.dp.route_unpend(route)

    def get_timer(self) -> float:
        deadlines = ([self.next_register] + ([self.next_catalog] if self.services is not None else []) + [t + QUERY_TIMEOUT for t in self.pending.values()]
                     + [t + ANSWER_WITHIN for t in self.awaiting.values()]
                     + [t + RELAY_AFTER for t in self.connecting.values()] + list(self.next_probe.values()))
        return min(deadlines)

    def register(self, now: float) -> None:
        published = list(self.services.local.values()) if self.services is not None else []
        # the lighthouse hands out our observed address first, then at most MAX_LOCAL of these
        mine = endpoints_policy.usable(self.local_endpoints())[0][:wire.MAX_LOCAL]
        msg = wire.encode("register", endpoints=mine, services=published, gateway=self.gateway,
                          blocklist=self._held())
        for lh in self.lighthouses.values():
            if self.device.send_message(lh, msg):
                self.awaiting.setdefault(lh.name, now)
            else:
                self.device.connect(lh, now)   # no keys yet: the handshake comes first
        everyone = self.subnet is not None and len(self.registered) == len(self.lighthouses)
        self.next_register = now + (REGISTER_EVERY if everyone else REGISTER_RETRY)  # until all have answered

    # ---- hooks from the device
    def on_unknown_route(self, route: int, now: float) -> None:
        addr = ipaddress.IPv4Address((int(self.network.network_address) & 0xFF000000) | (route << 8) | 1)
        if addr not in self.network or (self.subnet is not None and addr in self.subnet):
            self.device.dp.route_unpend(route)
            return
        self.pending[route] = now
        self._ask(wire.encode("query", addr=str(addr)))

    def on_path_dead(self, peer: Peer, now: float) -> None:
        """The peer's direct path stopped answering (engine.proto.liveness): fall back
        to a relay at once; the direct candidates are tried again every DIRECT_RETRY."""
        if peer.name in self.lighthouses or peer.relay is not None:
            return
        self.connecting.pop(peer.name, None)
        self._relay(peer, now, "the direct path stopped answering")

    def on_new_peer(self, peer: Peer, now: float) -> None:
        if peer.name not in self.lighthouses:
            self._ask(wire.encode("query", name=peer.name))

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
                if self.services is not None:
                    self.services.clear_refusals(peer.name)  # the lighthouse re-sends them after the lease
                self._lease(peer, msg, now)
            elif kind in ("peer", "punch"):
                self._peer(msg, kind, now)
            elif kind == "catalog":
                self._catalog(msg)
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
            self.log.warning("bad_lighthouse_message", lighthouse=peer.name, reason=exc.reason)

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

    def _relay(self, peer: Peer, now: float, reason: str = "") -> None:
        relays = [lh for name, lh in self.lighthouses.items() if name in self.registered and lh.endpoint]
        if not relays or peer.subnet is None:
            self.log.warning("no_path", peer=peer.name, reason="no direct answer and no registered relay")
            return
        relay = relays[0]
        block = (int(peer.subnet.network_address) - int(self.network.network_address)) >> 8
        tried = len(peer.endpoints)
        self.device.use_relay(peer, relay.endpoint, block, reason or
                              f"no answer from {tried} direct endpoint{'s' if tried != 1 else ''} in "
                              f"{RELAY_AFTER:.0f} s (NAT looks port-randomizing or filtered)")
        self.device.rehandshake(peer, now)
        self.next_probe[peer.name] = now + DIRECT_RETRY

    def _lease(self, lh: Peer, msg: dict, now: float) -> None:
        subnet = ipaddress.IPv4Network(msg["subnet"])
        self.registered[lh.name] = now
        self.awaiting.pop(lh.name, None)
        self.observed = msg["observed"]
        if subnet != self.subnet:
            if self.subnet is not None:
                self.log.warning("lease_changed", old=str(self.subnet), new=str(subnet), lighthouse=lh.name)
            self.subnet = subnet
            self.on_lease(subnet)
            for name in self.remembered:  # reconnect to whom we talked to before a restart
                self._ask(wire.encode("query", name=name))
            self.remembered = []

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
        peer.extra["local"] = local
        if peer.session.current is None and peer.relay is None:
            self.connecting.setdefault(peer.name, now)
        route = (int(subnet.network_address) >> 8) & 0xFFFF
        self.pending.pop(route, None)
        self.log.info("peer_found" if kind == "peer" else "punch_requested", peer=cert.name, subnet=str(subnet),
                      endpoints=",".join(endpoints_policy.text(e) for e in endpoints))
        self.device.connect(peer, now)
