"""Two hosts in namespaces, each with flatnet-engine and a container namespace attached by
the CNI plugin (lease mode): encrypted traffic, what an attacker on the underlay sees,
what the engine rejects, and recovery from an engine restart."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer
from tests.harness.wait import file_contains, wait_for, wait_listening

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}e", str(tmp_path_factory.mktemp("lab")), hosts=2)
    try:
        lab.up(containers_per_host=1)
        yield lab
    finally:
        lab.down()


def py(ns: str, code: str, timeout: float = 60) -> str:
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def status(lab, host) -> dict:
    from flatnet.engine.io import control
    return json.loads(control.get(host.socket, "/status")[1])


def ping(src_ns: str, ip: str, count: int = 1, wait: int = 2) -> bool:
    return sh("ping", "-c", str(count), "-W", str(wait), ip, ns=src_ns, check=False).returncode == 0


def test_ping_across_hosts_both_ways(lab):
    a, b = lab.hosts
    assert ping(a.containers[0]["ns"], b.containers[0]["ip"], count=3)
    assert ping(b.containers[0]["ns"], a.containers[0]["ip"], count=3)
    # the host itself reaches remote containers too (its overlay source is its gateway address)
    assert ping(a.ns, b.containers[0]["ip"])


def test_tcp_transfer_checksum(lab):
    a, b = lab.hosts
    n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 20 << 20)
    assert n == 20 << 20 and got == sent
    # the engine moved it in TSO super-packets where the kernel offers them
    st, sb = status(lab, a), status(lab, b)
    if st["offloads"]["tun_tso"]:
        assert st["io"]["tso_super_packets"] > 0
        # and the receiver joined segments before writing them to its TUN (GRO)
        assert sb["io"]["tun_writes"] < sb["io"]["udp_datagrams_in"] / 2


def test_udp_burst_arrives_intact(lab):
    """Same-size datagrams are joined into UDP GSO writes on the receiving TUN: each
    must still arrive whole and unchanged."""
    a, b = lab.hosts
    receiver = subprocess.Popen(["ip", "netns", "exec", b.containers[0]["ns"], sys.executable, "-c", textwrap.dedent("""
        import hashlib, socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind(("0.0.0.0", 9100)); s.settimeout(3)
        seen, bad = set(), 0
        try:
            while True:
                d = s.recv(2048)
                seq, digest, body = d[:4], d[4:36], d[36:]
                if hashlib.sha256(seq + body).digest() != digest or len(d) != 400:
                    bad += 1
                seen.add(int.from_bytes(seq, "big"))
        except socket.timeout:
            pass
        print(len(seen), bad)
    """)], stdout=subprocess.PIPE, text=True)
    wait_listening(b.containers[0]["ns"], 9100, "udp")
    py(a.containers[0]["ns"], f"""
        import hashlib, os, socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3000):
            seq, body = i.to_bytes(4, "big"), os.urandom(364)
            s.sendto(seq + hashlib.sha256(seq + body).digest() + body, ("{b.containers[0]['ip']}", 9100))
            if i % 100 == 99:
                time.sleep(0.005)
    """)
    out, _ = receiver.communicate(timeout=30)
    received, bad = map(int, out.split())
    assert bad == 0
    assert received >= 2850  # paced, on an idle lab: at most a few lost


def test_underlay_carries_only_encrypted_udp(lab):
    a, b = lab.hosts
    pcap = os.path.join(lab.workdir, "ul.pcap")
    dump = subprocess.Popen(["ip", "netns", "exec", a.ns, "tcpdump", "-Z", "root", "--immediate-mode", "-i", "ul0", "-U", "-n", "-w", pcap],
                            stdout=subprocess.DEVNULL, stderr=open(pcap + ".log", "w"))
    try:
        wait_for(lambda: file_contains(pcap + ".log", "listening on"), 10, "tcpdump capturing")
        marker = "FLATNET-PLAINTEXT-MARKER-7f3a"
        py(a.containers[0]["ns"], f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(20):
                s.sendto(b"{marker}" * 10, ("{b.containers[0]['ip']}", 9999))
        """)
        assert ping(a.containers[0]["ns"], b.containers[0]["ip"])
        wait_for(lambda: os.path.getsize(pcap) >= 20 * len(marker) * 10, 5, "tcpdump wrote the tunnelled packets")
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    raw = open(pcap, "rb").read()
    assert marker.encode() not in raw
    lines = sh("tcpdump", "-nn", "-r", pcap).stdout.decode().splitlines()
    ip_lines = [l for l in lines if " IP " in l]
    assert all("UDP" in l and ".4787" in l for l in ip_lines), ip_lines[:5]
    # with UDP GSO several datagrams travel as one capture record: count bytes, not lines
    carried = sum(int(l.rsplit("length ", 1)[1]) for l in ip_lines)
    assert carried >= 20 * len(marker) * 10, (carried, open(pcap + ".log").read())


def test_tampered_replayed_and_spoofed_packets_are_dropped_and_counted(lab):
    a, b = lab.hosts
    pcap = os.path.join(lab.workdir, "data.pcap")
    dump = subprocess.Popen(["ip", "netns", "exec", a.ns, "tcpdump", "-Z", "root", "--immediate-mode", "-i", "ul0", "-U", "-n", "-w", pcap,
                             "udp and dst host", b.underlay_ip], stdout=subprocess.DEVNULL, stderr=open(pcap + ".log", "w"))
    try:
        wait_for(lambda: file_contains(pcap + ".log", "listening on"), 10, "tcpdump capturing")
        assert ping(a.containers[0]["ns"], b.containers[0]["ip"], count=2)
        # two echo requests: two data packets of 16 + 84 + 16 bytes behind their headers
        wait_for(lambda: os.path.getsize(pcap) >= 24 + 2 * (16 + 42 + 116), 5, "tcpdump wrote the data packets")
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    before = status(lab, b)["drops"]
    # one captured data packet (type 3), sent again unchanged and with a flipped byte
    py(a.ns, f"""
        import socket, struct
        raw = open("{pcap}", "rb").read()
        off, pkts = 24, []
        while off + 16 <= len(raw):
            incl = struct.unpack_from("<I", raw, off + 8)[0]
            frame = raw[off + 16: off + 16 + incl]; off += 16 + incl
            payload = frame[14 + 20 + 8:]
            if payload[:1] == b"\\x03" and len(payload) > 32:
                pkts.append(payload)
        assert pkts, "no data packet captured"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        good = pkts[-1]
        s.sendto(good, ("{b.underlay_ip}", 4787))                      # replay
        # tamper: a byte of ciphertext flipped, under a counter not seen yet (so the
        # replay window lets it through to the authentication check)
        bad = bytearray(good); bad[-20] ^= 0x55
        bad[8:16] = (struct.unpack_from("<Q", good, 8)[0] + 1000).to_bytes(8, "little")
        s.sendto(bytes(bad), ("{b.underlay_ip}", 4787))
    """)
    # an inner source outside host-1's subnet, encrypted by host-1's engine itself
    py(a.ns, f"""
        import socket, struct
        def csum(b):
            s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); return ~(s + (s >> 16)) & 0xffff
        src, dst = socket.inet_aton("10.87.99.7"), socket.inet_aton("{b.containers[0]['ip']}")
        udp = struct.pack("!HHHH", 5000, 5001, 8 + 4, 0) + b"evil"
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
        hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for _ in range(3):
            s.sendto(hdr + udp, ("{b.containers[0]['ip']}", 0))
    """)
    after = wait_for(lambda: (d := status(lab, b)["drops"])["replay"] >= before["replay"] + 1
                     and d["auth_failed"] >= before["auth_failed"] + 1
                     and d["source_not_allowed"] >= before["source_not_allowed"] + 3 and d, 5,
                     f"the replayed, tampered and spoofed packets counted (before: {before})")
    from flatnet.engine.io import control
    peer_row = json.loads(control.get(b.socket, "/peers")[1])[0]
    assert peer_row["rx_dropped"] >= 2  # the replayed and the tampered packet, counted against host-1
    assert after["auth_failed"] >= before["auth_failed"] + 1
    assert after["source_not_allowed"] >= before["source_not_allowed"] + 3
    assert ping(a.containers[0]["ns"], b.containers[0]["ip"])  # still forwarding


def _initiation_from(lab, ca_dir: str, name: str, days_valid: int, b) -> None:
    """A handshake initiation from a node whose certificate the test chooses."""
    py(lab.hosts[0].ns, f"""
        import socket, time
        from nacl.signing import SigningKey
        from flatnet.engine import pki
        from flatnet.engine.proto import cert as certs, cookie, handshake as hsm
        from flatnet.engine.proto.noise import generate_keypair
        ca_dir = "{ca_dir}"
        ca = pki.load_ca(ca_dir + "/ca.crt")
        ca_key = SigningKey(pki.read_secret(ca_dir + "/ca.key"))
        priv, pub = generate_keypair()
        now = int(time.time())
        nb, na = (now - 10 * 86400, now - 86400) if {days_valid} < 0 else (now - 60, now + 86400)
        raw = certs.sign_node(ca_key, ca, "{name}", pub, [], nb, na)
        me = hsm.Identity(priv, certs.decode(raw)[0], ca)
        peer = pki.load_peer_cert("{lab.workdir}/pki/{b.name}.crt", pki.load_ca("{lab.workdir}/pki/ca.crt"), time.time())
        hs, packet = hsm.create_initiation(me, peer.key, 12345, time.time_ns())
        packet = cookie.add_macs(packet, peer.key, None)[0]
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(packet, ("{b.underlay_ip}", 4787))
    """)


def test_foreign_ca_and_expired_certificate_are_rejected(lab, tmp_path):
    a, b = lab.hosts
    other = tmp_path / "other-ca"
    subprocess.run([sys.executable, "-m", "flatnet", "ca", "init", "--dir", str(other)], cwd=REPO, check=True,
                   capture_output=True)
    before = status(lab, b)["control_errors"].get("bad_cert", 0)
    _initiation_from(lab, str(other), "host-1", 1, b)          # right name, wrong CA
    _initiation_from(lab, f"{lab.workdir}/pki", "host-1", -1, b)  # right CA, expired
    wait_for(lambda: status(lab, b)["control_errors"].get("bad_cert", 0) >= before + 2, 5,
             "both initiations counted as bad_cert")
    assert ping(a.containers[0]["ns"], b.containers[0]["ip"])  # the real session is untouched


def test_engine_restart_traffic_resumes_within_5s(lab):
    a, b = lab.hosts
    c_ip = b.containers[0]["ip"]
    link_before = sh("ip", "-o", "addr", "show", "eth0", ns=b.containers[0]["ns"]).stdout
    lab.stop_engine(b, signal.SIGKILL)
    lab.start_engine(b)
    t0 = time.monotonic()
    ok = False
    while time.monotonic() - t0 < 5.0:
        if ping(a.containers[0]["ns"], c_ip, wait=1):
            ok = True
            break
    assert ok, "no reply within 5 s of the restart"
    assert sh("ip", "-o", "addr", "show", "eth0", ns=b.containers[0]["ns"]).stdout == link_before


def test_world_readable_key_is_refused(lab, tmp_path):
    a = lab.hosts[0]
    key = tmp_path / "loose.key"
    key.write_text(open(f"{lab.workdir}/pki/{a.name}.key").read())
    os.chmod(key, 0o644)
    conf = tmp_path / "c.toml"
    conf.write_text(open(a.config).read().replace(f'{lab.workdir}/pki/{a.name}.key', str(key)))
    proc = subprocess.run([sys.executable, "-m", "flatnet.engine", "--config", str(conf)], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "readable by group or others" in proc.stderr and "chmod 600" in proc.stderr


def test_world_writable_state_dir_is_refused(lab, tmp_path):
    a = lab.hosts[0]
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    conf = tmp_path / "c.toml"
    conf.write_text(open(a.config).read().replace(f'state_dir = "{a.dir}/state"', f'state_dir = "{state}"'))
    proc = subprocess.run([sys.executable, "-m", "flatnet.engine", "--config", str(conf)], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "writable by everyone" in proc.stderr and "chmod o-w" in proc.stderr
