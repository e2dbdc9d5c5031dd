"""The DNS responder (engine.proto.dnsanswer): answers for overlay names, forwarding
for the rest, and a parser that takes anything a container sends without raising."""
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto.dnsanswer import ANSWER, DROP, FORWARD, MAX_QUERY, Responder, formerr

TABLE = {"web1.flatnet": ["10.87.1.2"], "web.flatnet": ["10.87.1.3", "10.87.2.3"]}


def responder():
    r = Responder("flatnet", 5)
    r.set_table(dict(TABLE))
    return r


def ask(r, name, rdtype="A", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    action, wire = r.handle(q.to_wire())
    return q, action, (dns.message.from_wire(wire) if wire else None)


def test_a_name_is_answered_with_a_short_ttl():
    q, action, resp = ask(responder(), "WEB1.flatnet")
    assert action == ANSWER and resp.id == q.id and resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.AA and resp.flags & dns.flags.QR
    [rrset] = resp.answer
    assert rrset.ttl == 5 and [r.address for r in rrset] == ["10.87.1.2"]


def test_a_name_held_by_two_hosts_gives_both_addresses():
    _, _, resp = ask(responder(), "web.flatnet")
    assert sorted(r.address for r in resp.answer[0]) == ["10.87.1.3", "10.87.2.3"]


def test_unknown_overlay_name_is_nxdomain_and_other_types_are_empty():
    _, action, resp = ask(responder(), "nobody.flatnet")
    assert action == ANSWER and resp.rcode() == dns.rcode.NXDOMAIN and not resp.answer
    _, action, resp = ask(responder(), "web1.flatnet", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer


def test_other_names_are_forwarded_and_responses_dropped():
    r = responder()
    assert r.handle(dns.message.make_query("example.com", "A").to_wire()) == (FORWARD, None)
    assert r.handle(dns.message.make_query("flatnet.example.com", "A").to_wire()) == (FORWARD, None)
    resp = dns.message.make_response(dns.message.make_query("web1.flatnet", "A"))
    assert r.handle(resp.to_wire()) == (DROP, None)  # never answer an answer (no ping-pong)


def test_edns_and_truncation():
    r = Responder("flatnet", 5)
    r.set_table({"many.flatnet": [f"10.87.1.{i}" for i in range(1, 17)]})
    q = dns.message.make_query("many.flatnet", "A", use_edns=0, payload=1232)
    resp = dns.message.from_wire(r.handle(q.to_wire())[1])
    assert resp.edns == 0 and len(resp.answer[0]) == 16


def test_reverse_names_of_the_overlay_are_answered_here():
    import ipaddress
    r = Responder("flatnet", 5, ipaddress.IPv4Network("10.87.0.0/16"))
    r.set_table(dict(TABLE))
    _, action, resp = ask(r, "2.1.87.10.in-addr.arpa", "PTR")
    assert action == ANSWER and resp.answer[0][0].target.to_text() == "web1.flatnet."
    _, action, resp = ask(r, "9.9.87.10.in-addr.arpa", "PTR")
    assert action == ANSWER and resp.rcode() == dns.rcode.NXDOMAIN   # never leaks upstream
    assert r.handle(dns.message.make_query("1.1.168.192.in-addr.arpa", "PTR").to_wire()) == (FORWARD, None)


def test_not_a_query_is_notimp():
    q = dns.message.make_query("web1.flatnet", "A")
    q.set_opcode(dns.opcode.UPDATE)
    action, wire = responder().handle(q.to_wire())
    assert action == ANSWER and dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP


def test_garbage_with_a_header_gets_formerr_with_its_id():
    action, wire = responder().handle(b"\x12\x34\x01\x00" + b"\xff" * 20)
    assert action == ANSWER and wire[:2] == b"\x12\x34" and wire[3] & 15 == dns.rcode.FORMERR
    assert responder().handle(b"\x12\x34") == (DROP, None)          # not even a header
    assert responder().handle(b"\x00" * (MAX_QUERY + 1))[1][3] & 15 == dns.rcode.FORMERR
    assert formerr(b"\x12\x34\x81\x00" + bytes(8)) is None           # a response: dropped


def test_two_questions_are_formerr():
    q = dns.message.make_query("web1.flatnet", "A")
    wire = bytearray(q.to_wire())
    question = bytes(wire[12:])
    wire[4:6] = (2).to_bytes(2, "big")
    action, out = responder().handle(bytes(wire) + question)
    assert action == ANSWER and out[3] & 15 == dns.rcode.FORMERR


GOOD = [dns.message.make_query(n, t, use_edns=e).to_wire()
        for n in ("web1.flatnet", "example.com") for t in ("A", "AAAA", "ANY") for e in (None, 0)]


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise(data):
    action, wire = responder().handle(data)
    assert action in (ANSWER, FORWARD, DROP)
    assert wire is None or len(wire) <= 512


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, 200), st.binary(max_size=40))
def test_fuzz_mutated_queries_never_raise(base, flips, cut, tail):
    b = bytearray(base)
    for pos, value in flips:
        if pos < len(b):
            b[pos] = value
    data = bytes(b[:cut]) + tail
    action, wire = responder().handle(data)
    if action == ANSWER:
        assert wire[:2] == data[:2] and wire[2] & 0x80  # the client's id, as a response
