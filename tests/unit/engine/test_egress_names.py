"""Egress rules (engine.io.egress, with a fake iptables) and the engine's reading of
the CNI plugin's names files (engine.container_names)."""
import ipaddress
import subprocess

import pytest

from flatnet.engine import container_names
from flatnet.engine.config import ConfigError, parse
from flatnet.engine.io import egress

NET = ipaddress.IPv4Network("10.87.0.0/16")
SUB = ipaddress.IPv4Network("10.87.3.0/24")


class FakeIptables:
    def __init__(self, have_jump=False, restore_rc=0):
        self.calls, self.have_jump, self.restore_rc = [], have_jump, restore_rc

    def __call__(self, argv, input=None):
        self.calls.append((argv, input))
        rc = 0
        if argv[0] == "iptables-restore":
            rc = self.restore_rc
        elif "-C" in argv:
            rc = 0 if self.have_jump else 1
        return subprocess.CompletedProcess(argv, rc, "", "boom" if rc else "")


def test_ruleset_masquerades_only_what_leaves_the_overlay():
    text = egress.ruleset(NET, SUB, "flatnet-br0", "flatnet0", True)
    assert "-A FLATNET-POSTROUTING -s 10.87.3.0/24 -d 10.87.0.0/16 -j RETURN" in text
    assert text.index("RETURN") < text.index("MASQUERADE")
    assert "-A FLATNET-FORWARD -i flatnet-br0 -j ACCEPT" in text
    off = egress.ruleset(NET, SUB, "flatnet-br0", "flatnet0", False)
    assert "MASQUERADE" not in off and ":FLATNET-POSTROUTING - [0:0]" in off  # declared: emptied


def test_apply_is_idempotent_and_adds_missing_jumps_only():
    fake = FakeIptables(have_jump=False)
    egress.apply(NET, SUB, "flatnet-br0", "flatnet0", True, run=fake)
    inserts = [a for a, _ in fake.calls if "-I" in a]
    assert [a[4] for a in inserts] == ["nat", "filter"]
    fake = FakeIptables(have_jump=True)
    egress.apply(NET, SUB, "flatnet-br0", "flatnet0", True, run=fake)
    assert not [a for a, _ in fake.calls if "-I" in a]


def test_apply_failure_says_how_to_turn_it_off():
    with pytest.raises(egress.EgressError, match="masquerade = false"):
        egress.apply(NET, SUB, "b", "t", True, run=FakeIptables(restore_rc=1))


def test_config_keys():
    c = parse('[network]\nsubnet = "10.87.1.0/24"\n')
    assert c.masquerade and c.dns and c.dns_domain == "flatnet" and c.dns_ttl == 5 and c.dns_upstream is None
    c = parse('[network]\nsubnet = "10.87.1.0/24"\nmasquerade = false\n[dns]\nupstream = ["192.0.2.53"]\n')
    assert not c.masquerade and c.dns_upstream == (("192.0.2.53", 53),)
    for bad, msg in (('domain = "bad_domain"', "dns.domain"), ('ttl = -1', "dns.ttl"),
                     ('upstream = ["nowhere"]', "dns.upstream"), ('color = 1', "dns.color")):
        with pytest.raises(ConfigError, match=msg):
            parse(f'[network]\nsubnet = "10.87.1.0/24"\n[dns]\n{bad}\n')


def write_names(d, ip, names, reserve=True):
    (d / "names").mkdir(parents=True, exist_ok=True)
    (d / "names" / ip).write_text("".join(n + "\n" for n in names))
    if reserve:
        (d / ip).write_text("cid\neth0\n")


def test_scanner_reads_names_checks_the_reservation_and_the_rule(tmp_path):
    d = tmp_path / "flatnet"
    write_names(d, "10.87.3.2", ["Web1", "db"])
    write_names(d, "10.87.3.3", ["quirky_turing"])               # Podman's generated names have '_'
    write_names(d, "10.87.3.4", ["stale"], reserve=False)         # no reservation: left by a crash
    write_names(d, "10.87.9.4", ["elsewhere"])                    # not this host's subnet
    (d / "names" / "10.87.3.5.tmp").write_text("half\n")           # being written
    s = container_names.NameScanner(str(tmp_path))
    assert s.scan(SUB) is True
    assert s.entries == [("db", "10.87.3.2"), ("web1", "10.87.3.2")]
    assert len(s.skipped) == 1 and "quirky_turing" in s.skipped[0]
    assert s.scan(SUB) is False  # nothing changed: not read again
    (d / "names" / "10.87.3.2").unlink()
    assert s.scan(SUB) is True and s.entries == []


def test_table_joins_local_remote_and_services():
    t = container_names.build_table("flatnet", [("web", "10.87.1.2")], [("web", "10.87.2.2", "h2")],
                                    [{"name": "wiki", "addr": "10.87.1.9"}])
    assert t == {"web.flatnet": ["10.87.1.2", "10.87.2.2"], "wiki.flatnet": ["10.87.1.9"]}
