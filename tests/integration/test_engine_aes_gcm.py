"""Two engines in namespaces negotiate AES-256-GCM (both default to [tun] cipher = auto
on a CPU with AES-NI): a TCP stream arrives intact, both sides show the cipher, and the
new session after an engine restart negotiates it again. A third host forced to
ChaCha20-Poly1305 still talks to both, with ChaCha."""
import signal

import pytest

from flatnet.demo import Lab
from flatnet.engine.datapath import aes_gcm_available
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not aes_gcm_available(), reason="no AES-NI/PCLMULQDQ or no OpenSSL AES-256-GCM")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}g", str(tmp_path_factory.mktemp("lab")), hosts=3, cipher={3: "chacha20-poly1305"})  # host-3
    try:
        lab.up(containers_per_host=1)
        yield lab
    finally:
        lab.down()


def cipher(lab, host, peer_name: str) -> str | None:
    return next((r.get("cipher") for r in lab.peers(host) if r["name"] == peer_name), None)


def test_aes_gcm_both_ways_and_a_tcp_stream_intact(lab):
    a, b, _ = lab.hosts
    n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 20 << 20)
    assert n == 20 << 20 and got == sent
    assert cipher(lab, a, b.name) == cipher(lab, b, a.name) == "aes-256-gcm"


def test_a_chacha_only_host_gets_chacha(lab):
    a, _, c = lab.hosts
    n, got, sent = tcp_transfer(a.containers[0]["ns"], c.containers[0]["ns"], c.containers[0]["ip"], 4 << 20)
    assert n == 4 << 20 and got == sent
    assert cipher(lab, a, c.name) == cipher(lab, c, a.name) == "chacha20-poly1305"


def test_a_new_session_after_a_restart_keeps_aes(lab):
    a, b, _ = lab.hosts
    before = next(r["handshakes"] for r in lab.peers(a) if r["name"] == b.name)
    lab.stop_engine(b, signal.SIGKILL)
    lab.start_engine(b)
    n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 4 << 20)
    assert n == 4 << 20 and got == sent
    wait_for(lambda: next(r["handshakes"] for r in lab.peers(a) if r["name"] == b.name) > before, 10, "a new handshake")
    assert cipher(lab, a, b.name) == cipher(lab, b, a.name) == "aes-256-gcm"
