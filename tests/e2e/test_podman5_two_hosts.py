"""Across hosts: the Podman 5 sandbox is Flatnet host 1 (its network namespace is a lab
host's, with that host's engine and lease), a namespace host with an engine and a
container attached by the CNI plugin is host 2; containers on both reach each other."""
import pathlib

import pytest

from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.sandbox import IMAGE, PYTHON, SRC, Sandbox, import_busybox

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WORKTREE = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}q", str(tmp_path_factory.mktemp("lab")), hosts=2)
    sb = None
    try:
        lab.up(containers_per_host=0)
        a, b = lab.hosts
        lab.add_container(b)
        sb = Sandbox(WORKTREE, netns=a.ns, binds=((f"{a.dir}/run", "/run/flatnet"),))
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
