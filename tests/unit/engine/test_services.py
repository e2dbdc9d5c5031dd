"""Service names and routes at the engine (issue 13 item 6): one rule, bad entries
refused one by one with a reason, never the whole table."""
import ipaddress
import json

import pytest

from flatnet.engine import podman_labels
from flatnet.engine.services import ServiceError, ServiceRegistry

SUBNET = ipaddress.IPv4Network("10.87.1.0/24")


@pytest.fixture
def reg(tmp_path):
    return ServiceRegistry(str(tmp_path / "services.json"), "host-a", "office.lan")


def remote(name, host="", node="host-b", addr="10.87.2.5"):
    return {"name": name, "addr": addr, "port": 80, "host": host, "prefix": "/", "node": node,
            "gateway": ("192.0.2.2", 80)}


def test_publish_applies_the_rule_with_clear_errors(reg):
    with pytest.raises(ServiceError, match=r"service name 'my_app': character '_' is not allowed"):
        reg.publish(SUBNET, "my_app", "10.87.1.5", 80)
    with pytest.raises(ServiceError, match=r"host 'wiki\.\.lan': empty label"):
        reg.publish(SUBNET, "wiki", "10.87.1.5", 80, host="wiki..lan")
    assert reg.local == {}


def test_unicode_names_are_published_in_punycode(reg):
    entry = reg.publish(SUBNET, "Café", "10.87.1.5", 80, host="Café.Office.lan")
    assert entry["name"] == "xn--caf-dma" and entry["host"] == "xn--caf-dma.office.lan"
    assert reg.unpublish("café") and reg.local == {}


def test_one_bad_catalog_entry_is_dropped_alone_and_reported(reg):
    """Before: a catalog name like 'café' (accepted by the lighthouse) reached the gateway,
    whose validator then refused the whole route table."""
    reg.publish(SUBNET, "notes", "10.87.1.5", 80)
    reg.set_remote([remote("wiki"), remote("café"), remote("docs", host="my_app.lan"), remote("git")])
    doc = reg.routes(("192.0.2.1", 80))
    assert sorted({r["service"] for r in doc["routes"]}) == ["git", "notes", "wiki"]
    reasons = {r["name"]: r for r in doc["rejected"]}
    assert reasons["café"]["reason"].startswith("service name: not ASCII")
    assert reasons["café"]["source"] == "catalog (node host-b)"
    assert reasons["docs"]["reason"] == "host: character '_' is not allowed (use a-z, 0-9 and '-')"
    assert reg.rejected() == doc["rejected"]


def test_a_service_the_lighthouse_refused_is_not_routed_and_is_listed(reg):
    reg.publish(SUBNET, "wiki", "10.87.1.5", 80)
    reg.publish(SUBNET, "notes", "10.87.1.6", 80)
    reg.refuse("lh", "wiki", "service 'wiki': name 'wiki' is already published by node host-b")
    doc = reg.routes(None)
    assert {r["service"] for r in doc["routes"]} == {"notes"}
    assert doc["rejected"] == [{"name": "wiki", "host": "", "source": "lighthouse lh",
                                "reason": "service 'wiki': name 'wiki' is already published by node host-b"}]
    reg.clear_refusals("lh")
    assert {r["service"] for r in reg.routes(None)["routes"]} == {"notes", "wiki"}


def test_saved_services_from_an_older_version_that_break_the_rule(tmp_path):
    path = tmp_path / "services.json"
    path.write_text(json.dumps([{"name": "café", "addr": "10.87.1.5", "port": 80, "host": "", "prefix": "/"},
                                {"name": "wiki", "addr": "10.87.1.6", "port": 80, "host": "", "prefix": "/"}]))
    reg = ServiceRegistry(str(path), "host-a", "office.lan")
    assert list(reg.local) == ["wiki"]
    assert reg.rejected()[0]["name"] == "café" and "punycode" in reg.rejected()[0]["reason"]


def container(name, label, ip="10.87.1.9"):
    return {"id": name, "name": name, "label": label, "ips": [ip]}


def test_a_bad_label_name_is_skipped_alone(reg):
    """Before: `flatnet.publish=my_app:80` raised ServiceError inside sync(), which ended
    that scan: the containers after it were never published."""
    wanted, problems = podman_labels.desired(
        [container("a", "my_app:80,wiki:80"), container("b", "Café:8080")], SUBNET)
    assert sorted(wanted) == ["wiki", "xn--caf-dma"]
    assert problems == ["container a: label flatnet.publish: service name 'my_app': character '_' is not "
                        "allowed (use a-z, 0-9 and '-')"]
    managed = set()
    added, _ = podman_labels.sync(reg, SUBNET, wanted, managed, problems)
    assert sorted(added) == ["wiki", "xn--caf-dma"]


def test_sync_goes_on_after_one_refused_service(reg):
    wanted = {"bad_one": {"addr": "10.87.1.9", "port": 80, "container": "a"},
              "wiki": {"addr": "10.87.1.9", "port": 80, "container": "b"}}
    problems = []
    added, _ = podman_labels.sync(reg, SUBNET, wanted, set(), problems)
    assert added == ["wiki"] and len(problems) == 1 and "container a" in problems[0]
