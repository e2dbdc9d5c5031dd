"""The gateway's route table with a real nginx (Debian's lua module) and a fake engine:
one bad route among good ones is dropped alone and reported, the good ones are served
(issue 13 item 6). Everything runs in a namespace of the test's own, on its loopback."""
import json
import os
import shutil
import socketserver
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from flatnet import gateway
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="needs nginx")]

LISTEN = "127.0.0.1:18080"
GOOD, OTHER = 18001, 18002
ROUTES = {"routes": [
    {"service": "wiki", "host": "wiki.office.lan", "prefix": "/", "node": "host-b",
     "upstreams": [{"addr": f"127.0.0.1:{GOOD}", "kind": "overlay"}]},
    {"service": "cafe", "host": "café.office.lan", "prefix": "/", "node": "host-b",       # not punycode
     "upstreams": [{"addr": f"127.0.0.1:{OTHER}", "kind": "overlay"}]},
    {"service": "my_app", "host": "my_app", "prefix": "/", "node": "host-c",              # '_' in both
     "upstreams": [{"addr": f"127.0.0.1:{OTHER}", "kind": "overlay"}]},
    {"service": "notes", "host": "notes", "prefix": "/", "node": "host-a",
     "upstreams": [{"addr": f"127.0.0.1:{OTHER}", "kind": "overlay"}]},
], "rejected": [{"name": "docs", "host": "", "source": "lighthouse lh",
                 "reason": "service 'docs': name 'docs' is already published by node host-b"}]}

SERVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = sys.argv[2].encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class EngineAPI(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/routes": ROUTES, "/status": {"node": "host-a"}, "/peers": []}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "engine"

    def log_message(self, *a):
        pass


@pytest.fixture
def gw(netns_factory):
    ns = netns_factory("gw")
    prefix = f"/tmp/{RUN_PREFIX}-gwroutes"  # not pytest's 0700 tmp: nginx workers (www-data) read it
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    os.chmod(prefix, 0o755)
    sock = os.path.join(prefix, "engine.sock")
    engine = FakeEngine(sock, EngineAPI)
    os.chmod(sock, 0o666)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    try:
        for port, marker in ((GOOD, "wiki-upstream"), (OTHER, "other-upstream")):
            ns.run("sh", "-c", f"{sys.executable} -c '{SERVER}' {port} {marker} >/dev/null 2>&1 &")
        gateway.render(prefix, LISTEN, sock)
        gateway.start(prefix, netns=ns.name)
        yield ns, prefix
    finally:
        gateway.stop(prefix, netns=ns.name)
        engine.shutdown()
        engine.server_close()
        ns.delete()  # kills the upstream servers and any nginx left
        shutil.rmtree(prefix, ignore_errors=True)


def get(ns, host, path="/"):
    code = textwrap.dedent(f"""
        import json, urllib.request, urllib.error
        req = urllib.request.Request("http://{LISTEN}{path}", headers={{"Host": {host!r}}})
        try:
            r = urllib.request.urlopen(req, timeout=5)
            print(json.dumps([r.status, r.read().decode()]))
        except urllib.error.HTTPError as e:
            print(json.dumps([e.code, e.read().decode()]))
        except OSError as e:
            print(json.dumps([0, str(e)]))
    """)
    return json.loads(ns.run(sys.executable, "-c", code).stdout)


def test_one_bad_route_leaves_the_good_ones_served(gw):
    """Before: config.validate refused the whole table at the first bad host ('café'),
    so 'wiki' and 'notes' answered 502 as well."""
    ns, prefix = gw

    def served(host):  # the feed reads the engine and checks upstreams every second
        return wait_for(lambda: (status := get(ns, host))[0] == 200 and status, 10, f"{host} served")

    assert served("wiki.office.lan") == [200, "wiki-upstream"]
    assert served("notes") == [200, "other-upstream"]
    assert get(ns, "my_app")[0] == 502

    api = json.loads(get(ns, "anything", "/_flatnet/api")[1])
    assert sorted(s["service"] for s in api["services"]) == ["notes", "wiki"]
    reasons = {(r["service"], r["source"]): r["reason"] for r in api["rejected"]}
    assert reasons[("cafe", "gateway")] == ("routes[2].host: not ASCII: write international names in punycode "
                                            "(xn--...)")
    assert reasons[("my_app", "gateway")] == ("routes[3].service: character '_' is not allowed "
                                              "(use a-z, 0-9 and '-')")
    assert "already published by node host-b" in reasons[("docs", "lighthouse lh")]
    assert api.get("feed_error") is None

    log = open(os.path.join(prefix, "error.log"), encoding="utf-8", errors="replace").read()
    assert "route dropped: routes[2].host: not ASCII" in log and "(service cafe, host café.office.lan)" in log
    assert "route dropped: routes[3].service" in log
