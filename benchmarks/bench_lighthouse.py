"""Lighthouse: 10,000 simulated nodes speaking the real protocol (Noise handshake,
register, queries over UDP, tests/harness/simnode.py) against a lighthouse process in
a namespace, with the SQLite store or (--backend etcd) on a 3-member etcd cluster;
beside it the sans-IO registry alone on one core (each query also producing its
punch), and the time from the first packet to a new peer until its delivery, direct
and relayed (a lab in namespaces). --junk RATE: during the query phase, a flood of
type-5 datagrams from addresses no node has (spoofed: no certificate needed) at RATE
a second, bounded, inside the namespace. --rekeys: after the queries, every node
starts a new handshake with its lighthouse (what a rekey is on the wire).
--rekey-period: after the queries, the nodes keep their sessions in real time for a
full key lifetime, rekeying as engines do (benchmarks/lighthouse_period.py).

What the load generator does ahead of a timed phase, and why that is fair: it builds
each node's initiation before the handshake (and rekey) phase starts (Swarm.prepare):
its fresh ephemeral key, the X25519 and ChaCha20 work, the TAI64N (when built: newer
than the node's last, all a lighthouse checks) and mac1. The lighthouse receives the
same bytes a node would send, and does all its own work when they arrive. The
nodes share one cache of verified certificates (the lighthouse's is checked once, not
10,000 times) and, as an engine does, keep the static-static DH of a lighthouse
they finished a handshake with. Handshakes and rekeys are paced (--handshake-rate,
1,800 a second: under the lighthouse's global limit of 2,000, above which it wants
cookies these nodes do not answer); an initiation unanswered after 1 s is sent again."""
from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import tempfile
import time
import tracemalloc

from benchmarks.lighthouse_period import MAX_SECONDS as PERIOD_MAX
from benchmarks.report import table, write_json
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry


def registry_bench(nodes: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        reg = Registry(LeaseStore(os.path.join(d, "l.db"), ipaddress.IPv4Network("10.0.0.0/8")))
        t0 = time.perf_counter()
        for i in range(nodes):
            reg.handle(f"node-{i}", b"c" * 180, wire.encode("register", endpoints=[(f"172.16.{i % 250}.2", 4787)]),
                       (f"198.51.{i // 250 % 256}.{i % 250}", 40000 + i % 20000), 0.0)
        reg_rate = nodes / (time.perf_counter() - t0)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        queries = [wire.encode("query", addr=str(ipaddress.IPv4Address(0x0A000000 + ((1 + i % nodes) << 8) + 5)))
                   for i in range(4096)]
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            # a different asker for each query, the virtual clock a second further each
            # pass: the per-node query and punch limits (registry.py) are not what is measured
            now = 1.0 + n / len(queries)
            for j, q in enumerate(queries):
                reg.handle(f"node-{(n + j) % nodes}", b"", q, ("198.51.0.7", 40007), now)
            n += len(queries)
        rate = n / (time.perf_counter() - t0)
    return {"nodes": nodes, "register_per_s": reg_rate, "queries_per_s": rate,
            "memory_mb": current / 1e6, "peak_memory_mb": peak / 1e6,
            "process_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


E2E_IP = "10.251.0.1"          # the lighthouse, inside the benchmark's namespace
E2E_IP2 = "10.251.0.2"         # with etcd: a second lighthouse, holding every REMOTE_EVERY-th node
REMOTE_EVERY = 4
E2E_ETCD = ["10.251.0.11", "10.251.0.12", "10.251.0.13"]
E2E_NODES = "10.251.1.{}"      # 250 source addresses for the simulated nodes


def _cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _threads_cpu(pid: int) -> dict[int, float]:
    """Each thread's user + system CPU seconds so far (FLATNET_BENCH_THREADS)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _cpu_s(f"{pid}/task/{tid}")
        except OSError:
            pass
    return out


def _thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from `py-spy dump` if py-spy is on PATH
    (FLATNET_BENCH_THREADS; Python does not give its threads' names to the kernel)."""
    import re
    import shutil
    import subprocess
    if shutil.which("py-spy") is None:
        return {}
    out = subprocess.run(["py-spy", "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True,
                         timeout=30).stdout
    return {int(m.group(1), 0): m.group(2) for m in re.finditer(r'Thread (\S+) \([^)]*\): "([^"]*)"', out)}


def _py_spy(spies: list, phase_name: str, pids: dict[str, int]) -> list:
    """FLATNET_BENCH_PYSPY=FILE: py-spy samples the lighthouse during one phase
    (FLATNET_BENCH_PYSPY_PHASE, default "queries"; or "handshakes", "registers", "rekey-period"),
    collapsed stacks, one line each, to FILE (more py-spy options, e.g. "--gil":
    FLATNET_BENCH_PYSPY_ARGS); the swarm (the load generator) too,
    to FILE.swarm (`py-spy` on PATH). Called at each phase line: stops what runs,
    starts the samplers when their phase begins."""
    import shutil
    import signal
    import subprocess
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(30)
    out = os.environ.get("FLATNET_BENCH_PYSPY")
    if not out or phase_name != os.environ.get("FLATNET_BENCH_PYSPY_PHASE", "queries"):
        return []
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("FLATNET_BENCH_PYSPY is set but py-spy is not on PATH (pip install py-spy)")
    return [subprocess.Popen([exe, "record", "--nonblocking", "--rate", "250", "--format", "raw",
                              "--output", out + ("" if who == "lighthouse" else "." + who), "--pid", str(pid)]
                            + os.environ.get("FLATNET_BENCH_PYSPY_ARGS", "").split(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for who, pid in pids.items()]


E2E_JUNK = [E2E_NODES.format(i) for i in range(251, 255)]  # sources no simulated node uses


def junk_flood(rate: int, seconds: float) -> dict:
    """Type-5 junk at the lighthouse at `rate` a second for `seconds` (run inside the
    namespace): 8 sockets on addresses no node has, paced every 10 ms; bounded count."""
    import socket
    import struct
    from flatnet.engine.crypto import lib
    socks = []
    for i in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((E2E_JUNK[i % len(E2E_JUNK)], 0))
        socks.append(s)
    dest = (E2E_IP, 4787)
    packets = [struct.pack("<BBHI", 5, lib.FN_WIRE_VERSION, 0, 0x40 + i) + os.urandom(100) for i in range(64)]
    sent = errors = 0
    t0 = time.monotonic()
    limit = int(rate * seconds)
    while sent < limit and time.monotonic() - t0 < seconds + 5:
        due = min(limit, int(rate * (time.monotonic() - t0)))
        while sent < due:
            try:
                socks[sent % len(socks)].sendto(packets[sent % len(packets)], dest)
            except OSError:
                errors += 1
            sent += 1
        time.sleep(0.01)
    for s in socks:
        s.close()
    return {"junk_sent": sent, "junk_errors": errors, "junk_seconds": time.monotonic() - t0}


def end_to_end(nodes: int, backend: str, seconds: float, budget: float, junk: int = 0, rate: float = 1800.0,
               rekeys: bool = False, rekey_period: float = 0.0) -> dict:
    """One lighthouse in a namespace (SQLite, or etcd with 3 members there), driven by
    a swarm process in the same namespace; the lighthouse's RSS after registration.
    With etcd a second lighthouse (lh2) holds every REMOTE_EVERY-th node: the queries,
    all sent to lh1 by the nodes registered there, ask about those too, which lh1
    answers from its watched cache of etcd and lh2 punches (issue 18)."""
    import json
    import signal
    import subprocess
    import sys
    from tests.harness import etcd as etcd_harness
    from tests.harness.netns import Netns
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="fnbl-e2e-")
    ns = Netns("lhb")
    cluster = lh = lh2 = None
    try:
        for ip in [E2E_IP, E2E_IP2] + E2E_ETCD:
            ns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        ns.run("ip", "addr", "add", E2E_NODES.format(0) + "/24", "dev", "lo")  # a local /24: bind to any of it
        cli = [sys.executable, "-m", "flatnet"]
        subprocess.run(cli + ["ca", "init", "--dir", f"{tmp}/pki"], check=True, capture_output=True, cwd=repo)
        for name in ("lh1", "lh2") if backend == "etcd" else ("lh1",):
            subprocess.run(cli + ["cert", "sign", "--ca-dir", f"{tmp}/pki", "--name", name], check=True,
                           capture_output=True, cwd=repo)
        store = ""
        if backend == "etcd":
            cluster = etcd_harness.EtcdCluster(f"{tmp}/etcd", hosts=E2E_ETCD, ns=ns.name).start()
            store = "[store]\nbackend = \"etcd\"\nendpoints = [" + ", ".join(f'"{e}"' for e in cluster.endpoints) + "]\n"
        for name, ip in (("lh1", E2E_IP), ("lh2", E2E_IP2)):
            with open(f"{tmp}/{name}.toml", "w") as f:
                f.write(f'[pki]\nca = "{tmp}/pki/ca.crt"\ncert = "{tmp}/pki/{name}.crt"\nkey = "{tmp}/pki/{name}.key"\n'
                        f'[network]\ncidr = "10.0.0.0/8"\n[listen]\nhost = "{ip}"\nport = 4787\n'
                        f'[paths]\nstate_dir = "{tmp}/state-{name}"\nrun_dir = "{tmp}/run-{name}"\n'
                        '[log]\nlevel = "warning"\n' + store)
        log = open(f"{tmp}/lh.log", "ab")
        profile = os.environ.get("FLATNET_BENCH_PROFILE")  # a cProfile of the lighthouse, written on exit
        lh = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable]
                              + (["-m", "cProfile", "-o", profile] if profile else [])
                              + ["-m", "flatnet.lighthouse", "--config", f"{tmp}/lh1.toml"], cwd=repo, stdout=log, stderr=log,
                              start_new_session=True)
        if backend == "etcd":
            lh2 = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "flatnet.lighthouse",
                                    "--config", f"{tmp}/lh2.toml"], cwd=repo, stdout=log, stderr=log,
                                   start_new_session=True)
        end = time.monotonic() + 30
        for name, proc in (("lh1", lh), ("lh2", lh2)):
            while proc is not None and not os.path.exists(f"{tmp}/run-{name}/lighthouse.sock"):
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"{name} did not start: " + open(f"{tmp}/lh.log").read()[-2000:])
                time.sleep(0.05)
        rss_idle = _rss_mb(lh.pid)
        # the swarm prints a line at the start and end of each phase: the lighthouse's
        # CPU time between them is what it spent on that phase (the swarm shares the cores)
        swarm = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "benchmarks", "lighthouse",
                                  "--client", f"{tmp}/pki", "--nodes", str(nodes), "--seconds", str(seconds),
                                  "--budget", str(budget), "--handshake-rate", str(rate)]
                                 + (["--rekeys"] if rekeys else [])
                                 + (["--rekey-period", str(rekey_period)] if rekey_period else [])
                                 + (["--remote-every", str(REMOTE_EVERY)] if lh2 else []),
                                 cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        cpu: dict[str, float] = {}
        cpu2: dict[str, float] = {}  # lh2's (etcd)
        cpu_etcd: dict[str, float] = {}  # the 3 members' together
        members = [m.proc.pid for m in cluster.members] if cluster is not None else []
        rss_after: dict[str, float] = {}  # the lighthouse's RSS at the end of each phase
        # FLATNET_BENCH_THREADS=1: lh1's CPU per thread in the query phase (which thread
        # costs what: the event loop, the C receive thread, the etcd store's threads)
        per_thread = bool(os.environ.get("FLATNET_BENCH_THREADS"))
        threads0: dict[int, float] = {}
        threads_q: dict[int, float] = {}
        names: dict[int, str] = {}
        last = flood = None
        spies: list = []
        samples: list = []  # --rekey-period: the lighthouse's (time, CPU-s, RSS MB, phase) each second
        sampler = _Sampler(lh.pid, samples) if rekey_period else None
        try:
            for line in swarm.stdout:
                if line.startswith("PHASE ") and sampler is not None:
                    sampler.phase = line.split()[1]
                if line.startswith("PHASE "):
                    now_cpu = _cpu_s(lh.pid)
                    now_cpu2 = _cpu_s(lh2.pid) if lh2 is not None else 0.0
                    now_etcd = sum(_cpu_s(p) for p in members)
                    if last is not None:
                        cpu[last[0]] = now_cpu - last[1]
                        cpu2[last[0]] = now_cpu2 - last[2]
                        cpu_etcd[last[0]] = now_etcd - last[3]
                        rss_after[last[0]] = _rss_mb(lh.pid)
                    if per_thread:
                        now_threads = _threads_cpu(lh.pid)
                        if last is not None and last[0] == "queries":
                            threads_q = {t: round(c - threads0.get(t, 0.0), 3) for t, c in now_threads.items()}
                        threads0 = now_threads
                        if line.split()[1] == "queries":
                            names = _thread_names(lh.pid)
                    last = (line.split()[1], now_cpu, now_cpu2, now_etcd)
                    spies = _py_spy(spies, last[0], {"lighthouse": lh.pid, "swarm": swarm.pid})
                    if junk and last[0] == "queries":
                        flood = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "benchmarks",
                                                  "lighthouse", "--junk-client", str(junk), "--seconds", str(seconds)],
                                                 cwd=repo, stdout=subprocess.PIPE, text=True)
                elif line.startswith("{"):
                    r = json.loads(line)
            swarm.wait(timeout=budget + 120)
        finally:
            if sampler is not None:
                sampler.stop()
            if swarm.poll() is None:
                swarm.kill()
            if flood is not None and swarm.returncode != 0 and flood.poll() is None:
                flood.kill()  # bounded anyway (its seconds + 5)
        if swarm.returncode != 0:
            raise RuntimeError("swarm failed: " + swarm.stderr.read()[-2000:])
        if flood is not None:
            out = flood.communicate(timeout=seconds + 30)[0].strip().splitlines()
            if flood.returncode != 0 or not out:
                raise RuntimeError(f"junk flood failed (exit {flood.returncode})")
            r.update(json.loads(out[-1]), junk_rate=junk)
        r["lighthouse_cpu_s"] = cpu
        if per_thread:
            r["lighthouse_threads_cpu_s"] = {f"{t} {names.get(t, '?')}": c for t, c in
                                             sorted(threads_q.items(), key=lambda x: -x[1]) if c}
        if lh2 is not None:
            r["lighthouse2_cpu_s"] = cpu2
            r["etcd_cpu_s"] = cpu_etcd
        if cpu.get("handshakes"):
            r["handshakes_per_cpu_s"] = r["handshakes"] / cpu["handshakes"]
        if cpu.get("registers"):
            r["leases_per_cpu_s"] = r["registered"] / cpu["registers"]
        if cpu.get("queries"):
            r["queries_per_cpu_s"] = r["queries_answered"] / cpu["queries"]
        if cpu.get("rekeys"):
            r["rekeys_per_cpu_s"] = r["rekeys"] / cpu["rekeys"]
        r.update(backend=backend, lighthouse_rss_mb=_rss_mb(lh.pid), lighthouse_rss_idle_mb=rss_idle,
                 lighthouse_rss_after_mb=rss_after)
        from flatnet.engine.io import control
        _, body = control.get(f"{tmp}/run-lh1/lighthouse.sock", "/status", timeout=30)  # 10,000 nodes listed
        st = json.loads(body)
        r["lighthouse"] = {"rejected": st["rejected"], "limited": st["limited"], "control_errors": st["control_errors"],
                           "drops": {k: v for k, v in st["drops"].items() if v}, "queries": st["queries"],
                           "io": {k: v for k, v in st["io"].items() if v},
                           "store": {k: v for k, v in st["store"].items() if k != "members"}}
        r["lighthouse"]["sessions"] = st.get("sessions")
        r["registered_at_end"] = len(st["nodes"])
        if lh2 is not None and rekey_period:
            _, body = control.get(f"{tmp}/run-lh2/lighthouse.sock", "/status", timeout=30)
            st2 = json.loads(body)
            r["lighthouse2"] = {"sessions": st2.get("sessions"), "registered_at_end": len(st2["nodes"]),
                                "control_errors": st2["control_errors"], "rejected": st2["rejected"]}
        if rekey_period:
            r["period_lighthouse"] = _period_figures(samples, "rekey-period")
        r["lighthouse_log_tail"] = open(f"{tmp}/lh.log").read()[-1500:]
        return r
    finally:
        for proc in (lh, lh2):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # a clean stop (the profile is written), then no mercy
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        if cluster is not None:
            cluster.stop()
        ns.delete()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


class _Sampler:
    """A thread: the lighthouse's CPU-s and RSS once a second, with the phase then."""

    def __init__(self, pid: int, out: list) -> None:
        import threading
        self.pid, self.out, self.phase = pid, out, ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.out.append((time.monotonic(), _cpu_s(self.pid), _rss_mb(self.pid), self.phase))
            except (OSError, StopIteration):
                return

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


def _period_figures(samples: list, name: str) -> dict:
    """The lighthouse's CPU-s over the phase `name`, its busiest second, its RSS."""
    s = [x for x in samples if x[3] == name]
    if len(s) < 2:
        return {"cpu_s": 0.0, "cpu_max_per_s": 0.0, "rss_mb_min": 0.0, "rss_mb_max": 0.0, "cpu_per_s": []}
    per_s = [round((b[1] - a[1]) / (b[0] - a[0]), 3) for a, b in zip(s, s[1:])]
    return {"cpu_s": s[-1][1] - s[0][1], "cpu_max_per_s": max(per_s), "cpu_per_s": per_s,
            "rss_mb_min": min(x[2] for x in s), "rss_mb_max": max(x[2] for x in s), "rss_mb_end": s[-1][2]}


def phase(name: str) -> None:
    print(f"PHASE {name}", flush=True)


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def handshake_phase(swarm, nodes: list, home: dict, rate: float, counter: str,  # noqa: ANN001 - a simnode.Swarm
                    deadline: float, window: int = 1000, burst: int = 16) -> tuple[int, float, int]:
    """Each node in `nodes` handshakes with its lighthouse: at most `rate` initiations
    a second (the lighthouse wants cookies above its global limit, 2,000 a second by
    default, which these nodes do not answer; each source address stays under its 20
    a second), sent `burst` at a time, at most `window` unanswered. One unanswered
    after 2 s is sent again, a new one (as an engine retries). (answered, seconds,
    retries)."""
    t0 = time.monotonic()
    base = swarm.counts.get(counter, 0)
    todo = list(reversed(nodes))
    sent = retries = 0
    out: dict[int, tuple] = {}  # id(node) -> (node, when sent)
    checked = kept = t0
    while time.monotonic() < deadline:
        now = time.monotonic()
        answered = swarm.counts.get(counter, 0) - base
        if answered >= len(nodes):
            break
        if now - checked >= 0.25:  # not each pass: the generator must not spin on its list
            checked = now
            for k, (n, when) in list(out.items()):
                if n.sessions[home[id(n)]].hs is None:
                    del out[k]
                elif now - when >= 2.0:
                    todo.append(n)  # again, a new initiation, next in turn
                    del out[k]
                    retries += 1
        due = min(int(rate * (now - t0)) - sent, window - (sent - answered - retries))
        if due < min(burst, len(todo)):
            due = 0  # in bursts: the lighthouse reads them in one batch, not one wakeup each
        while due > 0 and todo:
            n = todo.pop()
            swarm.handshake(n, home[id(n)])
            out[id(n)] = (n, now)
            sent += 1
            due -= 1
        swarm.pump(0.005)
        if swarm.dp is not None and now - kept >= 0.02:  # as in the query phase: registers go on
            kept = now
            for name in swarm.lighthouses:
                swarm.keep_registered(name)
    return swarm.counts.get(counter, 0) - base, time.monotonic() - t0, retries


def client(pki: str, nodes: int, seconds: float, budget: float, remote_every: int = 0, rate: float = 1800.0,
           rekeys: bool = False, rekey_period: float = 0.0) -> dict:
    """The swarm (inside the namespace): handshakes paced under the lighthouse's
    global handshake limit (2,000/s, above it wants cookies), registers, then queries
    with a window of answers outstanding, each from another node. After the
    handshakes the nodes' sessions go to the C data path (Swarm.attach): it seals and
    opens their messages in batches, so the swarm costs less than the lighthouse.
    remote_every K: every K-th node registers through lh2 instead (etcd); queries
    still go to lh1, from its nodes, about any node."""
    import json
    import random
    from tests.harness import simnode
    deadline = time.monotonic() + budget
    ca_key, ca, lhs = simnode.load(pki, [f"lh1@{E2E_IP}:4787"] + ([f"lh2@{E2E_IP2}:4787"] if remote_every else []))
    names = [f"n{i}" for i in range(nodes)]
    binds = [E2E_NODES.format(i) for i in range(1, 251)]
    if rekey_period:  # engine sessions (tests/harness/simkeep.py); 1% leave the rekey to the lighthouse
        from benchmarks import lighthouse_period
        from tests.harness import simkeep
        swarm = simkeep.EngineSwarm(ca_key, ca, lhs, names, binds, passive=lighthouse_period.passive_names(names))
    else:
        swarm = simnode.Swarm(ca_key, ca, lhs, names, binds)
    r: dict = {"nodes": nodes}
    home = {id(n): "lh2" if remote_every and i % remote_every == remote_every - 1 else "lh1"
            for i, n in enumerate(swarm.nodes)}
    try:
        # handshakes: paced (see handshake_phase), the initiations built before the phase
        for name in swarm.lighthouses:
            swarm.prepare([n for n in swarm.nodes if home[id(n)] == name], name)
        phase("handshakes")
        n_done, took, r["handshake_retries"] = handshake_phase(swarm, swarm.nodes, home, rate, "handshakes",
                                                               min(deadline, time.monotonic() + budget / 3))
        r["handshakes"] = n_done
        r["handshakes_per_s"] = n_done / took
        # registers: every node with keys; new leases are what the store writes
        phase("registers")
        t0 = time.monotonic()
        r["attached"] = swarm.attach()
        ready = [n for n in swarm.nodes if n.sessions[home[id(n)]].send]
        for i in range(0, len(ready), 200):
            for n in ready[i:i + 200]:
                swarm.register(n, home[id(n)])
            swarm.pump(0.001)
        while not all(n.lease or n.error for n in ready) and time.monotonic() < deadline:
            swarm.pump(0.01)
            for name in swarm.lighthouses:
                swarm.keep_registered(name)
        # askers grouped by socket, so consecutive queries share a sendmmsg
        leased = sorted((n for n in ready if n.lease), key=lambda n: n.sock.fileno())
        r["registered"] = len(leased)
        if not leased:
            errors = sorted({str(n.error)[:200] for n in ready if n.error})[:5]
            raise RuntimeError(f"no node got a lease: {len(ready)} ready, {r['attached']} attached, "
                               f"counts {swarm.counts}, errors {errors}")
        r["leases_per_s"] = len(leased) / (time.monotonic() - t0)
        # queries: by address, a random other node's /24; `window` outstanding
        rng = random.Random(1)
        subnets = [n.lease for n in leased]
        r["remote_targets"] = sum(home[id(n)] != "lh1" for n in leased)  # registered through lh2
        leased = [n for n in leased if home[id(n)] == "lh1"]  # the askers
        asks = {t: wire.encode("query", addr=t.split("/")[0][:-1] + "5") for t in subnets}  # x.y.z.0/24 -> x.y.z.5
        sent = 0
        window = 2000
        swarm.keep_answers = False
        answered = lambda: swarm.counts["peer"] + swarm.counts["error"]  # noqa: E731 - punches are not answers
        base = answered()
        phase("queries")
        t0 = time.monotonic()
        before = swarm.counts["messages"]
        cpu0 = _own_cpu_s()
        lost = idle = 0
        kept = 0.0
        while time.monotonic() - t0 < seconds and time.monotonic() < deadline:
            while sent - (answered() - base) - lost < window:
                n = leased[sent % len(leased)]
                target = subnets[rng.randrange(len(subnets))]
                swarm.send(n, "lh1", asks[target])
                sent += 1
            idle = 0 if swarm.pump(0.005) else idle + 1
            if time.monotonic() - kept >= 0.02:  # 500 nodes looked at each 20 ms: each again within 0.4 s
                kept = time.monotonic()
                for name in swarm.lighthouses:
                    swarm.keep_registered(name)
            if idle >= 40:  # 200 ms without a datagram: what is outstanding was lost
                lost, idle = sent - (answered() - base), 0
        answered = answered() - base
        r["swarm_cpu_s"] = _own_cpu_s() - cpu0
        r["queries_sent"], r["queries_answered"], r["queries_lost"] = sent, answered, lost
        r["queries_per_s"] = answered / (time.monotonic() - t0)
        r["messages"] = swarm.counts["messages"] - before
        r["bad"] = swarm.counts["bad"]
        r["checked"] = swarm.counts.get("checked", 0)          # answers decoded in full
        r["send_failed"] = swarm.counts.get("send_failed", 0)
        if rekeys:
            # rekeys: every node with a session starts a new handshake with its lighthouse
            # (as at 120 s of a session): a fresh ephemeral key, its TAI64N newer than
            # the last; the lighthouse knows the node, its certificate and key already
            phase("prepare-rekeys")
            keyed = [n for n in swarm.nodes if n.sessions.get(home[id(n)]) and n.sessions[home[id(n)]].send]
            for name in swarm.lighthouses:
                swarm.prepare([n for n in keyed if home[id(n)] == name], name)
            swarm.handshakes_in_python = True  # the answers go to their node (C knows one identity)
            phase("rekeys")
            n_done, took, r["rekey_retries"] = handshake_phase(swarm, keyed, home, rate, "rekeys",
                                                               min(deadline, time.monotonic() + budget / 3))
            r["rekeys"], r["rekeys_per_s"] = n_done, n_done / took
        if rekey_period:
            phase("rekey-period")
            r["rekey_period"] = lighthouse_period.run(swarm, rekey_period, deadline)
        phase("end")
    finally:
        swarm.close()
    print(json.dumps(r), flush=True)
    return r


def first_packet_bench() -> dict:
    from flatnet.demo import Lab, sh
    out = {}
    for label, nat in (("direct", {}), ("relayed", {1: "cone", 2: "random"})):
        lab = Lab(f"fnbl{os.getpid() % 1000}", tempfile.mkdtemp(prefix="fnbl-"), hosts=2, lighthouse=True, nat=nat)
        try:
            lab.up(containers_per_host=1)
            a, b = lab.hosts
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20:
                if sh("ping", "-c", "1", "-W", "1", "-i", "0.2", b.containers[0]["ip"], ns=a.containers[0]["ns"],
                      check=False).returncode == 0:
                    break
            out[label] = time.monotonic() - t0
        finally:
            lab.down()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks lighthouse", description=__doc__)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--no-lab", action="store_true", help="skip the first-packet timing (needs root)")
    p.add_argument("--json")
    p.add_argument("--backend", choices=["sqlite", "etcd"], default="sqlite",
                   help="the store of the end-to-end run (etcd: a 3-member cluster in the namespace)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds the end-to-end run may take at most")
    p.add_argument("--no-e2e", action="store_true", help="the registry alone (no namespace, no root)")
    p.add_argument("--junk", type=int, default=0, help="type-5 junk a second from spoofed sources during the queries")
    p.add_argument("--handshake-rate", type=float, default=1800.0,
                   help="initiations a second at most (the lighthouse's global limit is 2,000 a second)")
    p.add_argument("--rekeys", action="store_true",
                   help="after the queries, every node rekeys its session (a new handshake with the lighthouse)")
    p.add_argument("--rekey-period", type=float, nargs="?", const=PERIOD_MAX, default=0.0, metavar="MAX_SECONDS",
                   help="after the queries, the nodes keep their sessions in real time for a full key lifetime "
                        f"(about 3 minutes; at most MAX_SECONDS, {PERIOD_MAX:.0f} by default), rekeying as engines do")
    p.add_argument("--client", help=argparse.SUPPRESS)  # the swarm, run inside the namespace
    p.add_argument("--remote-every", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--junk-client", type=int, help=argparse.SUPPRESS)  # the junk flood, inside the namespace
    a = p.parse_args(argv)
    if a.junk_client:
        import json
        print(json.dumps(junk_flood(a.junk_client, a.seconds)), flush=True)
        return 0
    if a.client:
        client(a.client, a.nodes, a.seconds, a.budget, a.remote_every, a.handshake_rate, a.rekeys, a.rekey_period)
        return 0
    r = registry_bench(a.nodes, a.seconds)
    print(table(["nodes", "registers/s", "queries/s (one core)", "registry memory MB", "process RSS MB"],
                [[r["nodes"], f"{r['register_per_s']:.0f}", f"{r['queries_per_s']:.0f}", f"{r['memory_mb']:.1f}",
                  f"{r['process_rss_mb']:.0f}"]]))
    print("goal: >= 20,000 queries/s on one core, < 100 MB")
    if not a.no_e2e and os.geteuid() == 0:
        if a.rekeys and a.rekey_period:
            p.error("--rekeys and --rekey-period are separate runs")
        e = end_to_end(a.nodes, a.backend, a.seconds, a.budget + a.rekey_period, a.junk, a.handshake_rate, a.rekeys,
                       a.rekey_period)
        r["end_to_end"] = e
        print("\n" + table(["store", "nodes registered", "handshakes/s", "leases/s", "queries/s answered",
                             "lighthouse RSS MB"],
                            [[e["backend"], f"{e['registered']}/{e['nodes']}", f"{e['handshakes_per_s']:.0f}",
                              f"{e['leases_per_s']:.0f}", f"{e['queries_per_s']:.0f}",
                              f"{e['lighthouse_rss_mb']:.0f}"],
                             ["per lighthouse CPU-second", "", f"{e.get('handshakes_per_cpu_s', 0):.0f}",
                              f"{e.get('leases_per_cpu_s', 0):.0f}", f"{e.get('queries_per_cpu_s', 0):.0f}", ""]]))
        if e.get("rekeys") is not None:
            print(f"rekeys: {e['rekeys']}/{e['registered']} in their phase, {e['rekeys_per_s']:.0f}/s, "
                  f"{e.get('rekeys_per_cpu_s', 0):.0f} per lighthouse CPU-s (retries {e['rekey_retries']})")
        if e.get("rekey_period") is not None:
            from benchmarks import lighthouse_period
            lighthouse_period.print_report(e)
        if e.get("swarm_cpu_s") and e["queries_answered"]:
            print(f"CPU per query answered: lighthouse {1e6 * e['lighthouse_cpu_s'].get('queries', 0) / e['queries_answered']:.1f} us, "
                  f"the simulated nodes {1e6 * e['swarm_cpu_s'] / e['queries_answered']:.1f} us")
        print("goals: 10,000 registered with < 200 MB RSS; >= 20,000 queries/s; >= 1,000 handshakes/s; "
              ">= 200 leases/s (the swarm shares the machine's cores with the lighthouse)")
        if a.junk:
            d = e["lighthouse"]["drops"]
            print(f"junk flood during the queries: {e['junk_sent']} type-5 datagrams in {e['junk_seconds']:.1f} s; "
                  f"dropped in C: {d.get('relay_unknown_sender', 0)}; "
                  f"refused in Python: {e['lighthouse']['rejected'].get('relay_refused', 0)}")
    if not a.no_lab and os.geteuid() == 0:
        fp = first_packet_bench()
        r["first_packet_s"] = fp
        print("\n" + table(["path", "first packet to delivery (s)"], [[k, f"{v:.2f}"] for k, v in fp.items()]))
        print("(includes the lighthouse query, the punch, the handshake, and for relayed the 3 s direct attempt)")
    write_json(a.json, "lighthouse", r)
    return 0
