"""Parse and validate the network configuration (pure: bytes in, NetConf out).

Rules: every check happens here, before the plugin touches the system, and each
failure names the key, the bad value and what would be accepted.
"""
from __future__ import annotations

from flatnet.cni import jsonlite as json

from flatnet.cni.errors import (CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG,
                        NO_LEASE)
from flatnet.cni.ipv4 import Subnet, format_ip, parse_ip, parse_subnet
from flatnet.engine.proto.confparse import type_problem

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
DEFAULT_BRIDGE = "flatnet-br0"
DEFAULT_LEASE_FILE = "/run/flatnet/lease.json"
DEFAULT_DATA_DIR = "/var/lib/flatnet/ipam"
DEFAULT_MTU = 1420  # overlay MTU: 1500 underlay - IPv4/UDP (28) - Flatnet header+tag (32) - slack
MAX_IFNAME = 15


class NetConf:
    """The validated network configuration (plain class: dataclasses cost ~7 ms to import)."""

    __slots__ = ("cni_version", "name", "bridge", "mtu", "subnet", "gateway", "lease_file",
                 "data_dir", "prev_result", "valid_attachments", "raw")

    def __init__(self, *, cni_version: str, name: str, bridge: str = DEFAULT_BRIDGE,
                 mtu: int = DEFAULT_MTU, subnet: Subnet | None = None, gateway: int | None = None,
                 lease_file: str = DEFAULT_LEASE_FILE, data_dir: str = DEFAULT_DATA_DIR,
                 prev_result: dict | None = None,
                 valid_attachments: tuple[tuple[str, str], ...] | None = None,
                 raw: dict | None = None) -> None:
        self.cni_version = cni_version
        self.name = name
        self.bridge = bridge
        self.mtu = mtu
        self.subnet = subnet
        self.gateway = gateway
        self.lease_file = lease_file
        self.data_dir = data_dir
        self.prev_result = prev_result
        self.valid_attachments = valid_attachments
        self.raw = raw or {}


def _fail(key: str, msg: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid network config: {key}: {msg}")


def _get(raw: dict, key: str, kind: type, default: object) -> object:
    if key not in raw:
        return default
    value = raw[key]
    problem = type_problem(value, kind)
    if problem:
        raise _fail(key, problem)
    return value


def parse_version(stdin: bytes) -> str:
    """The cniVersion asked for, for answering VERSION and errors ("0.4.0" if absent)."""
    try:
        raw = json.loads(stdin or b"{}")
    except ValueError:
        return "1.0.0"
    version = raw.get("cniVersion") if isinstance(raw, dict) else None
    return version if isinstance(version, str) and version else "1.0.0"


def load_netconf(stdin: bytes) -> NetConf:
    try:
        raw = json.loads(stdin)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"network config is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "network config must be a JSON object")

    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _fail("cniVersion", "missing; use one of " + ", ".join(SUPPORTED_VERSIONS))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION,
                       f"unsupported cniVersion {version!r}; this plugin supports "
                       + ", ".join(SUPPORTED_VERSIONS))
    name = _get(raw, "name", str, None)
    if not name:
        raise _fail("name", "missing network name")
    if raw.get("type") not in (None, "flatnet"):
        raise _fail("type", f"expected \"flatnet\", got {raw.get('type')!r}")

    bridge = _get(raw, "bridge", str, DEFAULT_BRIDGE)
    if not bridge or len(bridge) > MAX_IFNAME or "/" in bridge or " " in bridge:
        raise _fail("bridge", f"{bridge!r} is not a valid interface name (1-15 characters)")
    mtu = _get(raw, "mtu", int, DEFAULT_MTU)
    if not 576 <= mtu <= 9000:
        raise _fail("mtu", f"{mtu} is outside 576..9000")

    subnet = gateway = None
    if "subnet" in raw:
        subnet = parse_subnet(_get(raw, "subnet", str, None), "subnet")
        if subnet.prefix > 30:
            raise _fail("subnet", f"{subnet} is too small; use a /30 or larger")
        gateway = subnet.first_host
        if "gateway" in raw:
            gateway = parse_ip(_get(raw, "gateway", str, None), "gateway")
            if not subnet.contains_host(gateway):
                raise _fail("gateway", f"{raw['gateway']} is outside subnet {subnet}")
    elif "gateway" in raw:
        raise _fail("gateway", "given without subnet; the gateway comes from the lease")

    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _fail("prevResult", "must be an object")

    attachments = None
    valid = raw.get("cni.dev/valid-attachments")
    if valid is not None:
        if not isinstance(valid, list):
            raise _fail("cni.dev/valid-attachments", "must be a list")
        pairs = []
        for item in valid:
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
                raise _fail("cni.dev/valid-attachments", f"bad entry {item!r}")
            pairs.append((item["containerID"], str(item.get("ifname", ""))))
        attachments = tuple(pairs)

    return NetConf(
        cni_version=version, name=name, bridge=bridge, mtu=mtu, subnet=subnet,
        gateway=gateway,
        lease_file=_get(raw, "leaseFile", str, DEFAULT_LEASE_FILE),
        data_dir=_get(raw, "dataDir", str, DEFAULT_DATA_DIR),
        prev_result=prev, valid_attachments=attachments, raw=raw,
    )


def parse_lease(text: str, source: str) -> tuple[Subnet, int]:
    """The engine's lease file: {"subnet": "10.87.N.0/24", "gateway": "10.87.N.1"}."""
    subnet, gateway, _ = parse_lease_dns(text, source)
    return subnet, gateway


def parse_lease_dns(text: str, source: str) -> tuple[Subnet, int, dict | None]:
    """parse_lease, and the lease's `dns` (lease_dns) from the same parse."""
    try:
        raw = json.loads(text)
        subnet = parse_subnet(raw["subnet"], "subnet")
        gateway = parse_ip(raw["gateway"], "gateway") if "gateway" in raw else subnet.first_host
    except (ValueError, KeyError, TypeError, CniError) as exc:
        raise CniError(NO_LEASE, f"lease file {source} is unreadable ({exc}); "
                       "restart flatnet-engine to rewrite it") from None
    if not subnet.contains_host(gateway):
        raise CniError(NO_LEASE, f"lease file {source}: gateway outside {subnet}")
    return subnet, gateway, lease_dns(raw)


MAX_NAMESERVERS, MAX_SEARCH = 3, 6  # what resolv.conf readers (glibc, musl) use at most


def lease_dns(lease: dict) -> dict | None:
    """The `dns` of an engine's lease file: {"nameservers": [1..3 IPv4 addresses],
    "search": [0..6 domain names]}, as the engine writes it while it serves DNS on the
    gateway address. None when absent or malformed: then the runtime keeps its own
    resolv.conf. Strict on purpose: Podman writes these strings into resolv.conf (a
    newline would add a line), and netavark refuses a StatusBlock whose dns_server_ips
    are not IP addresses."""
    from flatnet.engine.proto.names import host_problem
    dns = lease.get("dns")
    if not isinstance(dns, dict):
        return None
    servers, search = dns.get("nameservers"), dns.get("search", [])
    if not isinstance(servers, list) or not isinstance(search, list) or not servers:
        return None
    servers, search = servers[:MAX_NAMESERVERS], search[:MAX_SEARCH]
    if not all(isinstance(s, str) for s in servers) or any(host_problem(d) for d in search):
        return None
    try:  # canonical dotted quads only: inet_aton also takes "10.87.1.1 junk" and octal
        if any(format_ip(parse_ip(s, "dns.nameservers")) != s for s in servers):
            return None
    except CniError:
        return None
    return {"nameservers": servers, "search": [d.lower() for d in search]}
