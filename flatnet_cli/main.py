"""flatnet: the operator's command.

    flatnet ca init   --dir DIR [--name N] [--days D]
    flatnet cert sign --ca-dir DIR --name N [--groups a,b] [--out-dir DIR] [--days D]
    flatnet status [--json] [--socket PATH]
    flatnet peers  [--json] [--socket PATH]
    flatnet service publish NAME (--container C | --addr IP) --port P [--host H] [--prefix /p]
    flatnet service unpublish NAME
    flatnet service list [--json]
    flatnet doctor [--gateway URL]            check this host and explain problems
    flatnet up [--hosts N] [--containers M]   a local test network in namespaces
    flatnet down
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_SOCKET = "/run/flatnet/engine.sock"
DAY = 86400


def cmd_ca_init(a: argparse.Namespace) -> int:
    from nacl.signing import SigningKey
    from engine import pki
    from engine.proto import cert as certs
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
    from engine import pki
    from engine.proto import cert as certs
    from engine.proto.noise import generate_keypair
    ca = pki.load_ca(os.path.join(a.ca_dir, "ca.crt"))
    ca_key = SigningKey(pki.read_secret(os.path.join(a.ca_dir, "ca.key")))
    out = a.out_dir or a.ca_dir
    key_path, crt_path = os.path.join(out, f"{a.name}.key"), os.path.join(out, f"{a.name}.crt")
    if os.path.exists(key_path):
        print(f"flatnet: {key_path} exists; remove it first to issue a new key", file=sys.stderr)
        return 1
    private, public = generate_keypair()
    now = int(time.time())
    groups = [g for g in (a.groups or "").split(",") if g]
    raw = certs.sign_node(ca_key, ca, a.name, public, groups, now - 60, now + a.days * DAY)
    pki.write_secret(key_path, private)
    pki.write_public(crt_path, raw)
    print(f"node {a.name!r}: certificate {crt_path}, key {key_path}, groups {groups or '-'}")
    return 0


def cmd_cert_renew(a: argparse.Namespace) -> int:
    """A new certificate for the same key (the node keeps its identity and sessions)."""
    from nacl.signing import SigningKey
    from engine import pki
    from engine.proto import cert as certs
    ca = pki.load_ca(os.path.join(a.ca_dir, "ca.crt"))
    ca_key = SigningKey(pki.read_secret(os.path.join(a.ca_dir, "ca.key")))
    crt_path = os.path.join(a.cert_dir or a.ca_dir, f"{a.name}.crt")
    old, _, _ = certs.decode(pki.read_file(crt_path, "certificate"))
    now = int(time.time())
    raw = certs.sign_node(ca_key, ca, old.name, old.key, list(old.groups), now - 60, now + a.days * DAY)
    if os.path.exists(crt_path):
        os.replace(crt_path, crt_path + ".old")
    pki.write_public(crt_path, raw)
    print(f"node {old.name!r}: renewed {crt_path} for {a.days} days (old one kept as {crt_path}.old); "
          "reload the engine: systemctl reload flatnet-engine (or kill -HUP)")
    return 0


def _api(sock: str, url: str) -> object:
    from engine.io import control
    try:
        status, body = control.get(sock, url)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SystemExit(f"flatnet: no engine answers on {sock} (is flatnet-engine running? "
                         "systemctl status flatnet-engine)") from None
    if status != 200:
        raise SystemExit(f"flatnet: engine answered {status}: {body.decode(errors='replace')}")
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
          f"uptime    {st['uptime']} s\npeers     {st['peers_up']} up / {st['peers']} known\n"
          f"cipher    {st.get('offloads', {}).get('cipher', '?')}\n"
          f"drops     {', '.join(f'{k}={v}' for k, v in drops.items()) or 'none'}\n"
          f"cert      expires in {st['cert_expires_in_days']} days")
    if st["cert_expires_in_days"] < 30:
        print(f"WARNING: this node's certificate expires in {st['cert_expires_in_days']} days: run "
              "`flatnet cert renew` and reload the engine")
    return 0


def cmd_peers(a: argparse.Namespace) -> int:
    rows = _api(a.socket, "/peers")
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ["PEER", "SUBNET", "STATE", "PATH", "ENDPOINT", "HANDSHAKE", "TX", "RX", "DROPS", "WHY"]
    table = [[r["name"], r["subnet"] or "-", r["state"], r["path"], r["endpoint"] or "-",
              f"{r['handshake_age']:.0f}s ago" if r["handshake_age"] is not None else "never",
              _bytes(r["tx_bytes"]), _bytes(r["rx_bytes"]), r["rx_dropped"],
              r["last_error"] or (r["path_reason"] if r["path"].startswith("relayed") else "") or ""] for r in rows]
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


def cmd_service(a: argparse.Namespace) -> int:
    from engine.io import control
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
    else:
        print(json.dumps(doc, indent=1))
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from flatnet_cli import doctor
    findings, rc = doctor.run(a.socket, a.lease_file, a.gateway, not a.no_podman)
    print(doctor.report(findings))
    return rc


LAB_DIR = "/var/lib/flatnet-lab"
LAB_PREFIX = "fnlab"


def cmd_up(a: argparse.Namespace) -> int:
    import subprocess
    from flatnet_cli.lab import Lab
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


def cmd_down(a: argparse.Namespace) -> int:
    from flatnet_cli.lab import Lab
    if not os.path.exists(os.path.join(a.dir, "lab.json")):
        print(f"no lab is up ({a.dir}/lab.json not found)")
        return 0
    Lab.load(a.dir).down()
    print("lab removed: engines stopped, namespaces deleted, state removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flatnet", description="Flatnet: flat encrypted networking for Podman")
    sub = p.add_subparsers(dest="cmd", required=True)
    ca = sub.add_parser("ca", help="network certificate authority").add_subparsers(dest="sub", required=True)
    init = ca.add_parser("init", help="create the network CA")
    init.add_argument("--dir", default="/etc/flatnet/pki")
    init.add_argument("--name", default="flatnet-ca")
    init.add_argument("--days", type=int, default=3650)
    init.add_argument("--force", action="store_true")
    init.set_defaults(fn=cmd_ca_init)
    cert = sub.add_parser("cert", help="node certificates").add_subparsers(dest="sub", required=True)
    sign = cert.add_parser("sign", help="create a node key and certificate")
    sign.add_argument("--ca-dir", default="/etc/flatnet/pki")
    sign.add_argument("--name", required=True)
    sign.add_argument("--groups", default="")
    sign.add_argument("--out-dir")
    sign.add_argument("--days", type=int, default=365)
    sign.set_defaults(fn=cmd_cert_sign)
    renew = cert.add_parser("renew", help="a new certificate for an existing node key")
    renew.add_argument("--ca-dir", default="/etc/flatnet/pki")
    renew.add_argument("--name", required=True)
    renew.add_argument("--cert-dir", help="where NAME.crt is (default: the CA dir)")
    renew.add_argument("--days", type=int, default=365)
    renew.set_defaults(fn=cmd_cert_renew)
    for name, fn in (("status", cmd_status), ("peers", cmd_peers)):
        sp = sub.add_parser(name)
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--socket", default=DEFAULT_SOCKET)
        sp.set_defaults(fn=fn)
    svc = sub.add_parser("service", help="publish container services to the gateways").add_subparsers(
        dest="sub", required=True)
    pub = svc.add_parser("publish")
    pub.add_argument("name")
    which = pub.add_mutually_exclusive_group(required=True)
    which.add_argument("--container", help="a Podman container on the flatnet network")
    which.add_argument("--addr", help="the container's Flatnet IP")
    pub.add_argument("--port", type=int, required=True)
    pub.add_argument("--host", help="the Host name to route (default: NAME and NAME.<domain>)")
    pub.add_argument("--prefix", default="/")
    unp = svc.add_parser("unpublish")
    unp.add_argument("name")
    lst = svc.add_parser("list")
    lst.add_argument("--json", action="store_true")
    for sp in (pub, unp, lst):
        sp.add_argument("--socket", default=DEFAULT_SOCKET)
        sp.set_defaults(fn=cmd_service, json=getattr(sp, "json", False))
    doc = sub.add_parser("doctor", help="check this host end to end and explain problems")
    doc.add_argument("--socket", default=DEFAULT_SOCKET)
    doc.add_argument("--lease-file", default="/run/flatnet/lease.json")
    doc.add_argument("--gateway", help="also check the gateway at this URL, e.g. http://127.0.0.1")
    doc.add_argument("--no-podman", action="store_true", help="skip the Podman checks")
    doc.set_defaults(fn=cmd_doctor)
    up = sub.add_parser("up", help="bring up a local test network (hosts in network namespaces)")
    up.add_argument("--hosts", type=int, default=3, choices=range(2, 10), metavar="N (2-9)")
    up.add_argument("--containers", type=int, default=1)
    up.add_argument("--dir", default=LAB_DIR)
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="remove the local test network")
    down.add_argument("--dir", default=LAB_DIR)
    down.set_defaults(fn=cmd_down)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except Exception as exc:  # noqa: BLE001 - an operator gets a sentence, not a traceback
        from engine.pki import PkiError
        if isinstance(exc, (PkiError, OSError, ValueError)):
            print(f"flatnet: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
