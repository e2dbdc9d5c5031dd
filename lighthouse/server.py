"""The lighthouse's I/O driver: one UDP socket, the Noise sessions (engine.device with
the C data path, receive side only: the lighthouse routes no overlay packets), the
registry, a timer and the control API.

    node --(type 4, decrypted in C)--> Device.on_message -> Registry.handle -> replies
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import signal
import time

from flatnet.engine import metrics, pki
from flatnet.engine.datapath import RELAY_ALL, DataPath, aes_gcm_available, exit_on_failure
from flatnet.engine.device import Device, Peer
from flatnet.engine.io import control, udp
from flatnet.engine.io.tcp_relay import loopback_of
from flatnet.engine.log import Logger
from flatnet.engine.proto import endpoint as endpoints_policy
from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.handshake import Identity
from flatnet.engine.proto.revocation import Revocations
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.config import LighthouseConfig
from flatnet.lighthouse.registry import Registry
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.store import NodeRecord, Store
from flatnet.lighthouse.store_etcd import EtcdStore

TICK = 1.0
LEASE_WORKERS = 8  # etcd: first leases allocated at once (each a transaction round trip)


class Lighthouse:
    def __init__(self, config: LighthouseConfig, log: Logger) -> None:
        self.config = config
        self.log = log
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._failures: list[OSError] = []  # a data-path thread that ended on an error
        self.rejected: dict[str, int] = {}

    async def run(self) -> None:
        config = self.config
        self.loop = asyncio.get_running_loop()
        me = pki.load_identity(config.ca, config.cert, config.key, time.time())
        self.revocations = Revocations(me.ca)
        # ChaCha20-Poly1305 whenever the node offers it: a lighthouse carries only small
        # control messages, and an AES-256-GCM key costs an OpenSSL context (~1.7 KB) per
        # key; AES-256-GCM is accepted where this host has it, for nodes that offer only
        # that (docs/protocol.md 5.10, docs/lighthouse.md)
        aead = (AEAD_CHACHA, AEAD_AES) if aes_gcm_available() else (AEAD_CHACHA,)
        me = dataclasses.replace(me, revocations=self.revocations, aead=aead, responder_prefers_own=True)
        self.blocklist_file = pki.BlocklistFile(config.blocklist)
        os.makedirs(config.state_dir, exist_ok=True)
        # etcd: blocks until a member answers (a lighthouse without its store serves nobody)
        self.leases = open_store(config, me.cert.name)
        self.leases.on_punches = lambda pairs: self.loop.call_soon_threadsafe(self._punch, pairs)
        self.registry = Registry(self.leases, config.ttl, self.revocations, relay=config.relay, me=me.cert.name)
        self.lease_pool = concurrent.futures.ThreadPoolExecutor(LEASE_WORKERS, thread_name_prefix="lease")
        self._allocating: set[str] = set()
        self._out: list[tuple[Peer, bytes]] = []  # answers waiting for _flush
        self.sock = udp.open_udp(config.listen_host, config.listen_port, 4 * 1024 * 1024)
        self.dp = DataPath(config.network, 1420, self.sock.family, max_peers=config.sessions)
        self.dp.set_relay_mode(RELAY_ALL)
        # relayed packets come in UDP GRO batches and leave as UDP GSO sends (relay.c)
        gso, gro = udp.enable_offloads(self.sock)
        self.dp.set_offloads(False, gso, gro)
        self.device = self._make_device(me)
        self.registry.on_member = self._relay_member
        self._poll_blocklist()  # before the first handshake: a revoked node never gets in
        self.metrics = metrics.serve(metrics.LighthouseCollector(self), config.metrics_listen)
        self.servers = await control.start(config.control_socket, self.handle_api)
        self.tcp = None
        if config.relay and config.tcp_port:
            from flatnet.lighthouse.tcp_relay import TcpRelayServer
            self.tcp = TcpRelayServer((config.listen_host, config.tcp_port),
                                      loopback_of(config.listen_host, config.listen_port),
                                      self.device.shim_addrs, lambda a: a in self.registry.by_endpoint, self.log,
                                      on_gone=self.registry.address_gone)
            try:
                await self.tcp.start()
            except OSError as exc:  # UDP relaying and everything else still work
                self.log.error("tcp_relay_unavailable", port=config.tcp_port, error=exc.strerror or str(exc),
                               fix="free the port, allow CAP_NET_BIND_SERVICE, or set [relay] tcp_port")
                self.tcp = None
        self.dp.start(None, self.sock.fileno(), lambda slots: None,
                      lambda items: self.loop.call_soon_threadsafe(self._on_control, items),
                      exit_on_failure(self.loop, self.log, self._stop, self._failures))
        self.log.info("lighthouse_started", node=me.cert.name, network=str(config.network),
                      listen=endpoints_policy.text(self.sock.getsockname()[:2]), store=config.store_backend,
                      leases=len(self.leases.all()))
        self._tick()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._poll_blocklist)
        await self._stop.wait()
        self.dp.stop()
        if self.tcp is not None:
            self.tcp.close()
        for s in self.servers:
            s.close()
        self.sock.close()
        self.lease_pool.shutdown(wait=True, cancel_futures=True)
        self.leases.close()
        if self._failures:
            raise self._failures[0]

    def _make_device(self, me: Identity) -> Device:
        device = Device(me, self.dp, self._send, time.time_ns, self.log, accept_any=True, judge_paths=False)
        device.on_message = self._on_message
        device.on_relay = self._on_relay
        device.on_idle = self._on_idle
        return device

    def _on_idle(self, peer: Peer, now: float) -> None:
        """A session left with no keys (180 s without a handshake) and no handshake out.
        A node registered here stays until registry.expire forgets it; any other (its
        register was refused, e.g. no /24 left, or it never sent one) is forgotten now.
        Otherwise its session slot stayed taken for good: nothing else removes a node
        the registry never knew, and a full table refuses every new node (sessions_full)."""
        if peer.name not in self.registry.nodes and peer.name not in self._allocating:
            self.log.info("session_forgotten", peer=peer.name, reason="no keys and not registered")
            self.device.remove_peer(peer.name)

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(packet, udp.to_socket(self.sock, addr))
        except OSError:
            pass

    def _on_control(self, items) -> None:  # noqa: ANN001
        try:
            self.device.on_control(items, time.monotonic())
        finally:  # what was answered before an error goes now, not after a tick removed its peer
            self._flush()

    def _reply(self, replies: list[tuple[str, bytes]]) -> None:
        """Answers wait in self._out for _flush: what one batch of received messages
        produced goes out sealed in one C call and one sendmmsg (Device.send_messages),
        not a seal call and a sendto each (a quarter of the lighthouse's time)."""
        for target, msg in replies:
            dest = self.device.peers.get(target)
            if dest is None:
                self.log.debug("reply_undeliverable", peer=target)
            else:
                self._out.append((dest, msg))

    def _flush(self) -> None:
        out, self._out = self._out, []
        for peer in self.device.send_messages(out):
            self.log.debug("reply_undeliverable", peer=peer.name)

    def _on_message(self, peer: Peer, data: bytes, addr: tuple[str, int], now: float,
                    allocated: bool = False) -> None:
        if not allocated and self.leases.lease_needs_io(peer.name) and self._is_register(data):
            # a first lease waits for etcd: in a worker, then the message is handled as
            # usual (the lease is in the cache by then; an error is answered then)
            if peer.name in self._allocating:
                return  # the node's earlier register is being answered
            self._allocating.add(peer.name)
            fut = self.loop.run_in_executor(self.lease_pool, self._allocate, peer.name)
            fut.add_done_callback(lambda _f: self._allocated(peer, data, addr, now))
            return
        try:
            replies = self.registry.handle(peer.name, peer.cert.raw, data, addr, time.time())
        except RemoteProtocolError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            # a flood of queries must not flood the log too: the count is in /status
            (self.log.debug if exc.reason == "query_rate_limited" else self.log.warning)(
                "control_rejected", peer=peer.name, reason=exc.reason, detail=str(exc))
            return
        self._reply(replies)

    @staticmethod
    def _is_register(data: bytes) -> bool:
        try:
            return wire.decode(data)[0] == "register"
        except RemoteProtocolError:
            return False  # the registry counts it

    def _allocate(self, name: str) -> None:
        try:
            self.leases.lease_for(name, time.time())
        except Exception:  # noqa: BLE001 - answered by the registry when it asks again
            pass

    def _allocated(self, peer: Peer, data: bytes, addr: tuple[str, int], now: float) -> None:
        self._allocating.discard(peer.name)
        if self.device.peers.get(peer.name) is peer:  # still the same session
            self._on_message(peer, data, addr, now, allocated=True)
            self._flush()
        # The allocation may have outlasted the session's keys (180 s: etcd slow, or many
        # first leases queued for the workers) and failed: _on_idle skipped this name
        # while it was allocating, and a session without keys is not looked at again by
        # itself, so its slot would stay taken for good. Judge it now.
        current = self.device.peers.get(peer.name)
        if current is not None and current.session.get_timer() is None:
            self._on_idle(current, time.monotonic())

    def _punch(self, pairs: list[tuple[str, NodeRecord]]) -> None:
        """Other lighthouses ask us (through the store, a batch at a time) to punch nodes
        registered here: [(target, asker)], all sent in one flush."""
        now = time.time()
        for target, asker in pairs:
            self._reply(self.registry.punch(target, asker, now))
        self._flush()

    def _relay_member(self, name: str, block: int | None, observed: tuple[str, int] | None) -> None:
        """The registry registered (block, observed) or forgot (None) a node: the C data
        path forwards type-5 packets between registered nodes itself (relay.c), exactly
        when the registry's forwarder would; the rest still comes up to _on_relay."""
        peer = self.device.peers.get(name)
        if peer is not None:
            self.dp.set_relay_member(peer.slot, block, observed)

    def relayed(self) -> int:
        """Packets relayed: by the C data path, and by the registry's forwarder."""
        return self.dp.io_stats()["relayed"] + self.registry.relayed

    def _on_relay(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        try:
            packet, dest = self.registry.relay(data, addr, time.time())
        except RemoteProtocolError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            return
        self._send(packet, dest)

    def _poll_blocklist(self) -> None:
        """The blocklist file, if it changed (every tick, and on SIGHUP): when newer,
        end the revoked nodes' sessions, forget them, and send it to every node online."""
        try:
            raw = self.blocklist_file.read_if_changed()
        except pki.PkiError as exc:
            self.log.warning("blocklist_unreadable", error=str(exc))
            return
        if raw is None or not pki.offer_blocklist(self.revocations, raw, self.blocklist_file.path, self.log,
                                                   self.device.errors):
            return
        self.device.apply_revocations(time.monotonic())
        for name in self.registry.drop_revoked():
            self.log.info("node_revoked", peer=name)
        pieces = self.registry.blocklist_messages()
        for name in self.registry.nodes:
            dest = self.device.peers.get(name)
            for msg in pieces if dest is not None else []:
                self.device.send_message(dest, msg)

    def _tick(self) -> None:
        self.loop.call_later(TICK, self._tick)  # first: an error below must not stop the timer
        now = time.monotonic()
        self._poll_blocklist()
        self.device.handle_timer(now)
        for name in self.registry.expire(time.time()):
            self.log.info("node_offline", peer=name)
            if name in self.device.peers:  # its session slot is free for another node
                self.device.remove_peer(name)

    def status(self) -> dict:
        now = time.time()
        return {"node": self.device.me.cert.name, "network": str(self.config.network),
                "uptime": round(time.monotonic() - self.started, 1),
                "nodes": {n.name: {"subnet": str(n.subnet), "endpoints": [endpoints_policy.text(e) for e in n.endpoints()],
                                   "last_seen": round(now - n.last_seen, 1)} for n in self.registry.nodes.values()},
                "leases": {name: str(s) for name, s in self.leases.all().items()},
                "blocklist": {"serial": bl.serial, "names": sorted(bl.names), "fingerprints": sorted(bl.fingerprints)}
                if (bl := self.revocations.current) else None, "revoked_peers": dict(self.device.revoked),
                "queries": self.registry.queries, "relayed": self.relayed(), "rejected": self.rejected,
                "relay_nodes": sorted(self.registry.relay_nodes),
                "limited": dict(self.registry.limited), "store": self.leases.health(),
                "tcp_relay": self.tcp.status() if self.tcp is not None else None,
                "drops": self.dp.drops(), "io": self.dp.io_stats(), "control_errors": dict(self.device.errors),
                "sessions": self.session_status()}

    def session_status(self) -> dict:
        """The nodes' sessions: held, with keys now, rekeys this lighthouse started (of
        the sessions held), and since the start: handshakes by role, sessions whose keys
        expired with none to replace them, handshakes given up, sessions removed."""
        peers = self.device.peers.values()
        return {"held": len(self.device.peers), "with_keys": sum(p.session.current is not None for p in peers),
                "rekeys_started": sum(p.session.rekeys for p in peers),
                **{k: self.device.session_counts.get(k, 0) for k in (
                    "handshakes_initiator", "handshakes_responder", "sessions_expired", "handshakes_failed",
                    "peers_removed")}}

    def handle_api(self, method: str, url: str, body: bytes) -> tuple[int, str, bytes]:
        if url.split("?")[0] == "/status":
            return control.json_response(self.status())
        if url.split("?")[0] == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition(self.metrics)()
        return control.json_response({"error": "try /status"}, 404)


def open_store(config, me: str) -> Store:  # noqa: ANN001  (LighthouseConfig)
    """The store `config` names, for the lighthouse whose certificate name is `me`."""
    if config.store_backend == "etcd":
        return EtcdStore(list(config.store_endpoints), config.network, me, prefix=config.store_prefix,
                         ttl=config.ttl)
    return LeaseStore(config.database, config.network)
