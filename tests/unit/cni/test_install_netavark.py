"""The installer for both Podman generations, under a temporary root."""
import json
import tomllib

import pytest

from flatnet.cni import install_netavark as inst


@pytest.fixture
def root(tmp_path):
    (tmp_path / "run/flatnet").mkdir(parents=True)
    return tmp_path


def lease(root, subnet="10.87.5.0/24", gw="10.87.5.1"):
    (root / "run/flatnet/lease.json").write_text(json.dumps({"subnet": subnet, "gateway": gw}))


def test_podman5_gets_plugin_drop_in_and_network(root):
    lease(root)
    lines = inst.install(str(root), "/opt/flatnet/bin/python3", "/opt/flatnet/src", major=5)
    assert lines[0] == "podman 5: netavark backend"
    plugin = root / "usr/local/libexec/netavark/flatnet"
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert plugin.read_text().startswith("#!/opt/flatnet/bin/python3 -IS\n")
    assert "from flatnet.cni.__main__ import netavark" in plugin.read_text()
    conf = tomllib.loads((root / "etc/containers/containers.conf.d/50-flatnet-netavark.conf").read_text())
    assert conf["network"]["network_backend"] == "netavark"
    assert conf["network"]["netavark_plugin_dirs"][0] == "/usr/local/libexec/netavark"
    assert "/usr/libexec/netavark" in conf["network"]["netavark_plugin_dirs"]
    net = json.loads((root / "etc/containers/networks/flatnet.json").read_text())
    assert net["driver"] == "flatnet" and len(net["id"]) == 64
    assert net["subnets"] == [{"subnet": "10.87.5.0/24", "gateway": "10.87.5.1"}]
    assert net["options"] == {"subnet_source": "lease"}
    # again: nothing changes, the id stays
    assert "(already in place)" in inst.install(str(root), "/opt/flatnet/bin/python3", "/opt/flatnet/src", 5)[-1]
    # the lease changed: the network follows, same id
    lease(root, "10.87.6.0/24", "10.87.6.1")
    assert "updated" in inst.install(str(root), "/opt/flatnet/bin/python3", "/opt/flatnet/src", 5)[-1]
    again = json.loads((root / "etc/containers/networks/flatnet.json").read_text())
    assert again["id"] == net["id"] and again["subnets"][0]["subnet"] == "10.87.6.0/24"


def test_podman5_without_lease_says_what_to_do(root):
    lines = inst.install(str(root), "/py", "/src", major=5)
    assert "not created yet: no subnet lease" in lines[-1] and "Start flatnet-engine" in lines[-1]
    assert not (root / "etc/containers/networks/flatnet.json").exists()
    lines = inst.install(str(root), "/py", "/src", major=5, subnet="10.87.7.0/24")
    net = json.loads((root / "etc/containers/networks/flatnet.json").read_text())
    assert net["options"] == {"subnet_source": "static"} and net["subnets"][0]["gateway"] == "10.87.7.1"


def test_foreign_network_is_not_overwritten(root):
    lease(root)
    path = root / "etc/containers/networks/flatnet.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "flatnet", "driver": "bridge"}))
    lines = inst.install(str(root), "/py", "/src", major=5)
    assert "is a 'bridge' network, not flatnet's" in lines[-1]
    assert json.loads(path.read_text())["driver"] == "bridge"


def test_podman4_gets_the_cni_plugin(root):
    lines = inst.install(str(root), "/opt/flatnet/bin/python3", "/opt/flatnet/src", major=4)
    assert lines[0] == "podman 4: CNI backend"
    assert "from flatnet.cni.__main__ import main" in (root / "usr/lib/cni/flatnet").read_text()
    assert json.loads((root / "etc/cni/net.d/flatnet.conflist").read_text())["cniVersion"] == "1.0.0"
    assert not (root / "etc/containers/containers.conf.d/50-flatnet-netavark.conf").exists()


def test_no_podman(root):
    assert inst.install(str(root), "/py", "/src") == ["podman: not found; nothing to configure for containers"]
    assert inst.podman_major(str(root)) is None


def test_version_parsing(monkeypatch):
    class Done:
        stdout = "podman version 5.4.2\n"
    monkeypatch.setattr(inst.subprocess, "run", lambda *a, **k: Done())
    assert inst.podman_major("/") == 5
    Done.stdout = "podman version 4.3.1\n"
    assert inst.podman_major("/") == 4
    Done.stdout = "garbage"
    assert inst.podman_major("/") is None
