"""Is the path to a peer alive? (sans-IO, clock injected; WireGuard's timers and
Nebula's connection manager do the same job.)

Rules:
- Only a path that is in use is judged. We wait for an answer only after we sent
  something the peer has not answered yet (last_tx newer than the last word heard).
  An idle path is never probed and never declared dead: nothing waits on it. (The
  session's keepalive every 15 s is a send, so a silent idle peer is still found.)
- "Heard" is anything authenticated from the peer: a data or control packet, or a
  finished handshake. Unauthenticated packets never make a path look alive.
- States and inputs form a table (TRANSITIONS); a missing entry is a bug.
    UP          --silent for probe_after-->  SUSPECT      effect: Probe
    SUSPECT     --silent for dead_after-->   UNREACHABLE  effect: PathDead(reason)
    SUSPECT     --heard-->                   UP
    UNREACHABLE --heard-->                   UP           effect: PathBack(down_for)
    UNREACHABLE --probe due-->               UNREACHABLE  effect: Probe
- A probe asks for an answer the peer must give: the owner starts a handshake to
  every candidate endpoint (or through the relay). While the path is down it probes
  every PROBE_EVERY seconds for PROBE_FAST_FOR seconds, then every PROBE_SLOW, so a
  path that comes back is found within a second or two, and a host that is gone for
  good costs one handshake every 10 s.
- No clock is read here: `now` and the data path's times (monotonic seconds) come in.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

DEAD_AFTER = 3.0       # default: silent this long while we send -> unreachable
PROBE_EVERY = 1.0      # probe this often while the path is down ...
PROBE_FAST_FOR = 60.0  # ... for this long, then
PROBE_SLOW = 10.0      # this often


class PathState(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    UNREACHABLE = "unreachable"


class Input(enum.Enum):
    SILENT = "silent"            # unanswered for probe_after
    SILENT_LONG = "silent_long"  # unanswered for dead_after
    HEARD = "heard"
    PROBE_DUE = "probe_due"


TRANSITIONS: dict[tuple[PathState, Input], PathState] = {
    (PathState.UP, Input.SILENT): PathState.SUSPECT,
    (PathState.UP, Input.HEARD): PathState.UP,
    (PathState.SUSPECT, Input.SILENT_LONG): PathState.UNREACHABLE,
    (PathState.SUSPECT, Input.HEARD): PathState.UP,
    (PathState.UNREACHABLE, Input.HEARD): PathState.UP,
    (PathState.UNREACHABLE, Input.PROBE_DUE): PathState.UNREACHABLE,
}


@dataclass(frozen=True)
class Probe:
    """Ask the peer for an answer now (a handshake)."""


@dataclass(frozen=True)
class PathDead:
    reason: str


@dataclass(frozen=True)
class PathBack:
    down_for: float


class Liveness:
    def __init__(self, dead_after: float = DEAD_AFTER) -> None:
        if not dead_after > 0:
            raise ValueError("dead_after must be positive")
        self.dead_after = dead_after
        self.probe_after = dead_after / 2
        self.state = PathState.UP
        self.heard: float | None = None     # last authenticated word from the peer
        self.waiting: float | None = None   # first unanswered send we saw since `heard`
        self.down_since: float | None = None
        self.next_probe: float | None = None
        self.reason = ""
        self.times_down = 0

    def _move(self, what: Input) -> None:
        try:
            self.state = TRANSITIONS[(self.state, what)]
        except KeyError:
            raise AssertionError(f"{what.value} is not allowed in state {self.state.value}") from None

    def update(self, last_tx: float | None, heard: float | None, now: float) -> list[object]:
        """Feed the latest send time and the time the peer was last heard (either may
        be None: never); returns the effects, in order."""
        out: list[object] = []
        if heard is not None and (self.heard is None or heard > self.heard):
            self.heard = heard
            if self.waiting is not None and heard >= self.waiting:
                self.waiting = None
            if self.state is not PathState.UP and self.waiting is None:  # an answer, not old news
                was_down = self.state is PathState.UNREACHABLE
                down_for = now - self.down_since if self.down_since is not None else 0.0
                self._move(Input.HEARD)
                self.down_since = self.next_probe = None
                self.reason = ""
                if was_down:
                    out.append(PathBack(round(down_for, 1)))
        if last_tx is not None and self.waiting is None and (self.heard is None or last_tx > self.heard):
            # the data path keeps only the latest send: that is when we start waiting
            # (late by at most one timer tick, never early)
            self.waiting = last_tx
        if self.waiting is None:
            return out
        silent = now - self.waiting
        if self.state is PathState.UP and silent >= self.probe_after:
            self._move(Input.SILENT)
            out.append(Probe())
        if self.state is PathState.SUSPECT and silent >= self.dead_after:
            self._move(Input.SILENT_LONG)
            self.times_down += 1
            self.down_since = now
            self.reason = self._reason(now)
            self.next_probe = now + PROBE_EVERY
            out.append(PathDead(self.reason))
        elif self.state is PathState.UNREACHABLE and self.next_probe is not None and now >= self.next_probe:
            self._move(Input.PROBE_DUE)
            fast = self.down_since is not None and now - self.down_since < PROBE_FAST_FOR
            self.next_probe = now + (PROBE_EVERY if fast else PROBE_SLOW)
            out.append(Probe())
        return out

    def _reason(self, now: float) -> str:
        last = f"last heard {now - self.heard:.1f} s ago" if self.heard is not None else "never heard"
        return (f"no answer for {now - self.waiting:.1f} s to traffic or a handshake probe "
                f"(limit {self.dead_after:g} s; {last})")

    def get_timer(self) -> float | None:
        if self.state is PathState.UNREACHABLE:
            return self.next_probe
        if self.waiting is None:
            return None
        return self.waiting + (self.probe_after if self.state is PathState.UP else self.dead_after)
