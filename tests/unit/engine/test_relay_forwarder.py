"""The one relay forwarder (engine/proto/relay.py) a lighthouse and a node relay use:
any bytes from anyone are forwarded by the rules or refused with a counted reason,
never another exception; the id is rewritten to the sender's, the rest untouched."""
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto import relay as relaying
from flatnet.engine.proto.errors import RemoteProtocolError

NODES = {("192.0.2.1", 4787): 1, ("192.0.2.2", 4787): 2}
BY_BLOCK = {b: a for a, b in NODES.items()}


def forwarder():
    return relaying.Forwarder(lambda src, now: NODES.get(src), BY_BLOCK.get)


def test_the_id_becomes_the_senders_and_the_inner_packet_is_untouched():
    f = forwarder()
    inner = bytes([3, 2, 0, 0]) + bytes(range(40))
    packet, dest = f.forward(relaying.wrap(2, inner), ("192.0.2.1", 4787), 0.0)
    assert dest == ("192.0.2.2", 4787) and packet == relaying.wrap(1, inner)
    assert f.relayed == 1 and f.relayed_bytes == len(packet)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([("192.0.2.1", 4787), ("192.0.2.2", 4787), ("198.51.100.1", 1)]))
def test_any_bytes_from_anyone_are_forwarded_by_the_rules_or_refused_with_a_reason(data, src):
    f = forwarder()
    try:
        packet, dest = f.forward(data, src, 0.0)
    except RemoteProtocolError as exc:
        assert exc.reason in ("short", "relay_refused", "relay_unknown_target")
        return
    assert src in NODES and dest in BY_BLOCK.values()
    assert dest != src and packet[8:] == data[8:] and int.from_bytes(packet[4:8], "little") == NODES[src]
