"""cni/install_podman.py: the Podman drop-in, the migration away from the old rewrite of
containers.conf, ulimits only where needed, and an uninstall that removes only ours."""

import json
import os
import resource
import subprocess
import sys
import tomllib

from flatnet.cni import install_podman as ip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_dropin_carries_the_settings_and_containers_conf_is_untouched(tmp_path):
    (tmp_path / "containers.conf").write_text("# mine\n")
    log = ip.install(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"), sys.executable, REPO)
    assert (tmp_path / "containers.conf").read_text() == "# mine\n"
    conf = tomllib.loads((tmp_path / "containers.conf.d" / "50-flatnet.conf").read_text())
    assert conf["network"] == {"network_backend": "cni"} and conf["engine"] == {"runtime": "runc"}
    assert any(line.startswith("ulimits:") for line in log)
    # idempotent
    again = ip.install(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"), sys.executable, REPO)
    assert all("wrote" not in line for line in again), again


def test_ulimits_only_where_the_host_needs_them():
    none, why = ip.ulimits(has_cap_sys_resource=True)
    assert none == [] and "not set" in why
    nofile, nproc = (resource.getrlimit(r)[1] for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC))
    limits, why = ip.ulimits(has_cap_sys_resource=False)
    if nofile < ip.PODMAN_DEFAULT_NOFILE or nproc < ip.PODMAN_DEFAULT_NPROC:
        assert limits and limits[0].startswith("nofile=") and "CAP_SYS_RESOURCE" in why
    else:
        assert limits == []


def test_migration_restores_the_operators_backup(tmp_path):
    (tmp_path / "containers.conf").write_text(ip.OLD_HEADER + '\n[network]\nnetwork_backend = "cni"\n')
    (tmp_path / "containers.conf.flatnet-orig").write_text("# the operator's\n")
    msg = ip.migrate_containers_conf(str(tmp_path))
    assert msg and "restored" in msg
    assert (tmp_path / "containers.conf").read_text() == "# the operator's\n"
    assert not (tmp_path / "containers.conf.flatnet-orig").exists()
    assert ip.migrate_containers_conf(str(tmp_path)) is None  # done once


def test_migration_without_a_backup_leaves_the_file_and_says_so(tmp_path):
    text = ip.OLD_HEADER + '\n[engine]\nruntime = "runc"\n'
    (tmp_path / "containers.conf").write_text(text)
    msg = ip.migrate_containers_conf(str(tmp_path))
    assert msg and "no backup" in msg and "left as it is" in msg
    assert (tmp_path / "containers.conf").read_text() == text


def test_uninstall_removes_ours_only(tmp_path):
    ip.install(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"), sys.executable, REPO)
    (tmp_path / "containers.conf.d" / "90-operator.conf").write_text("[engine]\n")
    (tmp_path / "cni" / "bridge").write_text("not ours")
    ip.uninstall(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"))
    assert sorted(os.listdir(tmp_path / "containers.conf.d")) == ["90-operator.conf"]
    assert os.listdir(tmp_path / "cni") == ["bridge"] and os.listdir(tmp_path / "net.d") == []


def test_a_changed_conflist_is_left(tmp_path):
    ip.install(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"), sys.executable, REPO)
    conf = tmp_path / "net.d" / "flatnet.conflist"
    doc = json.loads(conf.read_text())
    doc["plugins"][0]["subnet"] = "10.87.9.0/24"
    conf.write_text(json.dumps(doc))
    log = ip.uninstall(str(tmp_path), str(tmp_path / "cni"), str(tmp_path / "net.d"))
    assert conf.exists() and any("left" in line for line in log)


def test_the_plugin_wrapper_answers_version(tmp_path):
    path, _ = ip.install_plugin(str(tmp_path), sys.executable, REPO)
    proc = subprocess.run([path], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout)


def test_podman_5_keeps_its_network_backend():
    """Debian 13's Podman 5 is built without CNI: network_backend = "cni" would break
    every `podman run` of the operator's (seen: "cni support is not enabled in this build")."""
    doc, why = ip.podman_settings([], major=5, unified=False)
    assert "network" not in doc and any("no CNI backend" in line for line in why)
    doc, _ = ip.podman_settings([], major=4, unified=False)
    assert doc["network"] == {"network_backend": "cni"}


def test_runc_only_where_crun_fails():
    doc, _ = ip.podman_settings([], major=4, unified=True)
    assert "engine" not in doc
    doc, why = ip.podman_settings([], major=4, unified=False)
    assert doc["engine"] == {"runtime": "runc"} and any("runc" in line for line in why)
