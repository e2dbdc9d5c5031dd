"""Real Podman 4.3 (CNI) with a real engine on this host: egress through the host's
uplink, and names (the CNI result's dns in resolv.conf, the container name, an alias,
`podman restart`, forwarding to an upstream resolver).

The engine runs in the host's namespace on a network of the test's own (10.86.0.0/16,
its own TUN, bridge and run directory; its UDP port is random). "The internet" is a
namespace the test makes, joined to the host by a veth (198.18.77.0/30): a TCP server
there tells which source address it saw, and a DNS server there is the engine's
upstream. Everything is removed at the end, also after a failure.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from flatnet.cni.install_podman import WRAPPER
from flatnet.engine.io import egress
from tests.harness.netns import RUN_PREFIX
from tests.harness.podman import HTTPD, IMAGE, LABEL, container_ip, ensure_image, podman

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INET_HOST, INET = "198.18.77.1", "198.18.77.2"

UPSTREAM = r'''
import socket, sys
import dns.message, dns.rrset, dns.rcode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, addr = s.recvfrom(4096)
    try:
        q = dns.message.from_wire(data)
    except Exception:
        continue
    r = dns.message.make_response(q)
    if q.question[0].name.to_text() == "outside.example." and q.question[0].rdtype == 1:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "198.51.100.7"))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    s.sendto(r.to_wire(), addr)
'''

WHOAMI = r'''
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9999)); s.listen(8)
while True:
    c, addr = s.accept()
    c.sendall(addr[0].encode() + b"\n"); c.close()
'''


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ensure_image()
    tag = uuid.uuid4().hex[:5]
    d = tmp_path_factory.mktemp("pdns")
    os.chmod(d, 0o755)
    n = random.randrange(2, 250)
    env = {"tag": tag, "net": f"{RUN_PREFIX}d{tag}", "bridge": f"fd{tag}", "tun": f"ft{tag}",
           "subnet": f"10.86.{n}.0/24", "gw": f"10.86.{n}.1", "ns": f"{RUN_PREFIX}-inet{tag}",
           "veth": f"fi{tag}", "dir": str(d)}
    conflist = f"/etc/cni/net.d/{env['net']}.conflist"
    procs: list[subprocess.Popen] = []
    saved_conf = os.environ.get("CONTAINERS_CONF")
    try:
        # Podman runs the plugin of the code under test (not the one installed), through
        # a containers.conf read after the others
        plugins = os.path.join(env["dir"], "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "flatnet"), "w") as f:
            f.write(WRAPPER.format(python=sys.executable, marker="# egress/dns e2e test", root=REPO))
        os.chmod(os.path.join(plugins, "flatnet"), 0o755)
        with open(os.path.join(env["dir"], "containers.conf"), "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n'
                    f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]\n')
        os.environ["CONTAINERS_CONF"] = os.path.join(env["dir"], "containers.conf")
        # "the internet"
        sh("ip", "netns", "add", env["ns"])
        sh("ip", "link", "add", env["veth"], "type", "veth", "peer", "name", "up0", "netns", env["ns"])
        sh("ip", "addr", "add", f"{INET_HOST}/30", "dev", env["veth"])
        sh("ip", "link", "set", env["veth"], "up")
        sh("ip", "-n", env["ns"], "addr", "add", f"{INET}/30", "dev", "up0")
        sh("ip", "-n", env["ns"], "link", "set", "up0", "up")
        sh("ip", "-n", env["ns"], "link", "set", "lo", "up")
        for code in (UPSTREAM, WHOAMI):
            procs.append(subprocess.Popen(["ip", "netns", "exec", env["ns"], sys.executable, "-c", code, INET],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        # the engine
        pki = os.path.join(env["dir"], "pki")
        for args in (("ca", "init", "--dir", pki, "--name", f"{tag}-ca"),
                     ("cert", "sign", "--ca-dir", pki, "--name", "host-e2e")):
            sh(sys.executable, "-m", "flatnet", *args, timeout=60)
        config = os.path.join(env["dir"], "config.toml")
        with open(config, "w") as f:
            f.write(f'[pki]\nca = "{pki}/ca.crt"\ncert = "{pki}/host-e2e.crt"\nkey = "{pki}/host-e2e.key"\n'
                    f'[network]\ncidr = "10.86.0.0/16"\nsubnet = "{env["subnet"]}"\n'
                    f'[listen]\nport = 0\n[tun]\nname = "{env["tun"]}"\n[bridge]\nname = "{env["bridge"]}"\n'
                    f'[paths]\nrun_dir = "{env["dir"]}/run"\nstate_dir = "{env["dir"]}/state"\n'
                    f'[gateway]\npodman_labels = false\n[metrics]\ncni_data_dir = "{env["dir"]}/ipam"\n'
                    f'[dns]\nupstream = ["{INET}"]\n')
        log = open(os.path.join(env["dir"], "engine.log"), "w")
        engine = subprocess.Popen([sys.executable, "-m", "flatnet.engine", "--config", config], cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(engine)
        lease = os.path.join(env["dir"], "run", "lease.json")
        end = time.monotonic() + 20
        while not os.path.exists(lease) and time.monotonic() < end and engine.poll() is None:
            time.sleep(0.1)
        assert os.path.exists(lease), open(log.name).read()
        with open(conflist, "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": env["net"], "plugins": [
                {"type": "flatnet", "bridge": env["bridge"], "leaseFile": lease, "dataDir": f"{env['dir']}/ipam",
                 "capabilities": {"aliases": True}}]}, f)
        yield env
    finally:
        ids = podman("ps", "-aq", "--filter", f"label={LABEL}={env['net']}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids, check=False, timeout=120)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM if p is procs[-1] else signal.SIGKILL)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        for link in (env["tun"], env["bridge"], env["veth"]):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        subprocess.run(["ip", "netns", "del", env["ns"]], capture_output=True)
        if os.path.exists(conflist):
            os.unlink(conflist)
        egress.remove()  # the chains of this test's engine (nothing else on a test host uses them)
        if saved_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = saved_conf


def run(env, *args, name=None, detach=False, check=True, timeout=60):
    argv = ["run", "--pull", "never", "--network", env["net"], "--label", f"{LABEL}={env['net']}"]
    argv += (["-d"] if detach else ["--rm"]) + (["--name", name] if name else [])
    return podman(*argv, *args, check=check, timeout=timeout)


def test_resolv_conf_names_the_engine(setup):
    out = run(setup, IMAGE, "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {setup['gw']}" in out.splitlines()[:3] and "search flatnet" in out


def test_egress_leaves_with_the_hosts_address(setup):
    out = run(setup, "--cap-add", "NET_RAW", IMAGE, "sh", "-c",
              f"ping -c 1 -W 3 {INET} >/dev/null && timeout 5 nc {INET} 9999 </dev/null").stdout
    assert out.strip() == INET_HOST  # the internet side saw the host's uplink address


def test_names_aliases_restart_and_forwarding(setup):
    web = f"{setup['net']}-web1"
    run(setup, "--network-alias", "wiki", IMAGE, *HTTPD, name=web, detach=True)
    ip = container_ip(web)
    gw = setup["gw"]

    def resolve(name):
        out = run(setup, IMAGE, "nslookup", name, gw, check=False).stdout
        answer = out.split("Name:", 1)[1] if "Name:" in out else ""  # after the server's own lines
        return [line.split()[-1] for line in answer.splitlines() if line.startswith("Address")]

    short = web  # podman passes the name as given (CNI_ARGS K8S_POD_NAME)
    deadline = time.monotonic() + 10
    while resolve(f"{short}.flatnet") != [ip] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert resolve(f"{short}.flatnet") == [ip]
    assert resolve("wiki.flatnet") == [ip]
    got = run(setup, IMAGE, "timeout", "5", "wget", "-qO-", f"http://{short}/", check=False).stdout
    assert "hello from a flatnet container" in got
    assert resolve("outside.example") == ["198.51.100.7"]
    podman("restart", "-t", "2", web)
    new = container_ip(web)
    assert new != ip
    deadline = time.monotonic() + 6  # each lookup is a `podman run` (about 1 s here)
    while resolve(f"{short}.flatnet") != [new] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resolve(f"{short}.flatnet") == [new]
    podman("rm", "-f", "-t", "0", web)
    t0 = time.monotonic()
    while resolve(f"{short}.flatnet") and time.monotonic() - t0 < 5:
        time.sleep(0.1)
    assert resolve(f"{short}.flatnet") == []
