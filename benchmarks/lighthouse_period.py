"""`python3 -m benchmarks lighthouse --rekey-period`: after the other phases, the
10,000 simulated nodes keep their sessions in real time for one full key lifetime, as
engines do (tests/harness/simkeep.py: each node's session is the engine's
PeerSession, so it rekeys when an engine would, from its own handshake), and register
every 10 s. One node in PASSIVE_EVERY never starts a rekey: its lighthouse must (the
responder's rekey), and the node answers (with etcd, such nodes at both lighthouses). The phase ends SPAN_MARGIN seconds after the
last first session is REJECT_AFTER_TIME old (every first key has been replaced or has
expired by then), and never later than --rekey-period-max seconds.

Counted per second (one-second buckets from the phase start): rekeys the nodes started
and finished, the lighthouse's rekeys the nodes answered, initiations sent (retries
too), cookie replies, sessions a node lost (its keys expired), registers and leases.
The parent samples the lighthouse's CPU and RSS each second and reads its status at
the end (sessions expired or given up there, nodes registered)."""
from __future__ import annotations

import time

from flatnet.engine.proto.constants import REJECT_AFTER_TIME

# about 1% of the nodes do not rekey themselves: every 97th, a stride prime to the 4 of
# the etcd run's placement (bench_lighthouse REMOTE_EVERY), so both lighthouses have some
PASSIVE_EVERY = 97
SPAN_MARGIN = 15.0        # seconds after the last first key's expiry time
MAX_SECONDS = 260.0       # the phase's hard bound (--rekey-period-max)
KINDS = ("rekeys_started", "rekeys_done", "lighthouse_rekeys_answered", "initiations_sent", "cookies",
         "sessions_lost", "handshakes_failed", "keepalives", "registers_sent", "leases")


def passive_names(names: list[str]) -> frozenset[str]:
    return frozenset(names[::PASSIVE_EVERY])


def run(swarm, max_seconds: float, deadline: float) -> dict:  # noqa: ANN001 - a simkeep.EngineSwarm
    """The period phase in the swarm process (see the module docstring)."""
    t0 = time.monotonic()
    made = [ps.current.created for ps in swarm.ps.values() if ps.current is not None]
    end = min(deadline, t0 + max_seconds, max(made) + REJECT_AFTER_TIME + SPAN_MARGIN)
    ages: list[float] = []  # of the keys a node rekeys, when it starts (the engine's rekey time)
    swarm.on_rekey = lambda age: ages.append(age)
    swarm.start_period(t0)
    kept = 0.0
    while (now := time.monotonic()) < end:
        swarm.pump(0.005)
        swarm.run_timers(time.monotonic())
        if now - kept >= 0.02:  # as in the query phase: each node looked at every 0.4 s, registers every 10 s
            kept = now
            for name in swarm.lighthouses:
                swarm.keep_registered(name)
    took = time.monotonic() - t0
    drain = time.monotonic() + 1.0  # answers to the last registers: waited for, not counted as lost
    while time.monotonic() < drain:
        swarm.pump(0.01)
    seconds = int(took) + 2
    st = swarm.stats
    ages.sort()
    recent = t0 + took - 20.0
    r = {"seconds": took, "sessions": len(made),
         "first_sessions_made_s": [min(made) - t0, max(made) - t0],  # relative to the phase start
         "passive_nodes": len(swarm.passive),
         "per_second": {k: st.summary(k, seconds) for k in KINDS},
         "timeline": {k: st.timeline(k, seconds) for k in ("rekeys_started", "rekeys_done",
                                                            "lighthouse_rekeys_answered", "leases")},
         "rekey_age_s": {"min": ages[0], "median": ages[len(ages) // 2], "max": ages[-1]} if ages else None,
         "with_keys_at_end": sum(ps.current is not None for ps in swarm.ps.values()),
         "lease_in_last_20_s": sum(t >= recent for t in swarm.last_lease.values()),
         # nodes whose last register had no lease after it (counts of the phase do not
         # pair: answers to registers sent before it arrive in it)
         "last_register_unanswered": sum(n.registered_at > swarm.last_lease.get(id(n), 0.0) for n in swarm.nodes),
         "bad": swarm.counts["bad"]}
    return r


def print_report(e: dict) -> None:
    """The parent's summary of the phase (e: the end-to-end result)."""
    p = e["rekey_period"]
    ps = p["per_second"]
    s = e["lighthouse"].get("sessions", {})
    s2 = (e.get("lighthouse2") or {}).get("sessions")
    print(f"\nrekey period: {p['seconds']:.0f} s in real time, {p['sessions']} sessions made "
          f"{p['first_sessions_made_s'][0]:.0f}..{p['first_sessions_made_s'][1]:.0f} s from its start, "
          f"{p['passive_nodes']} nodes that leave the rekey to the lighthouse")
    for k in ("rekeys_started", "rekeys_done", "lighthouse_rekeys_answered", "initiations_sent", "cookies",
              "sessions_lost", "handshakes_failed", "registers_sent", "leases"):
        v = ps[k]
        print(f"  {k}: {v['total']} (max {v['max_per_s']}/s, p99 {v['p99_per_s']}/s, in {v['seconds_with_any']} s"
              + (f", seconds {v['first_s']}..{v['last_s']})" if v["first_s"] is not None else ")"))
    if p["rekey_age_s"]:
        a = p["rekey_age_s"]
        print(f"  a node's rekey started at key age {a['min']:.1f} / {a['median']:.1f} / {a['max']:.1f} s (min/median/max)")
    print(f"  nodes with keys at the end {p['with_keys_at_end']}, with a lease answer in the last 20 s "
          f"{p['lease_in_last_20_s']}, whose last register went unanswered {p['last_register_unanswered']}; lighthouse: {e['registered_at_end']} nodes registered, sessions expired "
          f"{s.get('sessions_expired')}, handshakes given up {s.get('handshakes_failed')}, sessions removed "
          f"{s.get('peers_removed')}, rekeys it started {s.get('rekeys_started')}")
    if s2 is not None:
        print(f"  lighthouse 2: {e['lighthouse2']['registered_at_end']} nodes registered, sessions expired "
              f"{s2['sessions_expired']}, handshakes given up {s2['handshakes_failed']}, sessions removed "
              f"{s2['peers_removed']}, rekeys it started {s2['rekeys_started']}")
    c = e["period_lighthouse"]
    print(f"  lighthouse over the period: {c['cpu_s']:.1f} CPU-s (busiest second {c['cpu_max_per_s']:.2f} CPU-s), "
          f"RSS {c['rss_mb_min']:.0f}-{c['rss_mb_max']:.0f} MB")
