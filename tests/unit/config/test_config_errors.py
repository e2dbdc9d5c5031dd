"""Every config file's every key, given a value of each TOML / JSON type: the file is
either accepted or refused with an error that names the file and the key; never a
traceback (issue 20: `ttl = "60"` in the lighthouse config was an AttributeError)."""
import json

import pytest

from flatnet.cni.conf import load_netconf
from flatnet.cni.errors import CniError
from flatnet.engine import config as engine_config
from flatnet.engine.proto.confparse import type_problem
from flatnet.lighthouse import config as lighthouse_config

PATH = "/etc/flatnet/x.toml"
TOML_VALUES = ['"60"', "60", "6.5", "true", "[1, 2]", "{ a = 1 }", '""', "-1"]


def toml(doc: dict[str, dict[str, str]]) -> str:
    return "".join(f"[{table}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) for table, body in doc.items())


def keys(known: dict) -> list[tuple[str, str]]:
    return [(table, key) for table, allowed in known.items() if allowed for key in sorted(allowed)]


def check(parse, base: dict, table: str, key: str, value: str) -> None:
    doc = {t: dict(body) for t, body in base.items()}
    doc.setdefault(table, {})[key] = value
    try:
        parse(toml(doc), PATH)
    except engine_config.ConfigError as exc:
        msg = str(exc)
        assert msg.startswith(PATH + ": ") and f"{table}.{key}" in msg, msg
    # anything else (AttributeError, TypeError, ValueError) fails the test


@pytest.mark.parametrize("table, key", keys(engine_config._KNOWN))
def test_engine_config_wrong_types_name_file_and_key(table, key):
    for value in TOML_VALUES:
        check(engine_config.parse, {"network": {"subnet": '"10.87.1.0/24"'}}, table, key, value)


@pytest.mark.parametrize("table, key", keys(lighthouse_config._KNOWN))
def test_lighthouse_config_wrong_types_name_file_and_key(table, key):
    for value in TOML_VALUES:
        check(lighthouse_config.parse, {}, table, key, value)


def test_lighthouse_ttl_as_a_string_names_the_key():
    with pytest.raises(engine_config.ConfigError, match=r"^/etc/flatnet/x.toml: registry.ttl: expected int or float, "
                                                        r"got str '60'$"):
        lighthouse_config.parse('[registry]\nttl = "60"\n', PATH)
    assert lighthouse_config.parse("[registry]\nttl = 60\n", PATH).ttl == 60.0  # the positive twin


@pytest.mark.parametrize("text, key", [
    ("peers = 5\n", "peers"),
    ("lighthouses = 5\n", "lighthouses"),
    ("lighthouses = [1]\n", "lighthouses"),
    ("peers = [\"x\"]\n", "peers"),
    ("[[peers]]\nname = 1\ncert = 2\nendpoints = [3]\nsubnet = 4\n", "peers[0]"),
    ("[[peers]]\nname = \"b\"\ncert = \"b.crt\"\nendpoints = \"1.2.3.4:5\"\nsubnet = \"10.87.2.0/24\"\n",
     "peers[0].endpoints"),
    ("[[lighthouses]]\nname = \"lh\"\ncert = \"lh.crt\"\nendpoints = [7]\n", "lighthouses[0].endpoints"),
    ("[firewall]\ninbound = 5\n", "firewall.inbound"),
    ("[firewall]\ninbound = [5]\n", "firewall.inbound[0]"),
    ("[firewall]\ndefault = 1\n", "firewall.default"),
    ("[[firewall.inbound]]\nport = 1.5\n", "firewall.inbound[0].port"),
    ("[[firewall.inbound]]\ncidr = 5\n", "firewall.inbound[0].cidr"),
])
def test_engine_arrays_of_tables_with_wrong_types_name_the_key(text, key):
    with pytest.raises(engine_config.ConfigError) as info:
        network = '[network]\nsubnet = "10.87.1.0/24"\n'
        # top-level keys come before the first table; tables after it
        engine_config.parse(network + text if text.startswith("[") else text + network, PATH)
    assert str(info.value).startswith(f"{PATH}: {key}"), str(info.value)


JSON_VALUES = ["60", 60, 6.5, True, [1], {"a": 1}, "", None]
CNI_KEYS = ["cniVersion", "name", "type", "bridge", "mtu", "subnet", "gateway", "leaseFile", "dataDir", "prevResult",
            "cni.dev/valid-attachments"]


@pytest.mark.parametrize("key", CNI_KEYS)
def test_cni_network_config_wrong_types_name_the_key(key):
    for value in JSON_VALUES:
        raw = {"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet", "subnet": "10.87.3.0/24"}
        raw[key] = value
        try:
            load_netconf(json.dumps(raw).encode())
        except CniError as exc:
            assert exc.msg.startswith(f"invalid network config: {key}: ") or (
                key == "cniVersion" and "cniVersion" in exc.msg), exc.msg


def test_cni_mtu_as_a_string_names_the_key():
    with pytest.raises(CniError, match=r"^invalid network config: mtu: expected int, got str '1400'$"):
        load_netconf(json.dumps({"cniVersion": "1.0.0", "name": "n", "mtu": "1400"}).encode())
    assert load_netconf(json.dumps({"cniVersion": "1.0.0", "name": "n", "mtu": 1400}).encode()).mtu == 1400


@pytest.mark.parametrize("value, kind, problem", [
    ("60", (int, float), "expected int or float, got str '60'"),
    (True, int, "expected int, got bool True"),
    (True, (int, float), "expected int or float, got bool True"),
    (60, (int, float), None),
    (True, bool, None),
    ("x", str, None),
])
def test_type_problem(value, kind, problem):
    assert type_problem(value, kind) == problem
