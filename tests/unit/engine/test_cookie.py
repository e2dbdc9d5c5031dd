"""The Python side of cookies and versions (sans-IO, virtual clock): a session keeps a
cookie from a reply and keys mac2 with it for COOKIE_LIFETIME; a Device logs a peer of
another protocol version once per address; the parsers an attacker reaches raise
RemoteProtocolError only."""
import io
import os

import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.datapath_port import CTRL_RAW, CTRL_VERSION, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import cookie as cookies
from flatnet.engine.proto import handshake as hsm
from flatnet.engine.proto.constants import COOKIE_LIFETIME
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.session import PeerSession
from tests.harness.pki import TestCA


class NullDataPath:
    def __getattr__(self, name):
        return lambda *args: None

    def seal_control(self, slot, payload):
        return None


@pytest.fixture
def pair():
    ca = TestCA()
    a_id, b_id = ca.identity("host-a"), ca.identity("host-b")
    n = iter(range(1, 1000))
    a = PeerSession(a_id, "host-b", b_id.cert.key, lambda: next(n), lambda i: None, lambda: ca.now * 10**9)
    return ca, a_id, b_id, a


def test_macs_of_a_message_check_out_and_mac2_is_zero_without_a_cookie(pair):
    ca, a_id, b_id, a = pair
    a.want_keys(0.0)
    [(packet, _)] = a.datagrams_to_send()
    assert packet[1] == 2 and packet[-16:] == bytes(16)
    assert cookies.strip_macs(packet, b_id.cert.key) == packet[:-32]
    with pytest.raises(RemoteProtocolError) as e:
        cookies.strip_macs(packet, a_id.cert.key)  # keyed for someone else
    assert e.value.reason == "bad_mac1"


def test_a_cookie_keys_mac2_until_it_is_too_old(pair):
    ca, a_id, b_id, a = pair
    a.want_keys(0.0)
    [(first, _)] = a.datagrams_to_send()
    reply = cookies.make_reply(first, b_id.cert.key, b"k" * 16, os.urandom(24))
    a.receive_cookie_reply(reply, 0.5)
    a.handle_timer(1.0)
    [(retry, _)] = a.datagrams_to_send()
    body = retry[:-16]
    assert retry[-16:] == cookies._mac(b"k" * 16, body)
    # a handshake started after the cookie's lifetime goes out without mac2
    late_now = 0.5 + COOKIE_LIFETIME + 1
    a.handle_timer(late_now)  # past HANDSHAKE_GIVE_UP: the first attempt ends
    assert a.pending is None
    a.want_keys(late_now)
    [(late, _)] = a.datagrams_to_send()
    assert late[-16:] == bytes(16) and a.cookie is None


def test_a_cookie_reply_to_another_message_is_refused(pair):
    ca, a_id, b_id, a = pair
    with pytest.raises(RemoteProtocolError):  # nothing sent yet
        a.receive_cookie_reply(bytes(64), 0.0)
    a.want_keys(0.0)
    [(first, _)] = a.datagrams_to_send()
    forged = cookies.make_reply(first[:-32] + os.urandom(32), b_id.cert.key, b"k" * 16, os.urandom(24))
    with pytest.raises(RemoteProtocolError) as e:
        a.receive_cookie_reply(forged, 0.5)
    assert e.value.reason == "bad_cookie" and a.cookie is None


def test_a_device_logs_another_version_once_per_address():
    ca = TestCA()
    out = io.StringIO()
    dev = Device(ca.identity("host-a"), NullDataPath(), lambda p, a: None, lambda: ca.now * 10**9,
                 Logger("t", stream=out))
    v1 = bytes([1, 0, 0, 0])
    for _ in range(50):
        dev.on_control([ControlItem(CTRL_VERSION, -1, v1, ("192.0.2.7", 4787))], 0.0)
    dev.on_control([ControlItem(CTRL_VERSION, -1, v1, ("192.0.2.8", 4787))], 0.0)
    lines = [line for line in out.getvalue().splitlines() if "peer_wrong_version" in line]
    assert len(lines) == 2
    assert "theirs=\"1 or older\"" in lines[0] and "ours=2" in lines[0] and "192.0.2.7:4787" in lines[0]


def test_a_cookie_reply_for_an_unknown_index_is_counted():
    ca = TestCA()
    dev = Device(ca.identity("host-a"), NullDataPath(), lambda p, a: None, lambda: ca.now * 10**9,
                 Logger("t", stream=io.StringIO()))
    reply = cookies.make_reply(bytes(8) + os.urandom(40), os.urandom(32), b"k" * 16, os.urandom(24))
    dev.on_control([ControlItem(CTRL_RAW, -1, reply, ("192.0.2.7", 4787))], 0.0)
    assert dev.errors["unexpected_cookie"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_attacker_reachable_parsers_raise_only_remote_errors(data):
    ca = TestCA()
    me = ca.identity("host-a")
    for parse in (cookies.reply_index, lambda d: cookies.open_reply(d, me.cert.key, bytes(16)),
                  lambda d: cookies.strip_macs(d, me.cert.key), hsm.response_indexes,
                  lambda d: hsm.consume_initiation(me, d, ca.now)):
        for packet in (data, bytes([1, 2, 0, 0]) + data, bytes([6, 2, 0, 0]) + data):
            try:
                parse(packet)
            except RemoteProtocolError:
                pass
