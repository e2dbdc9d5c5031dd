"""flatnet: the operator's command.

    flatnet ca init   --dir DIR [--name N] [--days D]
    flatnet cert sign --ca-dir DIR --name N [--groups a,b] [--out-dir DIR] [--days D]
    flatnet cert renew --ca-dir DIR --name N [--cert-dir DIR] [--days D] [--groups a,b]
    flatnet cert revoke NAME|FINGERPRINT [--ca-dir DIR] [--out FILE]
    flatnet cert show FILE [--ca-dir DIR]
    flatnet status [--json] [--socket PATH]
    flatnet peers  [--json] [--socket PATH]
    flatnet service publish NAME (--container C | --addr IP) --port P [--host H] [--prefix /p]
    flatnet service unpublish NAME
    flatnet service list [--json]
    flatnet doctor [--gateway URL]            check this host and explain problems
    flatnet up [--hosts N] [--containers M]   a local test network in namespaces
    flatnet down
    flatnet egress remove                     remove the engine's egress chains (uninstall)
    flatnet lighthouse status [--json]        the lighthouse on this machine
    flatnet gateway render|run|stop           the HTTP gateway (nginx + gateway-lua)
    flatnet systemd install|uninstall|render  the systemd units of this installation
    flatnet install | uninstall               the host set-up around the venv (scripts/install.sh)
    flatnet completion bash                   a bash completion script

Exit codes (docs/cli.md): 0 success; 1 the command failed or `doctor` found a problem;
2 bad usage (argparse).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_SOCKET = "/run/flatnet/engine.sock"
DAY = 86400
BACKDATE = 60  # a new certificate is valid from a minute ago (clocks a little behind)


def _blocklist_path(ca_dir: str) -> str:
    return os.path.join(ca_dir, "blocklist.bin")


def _read_blocklist(path: str, ca):  # noqa: ANN001, ANN202
    """The blocklist at path (checked against the CA), or None if there is none yet."""
    from flatnet.engine import pki
    from flatnet.engine.proto import revocation
    from flatnet.engine.proto.errors import RemoteProtocolError
    if not os.path.exists(path):
        return None
    try:
        return revocation.load(pki.read_file(path, "blocklist"), ca)
    except RemoteProtocolError as exc:
        raise pki.PkiError(f"{path}: {exc}") from None


def _not_before(name: str, ca_dir: str, ca, now: int) -> int:  # noqa: ANN001
    """Backdated a little, but after this name's revocation cutoff: a certificate for a
    re-enrolled node must not fall under its old revocation (docs/operations.md)."""
    bl = _read_blocklist(_blocklist_path(ca_dir), ca)
    cutoff = bl.names.get(name) if bl is not None else None
    return now - BACKDATE if cutoff is None else max(now - BACKDATE, cutoff + 1)


def cmd_ca_init(a: argparse.Namespace) -> int:
    from nacl.signing import SigningKey
    from flatnet.engine import pki
    from flatnet.engine.proto import cert as certs
    key_path, crt_path = os.path.join(a.dir, "ca.key"), os.path.join(a.dir, "ca.crt")
    if os.path.exists(key_path) and not a.force:
        print(f"flatnet: {key_path} exists; refusing to overwrite a CA (use --force to replace it)", file=sys.stderr)
        return 1
    if a.force:
        for p in (key_path, crt_path):
            if os.path.exists(p):
                os.unlink(p)
    key = SigningKey.generate()
    now = int(time.time())
    pki.write_secret(key_path, bytes(key))
    pki.write_public(crt_path, certs.create_ca(key, a.name, now - 60, now + a.days * DAY))
    print(f"CA {a.name!r}: certificate {crt_path}, key {key_path} (keep the key offline; mode 0600)")
    return 0


def cmd_cert_sign(a: argparse.Namespace) -> int:
    from nacl.signing import SigningKey
    from flatnet.engine import pki
    from flatnet.engine.proto import cert as certs
    from flatnet.engine.proto.noise import generate_keypair
    ca = pki.load_valid_ca(os.path.join(a.ca_dir, "ca.crt"), time.time())  # no certificate born expired
    ca_key = SigningKey(pki.read_secret(os.path.join(a.ca_dir, "ca.key")))
    out = a.out_dir or a.ca_dir
    key_path, crt_path = os.path.join(out, f"{a.name}.key"), os.path.join(out, f"{a.name}.crt")
    if os.path.exists(key_path):
        print(f"flatnet: {key_path} exists; remove it first to issue a new key", file=sys.stderr)
        return 1
    private, public = generate_keypair()
    now = int(time.time())
    groups = [g for g in (a.groups or "").split(",") if g]
    raw = certs.sign_node(ca_key, ca, a.name, public, groups, _not_before(a.name, a.ca_dir, ca, now),
                          now + a.days * DAY)
    pki.write_secret(key_path, private)
    pki.write_public(crt_path, raw)
    cert = certs.decode(raw)[0]
    print(f"node {a.name!r}: certificate {crt_path}, key {key_path}, groups {groups or '-'}, "
          f"fingerprint {cert.fingerprint}")
    if cert.not_before > now - BACKDATE:
        print(f"note: valid from {time.strftime('%H:%M:%S', time.gmtime(cert.not_before))} UTC, just after "
              f"{a.name!r} was revoked (older certificates of this name stay revoked)")
    return 0


def cmd_cert_renew(a: argparse.Namespace) -> int:
    """A new certificate for the same key (the node keeps its identity and sessions)."""
    from nacl.signing import SigningKey
    from flatnet.engine import pki
    from flatnet.engine.proto import cert as certs
    ca = pki.load_valid_ca(os.path.join(a.ca_dir, "ca.crt"), time.time())
    ca_key = SigningKey(pki.read_secret(os.path.join(a.ca_dir, "ca.key")))
    crt_path = os.path.join(a.cert_dir or a.ca_dir, f"{a.name}.crt")
    old, _, _ = certs.decode(pki.read_file(crt_path, "certificate"))
    bl = _read_blocklist(_blocklist_path(a.ca_dir), ca)
    if bl is not None and bl.reason(old):
        print(f"flatnet: {crt_path}: {bl.reason(old)}; a revoked key gets no new certificate: remove "
              f"{old.name}.key and issue a new key with `flatnet cert sign --name {old.name}`", file=sys.stderr)
        return 1
    now = int(time.time())
    groups = list(old.groups) if a.groups is None else [g for g in a.groups.split(",") if g]
    raw = certs.sign_node(ca_key, ca, old.name, old.key, groups, _not_before(old.name, a.ca_dir, ca, now),
                          now + a.days * DAY)
    if os.path.exists(crt_path):
        os.replace(crt_path, crt_path + ".old")
    pki.write_public(crt_path, raw)
    print(f"node {old.name!r}: renewed {crt_path} for {a.days} days, groups {groups or '-'} "
          f"(old one kept as {crt_path}.old); reload the engine: systemctl reload flatnet-engine (or kill -HUP)")
    return 0


def cmd_cert_revoke(a: argparse.Namespace) -> int:
    """Add a name or a fingerprint to the network's blocklist (signed by the CA, serial up)."""
    from nacl.signing import SigningKey
    from flatnet.engine import pki
    from flatnet.engine.proto import revocation
    ca = pki.load_ca(os.path.join(a.ca_dir, "ca.crt"))
    ca_key = SigningKey(pki.read_secret(os.path.join(a.ca_dir, "ca.key")))
    path = a.out or _blocklist_path(a.ca_dir)
    old = _read_blocklist(path, ca)
    names = dict(old.names) if old else {}
    fingerprints = set(old.fingerprints) if old else set()
    now = int(time.time())
    target = a.target.strip()
    if len(target) == 2 * revocation.FINGERPRINT_BYTES and all(c in "0123456789abcdefABCDEF" for c in target):
        fingerprints.add(target.lower())
        what = f"certificate {target.lower()}"
    else:
        if not 0 < len(target) <= revocation.MAX_NAME:
            print(f"flatnet: {target!r} is neither a node name (1 to {revocation.MAX_NAME} characters) nor a "
                  f"fingerprint ({2 * revocation.FINGERPRINT_BYTES} hex characters, see `flatnet cert show`)",
                  file=sys.stderr)
            return 1
        # every certificate of this name whose not_before is up to now (backdated ones
        # included); `cert sign` for this name later starts validity at cutoff + 1
        names[target] = max(names.get(target, 0), now)
        what = f"every certificate of {target!r} issued until {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC"
    serial = max((old.serial + 1) if old else 1, now)
    raw = revocation.create(ca_key, ca, serial, now, names, sorted(fingerprints))
    pki.save_blocklist(path, raw)
    print(f"revoked {what}\nblocklist {path}: serial {serial}, {len(names)} name(s), {len(fingerprints)} "
          f"fingerprint(s)\nnext: copy it to every lighthouse ([pki] blocklist, default beside ca.crt); each one "
          "reads it within 1 s and sends it to every node")
    return 0


def cmd_cert_show(a: argparse.Namespace) -> int:
    from flatnet.engine import pki
    from flatnet.engine.proto import cert as certs
    from flatnet.engine.proto.errors import RemoteProtocolError
    try:
        cert, _, _ = certs.decode(pki.read_file(a.file, "certificate"))
    except RemoteProtocolError as exc:
        raise pki.PkiError(f"{a.file}: {exc}") from None
    when = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))  # noqa: E731
    print(f"name         {cert.name}{' (CA)' if cert.is_ca else ''}\nissuer       {cert.issuer}\n"
          f"groups       {', '.join(cert.groups) or '-'}\nvalid        {when(cert.not_before)} to {when(cert.not_after)}\n"
          f"key          {cert.key.hex()}\nfingerprint  {cert.fingerprint}")
    if a.ca_dir and not cert.is_ca:
        ca = pki.load_ca(os.path.join(a.ca_dir, "ca.crt"))
        try:
            certs.verify_node(cert.raw, ca, time.time())
            bl = _read_blocklist(_blocklist_path(a.ca_dir), ca)
            state = (bl.reason(cert) if bl else None) or "valid"
        except RemoteProtocolError as exc:
            state = str(exc)
        print(f"status       {state}")
    return 0


def _api(sock: str, url: str, what: str = "engine") -> object:
    from flatnet.engine.io import control
    try:
        status, body = control.get(sock, url)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SystemExit(f"flatnet: no {what} answers on {sock} (is flatnet-{what} running? "
                         f"systemctl status flatnet-{what})") from None
    if status != 200:
        raise SystemExit(f"flatnet: {what} answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_status(a: argparse.Namespace) -> int:
    st = _api(a.socket, "/status")
    if a.json:
        print(json.dumps(st, indent=1))
        return 0
    drops = {k: v for k, v in st["drops"].items() if v}
    print(f"node      {st['node']}\nsubnet    {st['subnet']} (network {st['network']})\n"
          f"listen    udp/{st['listen_port']}  tun {st['tun']}  bridge {st['bridge']}\n"
          f"uptime    {st['uptime']} s\npeers     {st['peers_up']} up / {st['peers']} known"
          + (f", unreachable: {', '.join(st['peers_unreachable'])}" if st.get("peers_unreachable") else "") + "\n"
          f"cipher    {st.get('offloads', {}).get('cipher', '?')}\n"
          f"drops     {', '.join(f'{k}={v}' for k, v in drops.items()) or 'none'}\n"
          f"cert      expires in {st['cert_expires_in_days']} days")
    bl = st.get("blocklist")
    print("blocklist " + (f"serial {bl['serial']}, {len(bl['names'])} name(s), {len(bl['fingerprints'])} "
                          "fingerprint(s)" if bl else "none"))
    for name, why in (st.get("revoked_peers") or {}).items():
        print(f"REVOKED   {name}: session torn down ({why['reason']})")
    if st["cert_expires_in_days"] < 30:
        print(f"WARNING: this node's certificate expires in {st['cert_expires_in_days']} days: run "
              "`flatnet cert renew` and reload the engine")
    return 0


def cmd_peers(a: argparse.Namespace) -> int:
    rows = _api(a.socket, "/peers")
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ["PEER", "CERT", "SUBNET", "STATE", "PATH", "ENDPOINT", "HANDSHAKE", "CIPHER", "TX", "RX", "DROPS", "WHY"]
    table = [[r["name"], r.get("fingerprint", "")[:12] or "-", r["subnet"] or "-", r["state"], r["path"],
              r["endpoint"] or "-",
              f"{r['handshake_age']:.0f}s ago" if r["handshake_age"] is not None else "never",
              r.get("cipher") or "-",
              _bytes(r["tx_bytes"]), _bytes(r["rx_bytes"]), r["rx_dropped"],
              r.get("unreachable_reason") or r["last_error"] or (r["path_reason"] if r["path"].startswith("relayed") else "") or ""] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)] if table else [len(h) for h in header]
    for row in [header] + table:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0


def _container_ip(container: str) -> str:
    import subprocess
    proc = subprocess.run(["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                           container], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise SystemExit(f"flatnet: podman cannot find container {container!r}: {proc.stderr.strip()}")
    ips = [ip for ip in proc.stdout.split() if ip]
    if not ips:
        raise SystemExit(f"flatnet: container {container!r} has no IP address (is it running on --network flatnet?)")
    return ips[0]


def _service_names(a: argparse.Namespace) -> None:
    """The one rule (engine.proto.names) before the engine is asked: a clear message here,
    and the canonical form (lowercase, Unicode as punycode) is what is sent."""
    from flatnet.engine.proto import names
    try:
        a.name = names.operator_name(a.name)
    except names.BadName as exc:
        raise SystemExit(f"flatnet: service name {a.name!r}: {exc}") from None
    if getattr(a, "host", None):
        try:
            a.host = names.operator_host(a.host)
        except names.BadName as exc:
            raise SystemExit(f"flatnet: host {a.host!r}: {exc}") from None


def cmd_service(a: argparse.Namespace) -> int:
    from flatnet.engine.io import control
    if a.sub in ("publish", "unpublish"):
        _service_names(a)
    rejected = []
    try:
        if a.sub == "publish":
            addr = a.addr or _container_ip(a.container)
            body = json.dumps({"name": a.name, "addr": addr, "port": a.port, "host": a.host or "",
                               "prefix": a.prefix}).encode()
            status, data = control.request(a.socket, "POST", "/services", body)
        elif a.sub == "unpublish":
            status, data = control.request(a.socket, "DELETE", f"/services/{a.name}")
        else:
            status, data = control.request(a.socket, "GET", "/services")
            if not a.json:  # --json stays the list of services; GET /services/rejected has the rest
                rstatus, rdata = control.request(a.socket, "GET", "/services/rejected")
                rejected = json.loads(rdata) if rstatus == 200 else []  # an older engine: none
    except (FileNotFoundError, ConnectionRefusedError):
        raise SystemExit(f"flatnet: no engine answers on {a.socket} (is flatnet-engine running?)") from None
    doc = json.loads(data)
    if status != 200:
        print(f"flatnet: {doc.get('error', data.decode())}", file=sys.stderr)
        return 1
    if a.sub == "list" and not a.json:
        print("  ".join(["SERVICE".ljust(16), "NODE".ljust(12), "ADDRESS".ljust(21), "HOST/PREFIX"]))
        for s in doc:
            print("  ".join([s["name"].ljust(16), s["node"].ljust(12), f"{s['addr']}:{s['port']}".ljust(21),
                             (s.get("host") or s["name"]) + (s.get("prefix") if s.get("prefix") not in ("", "/") else "")]))
        if rejected:
            print("\nREFUSED (not routed)")
            for r in rejected:
                print(f"  {(r.get('name') or '-')[:40]}  [{r.get('source')}]  {r.get('reason')}")
    else:
        print(json.dumps(doc, indent=1))
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from flatnet import doctor
    findings, rc = doctor.run(a.socket, a.lease_file, a.gateway, not a.no_podman)
    if a.json:
        from dataclasses import asdict
        print(json.dumps({"ok": rc == 0, "findings": [asdict(f) for f in findings]}, indent=1))
    else:
        print(doctor.report(findings))
    return rc


LAB_DIR = "/var/lib/flatnet-lab"
LAB_PREFIX = "fnlab"


def cmd_up(a: argparse.Namespace) -> int:
    import subprocess
    from flatnet.demo import Lab
    if os.path.exists(os.path.join(a.dir, "lab.json")):
        print(f"flatnet: a lab is already up (state in {a.dir}); run `flatnet down` first", file=sys.stderr)
        return 1
    # host 1 on the LAN, host 2 behind a home-router NAT, host 3 behind a port-randomizing NAT
    nat = {2: "cone", 3: "random"}
    lab = Lab(LAB_PREFIX, a.dir, hosts=a.hosts, lighthouse=True, nat={i: k for i, k in nat.items() if i <= a.hosts})
    try:
        print(f"bringing up a lighthouse and {a.hosts} hosts in network namespaces ({LAB_PREFIX}-*), "
              f"{a.containers} container namespace(s) each ...")
        lab.up(containers_per_host=a.containers)
    except Exception:
        lab.down()
        raise
    print("\nhosts (subnets leased by the lighthouse):")
    for h in lab.hosts:
        ips = ", ".join(c["ip"] for c in h.containers)
        where = {"cone": "behind a NAT router", "random": "behind a port-randomizing NAT"}.get(lab.nat.get(h.index, ""),
                                                                                                "on the LAN")
        print(f"  {h.name}  {where:<32} namespace {h.ns}  subnet {h.subnet}  containers {ips}")
    first = lab.hosts[0]
    src = first.containers[0]
    ok = True
    # every host pings every other: on the LAN, punched through a NAT, and (between the
    # two NATed hosts, when the port-randomizing one defeats punching) relayed
    pairs = [(h, o) for i, h in enumerate(lab.hosts) for o in lab.hosts[i + 1:]]
    for host, other in pairs:
        src, dst = host.containers[0], other.containers[0]
        print(f"\nping from a container on {host.name} ({src['ip']}) to a container on {other.name} ({dst['ip']}):")
        for _ in range(15):  # the first packets find the peer through the lighthouse
            out = subprocess.run(["ip", "netns", "exec", src["ns"], "ping", "-c", "1", "-W", "1", dst["ip"]],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                break
        out = subprocess.run(["ip", "netns", "exec", src["ns"], "ping", "-c", "3", "-W", "2", dst["ip"]],
                             capture_output=True, text=True)
        ok = ok and out.returncode == 0
        print("  " + "\n  ".join(out.stdout.strip().splitlines()[-2:]))
    for h in lab.hosts:
        print(f"\npeer status on {h.name} (flatnet peers --socket {h.socket}):")
        cmd_peers(argparse.Namespace(socket=h.socket, json=False))
    src = first.containers[0]
    print(f"\ntry: ip netns exec {src['ns']} ping {lab.hosts[-1].containers[0]['ip']}"
          f"\n     flatnet status --socket {first.socket}\n     flatnet down   (removes everything)")
    return 0 if ok else 1


def cmd_egress_remove(a: argparse.Namespace) -> int:
    """Remove the engine's egress rules (uninstall; the engine makes them again at start)."""
    from flatnet.engine.io import egress
    removed = egress.remove()
    print("removed " + ", ".join(removed) if removed else "no flatnet egress rules were present")
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    from flatnet.demo import Lab
    if not os.path.exists(os.path.join(a.dir, "lab.json")):
        print(f"no lab is up ({a.dir}/lab.json not found)")
        return 0
    Lab.load(a.dir).down()
    print("lab removed: engines stopped, namespaces deleted, state removed")
    return 0


LIGHTHOUSE_SOCKET = "/run/flatnet-lighthouse/lighthouse.sock"


def cmd_lighthouse_status(a: argparse.Namespace) -> int:
    """The lighthouse's own view: nodes, leases, its store (members, health), the relay.
    Exit 1 when the store has no quorum (it can hand out no lease)."""
    st = _api(a.socket, "/status", "lighthouse")
    store = st.get("store") or {"backend": "sqlite", "healthy": True}
    if a.json:
        print(json.dumps(st, indent=1))
        return 0 if store.get("healthy") else 1
    drops = {k: v for k, v in st.get("drops", {}).items() if v}
    print(f"lighthouse {st['node']}\nnetwork    {st['network']}\nuptime     {st['uptime']} s\n"
          f"store      {store['backend']}: {'healthy' if store.get('healthy') else 'UNHEALTHY (no quorum)'}\n"
          f"nodes      {len(st['nodes'])} online here"
          + (f", {store['nodes']} in the store" if "nodes" in store else "") + f", {len(st['leases'])} leases\n"
          f"queries    {st['queries']}  relayed {st['relayed']}  rejected {st['rejected']}\n"
          f"drops      {', '.join(f'{k}={v}' for k, v in drops.items()) or 'none'}")
    ses = st.get("sessions")  # an older lighthouse has none
    if ses:
        print(f"sessions   {ses['held']} held, {ses['with_keys']} with keys; since the start: "
              f"expired {ses['sessions_expired']}, handshakes given up {ses['handshakes_failed']}")
    if store.get("lighthouses"):
        print(f"lighthouses up  {', '.join(store['lighthouses'])}")
    for m in store.get("members", []):
        state = ("leader" if m.get("leader") else "member" if m.get("has_leader") else "NO LEADER") if m["up"] \
            else f"DOWN ({m.get('error', '')[:80]})"
        print(f"  etcd {m['endpoint']:<22} {state}" + (f"  v{m['version']}  db {_bytes(m['db_size'])}"
                                                      if m["up"] else ""))
    if store.get("last_error"):
        print(f"last store error: {store['last_error'][:200]}")
    tcp = st.get("tcp_relay")  # the TCP relay for hosts without UDP (docs/lighthouse.md)
    print(f"tcp relay  {tcp['listen']}: {tcp['connections']} connections, refused "
          f"{', '.join(f'{k}={v}' for k, v in tcp['refused'].items()) or 'none'}" if tcp else "tcp relay  off")
    rows = [[name, n["subnet"], ", ".join(n["endpoints"]) or "-", f"{n['last_seen']:.0f}s ago"]
            for name, n in sorted(st["nodes"].items())]
    if rows:
        header = ["NODE", "SUBNET", "ENDPOINTS", "SEEN"]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in [header] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0 if store.get("healthy") else 1


def cmd_systemd(a: argparse.Namespace) -> int:
    from flatnet import units
    if a.sub == "render":
        lines = [f"wrote {p}" for p in units.render(a.unit_dir, a.bin_dir)]
    elif a.sub == "install":
        lines = units.install(a.unit_dir, a.bin_dir)
        lines.append("start: systemctl enable --now flatnet-engine (flatnet-lighthouse, flatnet-gateway where they run)")
    else:
        lines = units.remove(a.unit_dir)
    print("\n".join(lines) or "no flatnet units found")
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    from flatnet.completion import bash
    print(bash(build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flatnet import __version__
    p = argparse.ArgumentParser(prog="flatnet", description="Flatnet: flat encrypted networking for Podman",
                                epilog="exit codes: 0 ok, 1 failed (or doctor found a problem), 2 bad usage")
    p.add_argument("--version", action="version", version=f"flatnet {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_pki_commands(sub)
    _add_engine_commands(sub)
    _add_lab_commands(sub)
    lh = sub.add_parser("lighthouse", help="the lighthouse on this machine").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    lhs = lh.add_parser("status", help="nodes online, leases, the store (members, health), relayed packets, drops")
    lhs.add_argument("--json", action="store_true", help="machine-readable output")
    lhs.add_argument("--socket", default=LIGHTHOUSE_SOCKET, help="the lighthouse's control socket")
    lhs.set_defaults(fn=cmd_lighthouse_status)
    from flatnet import gateway
    gateway.add_commands(sub)
    _add_host_commands(sub, p)
    return p


def _add_pki_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """flatnet ca init, flatnet cert sign|renew|revoke|show"""
    ca = sub.add_parser("ca", help="network certificate authority").add_subparsers(dest="sub", required=True,
                                                                                     metavar="ACTION")
    init = ca.add_parser("init", help="create the network CA")
    init.add_argument("--dir", default="/etc/flatnet/pki", help="where ca.key and ca.crt go")
    init.add_argument("--name", default="flatnet-ca", help="the CA's name in certificates")
    init.add_argument("--days", type=int, default=3650, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing CA (every node needs new certificates)")
    init.set_defaults(fn=cmd_ca_init)
    cert = sub.add_parser("cert", help="node certificates").add_subparsers(dest="sub", required=True,
                                                                           metavar="ACTION")
    sign = cert.add_parser("sign", help="create a node key and certificate")
    sign.add_argument("--ca-dir", default="/etc/flatnet/pki", help="the CA's folder (ca.key, ca.crt)")
    sign.add_argument("--name", required=True, help="the node's name (host or lighthouse)")
    sign.add_argument("--groups", default="", help="comma-separated groups for firewall rules")
    sign.add_argument("--out-dir", help="where NAME.key and NAME.crt go (default: the CA dir)")
    sign.add_argument("--days", type=int, default=365, help="validity in days")
    sign.set_defaults(fn=cmd_cert_sign)
    renew = cert.add_parser("renew", help="a new certificate for an existing node key")
    renew.add_argument("--ca-dir", default="/etc/flatnet/pki", help="the CA's folder (ca.key, ca.crt)")
    renew.add_argument("--name", required=True, help="the node whose certificate to renew")
    renew.add_argument("--cert-dir", help="where NAME.crt is (default: the CA dir)")
    renew.add_argument("--days", type=int, default=365, help="validity in days")
    renew.add_argument("--groups", help="comma-separated groups for firewall rules (default: the old certificate's; "
                                        "\"\" for none)")
    renew.set_defaults(fn=cmd_cert_renew)
    revoke = cert.add_parser("revoke", help="revoke a node's certificates (writes the signed blocklist)")
    revoke.add_argument("target", metavar="NAME|FINGERPRINT", help="a node name, or a certificate's fingerprint")
    revoke.add_argument("--ca-dir", default="/etc/flatnet/pki", help="the CA's folder (ca.key, ca.crt)")
    revoke.add_argument("--out", help="the blocklist file (default: blocklist.bin in the CA dir)")
    revoke.set_defaults(fn=cmd_cert_revoke)
    show = cert.add_parser("show", help="print a certificate, with its fingerprint")
    show.add_argument("file", help="the certificate file")
    show.add_argument("--ca-dir", help="also check it against this CA and its blocklist")
    show.set_defaults(fn=cmd_cert_show)


def _add_engine_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """What asks this host's engine: status, peers, service, doctor, egress"""
    for name, fn, what in (("status", cmd_status, "this host's engine: node, subnet, drops, certificate"),
                           ("peers", cmd_peers, "the peer table: state, path, endpoint, traffic")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.add_argument("--socket", default=DEFAULT_SOCKET, help="the engine's control socket")
        sp.set_defaults(fn=fn)
    svc = sub.add_parser("service", help="publish container services to the gateways").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    pub = svc.add_parser("publish", help="publish a container's port through the gateways")
    pub.add_argument("name", help="the service name (the Host the gateways route)")
    which = pub.add_mutually_exclusive_group(required=True)
    which.add_argument("--container", help="a Podman container on the flatnet network")
    which.add_argument("--addr", help="the container's Flatnet IP")
    pub.add_argument("--port", type=int, required=True, help="the container's port")
    pub.add_argument("--host", help="the Host name to route (default: NAME and NAME.<domain>)")
    pub.add_argument("--prefix", default="/", help="route only this path prefix")
    unp = svc.add_parser("unpublish", help="remove a published service")
    unp.add_argument("name", help="the service name")
    lst = svc.add_parser("list", help="the services published in the network")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    for sp in (pub, unp, lst):
        sp.add_argument("--socket", default=DEFAULT_SOCKET, help="the engine's control socket")
        sp.set_defaults(fn=cmd_service, json=getattr(sp, "json", False))
    doc = sub.add_parser("doctor", help="check this host end to end and explain problems")
    doc.add_argument("--socket", default=DEFAULT_SOCKET, help="the engine's control socket")
    doc.add_argument("--lease-file", default="/run/flatnet/lease.json", help="the lease file the CNI plugin reads")
    doc.add_argument("--gateway", help="also check the gateway at this URL, e.g. http://127.0.0.1")
    doc.add_argument("--no-podman", action="store_true", help="skip the Podman checks")
    doc.add_argument("--json", action="store_true", help="machine-readable output (findings and ok)")
    doc.set_defaults(fn=cmd_doctor)
    eg = sub.add_parser("egress", help="the engine's egress (masquerade) rules").add_subparsers(dest="sub",
                                                                                               required=True)
    eg.add_parser("remove", help="remove the FLATNET-POSTROUTING and FLATNET-FORWARD chains (uninstall)"
                  ).set_defaults(fn=cmd_egress_remove)


def _add_lab_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """flatnet up | down: the local test network"""
    up = sub.add_parser("up", help="bring up a local test network (hosts in network namespaces)")
    up.add_argument("--hosts", type=int, default=3, choices=range(2, 10), metavar="N (2-9)", help="hosts")
    up.add_argument("--containers", type=int, default=1, help="container namespaces per host")
    up.add_argument("--dir", default=LAB_DIR, help="the lab's state folder")
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="remove the local test network")
    down.add_argument("--dir", default=LAB_DIR, help="the lab's state folder")
    down.set_defaults(fn=cmd_down)


def _add_host_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
                       p: argparse.ArgumentParser) -> None:
    """The host set-up: systemd units, install, uninstall, shell completion"""
    sd = sub.add_parser("systemd", help="systemd units for this installation").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    for name, what in (("install", "write the units and reload systemd"), ("uninstall", "stop and remove them"),
                       ("render", "write the units into a folder (for review)")):
        sp = sd.add_parser(name, help=what)
        sp.add_argument("--unit-dir", default="/etc/systemd/system", help="where the units go")
        if name != "uninstall":
            sp.add_argument("--bin-dir", help="the folder of flatnet-engine etc. (default: this installation's)")
        sp.set_defaults(fn=cmd_systemd)
    from flatnet import install
    inst = sub.add_parser("install", help="set up this host around the venv (links, Podman, plugin, group)")
    uninst = sub.add_parser("uninstall", help="remove all that `install` added, the units and the venv")
    install.add_arguments(inst, uninst)
    inst.set_defaults(fn=install.cmd_install, parser=p)  # the completion script is made from it
    uninst.set_defaults(fn=install.cmd_uninstall)
    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash"], help="the shell")
    comp.set_defaults(fn=cmd_completion)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except Exception as exc:  # noqa: BLE001 - an operator gets a sentence, not a traceback
        from flatnet.engine.pki import PkiError
        if isinstance(exc, (PkiError, OSError, ValueError)):
            print(f"flatnet: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
