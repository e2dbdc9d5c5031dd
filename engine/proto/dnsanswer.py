"""The DNS answers an engine gives its containers (sans-IO: bytes in, a decision out).

Rules: a query for a name under the overlay domain (default `flatnet`) is answered
here, authoritatively, from the name table: A records with a short TTL; NXDOMAIN for
a name nobody holds; an empty answer (NODATA) for other types of a known name.
Reverse names of overlay addresses (PTR under e.g. 87.10.in-addr.arpa) are answered
here too, so they never leak to the host's resolvers. Everything else is forwarded to
the host's resolvers (the I/O layer does that).

The parser is reachable by every container: input is bounded (MAX_QUERY bytes),
parsed by dnspython, and anything malformed gets FORMERR when its header can be read,
else is dropped. Responses (QR set) are never answered, so two responders cannot
bounce packets between each other. Nothing here raises on remote input.
"""
from __future__ import annotations

import ipaddress

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

MAX_QUERY = 4096       # a DNS query is a few dozen bytes; EDNS options keep it far below this
MAX_ADDRS = 16         # addresses in one answer (several hosts may run a container "web")
UDP_PAYLOAD = 512      # without EDNS (RFC 1035); with EDNS the client's size, at most 1232
EDNS_MAX = 1232

ANSWER, FORWARD, DROP = "answer", "forward", "drop"


def formerr(wire: bytes, rcode: int = 1) -> bytes | None:
    """A header-only answer (FORMERR, or NOTIMP) to a query we cannot or will not parse
    (None: not even a header, or a response: drop)."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    opcode = wire[2] & 0x78
    flags = 0x80 | opcode | (wire[2] & 0x01)   # QR, the query's opcode and RD
    return wire[:2] + bytes([flags, 0x80 | rcode]) + bytes(8)  # RA, the rcode; no sections


class Responder:
    """Answers from a table {fqdn (lowercase, no trailing dot): [IPv4 address]}."""

    def __init__(self, domain: str = "flatnet", ttl: int = 5,
                 network: ipaddress.IPv4Network | None = None) -> None:
        self.domain = dns.name.from_text(domain)
        self.ttl = ttl
        self.table: dict[str, list[str]] = {}
        self.reverse: dict[str, str] = {}   # "2.1.87.10.in-addr.arpa" -> "web1.flatnet"
        self.reverse_zone = None
        if network is not None:  # the whole octets of the overlay's prefix: 10.87.0.0/16 -> 87.10.in-addr.arpa
            octets = str(network.network_address).split(".")[:network.prefixlen // 8]
            self.reverse_zone = dns.name.from_text(".".join(reversed(octets)) + ".in-addr.arpa")
        self.counters = {"answered": 0, "nxdomain": 0, "forwarded": 0, "formerr": 0, "dropped": 0,
                         "notimp": 0}

    def set_table(self, table: dict[str, list[str]]) -> None:
        self.table = table
        reverse: dict[str, str] = {}
        for name in sorted(table):  # one name per address, the same one every time
            for addr in table[name]:
                reverse.setdefault(".".join(reversed(addr.split("."))) + ".in-addr.arpa", name)
        self.reverse = reverse

    def handle(self, wire: bytes, tcp: bool = False) -> tuple[str, bytes | None]:
        """(ANSWER, response) | (FORWARD, None): send `wire` upstream | (DROP, None)."""
        if len(wire) > MAX_QUERY:
            return self._formerr(wire)
        if len(wire) >= 12 and not wire[2] & 0x80 and (wire[2] >> 3) & 15 != dns.opcode.QUERY:
            self.counters["notimp"] += 1  # UPDATE, NOTIFY, ...: not parsed at all
            return ANSWER, formerr(wire, dns.rcode.NOTIMP)
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, TypeError, IndexError, KeyError, UnicodeError):
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            self.counters["dropped"] += 1
            return DROP, None
        if len(query.question) != 1:
            return self._formerr(wire)
        q = query.question[0]
        if self.reverse_zone is not None and q.name.is_subdomain(self.reverse_zone):
            return ANSWER, self._reverse(query, q, tcp)
        if not q.name.is_subdomain(self.domain):
            self.counters["forwarded"] += 1
            return FORWARD, None
        key = q.name.to_text(omit_final_dot=True).lower()
        addrs = self.table.get(key)
        if addrs is None:
            self.counters["nxdomain"] += 1
            return ANSWER, self._render(query, dns.rcode.NXDOMAIN, [], tcp)
        self.counters["answered"] += 1
        answer = []
        if q.rdclass == dns.rdataclass.IN and q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            answer = [dns.rrset.from_text_list(q.name, self.ttl, "IN", "A", addrs[:MAX_ADDRS])]
        return ANSWER, self._render(query, dns.rcode.NOERROR, answer, tcp)

    def _reverse(self, query: dns.message.Message, q, tcp: bool) -> bytes:  # noqa: ANN001
        target = self.reverse.get(q.name.to_text(omit_final_dot=True).lower())
        if target is None:
            self.counters["nxdomain"] += 1
            return self._render(query, dns.rcode.NXDOMAIN, [], tcp)
        self.counters["answered"] += 1
        answer = []
        if q.rdclass == dns.rdataclass.IN and q.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
            answer = [dns.rrset.from_text(q.name, self.ttl, "IN", "PTR", target + ".")]
        return self._render(query, dns.rcode.NOERROR, answer, tcp)

    def _formerr(self, wire: bytes) -> tuple[str, bytes | None]:
        out = formerr(wire)
        self.counters["formerr" if out else "dropped"] += 1
        return (ANSWER, out) if out else (DROP, None)

    def _render(self, query: dns.message.Message, rcode: int, answer: list, tcp: bool) -> bytes:
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        response.set_rcode(rcode)
        response.answer = answer
        limit = 65535 if tcp else (min(max(query.payload, UDP_PAYLOAD), EDNS_MAX) if query.edns >= 0
                                   else UDP_PAYLOAD)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:  # the client retries over TCP
            response.answer = []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)
