"""Render and run the nginx gateway (gateway-lua/conf) for one host.

`flatnet gateway run --prefix DIR --listen IP:PORT [--engine-socket S] [--tls-cert C --tls-key K]`
writes DIR/nginx.conf and starts nginx in the foreground-less daemon mode with that
prefix. OpenResty works the same with --nginx /usr/local/openresty/nginx/sbin/nginx
(its lua module is built in: --no-load-modules).
"""
from __future__ import annotations

import os
import subprocess

from flatnet_cli.paths import data_dir

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


def render(prefix: str, listen: str, engine_socket: str, tls: tuple[str, str, str] | None = None,
           load_modules: bool = True) -> str:
    """Write prefix/nginx.conf (and its include); returns the conf path."""
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
              "{{TLS}}": tls_block, "{{LOAD_MODULES}}": modules}
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
