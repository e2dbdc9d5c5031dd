"""The inbound firewall: rules by protocol, port and certificate group; replies to
connections the host opened come back in; everything else from peers is dropped and
counted."""
import json
import subprocess
import sys
import textwrap

import pytest

from flatnet.engine.io import control
from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import wait_for, wait_listening

pytestmark = pytest.mark.integration

FIREWALL = """
[firewall]
default = "deny"
[[firewall.inbound]]
proto = "tcp"
port = "8000"
groups = ["web"]
"""


def listen(ns: str, port: int) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", {port})); s.listen(8)
        while True:
            c, _ = s.accept(); c.sendall(b"hello"); c.close()
    """)
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])


def connect(ns: str, ip: str, port: int) -> bool:
    code = f"import socket; s = socket.create_connection(('{ip}', {port}), timeout=2); print(s.recv(5).decode())"
    return sh(sys.executable, "-c", code, ns=ns, check=False, timeout=20).stdout.decode().strip() == "hello"


def firewall_drops(host) -> int:  # noqa: ANN001
    return json.loads(control.get(host.socket, "/status")[1])["drops"]["firewall"]


def test_rules_groups_and_replies(tmp_path):
    """Each refusal is proven against its positive twin: the listener is up (a client
    the rule allows connects to it), the path between the two hosts works, and the
    refused attempt adds to the firewall's drop counter (not a timeout for another reason)."""
    lab = Lab(f"{RUN_PREFIX}w", str(tmp_path / "lab"), hosts=3, groups={1: ["web"]}, extra_config={2: FIREWALL})
    servers = []
    try:
        lab.up(containers_per_host=1)
        web, guarded, other = lab.hosts
        target = guarded.containers[0]
        servers += [listen(target["ns"], 8000), listen(target["ns"], 9000)]
        wait_listening(target["ns"], 8000)
        wait_listening(target["ns"], 9000)
        assert connect(target["ns"], "127.0.0.1", 9000)                     # the 9000 listener answers locally
        assert connect(web.containers[0]["ns"], target["ip"], 8000)          # tcp/8000 from group web
        drops = firewall_drops(guarded)
        assert not connect(web.containers[0]["ns"], target["ip"], 9000)      # the same client, another port
        drops = wait_for(lambda: firewall_drops(guarded) > drops and firewall_drops(guarded), 5,
                         "the refused connect to port 9000 counted as a firewall drop")
        # the guarded host's own connections get their replies (and this proves the path to `other`)
        servers += [listen(web.containers[0]["ns"], 7000), listen(other.containers[0]["ns"], 7000)]
        wait_listening(web.containers[0]["ns"], 7000)
        wait_listening(other.containers[0]["ns"], 7000)
        assert connect(target["ns"], web.containers[0]["ip"], 7000)
        assert connect(target["ns"], other.containers[0]["ip"], 7000)
        assert sh("ping", "-c", "1", "-W", "2", web.containers[0]["ip"], ns=target["ns"], check=False).returncode == 0
        drops = firewall_drops(guarded)
        assert not connect(other.containers[0]["ns"], target["ip"], 8000)    # port 8000 open, host not in group web
        drops = wait_for(lambda: firewall_drops(guarded) > drops and firewall_drops(guarded), 5,
                         "the refused connect from outside group web counted as a firewall drop")
        assert sh("ping", "-c", "1", "-W", "1", target["ip"], ns=web.containers[0]["ns"], check=False).returncode
        wait_for(lambda: firewall_drops(guarded) > drops, 5, "the refused ping counted as a firewall drop")
    finally:
        for s in servers:
            s.kill()
        lab.down()
