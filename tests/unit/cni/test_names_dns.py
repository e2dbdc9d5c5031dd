"""What the plugin learns from Podman for DNS (CNI_ARGS K8S_POD_NAME, runtimeConfig
aliases), the names file it leaves for the engine, and the result's dns."""
import json

from hypothesis import given, settings, strategies as st

from flatnet.cni.store import FileStore

from flatnet.cni import commands
from flatnet.cni.conf import load_netconf
from flatnet.cni.ipv4 import Subnet, format_ip, parse_ip
from flatnet.cni.conf import lease_dns, parse_lease_dns
from flatnet.cni.result import add_result
from flatnet.cni.args import CmdArgs

# as measured from Podman 4.3.1 with a debug plugin (docs/cni.md, "Names")
PODMAN_ARGS = "IgnoreUnknown=1;K8S_POD_NAME=web1"
PODMAN_CONF = {"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet", "capabilities": {"aliases": True},
               "runtimeConfig": {"aliases": {"flatnet": ["db", "054b6ecab7e9"]}}}


def args(cni_args=PODMAN_ARGS, cid="054b6ecab7e9bb78"):
    return CmdArgs({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_ARGS": cni_args})


def conf(tmp_path, **extra):
    return load_netconf(json.dumps({**PODMAN_CONF, "dataDir": str(tmp_path), **extra}).encode())


def test_name_and_aliases_from_what_podman_passes(tmp_path):
    assert commands.container_names(args(), conf(tmp_path)) == ["web1", "db", "054b6ecab7e9"]
    other = conf(tmp_path, runtimeConfig={"aliases": {"othernet": ["x"]}})
    assert commands.container_names(args(""), other) == []
    odd = conf(tmp_path, runtimeConfig={"aliases": {"flatnet": [1, None, "", "two words", "a\nb", "ok"]
                                                    + ["a"] * 100}})
    assert commands.container_names(args(), odd) == ["web1", "ok"] + ["a"] * 26  # 32 aliases looked at


def test_names_go_to_the_store_and_leave_with_the_address(tmp_path):
    with FileStore(str(tmp_path), "flatnet") as store:
        store.reserve(ip := (10 << 24) | (87 << 16) | (1 << 8) | 5, "054b6ecab7e9bb78", "eth0")
        store.set_names(ip, commands.container_names(args(), conf(tmp_path)))
        path = tmp_path / "flatnet" / "names" / "10.87.1.5"
        assert path.read_text() == "web1\ndb\n054b6ecab7e9\n"
        store.release_by_id("054b6ecab7e9bb78", "eth0")
        assert not path.exists()


def test_result_dns_comes_from_the_lease():
    lease = {"subnet": "10.87.1.0/24", "dns": {"nameservers": ["10.87.1.1"], "search": ["flatnet"]}}
    dns = lease_dns(lease)
    assert dns == {"nameservers": ["10.87.1.1"], "search": ["flatnet"]}
    assert lease_dns({"subnet": "10.87.1.0/24"}) is None
    assert lease_dns({"dns": {"nameservers": [1]}}) is None
    assert lease_dns({"dns": "x"}) is None
    r = add_result("1.0.0", bridge=("b", "m"), host=("h", "m"), container=("eth0", "m"), sandbox="/x",
                   ip=(10 << 24) | 5, subnet=Subnet(10 << 24, 24),
                   gateway=(10 << 24) | 1, dns=dns)
    assert r["dns"] == dns


def test_lease_dns_is_strict_about_what_reaches_resolv_conf():
    """Podman writes these strings into the container's resolv.conf and netavark parses
    dns_server_ips as IP addresses: a malformed `dns` is dropped as a whole."""
    def dns(servers, search=("flatnet",)):
        return lease_dns({"dns": {"nameservers": list(servers), "search": list(search)}})
    assert dns(["10.87.1.1"], ["Flatnet"]) == {"nameservers": ["10.87.1.1"], "search": ["flatnet"]}
    assert dns(["10.87.1.1", "10.87.1.2", "10.87.1.3", "junk"])["nameservers"] == [
        "10.87.1.1", "10.87.1.2", "10.87.1.3"]  # at most 3 looked at, as resolv.conf readers do
    for servers, search in ((["::1"], ["flatnet"]), (["10.87.1.1 x"], ["flatnet"]), (["010.87.1.1"], ["flatnet"]),
                            (["10.87.1"], ["flatnet"]), ([None], ["flatnet"]),
                            ([], ["flatnet"]), (["10.87.1.1"], ["a\nnameserver 1.2.3.4"]),
                            (["10.87.1.1"], ["a b"]), (["10.87.1.1"], [""]), (["10.87.1.1"], [7]),
                            (["10.87.1.1"], ["x" * 64])):
        assert dns(servers, search) is None, (servers, search)
    assert lease_dns({"dns": {"nameservers": ["10.87.1.1"], "search": "flatnet"}}) is None
    assert lease_dns({"dns": {"nameservers": ["10.87.1.1"]}}) == {"nameservers": ["10.87.1.1"], "search": []}


def test_lease_and_its_dns_come_from_one_parse():
    subnet, gateway, dns = parse_lease_dns('{"subnet": "10.87.1.0/24", "gateway": "10.87.1.1", "dns": '
                                           '{"nameservers": ["10.87.1.1"], "search": ["flatnet"]}}', "x")
    assert (str(subnet), gateway, dns) == ("10.87.1.0/24", (10 << 24) | (87 << 16) | (1 << 8) | 1,
                                           {"nameservers": ["10.87.1.1"], "search": ["flatnet"]})
    assert parse_lease_dns('{"subnet": "10.87.1.0/24", "dns": {"nameservers": ["bad"]}}', "x")[2] is None


_TEXT = st.text(alphabet=st.sampled_from("0123456789.abcFLATnet- \n\t:;x"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=5), st.fixed_dictionaries({}, optional={
    "nameservers": st.one_of(st.lists(st.one_of(_TEXT, st.integers(), st.none()), max_size=5), _TEXT),
    "search": st.one_of(st.lists(st.one_of(_TEXT, st.integers()), max_size=8), _TEXT)})))
def test_lease_dns_fuzz_gives_none_or_what_resolv_conf_can_hold(dns):
    got = lease_dns({"dns": dns})
    if got is None:
        return
    assert 1 <= len(got["nameservers"]) <= 3 and len(got["search"]) <= 6
    for server in got["nameservers"]:
        assert format_ip(parse_ip(server, "x")) == server
    for domain in got["search"]:
        assert domain and domain == domain.lower() and not set(domain) - set("abcdefghijklmnopqrstuvwxyz0123456789-.")
