"""What an operator relies on: Prometheus metrics (checked by promtool, scraped by a
real Prometheus), no secrets in logs."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from flatnet.engine.io import control
from flatnet.demo import METRICS_PORT, Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.wait import file_contains, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}o", str(tmp_path_factory.mktemp("ops")), hosts=2, lighthouse=True)
    try:
        lab.up(containers_per_host=1)
        a, b = lab.hosts
        wait_for(lambda: sh("ping", "-c", "1", "-W", "1", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                            check=False).returncode == 0, 15, "host-1's container reaches host-2's")
        yield lab
    finally:
        lab.down()


def promtool_ok(text: bytes) -> None:
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_engine_metrics_pass_promtool_and_say_what_happened(lab):
    a, b = lab.hosts
    status, text = control.get(a.socket, "/metrics")
    assert status == 200
    promtool_ok(text)
    body = text.decode()
    tx = re.search(r'flatnet_peer_tx_packets_total\{peer="%s"\} (\S+)' % b.name, body)
    assert tx and float(tx.group(1)) >= 1
    assert re.search(r'flatnet_peer_up\{peer="%s"\} 1.0' % b.name, body)
    # With relay first, the relayed copy of the first handshake can win the race; the
    # session then moves direct at the first probe 0.5 s later (docs/lighthouse.md, Paths).
    direct = r'flatnet_peer_path\{path="direct-LAN",peer="%s"\} 1.0' % b.name
    wait_for(lambda: re.search(direct, control.get(a.socket, "/metrics")[1].decode()), 3,
             "host-2's path is direct-LAN in host-1's metrics", step=0.1)
    assert re.search(r'flatnet_cni_operations_total\{command="ADD",network="flatnet",result="ok"\} 1.0', body)
    assert 'flatnet_drops_total{reason="replay"}' in body
    assert 'flatnet_drops_total{reason="destination_not_allowed"}' in body
    assert "flatnet_cert_expiry_seconds" in body


def test_lighthouse_metrics_pass_promtool(lab):
    status, text = control.get(os.path.join(lab.workdir, "lighthouse", "run", "lighthouse.sock"), "/metrics")
    assert status == 200
    promtool_ok(text)
    assert "flatnet_lighthouse_nodes 2.0" in text.decode()


def test_a_real_prometheus_scrapes_the_engine(lab, tmp_path):
    a = lab.hosts[0]
    conf = tmp_path / "prometheus.yml"
    conf.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flatnet\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n")
    os.chmod(tmp_path, 0o755)
    prom = subprocess.Popen(["ip", "netns", "exec", a.ns, "prometheus", f"--config.file={conf}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", "--web.listen-address=127.0.0.1:19090"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = ("import json, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:19090/api/v1/query?"
                 "query=flatnet_peer_up', timeout=3).read().decode())")
        def scraped() -> list:
            out = sh("python3", "-c", query, ns=a.ns, check=False).stdout.decode()
            return json.loads(out)["data"]["result"] if out.strip() else []
        result = wait_for(scraped, 30, "Prometheus scraped flatnet_peer_up", step=0.5)
        assert {r["metric"]["peer"] for r in result} >= {lab.hosts[1].name}
    finally:
        prom.terminate()
        prom.wait(timeout=10)


def test_no_key_or_secret_in_any_log(lab):
    secrets = []
    pki = os.path.join(lab.workdir, "pki")
    for name in os.listdir(pki):
        if name.endswith(".key"):
            secrets.append(open(os.path.join(pki, name)).read().strip())
    logs = [h.log for h in lab.hosts] + [os.path.join(lab.workdir, "lighthouse", "lighthouse.log")]
    text = "".join(open(p).read() for p in logs)
    assert "handshake_done" in text  # the logs are there and say things
    for secret in secrets:
        assert secret not in text and secret[:16] not in text
    assert not re.search(r"[0-9a-f]{64}", text), "a 32-byte hex value (a key?) was logged"


def test_sighup_reloads_without_dropping_sessions(lab):
    a, b = lab.hosts
    before = next(p for p in lab.peers(a) if p["name"] == b.name)
    # renew host-1's certificate (same key) and raise its log level, then SIGHUP
    subprocess.run([sys.executable, "-m", "flatnet", "cert", "renew", "--ca-dir",
                    os.path.join(lab.workdir, "pki"), "--name", a.name, "--days", "30"], cwd=REPO, check=True,
                   capture_output=True)
    with open(a.config) as f:
        text = f.read()
    # ... and change the load moderation (live) and the spin (needs a restart)
    assert "moderation_us = 100" in text and "spin = true" in text
    with open(a.config, "w") as f:
        f.write(text.replace("moderation_us = 100", "moderation_us = 250").replace("spin = true", "spin = false")
                + '[log]\nlevel = "debug"\n')
    os.kill(a.pid, signal.SIGHUP)  # `ip netns exec` execs the engine: same pid
    wait_for(lambda: json.loads(control.get(a.socket, "/status")[1])["log_level"] == "debug", 5,
             "the engine took the new log level on SIGHUP")
    st = json.loads(control.get(a.socket, "/status")[1])
    assert st["log_level"] == "debug" and st["cert_expires_in_days"] <= 30.1
    assert st["offloads"]["moderation_us"] == 250 and st["offloads"]["spin"] is True
    after = next(p for p in lab.peers(a) if p["name"] == b.name)
    # the peer and its session were kept: their counters go on (a dropped peer starts
    # again from zero). Not equality: on a loaded machine the session's own timers may
    # make a handshake meanwhile (a liveness probe), which is not the reload's doing.
    assert before["handshakes"] <= after["handshakes"] <= before["handshakes"] + 1, (before, after)
    assert after["tx_packets"] >= before["tx_packets"] and after["rx_packets"] >= before["rx_packets"]
    assert after["fingerprint"] == before["fingerprint"]  # b's certificate, as before
    assert sh("ping", "-c", "1", "-W", "2", b.containers[0]["ip"], ns=a.containers[0]["ns"], check=False).returncode == 0
    log = open(a.log).read()
    assert "certificate_reloaded" in log and "reloaded" in log
    assert "reload_needs_restart" in log and "spin" in log.split("reload_needs_restart", 1)[1].split("\n", 1)[0]
    # a broken config on SIGHUP is refused and the engine keeps running as it was
    with open(a.config, "w") as f:
        f.write(text + "[tun]\nmtu = 12\n")
    os.kill(a.pid, signal.SIGHUP)  # `ip netns exec` execs the engine: same pid
    wait_for(lambda: file_contains(a.log, "reload_failed"), 5, "the engine logged reload_failed")
    assert json.loads(control.get(a.socket, "/status")[1])["log_level"] == "debug"
    with open(a.config, "w") as f:
        f.write(text)


def test_doctor_explains_a_broken_host(lab):
    a = lab.hosts[0]
    args = [sys.executable, "-m", "flatnet", "doctor", "--socket", a.socket, "--lease-file",
            os.path.join(a.dir, "run", "lease.json"), "--no-podman"]
    healthy = subprocess.run(["ip", "netns", "exec", a.ns] + args, capture_output=True, text=True, cwd=REPO)
    assert healthy.returncode == 0, healthy.stdout
    assert "0 problems" in healthy.stdout and "peer host-2: direct-LAN" in healthy.stdout
    # break it: forwarding off, the overlay route gone
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=a.ns)
    sh("ip", "route", "del", "10.87.0.0/16", ns=a.ns)
    try:
        broken = subprocess.run(["ip", "netns", "exec", a.ns] + args, capture_output=True, text=True, cwd=REPO)
        assert broken.returncode == 1
        assert "PROBLEM  IP forwarding: net.ipv4.ip_forward = 0" in broken.stdout
        assert "sysctl -w net.ipv4.ip_forward=1" in broken.stdout
        assert "PROBLEM  overlay route" in broken.stdout and "ip route replace 10.87.0.0/16" in broken.stdout
    finally:
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=a.ns)
        status = json.loads(control.get(a.socket, "/status")[1])
        sh("ip", "route", "replace", "10.87.0.0/16", "dev", "flatnet0", "src",
           status["subnet"].rsplit(".", 1)[0] + ".1", ns=a.ns)


def test_cni_attaches_containers_while_the_engine_restarts(lab):
    a, b = lab.hosts
    lab.stop_engine(b, signal.SIGKILL)
    try:
        c = lab.add_container(b)  # the plugin takes the lease the engine left behind
        assert c["ip"].startswith(b.subnet.rsplit(".", 1)[0] + ".")
    finally:
        t0 = time.monotonic()
        lab.start_engine(b)
        lab.wait_engine(b)
    # the restarted engine remembers its peers and reconnects: traffic within 5 s
    while time.monotonic() - t0 < 5:
        if sh("ping", "-c", "1", "-W", "1", c["ip"], ns=a.containers[0]["ns"], check=False).returncode == 0:
            break
    else:
        raise AssertionError("no traffic to the new container within 5 s of the engine's restart")
