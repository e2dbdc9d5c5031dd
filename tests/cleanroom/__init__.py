"""A clean-room Flatnet peer, written from docs/protocol.md alone.

It exists to prove that the page is exact: it shares no code with engine/ or
flatnet/ and imports none of it. Only pynacl, hashlib, hmac, `cryptography` and
msgpack supply the primitives (docs/protocol.md section 2).
"""
