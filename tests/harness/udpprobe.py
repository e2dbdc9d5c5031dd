"""UDP probes for the data path's stall tests (tests/integration/test_engine_stall.py).
Run inside a test namespace, each bounded in count and time:

    python -m tests.harness.udpprobe echo --port 7000 --seconds 10
    python -m tests.harness.udpprobe sink --port 7001 --seconds 10 --expect 400
    python -m tests.harness.udpprobe pingpong --to 10.87.2.2:7000 --rounds 300 --gaps 0,5
    python -m tests.harness.udpprobe bursts --to 10.87.2.2:7000 --rounds 40
    python -m tests.harness.udpprobe singles --to 10.87.1.2:7001 --count 400 --gaps 0,5
    python -m tests.harness.udpprobe flood --to 10.87.2.2:7001 --count 200000 --seconds 3

echo sends every datagram back. pingpong sends one datagram, waits for its echo (up
to LOST_AFTER), then a random gap; it prints the round trip of each, in ms. bursts
sends 1-32 datagrams back to back, waits for all their echoes, then a random silence.
singles sends datagrams stamped with CLOCK_MONOTONIC (one clock for every namespace)
and sink prints how long each took one way. flood sends as fast as it can. Each
client prints one JSON line; sink prints its line when it has `--expect` singles or
its time is up.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
from typing import Callable

LOST_AFTER = 1.0        # s: an echo later than this counts as lost
MAX_SECONDS = 60.0
PROBE = b"P"            # a single: P, seq (u32), sent at (u64 ns, CLOCK_MONOTONIC)
FLOOD = b"F"


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def target(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def gap_range(text: str) -> tuple[float, float]:
    lo, hi = (float(x) / 1000 for x in text.split(","))
    return lo, hi


def echo(port: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        s.sendto(data, addr)
        n += 1
    return {"echoed": n}


def sink(port: int, seconds: float, expect: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    end, lat, seen, flood = time.monotonic() + seconds, [], set(), 0
    while time.monotonic() < end and len(seen) < expect:
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        if data[:1] == PROBE and len(data) >= 13:
            seq, sent = struct.unpack_from("!IQ", data, 1)
            if seq not in seen:
                seen.add(seq)
                lat.append((now_ns() - sent) / 1e6)
        elif data[:1] == FLOOD:
            flood += 1
    return {"got": len(seen), "lat_ms": lat, "flood": flood}


def receive_until_done(s: socket.socket, want: set[int], item: Callable[[bytes], int | None]) -> None:
    """Read answers until every number in `want` came back (item(data) names the one a
    datagram answers, or None) or LOST_AFTER passed; what is left in `want` is lost."""
    deadline = time.monotonic() + LOST_AFTER
    while want:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        s.settimeout(left)
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        want.discard(item(data))


def pingpong(to: tuple[str, int], rounds: int, gaps: tuple[float, float], seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(to)
    rtt, lost, end = [], 0, time.monotonic() + seconds
    for seq in range(rounds):
        if time.monotonic() > end:
            break
        t0 = now_ns()
        s.send(struct.pack("!cI", b"Q", seq) + bytes(50))
        want, tag = {seq}, struct.pack("!cI", b"Q", seq)
        receive_until_done(s, want, lambda data, seq=seq, tag=tag: seq if data[:5] == tag else None)
        if want:
            lost += 1
        else:
            rtt.append((now_ns() - t0) / 1e6)
        time.sleep(random.uniform(*gaps))
    return {"rtt_ms": rtt, "lost": lost}


def bursts(to: tuple[str, int], rounds: int, seconds: float) -> dict:
    """Bursts of 1-32 datagrams; the silence after each is short (0-5 ms) three times in
    four, else 10-60 ms: a thread goes idle and parks, then is needed again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(to)
    took, lost, end = [], 0, time.monotonic() + seconds
    for r in range(rounds):
        if time.monotonic() > end:
            break
        k = random.randint(1, 32)
        t0 = now_ns()
        for i in range(k):
            s.send(struct.pack("!cII", b"B", r, i) + bytes(random.choice((20, 200, 1200))))
        want = set(range(k))

        def burst_item(data: bytes, r: int = r) -> int | None:
            if data[:1] == b"B" and len(data) >= 9:
                rr, i = struct.unpack_from("!II", data, 1)
                return i if rr == r else None
            return None
        receive_until_done(s, want, burst_item)
        lost += len(want)
        if not want:
            took.append((now_ns() - t0) / 1e6)
        time.sleep(random.uniform(0, 0.005) if random.random() < 0.75 else random.uniform(0.010, 0.060))
    return {"burst_ms": took, "lost": lost}


def singles(to: tuple[str, int], count: int, gaps: tuple[float, float], seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(to)
    end, sent = time.monotonic() + seconds, 0
    for seq in range(count):
        if time.monotonic() > end:
            break
        s.send(PROBE + struct.pack("!IQ", seq, now_ns()) + bytes(40))
        sent += 1
        time.sleep(random.uniform(*gaps))
    return {"sent": sent}


def flood(to: tuple[str, int], count: int, size: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(to)
    s.setblocking(False)
    payload = FLOOD + bytes(max(size - 1, 0))
    end, sent, full = time.monotonic() + seconds, 0, 0
    while sent + full < count:
        if (sent + full) % 256 == 0 and time.monotonic() > end:
            break
        try:
            s.send(payload)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            full += 1
    return {"sent": sent, "refused": full}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.harness.udpprobe")
    p.add_argument("mode", choices=["echo", "sink", "pingpong", "bursts", "singles", "flood"])
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--to", default="")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--expect", type=int, default=1 << 30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--gaps", default="0,5", help="random gap between sends, min,max in ms")
    a = p.parse_args(argv)
    if a.seconds > MAX_SECONDS or a.count > 5_000_000 or a.rounds > 100_000:
        raise SystemExit(f"bounded: at most {MAX_SECONDS:.0f} s, 5M datagrams, 100k rounds")
    if a.mode == "echo":
        out = echo(a.port, a.seconds)
    elif a.mode == "sink":
        out = sink(a.port, a.seconds, a.expect)
    elif a.mode == "pingpong":
        out = pingpong(target(a.to), a.rounds, gap_range(a.gaps), a.seconds)
    elif a.mode == "bursts":
        out = bursts(target(a.to), a.rounds, a.seconds)
    elif a.mode == "singles":
        out = singles(target(a.to), a.count, gap_range(a.gaps), a.seconds)
    else:
        out = flood(target(a.to), a.count, a.size, a.seconds)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
