"""A bounded flood of junk handshake initiations, for the flood benchmark and its short
integration test. Run inside a test namespace:

    python -m tests.harness.flood --target IP:PORT --key HEX --rate 20000 --seconds 10
        --sources 10.250.0.0/24 --ports 4

Each message looks like an initiation to the data path: header, random body and, with
--key (the target's static public key, hex), a valid mac1, so it costs the target the
most a sender without a cookie can make it pay; without --key the mac1 is junk too.
Sources: every address of --sources (the namespace must own them, e.g. a `local`
route) times --ports sockets each. Sends at --rate for --seconds, then stops and
prints one JSON line: {"sent": n, "errors": n, "seconds": s}.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import time

from tests.harness.wire import handshake

BODY = 360          # about the size of a real initiation with its certificate
TICK = 0.005        # send in slices of this long


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.harness.flood")
    p.add_argument("--target", required=True)
    p.add_argument("--key", default="", help="target's static public key (hex): valid mac1")
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sources", default="10.250.0.0/24")
    p.add_argument("--ports", type=int, default=4)
    a = p.parse_args(argv)
    if a.seconds > 60 or a.rate > 200_000:
        raise SystemExit("bounded: at most 60 s and 200k messages/s")
    host, port = a.target.rsplit(":", 1)
    target = (host, int(port))
    key = bytes.fromhex(a.key) if a.key else None
    socks = []
    for addr in ipaddress.IPv4Network(a.sources).hosts():
        for _ in range(a.ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((str(addr), 0))
            s.setblocking(False)
            socks.append(s)
    # a pool of distinct messages, reused: building each costs more than sending it
    pool = [handshake(1, i, os.urandom(BODY), key) if key else bytes([1, 2, 0, 0]) + os.urandom(BODY + 36)
            for i in range(4096)]
    sent = errors = 0
    start = time.monotonic()
    end = start + a.seconds
    while (now := time.monotonic()) < end:
        due = int((now - start) * a.rate) - sent
        for _ in range(max(due, 0)):
            try:
                socks[sent % len(socks)].sendto(pool[sent % len(pool)], target)
            except OSError:
                errors += 1
            sent += 1
        time.sleep(TICK)
    for s in socks:
        s.close()
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(time.monotonic() - start, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
