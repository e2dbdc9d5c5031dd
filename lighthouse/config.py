"""Lighthouse configuration (TOML), validated at start; errors name the file and key."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from flatnet.engine.proto.confparse import type_problem
from flatnet.engine.config import ConfigError, _endpoint, listen_host, read_file, read_toml

_KNOWN = {"pki": {"ca", "cert", "key", "blocklist"}, "network": {"cidr"}, "listen": {"host", "port"},
          "paths": {"state_dir", "run_dir"}, "log": {"level", "format"}, "registry": {"ttl", "sessions"},
          "metrics": {"listen"}, "relay": {"enabled", "tcp_port"}, "store": {"backend", "endpoints", "prefix"}}


@dataclass(frozen=True)
class LighthouseConfig:
    path: str
    ca: str
    cert: str
    key: str
    network: ipaddress.IPv4Network
    listen_host: str = "::"
    listen_port: int = 4787
    state_dir: str = "/var/lib/flatnet-lighthouse"
    run_dir: str = "/run/flatnet-lighthouse"
    log_level: str = "info"
    log_format: str = "text"
    ttl: float = 60.0
    metrics_listen: tuple[str, int] | None = None
    blocklist: str = ""  # the CA-signed blocklist to enforce and hand out (default: beside the CA)
    relay: bool = True   # forward type-5 packets between nodes (said in every lease)
    tcp_port: int = 443  # the TCP relay for hosts without UDP (0: off; only with relay)
    sessions: int = 4096                   # Noise sessions the data path holds (one per node online)
    store_backend: str = "sqlite"          # or "etcd" (lighthouse.store)
    store_endpoints: tuple[str, ...] = ()  # etcd members, "host:port" (the client URL's)
    store_prefix: str = "/flatnet/"

    @property
    def database(self) -> str:
        return os.path.join(self.state_dir, "leases.db")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.run_dir, "lighthouse.sock")


def parse(text: str, path: str = "<config>") -> LighthouseConfig:
    doc = read_toml(text, path, _KNOWN)

    def get(table: str, key: str, kind: type | tuple[type, ...], default: object) -> object:
        value = doc.get(table, {}).get(key, default)
        problem = type_problem(value, kind)
        if problem:
            raise ConfigError(f"{path}: {table}.{key}: {problem}")
        return value

    try:
        network = ipaddress.IPv4Network(get("network", "cidr", str, "10.87.0.0/16"))
    except ValueError as exc:
        raise ConfigError(f"{path}: network.cidr: {exc}") from None
    if not 8 <= network.prefixlen <= 23:
        raise ConfigError(f"{path}: network.cidr: prefix must be /8 to /23 (room for several /24 leases)")
    port = get("listen", "port", int, 4787)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: listen.port: {port} is not 1-65535")
    tcp_port = get("relay", "tcp_port", int, 443)
    if not 0 <= tcp_port <= 65535:
        raise ConfigError(f"{path}: relay.tcp_port: {tcp_port} is not 0 (off) or 1-65535")
    level = get("log", "level", str, "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{path}: log.level: {level!r}; expected debug, info, warning or error")
    log_format = get("log", "format", str, "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"{path}: log.format: {log_format!r}; expected text or json")
    ttl = get("registry", "ttl", (int, float), 60)
    if not 5 <= ttl <= 3600:
        raise ConfigError(f"{path}: registry.ttl: {ttl} is outside 5..3600 seconds")
    ca = get("pki", "ca", str, "/etc/flatnet/pki/ca.crt")
    # default: room for every /24 of the network twice (restarted nodes hold a second
    # session until the first expires), at least an engine's 4096
    sessions = get("registry", "sessions", int, min(262_144, max(4096, 2 << (24 - network.prefixlen))))
    if not 16 <= sessions <= 262_144:
        raise ConfigError(f"{path}: registry.sessions: {sessions} is outside 16..262144")
    backend = get("store", "backend", str, "sqlite")
    if backend not in ("sqlite", "etcd"):
        raise ConfigError(f"{path}: store.backend: {backend!r}; expected sqlite or etcd")
    members = get("store", "endpoints", list, [])
    for m in members:
        if not isinstance(m, str):
            raise ConfigError(f"{path}: store.endpoints: {m!r} is not a string like \"10.0.0.5:2379\"")
        _endpoint(m.removeprefix("http://"), f"{path}: store.endpoints")
    if backend == "etcd" and not members:
        raise ConfigError(f"{path}: store.endpoints: backend \"etcd\" needs at least one member, "
                          "e.g. endpoints = [\"10.0.0.5:2379\"]")
    prefix = get("store", "prefix", str, "/flatnet/")
    if not prefix.startswith("/") or len(prefix) > 64:
        raise ConfigError(f"{path}: store.prefix: {prefix!r}; expected a key prefix starting with /, at most 64")
    return LighthouseConfig(
        sessions=sessions, store_backend=backend, store_endpoints=tuple(members), store_prefix=prefix,
        path=path, ca=ca, blocklist=get("pki", "blocklist", str, os.path.join(os.path.dirname(ca), "blocklist.bin")),
        cert=get("pki", "cert", str, "/etc/flatnet/pki/lighthouse.crt"),
        key=get("pki", "key", str, "/etc/flatnet/pki/lighthouse.key"), network=network,
        listen_host=listen_host(get("listen", "host", str, "::"), f"{path}: listen.host"), listen_port=port,
        state_dir=get("paths", "state_dir", str, "/var/lib/flatnet-lighthouse"),
        run_dir=get("paths", "run_dir", str, "/run/flatnet-lighthouse"), log_level=level, log_format=log_format, ttl=float(ttl),
        relay=get("relay", "enabled", bool, True), tcp_port=tcp_port,
        metrics_listen=_endpoint(doc["metrics"]["listen"], f"{path}: metrics.listen")
        if doc.get("metrics", {}).get("listen") else None)


def load(path: str) -> LighthouseConfig:
    return read_file(path, parse)  # type: ignore[return-value]
