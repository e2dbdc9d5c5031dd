"""The HTTP gateway with a real nginx (Debian's lua module): two hosts with engines, a
lighthouse, and a gateway each; services in container namespaces; a LAN client on the
underlay. Publish, unpublish, a dead upstream, the overlay cut between the hosts."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from flatnet.engine.io import control
from flatnet import gateway
from flatnet.demo import CLIENT_IP, GATEWAY_PORT, Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import wait_for, wait_listening

pytestmark = pytest.mark.e2e

SERVER = textwrap.dedent("""
    import http.server, json, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"marker": sys.argv[2], "path": self.path,
                               "xff": self.headers.get("X-Forwarded-For"), "real_ip": self.headers.get("X-Real-IP"),
                               "proto": self.headers.get("X-Forwarded-Proto"), "host": self.headers.get("Host")}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    # a deeper accept queue than http.server's 5: the escalation tests send 20 requests a
    # second on a loaded machine, and a full queue drops SYNs (a health check timing out)
    http.server.ThreadingHTTPServer.request_queue_size = 128
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
""")


def start_server(ns: str, port: int, marker: str) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port), marker],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(ns, port)
    return p


def get(lab, host_ip: str, host: str, path: str = "/", scheme: str = "http", port: int = GATEWAY_PORT):
    """A request from the LAN client (the underlay namespace) to a gateway."""
    code = textwrap.dedent(f"""
        import json, ssl, sys, urllib.request, urllib.error
        ctx = ssl._create_unverified_context()
        req = urllib.request.Request("{scheme}://{host_ip}:{port}{path}", headers={{"Host": "{host}"}})
        try:
            r = urllib.request.urlopen(req, timeout=10, context=ctx)
            print(json.dumps([r.status, dict(r.headers), r.read().decode()]))
        except urllib.error.HTTPError as e:
            print(json.dumps([e.code, dict(e.headers), e.read().decode()]))
    """)
    out = sh(sys.executable, "-c", code, ns=lab.ul_ns, timeout=30).stdout.decode()
    return json.loads(out)


def peer_row(h, name: str) -> dict:
    status, body = control.request(h.socket, "GET", "/peers")
    assert status == 200
    return next(r for r in json.loads(body) if r["name"] == name)


def publish(h, name, ip, port):
    status, body = control.request(h.socket, "POST", "/services",
                                   json.dumps({"name": name, "addr": ip, "port": port}).encode())
    assert status == 200, body


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # not under pytest's 0700 tmp dir: nginx workers (www-data, group flatnet) must reach the
    # engine's socket; Lab.down removes the directory
    lab = Lab(f"{RUN_PREFIX}g", f"/tmp/{RUN_PREFIX}-gateway-lab", hosts=2, lighthouse=True, gateways=True)
    servers = []
    try:
        lab.up(containers_per_host=1)
        a, b = lab.hosts
        servers.append(start_server(a.containers[0]["ns"], 8000, "local-notes"))
        lab.wiki = start_server(b.containers[0]["ns"], 8000, "remote-wiki")
        servers.append(lab.wiki)
        yield lab
    finally:
        for s in servers + [getattr(lab, "wiki", None)]:
            if s:
                s.kill()
        lab.down()


def test_publish_local_and_remote_then_unpublish(lab):
    a, b = lab.hosts
    t0 = time.monotonic()
    publish(a, "notes", a.containers[0]["ip"], 8000)
    publish(b, "wiki", b.containers[0]["ip"], 8000)
    status, headers, body = wait_for(lambda: (r := get(lab, a.underlay_ip, "wiki")) and r[0] == 200 and r,
                                     5, "remote service through host-1's gateway")
    assert time.monotonic() - t0 < 4.0  # publish -> served, no reload (the issue asks 2 s per hop)
    doc = json.loads(body)
    assert doc["marker"] == "remote-wiki" and headers["X-Flatnet-Path"] == "overlay"
    assert doc["xff"] == CLIENT_IP and doc["real_ip"] == CLIENT_IP and doc["proto"] == "http"
    status, headers, body = get(lab, a.underlay_ip, "notes.flatnet.lan")
    assert status == 200 and json.loads(body)["marker"] == "local-notes"
    log = open(os.path.join(lab.gateway_prefix(a), "access.log")).read().splitlines()
    entry = json.loads(log[-1])
    assert entry["service"] == "notes" and entry["status"] == 200 and entry["host"] == "notes.flatnet.lan"

    status, _ = control.request(b.socket, "DELETE", "/services/wiki")
    assert status == 200
    status, _, body = wait_for(lambda: (r := get(lab, a.underlay_ip, "wiki")) and r[0] == 502 and r, 5,
                               "unpublished service gone")
    assert "wiki" in body
    publish(b, "wiki", b.containers[0]["ip"], 8000)
    wait_for(lambda: get(lab, a.underlay_ip, "wiki")[0] == 200, 5, "republished")


def test_unknown_host_is_a_clear_502(lab):
    status, _, body = get(lab, lab.hosts[0].underlay_ip, "nothing-here")
    assert status == 502 and "nothing-here" in body and "No Flatnet service" in body


def test_dead_upstream_503_then_back(lab):
    a, b = lab.hosts
    publish(b, "wiki", b.containers[0]["ip"], 8000)
    wait_for(lambda: get(lab, a.underlay_ip, "wiki")[0] == 200, 5, "served")
    lab.wiki.kill()
    lab.wiki.wait()
    status, _, body = wait_for(lambda: (r := get(lab, b.underlay_ip, "wiki")) and r[0] == 503 and r, 6,
                               "503 for a dead upstream")
    # the first answer names what failed (connection refused), the next ones say that
    # no upstream is healthy: both name the service (tests/e2e/test_escalation.py)
    assert "Service wiki is unavailable" in body and "Flatnet gateway" in body
    lab.wiki = start_server(b.containers[0]["ns"], 8000, "remote-wiki")
    wait_for(lambda: get(lab, b.underlay_ip, "wiki")[0] == 200, 6, "served again")


def test_overlay_cut_is_served_through_the_peer_gateway(lab):
    a, b = lab.hosts
    publish(b, "wiki", b.containers[0]["ip"], 8000)
    wait_for(lambda: (r := get(lab, a.underlay_ip, "wiki")) and r[0] == 200 and r[1]["X-Flatnet-Path"] == "overlay",
             8, "served over the overlay")
    rules = [["OUTPUT", "-d", b.underlay_ip, "-p", "udp", "--dport", "4787"],
             ["INPUT", "-s", b.underlay_ip, "-p", "udp", "--sport", "4787"]]
    for r in rules:
        sh("iptables", "-A", *r, "-j", "DROP", ns=a.ns)
    try:
        # the first requests are retried through host-2's gateway (the overlay bound);
        # the engine finds the direct path dead and moves host-2 to the relay (the
        # lighthouse), so the overlay serves again, relayed
        status, headers, body = get(lab, a.underlay_ip, "wiki")
        assert status == 200 and json.loads(body)["marker"] == "remote-wiki"
        wait_for(lambda: peer_row(a, b.name)["path"].startswith("relayed"), 10, "host-2 relayed")
        status, headers, body = wait_for(
            lambda: (r := get(lab, a.underlay_ip, "wiki")) and r[0] == 200 and r[1]["X-Flatnet-Path"] == "overlay"
            and r, 8, "served over the relayed overlay")
        assert json.loads(body)["marker"] == "remote-wiki"
    finally:
        for r in rules:
            sh("iptables", "-D", *r, "-j", "DROP", ns=a.ns)
    wait_for(lambda: peer_row(a, b.name)["path"].startswith("direct"), 25, "direct again")
    wait_for(lambda: (r := get(lab, a.underlay_ip, "wiki")) and r[0] == 200 and r[1]["X-Flatnet-Path"] == "overlay",
             5, "back on the overlay")


def test_tls_termination_with_a_self_signed_certificate(lab, tmp_path):
    a = lab.hosts[0]
    prefix = str(tmp_path / "tlsgw")
    cert, key = gateway.self_signed(str(tmp_path))
    gateway.render(prefix, f"{a.underlay_ip}:18080", a.socket, tls=(f"{a.underlay_ip}:18443", cert, key))
    gateway.start(prefix, netns=a.ns)
    try:
        publish(a, "notes", a.containers[0]["ip"], 8000)
        status, _, body = wait_for(lambda: (r := get(lab, a.underlay_ip, "notes", scheme="https", port=18443))
                                   and r[0] == 200 and r, 6, "served over TLS")
        assert json.loads(body)["proto"] == "https"
    finally:
        gateway.stop(prefix, netns=a.ns)


def test_status_page_api(lab):
    a = lab.hosts[0]
    status, _, body = get(lab, a.underlay_ip, "anything", "/_flatnet/api")
    doc = json.loads(body)
    assert status == 200 and doc["engine"]["node"] == a.name
    assert any(s["service"] == "wiki" for s in doc["services"])
    status, _, html = get(lab, a.underlay_ip, "anything", "/_flatnet/")
    assert status == 200 and "Flatnet" in html and "/_flatnet/api" in html


def test_lua_specs():
    proc = subprocess.run(["luajit", os.path.join(REPO, "gateway-lua", "spec", "run.lua")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed, 0 failed" in proc.stdout


def chromium(lab, url: str, host_ip: str, shot: str) -> str:
    """Headless Chromium as a LAN user (in the underlay namespace): the rendered DOM,
    and a screenshot kept as a test artifact."""
    os.makedirs(os.path.dirname(shot), exist_ok=True)
    common = ["ip", "netns", "exec", lab.ul_ns, "chromium", "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-dev-shm-usage", f"--host-resolver-rules=MAP * {host_ip}",
              "--virtual-time-budget=4000", "--window-size=1200,700"]
    profile = f"/tmp/{RUN_PREFIX}-chromium"
    try:
        subprocess.run(common + [f"--user-data-dir={profile}-shot", f"--screenshot={shot}", url],
                       capture_output=True, timeout=90)
        dom = subprocess.run(common + [f"--user-data-dir={profile}-dom", "--dump-dom", url], capture_output=True,
                             text=True, timeout=90).stdout
    finally:
        for suffix in ("-shot", "-dom"):
            subprocess.run(["rm", "-rf", profile + suffix])
    return dom


def test_browser_loads_a_container_page_and_the_status_page(lab):
    a, b = lab.hosts
    publish(b, "wiki", b.containers[0]["ip"], 8000)
    wait_for(lambda: get(lab, a.underlay_ip, "wiki")[0] == 200, 8, "served")
    artifacts = os.path.join(REPO, "test-artifacts")
    dom = chromium(lab, f"http://wiki:{GATEWAY_PORT}/", a.underlay_ip, os.path.join(artifacts, "gateway-wiki.png"))
    assert "remote-wiki" in dom  # the container's answer, rendered by the browser
    dom = chromium(lab, f"http://status:{GATEWAY_PORT}/_flatnet/", a.underlay_ip,
                   os.path.join(artifacts, "gateway-status.png"))
    assert "Flatnet" in dom and a.name in dom  # the page filled itself from /_flatnet/api
    assert "wiki" in dom and "healthy" in dom and b.name in dom
    assert os.path.getsize(os.path.join(artifacts, "gateway-status.png")) > 5000
