"""Publishing from Podman labels: a container started with
`--label flatnet.publish=wiki:80` (several: `wiki:80,wiki-api:8000`) is published as
that service while it runs on this host's Flatnet subnet, and unpublished when it is
gone. Services published by hand are never touched. A label item whose name breaks
the one rule (engine.proto.names; Unicode is converted to punycode first) is reported
and skipped alone: the container's other items and other containers are published."""
from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Callable

from flatnet.engine.proto import names
from flatnet.engine.services import ServiceError

LABEL = "flatnet.publish"
Runner = Callable[[list[str]], str]


def run_podman(argv: list[str]) -> str:
    proc = subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(proc.returncode, f"podman {argv[0]}: {proc.stderr.strip()}")
    return proc.stdout


def scan(run: Runner = run_podman) -> list[dict]:
    """[{id, name, label, ips}] of the running containers that carry the label."""
    listed = json.loads(run(["ps", "--filter", f"label={LABEL}", "--format", "json"]) or "[]")
    ids = [c["Id"] for c in listed]
    if not ids:
        return []
    out = []
    for c in json.loads(run(["inspect", "--format", "json", *ids]) or "[]"):
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        out.append({"id": c["Id"], "name": c.get("Name", c["Id"][:12]),
                    "label": (c.get("Config") or {}).get("Labels", {}).get(LABEL, ""),
                    "ips": [n.get("IPAddress") for n in nets.values() if n.get("IPAddress")]})
    return out


def desired(containers: list[dict], subnet: ipaddress.IPv4Network | None) -> tuple[dict[str, dict], list[str]]:
    """({service: {addr, port, container}}, problems) for containers on this subnet."""
    services: dict[str, dict] = {}
    problems = []
    for c in containers:
        ips = [ip for ip in c["ips"] if subnet is not None and ipaddress.IPv4Address(ip) in subnet]
        if not ips:
            problems.append(f"container {c['name']} has label {LABEL} but no address on this host's Flatnet "
                            f"subnet {subnet} (run it with --network flatnet)")
            continue
        for item in filter(None, (part.strip() for part in c["label"].split(","))):
            name, _, port = item.partition(":")
            if not port.isdigit() or not 0 < int(port) < 65536 or not name:
                problems.append(f"container {c['name']}: label {LABEL}={c['label']!r}: use NAME:PORT[,NAME:PORT]")
                continue
            try:
                name = names.operator_name(name)
            except names.BadName as exc:
                problems.append(f"container {c['name']}: label {LABEL}: service name {name!r}: {exc}")
                continue
            services[name] = {"addr": ips[0], "port": int(port), "container": c["name"]}
    return services, problems


def sync(registry, subnet: ipaddress.IPv4Network | None, wanted: dict[str, dict],  # noqa: ANN001
         managed: set[str], problems: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Publish what labels ask for, unpublish label services whose container is gone.
    `managed` (updated in place) holds the names this module published. A service the
    registry refuses is skipped alone; its reason goes to `problems`."""
    published, removed = [], []
    for name, s in wanted.items():
        cur = registry.local.get(name)
        if cur is None or (name in managed and (cur["addr"], cur["port"]) != (s["addr"], s["port"])):
            try:
                registry.publish(subnet, name, s["addr"], s["port"])
            except ServiceError as exc:
                if problems is not None:
                    problems.append(f"container {s['container']}: label {LABEL}: {exc}")
                continue
            managed.add(name)
            published.append(name)
    for name in sorted(managed - set(wanted)):
        registry.unpublish(name)
        managed.discard(name)
        removed.append(name)
    return published, removed
