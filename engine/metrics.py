"""Prometheus metrics for the engine and the lighthouse (prometheus-client).

The values are read when Prometheus scrapes (a custom collector), straight from the C
data path's counters and the control plane's state: nothing is counted per packet in
Python. prometheus-client gives the exposition format and the HTTP server, which we
would otherwise write and test ourselves.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


def cni_counters(data_dir: str) -> dict[tuple[str, str, str], int]:
    """{(network, command, result): count} from the plugin's stats.json files."""
    out: dict[tuple[str, str, str], int] = {}
    try:
        networks = os.listdir(data_dir)
    except OSError:
        return out
    for net in networks:
        try:
            with open(os.path.join(data_dir, net, "stats.json")) as f:
                # the plugin rewrites the file in place under LOCK_EX (flatnet.cni.store.record);
                # held (a few microseconds): skip this network for one scrape, never wait
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                for key, count in json.load(f).items():
                    command, _, result = key.partition(":")
                    out[(net, command, result)] = int(count)
        except (OSError, ValueError, AttributeError):
            continue
    return out


class EngineCollector(Collector):
    def __init__(self, engine, cni_data_dir: str) -> None:  # noqa: ANN001
        self.engine = engine
        self.cni_data_dir = cni_data_dir

    def collect(self) -> Iterator:
        e = self.engine
        now = time.monotonic()
        rows = e.device.peer_table(now)
        labels = ["peer"]
        fams = {
            "tx_bytes": CounterMetricFamily("flatnet_peer_tx_bytes", "Bytes sent to the peer (inner packets)", labels=labels),
            "rx_bytes": CounterMetricFamily("flatnet_peer_rx_bytes", "Bytes received from the peer", labels=labels),
            "tx_packets": CounterMetricFamily("flatnet_peer_tx_packets", "Packets sent to the peer", labels=labels),
            "rx_packets": CounterMetricFamily("flatnet_peer_rx_packets", "Packets received from the peer", labels=labels),
            "rx_dropped": CounterMetricFamily("flatnet_peer_rx_dropped", "Packets from the peer dropped (replay, "
                                              "authentication, source or destination not allowed, "
                                              "firewall)", labels=labels),
            "handshakes": CounterMetricFamily("flatnet_peer_handshakes", "Completed handshakes", labels=labels),
            "rekeys": CounterMetricFamily("flatnet_peer_rekeys", "Rekeys started", labels=labels),
        }
        up = GaugeMetricFamily("flatnet_peer_up", "1 if the session has keys and its path answers", labels=labels)
        reachable = GaugeMetricFamily("flatnet_peer_reachable", "0 while the peer's path is unreachable (it carried "
                                      "traffic, then nothing came back for [liveness] dead_after)", labels=labels)
        downs = CounterMetricFamily("flatnet_peer_unreachable", "Times the peer's path was marked unreachable",
                                    labels=labels)
        path = GaugeMetricFamily("flatnet_peer_path", "The peer's current path (value 1)", labels=["peer", "path"])
        age = GaugeMetricFamily("flatnet_peer_handshake_age_seconds", "Seconds since the last handshake", labels=labels)
        expiry = GaugeMetricFamily("flatnet_peer_cert_expiry_seconds", "Seconds until the peer's certificate expires",
                                   labels=labels)
        for r in rows:
            for key, fam in fams.items():
                fam.add_metric([r["name"]], r[key])
            up.add_metric([r["name"]], 1 if r["state"] == "established" else 0)
            reachable.add_metric([r["name"]], 0 if r["state"] == "unreachable" else 1)
            downs.add_metric([r["name"]], r["times_unreachable"])
            kind = r["path"].split(" ")[0]
            path.add_metric([r["name"], kind], 1)
            if r["handshake_age"] is not None:
                age.add_metric([r["name"]], r["handshake_age"])
            expiry.add_metric([r["name"]], r["cert_expires"] - time.time())
        yield from fams.values()
        yield from (up, reachable, downs, path, age, expiry)
        drops = CounterMetricFamily("flatnet_drops", "Packets dropped by the data path", labels=["reason"])
        for reason, n in e.dp.drops().items():
            drops.add_metric([reason], n)
        yield drops
        io = CounterMetricFamily("flatnet_io", "Data path system calls and units", labels=["counter"])
        for name, n in e.dp.io_stats().items():
            io.add_metric([name], n)
        yield io
        errors = CounterMetricFamily("flatnet_control_errors", "Control packets refused", labels=["reason"])
        for reason, n in e.device.errors.items():
            errors.add_metric([reason], n)
        yield errors
        me = GaugeMetricFamily("flatnet_cert_expiry_seconds", "Seconds until this node's certificate expires",
                               labels=["node"])
        me.add_metric([e.me.cert.name], e.me.cert.not_after - time.time())
        yield me
        yield _blocklist_serial(e.revocations)
        g = GaugeMetricFamily("flatnet_services_published", "Services this host publishes")
        g.add_metric([], len(e.services.local))
        yield g
        cni = CounterMetricFamily("flatnet_cni_operations", "CNI plugin commands on this host",
                                  labels=["network", "command", "result"])
        for (net, command, result), n in sorted(cni_counters(self.cni_data_dir).items()):
            cni.add_metric([net, command, result], n)
        yield cni
        relay = getattr(e, "node_relay", None)
        if relay is not None:  # [relay] enabled: what this host forwarded for others
            c = CounterMetricFamily("flatnet_relayed_packets", "Packets relayed for other nodes")
            c.add_metric([], relay.forwarder.relayed)
            yield c
            refused = CounterMetricFamily("flatnet_relay_refused", "Packets not relayed for other nodes",
                                          labels=["reason"])
            for reason, n in relay.refused.items():
                refused.add_metric([reason], n)
            yield refused


class LighthouseCollector(Collector):
    def __init__(self, lighthouse) -> None:  # noqa: ANN001
        self.lh = lighthouse

    def collect(self) -> Iterator:
        lh = self.lh
        g = GaugeMetricFamily("flatnet_lighthouse_nodes", "Nodes online")
        g.add_metric([], len(lh.registry.nodes))
        yield g
        g = GaugeMetricFamily("flatnet_lighthouse_leases", "Subnet leases held (online or not)")
        g.add_metric([], len(lh.leases.all()))
        yield g
        c = CounterMetricFamily("flatnet_lighthouse_queries", "Peer queries answered")
        c.add_metric([], lh.registry.queries)
        yield c
        c = CounterMetricFamily("flatnet_lighthouse_relayed_packets", "Packets relayed")
        c.add_metric([], lh.relayed())
        yield c
        c = CounterMetricFamily("flatnet_lighthouse_rejected", "Control messages and relay packets refused",
                                labels=["reason"])
        for reason, n in lh.rejected.items():
            c.add_metric([reason], n)
        yield c
        yield _blocklist_serial(lh.revocations)


def _blocklist_serial(revocations) -> GaugeMetricFamily:  # noqa: ANN001
    """Alert when a node's serial lags the lighthouse's: it missed a revocation."""
    g = GaugeMetricFamily("flatnet_blocklist_serial", "Serial of the enforced blocklist (0: none)")
    g.add_metric([], revocations.serial)
    return g


def serve(collector: Collector, listen: tuple[str, int] | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if listen is not None:
        start_http_server(listen[1], addr=listen[0], registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> Callable[[], bytes]:
    from prometheus_client import generate_latest
    return lambda: generate_latest(registry)
