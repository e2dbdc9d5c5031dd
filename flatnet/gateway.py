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

from flatnet.paths import data_dir

PREFIX = "/var/lib/flatnet-gateway"
NGINX = "/usr/sbin/nginx"

CONF = os.path.join(data_dir("gateway-lua"), "conf")
LUA = os.path.join(data_dir("gateway-lua"), "lib")
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


def _tls(a: argparse.Namespace) -> tuple[str, str, str] | None:
    """--tls-listen with --tls-cert and --tls-key, or alone: a self-signed certificate."""
    if not a.tls_listen:
        if a.tls_cert or a.tls_key:
            raise ValueError("--tls-cert and --tls-key need --tls-listen IP:PORT")
        return None
    if bool(a.tls_cert) != bool(a.tls_key):
        raise ValueError("give both --tls-cert and --tls-key, or neither (a self-signed certificate)")
    cert, key = (a.tls_cert, a.tls_key) if a.tls_cert else self_signed(os.path.abspath(a.prefix))
    return a.tls_listen, cert, key


def _render(a: argparse.Namespace) -> str:
    return render(os.path.abspath(a.prefix), a.listen, a.engine_socket, tls=_tls(a),
                  load_modules=not a.no_load_modules, overlay_timeout=a.overlay_timeout)


def cmd_render(a: argparse.Namespace) -> int:
    print(_render(a))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    prefix = os.path.abspath(a.prefix)
    pid = running_pid(prefix)
    if pid is not None:
        print(f"flatnet: a gateway already runs with prefix {prefix} (pid {pid}); "
              f"stop it first: flatnet gateway stop --prefix {prefix}", file=sys.stderr)
        return 1
    conf = _render(a)
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
    tls = f" and {a.tls_listen} (TLS)" if a.tls_listen else ""
    print(f"gateway listening on {a.listen}{tls}; pid {running_pid(prefix)} in {os.path.join(prefix, 'nginx.pid')}; "
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
    """`flatnet gateway render|run|stop` (flatnet/main.py registers them here)."""
    gw = sub.add_parser("gateway", help="the HTTP gateway (nginx + gateway-lua) on this host").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    for name, what, fn in (("render", "write PREFIX/nginx.conf only", cmd_render),
                           ("run", "write the config, check it and start nginx", cmd_run),
                           ("stop", "stop the nginx started with this prefix", cmd_stop)):
        gp = gw.add_parser(name, help=what)
        gp.add_argument("--prefix", default=PREFIX, help=f"nginx's prefix: config, pid file, logs (default {PREFIX})")
        gp.add_argument("--nginx", default=NGINX, help=f"the nginx (or OpenResty) binary (default {NGINX})")
        gp.set_defaults(fn=fn)
        if name == "stop":
            gp.add_argument("--graceful", action="store_true", help="let requests in flight finish (SIGQUIT)")
            gp.add_argument("--wait", type=float, default=10.0, help="seconds to wait for it to exit")
            continue
        gp.add_argument("--listen", default="0.0.0.0:80", help="HTTP address, IP:PORT (default 0.0.0.0:80)")
        gp.add_argument("--engine-socket", default="/run/flatnet/engine.sock", help="the engine's control socket")
        gp.add_argument("--tls-listen", help="also serve HTTPS on this IP:PORT")
        gp.add_argument("--tls-cert", help="certificate for --tls-listen (default: a self-signed one)")
        gp.add_argument("--tls-key", help="key of --tls-cert")
        gp.add_argument("--overlay-timeout", type=float, default=OVERLAY_TIMEOUT,
                        help="seconds a remote service gets over the overlay (to connect, then to answer) before "
                             f"an idempotent request is retried through its host's gateway (default {OVERLAY_TIMEOUT:g})")
        gp.add_argument("--no-load-modules", action="store_true",
                        help="OpenResty: the Lua module is built in, load no Debian modules")
        if name == "run":
            gp.add_argument("--foreground", action="store_true", help="run nginx in this process (no daemon)")
