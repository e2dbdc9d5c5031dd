"""Egress: containers reach addresses outside the overlay through the host's own
uplink, masqueraded (as Podman's bridge network does). iptables (Debian's default
`iptables` is iptables-nft), in chains of our own:

    nat    POSTROUTING -> FLATNET-POSTROUTING
             -s <this host's /24> -d <overlay> -j RETURN      overlay traffic keeps its source
             -s <this host's /24> -j MASQUERADE                everything else leaves as the host
    filter FORWARD -> FLATNET-FORWARD (first, so a DROP policy or another tool's rules
             do not block containers)
             -i <bridge> -j ACCEPT                             from containers
             -o <bridge> -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT   their replies
             -i <tun> -o <bridge> -j ACCEPT                    from the overlay (the engine's
                                                               own firewall filtered it)

Rules: apply() is idempotent (each chain is written whole by one iptables-restore
--noflush, which replaces the chain's rules atomically; the jump is added only if
missing); the rules stay when the engine stops (containers keep their egress while it
restarts); remove() takes everything out (uninstall, `flatnet egress remove`).
"""
from __future__ import annotations

import ipaddress
import subprocess
from typing import Callable

NAT_CHAIN = "FLATNET-POSTROUTING"
FORWARD_CHAIN = "FLATNET-FORWARD"
Runner = Callable[..., subprocess.CompletedProcess]


class EgressError(RuntimeError):
    pass


def _run(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)


def ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, bridge: str, tun: str,
            masquerade: bool) -> str:
    """iptables-restore input for both chains (pure)."""
    nat = [f"-A {NAT_CHAIN} -s {subnet} -d {network} -j RETURN",
           f"-A {NAT_CHAIN} -s {subnet} -j MASQUERADE"] if masquerade else []
    fwd = [f"-A {FORWARD_CHAIN} -i {bridge} -j ACCEPT",
           f"-A {FORWARD_CHAIN} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
           f"-A {FORWARD_CHAIN} -i {tun} -o {bridge} -j ACCEPT"]
    return "\n".join(["*nat", f":{NAT_CHAIN} - [0:0]", *nat, "COMMIT",
                      "*filter", f":{FORWARD_CHAIN} - [0:0]", *fwd, "COMMIT", ""])


def apply(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, bridge: str, tun: str,
          masquerade: bool, run: Runner = _run) -> None:
    proc = run(["iptables-restore", "-w", "5", "--noflush"], input=ruleset(network, subnet, bridge, tun, masquerade))
    if proc.returncode != 0:
        raise EgressError(f"iptables-restore failed: {proc.stderr.strip()} (is the iptables package installed? "
                          "set [network] masquerade = false to run without egress rules)")
    _jump(run, "nat", "POSTROUTING", NAT_CHAIN)
    _jump(run, "filter", "FORWARD", FORWARD_CHAIN)


def _jump(run: Runner, table: str, parent: str, chain: str) -> None:
    if run(["iptables", "-w", "5", "-t", table, "-C", parent, "-j", chain]).returncode == 0:
        return
    proc = run(["iptables", "-w", "5", "-t", table, "-I", parent, "1", "-j", chain])
    if proc.returncode != 0:
        raise EgressError(f"iptables -t {table} -I {parent} -j {chain}: {proc.stderr.strip()}")


def remove(run: Runner = _run) -> list[str]:
    """Take out the jumps and both chains; what was removed (nothing there: [])."""
    done = []
    for table, parent, chain in (("nat", "POSTROUTING", NAT_CHAIN), ("filter", "FORWARD", FORWARD_CHAIN)):
        for _ in range(16):  # every copy of the jump (bounded)
            if run(["iptables", "-w", "5", "-t", table, "-D", parent, "-j", chain]).returncode != 0:
                break
        if run(["iptables", "-w", "5", "-t", table, "-F", chain]).returncode == 0:
            run(["iptables", "-w", "5", "-t", table, "-X", chain])
            done.append(f"{table}/{chain}")
    return done
