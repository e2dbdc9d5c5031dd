"""Across hosts: the Podman 5 sandbox is Flatnet host 1 (its network namespace is a lab
host's, with that host's engine and lease), a namespace host with an engine and a
container attached by the CNI plugin is host 2; containers on both reach each other,
by address and by name (the engines' DNS; names cross hosts through the lighthouse)."""
import os
import pathlib
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.sandbox import IMAGE, PYTHON, SRC, Sandbox, import_busybox, resolv_conf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WORKTREE = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    # no upstream resolvers: every DNS query stays inside the lab's namespaces
    no_upstream = "[dns]\nupstream = []\n"
    lab = Lab(f"{RUN_PREFIX}q", str(tmp_path_factory.mktemp("lab")), hosts=2, lighthouse=True,
              extra_config={1: no_upstream, 2: no_upstream})
    sb = None
    try:
        lab.up(containers_per_host=0)
        a, b = lab.hosts
        lab.add_container(b, "remote")
        # the plugin in the sandbox writes its names where host 1's engine reads them
        os.makedirs(f"{a.dir}/ipam", exist_ok=True)
        sb = Sandbox(WORKTREE, netns=a.ns, binds=((f"{a.dir}/run", "/run/flatnet"),
                                                  (f"{a.dir}/ipam", "/var/lib/flatnet/ipam")))
        sb.install_output = sb.run(PYTHON, "-m", "flatnet.cni.install_netavark", "--root", "/", "--python", PYTHON,
                                   "--repo", SRC).stdout
        import_busybox(sb)
        yield lab, sb
    finally:
        if sb is not None:
            sb.close()
        lab.down()


def test_podman5_container_and_remote_container_reach_each_other(hosts):
    lab, sb = hosts
    a, b = lab.hosts
    assert "network: /etc/containers/networks/flatnet.json (created)" in sb.install_output
    sb.podman("run", "-d", "--pull", "never", "--network", "flatnet", "--name", "web", IMAGE,
              "sh", "-c", 'trap "exit 0" TERM; httpd -f -p 80 -h /www & wait')
    ip = sb.podman("inspect", "--format", "{{.NetworkSettings.Networks.flatnet.IPAddress}}", "web").stdout.strip()
    lease_net = sb.read("/run/flatnet/lease.json")
    assert ip.rsplit(".", 1)[0] + ".0/" in lease_net  # the engine's lease for host 1
    remote = b.containers[0]
    out = sb.podman("run", "--rm", "--pull", "never", "--network", "flatnet", "--cap-add", "NET_RAW", IMAGE,
                    "ping", "-c", "3", "-W", "2", remote["ip"], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sh("ping", "-c", "3", "-W", "2", ip, ns=remote["ns"], check=False).returncode == 0
    got = sh("timeout", "5", "busybox", "wget", "-qO-", f"http://{ip}/", ns=remote["ns"], check=False).stdout
    assert b"hello from a flatnet container" in got


def test_podman5_containers_find_each_other_by_name_here_and_across_hosts(hosts):
    """resolv.conf names host 1's engine (its gateway, search flatnet); a Podman 5
    container reaches another on the same host and host 2's container by name, and host
    2's container finds the Podman 5 container by name through host 2's engine."""
    lab, sb = hosts
    a, b = lab.hosts
    gw_a, gw_b = (h.subnet.rsplit(".", 1)[0] + ".1" for h in (a, b))
    sb.podman("run", "-d", "--pull", "never", "--network", "flatnet", "--name", "named", IMAGE,
              "sh", "-c", 'trap "exit 0" TERM; httpd -f -p 80 -h /www & wait')
    ip = sb.podman("inspect", "--format", "{{.NetworkSettings.Networks.flatnet.IPAddress}}", "named").stdout.strip()
    assert "named" in sb.read(f"/var/lib/flatnet/ipam/flatnet/names/{ip}").split()
    # names reach the engines within seconds (host 2's through the lighthouse): the
    # client retries in one container (20 tries, at most ~50 s when nothing resolves)
    script = ("cat /etc/resolv.conf; for i in $(seq 20); do "
              "timeout 2 wget -qO- http://named/ && ping -c 1 -W 2 remote && exit 0; sleep 0.5; done; exit 1")
    out = sb.podman("run", "--rm", "--pull", "never", "--network", "flatnet", "--cap-add", "NET_RAW", IMAGE,
                    "sh", "-c", script, check=False, timeout=90)
    servers, search = resolv_conf(out.stdout)
    assert servers == [gw_a] and search[0] == "flatnet", out.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello from a flatnet container" in out.stdout
    assert f"({b.containers[0]['ip']})" in out.stdout  # busybox ping prints the address it resolved
    for _ in range(30):  # host 2 learns the name through the lighthouse
        found = sh("busybox", "nslookup", "named.flatnet", gw_b, ns=b.containers[0]["ns"], check=False)
        if f"Address: {ip}" in found.stdout.decode():
            break
        time.sleep(0.5)
    assert f"Address: {ip}" in found.stdout.decode(), found.stdout.decode() + found.stderr.decode()
    sb.podman("rm", "-f", "-t", "0", "named")
