"""The plugin's warm path (cni.warm -> cni.warmd) against namespaces the test makes: the same
answer as the cold path, undo on failure and DEL idempotency through the daemon, and the
cold path whenever the daemon is absent, stalled, or would not take the request."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from flatnet.cni import warm, warmd
from tests.harness.cni import REPO, netconf, run_plugin
from tests.harness.netns import RUN_PREFIX, leftover_links, sh

pytestmark = pytest.mark.integration


class Daemon:
    """cni.warmd.Server on a thread of this process (setns moves only the calling thread)."""

    def __init__(self, path: str, mode: int = 0o600) -> None:
        self.server = warmd.Server(path, mode)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.server.serve_one()
            except OSError:  # the listening socket was closed: stop
                return

    def stop(self) -> None:
        if self.server.sock.fileno() < 0:
            return
        self.server.sock.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def net(tmp_path):
    tag = uuid.uuid4().hex[:6]
    bridge = f"fw{tag}"
    conf = netconf(f"{RUN_PREFIX}{tag}", bridge=bridge, subnet="10.87.239.0/24",
                   dataDir=str(tmp_path / "ipam"), warmSocket=str(tmp_path / "warm.sock"))
    yield conf
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def daemon(net):
    d = Daemon(net["warmSocket"])
    yield d
    d.stop()


def cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def ipam_entries(conf) -> list[str]:
    d = os.path.join(conf["dataDir"], conf["name"])
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def masked(result: dict) -> dict:
    """A result with the veth MACs (random per creation) blanked."""
    out = dict(result, interfaces=[dict(i, mac="m") if i["name"] != result["interfaces"][0]["name"] else i
                                   for i in result["interfaces"]])
    return out


def test_warm_and_cold_give_the_same_answer(net, daemon, netns_factory):
    ns, c = netns_factory("w"), cid()
    rc, warm_res = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 0, warm_res
    assert daemon.server.counts["ok"] == 1  # it went through the daemon
    # a repeated ADD of the same container on the cold path re-plumbs it: same answer
    rc, cold_res = run_plugin("ADD", dict(net, warmSocket=""), container_id=c, netns=ns.path)
    assert rc == 0 and daemon.server.counts["ok"] == 1
    assert masked(warm_res) == masked(cold_res)
    assert warm_res["ips"][0]["address"].startswith("10.87.239.")
    assert sh("ping", "-c", "1", "-W", "2", warm_res["ips"][0]["address"].split("/")[0],
              check=False).returncode == 0
    # errors are the same too
    bad = dict(net, subnet="10.87.1.0/24", gateway="10.9.9.9")
    rc_w, err_w = run_plugin("ADD", bad, container_id=c, netns=ns.path)
    rc_c, err_c = run_plugin("ADD", dict(bad, warmSocket=""), container_id=c, netns=ns.path)
    assert (rc_w, err_w) == (rc_c, err_c) and rc_w == 1 and err_w["code"] == 7
    assert daemon.server.counts["ok"] == 2
    assert run_plugin("DEL", net, container_id=c, netns=ns.path) == (0, None)
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_warm_failure_undoes_everything(net, daemon, netns_factory):
    ns, c = netns_factory("e"), cid()
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")  # name taken
    rc, err = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 1 and err["code"] == 103 and "eth0" in err["details"]
    assert daemon.server.counts["ok"] == 1
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_warm_del_is_idempotent(net, daemon, netns_factory):
    ns, c = netns_factory("d"), cid()
    assert run_plugin("ADD", net, container_id=c, netns=ns.path)[0] == 0
    assert run_plugin("DEL", net, container_id=c, netns=ns.path) == (0, None)
    assert run_plugin("DEL", net, container_id=c, netns=ns.path) == (0, None)
    path = ns.path
    ns.delete()
    assert run_plugin("DEL", net, container_id=c, netns=path) == (0, None)
    assert daemon.server.counts["ok"] == 4
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_no_daemon_falls_back(net, netns_factory, tmp_path):
    ns, c = netns_factory("n"), cid()
    rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)  # no socket file at all
    assert rc == 0, res
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # a socket file nobody serves
    stale.bind(net["warmSocket"])
    stale.close()
    assert run_plugin("DEL", net, container_id=c, netns=ns.path) == (0, None)
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_stalled_daemon_falls_back_within_the_bound(net, netns_factory):
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # listens, never accepts
    stalled.bind(net["warmSocket"])
    stalled.listen(4)
    try:
        ns, c = netns_factory("s"), cid()
        t0 = time.monotonic()
        rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)
        elapsed = time.monotonic() - t0
        assert rc == 0, res
        assert warm.WARM_TIMEOUT <= elapsed < warm.WARM_TIMEOUT + 15
        assert run_plugin("DEL", dict(net, warmSocket=""), container_id=c, netns=ns.path) == (0, None)
    finally:
        stalled.close()


def test_a_caller_that_is_not_root_gets_nothing_done(net, netns_factory):
    # the real socket is 0600 in a root-only folder; here the daemon's own check stands alone
    net = dict(net, warmSocket=f"/tmp/{RUN_PREFIX}{uuid.uuid4().hex[:8]}.sock")
    d = Daemon(net["warmSocket"], mode=0o666)
    try:
        ns, c = netns_factory("r"), cid()
        request = warm.encode_request({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": c, "CNI_NETNS": ns.path,
                                       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"},
                                      json.dumps(net).encode())
        code = ("import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(5); "
                f"s.connect({net['warmSocket']!r})\n"
                "try:\n    s.send(sys.stdin.buffer.read()); print(s.recv(65536))\n"
                "except (BrokenPipeError, ConnectionResetError):\n    print(b'F')")
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-c", code], input=request, capture_output=True, timeout=30, cwd=REPO)
        assert proc.stdout.strip() == b"b'F'", proc.stderr  # "do it yourself"
        d.stop()  # the thread has finished with that connection
        assert d.server.counts == {"ok": 0, "refused": 1, "malformed": 0, "io_error": 0}
        assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []
    finally:
        d.stop()


def test_a_root_caller_without_the_capabilities_is_not_served(net, daemon, netns_factory):
    # root, but without CAP_SYS_ADMIN (a confined process that can reach the socket): the
    # daemon must not act for it; the cold path then fails with the caller's own rights
    ns, c = netns_factory("p"), cid()
    proc = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable,
                           "-m", "flatnet.cni"], input=json.dumps(net).encode(), capture_output=True, timeout=30, cwd=REPO,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO, "CNI_COMMAND": "ADD",
                               "CNI_CONTAINERID": c, "CNI_NETNS": ns.path, "CNI_IFNAME": "eth0",
                               "CNI_PATH": "/usr/lib/cni"})
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == 3 and "Operation not permitted" in err["msg"], err
    assert daemon.server.counts["refused"] == 1 and daemon.server.counts["ok"] == 0
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_a_caller_in_another_network_namespace_works_in_its_own(net, daemon, netns_factory):
    # the plugin run inside a namespace "host": the daemon (in the root namespace) sends it
    # back, and the cold path makes the bridge there, not here
    host, ns, c = netns_factory("h"), netns_factory("k"), cid()
    env = ["env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"PYTHONPATH={REPO}", "CNI_COMMAND=ADD",
           f"CNI_CONTAINERID={c}", f"CNI_NETNS={ns.path}", "CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni"]
    proc = subprocess.run(["ip", "netns", "exec", host.name, *env, sys.executable, "-m", "flatnet.cni"],
                          input=json.dumps(net).encode(), capture_output=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert daemon.server.counts["refused"] == 1 and daemon.server.counts["ok"] == 0
    assert net["bridge"] in host.run("ip", "link", "show").stdout
    assert subprocess.run(["ip", "link", "show", net["bridge"]], capture_output=True).returncode != 0


def test_a_stalled_caller_delays_the_daemon_by_at_most_its_read_timeout(net, daemon, netns_factory):
    staller = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    staller.connect(net["warmSocket"])  # connects, never sends
    try:
        ns, c = netns_factory("t"), cid()
        t0 = time.monotonic()
        rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)
        assert rc == 0, res
        assert time.monotonic() - t0 < warm.WARM_TIMEOUT + 10
    finally:
        staller.close()
    assert daemon.server.counts["io_error"] >= 1  # the staller, dropped after RECV_TIMEOUT
    assert daemon.server.counts["ok"] == 1  # and the plugin's request was run after it
    assert run_plugin("DEL", net, container_id=c, netns=ns.path) == (0, None)


def netavark(*argv: str, stdin: dict) -> tuple[int, dict | None]:
    """The netavark plugin as netavark runs it: the installed wrapper's entry point."""
    code = "import sys; from flatnet.cni.__main__ import netavark; sys.exit(netavark())"
    proc = subprocess.run([sys.executable, "-c", code, *argv], input=json.dumps(stdin).encode(),
                          capture_output=True, timeout=30, cwd=REPO,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO})
    out = proc.stdout.decode().strip()
    assert "Traceback" not in proc.stderr.decode()
    return proc.returncode, (json.loads(out) if out else None)


def test_netavark_setup_and_teardown_warm_and_cold_give_the_same_answer(tmp_path, netns_factory):
    tag = uuid.uuid4().hex[:6]
    sock = str(tmp_path / "warm.sock")
    d = Daemon(sock)
    network = {"name": f"{RUN_PREFIX}{tag}", "id": "ab" * 32, "driver": "flatnet", "network_interface": f"fn{tag}",
               "subnets": [{"subnet": "10.87.235.0/24"}],
               "options": {"data_dir": str(tmp_path / "ipam"), "warm_socket": sock}}
    try:
        rc, created = netavark("create", stdin=network)
        assert rc == 0 and d.server.counts["ok"] == 0, created  # create is not a warm verb
        cold_net = dict(created, options=dict(created["options"], warm_socket=""))
        ns, c = netns_factory("nw"), cid()

        def body(net, **opts):
            return {"container_id": c, "container_name": "t", "port_mappings": None, "network": net,
                    "network_options": {"interface_name": "eth0", "static_ips": ["10.87.235.7"], **opts}}
        rc, warm_out = netavark("setup", ns.path, stdin=body(created, static_mac="02:12:34:56:78:9b"))
        assert rc == 0 and d.server.counts["ok"] == 1, warm_out
        rc, cold_out = netavark("setup", ns.path, stdin=body(cold_net, static_mac="02:12:34:56:78:9b"))
        assert rc == 0 and d.server.counts["ok"] == 1
        assert warm_out == cold_out and warm_out["interfaces"]["eth0"]["subnets"][0]["ipnet"] == "10.87.235.7/24"
        assert sh("ping", "-c", "1", "-W", "2", "10.87.235.7", check=False).returncode == 0
        # errors are the same too (an address outside the subnet)
        bad = dict(body(created), network_options={"interface_name": "eth0", "static_ips": ["10.9.9.9"]})
        rc_w, err_w = netavark("setup", ns.path, stdin=bad)
        rc_c, err_c = netavark("setup", ns.path, stdin=dict(bad, network=cold_net))
        assert (rc_w, err_w) == (rc_c, err_c) and rc_w == 1 and d.server.counts["ok"] == 2
        for net in (created, cold_net):  # teardown, warm then cold: idempotent either way
            assert netavark("teardown", ns.path, stdin=body(net)) == (0, None)
        assert d.server.counts["ok"] == 3 and leftover_links("fn-" + c[:12]) == []
    finally:
        d.stop()
        subprocess.run(["ip", "link", "del", network["network_interface"]], capture_output=True)
