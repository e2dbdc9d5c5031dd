"""One peer's session: handshakes, transport keys and timers (sans-IO).

Rules:
- States and inputs form a table (TRANSITIONS); an input missing from it is a bug.
- Nothing here reads a clock or touches a socket: `now` (monotonic seconds) comes in
  with every call, wall-clock nanoseconds (for TAI64N) from an injected function.
- Outputs are drained by the driver: datagrams_to_send() for handshake packets
  (address None = the peer's endpoints), next_event() for key changes, keepalives
  and failures; get_timer() says when handle_timer() wants to run next.
- Keys: `current` sends and receives; `previous` only receives, until the next
  install, so packets in flight during a rekey are not lost.
- Rekey: the initiator of the current keys starts REKEY_AFTER_TIME after they were
  made, less a jitter drawn for each key from the injected `rng` (up to REKEY_JITTER;
  none without an rng), so sessions made together do not rekey together; the
  responder REKEY_RESPONDER_SLACK after REKEY_AFTER_TIME.
- Cookies: every handshake message leaves with mac1 and mac2 (engine/proto/cookie.py);
  a cookie reply from the peer (under load) is kept COOKIE_LIFETIME and keys mac2 of
  the next messages, the retries included. It does not trigger a send by itself.
"""
from __future__ import annotations

import copy
import enum
import random
from dataclasses import dataclass
from typing import Callable

from flatnet.engine.proto import cert as certs
from flatnet.engine.proto import cookie as cookies
from flatnet.engine.proto import handshake
from flatnet.engine.proto.constants import (AEAD_CHACHA, COOKIE_LIFETIME, DEAD_PEER_TIMEOUT, HANDSHAKE_GIVE_UP, HANDSHAKE_RETRY_FIRST,
                                    HANDSHAKE_RETRY_MAX, KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME,
                                    REKEY_AFTER_TIME, REKEY_JITTER, REKEY_RESPONDER_SLACK)
from flatnet.engine.proto.errors import LocalProtocolError, RemoteProtocolError
from flatnet.engine.proto.noise import HandshakeIK


class State(enum.Enum):
    IDLE = "idle"                # no keys
    HANDSHAKING = "handshaking"  # no keys, an initiation is out
    ESTABLISHED = "established"  # keys (a rekey may be out at the same time)


class Input(enum.Enum):
    START = "start"
    KEYS = "keys"
    EXPIRE = "expire"
    GIVE_UP = "give_up"


TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.IDLE, Input.START): State.HANDSHAKING,
    (State.IDLE, Input.KEYS): State.ESTABLISHED,
    (State.HANDSHAKING, Input.KEYS): State.ESTABLISHED,
    (State.HANDSHAKING, Input.GIVE_UP): State.IDLE,
    (State.IDLE, Input.GIVE_UP): State.IDLE,  # a rehandshake outlived the keys it replaced
    (State.ESTABLISHED, Input.START): State.ESTABLISHED,
    (State.ESTABLISHED, Input.KEYS): State.ESTABLISHED,
    (State.ESTABLISHED, Input.EXPIRE): State.IDLE,
    (State.ESTABLISHED, Input.GIVE_UP): State.ESTABLISHED,
}


@dataclass(frozen=True)
class Keys:
    send: bytes
    receive: bytes
    local_index: int
    remote_index: int
    created: float
    initiator: bool
    cipher: str = AEAD_CHACHA  # the transport cipher the handshake negotiated


@dataclass(frozen=True)
class KeysInstalled:
    keys: Keys
    retired_index: int | None  # a receive index the data path must forget
    # the certificate the peer presented in the handshake that made these keys, verified
    # (CA, validity, blocklist, the Noise static key): its groups are the session's
    peer_cert: certs.Certificate


@dataclass(frozen=True)
class KeysExpired:
    local_indexes: tuple[int, ...]


@dataclass(frozen=True)
class SendKeepalive:
    pass


@dataclass(frozen=True)
class HandshakeFailed:
    reason: str


@dataclass
class _Pending:
    hs: HandshakeIK
    local_index: int
    started: float
    next_retry: float
    delay: float


class PeerSession:
    def __init__(self, me: handshake.Identity, peer_name: str, peer_static: bytes,
                 allocate_index: Callable[[], int], release_index: Callable[[int], None],
                 wall_ns: Callable[[], int], rng: random.Random | None = None) -> None:
        """rng: draws each initiator key's rekey jitter (engine/device.py passes the
        Device's); None rekeys at exactly REKEY_AFTER_TIME (tests of exact times)."""
        self.me = me
        self.peer_name = peer_name
        self.peer_static = peer_static
        self._allocate = allocate_index
        self._release = release_index
        self._wall_ns = wall_ns
        self._rng = rng
        self._rekey_early = 0.0  # the current keys' jitter: their initiator rekeys this much early
        self.state = State.IDLE
        self.current: Keys | None = None
        self.previous: Keys | None = None
        self.pending: _Pending | None = None
        self.last_initiation_ts = -1
        self.last_tx: float | None = None
        self.last_rx: float | None = None
        self.last_handshake: float | None = None
        self.handshakes = 0
        self.rekeys = 0
        self._datagrams: list[tuple[bytes, tuple | None]] = []
        self._events: list[object] = []
        self.last_mac1: bytes | None = None      # of the last handshake message sent
        self.cookie: tuple[bytes, float] | None = None  # (cookie, when received)
        # why the peer's last authenticated answer to the pending handshake was refused
        # (no cipher both accept): the give-up names it instead of "no answer"
        self.refused: str | None = None

    # ---- table
    def _move(self, what: Input) -> None:
        try:
            self.state = TRANSITIONS[(self.state, what)]
        except KeyError:
            raise LocalProtocolError(f"{what.value} is not allowed in state {self.state.value}") from None

    # ---- outputs
    def datagrams_to_send(self) -> list[tuple[bytes, tuple | None]]:
        out, self._datagrams = self._datagrams, []
        return out

    def next_event(self) -> object | None:
        return self._events.pop(0) if self._events else None

    # ---- inputs
    def want_keys(self, now: float) -> None:
        """The data path has packets for this peer and no usable keys."""
        if self.pending is None and (self.current is None or self._expired(self.current, now)):
            self._start(now)

    def rehandshake(self, now: float) -> None:
        """Start a new handshake even though keys exist: the peer stopped answering on
        this session (e.g. it restarted and lost its keys)."""
        if self.pending is None:
            self._start(now)

    def probe(self, now: float) -> None:
        """An initiation now, even when one is out and its retry timer has backed off to
        8 s (path liveness, a path change, a lighthouse that stopped answering); the 90 s
        give-up still counts from the pending handshake's start."""
        p = self.pending
        if p is None:
            self._start(now)
        else:
            self._send_initiation(now, started=p.started, delay=HANDSHAKE_RETRY_FIRST)

    def note_traffic(self, last_tx: float | None, last_rx: float | None) -> None:
        """Times of the last data sent and received, from the data path's counters."""
        if last_tx is not None and (self.last_tx is None or last_tx > self.last_tx):
            self.last_tx = last_tx
        if last_rx is not None and (self.last_rx is None or last_rx > self.last_rx):
            self.last_rx = last_rx

    def receive_initiation(self, init: handshake.Initiation, addr: tuple, now: float) -> None:
        if init.peer.name != self.peer_name:
            raise LocalProtocolError("initiation routed to the wrong session")
        if init.timestamp <= self.last_initiation_ts:
            raise RemoteProtocolError("replayed_initiation", f"from {self.peer_name} at {addr}")
        self.last_initiation_ts = init.timestamp
        local = self._allocate()
        packet = self._with_macs(handshake.create_response(self.me, init, local), now)
        send, receive = init.hs.split()
        self._datagrams.append((packet, addr))
        self._install(Keys(send, receive, local, init.sender_index, now, initiator=False, cipher=init.aead),
                      init.peer, now)
        self.me.remember_peer(init.peer, init.hs)  # authenticated, fresh, accepted: the caches may keep it

    def receive_response(self, packet: bytes, now: float) -> None:
        pending = self.pending
        if pending is None:
            raise RemoteProtocolError("unexpected_response", f"from {self.peer_name}")
        sender, receiver = handshake.response_indexes(packet)
        if receiver != pending.local_index:
            raise RemoteProtocolError("unexpected_response", "stale receiver index")
        # on a copy: a response that fails (junk under the right index, or a bad
        # certificate) leaves the pending handshake able to take the real one.
        # Certificate validity is wall-clock time, not the monotonic `now`.
        hs = copy.copy(pending.hs)
        try:
            cert, cipher = handshake.consume_response(self.me, hs, packet, self.peer_name, self._wall_ns() / 1e9)
        except RemoteProtocolError as exc:
            if exc.reason == "cipher_mismatch":  # raised only after Noise opened the payload: the peer said it
                self.refused = str(exc)
            raise
        send, receive = hs.split()
        self.pending = None
        self._install(Keys(send, receive, pending.local_index, sender, now, initiator=True, cipher=cipher), cert, now)
        self.me.remember_peer(cert, hs)

    def receive_cookie_reply(self, packet: bytes, now: float) -> None:
        """The peer is under load and wants mac2 keyed by this cookie from now on."""
        if self.last_mac1 is None:
            raise RemoteProtocolError("unexpected_cookie", f"from {self.peer_name}")
        self.cookie = (cookies.open_reply(packet, self.peer_static, self.last_mac1), now)

    def handle_timer(self, now: float) -> None:
        # Rules: each test below is `now >= deadline`, with the very sum get_timer()
        # returns. `now - start >= timeout` can be false at start + timeout (float
        # rounding): a timer that fires and does nothing, a busy spin on a real clock
        # (the same edge engine/proto/liveness.py had; tests/unit/simnet counts spins).
        p = self.pending
        if p is not None and now >= p.next_retry:
            if now - p.started >= HANDSHAKE_GIVE_UP:
                self._release(p.local_index)
                self.pending = None
                self._move(Input.GIVE_UP)
                if self.refused:  # it answered, but with no cipher this node accepts
                    reason = f"no usable answer from {self.peer_name} in {HANDSHAKE_GIVE_UP:.0f} s: {self.refused}"
                else:
                    reason = f"no answer from {self.peer_name} in {HANDSHAKE_GIVE_UP:.0f} s"
                self._events.append(HandshakeFailed(reason))
                self.refused = None
            else:
                self._send_initiation(now, started=p.started, delay=min(p.delay * 2, HANDSHAKE_RETRY_MAX))
        for keys in (self.previous, self.current):
            if keys is not None and self._expired(keys, now):
                self._expire(keys)
        cur = self.current
        if cur is None:
            return
        if self.pending is None:
            if now >= self._rekey_at(cur):
                self.rekeys += 1
                self._start(now)
            elif self._unanswered() and now >= self._heard() + DEAD_PEER_TIMEOUT:
                self._start(now)  # we keep sending and hear nothing: the peer may have restarted
        if self.current is not None and now >= self._keepalive_at(cur):
            self.last_tx = now
            self._events.append(SendKeepalive())

    def get_timer(self) -> float | None:
        deadlines = []
        if self.pending is not None:
            deadlines.append(self.pending.next_retry)
        for keys in (self.previous, self.current):
            if keys is not None:
                deadlines.append(keys.created + REJECT_AFTER_TIME)
        cur = self.current
        if cur is not None:
            if self.pending is None:
                deadlines.append(self._rekey_at(cur))
                if self._unanswered():
                    deadlines.append(self._heard() + DEAD_PEER_TIMEOUT)
            deadlines.append(self._keepalive_at(cur))
        return min(deadlines) if deadlines else None

    def _rekey_at(self, cur: Keys) -> float:
        return cur.created + REKEY_AFTER_TIME + (-self._rekey_early if cur.initiator else REKEY_RESPONDER_SLACK)

    def _keepalive_at(self, cur: Keys) -> float:
        return (self.last_tx or cur.created) + KEEPALIVE_TIMEOUT

    def _unanswered(self) -> bool:
        """We sent after we last heard from the peer."""
        return self.last_rx is not None and self.last_tx is not None and self.last_tx > self.last_rx

    def close(self) -> None:
        """Forget everything (peer removed): release indexes, tell the data path."""
        indexes = tuple(k.local_index for k in (self.current, self.previous) if k is not None)
        if self.pending is not None:
            self._release(self.pending.local_index)
            self.pending = None
        for index in indexes:
            self._release(index)
        self.current = self.previous = None
        if indexes:
            self._events.append(KeysExpired(indexes))
        self.state = State.IDLE

    # ---- internals
    def _start(self, now: float) -> None:
        self._move(Input.START)
        self._send_initiation(now, started=now, delay=HANDSHAKE_RETRY_FIRST)

    def _send_initiation(self, now: float, started: float, delay: float) -> None:
        if self.pending is not None:
            self._release(self.pending.local_index)
        local = self._allocate()
        hs, packet = handshake.create_initiation(self.me, self.peer_static, local, self._wall_ns())
        packet = self._with_macs(packet, now)
        self.pending = _Pending(hs, local, started, now + delay, delay)
        self._datagrams.append((packet, None))

    def _with_macs(self, message: bytes, now: float) -> bytes:
        if self.cookie is not None and now - self.cookie[1] >= COOKIE_LIFETIME:
            self.cookie = None
        packet, self.last_mac1 = cookies.add_macs(message, self.peer_static,
                                                  self.cookie[0] if self.cookie else None)
        return packet

    def _install(self, keys: Keys, peer_cert: certs.Certificate, now: float) -> None:
        retired = self.previous.local_index if self.previous is not None else None
        if retired is not None:
            self._release(retired)
        self.previous, self.current = self.current, keys
        # drawn for each key, not once per peer: a bunch of sessions spreads further with
        # every rekey; always early, so the responder's rekey stays the later one
        self._rekey_early = self._rng.uniform(0.0, REKEY_JITTER) if keys.initiator and self._rng is not None else 0.0
        self.refused = None
        self.last_handshake = now
        self.handshakes += 1
        self._move(Input.KEYS)
        self._events.append(KeysInstalled(keys, retired, peer_cert))

    def _heard(self) -> float:
        """When the peer last gave word: data, or a finished handshake. Counting the
        handshake matters: a peer that restarted and has no data to send yet was
        otherwise handshaken with again at every timer tick (the soak saw 20 a second,
        the responder's rate limit)."""
        return max(self.last_rx or 0.0, self.last_handshake or 0.0)

    @staticmethod
    def _expired(keys: Keys, now: float) -> bool:
        return now >= keys.created + REJECT_AFTER_TIME  # get_timer()'s sum (see handle_timer)

    def _expire(self, keys: Keys) -> None:
        self._release(keys.local_index)
        self._events.append(KeysExpired((keys.local_index,)))
        if keys is self.previous:
            self.previous = None
        else:
            self.current = None
            self._move(Input.EXPIRE)
