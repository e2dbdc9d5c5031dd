"""Lighthouse configuration (TOML), validated at start; errors name the file and key."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from engine.confparse import type_problem
from engine.config import ConfigError, _endpoint, listen_host, read_file, read_toml

_KNOWN = {"pki": {"ca", "cert", "key", "blocklist"}, "network": {"cidr"}, "listen": {"host", "port"},
          "paths": {"state_dir", "run_dir"}, "log": {"level", "format"}, "registry": {"ttl"},
          "metrics": {"listen"}, "relay": {"enabled", "tcp_port"}}


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
    return LighthouseConfig(
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
