"""Container names for DNS: what the CNI plugin recorded on this host, what the
lighthouse says every other host has, and published services, as one table.

The plugins (CNI and netavark) write the container's name and aliases, one a line, to
`<dataDir>/<network>/names/<ip>` (cni.store.FileStore.set_names), removed with the
address. scan() reads them. An entry counts only while the IPAM store still reserves
its address (a file left behind by a crash answers nothing), and only for an address
in this host's subnet. Names follow the one rule of
engine.proto.names, in lowercase; a name that breaks it (Podman's generated
`adjective_noun` names have '_') is skipped and listed in `skipped`.
"""
from __future__ import annotations

import ipaddress
import os

from flatnet.engine.proto import names as name_rule

MAX_FILES = 1024          # attachments read per network (a /24 holds 253 containers)
MAX_FILE = 16384          # bytes of one names file
MAX_PER_CONTAINER = 33    # a name and up to 32 aliases
MAX_LOCAL = 512           # (name, addr) pairs sent to the lighthouse (wire.MAX_NAMES)


class NameScanner:
    """Reads the names files again only when something changed: the IPAM directory's
    mtime, or the names directory's files (every write is a rename: a new inode)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._signature: tuple | None = None
        self.entries: list[tuple[str, str]] = []
        self.skipped: list[str] = []

    def _dirs(self) -> list[str]:
        try:
            nets = sorted(os.listdir(self.data_dir))[:64]
        except OSError:
            return []
        return [os.path.join(self.data_dir, n) for n in nets if os.path.isdir(os.path.join(self.data_dir, n, "names"))]

    def scan(self, subnet: ipaddress.IPv4Network | None) -> bool:
        """Read again if anything changed; True when `entries` changed."""
        dirs = self._dirs()
        sig: list = [str(subnet)]
        for d in dirs:
            try:
                sig.append(os.stat(d).st_mtime_ns)
                # every file's inode too: a directory's mtime has the resolution of the
                # kernel's coarse clock, and a DEL + ADD can fall within one tick
                with os.scandir(os.path.join(d, "names")) as it:
                    sig += sorted((e.name, e.inode()) for e in it)[:MAX_FILES]
            except OSError:
                sig.append(0)
        signature = tuple(dirs) + tuple(sig)
        if signature == self._signature:
            return False
        self._signature = signature
        entries, skipped = [], []
        for d in dirs:
            e, s = read_network(d, subnet)
            entries += e
            skipped += s
        entries = sorted(set(entries))[:MAX_LOCAL]
        changed = entries != self.entries
        self.entries, self.skipped = entries, skipped[:64]
        return changed


def read_network(net_dir: str, subnet: ipaddress.IPv4Network | None) -> tuple[list[tuple[str, str]], list[str]]:
    names_dir = os.path.join(net_dir, "names")
    try:
        files = sorted(os.listdir(names_dir))[:MAX_FILES]
    except OSError:
        return [], []
    entries, skipped = [], []
    for fname in files:
        try:
            ip = ipaddress.IPv4Address(fname)  # "<ip>.tmp" (being written) and anything else: skipped
        except ValueError:
            continue
        if subnet is None or ip not in subnet or not os.path.exists(os.path.join(net_dir, str(ip))):
            continue
        try:
            with open(os.path.join(names_dir, fname), "rb") as f:
                lines = f.read(MAX_FILE).decode("utf-8", "replace").splitlines()[:MAX_PER_CONTAINER]
        except OSError:
            continue
        for raw in lines:
            if not raw:
                continue
            problem = name_rule.name_problem(raw)
            if problem:
                skipped.append(f"{raw[:64]!r} of {ip}: {problem}")
                continue
            entries.append((raw.lower(), str(ip)))
    return entries, skipped


def build_table(domain: str, local: list[tuple[str, str]], remote: list[tuple[str, str, str]],
                services: list[dict], max_addrs: int = 16) -> dict[str, list[str]]:
    """{"<name>.<domain>": [addresses]}: this host's containers, every other host's,
    and published services (a name held by several gives all their addresses)."""
    table: dict[str, list[str]] = {}
    pairs = list(local) + [(n, a) for n, a, _ in remote] + [(s["name"], s["addr"]) for s in services]
    for name, addr in pairs:
        addrs = table.setdefault(f"{name}.{domain}", [])
        if addr not in addrs and len(addrs) < max_addrs:
            addrs.append(addr)
    return table
