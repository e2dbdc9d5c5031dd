"""The TCP relay (issue 18): a host behind a router that drops all UDP reaches a host
on the LAN through the lighthouse's TCP relay; a TCP stream between them keeps its
checksum while UDP is blocked and then unblocked, and the peers move to the direct
path without a new handshake between them."""
import threading
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer
from tests.harness.wait import tcp_established, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def peer_row(lab, h, name):
    return next(p for p in lab.peers(h) if p["name"] == name)


def wait_path(lab, h, other, prefix, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        row = peer_row(lab, h, other.name)
        if row["path"].startswith(prefix):
            return row
        time.sleep(0.2)
    return peer_row(lab, h, other.name)


def test_udp_blocked_host_goes_over_tcp_and_back_to_direct_with_a_stream_intact(tmp_path):
    lab = Lab(f"{RUN_PREFIX}t", str(tmp_path / "lab"), hosts=2, lighthouse=True, nat={1: "cone"})
    routers = []
    plain = lab._router

    def router_dropping_udp(h, kind):  # the hotel network: no UDP at all, TCP allowed
        r = plain(h, kind)
        sh("iptables", "-I", "FORWARD", "-p", "udp", "-j", "DROP", ns=r)
        routers.append(r)
        return r

    lab._router = router_dropping_udp
    try:
        lab.up(containers_per_host=1, wait=30)
        a, b = lab.hosts
        assert lab.status(a)["lighthouses"]["lighthouse"] == "registered"
        tcp = lab.lighthouse_status()["tcp_relay"]
        assert tcp["connections"] == 1 and tcp["frames_in"] > 0
        out = sh("ping", "-c", "3", "-i", "0.2", "-W", "3", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                 check=False)
        assert out.returncode == 0, out.stdout
        row = peer_row(lab, a, b.name)
        assert row["path"] == "relayed over TCP via 192.0.2.254:443: UDP blocked", row
        # the TCP client's frames reach the lighthouse's UDP socket from its loopback
        # bridge address, the endpoint of its session there: the C sender check knows it
        assert lab.lighthouse_status()["drops"]["relay_unknown_sender"] == 0
        handshakes = row["handshakes"]

        result = {}
        stream = threading.Thread(target=lambda: result.update(r=tcp_transfer(
            a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 4 << 20, chunk=16 << 10,
            gap=0.05)))  # about 13 s
        stream.start()
        # the stream is connected and carried over the TCP relay before UDP comes back
        wait_for(lambda: tcp_established(b.containers[0]["ns"], 9000), 20, "the stream's TCP connection established")
        frames = lab.lighthouse_status()["tcp_relay"]["frames_in"]
        wait_for(lambda: lab.lighthouse_status()["tcp_relay"]["frames_in"] >= frames + 50, 10,
                 "the stream's packets through the TCP relay")
        sh("iptables", "-D", "FORWARD", "-p", "udp", "-j", "DROP", ns=routers[0])
        t0 = time.monotonic()
        row = wait_path(lab, a, b, "direct", 20)
        took = time.monotonic() - t0
        assert row["path"] == "direct-LAN" and row["endpoint"] == f"{b.underlay_ip}:4787", row
        assert row["handshakes"] == handshakes, "the move to direct must not need a new handshake"
        assert stream.is_alive(), "the stream ended before the move: the test proves nothing"
        stream.join(timeout=120)
        n, got, sent = result["r"]
        assert n == 4 << 20 and got == sent
        print(f"back to direct {took:.1f} s after UDP was unblocked")
        end = time.monotonic() + 10
        while time.monotonic() < end and lab.lighthouse_status()["tcp_relay"]["connections"]:
            time.sleep(0.2)
        assert lab.lighthouse_status()["tcp_relay"]["connections"] == 0
    finally:
        lab.down()
