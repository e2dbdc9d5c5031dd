"""The engine's I/O driver: kernel set-up, the data-path threads, one re-armed timer,
the control API. Everything protocol-shaped lives in Device and PeerSession.

    data path threads --(want keys / control items)--> call_soon_threadsafe -> Device
    Device --(send)--> UDP socket;  Device --(keys)--> DataPath
    timer: call_at(min(device.get_timer(), 1 s)) -> device.handle_timer(now)
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from engine import pki
from engine.config import Config
from engine.datapath import DataPath
from engine.device import Device
from engine.io import control, netlink, tun, udp
from engine.log import Logger

STATS_REFRESH = 1.0  # the timer also wakes this often to read the data path's counters


class Engine:
    def __init__(self, config: Config, log: Logger) -> None:
        self.config = config
        self.log = log
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()

    # ---- set-up
    def _load_pki(self):  # noqa: ANN202
        c = self.config
        me = pki.load_identity(c.ca, c.cert, c.key, time.time())
        peers = [(p, pki.load_peer_cert(p.cert, me.ca, time.time())) for p in c.peers]
        for p, cert in peers:
            if cert.name != p.name:
                raise pki.PkiError(f"{c.path}: peer {p.name!r} has certificate {p.cert} for {cert.name!r}")
        return me, peers

    def write_lease(self) -> None:
        c = self.config
        os.makedirs(c.run_dir, exist_ok=True)
        tmp = c.lease_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"subnet": str(c.subnet), "gateway": str(c.gateway), "network": str(c.network),
                       "node": self.me.cert.name}, f)
        os.replace(tmp, c.lease_file)

    async def run(self) -> None:
        c = self.config
        self.loop = asyncio.get_running_loop()
        self.me, peers = self._load_pki()
        self.tun_fd, vnet, uso = tun.open_tun(c.tun_name, offloads=c.offloads)
        # pyroute2's sync API runs its own event loop: call it from a worker thread
        await self.loop.run_in_executor(None, netlink.setup, c.tun_name, c.mtu, c.network, c.subnet, c.bridge)
        self.sock = udp.open_udp(c.listen_host, c.listen_port, c.socket_buffer)
        self.dp = DataPath(c.network, c.mtu)
        gso, gro = udp.enable_offloads(self.sock, c.offloads)
        self.dp.set_offloads(vnet, gso, gro)
        self.dp.set_spin(c.spin)
        self.dp.set_tun_uso(uso)
        self.offloads = {"tun_tso": vnet, "tun_uso": uso, "udp_gso": gso, "udp_gro": gro, "spin": c.spin}
        self.log.info("offloads", requested=c.offloads, **self.offloads)
        self.device = Device(self.me, self.dp, self._send, time.time_ns, self.log)
        for p, cert in peers:
            self.device.add_peer(cert, p.subnet, list(p.endpoints))
        self.write_lease()
        self.servers = await control.start(c.control_socket, self.handle_api)
        self.dp.start(self.tun_fd, self.sock.fileno(),
                      lambda slots: self.loop.call_soon_threadsafe(self._on_want, slots),
                      lambda items: self.loop.call_soon_threadsafe(self._on_control, items))
        self.log.info("engine_started", node=self.me.cert.name, subnet=str(c.subnet),
                      listen=f"{c.listen_host}:{self.sock.getsockname()[1]}", peers=len(peers), tun=c.tun_name)
        self.device.start_all(time.monotonic())
        self._arm()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.log.info("engine_stopping")
        if self._timer:
            self._timer.cancel()
        self.dp.stop()
        for s in self.servers:
            s.close()
        self.sock.close()
        os.close(self.tun_fd)  # the TUN is persistent: routes stay for the next start

    # ---- events from the data path threads
    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(packet, addr)
        except OSError as exc:
            self.log.debug("send_failed", to=f"{addr[0]}:{addr[1]}", error=exc.strerror)

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
        deadline = self.device.get_timer()
        at = min(deadline if deadline is not None else now + STATS_REFRESH, now + STATS_REFRESH)
        self._timer = self.loop.call_at(self.loop.time() + max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        self.device.handle_timer(time.monotonic())
        self._arm()

    # ---- control API
    def status(self) -> dict:
        c = self.config
        return {"node": self.me.cert.name, "subnet": str(c.subnet), "network": str(c.network),
                "listen_port": self.sock.getsockname()[1], "tun": c.tun_name, "bridge": c.bridge,
                "uptime": round(time.monotonic() - self.started, 1), "peers": len(self.device.peers),
                "peers_up": sum(1 for p in self.device.peers.values() if p.session.current is not None),
                "drops": self.dp.drops(), "control_errors": dict(self.device.errors),
                "offloads": self.offloads, "io": self.dp.io_stats(),
                "cert_expires": self.me.cert.not_after}

    def handle_api(self, url: str) -> tuple[int, str, bytes]:
        path = url.split("?")[0]
        if path == "/status":
            return control.json_response(self.status())
        if path == "/peers":
            return control.json_response(self.device.peer_table(time.monotonic()))
        return control.json_response({"error": f"no such endpoint {path}; try /status or /peers"}, 404)
