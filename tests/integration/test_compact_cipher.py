"""`[tun] compact_cipher = false` on one host, on (the default) on the other: the two
ciphers give the same bytes, so short packets (pings, TCP acknowledgements) and long
ones cross both ways, and each engine's status says which it uses."""
import json

import pytest

from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}k", str(tmp_path_factory.mktemp("lab")), hosts=2, compact_cipher={1: False})
    try:
        lab.up(containers_per_host=1)
        yield lab
    finally:
        lab.down()


def status(host) -> dict:
    from flatnet.engine.io import control
    return json.loads(control.get(host.socket, "/status")[1])


def test_traffic_crosses_both_ways_and_status_names_the_cipher(lab):
    a, b = lab.hosts
    on, off = (a, b) if a.index != 1 else (b, a)
    assert status(on)["offloads"]["cipher"] == "compact+libsodium"
    assert status(off)["offloads"]["cipher"] == "libsodium"
    for src, dst in ((a, b), (b, a)):
        assert sh("ping", "-c", "3", "-W", "2", "-s", "56", dst.containers[0]["ip"], ns=src.containers[0]["ns"],
                  check=False).returncode == 0
    n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 4 << 20)
    assert n == 4 << 20 and got == sent
    n, got, sent = tcp_transfer(b.containers[0]["ns"], a.containers[0]["ns"], a.containers[0]["ip"], 4 << 20,
                                port=9001)
    assert n == 4 << 20 and got == sent
    for h in (a, b):
        assert status(h)["drops"]["auth_failed"] == 0
