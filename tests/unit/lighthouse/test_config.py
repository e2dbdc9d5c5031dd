"""The lighthouse's config: the store and session keys, and the errors that name them."""
import pytest

from flatnet.engine.config import ConfigError
from flatnet.lighthouse.config import parse


def test_defaults_are_sqlite_and_sessions_sized_for_the_network():
    c = parse("")
    assert c.store_backend == "sqlite" and c.store_endpoints == () and c.store_prefix == "/flatnet/"
    assert c.sessions == 4096  # a /16: 255 leases, at least an engine's table
    assert parse('[network]\ncidr = "10.0.0.0/8"\n').sessions == 131072


def test_etcd_store():
    c = parse('[store]\nbackend = "etcd"\nendpoints = ["10.0.0.11:2379", "http://10.0.0.12:2379"]\nprefix = "/net-a/"\n'
              '[registry]\nsessions = 20000\n')
    assert c.store_backend == "etcd" and c.store_endpoints == ("10.0.0.11:2379", "http://10.0.0.12:2379")
    assert c.store_prefix == "/net-a/" and c.sessions == 20000


@pytest.mark.parametrize("text, message", [
    ('[store]\nbackend = "consul"\n', "store.backend: 'consul'; expected sqlite or etcd"),
    ('[store]\nbackend = "etcd"\n', "store.endpoints: backend \"etcd\" needs at least one member"),
    ('[store]\nbackend = "etcd"\nendpoints = ["etcd-1"]\n', "store.endpoints: 'etcd-1' is not HOST:PORT"),
    ('[store]\nendpoints = [2379]\n', "store.endpoints: 2379 is not a string"),
    ('[store]\nprefix = "flatnet"\n', "store.prefix: 'flatnet'; expected a key prefix starting with /"),
    ('[store]\nmembers = []\n', "members"),
    ('[registry]\nsessions = 8\n', "registry.sessions: 8 is outside 16..262144"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=None) as e:
        parse(text, "/etc/flatnet/lighthouse.toml")
    assert message in str(e.value) and "/etc/flatnet/lighthouse.toml" in str(e.value)
