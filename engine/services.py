"""The service registry: what this host publishes (kept in state_dir/services.json),
what the lighthouse says every other host publishes, and the route table the HTTP
gateway reads (GET /routes).

A route sends a Host (by default the service name and <name>.<domain>) to the
container over the overlay, and, for a service on another host, also names that
host's gateway on the LAN: the path that works even when the overlay does not.
"""
from __future__ import annotations

import ipaddress
import json
import os


class ServiceError(ValueError):
    pass


def _check_name(name: str) -> str:
    if not name or len(name) > 63 or not all(c.isalnum() or c == "-" for c in name) or not name[0].isalnum():
        raise ServiceError(f"service name {name!r}: use 1-63 letters, digits and '-', starting with a letter or digit")
    return name.lower()


class ServiceRegistry:
    def __init__(self, path: str, node: str, domain: str) -> None:
        self.path = path
        self.node = node
        self.domain = domain
        self.local: dict[str, dict] = {}
        self.remote: list[dict] = []
        try:
            with open(path) as f:
                self.local = {s["name"]: s for s in json.load(f)}
        except (OSError, ValueError, KeyError, TypeError):
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
        entry = {"name": name, "addr": str(ip), "port": port, "host": host or "", "prefix": prefix or "/"}
        self.local[name] = entry
        self._save()
        return entry

    def unpublish(self, name: str) -> bool:
        found = self.local.pop(name.lower(), None) is not None
        if found:
            self._save()
        return found

    def catalog(self, gateway: tuple[str, int] | None) -> list[dict]:
        mine = [dict(s, node=self.node, gateway=gateway) for s in self.local.values()]
        return mine + [s for s in self.remote if s["node"] != self.node]

    def routes(self, gateway: tuple[str, int] | None) -> dict:
        routes = []
        for s in self.catalog(gateway):
            upstreams = [{"addr": f"{s['addr']}:{s['port']}", "kind": "overlay"}]
            if s["node"] != self.node and s.get("gateway"):
                upstreams.append({"addr": f"{s['gateway'][0]}:{s['gateway'][1]}", "kind": "gateway"})
            hosts = [s["host"]] if s.get("host") else [s["name"], f"{s['name']}.{self.domain}"]
            for host in hosts:
                routes.append({"service": s["name"], "host": host, "prefix": s.get("prefix") or "/",
                               "node": s["node"], "upstreams": upstreams})
        return {"routes": routes}
