"""The engine's I/O driver: kernel set-up, the data-path threads, one re-armed timer,
the control API. Everything protocol-shaped lives in Device and PeerSession.

    data path threads --(want keys / control items)--> call_soon_threadsafe -> Device
    Device --(send)--> UDP socket;  Device --(keys)--> DataPath
    timer: call_at(min(device.get_timer(), 1 s)) -> device.handle_timer(now)
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import time

from flatnet.engine import container_names, metrics, pki, podman_labels, resolve
from flatnet.engine.config import Config, check_aes_impl, transport_ciphers
from flatnet.engine.datapath import RELAY_OTHERS, DataPath, aes_gcm_available, aes_gcm_impl, exit_on_failure
from flatnet.engine.device import Device
from flatnet.engine.io import control, dnsserver, egress, netlink, tun, udp
from flatnet.engine.lighthouse_client import LighthouseClient
from flatnet.engine.relay_node import NodeRelay, certificate_problem
from flatnet.engine.proto import endpoint, liveness
from flatnet.engine.proto.dnsanswer import Responder
from flatnet.engine.proto.revocation import Revocations
from flatnet.engine.services import ServiceRegistry
from flatnet.engine.log import Logger

STATS_REFRESH = 1.0  # the timer also wakes this often to read the data path's counters
NAMES_SCAN = 0.25    # the CNI plugin's names files are looked at this often (a removed name: gone in 2 s)
RESOLVE_EVERY = 5.0  # while a lighthouse given by host name does not answer: look the name up again


class Engine:
    def __init__(self, config: Config, log: Logger) -> None:
        self.config = config
        self.log = log
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._failures: list[OSError] = []  # a data-path thread that ended on an error
        self.subnet: ipaddress.IPv4Network | None = None
        self._lease_waiter: asyncio.Future | None = None
        self.lighthouse: LighthouseClient | None = None
        self.dns: dnsserver.DnsServer | None = None
        self.egress = "off"
        self.responder = Responder(config.dns_domain, config.dns_ttl, config.network)
        self.names = container_names.NameScanner(config.cni_data_dir)
        self.remote_names: list[tuple[str, str, str]] = []

    # ---- set-up
    def _load_pki(self):  # noqa: ANN202
        config = self.config
        me = pki.load_identity(config.ca, config.cert, config.key, time.time())
        peers = [(p, pki.load_peer_cert(p.cert, me.ca, time.time())) for p in config.peers]
        lighthouses = [(lh, pki.load_peer_cert(lh.cert, me.ca, time.time())) for lh in config.lighthouses]
        for p, cert in peers + lighthouses:
            if cert.name != p.name:
                raise pki.PkiError(f"{config.path}: {p.name!r} has certificate {p.cert} for {cert.name!r}")
        return me, peers, lighthouses

    def _write_json(self, path: str, doc: object) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)

    def _remembered_peers(self) -> list[str]:
        try:
            with open(os.path.join(self.config.state_dir, "peers.json")) as f:
                return [str(n) for n in json.load(f)][:256]
        except (OSError, ValueError, TypeError):
            return []

    def _remember_peers(self, names: list[str]) -> None:
        self._write_json(os.path.join(self.config.state_dir, "peers.json"), names)  # type: ignore[arg-type]

    def _cached_lease(self) -> ipaddress.IPv4Network | None:
        try:
            with open(self.config.lease_cache) as f:
                subnet = ipaddress.IPv4Network(json.load(f)["subnet"])
            return subnet if subnet.subnet_of(self.config.network) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _apply_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        """Kernel state and the lease file for the CNI plugin, for this host's /24."""
        config = self.config
        self.subnet = subnet
        self.dp.set_local(subnet)  # decrypted packets may go to this lease only
        gateway = subnet.network_address + 1
        # pyroute2's sync API runs its own event loop: call it from a worker thread
        await self.loop.run_in_executor(None, netlink.setup, config.tun_name, config.mtu, config.network, subnet,
                                        config.bridge)
        try:
            await self.loop.run_in_executor(None, egress.apply, config.network, subnet, config.bridge, config.tun_name,
                                            config.masquerade)
            self.egress = "masquerade" if config.masquerade else "forward-only"
        except (egress.EgressError, OSError) as exc:
            self.egress = "failed"
            self.log.error("egress_failed", error=str(exc), effect="containers cannot reach outside the overlay")
        lease = {"subnet": str(subnet), "gateway": str(gateway), "network": str(config.network),
                 "node": self.me.cert.name}
        if config.dns:
            upstream = list(config.dns_upstream) if config.dns_upstream is not None else dnsserver.read_resolv_conf()
            self.dns = dnsserver.DnsServer(self.responder, upstream, self.log, clients=config.network)
            try:
                await self.dns.start(str(gateway), 53)
                # the CNI plugin puts this in its result: Podman writes it into resolv.conf
                lease["dns"] = {"nameservers": [str(gateway)], "search": [config.dns_domain]}
                self.log.info("dns_serving", listen=f"{gateway}:53", domain=config.dns_domain,
                              upstream=",".join(f"{h}:{p}" for h, p in upstream) or "none")
            except OSError as exc:
                self.dns.close()
                self.dns = None
                self.log.error("dns_failed", listen=f"{gateway}:53", error=exc.strerror or str(exc),
                               fix="free port 53 on the bridge address, or set [dns] enabled = false")
        self._write_json(config.lease_file, lease)
        self._write_json(config.lease_cache, lease)

    def _on_lease(self, subnet: ipaddress.IPv4Network) -> None:
        if self._lease_waiter is not None and not self._lease_waiter.done():
            self._lease_waiter.set_result(subnet)
        elif self.subnet is not None and subnet != self.subnet:
            self.log.error("lease_mismatch", using=str(self.subnet), lighthouse_says=str(subnet),
                           fix="restart the engine to take the new lease")

    async def _obtain_subnet(self) -> ipaddress.IPv4Network:
        config = self.config
        if config.subnet is not None:
            return config.subnet
        cached = self._cached_lease()
        try:  # a cached lease lets the host come up while no lighthouse answers
            return await asyncio.wait_for(asyncio.shield(self._lease_waiter), 3.0 if cached else 15.0)
        except asyncio.TimeoutError:
            if cached is None:
                raise OSError(110, "no lease: no lighthouse answered in 15 s and this host has no cached lease "
                              f"({config.lease_cache}); check [[lighthouses]] endpoints and UDP reachability") from None
            self.log.warning("lease_from_cache", subnet=str(cached), reason="no lighthouse answered yet")
            return cached

    def local_endpoints(self) -> list[tuple[str, int]]:
        return self._endpoints

    def _scan_endpoints(self) -> list[tuple[str, int]]:
        """This host's own addresses a peer might reach (IPv6 ones too when the socket is
        dual-stack): no loopback or link-local, no container bridges or veths, no
        overlay addresses. IPv4 first: the lighthouse keeps at most MAX_LOCAL."""
        from pyroute2 import IPRoute
        config = self.config
        skip = ("lo", config.tun_name, config.bridge)
        out = []
        with IPRoute() as ipr:
            names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
            families = (socket.AF_INET, socket.AF_INET6) if self.sock.family == socket.AF_INET6 else (socket.AF_INET,)
            for a in [a for family in families for a in ipr.get_addr(family=family)]:
                name = names.get(a["index"], "")
                ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                if name in skip or name.startswith(("fn-", "veth", "cni", "podman", "docker", "virbr")):
                    continue
                if ip.is_loopback or ip.is_link_local or (ip.version == 4 and ip in config.network):
                    continue
                out.append((str(ip), self.sock.getsockname()[1]))
        return out[:8]

    async def _resolve(self, lh) -> list[tuple[str, int]]:  # noqa: ANN001
        """A lighthouse's endpoints with host names looked up (engine.resolve)."""
        ipv6 = self.sock.family == socket.AF_INET6
        found, errors = await self.loop.run_in_executor(
            None, resolve.endpoints, lh.endpoints, self.config.hosts_file, ipv6)
        for e in errors:
            self.log.warning("lighthouse_unresolved", lighthouse=lh.name, error=e)
        return found

    async def _watch_lighthouse_names(self, lighthouses: list) -> None:
        """Look a lighthouse's host names up again while it does not answer (its
        address may have moved), at most every RESOLVE_EVERY seconds."""
        named = [lh for lh in lighthouses if resolve.has_names(lh.endpoints)]
        while not self._stop.is_set():
            await asyncio.sleep(RESOLVE_EVERY)
            for lh in named:
                peer = self.device.peers.get(lh.name)
                if peer is None or self.lighthouse is None or lh.name in self.lighthouse.registered:
                    continue
                found = await self._resolve(lh)
                if found and found != peer.endpoints:
                    self.log.info("lighthouse_resolved", lighthouse=lh.name,
                                  endpoints=",".join(endpoint.text(e) for e in found))
                    self.device.set_endpoints(peer, found)
                    self.device.connect(peer, time.monotonic())

    def _check_dirs(self) -> None:
        """State and runtime directories must not be writable by others: a local user
        could swap the lease file the CNI plugin trusts, or the service registry."""
        import stat
        for path in (self.config.state_dir, self.config.run_dir):
            os.makedirs(path, mode=0o755, exist_ok=True)
            mode = os.stat(path).st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                raise pki.PkiError(f"{path} is writable by everyone (mode {stat.S_IMODE(mode):04o}); "
                                   f"run: chmod o-w {path}")

    async def run(self) -> None:
        config = self.config
        self.loop = asyncio.get_running_loop()
        self._check_dirs()
        self._lease_waiter = self.loop.create_future()
        self.me, peers, lighthouses = self._load_pki()
        problem = certificate_problem(config.path, config.cert, self.me.cert) if config.relay else None
        if problem:
            raise pki.PkiError(problem)
        # the blocklist: what a lighthouse sent before (kept in state_dir) and the
        # operator's file, polled by the timer
        self.revocations = Revocations(self.me.ca)
        # the transport ciphers offered and accepted (docs/protocol.md 5.2); a change needs a restart
        check_aes_impl(os.environ.get("FLATNET_AES_IMPL"))
        aead, left_out = transport_ciphers(config.cipher, aes_gcm_available())
        if left_out:
            self.log.warning("cipher_fallback", setting=config.cipher, using=aead[0], reason=left_out)
        self.me = dataclasses.replace(self.me, revocations=self.revocations, aead=aead)
        self._blocklist_copy = os.path.join(config.state_dir, "blocklist.bin")
        self._blocklist_files = [pki.BlocklistFile(p) for p in (self._blocklist_copy, config.blocklist) if p]
        self._next_blocklist_poll = 0.0
        self.services = ServiceRegistry(os.path.join(config.state_dir, "services.json"), self.me.cert.name,
                                        config.domain)
        self.tun_fd, vnet, uso = tun.open_tun(config.tun_name, offloads=config.offloads)
        self.sock = udp.open_udp(config.listen_host, config.listen_port, config.socket_buffer)
        self.dp = DataPath(config.network, config.mtu, self.sock.family)
        gso, gro = udp.enable_offloads(self.sock, config.offloads)
        self.dp.set_offloads(vnet, gso, gro)
        self.dp.set_spin(config.spin)
        self.dp.set_moderation(config.moderation_us)
        self.dp.set_tun_uso(uso)
        self.dp.set_compact_cipher(config.compact_cipher)
        self.offloads = {"tun_tso": vnet, "tun_uso": uso, "udp_gso": gso, "udp_gro": gro, "spin": config.spin,
                         "moderation_us": config.moderation_us,
                         "cipher": "compact+libsodium" if self.dp.compact_cipher() else "libsodium",
                         "transport_ciphers": ",".join(self.me.aead), "aes_impl": aes_gcm_impl(),
                         "cipher_long": "openssl" if self.dp.large_cipher() else "libsodium"}
        self.log.info("offloads", requested=config.offloads, **self.offloads)
        self.device = Device(self.me, self.dp, self._send, time.time_ns, self.log, accept_any=bool(lighthouses),
                             dead_after=config.dead_after)
        self._apply_firewall(config)
        self.node_relay: NodeRelay | None = None
        if config.relay:
            self.dp.set_relay_mode(RELAY_OTHERS)
            self.node_relay = NodeRelay(self.device, config.network, self._send)
        self._poll_blocklists(time.monotonic())  # before any peer is added
        for p, cert in peers:
            if self.revocations.reason(cert):
                self.log.error("peer_revoked", peer=p.name, reason=self.revocations.reason(cert),
                               fix=f"give [[peers]] {p.name!r} a new certificate, then reload")
                continue
            self.device.add_peer(cert, p.subnet, list(p.endpoints))
        self._endpoints = await self.loop.run_in_executor(None, self._scan_endpoints)
        self.lighthouse = None
        if lighthouses:
            found = [await self._resolve(lh) for lh, _ in lighthouses]
            lh_peers = [self.device.add_peer(cert, None, eps) for (lh, cert), eps in zip(lighthouses, found)]
            self.device.pinned = {p.name for p in lh_peers}
            self.lighthouse = LighthouseClient(self.device, lh_peers, config.network, self.local_endpoints, self.log,
                                               self._on_lease, self.services, config.gateway_address,
                                               remembered=self._remembered_peers(),
                                               on_peers_changed=self._remember_peers,
                                               on_blocklist=self._take_blocklist,
                                               on_names=self._on_remote_names if config.dns else None,
                                               no_relay={lh.name for lh, _ in lighthouses if not lh.relay},
                                               offer_relay=config.relay,
                                               tcp_ports={lh.name: lh.tcp_port for lh, _ in lighthouses})
            self.tcp_bridges: dict = {}
            self._tcp_failing = False
            self.lighthouse.open_tcp = self._open_tcp
            self.lighthouse.close_tcp = self._close_tcp
        self.metrics = metrics.serve(metrics.EngineCollector(self, config.cni_data_dir), config.metrics_listen)
        self.servers = await control.start(config.control_socket, self.handle_api)
        self.dp.start(self.tun_fd, self.sock.fileno(),
                      lambda slots: self.loop.call_soon_threadsafe(self._on_want, slots),
                      lambda items: self.loop.call_soon_threadsafe(self._on_control, items),
                      exit_on_failure(self.loop, self.log, self._stop, self._failures))
        self.device.start_all(time.monotonic())
        self._arm()
        if any(resolve.has_names(lh.endpoints) for lh, _ in lighthouses):
            self.loop.create_task(self._watch_lighthouse_names([lh for lh, _ in lighthouses]))
        await self._apply_subnet(await self._obtain_subnet())
        self.log.info("engine_started", node=self.me.cert.name, subnet=str(self.subnet),
                      listen=endpoint.text(self.sock.getsockname()[:2]), peers=len(peers),
                      lighthouses=len(lighthouses), tun=config.tun_name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))
        self._check_expiry()
        self._label_services: set[str] = set()
        if config.podman_labels and shutil.which("podman"):
            self.loop.create_task(self._watch_labels())
        if config.dns:
            self.loop.create_task(self._watch_names())
        await self._stop.wait()
        await self.shutdown()
        if self._failures:
            raise self._failures[0]

    async def reload(self) -> None:
        """SIGHUP: read the config again and apply what can change without dropping a
        session: log level, firewall, load moderation, a renewed certificate (same key),
        static peers added, removed or changed. Anything else is reported as needing a
        restart."""
        from flatnet.engine.config import ConfigError, load
        old = self.config
        try:
            new = load(old.path)
            self.config = new
            me, peers, _ = self._load_pki()
        except (ConfigError, pki.PkiError) as exc:
            self.config = old
            self.log.error("reload_failed", error=str(exc), keeping="the running configuration")
            return
        self.log.set_level(new.log_level)
        self.log.set_format(new.log_format)
        if new.blocklist != old.blocklist:  # read at the next poll (within a second)
            self._blocklist_files = [pki.BlocklistFile(p) for p in (self._blocklist_copy, new.blocklist) if p]
        self._apply_firewall(new)
        self.dp.set_moderation(new.moderation_us)  # a value read every pass: safe to change live
        self.offloads["moderation_us"] = new.moderation_us
        self.dp.set_compact_cipher(new.compact_cipher)  # both ciphers give the same bytes: safe live
        self.offloads["cipher"] = "compact+libsodium" if self.dp.compact_cipher() else "libsodium"
        if me.cert.raw != self.me.cert.raw:
            if me.static_private != self.me.static_private:
                self.config = old
                self.log.error("reload_failed", error="the private key changed", fix="restart the engine")
                return
            me = dataclasses.replace(me, revocations=self.revocations, aead=self.me.aead)
            self.me = self.device.me = me
            for peer in self.device.peers.values():
                peer.session.me = me
            self.log.info("certificate_reloaded", not_after=me.cert.not_after)
        wanted = {p.name: (p, cert) for p, cert in peers}
        configured = {p.name for p in old.peers}
        for name in configured - set(wanted):
            if name in self.device.peers:
                self.device.remove_peer(name)
                self.log.info("peer_removed", peer=name)
        for name, (p, cert) in wanted.items():
            peer = self.device.peers.get(name)
            if peer is None:
                if self.revocations.reason(cert):
                    self.log.error("peer_revoked", peer=name, reason=self.revocations.reason(cert))
                    continue
                self.device.add_peer(cert, p.subnet, list(p.endpoints))
                self.device.connect(self.device.peers[name], time.monotonic())
                self.log.info("peer_added", peer=name)
            else:
                self.device.set_subnet(peer, p.subnet)
                self.device.set_endpoints(peer, list(p.endpoints))
        restart = [k for k in ("network", "subnet", "listen_host", "listen_port", "socket_buffer", "tun_name",
                               "bridge", "mtu", "offloads", "spin", "run_dir", "state_dir", "masquerade", "dns",
                               "dns_domain", "dns_upstream", "dns_ttl", "relay", "cipher")
                   if getattr(new, k) != getattr(old, k)]
        if restart:
            self.log.warning("reload_needs_restart", changed=",".join(restart))
        self.log.info("reloaded", config=new.path, log_level=new.log_level, peers=len(wanted))
        self._arm()

    def _apply_firewall(self, c: Config) -> None:
        """Inbound rules into the data path; group names become bits (a peer's bits come
        from the groups of the certificate it presented in its current session's handshake)."""
        names = sorted({g for r in c.firewall_rules for g in r.groups})
        self.device.group_bits = {g: 1 << i for i, g in enumerate(names)}
        protos = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}
        self.dp.set_firewall(c.firewall_default == "allow", [
            (protos[r.proto], r.port_lo, r.port_hi, sum(self.device.group_bits[g] for g in r.groups),
             int(r.cidr.network_address), int(r.cidr.netmask)) for r in c.firewall_rules])
        for peer in self.device.peers.values():
            self.device.apply_groups(peer)
        if c.firewall_rules or c.firewall_default != "allow":
            self.log.info("firewall", default=c.firewall_default, rules=len(c.firewall_rules))

    async def _watch_labels(self) -> None:
        """Every 3 s: publish containers labelled flatnet.publish=NAME:PORT (docs/gateway.md)."""
        reported: set[str] = set()
        while not self._stop.is_set():
            try:
                found = await self.loop.run_in_executor(None, podman_labels.scan)
                wanted, problems = podman_labels.desired(found, self.subnet)
                added, removed = podman_labels.sync(self.services, self.subnet, wanted, self._label_services,
                                                    problems)
                for p in sorted(set(problems) - reported):
                    self.log.warning("label_ignored", problem=p)
                reported = set(problems)
                self.services.label_problems = [{"name": "", "host": "", "source": "podman label", "reason": p}
                                                for p in problems]
                for name in added:
                    self.log.info("service_published", service=name, source="podman label")
                for name in removed:
                    self.log.info("service_unpublished", service=name, source="podman label")
                if (added or removed) and self.lighthouse is not None:
                    self.lighthouse.register(time.monotonic())
            except (OSError, ValueError, KeyError) as exc:
                self.log.debug("label_scan_failed", error=str(exc))
            await asyncio.sleep(3)

    async def _watch_names(self) -> None:
        """The CNI plugin's names files: a change is in this host's answers at once and
        sent to the lighthouses (docs/engine.md, "Names")."""
        while not self._stop.is_set():
            try:
                if self.names.scan(self.subnet):
                    self.log.info("names_changed", names=len(self.names.entries))
                    if self.lighthouse is not None:
                        self.lighthouse.set_local_names(self.names.entries)
                self._refresh_names()
            except (OSError, ValueError) as exc:
                self.log.debug("names_scan_failed", error=str(exc))
            await asyncio.sleep(NAMES_SCAN)

    def _on_remote_names(self, entries: list[tuple[str, str, str]]) -> None:
        self.remote_names = entries
        self._refresh_names()

    def _refresh_names(self) -> None:
        services = self.services.catalog(self.config.gateway_address)
        self.responder.set_table(container_names.build_table(self.config.dns_domain, self.names.entries,
                                                             self.remote_names, services))

    def _check_expiry(self) -> None:
        """Warn ahead of time (30 days, then daily) before this node's certificate expires."""
        days = (self.me.cert.not_after - time.time()) / 86400
        if days < 30:
            self.log.warning("certificate_expiring", days_left=round(days, 1), not_after=self.me.cert.not_after,
                             fix="flatnet cert renew, then systemctl reload flatnet-engine")
        self.loop.call_later(86400, self._check_expiry)

    # ---- the TCP relay (engine.io.tcp_relay; when to use it: LighthouseClient)
    def _open_tcp(self, name: str, server: tuple[str, int]) -> None:
        self.loop.create_task(self._tcp_connect(name, server))

    async def _tcp_connect(self, name: str, server: tuple[str, int]) -> None:
        from flatnet.engine.io import tcp_relay
        label = f"{server[0]}:{server[1]}"
        try:
            bridge = await tcp_relay.connect(server, tcp_relay.loopback_of(self.config.listen_host,
                                                                         self.sock.getsockname()[1]),
                                             lambda b, why: self._tcp_gone(name, b, why))
        except OSError as exc:
            # said once per outage (a lighthouse that is down refuses TCP too; tried every 5 s)
            (self.log.debug if self._tcp_failing else self.log.warning)(
                "tcp_relay_failed", lighthouse=name, relay=label, error=str(exc))
            self._tcp_failing = True
            self.lighthouse.tcp_closed(name, str(exc), time.monotonic())
            self._arm()
            return
        self.tcp_bridges[name] = bridge
        self._tcp_failing = False
        self.log.info("tcp_relay_up", lighthouse=name, relay=label)
        self.lighthouse.tcp_up(name, bridge.addr, label, time.monotonic())
        self._arm()

    def _tcp_gone(self, name: str, bridge, why: str) -> None:  # noqa: ANN001
        if self.tcp_bridges.get(name) is bridge:
            del self.tcp_bridges[name]
        self.log.info("tcp_relay_closed", lighthouse=name, reason=why, frames_in=bridge.frames_in,
                      frames_out=bridge.frames_out, dropped=bridge.dropped)
        if not self._stop.is_set():
            self.lighthouse.tcp_closed(name, why, time.monotonic())
            self._arm()

    def _close_tcp(self, name: str) -> None:
        bridge = self.tcp_bridges.get(name)
        if bridge is not None:
            bridge.close("UDP works again")

    async def shutdown(self) -> None:
        self.log.info("engine_stopping")
        for bridge in list(getattr(self, "tcp_bridges", {}).values()):
            bridge.close("engine stopping")
        if self._timer:
            self._timer.cancel()
        self.dp.stop()
        if self.dns is not None:
            self.dns.close()
        for s in self.servers:
            s.close()
        self.sock.close()
        os.close(self.tun_fd)  # the TUN is persistent: routes stay for the next start

    # ---- events from the data path threads
    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(packet, udp.to_socket(self.sock, addr))
        except OSError as exc:
            self.log.debug("send_failed", to=endpoint.text(addr), error=exc.strerror)

    def _on_want(self, slots: list[int]) -> None:
        self.device.on_want(slots, time.monotonic())
        self._arm()

    def _on_control(self, items) -> None:  # noqa: ANN001
        self.device.on_control(items, time.monotonic())
        self._arm()

    # ---- the one timer
    def _arm(self) -> None:
        if self._timer:
            self._timer.cancel()
        now = time.monotonic()
        deadlines = [t for t in (self.device.get_timer(),
                                 self.lighthouse.get_timer() if self.lighthouse else None) if t is not None]
        deadline = min(deadlines) if deadlines else None
        at = min(deadline if deadline is not None else now + STATS_REFRESH, now + STATS_REFRESH)
        self._timer = self.loop.call_at(self.loop.time() + max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        now = time.monotonic()
        self._poll_blocklists(now)
        self.device.handle_timer(now)
        if self.lighthouse is not None:
            self.lighthouse.handle_timer(now)
        self._arm()

    # ---- revocation
    def _poll_blocklists(self, now: float) -> None:
        """Once a second: the blocklist files, if they changed (docs/operations.md)."""
        if now < self._next_blocklist_poll:
            return
        self._next_blocklist_poll = now + STATS_REFRESH
        for f in self._blocklist_files:
            try:
                raw = f.read_if_changed()
            except pki.PkiError as exc:
                self.log.warning("blocklist_unreadable", error=str(exc))
                continue
            if raw is not None:
                self._take_blocklist(raw, f.path)

    def _take_blocklist(self, raw: bytes, source: str) -> None:
        """A blocklist from a file or a lighthouse: if newer, keep a copy (it holds across
        a restart while no lighthouse answers) and end the sessions it revokes."""
        if not pki.offer_blocklist(self.revocations, raw, source, self.log, self.device.errors):
            return
        if source != self._blocklist_copy:
            try:
                pki.save_blocklist(self._blocklist_copy, raw)
            except OSError as exc:
                self.log.warning("blocklist_not_saved", path=self._blocklist_copy, error=exc.strerror)
        self.device.apply_revocations(time.monotonic())

    # ---- control API
    def status(self) -> dict:
        config = self.config
        return {"node": self.me.cert.name, "subnet": str(self.subnet), "network": str(config.network),
                "listen_port": self.sock.getsockname()[1], "tun": config.tun_name, "bridge": config.bridge,
                "uptime": round(time.monotonic() - self.started, 1), "peers": len(self.device.peers),
                "peers_up": sum(1 for p in self.device.peers.values() if p.session.current is not None),
                "peers_unreachable": sorted(p.name for p in self.device.peers.values()
                                            if p.live.state is liveness.PathState.UNREACHABLE),
                "drops": self.dp.drops(), "control_errors": dict(self.device.errors),
                "offloads": self.offloads, "io": self.dp.io_stats(),
                "lighthouses": {name: ("registered" if name in self.lighthouse.registered else "unregistered")
                                for name in self.lighthouse.lighthouses} if self.lighthouse else {},
                "observed_endpoint": list(self.lighthouse.observed) if self.lighthouse and self.lighthouse.observed
                else None,
                "blocklist": {"serial": bl.serial, "issued_at": bl.issued_at, "names": sorted(bl.names),
                              "fingerprints": sorted(bl.fingerprints)} if (bl := self.revocations.current) else None,
                "revoked_peers": dict(self.device.revoked),
                "cert_fingerprint": self.me.cert.fingerprint,
                "cert_expires": self.me.cert.not_after,
                "cert_expires_in_days": round((self.me.cert.not_after - time.time()) / 86400, 1),
                "log_level": self.config.log_level,
                "egress": self.egress,
                "relay": self.node_relay.status() if self.node_relay is not None else None,
                "tcp_relay": {name: {"frames_in": b.frames_in, "frames_out": b.frames_out, "dropped": b.dropped}
                              for name, b in getattr(self, "tcp_bridges", {}).items()},
                "dns": {"listening": self.dns is not None, "domain": self.config.dns_domain,
                        "names": len(self.responder.table), "local_names": len(self.names.entries),
                        "skipped_names": self.names.skipped, **self.responder.counters,
                        **(self.dns.counters if self.dns else {})}}

    def handle_api(self, method: str, url: str, body: bytes) -> tuple[int, str, bytes]:
        path = url.split("?")[0]
        if method == "GET" and path == "/status":
            return control.json_response(self.status())
        if method == "GET" and path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition(self.metrics)()
        if method == "GET" and path == "/peers":
            return control.json_response(self.device.peer_table(time.monotonic()))
        if method == "GET" and path == "/names":
            return control.json_response(self.responder.table)
        if method == "GET" and path == "/services":
            return control.json_response(self.services.catalog(self.config.gateway_address))
        if method == "GET" and path == "/services/rejected":
            return control.json_response(self.services.rejected())
        if method == "GET" and path == "/routes":
            return control.json_response(self.device.mark_unreachable(
                self.services.routes(self.config.gateway_address)))
        if method == "POST" and path == "/services":
            try:
                req = json.loads(body or b"{}")
                entry = self.services.publish(self.subnet, req.get("name", ""), req.get("addr", ""), req.get("port"),
                                              req.get("host", ""), req.get("prefix", "/"))
            except (ValueError, AttributeError) as exc:
                return control.json_response({"error": str(exc)}, 400)
            self.log.info("service_published", service=entry["name"], addr=f"{entry['addr']}:{entry['port']}")
            if self.lighthouse is not None:
                self.lighthouse.register(time.monotonic())  # tell the network now, not at the next renewal
            return control.json_response(entry)
        if method == "DELETE" and path.startswith("/services/"):
            name = path.rsplit("/", 1)[1]
            if not self.services.unpublish(name):
                return control.json_response({"error": f"no service {name!r} is published on this host"}, 404)
            self.log.info("service_unpublished", service=name)
            if self.lighthouse is not None:
                self.lighthouse.register(time.monotonic())
            return control.json_response({"unpublished": name})
        return control.json_response({"error": f"no such endpoint {method} {path}; try GET /status, /peers, "
                                               "/services, /services/rejected, /routes, POST /services, "
                                               "DELETE /services/NAME, GET /names"}, 404)
