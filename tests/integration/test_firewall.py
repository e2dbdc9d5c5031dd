"""The inbound firewall: rules by protocol, port and certificate group; replies to
connections the host opened come back in; everything else from peers is dropped and
counted."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from flatnet.engine.io import control
from flatnet.demo import Lab, sh
from tests.harness.cni import REPO
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


GROUP_DB = """
[firewall]
default = "deny"
[[firewall.inbound]]
proto = "tcp"
port = "8000"
groups = ["db"]
[[firewall.inbound]]
proto = "tcp"
port = "9000"
"""


def peer_row(lab, host, name: str) -> dict:  # noqa: ANN001
    return next(p for p in lab.peers(host) if p["name"] == name)


def restart_renewed(lab, host, groups: str, guarded) -> None:  # noqa: ANN001
    """`flatnet cert renew --groups` for `host` (same name, key, address) and a restart
    of its engine only; returns once `guarded` finished a handshake with the new certificate
    (a new fingerprint in its peer table: the engine without the fix keeps the old one)."""
    old = peer_row(lab, guarded, host.name)
    proc = subprocess.run([sys.executable, "-m", "flatnet", "cert", "renew", "--ca-dir",
                           os.path.join(lab.workdir, "pki"), "--name", host.name, "--groups", groups],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lab.stop_engine(host)
    lab.start_engine(host)
    lab.wait_engine(host)

    def handshook() -> bool:
        try:  # the restarted engine's socket may not answer yet
            return (peer_row(lab, guarded, host.name)["handshakes"] > old["handshakes"]
                    and peer_row(lab, host, guarded.name)["state"] == "established")
        except (OSError, ValueError, StopIteration):
            return False
    wait_for(handshook, 15, f"{guarded.name} finished a handshake with the restarted {host.name}")


def check_db_access(lab, client: dict, target: dict, guarded, in_db: bool) -> None:  # noqa: ANN001
    """tcp/8000 passes exactly when host-1 is in group db; tcp/9000 (no group) proves
    the path and the listener first, and a refusal must count as a firewall drop."""
    assert connect(client["ns"], target["ip"], 9000)
    if in_db:
        assert connect(client["ns"], target["ip"], 8000), "tcp/8000 closed to host-1 although it is in group db"
        return
    drops = firewall_drops(guarded)
    assert not connect(client["ns"], target["ip"], 8000), "tcp/8000 open to host-1 although it left group db"
    wait_for(lambda: firewall_drops(guarded) > drops, 5, "the refused connect to 8000 counted as a firewall drop")


@pytest.mark.parametrize("first", [["db"], []], ids=["db-removed-then-added", "db-added-then-removed"])
def test_groups_follow_the_certificate_presented_in_the_current_handshake(tmp_path, first):
    """host-2 lets tcp/8000 in for group db only (tcp/9000 for all). host-1's
    certificate changes group db twice, each time by `flatnet cert renew --groups` and
    a restart of host-1 only (same name, key and address); host-2 keeps running and
    judges by the certificate host-1 presented in the latest handshake (decision 42)."""
    lab = Lab(f"{RUN_PREFIX}g", str(tmp_path / "lab"), hosts=2, groups={1: first}, extra_config={2: GROUP_DB})
    servers = []
    try:
        lab.up(containers_per_host=1)
        member, guarded = lab.hosts
        target, client = guarded.containers[0], member.containers[0]
        servers += [listen(target["ns"], 8000), listen(target["ns"], 9000)]
        wait_listening(target["ns"], 8000)
        wait_listening(target["ns"], 9000)
        guarded_pid = guarded.pid
        in_db = bool(first)
        check_db_access(lab, client, target, guarded, in_db)  # the twin of what the renewal changes
        for _ in range(2):
            in_db = not in_db
            restart_renewed(lab, member, "db" if in_db else "", guarded)
            check_db_access(lab, client, target, guarded, in_db)
            assert peer_row(lab, guarded, member.name)["groups"] == (["db"] if in_db else [])
        assert guarded.pid == guarded_pid  # host-2 was never restarted
        with open(guarded.log) as f:
            assert f.read().count("peer_certificate") >= 2
    finally:
        for s in servers:
            s.kill()
        lab.down()
