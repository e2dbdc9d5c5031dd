"""Real Podman 5 + netavark (Debian 13 sandbox) attaching containers with the flatnet
netavark plugin. The host's own Podman 4.3 is never used here (tests/harness/sandbox.py)."""
import concurrent.futures
import json
import pathlib

import pytest

from tests.harness.sandbox import (IMAGE, PYTHON, Sandbox, import_busybox, install_flatnet, lease_json,
                                   resolv_conf)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE = "10.87.31.0/24"
STORE = "/var/lib/flatnet/ipam/flatnet"
HTTPD = ["sh", "-c", 'trap "exit 0" TERM; httpd -f -p 80 -h /www & wait']
WORKTREE = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def sb():
    box = Sandbox(WORKTREE)
    try:
        box.install_output = install_flatnet(box, LEASE)
        import_busybox(box)
        yield box
    finally:
        box.close()


@pytest.fixture
def clean(sb):
    """Every test starts and ends with no container, no fn- veth and no store entry."""
    yield sb
    sb.podman("rm", "-af", "-t", "0", check=False, timeout=120)
    left = veths(sb), entries(sb)
    assert left == ([], []), f"left behind: {left}"


def run(sb, *args, network="flatnet", check=True, timeout=60):
    return sb.podman("run", "--pull", "never", "--network", network, *args, check=check, timeout=timeout)


def veths(sb) -> list[str]:
    out = sb.host_sh("ip -o link show").stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines()
                  if line.split(": ")[1].startswith("fn-"))


def entries(sb) -> list[str]:
    out = sb.run("sh", "-c", f"ls {STORE} 2>/dev/null || true").stdout.split()
    return sorted(n for n in out if n[0].isdigit())


def ip_of(sb, name, network="flatnet") -> str:
    return sb.podman("inspect", "--format", f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}",
                     name).stdout.strip()


def test_installer_picks_netavark_and_makes_the_flatnet_network(sb):
    assert "podman 5: netavark backend" in sb.install_output
    assert "network: /etc/containers/networks/flatnet.json (created)" in sb.install_output
    net = json.loads(sb.podman("network", "inspect", "flatnet").stdout)[0]
    assert net["driver"] == "flatnet"
    assert net["subnets"] == [{"subnet": LEASE, "gateway": "10.87.31.1"}]
    info = json.loads(sb.run("/usr/local/libexec/netavark/flatnet", "info").stdout)
    assert info["api_version"] == "1.0.0"
    # idempotent: a second run changes nothing
    again = install_flatnet(sb, LEASE)
    assert "(already in place)" in again


def test_container_gets_its_address_mac_and_mtu(clean):
    sb = clean
    out = run(sb, "--rm", IMAGE, "sh", "-c", "ip -o addr show eth0; ip -o link show eth0").stdout
    assert "inet 10.87.31." in out and "mtu 1420" in out
    run(sb, "-d", "--name", "fixed", "--ip", "10.87.31.77", "--mac-address", "02:aa:bb:cc:dd:01",
        "--network-alias", "www", IMAGE, *HTTPD)
    assert ip_of(sb, "fixed") == "10.87.31.77"
    mac = sb.podman("inspect", "--format", "{{.NetworkSettings.Networks.flatnet.MacAddress}}", "fixed").stdout
    assert mac.strip() == "02:aa:bb:cc:dd:01"
    link = run(sb, "--rm", IMAGE, "ip", "-o", "link", "show", "eth0", network="container:fixed").stdout
    assert "02:aa:bb:cc:dd:01" in link and "mtu 1420" in link
    assert entries(sb) == ["10.87.31.77"]
    assert len(veths(sb)) == 1
    # names for a resolver: the container's name and its aliases (Podman adds the short id)
    names = sb.read(f"{STORE}/names/10.87.31.77").split()
    assert names[0] == "fixed" and "www" in names
    sb.podman("rm", "-f", "-t", "0", "fixed")
    assert sb.run("ls", f"{STORE}/names").stdout.split() == []


def test_resolv_conf_names_the_engines_resolver_while_it_serves_names(clean):
    """The lease says the engine serves names (its `dns`): setup's StatusBlock names it,
    and Podman writes it into the container's resolv.conf, with the search domain. A
    standalone network (--subnet: no engine) and a lease without `dns` name nothing."""
    sb = clean
    sb.write("/run/flatnet/lease.json", lease_json(LEASE, dns=True))
    sb.podman("network", "create", "-d", "flatnet", "--subnet", "10.87.35.0/24", "--interface-name",
              "flatnet-br3", "alone")
    try:
        servers, search = resolv_conf(run(sb, "--rm", IMAGE, "cat", "/etc/resolv.conf").stdout)
        assert servers == ["10.87.31.1"] and search[0] == "flatnet", (servers, search)
        alone = resolv_conf(run(sb, "--rm", IMAGE, "cat", "/etc/resolv.conf", network="alone").stdout)
        assert "10.87.35.1" not in alone[0] and "flatnet" not in alone[1], alone
    finally:
        sb.write("/run/flatnet/lease.json", lease_json(LEASE))
        sb.podman("network", "rm", "alone", check=False)
    servers, search = resolv_conf(run(sb, "--rm", IMAGE, "cat", "/etc/resolv.conf").stdout)
    assert "10.87.31.1" not in servers and "flatnet" not in search, (servers, search)


def test_three_containers_reach_each_other_and_the_sandbox_host(clean):
    sb = clean
    names = ["web1", "web2", "tcp"]
    run(sb, "-d", "--name", "web1", IMAGE, *HTTPD)
    run(sb, "-d", "--name", "web2", IMAGE, *HTTPD)
    run(sb, "-d", "--name", "tcp", IMAGE, "sh", "-c", 'trap "exit 0" TERM; nc -ll -p 7000 -e echo pong & wait')
    ips = [ip_of(sb, n) for n in names]
    assert len(set(ips)) == 3 and all(ip.startswith("10.87.31.") for ip in ips)
    for ip in ips:
        out = run(sb, "--rm", "--cap-add", "NET_RAW", IMAGE, "ping", "-c", "1", "-W", "2", ip, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    got = run(sb, "--rm", IMAGE, "timeout", "5", "wget", "-qO-", f"http://{ips[1]}/").stdout
    assert "hello from a flatnet container" in got
    got = run(sb, "--rm", IMAGE, "sh", "-c", f"echo ping | timeout 5 nc {ips[2]} 7000").stdout
    assert "pong" in got
    # the sandbox host reaches a container, and a container reaches the host (its gateway)
    got = sb.run("timeout", "5", "busybox", "wget", "-qO-", f"http://{ips[0]}/").stdout
    assert "hello from a flatnet container" in got
    out = run(sb, "--rm", "--cap-add", "NET_RAW", IMAGE, "ping", "-c", "1", "-W", "2", "10.87.31.1", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_lifecycle_and_many_runs_leave_nothing_behind(clean):
    sb = clean
    run(sb, "-d", "--name", "life", IMAGE, *HTTPD)
    assert len(entries(sb)) == 1 and len(veths(sb)) == 1
    sb.podman("stop", "-t", "5", "life")
    assert veths(sb) == [] and entries(sb) == []
    sb.podman("start", "life")
    assert ip_of(sb, "life").startswith("10.87.31.") and len(entries(sb)) == 1 and len(veths(sb)) == 1
    sb.podman("restart", "-t", "5", "life")
    assert len(entries(sb)) == 1 and len(veths(sb)) == 1
    sb.podman("kill", "life")
    sb.podman("wait", "life", check=False)
    sb.podman("rm", "life")
    assert veths(sb) == [] and entries(sb) == []
    for _ in range(30):
        run(sb, "--rm", IMAGE, "true")
    assert veths(sb) == [] and entries(sb) == []
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        outs = list(pool.map(lambda i: run(sb, "--rm", IMAGE, "ip", "-o", "-4", "addr", "show", "eth0",
                                           timeout=120).stdout, range(10)))
    ips = {o.split("inet ")[1].split("/")[0] for o in outs}
    assert len(ips) == 10
    assert veths(sb) == [] and entries(sb) == []
    assert sb.host_sh("ip -o -4 addr show").stdout.count("inet 10.87.31.") == 1  # the gateway only


def test_failing_setup_leaves_nothing_and_podman_prints_the_message(clean):
    sb = clean
    # a stale store entry (another container's) for the address Podman will hand out
    sb.write(f"{STORE}/10.87.31.99", "deadbeefcafe\neth0\n")
    try:
        out = run(sb, "--rm", "--ip", "10.87.31.99", IMAGE, "true", check=False)
        assert out.returncode != 0
        assert "flatnet: address 10.87.31.99 is already held by container deadbeefcafe/eth0" in out.stderr
        assert veths(sb) == [] and entries(sb) == ["10.87.31.99"]
    finally:
        sb.run("rm", f"{STORE}/10.87.31.99")
    out = run(sb, "--rm", "-p", "8080:80", IMAGE, "true", check=False)
    assert out.returncode != 0 and "flatnet does not publish ports" in out.stderr
    assert veths(sb) == [] and entries(sb) == []


def test_network_connect_adds_a_second_interface(clean):
    sb = clean
    sb.podman("network", "create", "-d", "flatnet", "--subnet", "10.87.32.0/24", "--interface-name",
              "flatnet-br1", "second")
    try:
        run(sb, "-d", "--name", "multi", IMAGE, *HTTPD)
        sb.podman("network", "connect", "second", "multi")
        assert ip_of(sb, "multi", "second").startswith("10.87.32.")
        addrs = run(sb, "--rm", IMAGE, "ip", "-o", "-4", "addr", network="container:multi").stdout
        assert " eth0 " in addrs and "inet 10.87.31." in addrs
        assert " eth1 " in addrs and "inet 10.87.32." in addrs
        routes = run(sb, "--rm", IMAGE, "ip", "route", network="container:multi").stdout
        routes = "\n".join(" ".join(line.split()) for line in routes.splitlines())  # busybox pads
        assert "default via 10.87.31.1 dev eth0 metric 100" in routes
        assert "default via 10.87.32.1 dev eth1 metric 101" in routes
        assert len(veths(sb)) == 2
        # both interfaces answer
        for ip in (ip_of(sb, "multi"), ip_of(sb, "multi", "second")):
            got = sb.run("timeout", "5", "busybox", "wget", "-qO-", f"http://{ip}/").stdout
            assert "hello from a flatnet container" in got
        sb.podman("network", "disconnect", "second", "multi")
        assert len(veths(sb)) == 1
        assert sb.run("sh", "-c", "ls /var/lib/flatnet/ipam/second | grep -c '^10' || true").stdout.strip() == "0"
    finally:
        sb.podman("rm", "-f", "-t", "0", "multi", check=False)
        sb.podman("network", "rm", "second", check=False)


def test_doctor_checks_the_netavark_backend(sb):
    code = ("import json; from flatnet.doctor import check_podman; "
            "print(json.dumps([f.__dict__ for f in check_podman(lease_file='/run/flatnet/lease.json')]))")
    found = {f["check"]: f for f in json.loads(sb.run(PYTHON, "-c", code).stdout)}
    assert found["Podman network backend"]["ok"] and "netavark" in found["Podman network backend"]["detail"]
    assert found["netavark plugin"]["ok"], found
    assert found["flatnet network"] == {"ok": True, "check": "flatnet network",
                                        "detail": f"network flatnet uses {LEASE}", "fix": found["flatnet network"]["fix"]}
    # the host's lease moved: the doctor says the network is stale and how to fix it
    sb.write("/run/flatnet/lease.json", lease_json("10.87.33.0/24"))
    try:
        found = {f["check"]: f for f in json.loads(sb.run(PYTHON, "-c", code).stdout)}
        assert not found["flatnet network"]["ok"]
        assert "lease is 10.87.33.0/24" in found["flatnet network"]["detail"]
    finally:
        sb.write("/run/flatnet/lease.json", lease_json(LEASE))


def test_failure_after_the_veth_exists_is_undone(clean):
    """A second network whose default route clashes with the first's (same metric): the
    kernel refuses it after the veth pair exists; the plugin removes the pair and the
    address, Podman prints why, and the container keeps its first network."""
    sb = clean
    sb.podman("network", "create", "-d", "flatnet", "--subnet", "10.87.34.0/24", "--interface-name",
              "flatnet-br2", "-o", "metric=100", "clash")
    try:
        run(sb, "-d", "--name", "one", IMAGE, *HTTPD)
        first = ip_of(sb, "one")
        out = sb.podman("network", "connect", "clash", "one", check=False)
        assert out.returncode != 0
        assert "flatnet: cannot configure eth1 in the container: File exists" in out.stderr, out.stderr
        assert len(veths(sb)) == 1
        assert sb.run("sh", "-c", "ls /var/lib/flatnet/ipam/clash | grep -c '^10' || true").stdout.strip() == "0"
        # Podman 5.4 keeps the failed network in its database (fixed in Podman 5.5), so
        # `podman inspect one` fails from here on; the container works on its first network
        got = sb.run("timeout", "5", "busybox", "wget", "-qO-", f"http://{first}/").stdout
        assert "hello from a flatnet container" in got
    finally:
        sb.podman("rm", "-f", "-t", "0", "one", check=False)
        sb.podman("network", "rm", "clash", check=False)
