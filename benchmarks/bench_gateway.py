"""Requests/s and p99 latency through the Flatnet gateway (nginx + the Lua router) and
through a plain nginx `proxy_pass` to the same upstream, interleaved in one run (wrk,
bounded in time, loopback only). The upstream is an nginx serving a small static page,
so the proxies are what is measured; both write a JSON access log. Routes come from a
stand-in for the engine's control socket that serves one route table."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socketserver
import statistics
import subprocess
import tempfile
import threading
import time

from benchmarks.report import table, write_json
from flatnet import gateway

UPSTREAM, GATEWAY, PLAIN = 18901, 18902, 18903


def _nginx(prefix: str, server_block: str) -> None:
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; pid {prefix}/nginx.pid; error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{ log_format j escape=json '{{"time":"$time_iso8601","client":"$remote_addr","host":"$host","status":$status}}';
access_log {prefix}/access.log j; client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p; fastcgi_temp_path {prefix}/f;
uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s; {server_block} }}
""")
    subprocess.run(["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")], check=True, capture_output=True)


def _stop(prefix: str) -> None:
    subprocess.run(["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"), "-s", "stop"], capture_output=True)


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _fake_engine(path: str) -> _Engine:
    routes = json.dumps({"routes": [{"service": "bench", "host": "bench", "prefix": "/", "node": "here",
                                     "upstreams": [{"addr": f"127.0.0.1:{UPSTREAM}", "kind": "overlay"}]}]}).encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            body = routes if b"/routes" in line else b"{}"
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    server = _Engine(path, Handler)
    os.chmod(path, 0o666)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wrk(port: int, seconds: int, conns: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-H", "Host: bench",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "non_2xx": int(errors.group(1)) if errors else 0}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gateway", description=__doc__)
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("-t", "--time", type=int, default=10)
    p.add_argument("-c", "--connections", type=int, default=50)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    work = tempfile.mkdtemp(prefix="fnbench-gw-")
    os.chmod(work, 0o755)
    engine = _fake_engine(os.path.join(work, "engine.sock"))
    prefixes = [os.path.join(work, n) for n in ("upstream", "plain", "gateway")]
    results: dict[str, list[dict]] = {"plain nginx proxy_pass": [], "flatnet gateway": []}
    try:
        os.makedirs(os.path.join(prefixes[0], "www"))
        with open(os.path.join(prefixes[0], "www", "index.html"), "w") as f:
            f.write("hello from the upstream\n" * 20)
        _nginx(prefixes[0], f"server {{ listen 127.0.0.1:{UPSTREAM}; root {prefixes[0]}/www; }}")
        _nginx(prefixes[1], f"upstream u {{ server 127.0.0.1:{UPSTREAM}; keepalive 32; }} server {{ listen "
                            f"127.0.0.1:{PLAIN}; location / {{ proxy_http_version 1.1; proxy_set_header Connection \"\";"
                            f" proxy_set_header Host $host; proxy_pass http://u; }} }}")
        gateway.render(prefixes[2], f"127.0.0.1:{GATEWAY}", os.path.join(work, "engine.sock"))
        gateway.start(prefixes[2])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-H", "Host: bench", f"http://127.0.0.1:{GATEWAY}/"],
                              capture_output=True, text=True).stdout.count("Non-2xx") == 0:
                break
        for _ in range(a.reps):
            for name, port in (("plain nginx proxy_pass", PLAIN), ("flatnet gateway", GATEWAY)):
                results[name].append(wrk(port, a.time, a.connections))
    finally:
        for prefix in prefixes:
            _stop(prefix)
        engine.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    summary = {n: {"rps": statistics.median(r["rps"] for r in v), "p99_ms": statistics.median(r["p99_ms"] for r in v),
                   "non_2xx": sum(r["non_2xx"] for r in v)} for n, v in results.items()}
    base = summary["plain nginx proxy_pass"]
    rows = [[n, f"{s['rps']:.0f}", f"{s['p99_ms']:.2f}", s["non_2xx"],
             f"{(1 - s['rps'] / base['rps']) * 100:+.1f}%", f"{(s['p99_ms'] / base['p99_ms'] - 1) * 100:+.1f}%"]
            for n, s in summary.items()]
    print(table(["proxy", "requests/s", "p99 ms", "non-2xx", "throughput cost", "p99 cost"], rows))
    print(f"\nmedians of {a.reps} interleaved runs, wrk -t2 -c{a.connections} -d{a.time}s; goal: router costs <= 10%")
    write_json(a.json, "gateway", {"summary": summary, "runs": results})
    return 0
