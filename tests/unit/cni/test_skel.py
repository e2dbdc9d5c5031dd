import io
import json

import pytest

from flatnet.cni.result import add_result
from flatnet.cni.ipv4 import parse_ip, parse_subnet
from flatnet.cni.skel import dispatch

CONF = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "flatnet"}).encode()
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


class Stdin(io.BytesIO):
    def isatty(self):
        return False


def call(env, data=CONF, commands=None, monkeypatch=None):
    out, err = io.StringIO(), io.StringIO()
    rc = dispatch(env, Stdin(data), out, err, commands=commands or {"ADD": lambda a, c: {"ok": 1}})
    text = out.getvalue().strip()
    return rc, json.loads(text) if text else None


@pytest.fixture(autouse=True)
def as_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)


def test_version_answers_without_a_netns():
    rc, out = call({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}')
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_add_result_is_printed():
    assert call(ENV) == (0, {"ok": 1})


def test_unknown_command_is_code_4_with_version():
    rc, out = call({**ENV, "CNI_COMMAND": "FROB"})
    assert rc == 1 and out["code"] == 4 and out["cniVersion"] == "1.0.0" and "FROB" in out["msg"]


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_missing_variable_is_named(missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    rc, out = call(env)
    assert rc == 1 and out["code"] == 4 and missing in out["msg"]


def test_del_does_not_need_a_netns():
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"}
    rc, _ = call({**env, "CNI_COMMAND": "DEL"}, commands={"DEL": lambda a, c: None})
    assert rc == 0


@pytest.mark.parametrize("cid", ["-abc", "a/b", "a b", "é"])
def test_bad_container_id(cid):
    rc, out = call({**ENV, "CNI_CONTAINERID": cid})
    assert rc == 1 and out["code"] == 4


def test_bad_ifname():
    rc, out = call({**ENV, "CNI_IFNAME": "x" * 16})
    assert rc == 1 and out["code"] == 4


def test_not_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    rc, out = call(ENV)
    assert rc == 1 and out["code"] == 100 and "root" in out["msg"]


def test_internal_bug_still_answers_in_cni_format():
    def boom(a, c):
        raise KeyError("x")
    rc, out = call(ENV, commands={"ADD": boom})
    assert rc == 1 and out["code"] == 5 and "internal error" in out["msg"]


def test_error_uses_requested_version():
    rc, out = call({**ENV, "CNI_COMMAND": "FROB"}, b'{"cniVersion": "0.4.0", "name": "n"}')
    assert out["cniVersion"] == "0.4.0"


def _result(version):
    subnet = parse_subnet("10.87.1.0/24", "s")
    return add_result(version, bridge=("br", "aa"), host=("fn-1", "bb"), container=("eth0", "cc"),
                      sandbox="/run/netns/x", ip=parse_ip("10.87.1.9", "i"), subnet=subnet,
                      gateway=subnet.first_host)


def test_result_1_0_0_shape():
    r = _result("1.0.0")
    assert r["ips"] == [{"address": "10.87.1.9/24", "gateway": "10.87.1.1", "interface": 2}]
    assert r["interfaces"][2]["sandbox"] == "/run/netns/x"
    assert r["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.87.1.1"}]


def test_result_0_4_0_has_ip_version():
    assert _result("0.4.0")["ips"][0]["version"] == "4"


@pytest.mark.parametrize("data", [b"[" * 100000, b'{"cniVersion":"1.0.0","x":' + b"[" * 100000,
                                  b'{"cniVersion":"1.0.0","name":"n","type":"flatnet","pad":"'
                                  + b"x" * (1 << 20) + b'"}'], ids=["deep", "deep-in-object", "oversized"])
def test_hostile_stdin_is_cni_error_json_without_traceback(data):
    """Issue 13 item 8: 100000 nested '[' ended in a RecursionError traceback. The real
    plugin process answers the spec's error JSON (code 6) and exits 1."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(ENV, PATH=os.environ.get("PATH", "/usr/bin:/bin"), PYTHONPATH=repo)
    proc = subprocess.run([sys.executable, "-m", "flatnet.cni"], input=data, env=env, capture_output=True, timeout=30,
                          cwd=repo)
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr and b"RecursionError" not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["code"] == 6 and "network config is not valid JSON" in out["msg"]
    assert "nested deeper than 64 levels" in out["msg"] or "larger than" in out["msg"]
