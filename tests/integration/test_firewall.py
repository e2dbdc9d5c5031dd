"""The inbound firewall: rules by protocol, port and certificate group; replies to
connections the host opened come back in; everything else from peers is dropped and
counted."""
import json
import subprocess
import sys
import textwrap
import time

import pytest

from engine.io import control
from flatnet_cli.lab import Lab, sh
from tests.harness.netns import RUN_PREFIX

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


def test_rules_groups_and_replies(tmp_path):
    lab = Lab(f"{RUN_PREFIX}w", str(tmp_path / "lab"), hosts=3, groups={1: ["web"]}, extra_config={2: FIREWALL})
    servers = []
    try:
        lab.up(containers_per_host=1)
        web, guarded, other = lab.hosts
        target = guarded.containers[0]
        servers += [listen(target["ns"], 8000), listen(target["ns"], 9000)]
        time.sleep(0.5)
        assert connect(web.containers[0]["ns"], target["ip"], 8000)          # tcp/8000 from group web
        assert not connect(web.containers[0]["ns"], target["ip"], 9000)      # another port
        assert not connect(other.containers[0]["ns"], target["ip"], 8000)    # not in group web
        assert sh("ping", "-c", "1", "-W", "1", target["ip"], ns=web.containers[0]["ns"], check=False).returncode
        # the guarded host's own connections get their replies
        servers.append(listen(web.containers[0]["ns"], 7000))
        time.sleep(0.3)
        assert connect(target["ns"], web.containers[0]["ip"], 7000)
        assert sh("ping", "-c", "1", "-W", "2", web.containers[0]["ip"], ns=target["ns"], check=False).returncode == 0
        st = json.loads(control.get(guarded.socket, "/status")[1])
        assert st["drops"]["firewall"] >= 3
    finally:
        for s in servers:
            s.kill()
        lab.down()
