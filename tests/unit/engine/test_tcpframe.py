"""The TCP relay's framing: whole datagrams out, in any split of the stream; a bad
preamble, a zero or oversized length, a FrameError; memory bounded by one frame."""
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto.tcpframe import MAX_FRAME, PREAMBLE, Decoder, FrameError, encode

datagrams = st.lists(st.binary(min_size=1, max_size=MAX_FRAME), max_size=8)


@settings(max_examples=200, deadline=None)
@given(datagrams, st.lists(st.integers(1, 5000), max_size=20))
def test_any_split_of_the_stream_gives_the_same_datagrams(dgrams, cuts):
    stream = PREAMBLE + b"".join(encode(d) for d in dgrams)
    dec, out, i = Decoder(expect_preamble=True), [], 0
    for c in cuts + [len(stream)]:
        out += dec.feed(stream[i:i + c])
        i += c
    out += dec.feed(stream[i:])
    assert out == dgrams and dec.buffered == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3 * MAX_FRAME), st.booleans())
def test_any_bytes_give_datagrams_or_a_frame_error_and_stay_bounded(data, preamble):
    dec = Decoder(expect_preamble=preamble)
    try:
        for i in range(0, len(data), 700):
            for d in dec.feed(data[i:i + 700]):
                assert 0 < len(d) <= MAX_FRAME
            assert dec.buffered <= MAX_FRAME + 2 + len(PREAMBLE)
    except FrameError as exc:
        assert exc.reason in ("tcp_bad_preamble", "tcp_bad_frame")


def test_errors_name_the_problem():
    with pytest.raises(FrameError) as e:
        Decoder(True).feed(b"GET / HTTP/1.1\r\n")
    assert e.value.reason == "tcp_bad_preamble"
    with pytest.raises(FrameError) as e:
        Decoder(True).feed(b"F")
        Decoder(True).feed(b"FX")
    with pytest.raises(FrameError) as e:
        Decoder(False).feed(b"\x00\x00")
    assert e.value.reason == "tcp_bad_frame" and "frame length 0" in str(e.value)
    with pytest.raises(FrameError) as e:
        Decoder(False).feed((MAX_FRAME + 1).to_bytes(2, "big"))
    assert e.value.reason == "tcp_bad_frame"
    with pytest.raises(ValueError):
        encode(b"x" * (MAX_FRAME + 1))
    assert Decoder(True).feed(b"FN") == []  # a preamble in pieces is fine
