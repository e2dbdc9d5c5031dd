"""Real Podman (CNI backend) attaching containers with the flatnet plugin."""
import concurrent.futures
import subprocess
import urllib.request
import uuid

import pytest

from tests.harness.netns import RUN_PREFIX, leftover_links
from tests.harness.podman import HTTPD, IMAGE, Network, container_ip, ensure_image, podman

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image():
    return ensure_image()


@pytest.fixture
def network(tmp_path, image):
    tag = uuid.uuid4().hex[:5]
    net = Network(f"{RUN_PREFIX}{tag}", f"fp{tag}", "10.87.243.0/24", str(tmp_path / "ipam"))
    yield net
    net.remove()


def host_veths() -> list[str]:
    return leftover_links("fn-")


def veths_of(container: str) -> list[str]:
    """Host-side veths whose alias names this container (the plugin writes
    `flatnet <id>/<ifname>`): other tests' containers on the machine do not count."""
    cid = podman("inspect", "-f", "{{.Id}}", container).stdout.strip()
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if f"alias flatnet {cid}/" in line]


def test_echo_and_flatnet_address(network):
    assert network.run(IMAGE, "echo", "hello").stdout.strip() == "hello"
    out = network.run(IMAGE, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "inet 10.87.243." in out
    assert network.ipam_entries() == []


def test_three_containers_talk_to_each_other_and_the_host(network):
    names = [f"{network.name}-{n}" for n in ("web1", "web2", "tcp")]
    network.run(IMAGE, *HTTPD, detach=True, name=names[0])
    network.run(IMAGE, *HTTPD, detach=True, name=names[1])
    network.run(IMAGE, "sh", "-c", 'trap "exit 0" TERM; nc -ll -p 7000 -e echo pong & wait',
                detach=True, name=names[2])
    ips = [container_ip(n) for n in names]
    assert len(set(ips)) == 3 and all(ip.startswith("10.87.243.") for ip in ips)
    for ip in ips[1:]:
        out = podman("run", "--rm", "--pull", "never", "--network", network.name, "--cap-add", "NET_RAW",
                     IMAGE, "ping", "-c", "1", "-W", "2", ip, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    got = podman("exec", names[0], "timeout", "5", "wget", "-qO-", f"http://{ips[1]}/").stdout
    assert "hello from a flatnet container" in got
    got = podman("exec", names[1], "sh", "-c", f"echo ping | timeout 5 nc {ips[2]} 7000").stdout
    assert "pong" in got
    with urllib.request.urlopen(f"http://{ips[0]}/", timeout=5) as resp:  # from the host
        assert b"hello from a flatnet container" in resp.read()


def test_lifecycle_leaves_nothing_behind(network):
    name = f"{network.name}-life"
    before = set(host_veths())
    network.run(IMAGE, *HTTPD, detach=True, name=name)
    first = container_ip(name)
    assert len(network.ipam_entries()) == 1 and len(veths_of(name)) == 1
    podman("stop", "-t", "5", name)
    assert veths_of(name) == [] and not set(host_veths()) - before and network.ipam_entries() == []
    podman("start", name)
    second = container_ip(name)
    assert len(network.ipam_entries()) == 1 and second.startswith("10.87.243.")
    # documented (docs/cni.md): stop is a DEL, start a new ADD; the round-robin IPAM does
    # not hand the freed address out again at once
    assert second != first
    podman("restart", "-t", "5", name)
    assert len(network.ipam_entries()) == 1
    podman("kill", name)
    podman("wait", name, check=False)
    assert veths_of(name) == []
    podman("rm", name)
    assert not set(host_veths()) - before and network.ipam_entries() == []


def test_ten_in_parallel_get_distinct_addresses(network):
    names = [f"{network.name}-p{i}" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: network.run(IMAGE, "sleep", "300", detach=True, name=n, timeout=120), names))
    ips = [container_ip(n) for n in names]
    assert len(set(ips)) == 10
    podman("rm", "-f", "-t", "0", *names, timeout=120)
    assert network.ipam_entries() == []


@pytest.mark.slow
def test_thirty_run_rm_cycles_leave_nothing(network):
    before = set(host_veths())
    for _ in range(30):
        network.run(IMAGE, "true", timeout=60)
    assert set(host_veths()) == before
    assert network.ipam_entries() == []
