"""Path liveness on a virtual clock: a fake path that answers (or not) what we send."""
import pytest

from flatnet.engine.proto.liveness import (PROBE_EVERY, PROBE_FAST_FOR, PROBE_SLOW, Liveness, PathBack, PathDead,
                                   PathState, Probe)


class FakePath:
    """Sends every `every` seconds; while `up`, the peer answers each send (and each
    probe) `rtt` later. The timer runs at every tick, as the engine's 1 s timer would
    at worst; ticks are finer here."""

    def __init__(self, dead_after: float = 3.0, rtt: float = 0.001) -> None:
        self.live = Liveness(dead_after)
        self.now = 0.0
        self.last_tx: float | None = None
        self.heard: float | None = None
        self.up = True
        self.rtt = rtt
        self.events: list[tuple[float, object]] = []

    def send(self) -> None:
        self.last_tx = self.now
        if self.up:
            self.heard = self.now + self.rtt

    def run(self, seconds: float, every: float | None = 0.5, tick: float = 0.1) -> None:
        end = self.now + seconds
        next_send = self.now
        while self.now < end - 1e-9:
            self.now = round(self.now + tick, 6)
            if every is not None and self.now >= next_send:
                self.send()
                next_send = self.now + every
            heard = self.heard if self.heard is not None and self.heard <= self.now else None
            for e in self.live.update(self.last_tx, heard, self.now):
                self.events.append((self.now, e))
                if isinstance(e, Probe) and self.up:
                    self.heard = self.now + self.rtt  # a handshake answered

    def of(self, kind):  # noqa: ANN001
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


def test_a_path_in_use_that_goes_silent_is_probed_then_unreachable_then_back():
    p = FakePath(dead_after=3.0)
    p.run(5)
    assert p.events == [] and p.live.state is PathState.UP
    cut = p.now
    p.up = False
    p.run(8)
    (t_probe, _), *_ = p.of(Probe)
    (t_dead, dead), = p.of(PathDead)
    # the last send before the cut was answered; the first unanswered one is within 0.5 s
    assert cut + 1.5 <= t_probe <= cut + 2.1
    assert cut + 3.0 <= t_dead <= cut + 3.6
    assert p.live.state is PathState.UNREACHABLE and "no answer for 3.0 s" in dead.reason
    assert "last heard" in dead.reason and p.live.times_down == 1
    # probes every second while down, and nothing more
    probes = [t for t, _ in p.of(Probe) if t > t_dead]
    assert len(probes) == 4 and all(b - a == pytest.approx(PROBE_EVERY) for a, b in zip(probes, probes[1:]))
    p.up = True
    restored = p.now
    p.run(3)
    (t_back, back), = p.of(PathBack)
    assert t_back - restored <= PROBE_EVERY + 0.1  # the next probe (or send) is answered
    assert back.down_for == pytest.approx(t_back - t_dead, abs=0.11)
    assert p.live.state is PathState.UP and p.live.reason == ""


def test_an_idle_path_is_never_judged():
    p = FakePath()
    p.run(2)
    p.up = False
    p.run(120, every=None)
    assert p.events == [] and p.live.get_timer() is None


def test_first_send_after_a_long_idle_is_not_dead_at_once():
    """Silence is counted from the first unanswered send, not from the last word heard."""
    p = FakePath()
    p.run(1)
    p.run(60, every=None)
    p.run(5)  # sends again, answered
    assert p.events == []


def test_an_answered_probe_keeps_the_path_up():
    """One-way traffic (nothing comes back) on a live path: the probe is answered."""
    p = FakePath()
    p.run(1)
    p.heard = p.now  # from now on only the probe answers
    p.send = lambda: setattr(p, "last_tx", p.now)
    p.run(10)
    assert p.of(PathDead) == [] and len(p.of(Probe)) >= 1 and p.live.state is PathState.UP


def test_probes_slow_down_for_a_host_gone_for_good():
    p = FakePath()
    p.run(1)
    p.up = False
    p.run(PROBE_FAST_FOR + 3.5 + 60)
    (t_dead, _), = p.of(PathDead)
    late = [t for t, _ in p.of(Probe) if t > t_dead + PROBE_FAST_FOR + 1]
    assert len(late) <= 60 / PROBE_SLOW + 1
    assert p.live.get_timer() is not None and p.live.get_timer() <= p.now + PROBE_SLOW


def test_old_news_does_not_bring_a_path_back():
    live = Liveness(3.0)
    assert live.update(10.0, 5.0, 10.0) == []
    assert isinstance(live.update(10.0, 5.0, 11.6)[0], Probe)
    assert isinstance(live.update(10.0, 5.0, 13.0)[0], PathDead)
    assert live.update(10.0, 9.0, 13.5) == []  # heard, but before the unanswered send
    assert live.state is PathState.UNREACHABLE
    assert [type(e) for e in live.update(10.0, 13.6, 13.7)] == [PathBack]


def test_timer_says_when_to_look_again():
    live = Liveness(4.0)
    assert live.get_timer() is None
    live.update(1.0, None, 1.0)
    assert live.get_timer() == 3.0  # probe_after = dead_after / 2
    live.update(1.0, None, 3.0)
    assert live.get_timer() == 5.0
    live.update(1.0, None, 5.0)
    assert live.get_timer() == 5.0 + PROBE_EVERY


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Liveness(0)
