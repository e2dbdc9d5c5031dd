"""Egress and names across hosts (issue 17): two hosts and a lighthouse in namespaces,
containers attached by the real CNI plugin with the name and aliases Podman 4.3 passes
(CNI_ARGS K8S_POD_NAME, runtimeConfig.aliases).

"The internet" is the underlay namespace (192.0.2.200): a UDP echo server there tells
which source address it saw, and a small DNS server there is the hosts' upstream
resolver. Containers get the CNI result's `dns` as their resolv.conf (ip netns exec
mounts /etc/netns/<ns>/resolv.conf), as Podman writes it.
"""
import os
import shutil
import subprocess
import sys
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from flatnet.demo import CLIENT_IP, Lab, sh
from tests.harness.netns import RUN_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UPSTREAM = r'''
import socket, sys
import dns.message, dns.rrset, dns.rcode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, addr = s.recvfrom(4096)
    try:
        q = dns.message.from_wire(data)
    except Exception:
        continue
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text()
    if name == "outside.example." and q.question[0].rdtype == 1:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "198.51.100.7"))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    s.sendto(r.to_wire(), addr)
'''

ECHO = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(addr[0].encode(), addr)
'''

ASK_ECHO = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for _ in range(3):
    s.sendto(b"who am i", (sys.argv[1], 9999))
    try:
        print(s.recvfrom(2048)[0].decode()); break
    except socket.timeout:
        continue
'''


def spawn(ns: str, code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def resolv_conf(c: dict) -> None:
    d = f"/etc/netns/{c['ns']}"
    os.makedirs(d, exist_ok=True)
    lines = [f"nameserver {s}" for s in c["dns"].get("nameservers", [])]
    lines += [f"search {' '.join(c['dns']['search'])}"] if c["dns"].get("search") else []
    with open(f"{d}/resolv.conf", "w") as f:
        f.write("\n".join(lines) + "\noptions timeout:1 attempts:2\n")


def lookup(ns: str, server: str, name: str, tcp: bool = False) -> tuple[int, list[str]]:
    """(rcode, A addresses) asked from inside namespace `ns`."""
    code = ("import dns.message,dns.query,sys\n"
            f"q=dns.message.make_query({name!r},'A')\n"
            f"r=dns.query.{'tcp' if tcp else 'udp'}(q,{server!r},timeout=2)\n"
            "print(r.rcode(),' '.join(sorted(x.address for rr in r.answer for x in rr)))")
    out = sh(sys.executable, "-c", code, ns=ns, check=False, timeout=20)
    if out.returncode != 0:
        return -1, []
    rcode, _, addrs = out.stdout.decode().strip().partition(" ")
    return int(rcode), addrs.split()


def wait_for(fn, seconds: float, step: float = 0.05):
    end = time.monotonic() + seconds
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    extra = f'[dns]\nupstream = ["{CLIENT_IP}"]\n'
    lab = Lab(f"{RUN_PREFIX}e", str(tmp_path_factory.mktemp("egress") / "lab"), hosts=2, lighthouse=True,
              extra_config={1: extra, 2: extra})
    procs = []
    try:
        lab.up(containers_per_host=0)
        procs += [spawn(lab.ul_ns, UPSTREAM, CLIENT_IP), spawn(lab.ul_ns, ECHO, CLIENT_IP)]
        a, b = lab.hosts
        lab.web1 = lab.add_container(a, "web1")
        lab.web2 = lab.add_container(b, "web2", aliases=("db", "web2-alias"))
        for c in (lab.web1, lab.web2):
            resolv_conf(c)
        yield lab
    finally:
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait()
        for ns in lab.namespaces:
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        lab.down()


def gw(h) -> str:
    return h.subnet.rsplit(".", 1)[0] + ".1"


def test_cni_result_names_the_engines_dns(lab):
    a, _ = lab.hosts
    assert lab.web1["dns"] == {"nameservers": [gw(a)], "search": ["flatnet"]}


def test_egress_is_masqueraded_through_the_uplink(lab):
    a, _ = lab.hosts
    seen = sh(sys.executable, "-c", ASK_ECHO, CLIENT_IP, ns=lab.web1["ns"], timeout=20).stdout.decode().strip()
    assert seen == a.underlay_ip  # the "internet" saw the host's uplink address, not 10.87.x
    rules = sh("iptables", "-t", "nat", "-S", "FLATNET-POSTROUTING", ns=a.ns).stdout.decode()
    assert f"-s {a.subnet} -d 10.87.0.0/16 -j RETURN" in rules and "MASQUERADE" in rules


def test_overlay_traffic_keeps_real_addresses(lab):
    """A container on host 2 sees host 1's container by its own overlay address."""
    echo = spawn(lab.web2["ns"], ECHO, "0.0.0.0")
    try:
        def ask():
            out = sh(sys.executable, "-c", ASK_ECHO, lab.web2["ip"], ns=lab.web1["ns"], check=False, timeout=20)
            return out.stdout.decode().strip()
        assert wait_for(ask, 15, 0.2) == lab.web1["ip"]
    finally:
        os.killpg(echo.pid, 9)
        echo.wait()


def test_names_resolve_on_every_host_and_by_alias(lab):
    a, b = lab.hosts
    for h in (a, b):
        for name, ip in (("web1.flatnet", lab.web1["ip"]), ("web2.flatnet", lab.web2["ip"]),
                         ("db.flatnet", lab.web2["ip"]), ("web2-alias.flatnet", lab.web2["ip"])):
            got = wait_for(lambda h=h, name=name, ip=ip: lookup(h.ns, gw(h), name) == (0, [ip]), 5)
            assert got, (h.name, name, lookup(h.ns, gw(h), name))
    assert lookup(a.ns, gw(a), "nobody.flatnet")[0] == dns.rcode.NXDOMAIN
    assert lookup(a.ns, gw(a), "web2.flatnet", tcp=True) == (0, [lab.web2["ip"]])


def test_ping_and_http_by_name_across_hosts(lab):
    ok = wait_for(lambda: sh("ping", "-c", "1", "-W", "1", "web2", ns=lab.web1["ns"], check=False).returncode == 0,
                  15, 0.2)
    assert ok, sh("ping", "-c", "1", "-W", "1", "web2.flatnet", ns=lab.web1["ns"], check=False).stderr
    server = subprocess.Popen(["ip", "netns", "exec", lab.web2["ns"], sys.executable, "-m", "http.server",
                               "8080", "--bind", "0.0.0.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, cwd="/")
    try:
        code = ("import urllib.request\n"
                "print(urllib.request.urlopen('http://web2.flatnet:8080/', timeout=3).status)")
        got = wait_for(lambda: sh(sys.executable, "-c", code, ns=lab.web1["ns"], check=False,
                                  timeout=20).stdout.decode().strip() == "200", 15, 0.3)
        assert got
    finally:
        os.killpg(server.pid, 9)
        server.wait()


def test_other_names_are_forwarded_upstream(lab):
    a, _ = lab.hosts
    assert lookup(lab.web1["ns"], gw(a), "outside.example") == (0, ["198.51.100.7"])
    assert lookup(lab.web1["ns"], gw(a), "outside.example", tcp=False)[1] == ["198.51.100.7"]
    assert lookup(lab.web1["ns"], gw(a), "missing.example")[0] == dns.rcode.NXDOMAIN


def test_removed_name_is_gone_everywhere_within_2s_and_restart_follows(lab):
    a, b = lab.hosts
    c = lab.add_container(b, "gone1")
    for h in (a, b):
        assert wait_for(lambda h=h: lookup(h.ns, gw(h), "gone1.flatnet") == (0, [c["ip"]]), 5)
    lab.remove_container(b, c)
    t0 = time.monotonic()
    for h in (b, a):
        assert wait_for(lambda h=h: lookup(h.ns, gw(h), "gone1.flatnet")[0] == dns.rcode.NXDOMAIN, 3)
    elapsed = time.monotonic() - t0
    print(f"removed name gone from both hosts after {elapsed:.2f} s")
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    # podman restart: DEL then ADD; the address changes, the name follows
    c = lab.add_container(b, "again1")
    for h in (a, b):
        assert wait_for(lambda h=h: lookup(h.ns, gw(h), "again1.flatnet") == (0, [c["ip"]]), 3)
    old = c["ip"]
    lab.cni(b, "DEL", c["id"], f"/run/netns/{c['ns']}")
    new = lab.cni(b, "ADD", c["id"], f"/run/netns/{c['ns']}", "again1")["ips"][0]["address"].split("/")[0]
    assert new != old
    for h in (a, b):
        assert wait_for(lambda h=h: lookup(h.ns, gw(h), "again1.flatnet") == (0, [new]), 2)


def test_malformed_queries_get_formerr_or_nothing_and_the_server_keeps_answering(lab):
    a, _ = lab.hosts
    code = r'''
import random, socket, struct, sys
import dns.message
rng = random.Random(17)
good = dns.message.make_query("web1.flatnet", "A").to_wire()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.2)
answers = formerr = 0
for i in range(600):
    kind = i % 3
    if kind == 0:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
    elif kind == 1:
        b = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b[:rng.randrange(len(b) + 1)])
    else:
        data = good[:12] + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
    data = b"\x00\x00" + data[2:] if len(data) >= 2 else data
    u.sendto(data, (sys.argv[1], 53))
    try:
        r = u.recv(4096)
        answers += 1
        formerr += (r[3] & 15) == 1
    except socket.timeout:
        pass
t = socket.create_connection((sys.argv[1], 53), timeout=2)
for n in range(20):
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(12, 100)))
    t.sendall(struct.pack("!H", len(junk)) + junk)
t.close()
u.sendto(good, (sys.argv[1], 53)); u.settimeout(2)
r = dns.message.from_wire(u.recv(4096))
print(answers, formerr, r.rcode(), r.answer[0][0].address)
'''
    out = sh(sys.executable, "-c", code, gw(a), ns=lab.web1["ns"], timeout=240).stdout.decode().split()
    answers, formerr, rcode, addr = int(out[0]), int(out[1]), int(out[2]), out[3]
    assert answers >= formerr > 0 and rcode == 0 and addr == lab.web1["ip"]
    assert lab.status(a)["dns"]["formerr"] >= formerr
