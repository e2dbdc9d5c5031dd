"""The DNS server's I/O bounds on loopback: forwarded queries are bounded while an
upstream is silent, local answers keep coming, answers from the upstream reach the
client with its own id, and TCP works."""
import asyncio
import socket
import struct

import dns.message
import dns.rrset

from flatnet.engine.io import dnsserver
from flatnet.engine.log import Logger
from flatnet.engine.proto.dnsanswer import Responder


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(asyncio.DatagramProtocol):
    """Answers example.com; stays silent for silent.example (a dead resolver)."""

    def connection_made(self, transport):
        self.transport, self.seen = transport, 0

    def datagram_received(self, data, addr):
        self.seen += 1
        q = dns.message.from_wire(data)
        if q.question[0].name.to_text() == "silent.example.":
            return
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "198.51.100.7"))
        self.transport.sendto(r.to_wire(), addr)


async def scenario(monkeypatch):
    monkeypatch.setattr(dnsserver, "UPSTREAM_TIMEOUT", 0.5)
    monkeypatch.setattr(dnsserver, "MAX_OUTSTANDING", 20)
    loop = asyncio.get_running_loop()
    up_transport, upstream = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    responder = Responder("flatnet", 5)
    responder.set_table({"web1.flatnet": ["10.87.1.2"]})
    server = dnsserver.DnsServer(responder, [up_transport.get_extra_info("sockname")],
                                 Logger("t", stream=open("/dev/null", "w")))
    port = free_port()
    await server.start("127.0.0.1", port)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        for i in range(60):  # a dead upstream: at most 20 wait at once, the rest are dropped
            client.sendto(dns.message.make_query("silent.example", "A", id=i).to_wire(), ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        assert server.outstanding == 20 and server.counters["forward_dropped"] == 40
        client.sendto(dns.message.make_query("web1.flatnet", "A", id=4242).to_wire(), ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        r = dns.message.from_wire(client.recv(4096))
        assert r.id == 4242 and r.answer[0][0].address == "10.87.1.2"  # local names still answered
        await asyncio.sleep(0.6)
        assert server.outstanding == 0 and server.counters["upstream_timeouts"] == 20
        client.sendto(dns.message.make_query("example.com", "A", id=777).to_wire(), ("127.0.0.1", port))
        for _ in range(50):
            await asyncio.sleep(0.02)
            try:
                r = dns.message.from_wire(client.recv(4096))
                break
            except BlockingIOError:
                continue
        assert r.id == 777 and r.answer[0][0].address == "198.51.100.7"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        q = dns.message.make_query("web1.flatnet", "A", id=99).to_wire()
        junk = b"\x12\x34\x01\x00" + b"\xff" * 10
        writer.write(struct.pack("!H", len(q)) + q + struct.pack("!H", 3) + b"abc" + struct.pack("!H", len(junk)) + junk)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        assert dns.message.from_wire(await reader.readexactly(size)).id == 99
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
        out = await reader.readexactly(size)  # no header: dropped; junk with a header: FORMERR
        assert out[:2] == b"\x12\x34" and out[3] & 15 == 1
        writer.close()
    finally:
        client.close()
        server.close()
        up_transport.close()


def test_forwarding_is_bounded_and_answers_keep_coming(monkeypatch):
    asyncio.run(scenario(monkeypatch))


def test_resolv_conf_reading(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# comment\nnameserver 127.0.0.53\nnameserver 2001:db8::1\nsearch lan\nnameserver 192.0.2.1\n"
                 "nameserver 192.0.2.2\nnameserver 192.0.2.3\n")
    assert dnsserver.read_resolv_conf(str(p)) == [("127.0.0.53", 53), ("192.0.2.1", 53), ("192.0.2.2", 53)]
    assert dnsserver.read_resolv_conf(str(tmp_path / "missing")) == []
