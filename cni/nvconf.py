"""Parse and validate what netavark sends the plugin, and build what it expects back (pure).

netavark's plugin API (its plugin-API.md and src/network/types.rs): `create` gets a
Network object; `setup` and `teardown` get {container_id, container_name, port_mappings,
network, network_options}. Every check happens here, before the plugin touches the
system; each failure names the field, the bad value and what would be accepted. The
network's Flatnet settings travel in its `options` (strings, as Podman stores them).
"""
from __future__ import annotations

from flatnet.cni.conf import DEFAULT_BRIDGE, DEFAULT_DATA_DIR, DEFAULT_LEASE_FILE, DEFAULT_MTU, NetConf
from flatnet.cni.errors import CniError, DECODE_FAILURE, INVALID_CONFIG
from flatnet.cni.ipv4 import Subnet, format_ip, parse_ip, parse_subnet
from flatnet.cni.args import valid_container_id

API_VERSION = "1.0.0"
# options a flatnet network may carry (`podman network create -o KEY=VALUE`)
OPTIONS = ("mtu", "metric", "lease_file", "data_dir", "warm_socket", "subnet_source")  # the last: set by `create`
SOURCE_LEASE, SOURCE_STATIC = "lease", "static"
MAX_ALIASES = 64
DEFAULT_METRIC = 100  # netavark's bridge driver uses 100 too: a second network adds 1 per ethN


def _fail(field: str, msg: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid netavark input: {field}: {msg}")


def _obj(raw: object, field: str) -> dict:
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, f"invalid netavark input: {field} must be a JSON object")
    return raw


def _str(raw: dict, key: str, field: str, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _fail(f"{field}.{key}", f"expected a non-empty string, got {value!r}"[:200])
    return value


def valid_ifname(name: str) -> bool:
    return (0 < len(name) <= 15 and name not in (".", "..") and name.isascii()
            and not any(c in name for c in "/: \t\n\x00"))


def _int_option(options: dict, key: str, default: int, low: int, high: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _fail(f"network.options.{key}", f"{text!r} is not a number in {low}..{high}"[:200])
    return int(text)


def parse_options(network: dict) -> dict:
    options = network.get("options") or {}
    if not isinstance(options, dict):
        raise _fail("network.options", "must be an object of strings")
    for key, value in options.items():
        if key not in OPTIONS:
            raise _fail("network.options", f"unknown option {key!r}"[:200] + "; flatnet accepts "
                        + ", ".join(OPTIONS[:-1]))
        if not isinstance(value, str) or len(value) > 4096:
            raise _fail(f"network.options.{key}", "must be a string of at most 4096 characters")
    if options.get("subnet_source", SOURCE_STATIC) not in (SOURCE_LEASE, SOURCE_STATIC):
        raise _fail("network.options.subnet_source", f"expected {SOURCE_LEASE!r} or {SOURCE_STATIC!r}")
    return options


def parse_subnets(network: dict) -> tuple[Subnet, int] | None:
    """The network's one IPv4 subnet and gateway, or None when it has none yet."""
    subnets = network.get("subnets")
    if not subnets:
        return None
    if not isinstance(subnets, list) or len(subnets) != 1 or not isinstance(subnets[0], dict):
        raise _fail("network.subnets", "a flatnet network has exactly one IPv4 subnet")
    entry = subnets[0]
    subnet = parse_subnet(entry.get("subnet"), "network.subnets[0].subnet")
    if subnet.prefix > 30:
        raise _fail("network.subnets[0].subnet", f"{subnet} is too small; use a /30 or larger")
    gateway = subnet.first_host
    if entry.get("gateway") is not None:
        gateway = parse_ip(entry["gateway"], "network.subnets[0].gateway")
        if not subnet.contains_host(gateway):
            raise _fail("network.subnets[0].gateway", f"{format_ip(gateway)} is outside {subnet}")
    return subnet, gateway


def network_conf(network: object) -> NetConf:
    """The NetConf the shared core works with, from a netavark Network object."""
    network = _obj(network, "network")
    name = _str(network, "name", "network")
    if "/" in name or name in (".", "..") or len(name) > 255:
        raise _fail("network.name", f"{name[:64]!r} cannot be a directory name")
    bridge = _str(network, "network_interface", "network", required=False) or DEFAULT_BRIDGE
    if not valid_ifname(bridge):
        raise _fail("network.network_interface", f"{bridge[:64]!r} is not a valid interface name "
                    "(1-15 characters)")
    if network.get("ipv6_enabled"):
        raise _fail("network.ipv6_enabled", "flatnet networks are IPv4 only")
    options = parse_options(network)
    subnet = gateway = None
    parsed = parse_subnets(network)
    if parsed is not None and options.get("subnet_source", SOURCE_STATIC) == SOURCE_STATIC:
        subnet, gateway = parsed
    return NetConf(cni_version="1.0.0", name=name, bridge=bridge,
                   mtu=_int_option(options, "mtu", DEFAULT_MTU, 576, 9000),
                   subnet=subnet, gateway=gateway,
                   lease_file=options.get("lease_file", DEFAULT_LEASE_FILE),
                   data_dir=options.get("data_dir", DEFAULT_DATA_DIR), raw=network)


def created_network(network: dict, subnet: Subnet, gateway: int, source: str, bridge: str) -> dict:
    """The network as `create` returns it: Podman stores this and allocates from its subnet."""
    out = dict(network)
    out["subnets"] = [{"subnet": str(subnet), "gateway": format_ip(gateway)}]
    out["network_interface"] = bridge
    out["options"] = {**(network.get("options") or {}), "subnet_source": source}
    # netavark's own resolver (aardvark-dns) serves only its bridge driver: setup names
    # the engine's resolver in the StatusBlock instead (docs/podman5.md, "Names (DNS)")
    out["dns_enabled"] = False
    return out


class Attachment:
    """One setup/teardown request, validated."""

    __slots__ = ("container_id", "container_name", "ifname", "ip", "mac", "aliases", "conf",
                 "subnet", "gateway", "metric", "source")

    def __init__(self, **kw: object) -> None:
        for key, value in kw.items():
            setattr(self, key, value)


def parse_mac(text: str) -> bytes:
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                  for p in parts):
        raise _fail("network_options.static_mac", f"{text!r} is not a MAC address like "
                    "02:42:ac:11:00:02"[:200])
    raw = bytes(int(p, 16) for p in parts)
    if raw[0] & 1 or raw == bytes(6):
        raise _fail("network_options.static_mac", f"{text} is a multicast or zero address; a "
                    "container needs a unicast one")
    return raw


def _valid_name(name: object) -> bool:
    """A container name or alias: kept one a line in the store's names/<ip> file."""
    return isinstance(name, str) and len(name) <= 253 and name.isprintable() and " " not in name


def _metric(ifname: str, options: dict) -> int:
    if "metric" in options:
        return _int_option(options, "metric", DEFAULT_METRIC, 1, 1 << 31)
    digits = ""
    for c in reversed(ifname):
        if not c.isdigit():
            break
        digits = c + digits
    return DEFAULT_METRIC + (int(digits[-4:]) if digits else 0)


def parse_exec(body: object, setup: bool) -> Attachment:
    """setup/teardown input: {container_id, container_name, port_mappings, network,
    network_options}."""
    body = _obj(body, "input")
    cid = _str(body, "container_id", "input")
    if not valid_container_id(cid) or len(cid) > 128:
        raise _fail("container_id", f"{cid[:80]!r} must start with a letter or digit and hold only "
                    "letters, digits, '_', '.' and '-' (at most 128)")
    name = body.get("container_name")
    if name is not None and not _valid_name(name):
        raise _fail("container_name", "must be a name of at most 253 printable characters, no spaces")
    conf = network_conf(body.get("network"))
    opts = _obj(body.get("network_options"), "network_options")
    ifname = _str(opts, "interface_name", "network_options")
    if not valid_ifname(ifname):
        raise _fail("network_options.interface_name", f"{ifname[:64]!r} is not a valid interface name")
    aliases = opts.get("aliases") or []
    if (not isinstance(aliases, list) or len(aliases) > MAX_ALIASES
            or not all(_valid_name(a) and a for a in aliases)):
        raise _fail("network_options.aliases", f"must be a list of at most {MAX_ALIASES} names of at most "
                    "253 printable characters, no spaces")
    parsed = parse_subnets(conf.raw)
    ip = mac = None
    if setup:
        if body.get("port_mappings"):
            raise _fail("port_mappings", "flatnet does not publish ports (-p/--publish): reach the "
                        "container at its overlay address, or publish through the Flatnet gateway")
        if parsed is None:
            raise _fail("network.subnets", "the network has no subnet; recreate it with "
                        "`podman network create -d flatnet` so the plugin fills it in")
        ips = opts.get("static_ips") or []
        if not isinstance(ips, list) or len(ips) != 1 or not isinstance(ips[0], str):
            raise _fail("network_options.static_ips", f"expected the one address Podman allocated, got "
                        f"{ips!r}"[:200])
        ip = parse_ip(ips[0], "network_options.static_ips[0]")
        if opts.get("static_mac") is not None:
            mac = parse_mac(opts["static_mac"])
    subnet, gateway = parsed if parsed is not None else (None, None)
    options = conf.raw.get("options") or {}
    return Attachment(container_id=cid, container_name=name or "", ifname=ifname, ip=ip, mac=mac,
                      aliases=tuple(aliases), conf=conf, subnet=subnet, gateway=gateway,
                      metric=_metric(ifname, options),
                      source=options.get("subnet_source", SOURCE_STATIC))


def status_block(ifname: str, mac: str, ip: int, subnet: Subnet, gateway: int,
                 dns: dict | None = None) -> dict:
    """setup's answer: Podman shows it in `podman inspect` (NetworkSettings), and writes
    dns_server_ips and dns_search_domains into the container's resolv.conf. dns is the
    engine's resolver from the lease (cni.conf.lease_dns: IPv4 addresses and checked
    domain names); None: no DNS server (standalone mode, or the engine serves none)."""
    return {
        "dns_search_domains": list(dns["search"]) if dns else [],
        "dns_server_ips": list(dns["nameservers"]) if dns else [],
        "interfaces": {ifname: {"mac_address": mac, "subnets": [
            {"ipnet": f"{format_ip(ip)}/{subnet.prefix}", "gateway": format_ip(gateway)}]}},
    }


def error_json(err: CniError) -> dict:
    """netavark's error shape: {"error": "..."}; Podman prints the message as it is."""
    msg = err.msg if not err.details or "\n" in err.details else f"{err.msg} ({err.details})"
    return {"error": f"flatnet: {msg}"}
