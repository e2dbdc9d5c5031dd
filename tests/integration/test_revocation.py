"""Revocation across namespaces: two hosts talk through a lighthouse's discovery; the
operator revokes host-2 with `flatnet cert revoke`; within seconds host-1 tears the
session down and traffic stops, and host-2 can no longer register; host-2 gets a new
key and certificate and rejoins while host-1 and the lighthouse keep running."""
import os
import subprocess
import sys
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import file_contains, seconds_until, wait_for

pytestmark = pytest.mark.integration


def ping_until(src_ns: str, ip: str, seconds: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if sh("ping", "-c", "1", "-W", "1", ip, ns=src_ns, check=False).returncode == 0:
            return time.monotonic() - t0
    return None


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "flatnet", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def lab(tmp_path):
    lab = Lab(f"{RUN_PREFIX}v", str(tmp_path / "lab"), hosts=2, lighthouse=True)
    try:
        lab.up(containers_per_host=1)
        yield lab
    finally:
        lab.down()


def test_revoked_host_is_cut_off_within_seconds_and_rejoins_with_a_new_key(lab):
    a, b = lab.hosts
    pki = os.path.join(lab.workdir, "pki")
    a_ns, b_ip = a.containers[0]["ns"], b.containers[0]["ip"]
    assert ping_until(a_ns, b_ip, 15) is not None
    assert any(p["name"] == b.name and p["state"] == "established" for p in lab.peers(a))
    old_fp = next(p["fingerprint"] for p in lab.peers(a) if p["name"] == b.name)
    a_pid, lh_pid = a.pid, lab.lh_pid

    # the operator revokes host-2 (the lab's lighthouse reads the blocklist beside ca.crt)
    cli("cert", "revoke", b.name, "--ca-dir", pki)
    took = seconds_until(lambda: all(p["name"] != b.name for p in lab.peers(a)), 10,
                         "host-1 tore down its session with the revoked host-2")
    assert took < 5, f"host-1 still had a session with host-2 after {took} s"
    print(f"revoke -> host-1 tore down host-2's session in {took:.2f} s")
    st = lab.status(a)
    assert st["revoked_peers"][b.name]["fingerprint"] == old_fp and st["blocklist"]["names"] == [b.name]
    with open(a.log) as f:
        assert "peer_revoked" in f.read()
    from flatnet.engine.io import control
    metrics = control.get(a.socket, "/metrics")[1].decode()
    serial = next(line.split()[1] for line in metrics.splitlines() if line.startswith("flatnet_blocklist_serial "))
    assert float(serial) == st["blocklist"]["serial"]
    # traffic stops, both ways
    assert sh("ping", "-c", "3", "-W", "1", b_ip, ns=a_ns, check=False).returncode != 0
    assert sh("ping", "-c", "3", "-W", "1", a.containers[0]["ip"], ns=b.containers[0]["ns"],
              check=False).returncode != 0
    # host-2 cannot get back in: the lighthouse refuses its handshakes, so no register, no query
    wait_for(lambda: lab.lighthouse_status()["control_errors"].get("revoked_cert", 0) > 0, 15,
             "the lighthouse refused a handshake of the revoked host-2")
    assert b.name not in lab.lighthouse_status()["nodes"]
    # host-2 learns it at its next register, which stays unanswered (every 10 s, answer within a few s)
    assert wait_for(lambda: lab.status(b)["lighthouses"] == {"lighthouse": "unregistered"}, 20, 0.3) is not None

    # re-enrolment: a new key and certificate for the same name; only host-2 restarts
    for ext in ("key", "crt"):
        os.unlink(os.path.join(pki, f"{b.name}.{ext}"))
    cli("cert", "sign", "--ca-dir", pki, "--name", b.name)
    lab.stop_engine(b)
    os.unlink(os.path.join(b.dir, "run", "lease.json"))
    lab.start_engine(b)
    lab.wait_engine(b)
    rejoin = ping_until(a_ns, b_ip, 20)
    assert rejoin is not None
    print(f"re-enrolled host-2 answered {rejoin:.2f} s after its engine started")
    row = next(p for p in lab.peers(a) if p["name"] == b.name)
    assert row["state"] == "established" and row["fingerprint"] != old_fp
    assert b.name not in lab.status(a)["revoked_peers"]
    assert (a.pid, lab.lh_pid) == (a_pid, lh_pid)  # nothing else restarted


def test_static_peers_enforce_a_local_blocklist_file_set_on_reload(tmp_path):
    """No lighthouse: the operator points [pki] blocklist at a copy of the file and
    reloads; a later revocation in that file ends the session within seconds."""
    import signal
    lab = Lab(f"{RUN_PREFIX}w", str(tmp_path / "lab"), hosts=2)
    try:
        lab.up(containers_per_host=1)
        a, b = lab.hosts
        pki = os.path.join(lab.workdir, "pki")
        assert ping_until(a.containers[0]["ns"], b.containers[0]["ip"], 10) is not None
        with open(a.config) as f:
            text = f.read()
        with open(a.config, "w") as f:
            f.write(text.replace("[pki]\n", f'[pki]\nblocklist = "{pki}/blocklist.bin"\n', 1))
        os.kill(a.pid, signal.SIGHUP)
        wait_for(lambda: file_contains(a.log, "reloaded"), 10, "host-1 logged its reload")
        cli("cert", "revoke", b.name, "--ca-dir", pki)
        took = seconds_until(lambda: all(p["name"] != b.name for p in lab.peers(a)), 10,
                             "host-1 tore down its session with the revoked host-2")
        assert took < 5
        assert lab.status(a)["revoked_peers"][b.name]["reason"].startswith("name 'host-2' revoked")
        assert sh("ping", "-c", "2", "-W", "1", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                  check=False).returncode != 0
    finally:
        lab.down()
