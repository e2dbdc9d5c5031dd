"""Every offload has a fallback: with offloads off (as on a kernel without them) the
engine moves plain packets and traffic is intact."""
import json

import pytest

from flatnet.engine.datapath import aes_gcm_available, aes_gcm_impl
from flatnet.engine.io import control
from flatnet.demo import Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer

pytestmark = pytest.mark.integration
# [tun] cipher = "auto": AES-256-GCM first where this CPU and OpenSSL have it
CIPHERS = "aes-256-gcm,chacha20-poly1305" if aes_gcm_available() else "chacha20-poly1305"


def test_without_offloads(tmp_path):
    lab = Lab(f"{RUN_PREFIX}f", str(tmp_path / "lab"), hosts=2, offloads=False)
    try:
        lab.up(containers_per_host=1)
        a, b = lab.hosts
        st = json.loads(control.get(a.socket, "/status")[1])
        assert st["offloads"] == {"tun_tso": False, "tun_uso": False, "udp_gso": False, "udp_gro": False, "spin": True,
                                  "moderation_us": 100, "cipher": "compact+libsodium",
                                  "cipher_long": "openssl", "transport_ciphers": CIPHERS,
                                  "aes_impl": aes_gcm_impl()}
        assert sh("ping", "-c", "2", "-W", "2", b.containers[0]["ip"], ns=a.containers[0]["ns"], check=False).returncode == 0
        n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 5 << 20)
        assert n == 5 << 20 and got == sent
        st = json.loads(control.get(a.socket, "/status")[1])
        assert st["io"]["tso_super_packets"] == 0
    finally:
        lab.down()
