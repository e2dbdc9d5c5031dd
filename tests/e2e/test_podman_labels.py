"""Publishing from a Podman label, against real Podman output."""
import ipaddress
import uuid

import pytest

from flatnet.engine import podman_labels
from flatnet.engine.services import ServiceRegistry
from tests.harness.netns import RUN_PREFIX
from tests.harness.podman import HTTPD, IMAGE, Network, ensure_image, podman

pytestmark = pytest.mark.e2e


@pytest.fixture
def network(tmp_path):
    ensure_image()
    tag = uuid.uuid4().hex[:5]
    net = Network(f"{RUN_PREFIX}{tag}", f"fl{tag}", "10.87.248.0/24", str(tmp_path / "ipam"))
    yield net
    net.remove()


def test_labelled_container_is_published_and_unpublished(network, tmp_path):
    subnet = ipaddress.IPv4Network("10.87.248.0/24")
    registry = ServiceRegistry(str(tmp_path / "services.json"), "this-host", "flatnet.lan")
    managed: set[str] = set()
    name = f"{network.name}-web"
    network.run("--label", "flatnet.publish=web:80,web-admin:8080", IMAGE, *HTTPD, detach=True, name=name)
    found = podman_labels.scan()
    ours = [c for c in found if c["name"] == name]
    assert ours and ours[0]["ips"][0].startswith("10.87.248.")
    wanted, problems = podman_labels.desired(ours, subnet)
    assert set(wanted) == {"web", "web-admin"} and not problems
    added, removed = podman_labels.sync(registry, subnet, wanted, managed)
    assert sorted(added) == ["web", "web-admin"] and registry.local["web"]["port"] == 80
    podman("rm", "-f", "-t", "0", name)
    wanted, _ = podman_labels.desired([c for c in podman_labels.scan() if c["name"] == name], subnet)
    added, removed = podman_labels.sync(registry, subnet, wanted, managed)
    assert sorted(removed) == ["web", "web-admin"] and not registry.local


def test_bad_labels_are_explained():
    wanted, problems = podman_labels.desired(
        [{"name": "c1", "label": "web", "ips": ["10.87.1.5"]}, {"name": "c2", "label": "x:1", "ips": ["172.17.0.2"]}],
        ipaddress.IPv4Network("10.87.1.0/24"))
    assert not wanted
    assert any("use NAME:PORT" in p for p in problems) and any("--network flatnet" in p for p in problems)
