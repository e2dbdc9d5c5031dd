"""scripts/install.sh as a new operator runs it on a Debian host whose only Python is
Debian's (PEP 668: no pip into it): PATH has /usr/bin/python3 and nothing else. Every
root is temporary (prefix, links, CNI plugin and network folders, Podman's drop-in
folder, units, completion, group), so the live install other tests use is untouched.
Podman runs a container on the installed plugin through a temporary containers.conf."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import subprocess
import tomllib
import uuid

import pytest

from tests.harness.netns import RUN_PREFIX
from tests.harness.podman import IMAGE, Network, ensure_image, podman

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_PYTHON = "/usr/bin/python3"
ROOTS = {
    "FLATNET_BIN_DIR": "bin",
    "FLATNET_CNI_PLUGIN_DIR": "cni",
    "FLATNET_CNI_CONF_DIR": "net.d",
    "FLATNET_CONTAINERS_DIR": "containers",
    "FLATNET_UNIT_DIR": "units",
    "FLATNET_COMPLETION_DIR": "comp",
}
SCRIPTS = ("flatnet", "flatnet-engine", "flatnet-lighthouse", "flatnet-cni")


def snapshot(top: str) -> dict[str, str]:
    """Every file, folder and link under top, with what it is (content hash or target)."""
    out = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    out[rel] = f"{oct(os.stat(path).st_mode)} {hashlib.sha256(f.read()).hexdigest()}"
    return out


def groups() -> set[str]:
    return {g.gr_name for g in grp.getgrall()}


def run_installer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "install.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not os.path.exists(DEBIAN_PYTHON):
        pytest.fail(f"{DEBIAN_PYTHON} is missing: this test is about Debian's own Python")
    top = str(tmp_path_factory.mktemp("install"))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "FLATNET_PREFIX": os.path.join(top, "opt", "flatnet"),
        "FLATNET_GROUP": f"{RUN_PREFIX}g",
    }
    os.makedirs(os.path.join(top, "opt"))
    for var, name in ROOTS.items():
        env[var] = os.path.join(top, name)
        os.makedirs(env[var])  # a host has these folders before the install
    # an operator's own containers.conf, which the install must leave as it is
    with open(os.path.join(top, "containers", "containers.conf"), "w") as f:
        f.write('[engine]\nevents_logger = "file"\n')
    before = snapshot(top), groups()
    proc = run_installer(env)
    state = {"top": top, "env": env, "before": before, "log": proc.stdout + proc.stderr, "removed": False}
    assert proc.returncode == 0, state["log"]
    yield state
    if not state["removed"]:  # the uninstall test did not run or failed half-way
        run_installer(env, "--uninstall")
        if env["FLATNET_GROUP"] in groups():
            subprocess.run(["groupdel", env["FLATNET_GROUP"]], capture_output=True)


def test_venv_is_made_from_debians_python(installed):
    prefix = installed["env"]["FLATNET_PREFIX"]
    with open(os.path.join(prefix, "pyvenv.cfg")) as f:
        cfg = dict(line.strip().split(" = ", 1) for line in f if " = " in line)
    assert cfg["home"] == "/usr/bin", cfg
    out = subprocess.run(
        [
            os.path.join(prefix, "bin", "python3"),
            "-c",
            "import sys, flatnet.engine.crypto, flatnet; print(sys.base_prefix, flatnet.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[0] == "/usr" and out[1].startswith(prefix + "/"), out  # the installed code, not the checkout
    # nothing went into Debian's Python
    proc = subprocess.run([DEBIAN_PYTHON, "-I", "-c", "import flatnet"], capture_output=True, cwd="/")
    assert proc.returncode != 0
    assert "Debian" in installed["log"] and "ulimits:" in installed["log"]


def test_commands_are_linked_and_answer(installed):
    env = installed["env"]
    for name in SCRIPTS:
        link = os.path.join(env["FLATNET_BIN_DIR"], name)
        assert os.readlink(link) == os.path.join(env["FLATNET_PREFIX"], "bin", name)
    from flatnet import __version__

    out = subprocess.run(
        [os.path.join(env["FLATNET_BIN_DIR"], "flatnet"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == f"flatnet {__version__}"
    assert os.path.exists(os.path.join(env["FLATNET_COMPLETION_DIR"], "flatnet"))
    assert env["FLATNET_GROUP"] in groups()


def test_plugin_runs_the_venvs_interpreter(installed):
    env = installed["env"]
    plugin = os.path.join(env["FLATNET_CNI_PLUGIN_DIR"], "flatnet")
    with open(plugin) as f:
        assert f.readline() == f"#!{env['FLATNET_PREFIX']}/bin/python3 -IS\n"
    proc = subprocess.run([plugin], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.0.0", proc


def test_podman_settings_are_a_dropin(installed):
    top = installed["top"]
    with open(os.path.join(top, "containers", "containers.conf")) as f:
        assert f.read() == '[engine]\nevents_logger = "file"\n'  # the operator's file, untouched
    with open(os.path.join(top, "containers", "containers.conf.d", "50-flatnet.conf"), "rb") as f:
        conf = tomllib.load(f)
    assert conf["network"]["network_backend"] == "cni" and conf["engine"]["runtime"] == "runc"


def test_podman_runs_a_container_on_the_installed_plugin(installed, tmp_path, monkeypatch):
    ensure_image()
    env, top = installed["env"], installed["top"]
    with open(os.path.join(top, "containers", "containers.conf.d", "50-flatnet.conf"), "rb") as f:
        conf = tomllib.load(f)
    # CONTAINERS_CONF makes Podman read this one file only: the drop-in's settings plus
    # the temporary CNI folders
    conf["network"].update(
        network_config_dir=env["FLATNET_CNI_CONF_DIR"], cni_plugin_dirs=[env["FLATNET_CNI_PLUGIN_DIR"]]
    )
    from flatnet.cni.install_podman import dump_toml

    (tmp_path / "containers.conf").write_text(dump_toml(conf, header="# test"))
    monkeypatch.setenv("CONTAINERS_CONF", str(tmp_path / "containers.conf"))
    tag = uuid.uuid4().hex[:5]
    net = Network(
        f"{RUN_PREFIX}i{tag}", f"fi{tag}", "10.87.236.0/24", str(tmp_path / "ipam"), net_dir=env["FLATNET_CNI_CONF_DIR"]
    )
    try:
        out = net.run(IMAGE, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert "inet 10.87.236." in out
        assert net.ipam_entries() == []
        info = podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip()
        assert info == "cni"
    finally:
        net.remove()


def test_systemd_units_for_this_installation(installed):
    env = installed["env"]
    proc = subprocess.run(
        [os.path.join(env["FLATNET_BIN_DIR"], "flatnet"), "systemd", "install", "--unit-dir", env["FLATNET_UNIT_DIR"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(env["FLATNET_UNIT_DIR"], "flatnet-engine.service")) as f:
        unit = f.read()
    assert f"ExecStart={env['FLATNET_PREFIX']}/bin/flatnet-engine " in unit and "ProtectSystem=strict" in unit


def test_uninstall_leaves_the_roots_as_they_were(installed):
    proc = run_installer(installed["env"], "--uninstall")
    installed["removed"] = True
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files, grps = installed["before"]
    # Podman's libnetwork leaves a lock file in any CNI folder it reads: not the installer's
    after = {k: v for k, v in snapshot(installed["top"]).items() if os.path.basename(k) != "cni.lock"}
    assert after == files
    assert groups() == grps
