"""A node relays for others (issue 18, "relaying as an operator's choice"): host-3 has
`[relay] enabled = true` and a certificate with the group `relay`; the lighthouse does
not relay at all (`[relay] enabled = false`). host-1 and host-2 cannot reach each
other (iptables drops UDP between them, in namespaces this test makes): a ping and a
TCP stream between their containers go through host-3, and `flatnet peers` says
"relayed via host-3"."""
import subprocess
import sys
import time

import pytest

from flatnet.demo import Lab, sh
from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def relay_sessions_up(lab, h, relay) -> bool:
    return any(p["name"] == relay.name and p["state"] == "established" and p["path"].startswith("direct")
               for p in lab.peers(h))


def test_two_hosts_that_cannot_reach_each_other_talk_through_a_node_relay(tmp_path):
    lab = Lab(f"{RUN_PREFIX}n", str(tmp_path / "lab"), hosts=3, lighthouse=True, lighthouse_relay=False,
              groups={3: ["relay"]}, extra_config={3: "[relay]\nenabled = true\n"})
    try:
        lab.up(containers_per_host=1)
        a, b, r = lab.hosts
        for chain, flag in (("OUTPUT", "-d"), ("INPUT", "-s")):  # no UDP at all between host-1 and host-2
            sh("iptables", "-A", chain, flag, b.underlay_ip, "-p", "udp", "-j", "DROP", ns=a.ns)
        end = time.monotonic() + 20  # the lease names host-3; both engines hold a session with it
        while not (relay_sessions_up(lab, a, r) and relay_sessions_up(lab, b, r)):
            assert time.monotonic() < end, {h.name: lab.peers(h) for h in (a, b)}
            time.sleep(0.2)

        out = sh("ping", "-c", "5", "-i", "0.2", "-W", "3", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                 check=False)
        assert out.returncode == 0, out.stdout.decode()
        row = next(p for p in lab.peers(a) if p["name"] == b.name)
        assert row["path"] == f"relayed via {r.name} ({r.underlay_ip}:4787)", row
        cli = subprocess.run([sys.executable, "-m", "flatnet", "peers", "--socket", a.socket], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        line = next(l for l in cli.stdout.splitlines() if l.startswith(b.name))
        assert f"relayed via {r.name}" in line, cli.stdout

        n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 2 << 20)
        assert n == 2 << 20 and got == sent
        relay = lab.status(r)["relay"]
        assert relay["relayed"] > 1000, relay  # the stream's packets went through host-3 ...
        assert lab.lighthouse_status()["relayed"] == 0  # ... and none through the lighthouse
        assert next(p for p in lab.peers(b) if p["name"] == a.name)["path"].startswith(f"relayed via {r.name}")
    finally:
        lab.down()
