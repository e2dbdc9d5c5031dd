"""Render and run the nginx gateway (gateway-lua/conf) for one host.

`flatnet gateway run [--prefix DIR] [--listen IP:PORT] [--engine-socket S]
[--tls-listen IP:PORT --tls-cert C --tls-key K] [--overlay-timeout SECONDS] [--foreground]`
writes DIR/nginx.conf, checks it (nginx -t) and starts nginx with that prefix: as a
daemon whose pid is in DIR/nginx.pid, or with --foreground in this process (for
systemd or a terminal: Ctrl-C stops it). `flatnet gateway stop [--prefix DIR]` stops
it. OpenResty works the same with --nginx /usr/local/openresty/nginx/sbin/nginx (its
lua module is built in: --no-load-modules).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

PREFIX = "/var/lib/flatnet-gateway"
NGINX = "/usr/sbin/nginx"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "gateway-lua", "conf")
LUA = os.path.join(REPO, "gateway-lua", "lib")
DEBIAN_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")

TLS_BLOCK = """
    server {{
        listen {listen} ssl;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        include {prefix}/flatnet-locations.conf;
    }}
"""


OVERLAY_TIMEOUT = 3.0  # seconds a remote service gets over the overlay before the peer gateway


def render(prefix: str, listen: str, engine_socket: str, tls: tuple[str, str, str] | None = None,
           load_modules: bool = True, overlay_timeout: float = OVERLAY_TIMEOUT) -> str:
    """Write prefix/nginx.conf (and its include); returns the conf path."""
    if not 0.1 <= overlay_timeout <= 300:
        raise ValueError(f"overlay timeout {overlay_timeout:g} s: expected 0.1 to 300 seconds")
    os.makedirs(prefix, exist_ok=True)
    modules = "\n".join(f"load_module {m};" for m in DEBIAN_MODULES if os.path.exists(m)) if load_modules else ""
    tls_block = TLS_BLOCK.format(listen=tls[0], cert=tls[1], key=tls[2], prefix=prefix) if tls else ""
    try:
        import grp
        grp.getgrnam("flatnet")
        user = "user www-data flatnet;"
    except KeyError:  # no group (installer not run): workers could not read the engine's socket
        user = "user root;  # create group flatnet (scripts/install.sh) to drop this"
    values = {"{{USER}}": user, "{{PREFIX}}": prefix, "{{LUA_PATH}}": LUA, "{{LISTEN}}": listen, "{{ENGINE_SOCKET}}": engine_socket,
              "{{TLS}}": tls_block, "{{LOAD_MODULES}}": modules, "{{OVERLAY_TIMEOUT}}": f"{overlay_timeout:g}"}
    for name in ("nginx.conf", "flatnet-locations.conf"):
        with open(os.path.join(CONF, name)) as f:
            text = f.read()
        for key, value in values.items():
            text = text.replace(key, value)
        with open(os.path.join(prefix, name), "w") as f:
            f.write(text)
    return os.path.join(prefix, "nginx.conf")


def self_signed(prefix: str, name: str = "flatnet.lan") -> tuple[str, str]:
    """The documented quick path: a self-signed certificate for a first try (browsers warn)."""
    cert, key = os.path.join(prefix, "selfsigned.crt"), os.path.join(prefix, "selfsigned.key")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj",
                        f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}", "-keyout", key,
                        "-out", cert], check=True, capture_output=True)
        os.chmod(key, 0o600)
    return cert, key


def start(prefix: str, nginx: str = "/usr/sbin/nginx", netns: str | None = None) -> None:
    conf = os.path.join(prefix, "nginx.conf")
    argv = [nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"nginx did not start: {proc.stderr.strip()}")


def stop(prefix: str, nginx: str = "/usr/sbin/nginx", netns: str | None = None) -> None:
    pid_file = os.path.join(prefix, "nginx.pid")
    if not os.path.exists(pid_file):
        return
    argv = [nginx, "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"), "-s", "stop"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    subprocess.run(argv, capture_output=True, timeout=30)


def running_pid(prefix: str) -> int | None:
    """The pid in PREFIX/nginx.pid if that process is alive, else None."""
    try:
        with open(os.path.join(prefix, "nginx.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_run(a: argparse.Namespace) -> int:
    prefix = os.path.abspath(a.prefix)
    pid = running_pid(prefix)
    if pid is not None:
        print(f"flatnet: a gateway already runs with prefix {prefix} (pid {pid}); "
              f"stop it first: flatnet gateway stop --prefix {prefix}", file=sys.stderr)
        return 1
    tls = None
    if a.tls_listen or a.tls_cert or a.tls_key:
        if not (a.tls_listen and a.tls_cert and a.tls_key):
            print("flatnet: TLS needs all three of --tls-listen, --tls-cert and --tls-key", file=sys.stderr)
            return 2
        tls = (a.tls_listen, a.tls_cert, a.tls_key)
    conf = render(prefix, a.listen, a.engine_socket, tls=tls, load_modules=not a.no_load_modules,
                  overlay_timeout=a.overlay_timeout)
    base = [a.nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")]
    test = subprocess.run(base + ["-t", "-q"], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        print(f"flatnet: nginx refused {conf}: {test.stderr.strip()}", file=sys.stderr)
        return 1
    if a.foreground:
        # nginx in place of this process: signals (TERM, INT, QUIT, HUP) reach it directly
        sys.stdout.flush()
        os.execv(a.nginx, base + ["-g", "daemon off;"])
    try:
        start(prefix, a.nginx)
    except RuntimeError as exc:
        print(f"flatnet: {exc}", file=sys.stderr)
        return 1
    print(f"gateway listening on {a.listen}{' and ' + tls[0] + ' (TLS)' if tls else ''}; "
          f"pid {running_pid(prefix)} in {os.path.join(prefix, 'nginx.pid')}; "
          f"logs in {prefix}/error.log and access.log; stop: flatnet gateway stop --prefix {prefix}")
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    prefix = os.path.abspath(a.prefix)
    pid = running_pid(prefix)
    if pid is None:
        print(f"no gateway runs with prefix {prefix} (no live pid in {prefix}/nginx.pid)")
        return 0
    os.kill(pid, signal.SIGQUIT if a.graceful else signal.SIGTERM)
    end = time.monotonic() + a.wait
    while time.monotonic() < end:
        if running_pid(prefix) != pid:
            print(f"gateway stopped (pid {pid})")
            return 0
        time.sleep(0.1)
    print(f"flatnet: the gateway (pid {pid}) did not stop within {a.wait:g} s", file=sys.stderr)
    return 1


def add_commands(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    gw = sub.add_parser("gateway", help="the HTTP gateway (nginx + gateway-lua) of this host").add_subparsers(
        dest="sub", required=True)
    run = gw.add_parser("run", help="render the nginx config and start the gateway")
    run.add_argument("--prefix", default=PREFIX, help=f"nginx prefix: config, pid file, logs (default {PREFIX})")
    run.add_argument("--listen", default="0.0.0.0:80", help="HTTP address (default 0.0.0.0:80)")
    run.add_argument("--engine-socket", default="/run/flatnet/engine.sock")
    run.add_argument("--tls-listen", help="HTTPS address, e.g. 0.0.0.0:443 (with --tls-cert, --tls-key)")
    run.add_argument("--tls-cert")
    run.add_argument("--tls-key")
    run.add_argument("--overlay-timeout", type=float, default=OVERLAY_TIMEOUT,
                     help="seconds a remote service gets over the overlay (to connect, then to answer) before "
                          f"an idempotent request is retried through its host's gateway (default {OVERLAY_TIMEOUT:g})")
    run.add_argument("--foreground", action="store_true", help="run nginx in this process (no daemon)")
    run.add_argument("--nginx", default=NGINX, help=f"the nginx binary (default {NGINX})")
    run.add_argument("--no-load-modules", action="store_true", help="OpenResty: the lua module is built in")
    run.set_defaults(fn=cmd_run)
    stop_p = gw.add_parser("stop", help="stop the gateway started with this prefix")
    stop_p.add_argument("--prefix", default=PREFIX)
    stop_p.add_argument("--graceful", action="store_true", help="let requests in flight finish (SIGQUIT)")
    stop_p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for it to exit")
    stop_p.set_defaults(fn=cmd_stop)
