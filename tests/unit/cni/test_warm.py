"""The warm path's wire format and decisions (no daemon): bounded parsers that never raise,
a caller judged by the kernel's view of it, the cold path whenever the warm one cannot answer."""
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.cni import warm, warmd

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/usr/lib/cni"}


def test_request_round_trip():
    data = b'{"cniVersion": "1.0.0", "name": "n"}\0with a NUL in stdin'
    env, stdin = warmd.parse_request(warm.encode_request(ENV, data))
    assert (env, stdin) == (ENV, data)  # CNI_ARGS empty: left out, as an unset variable


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_never_raise(raw):
    req = warmd.parse_request(raw)
    assert req is None or req[0]["CNI_COMMAND"] in ("ADD", "DEL")
    reply = warm.decode_reply(raw)
    assert reply is None or reply[0] in (0, 1)
    assert warmd.parse_request(warm.MAGIC + b"\0" + raw) is None or b"\0" in raw


def test_only_add_and_del_are_taken():
    for cmd in ("CHECK", "GC", "STATUS", "VERSION", "add", ""):
        assert warmd.parse_request(warm.encode_request(dict(ENV, CNI_COMMAND=cmd), b"{}")) is None
    assert warmd.handle(b"garbage") is None


def test_refusal_judges_the_caller_by_the_kernel_view(monkeypatch):
    import os
    own = warmd.namespaces()
    me = os.getpid()
    monkeypatch.setattr(warmd, "effective_caps", lambda pid: warmd.NEEDED_CAPS)
    assert warmd.refusal(me, 0, own) is None
    assert "not root" in warmd.refusal(me, 1000, own)
    assert "pid namespace" in warmd.refusal(0, 0, own)
    assert "another mount or network namespace" in warmd.refusal(me, 0, ((1, 1), (1, 2)))
    assert "cannot inspect" in warmd.refusal(2 ** 22 + 7, 0, own)  # no such process
    monkeypatch.setattr(warmd, "effective_caps", lambda pid: 1 << warmd.CAP_NET_ADMIN)
    assert "CAP_SYS_ADMIN" in warmd.refusal(me, 0, own)


def test_the_answer_is_dispatch_output(monkeypatch):
    def fake(env, stdin, out, err):
        out.write('{"x": 1}\n')
        err.write("trace")
        return 1
    monkeypatch.setattr(warmd, "dispatch", fake)
    reply = warmd.handle(warm.encode_request(ENV, b"{}"))
    assert warm.decode_reply(reply) == (1, b'{"x": 1}\n', b"trace")
    assert warm.decode_reply(b"F") is None and warm.decode_reply(b"R\x07{}\0") is None


@pytest.mark.parametrize("conf,expect", [
    (b'{"name": "n"}', warm.DEFAULT_SOCKET),
    (b'{"warmSocket": "/tmp/w.sock"}', "/tmp/w.sock"),
    (b'{"warmSocket": ""}', ""),
    (b'{"warmSocket": "relative.sock"}', ""),
    (b'{"warmSocket": 5}', ""),
    (b'{"warmSocket": "/' + b"a" * 200 + b'"}', ""),
    (b'{"warm\\u0053ocket": ""}', ""),  # an escaped key is parsed, not missed
    (b'{"warmSocket": ', ""),  # bad JSON: the cold path reports it
    (b"{not json", warm.DEFAULT_SOCKET),  # cannot name a socket: the daemon reports it, as the cold path would
    (b"[]", warm.DEFAULT_SOCKET),
])
def test_socket_path(conf, expect):
    assert warm.socket_path(conf) == expect


def test_cold_path_when_the_warm_one_cannot_answer(tmp_path):
    conf = b'{"warmSocket": "%s"}' % str(tmp_path / "absent.sock").encode()
    assert warm.call(ENV, conf) is None  # no socket
    assert warm.call(dict(ENV, CNI_COMMAND="CHECK"), conf) is None  # not a warm command
    assert warm.call(ENV, b" " * (warm.MAX_REQUEST + 1)) is None  # too large to send


def test_environ_takes_the_request_variables_from_posix_environ():
    raw = {b"CNI_COMMAND": b"ADD", b"CNI_NETNS": b"/run/netns/\xff", b"PATH": b"/bin", b"CNI_ARGS": b""}
    assert warm.environ(raw) == {"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/\udcff", "CNI_ARGS": ""}
    assert warm.encode_request(warm.environ(raw), b"{}").split(b"\0")[3] == b"/run/netns/\xff"


def test_netavark_request_round_trip():
    body = b'{"network": {"name": "n"}}\0\xff'
    assert warmd.parse_netavark_request(warm.encode_netavark_request("setup", "/run/netns/x", body)) == \
        (["flatnet", "setup", "/run/netns/x"], body)
    for verb, netns in (("create", "/run/netns/x"), ("info", "/x"), ("setup", "relative"), ("setup", "")):
        assert warmd.parse_netavark_request(warm.encode_netavark_request(verb, netns, b"{}")) is None
        assert warm.call_netavark(verb, netns, b"{}") is None  # not sent at all


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_netavark_parser_never_raises(raw):
    assert warmd.parse_netavark_request(raw) is None or raw.startswith(warm.NV_MAGIC + b"\0")
    warmd.parse_netavark_request(warm.NV_MAGIC + b"\0" + raw)


def test_a_netavark_answer_is_netavark_dispatch_output(monkeypatch):
    seen = []

    def fake(argv, stdin, stdout, stderr):
        seen.append((argv, stdin.read()))
        stdout.write('{"error": "x"}')
        return 1
    monkeypatch.setattr(warmd, "netavark_dispatch", fake)
    reply = warmd.handle(warm.encode_netavark_request("teardown", "/run/netns/y", b"{}"))
    assert warm.decode_reply(reply) == (1, b'{"error": "x"}', b"")
    assert seen == [(["flatnet", "teardown", "/run/netns/y"], b"{}")]
    assert warmd.handle(warm.NV_MAGIC + b"\0setup\0/x") is None  # no body separator: dropped


@pytest.mark.parametrize("body,expect", [
    (b'{"network": {"name": "n", "options": {"mtu": "1400"}}}', warm.DEFAULT_SOCKET),
    (b'{"network": {"name": "n"}}', warm.DEFAULT_SOCKET),
    (b'{"network": {"options": {"warm_socket": "/tmp/w.sock"}}}', "/tmp/w.sock"),
    (b'{"network": {"options": {"warm_socket": ""}}}', ""),
    (b'{"network": {"options": {"warm_socket": "rel"}}}', ""),
    (b'{"network": {"options": ["warm_socket"]}}', ""),  # invalid: the cold path reports it
    (b'{"network": "warm_socket"}', ""),
    (b'{"warm_socket": ', ""),
])
def test_netavark_socket_path(body, expect):
    assert warm.netavark_socket_path(body) == expect
