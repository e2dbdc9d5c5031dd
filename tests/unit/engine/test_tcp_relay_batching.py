"""The TCP relay bridge moves datagrams per wake-up, not one at a time
(engine/io/tcp_relay.py): UDP GRO buffers cut back into datagrams, runs of one size
for UDP GSO sends, and end to end over loopback: many datagrams in each direction
arrive whole and in order."""
import asyncio
import socket
import struct

from hypothesis import given, settings, strategies as st

from flatnet.engine.io import tcp_relay, udp
from flatnet.engine.proto.tcpframe import MAX_FRAME, PREAMBLE, Decoder, encode


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=70_000), st.integers(-5, 80_000))
def test_a_gro_buffer_is_cut_into_its_datagrams(buf, seg):
    parts = tcp_relay.split_gro(buf, seg)
    assert b"".join(parts) == buf and all(parts)
    if 0 < seg < len(buf):
        assert all(len(p) == seg for p in parts[:-1]) and len(parts[-1]) <= seg
    else:
        assert len(parts) == 1


def test_the_gro_segment_size_from_the_control_message():
    gro = (socket.IPPROTO_UDP, udp.UDP_GRO)
    assert tcp_relay.gro_segment_size([(*gro, struct.pack("=i", 1400))]) == 1400
    assert tcp_relay.gro_segment_size([(*gro, struct.pack("=i", -3))]) == 0
    assert tcp_relay.gro_segment_size([(*gro, b"\x01")]) == 0  # short: ignored
    assert tcp_relay.gro_segment_size([(socket.SOL_SOCKET, udp.UDP_GRO, struct.pack("=i", 9))]) == 0
    assert tcp_relay.gro_segment_size([]) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, MAX_FRAME), max_size=300), st.booleans())
def test_runs_for_gso_keep_the_order_and_the_kernels_rules(sizes, gso):
    datagrams = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    runs = tcp_relay.gso_runs(datagrams, gso)
    assert [d for run, _ in runs for d in run] == datagrams
    for run, seg in runs:
        assert len(run[0]) == seg and all(len(d) == seg for d in run[:-1]) and len(run[-1]) <= seg
        assert len(run) <= tcp_relay.GSO_MAX_SEGS and sum(map(len, run)) <= max(seg, tcp_relay.GSO_MAX_BYTES)
        assert gso or len(run) == 1


def test_many_datagrams_each_way_arrive_whole_and_in_order():
    async def go():
        loop = asyncio.get_running_loop()
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the data path's socket
        target.bind(("127.0.0.1", 0))
        target.setblocking(False)
        target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as the data paths' (4-8 MiB)
        got_tcp, bridges = [], []
        server = await asyncio.start_server(lambda r, w: got_tcp.append((r, w)), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(PREAMBLE)
        for _ in range(100):
            if got_tcp:
                break
            await asyncio.sleep(0.01)
        r, w = got_tcp[0]
        bridge = tcp_relay.Bridge(r, w, target.getsockname(), server_side=True,
                                  on_closed=lambda b, why: bridges.append(why))
        bridge.start(loop)
        try:
            # TCP -> UDP: 200 frames of one size and a few others, in one write
            frames = [bytes([i % 256]) * 1300 for i in range(200)] + [b"\x01short", b"\x02" * 1300]
            writer.write(b"".join(encode(f) for f in frames))
            out = []
            while len(out) < len(frames):
                out.append((await asyncio.wait_for(loop.sock_recvfrom(target, 4096), 5))[0])
            assert out == frames and bridge.frames_in == len(frames)
            # UDP -> TCP: a GSO burst (one buffer at the shim) and single datagrams
            seg = 1200
            burst = [bytes([i]) * seg for i in range(50)]
            target.sendmsg([b"".join(burst)], [(socket.IPPROTO_UDP, udp.UDP_SEGMENT, struct.pack("=H", seg))],
                           0, bridge.addr)
            target.sendto(b"after", bridge.addr)
            dec, back = Decoder(expect_preamble=False), []
            while len(back) < 51:
                back += dec.feed(await asyncio.wait_for(reader.read(1 << 16), 5))
            assert back == burst + [b"after"] and bridge.frames_out == 51 and bridge.dropped == 0
        finally:
            bridge.close("test over")
            writer.close()
            server.close()
            target.close()
    asyncio.run(asyncio.wait_for(go(), 20))
