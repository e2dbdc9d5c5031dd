"""Protocol constants (DESIGN.md "Trust and sessions"; the timer values follow WireGuard's)."""

PROLOGUE = b"flatnet/2"
WIRE_VERSION = 2                # byte 1 of every datagram; the 2 in PROLOGUE (docs/protocol-wire.md)
TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
TYPE_CONTROL = 4
TYPE_RELAYED = 5
TYPE_COOKIE = 6                 # cookie reply (engine/proto/cookie.py)

# transport ciphers (AEAD suites) of types 3 and 4, negotiated in the handshake payloads
# ("aead", docs/protocol.md 5.2 and 5.4); ChaCha20-Poly1305 when nothing is negotiated
AEAD_CHACHA = "chacha20-poly1305"
AEAD_AES = "aes-256-gcm"
AEADS = (AEAD_CHACHA, AEAD_AES)  # every suite this code knows
AEAD_OFFER_MAX = 8              # entries an initiation's "aead" list may have ...
AEAD_NAME_MAX = 32              # ... each a string of at most this many bytes

REKEY_AFTER_TIME = 120.0        # the initiator of a session starts a new handshake
REKEY_RESPONDER_SLACK = 10.0    # the responder waits this much longer, so both do not race
# the initiator starts up to this much earlier, uniformly at random, drawn for each key:
# sessions made together (every node after a lighthouse restart) do not rekey together
REKEY_JITTER = 30.0
REJECT_AFTER_TIME = 180.0       # keys older than this are never used again
REKEY_AFTER_MESSAGES = 2 ** 60
KEEPALIVE_TIMEOUT = 15.0        # send an empty packet after this long without sending
DEAD_PEER_TIMEOUT = 20.0        # sent, but nothing heard for this long: handshake again
HANDSHAKE_RETRY_FIRST = 1.0     # then doubles, up to HANDSHAKE_RETRY_MAX
HANDSHAKE_RETRY_MAX = 8.0
HANDSHAKE_GIVE_UP = 90.0        # stop retrying after this long with no answer
COOKIE_LIFETIME = 120.0         # a cookie is used for mac2 this long (the secret behind it rotates as often)
