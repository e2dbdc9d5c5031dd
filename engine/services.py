"""The service registry: what this host publishes (kept in state_dir/services.json),
what the lighthouse says every other host publishes, and the route table the HTTP
gateway reads (GET /routes).

A route sends a Host (by default the service name and <name>.<domain>) to the
container over the overlay, and, for a service on another host, also names that
host's gateway on the LAN: the path that works even when the overlay does not.

Names and hosts follow the one rule of engine.proto.names. What breaks it is refused
alone and listed by rejected() with the reason (GET /services/rejected, and the
"rejected" key of GET /routes, which the gateway's status page shows): a name typed by
an operator, a Podman label, a catalog entry of another node, a service the
lighthouse refused because another node holds its name or host.
"""
from __future__ import annotations

import ipaddress
import json
import os

from flatnet.engine.proto import names


class ServiceError(ValueError):
    pass


def _check_name(name: str) -> str:
    try:
        return names.operator_name(name)
    except names.BadName as exc:
        raise ServiceError(f"service name {name!r}: {exc}") from None


def _check_host(host: str) -> str:
    try:
        return names.operator_host(host)
    except names.BadName as exc:
        raise ServiceError(f"host {host!r}: {exc}") from None


def catalog_problem(entry: dict) -> str | None:
    """Why a catalog entry (another node's service, from the lighthouse) is unusable."""
    problem = names.name_problem(entry.get("name"))
    if problem:
        return f"service name: {problem}"
    if entry.get("host"):
        problem = names.host_problem(entry["host"])
        if problem:
            return f"host: {problem}"
    return None


class ServiceRegistry:
    def __init__(self, path: str, node: str, domain: str) -> None:
        self.path = path
        self.node = node
        self.domain = domain
        self.local: dict[str, dict] = {}
        self.remote: list[dict] = []
        self.label_problems: list[dict] = []                 # set by the Podman label watcher
        self.refused: dict[tuple[str, str], str] = {}        # (lighthouse, name) -> its reason
        self.remote_rejected: list[dict] = []                # catalog entries that break the rule
        self.saved_rejected: list[dict] = []                 # services.json entries that do
        try:
            with open(path) as f:
                saved = json.load(f)
            for entry in saved:
                problem = catalog_problem(entry)
                if problem:  # written by a version before the one rule
                    self.saved_rejected.append(_rejection(entry, path, problem))
                else:
                    self.local[entry["name"]] = entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.local = {}

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(list(self.local.values()), f, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def publish(self, subnet: ipaddress.IPv4Network | None, name: str, addr: str, port: object, host: str = "",
                prefix: str = "/") -> dict:
        name = _check_name(str(name))
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            raise ServiceError(f"address {addr!r} is not an IPv4 address") from None
        if subnet is None or ip not in subnet:
            raise ServiceError(f"address {addr} is not in this host's subnet {subnet}: publish containers of this "
                               "host only (their services are reached through this host)")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ServiceError(f"port {port!r} is not 1-65535")
        if not prefix.startswith("/"):
            raise ServiceError(f"prefix {prefix!r} must start with /")
        host = _check_host(str(host)) if host else ""
        entry = {"name": name, "addr": str(ip), "port": port, "host": host, "prefix": prefix or "/"}
        self.local[name] = entry
        self._save()
        return entry

    def unpublish(self, name: str) -> bool:
        try:
            name = names.operator_name(name)
        except names.BadName:
            return False  # no such name can have been published
        found = self.local.pop(name, None) is not None
        if found:
            self._save()
        return found

    def set_remote(self, entries: list[dict]) -> None:
        """The network's catalog (from the lighthouse): entries that break the rule are
        dropped one by one and listed in rejected(), the others kept."""
        kept, rejected = [], []
        for entry in entries:
            problem = catalog_problem(entry)
            if problem:
                rejected.append(_rejection(entry, f"catalog (node {entry.get('node')})", problem))
            else:
                kept.append(entry)
        self.remote, self.remote_rejected = kept, rejected

    def refuse(self, lighthouse: str, name: str, reason: str) -> None:
        """The lighthouse refused one of our services (its name or host is taken)."""
        if len(self.refused) < 4 * 32:  # a register carries at most wire.MAX_SERVICES
            self.refused[(lighthouse, name)] = reason

    def clear_refusals(self, lighthouse: str) -> None:
        """A fresh answer from this lighthouse: its refusals are re-sent after it."""
        self.refused = {k: v for k, v in self.refused.items() if k[0] != lighthouse}

    def rejected(self) -> list[dict]:
        """Every refused name or route, with where it came from and why."""
        refused = [dict(_rejection(self.local.get(name, {"name": name}), f"lighthouse {lh}", reason))
                   for (lh, name), reason in sorted(self.refused.items())]
        return self.saved_rejected + self.label_problems + refused + self.remote_rejected

    def catalog(self, gateway: tuple[str, int] | None) -> list[dict]:
        mine = [dict(s, node=self.node, gateway=gateway) for s in self.local.values()]
        return mine + [s for s in self.remote if s["node"] != self.node]

    def routes(self, gateway: tuple[str, int] | None) -> dict:
        """The gateway's route table, without our services a lighthouse refused (another
        node holds the name: every gateway sends it there), and what was refused."""
        refused = {name for _, name in self.refused}
        routes = []
        for s in self.catalog(gateway):
            if s["node"] == self.node and s["name"] in refused:
                continue
            upstreams = [{"addr": f"{s['addr']}:{s['port']}", "kind": "overlay"}]
            if s["node"] != self.node and s.get("gateway"):
                upstreams.append({"addr": f"{s['gateway'][0]}:{s['gateway'][1]}", "kind": "gateway"})
            hosts = [s["host"]] if s.get("host") else [s["name"], f"{s['name']}.{self.domain}"]
            for host in hosts:
                routes.append({"service": s["name"], "host": host, "prefix": s.get("prefix") or "/",
                               "node": s["node"], "upstreams": upstreams})
        return {"routes": routes, "rejected": self.rejected()}


def _rejection(entry: dict, source: str, reason: str) -> dict:
    return {"name": str(entry.get("name", ""))[:100], "host": str(entry.get("host") or "")[:260],
            "source": source, "reason": reason}
