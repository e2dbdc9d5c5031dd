"""The test vectors of docs/protocol-wire.md section 10, against the PyNaCl harness, the
C data path and engine/proto/cookie.py (so the document stays true)."""
import struct

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.proto import cookie
from tests.harness.wire import handshake, seal

KEY = bytes([0x42]) * 32
TRANSPORT = bytes.fromhex("03020000" "04030201" "0100000000000000" "fde1ce79" "9c8464ab47708bf98707015aa229bed3")
S = bytes(range(32))
M = struct.pack("<BBHI", 1, 2, 0, 0x0A0B0C0D) + b"flatnet test vector"
MAC1 = bytes.fromhex("fb89de010d69e74ace4a7a3584385fda")
MAC2 = bytes.fromhex("0b6d426766fe1babce5acdfe754a9f90")
REPLY = bytes.fromhex("060200000d0c0b0a" + "22" * 24 + "a8c86dd315fd9d7600608e856b34d99aeec50ac7352459a7d57a682b8b53746a")


def test_transport_vector():
    assert seal(KEY, 0x01020304, 1, b"ping") == TRANSPORT
    # the C data path: same header gives the same bytes (fn_seal_batch writes index 0)
    buf = ffi.new("uint8_t[]", 64)
    ffi.memmove(buf + 16, b"ping", 4)
    lib.fn_seal_batch(KEY, 1, buf, 64, ffi.new("uint32_t[]", [4]), 1, 0)
    assert bytes(ffi.buffer(buf, 36)) == seal(KEY, 0, 1, b"ping")
    # and opens the vector
    ffi.memmove(buf, TRANSPORT, len(TRANSPORT))
    lens = ffi.new("uint32_t[]", [len(TRANSPORT) - 16])
    assert lib.fn_open_batch(KEY, buf, 64, lens, 1, 0) == 1 and bytes(ffi.buffer(buf + 16, 4)) == b"ping"


def test_mac_vectors():
    assert cookie._key(b"mac1----", S).hex() == "b941bf1b95db7cb783423638ff760265304756babdb2510836584fbfbe257274"
    assert cookie.add_macs(M, S, None)[0] == M + MAC1 + bytes(16)
    assert cookie.add_macs(M, S, bytes([0x11]) * 16)[0] == M + MAC1 + MAC2
    assert handshake(1, 0x0A0B0C0D, b"flatnet test vector", S, bytes([0x11]) * 16) == M + MAC1 + MAC2


def test_cookie_reply_vector():
    assert cookie._key(b"cookie--", S).hex() == "23e183f41d849970577acaafb23f2891bafd92709b873d0ae8d228560c90a648"
    assert cookie.make_reply(M + MAC1 + bytes(16), S, bytes([0x11]) * 16, bytes([0x22]) * 24) == REPLY
    assert cookie.open_reply(REPLY, S, MAC1) == bytes([0x11]) * 16
