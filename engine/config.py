"""Engine configuration: TOML, validated once at start into frozen dataclasses.

Every error names the file and the key, says what is wrong and what is accepted.
"""
from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from typing import Callable

from flatnet.engine.proto import endpoint
from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA
from flatnet.engine.proto.confparse import type_problem


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class PeerConfig:
    name: str
    cert: str
    endpoints: tuple[tuple[str, int], ...]
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class FirewallRule:
    proto: str                         # any, tcp, udp, icmp
    port_lo: int
    port_hi: int
    groups: tuple[str, ...]
    cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class LighthouseConfig:
    name: str
    cert: str
    endpoints: tuple[tuple[str, int], ...]
    relay: bool = True  # may relay through this lighthouse (when its lease offers it)
    tcp_port: int = 443  # its TCP relay, used when no UDP gets through (0: never)


@dataclass(frozen=True)
class Config:
    path: str
    ca: str
    cert: str
    key: str
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network | None
    listen_host: str = "::"
    listen_port: int = 4787
    tun_name: str = "flatnet0"
    mtu: int = 1420
    bridge: str = "flatnet-br0"
    run_dir: str = "/run/flatnet"
    state_dir: str = "/var/lib/flatnet"
    socket_buffer: int = 8 * 1024 * 1024
    offloads: bool = True
    spin: bool = True
    moderation_us: int = 100
    compact_cipher: bool = True
    cipher: str = "auto"     # [tun] cipher: the transport cipher offered to peers (transport_ciphers)
    log_level: str = "info"
    log_format: str = "text"
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)
    lighthouses: tuple[LighthouseConfig, ...] = field(default_factory=tuple)
    gateway_address: tuple[str, int] | None = None
    domain: str = "flatnet.lan"
    podman_labels: bool = True
    metrics_listen: tuple[str, int] | None = None
    cni_data_dir: str = "/var/lib/flatnet/ipam"
    hosts_file: str = ""  # /etc/hosts-style names for lighthouse endpoints, read before the system resolver
    firewall_default: str = "allow"
    firewall_rules: tuple[FirewallRule, ...] = field(default_factory=tuple)
    dead_after: float = 3.0            # [liveness]: a path silent this long while in use is unreachable
    blocklist: str = ""  # a CA-signed blocklist file to enforce (besides what lighthouses send)
    masquerade: bool = True  # containers reach outside the overlay through the host's uplink
    dns: bool = True         # answer DNS on the bridge gateway address
    dns_domain: str = "flatnet"
    dns_upstream: tuple[tuple[str, int], ...] | None = None  # None: the host's /etc/resolv.conf
    dns_ttl: int = 5
    relay: bool = False      # [relay] enabled: forward type-5 packets for other nodes (needs the group "relay")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.run_dir, "engine.sock")

    @property
    def lease_file(self) -> str:
        return os.path.join(self.run_dir, "lease.json")

    @property
    def lease_cache(self) -> str:
        return os.path.join(self.state_dir, "lease.json")


CIPHER_SETTINGS = ("auto", AEAD_CHACHA, AEAD_AES)


def transport_ciphers(setting: str, aes_available: bool) -> tuple[tuple[str, ...], str | None]:
    """[tun] cipher -> the ciphers this node offers and accepts, preferred first
    (handshake.Identity.aead), and why AES-256-GCM is left out (None: it is not, or it
    was not wanted). auto: AES-256-GCM first where this CPU has it, ChaCha20-Poly1305
    always; a cipher named: that one only, so a peer without it is refused
    (cipher_mismatch), never silently served the other."""
    if setting == AEAD_CHACHA:
        return (AEAD_CHACHA,), None
    if setting == AEAD_AES:
        if not aes_available:
            raise ConfigError(f"[tun] cipher = {AEAD_AES!r}, but this host cannot offer it (the CPU lacks "
                              "AES-NI or PCLMULQDQ, OPENSSL_ia32cap hides them, or OpenSSL lacks AES-256-GCM or failed its "
                              "self-test); use \"auto\"")
        return (AEAD_AES,), None
    if aes_available:
        return (AEAD_AES, AEAD_CHACHA), None
    return (AEAD_CHACHA,), ("no AES-NI/PCLMULQDQ on this CPU (or OPENSSL_ia32cap hides them), or OpenSSL lacks AES-256-GCM "
                           "or failed its self-test")


AES_IMPL_CHOICES = ("auto", "openssl")


def check_aes_impl(value: str | None) -> None:
    """FLATNET_AES_IMPL, which the C data path reads once (aead_aes.c): unset, empty or
    "auto" (Flatnet's VAES code where the CPU has it), or "openssl". The C side keeps
    OpenSSL's code for any other value; the engine refuses to start with one, so a typo
    is seen, not silently taken for a choice."""
    if value and value.lower() not in AES_IMPL_CHOICES:
        raise ConfigError(f"FLATNET_AES_IMPL={value!r} in the environment: expected \"auto\" (the default) or "
                          "\"openssl\"")


_KNOWN = {
    "pki": {"ca", "cert", "key", "blocklist"},
    "network": {"cidr", "subnet", "masquerade"},
    "dns": {"enabled", "domain", "upstream", "ttl"},
    "listen": {"host", "port", "socket_buffer"},
    "tun": {"name", "mtu", "offloads", "spin", "moderation_us", "compact_cipher", "cipher"},
    "bridge": {"name"},
    "paths": {"run_dir", "state_dir"},
    "log": {"level", "format"},
    "gateway": {"lan_address", "domain", "podman_labels"},
    "metrics": {"listen", "cni_data_dir"},
    "firewall": {"default", "inbound"},
    "liveness": {"dead_after"},
    "peers": None,
    "lighthouses": None,
    "resolve": {"hosts"},
    "relay": {"enabled"},
}


def _ifname(value: object, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 15 or "/" in value or " " in value:
        raise ConfigError(f"{where}: {value!r} is not an interface name (1-15 characters)")
    return value


def _endpoint(value: object, where: str, names: bool = False) -> tuple[str, int]:
    """IP:PORT or [IPV6]:PORT (engine.proto.endpoint.parse); names: HOST:PORT too."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a string \"HOST:PORT\"")
    try:
        return endpoint.parse(value, names)
    except endpoint.EndpointError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def listen_host(value: str, where: str) -> str:
    """An address to listen on: "::" (dual-stack, the default), "0.0.0.0" or one address."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address (\"::\" listens on IPv6 and IPv4)") from None


def read_toml(text: str, path: str, known: dict[str, set[str] | None]) -> dict:
    """The TOML document, with every section and key checked against `known` (None:
    an array of tables checked by the caller); errors name the file and the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for table, body in doc.items():
        if table not in known:
            raise ConfigError(f"{path}: {table}: unknown section; expected one of {', '.join(sorted(known))}")
        allowed = known[table]
        if allowed is not None:
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: {table}: must be a table")
            for key in body:
                if key not in allowed:
                    raise ConfigError(f"{path}: {table}.{key}: unknown key; expected one of "
                                      f"{', '.join(sorted(allowed))}")
    return doc


def read_file(path: str, parse_text: "Callable[[str, str], object]") -> object:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_text(text, path)


class _Doc:
    """The parsed TOML of one file, read key by key: every error names the file and key."""

    def __init__(self, text: str, path: str) -> None:
        self.doc = read_toml(text, path, _KNOWN)
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}: {key}"

    def get(self, table: str, key: str, kind: type, default: object = None, required: bool = False):  # noqa: ANN201
        value = self.doc.get(table, {}).get(key, default)
        if value is None:
            if required:
                raise ConfigError(f"{self.where(table + '.' + key)}: missing")
            return None
        problem = type_problem(value, kind)
        if problem:
            raise ConfigError(f"{self.where(table + '.' + key)}: {problem}")
        return value

    def net(self, table: str, key: str, value: object) -> ipaddress.IPv4Network:
        if not isinstance(value, str):  # ipaddress takes an int too: 5 would be 0.0.0.5/32
            raise ConfigError(f"{self.where(table + '.' + key)}: {type_problem(value, str)}")
        try:
            return ipaddress.IPv4Network(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.where(table + '.' + key)}: {value!r} is not an IPv4 CIDR ({exc})") from None


def _lighthouses(d: _Doc) -> list[LighthouseConfig]:
    """[[lighthouses]]"""
    where = d.where
    lighthouses = []
    raw_lh = d.doc.get("lighthouses", [])
    if not isinstance(raw_lh, list) or not all(isinstance(lh, dict) for lh in raw_lh):
        raise ConfigError(f"{where('lighthouses')}: use [[lighthouses]] tables")
    for i, lh in enumerate(raw_lh):
        w = f"lighthouses[{i}]"
        unknown = set(lh) - {"name", "cert", "endpoints", "relay", "tcp_port"}
        if unknown:
            raise ConfigError(f"{where(w)}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("name", "cert", "endpoints"):
            if key not in lh:
                raise ConfigError(f"{where(w + '.' + key)}: missing")
            if key != "endpoints" and not isinstance(lh[key], str):
                raise ConfigError(f"{where(w + '.' + key)}: {type_problem(lh[key], str)}")
        if not isinstance(lh["endpoints"], list) or not lh["endpoints"]:
            raise ConfigError(f"{where(w + '.endpoints')}: a non-empty list of \"IP:PORT\"")
        tcp_port = lh.get("tcp_port", 443)
        if type(tcp_port) is not int or not 0 <= tcp_port <= 65535:
            raise ConfigError(f"{where(w + '.tcp_port')}: expected 0 (never) or a port 1-65535, got {tcp_port!r}")
        if not isinstance(lh.get("relay", True), bool):
            raise ConfigError(f"{where(w + '.relay')}: expected true or false, got {lh['relay']!r}")
        lighthouses.append(LighthouseConfig(str(lh["name"]), str(lh["cert"]),
                                            tuple(_endpoint(e, where(f"{w}.endpoints"), names=True)
                                                  for e in lh["endpoints"]),
                                            relay=lh.get("relay", True), tcp_port=tcp_port))
    return lighthouses


def _peers(d: _Doc, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network | None) -> list[PeerConfig]:
    """[[peers]]: configured peers, each with a /24 (or larger) of the network not ours."""
    where = d.where
    peers = []
    raw_peers = d.doc.get("peers", [])
    if not isinstance(raw_peers, list) or not all(isinstance(p, dict) for p in raw_peers):
        raise ConfigError(f"{where('peers')}: use [[peers]] tables")
    names = set()
    for i, p in enumerate(raw_peers):
        w = f"peers[{i}]"
        unknown = set(p) - {"name", "cert", "endpoints", "subnet"}
        if unknown:
            raise ConfigError(f"{where(w)}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("name", "cert", "endpoints", "subnet"):
            if key not in p:
                raise ConfigError(f"{where(w + '.' + key)}: missing")
            if key in ("name", "cert") and not isinstance(p[key], str):
                raise ConfigError(f"{where(w + '.' + key)}: {type_problem(p[key], str)}")
        if not isinstance(p["endpoints"], list) or not p["endpoints"]:
            raise ConfigError(f"{where(w + '.endpoints')}: a non-empty list of \"IP:PORT\"")
        psub = d.net(w, "subnet", p["subnet"])
        if not psub.subnet_of(network) or psub.prefixlen > 24:
            raise ConfigError(f"{where(w + '.subnet')}: {psub} must be a /24 (or larger) inside {network}")
        if subnet is not None and psub.overlaps(subnet):
            raise ConfigError(f"{where(w + '.subnet')}: {psub} overlaps this host's subnet {subnet}")
        if p["name"] in names:
            raise ConfigError(f"{where(w + '.name')}: duplicate peer {p['name']!r}")
        names.add(p["name"])
        peers.append(PeerConfig(str(p["name"]), str(p["cert"]),
                                tuple(_endpoint(e, where(f"{w}.endpoints")) for e in p["endpoints"]), psub))
    return peers


def _firewall(d: _Doc) -> tuple[str, list[FirewallRule]]:
    """[firewall]: the default and the [[firewall.inbound]] rules."""
    where = d.where
    fw = d.doc.get("firewall", {})
    fw_default = fw.get("default", "allow")
    if fw_default not in ("allow", "deny"):
        raise ConfigError(f"{where('firewall.default')}: {fw_default!r}; expected \"allow\" or \"deny\"")
    rules = []
    if not isinstance(fw.get("inbound", []), list):
        raise ConfigError(f"{where('firewall.inbound')}: use [[firewall.inbound]] tables")
    for i, r in enumerate(fw.get("inbound", [])):
        w = f"firewall.inbound[{i}]"
        if not isinstance(r, dict) or set(r) - {"proto", "port", "groups", "cidr"}:
            raise ConfigError(f"{where(w)}: keys are proto, port, groups, cidr")
        proto = r.get("proto", "any")
        if proto not in ("any", "tcp", "udp", "icmp"):
            raise ConfigError(f"{where(w + '.proto')}: {proto!r}; expected any, tcp, udp or icmp")
        ports = str(r.get("port", "any"))
        if ports == "any":
            lo, hi = 0, 65535
        else:
            a, _, b = ports.partition("-")
            if not a.isdigit() or (b and not b.isdigit()) or not 0 < int(a) <= int(b or a) <= 65535:
                raise ConfigError(f"{where(w + '.port')}: {ports!r}; expected any, 80 or 8000-8100")
            lo, hi = int(a), int(b or a)
        groups = r.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"{where(w + '.groups')}: a list of group names")
        rules.append(FirewallRule(proto, lo, hi, tuple(groups), d.net(w, "cidr", r.get("cidr", "0.0.0.0/0"))))
    if len({g for r in rules for g in r.groups}) > 64:
        raise ConfigError(f"{where('firewall.inbound')}: at most 64 different groups")
    return fw_default, rules


def _dns(d: _Doc) -> tuple[str, tuple[tuple[str, int], ...] | None, int]:
    """[dns]: the domain, the upstream resolvers (None: resolv.conf's), the TTL."""
    where, get = d.where, d.get
    dns_domain = get("dns", "domain", str, "flatnet").lower().rstrip(".")
    from flatnet.engine.proto import names as name_rule
    problem = name_rule.host_problem(dns_domain)
    if problem:
        raise ConfigError(f"{where('dns.domain')}: {dns_domain!r}: {problem}")
    upstream = get("dns", "upstream", list, None)
    if upstream is not None:
        upstream = tuple(_endpoint(u if ":" in str(u) else f"{u}:53", where("dns.upstream")) for u in upstream)
        if len(upstream) > 3:
            raise ConfigError(f"{where('dns.upstream')}: at most 3 resolvers")
    dns_ttl = get("dns", "ttl", int, 5)
    if not 0 <= dns_ttl <= 3600:
        raise ConfigError(f"{where('dns.ttl')}: {dns_ttl} is outside 0..3600 (seconds)")
    return dns_domain, upstream, dns_ttl


def parse(text: str, path: str = "<config>") -> Config:
    d = _Doc(text, path)
    doc, where, get, net = d.doc, d.where, d.get, d.net
    network = net("network", "cidr", get("network", "cidr", str, "10.87.0.0/16"))
    if not 8 <= network.prefixlen <= 24:
        raise ConfigError(f"{where('network.cidr')}: prefix must be /8 to /24, got /{network.prefixlen}")
    lighthouses = _lighthouses(d)
    raw_subnet = get("network", "subnet", str, required=not lighthouses)
    subnet = None
    if raw_subnet is not None:
        subnet = net("network", "subnet", raw_subnet)
        if subnet.prefixlen != 24 or not subnet.subnet_of(network):
            raise ConfigError(f"{where('network.subnet')}: {subnet} must be a /24 inside {network}")
    mtu = get("tun", "mtu", int, 1420)
    if not 576 <= mtu <= 9000:
        raise ConfigError(f"{where('tun.mtu')}: {mtu} is outside 576..9000")
    moderation = get("tun", "moderation_us", int, 100)
    if not 0 <= moderation <= 10000:
        raise ConfigError(f"{where('tun.moderation_us')}: {moderation} is outside 0..10000 (microseconds; 0 = off)")
    port = get("listen", "port", int, 4787)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where('listen.port')}: {port} is not 0-65535")
    dead_after = doc.get("liveness", {}).get("dead_after", 3.0)
    if isinstance(dead_after, bool) or not isinstance(dead_after, (int, float)) or not 1 <= dead_after <= 60:
        raise ConfigError(f"{where('liveness.dead_after')}: {dead_after!r}; expected seconds, 1 to 60")
    level = get("log", "level", str, "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where('log.level')}: {level!r}; expected debug, info, warning or error")
    log_format = get("log", "format", str, "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"{where('log.format')}: {log_format!r}; expected text or json")
    cipher = get("tun", "cipher", str, "auto")
    if cipher not in CIPHER_SETTINGS:
        raise ConfigError(f"{where('tun.cipher')}: {cipher!r}; expected {', '.join(CIPHER_SETTINGS)}")

    peers = _peers(d, network, subnet)
    fw_default, rules = _firewall(d)
    dns_domain, upstream, dns_ttl = _dns(d)

    return Config(
        path=path, dead_after=float(dead_after),
        masquerade=get("network", "masquerade", bool, True), relay=get("relay", "enabled", bool, False),
        dns=get("dns", "enabled", bool, True), dns_domain=dns_domain, dns_upstream=upstream, dns_ttl=dns_ttl,
        firewall_default=fw_default, firewall_rules=tuple(rules),
        ca=get("pki", "ca", str, "/etc/flatnet/pki/ca.crt"),
        cert=get("pki", "cert", str, "/etc/flatnet/pki/host.crt"),
        key=get("pki", "key", str, "/etc/flatnet/pki/host.key"),
        blocklist=get("pki", "blocklist", str, ""),
        network=network, subnet=subnet,
        listen_host=listen_host(get("listen", "host", str, "::"), where("listen.host")), listen_port=port,
        socket_buffer=get("listen", "socket_buffer", int, 8 * 1024 * 1024),
        tun_name=_ifname(get("tun", "name", str, "flatnet0"), where("tun.name")), mtu=mtu,
        offloads=get("tun", "offloads", bool, True), spin=get("tun", "spin", bool, True),
        moderation_us=moderation, compact_cipher=get("tun", "compact_cipher", bool, True),
        cipher=cipher,
        bridge=_ifname(get("bridge", "name", str, "flatnet-br0"), where("bridge.name")),
        run_dir=get("paths", "run_dir", str, "/run/flatnet"),
        state_dir=get("paths", "state_dir", str, "/var/lib/flatnet"),
        log_level=level, log_format=log_format, peers=tuple(peers), lighthouses=tuple(lighthouses),
        gateway_address=_endpoint(doc["gateway"]["lan_address"], where("gateway.lan_address"))
        if doc.get("gateway", {}).get("lan_address") else None,
        domain=get("gateway", "domain", str, "flatnet.lan"),
        podman_labels=get("gateway", "podman_labels", bool, True),
        metrics_listen=_endpoint(doc["metrics"]["listen"], where("metrics.listen"))
        if doc.get("metrics", {}).get("listen") else None,
        cni_data_dir=get("metrics", "cni_data_dir", str, "/var/lib/flatnet/ipam"),
        hosts_file=get("resolve", "hosts", str, ""),
    )


def load(path: str) -> Config:
    return read_file(path, parse)  # type: ignore[return-value]
