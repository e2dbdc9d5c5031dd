"""The "etcd" store: subnet leases, node registrations and punch requests in an etcd
cluster shared by every lighthouse of the network (the I/O driver; the registry stays
sans-IO behind lighthouse.store.Store).

Keys, under `prefix` (default "/flatnet/"):

    meta/network                  the network's CIDR (a store belongs to one network)
    lease/name/<name>             "<block>"   } written together in one transaction that
    lease/block/<block:08d>       "<name>"    } requires both absent: never two names on one /24
    node/<name>/<lighthouse>      a node's registration as that lighthouse saw it (JSON),
                                  attached to an etcd lease: a dead node's endpoints expire
    punches/<to>/<from>           the punch requests lighthouse <from> has for lighthouse <to>
                                  (JSON, below): written again each pass that has some, on
                                  <from>'s own etcd lease (gone when <from> is)
    lighthouse/<name>             a lighthouse that is up (its own etcd lease)

Punch requests (a query at one lighthouse about a node registered at another) are
batched: the write thread writes, once per pass (at most one per PASS_EVERY), one value
per target lighthouse holding every (target node, asker) pair queued since the last
pass, by name:

    {"v": 1, "at": <unix time>, "punches": [[<target>, <asker>], ...]}

at most PUNCH_BATCH pairs and PUNCH_BATCH_BYTES of JSON (etcd takes 1.5 MiB a request);
what does not fit waits for the next pass. The asker's endpoints are not in it: the
target lighthouse has them in its cache, from `node/<asker>/<from>` (the pass writes
registrations before punches, so the watch brings the record first). It acts on each
PUT its watch delivers (never on what a full read finds: those are old), and checks
the value like anything else an etcd member says: a malformed batch or entry is
counted (punches_malformed) and skipped, an asker it has no record of from <from> is
counted (punches_unknown). Before (one release): one key per request,
`punch/<lighthouse>/<target>`, one write and one delete each; still read and deleted
here, so a lighthouse of the old layout can still ask this one to punch (decisions.md).

Reads come from a cache: one thread reads the prefix once, then follows a watch (a
change made through one lighthouse reaches the others' caches in milliseconds), and
reconnects to another member when its stream breaks or its member loses the leader.
A second thread writes registrations in batches (one transaction of up to 128 puts)
and keeps the etcd leases alive.

Registrations ride on "epoch" leases: the lighthouse grants one etcd lease of
4 x ttl every ttl seconds and writes a node's record again only when it changed or
its epoch is no longer the newest. So a node that registers every 10 s costs one
write per ttl (60 s), and a node that stops registering (or whose lighthouse dies)
disappears from every cache between 3 x ttl and 4 x ttl after its last write.
"""
from __future__ import annotations

import ipaddress
import json
import threading
import time

from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire
from flatnet.lighthouse import etcd
from flatnet.lighthouse.store import LeaseExhausted, NodeRecord, Store, StoreUnavailable

PUNCH_BATCH = 1024       # (target, asker) pairs in one batch, written and read
PUNCH_BATCH_BYTES = 256 * 1024   # a batch's JSON at most (etcd's request limit: 1.5 MiB)
PUNCH_PENDING = 8192     # pairs queued for the write thread at most; more are dropped and counted
PUNCH_READ_BYTES = 1 << 20       # a batch read back that is larger is refused whole
MAX_NAME = 255           # a node name in a batch read back
WATCH_CHECK = 1.0        # how often the watched member is asked whether it still has a leader
PASS_EVERY = 0.05        # the write thread's passes at most this often: under load each put carries more


def _record_json(r: NodeRecord, now: float) -> bytes:
    return json.dumps({"name": r.name, "cert": etcd.b64(r.cert), "subnet": r.subnet,
                       "endpoints": [list(e) for e in r.endpoints], "local": [list(e) for e in r.local],
                       "lighthouse": r.lighthouse, "services": r.services,
                       "gateway": list(r.gateway) if r.gateway else None, "relay": r.relay, "at": round(now, 3)},
                      separators=(",", ":")).encode()


def _record(value: bytes) -> NodeRecord | None:
    """A record from etcd (written by a lighthouse of this network: still checked, as
    a broken one must not take the others down)."""
    try:
        d = json.loads(value)  # RecursionError below: "[[[[..." nested deeper than the parser goes
        return NodeRecord(name=str(d["name"]), cert=etcd.unb64(d["cert"]), subnet=str(d["subnet"]),
                          endpoints=[(str(h), int(p)) for h, p in d["endpoints"]][:8],
                          local=[(str(h), int(p)) for h, p in d["local"]][:8], lighthouse=str(d["lighthouse"]),
                          services=wire._services(d.get("services", [])),  # the register's own rules
                          gateway=(str(d["gateway"][0]), int(d["gateway"][1])) if d.get("gateway") else None,
                          relay=d.get("relay") is True)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RemoteProtocolError, RecursionError):
        return None


def _punch_batch(pairs: list[tuple[str, str]], now: float) -> tuple[bytes, int]:
    """(the batch's JSON, how many of the (target, asker) `pairs` it holds: the first
    ones, up to PUNCH_BATCH and PUNCH_BATCH_BYTES)."""
    head = f'{{"v":1,"at":{round(now, 3)},"punches":'
    whole = json.dumps(pairs[:PUNCH_BATCH], separators=(",", ":"))  # one call, the same text as below
    if len(head) + len(whole) + 1 <= PUNCH_BATCH_BYTES:
        return f"{head}{whole}}}".encode(), min(len(pairs), PUNCH_BATCH)
    punches: list[str] = []
    size, used = 64, 0
    for pair in pairs[:PUNCH_BATCH]:
        punch = json.dumps(pair, separators=(",", ":"))  # ASCII: its characters are its bytes
        if size + len(punch) + 1 > PUNCH_BATCH_BYTES and used:
            break
        punches.append(punch)
        size, used = size + len(punch) + 1, used + 1
    return f'{{"v":1,"at":{round(now, 3)},"punches":[{",".join(punches)}]}}'.encode(), used


def _punch_pairs(value: bytes) -> tuple[list[tuple[str, str]], int]:
    """A batch read back: ([(target, asker)], how many entries were malformed and
    skipped). Bounded: PUNCH_READ_BYTES of JSON, PUNCH_BATCH pairs, names of 1 to
    MAX_NAME characters."""
    if len(value) > PUNCH_READ_BYTES:
        return [], 1
    try:
        d = json.loads(value)
    except (ValueError, RecursionError):
        return [], 1
    if not isinstance(d, dict) or not isinstance(d.get("punches"), list):
        return [], 1
    bad = max(0, len(d["punches"]) - PUNCH_BATCH)
    out = []
    for p in d["punches"][:PUNCH_BATCH]:
        if (isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in p)):
            out.append((p[0], p[1]))
        else:
            bad += 1
    return out, bad


def _last_per_key(ops: list[dict]) -> list[dict]:
    """One write per key, the last one queued: etcd refuses a whole transaction that
    names a key twice ("duplicate key given in txn request"), and a record published
    twice (or an old-layout punch key deleted twice) may be queued within one pass."""
    last: dict[str, dict] = {}
    for op in ops:
        body = op.get("request_put") or op.get("request_delete_range") or {}
        last.pop(body.get("key", ""), None)  # re-inserted: the order of the last writes is kept
        last[body.get("key", "")] = op
    return list(last.values())


class EtcdStore(Store):
    backend = "etcd"

    def __init__(self, endpoints: list[str], network: ipaddress.IPv4Network, me: str, prefix: str = "/flatnet/",
                 ttl: float = 60.0, timeout: float = etcd.TIMEOUT) -> None:
        if network.prefixlen > 24:
            raise ValueError(f"network {network} is smaller than a /24")
        self.network = network
        self.me = me
        self.p = prefix if prefix.endswith("/") else prefix + "/"
        self.ttl = ttl
        self.blocks = 1 << (24 - network.prefixlen)
        self.client = etcd.Client(endpoints, timeout)
        self._hint = 1
        self._unavailable_until = 0.0
        self._reserved: set[int] = set()  # blocks a transaction of ours is trying now
        # the cache (written by the watch thread; single dict operations, read by the loop)
        self.names: dict[str, int] = {}
        self.owners: dict[int, str] = {}
        self.nodes: dict[str, dict[str, NodeRecord]] = {}   # name -> lighthouse -> record
        self.lighthouses: dict[str, dict] = {}
        self.revision = 0
        self.synced = threading.Event()
        self.watch_restarts = 0
        self.allocations = 0
        self.cas_conflicts = 0
        self.write_errors = 0
        self.last_error = ""
        # writes
        self._published: dict[str, tuple[NodeRecord, int]] = {}  # name -> (record written, epoch lease)
        self._queue: list[dict] = []
        # punch requests for the next pass: lighthouse -> {(target, asker): None} (an ordered set)
        self._punches: dict[str, dict[tuple[str, str], None]] = {}
        self._punches_queued = 0
        self.punches_sent = self.punch_batches = self.punches_received = 0
        self.punches_dropped = self.punches_malformed = self.punches_unknown = 0
        self.writes = self.watch_events = 0  # puts and deletes sent in transactions; events the watch brought
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._check_network()
        self.epoch = self.client.grant(int(4 * ttl))
        self.epoch_at = time.monotonic()
        self.alive = self.client.grant(max(5, int(ttl)))
        self.client.put(f"{self.p}lighthouse/{me}", json.dumps({"started": time.time()}).encode(), self.alive)
        self._load()
        self._check_members()
        self._threads = [threading.Thread(target=self._watch_loop, name="etcd-watch", daemon=True),
                         threading.Thread(target=self._write_loop, name="etcd-write", daemon=True)]
        for t in self._threads:
            t.start()

    def _check_network(self) -> None:
        key = f"{self.p}meta/network"
        ok, responses = self.client.txn([etcd.absent(key)], [etcd.put_op(key, str(self.network).encode())],
                                        [etcd.range_op(key)])
        if not ok:
            kvs = responses[0]["response_range"].get("kvs", [])
            held = etcd.unb64(kvs[0]["value"]).decode() if kvs else "?"
            if held != str(self.network):
                raise ValueError(f"etcd prefix {self.p} belongs to network {held}, not {self.network}")

    # ---- the cache
    def _load(self) -> None:
        kvs, rev = self.client.range(self.p, prefix=True)
        names, owners, nodes, lhs = {}, {}, {}, {}
        for kv in kvs:
            self._apply(kv, "PUT", names, owners, nodes, lhs, live=False)
        self.names, self.owners, self.nodes, self.lighthouses = names, owners, nodes, lhs
        self.revision = rev
        self.synced.set()

    def _apply(self, kv: dict, kind: str, names: dict, owners: dict, nodes: dict, lhs: dict,
               live: bool = True) -> None:
        """One key into the cache. live: a watch event (punch requests are acted on only
        then; a full read finds old ones)."""
        parts = kv["key"][len(self.p):].split("/")
        if parts[0] == "lease" and len(parts) == 3 and kind == "PUT":  # leases are never deleted
            try:
                if parts[1] == "name":
                    names[parts[2]] = int(kv["value"])
                elif parts[1] == "block":
                    owners[int(parts[2])] = kv["value"].decode()
            except ValueError:
                pass
        elif parts[0] == "node" and len(parts) == 3:
            held = nodes.get(parts[1])
            if kind == "PUT":
                record = _record(kv["value"])
                if record is not None:
                    nodes[parts[1]] = dict(held or {}, **{parts[2]: record})  # replaced whole: readers see old or new
            elif held is not None and parts[2] in held:
                rest = {k: v for k, v in held.items() if k != parts[2]}
                if rest:
                    nodes[parts[1]] = rest
                else:
                    nodes.pop(parts[1], None)
        elif parts[0] == "punches" and len(parts) == 3 and parts[1] == self.me and kind == "PUT" and live:
            pairs, bad = _punch_pairs(kv["value"])
            self.punches_malformed += bad
            found = []
            for target, asker in pairs:  # the asker as the lighthouse that asks published it
                record = nodes.get(asker, {}).get(parts[2])
                if record is None:
                    self.punches_unknown += 1
                else:
                    found.append((target, record))
            self.punches_received += len(found)
            if found and self.on_punches is not None:
                self.on_punches(found)
        elif parts[0] == "punch" and len(parts) == 3 and parts[1] == self.me and kind == "PUT":
            # the layout before batches (decisions.md): one key per request, deleted once read
            asker = _record(kv["value"]) if live else None
            if live and asker is None:
                self.punches_malformed += 1
            elif asker is not None and self.on_punches is not None:
                self.punches_received += 1
                self.on_punches([(parts[2], asker)])
            self._enqueue(etcd.delete_op(kv["key"]))
        elif parts[0] == "lighthouse" and len(parts) == 2:
            if kind == "PUT":
                lhs[parts[1]] = {"lease": kv["lease"]}
            else:
                lhs.pop(parts[1], None)

    def _watch_loop(self) -> None:
        index = self.client.current
        while not self._stop.is_set():
            self._abort = abort = threading.Event()   # set by close() or by the member check
            checker = threading.Thread(target=self._check_member, args=(index, abort), daemon=True)
            checker.start()
            try:
                for rev, events in self.client.watch(self.p, self.revision + 1, abort, index):
                    self.watch_events += len(events)
                    for e in events:
                        self._apply(e, e["type"], self.names, self.owners, self.nodes, self.lighthouses)
                    self.revision = max(self.revision, rev)
            except etcd.EtcdError:  # compacted past our revision: read everything again
                try:
                    self._load()
                except etcd.EtcdError as exc:
                    self.last_error = str(exc)
            abort.set()  # ends the checker
            if self._stop.is_set():
                return
            # the stream broke or its member lost the leader: the next member, from the
            # revision after the last one seen (etcd replays what happened in between)
            self.watch_restarts += 1
            index = (index + 1) % len(self.client.endpoints)
            self._stop.wait(0.1)

    def _check_member(self, index: int, abort: threading.Event) -> None:
        """Sets `abort` when the watched member stops answering or has no leader: a
        partitioned member keeps its watch stream open, but silent."""
        failed = 0
        while not abort.wait(WATCH_CHECK):
            try:
                ok = int(self.client.status_of(index, timeout=1.0).get("leader", "0")) != 0
            except etcd.EtcdError:
                ok = False
            failed = 0 if ok else failed + 1
            if failed >= 2:  # twice in a row: one slow answer on a busy machine is not a partition
                abort.set()

    # ---- writes
    def _enqueue(self, op: dict) -> None:
        with self._lock:
            self._queue.append(op)
        self._wake.set()

    def _write_loop(self) -> None:
        last_keepalive = last_check = time.monotonic()
        last_pass = float("-inf")
        while not self._stop.is_set():
            self._wake.wait(1.0)
            # at most one pass per PASS_EVERY: what is queued meanwhile goes in this one
            # (at ~3,000 punch requests a second a pass per put was ~130 puts, as many
            # watch events on every lighthouse and raft rounds a second; the write
            # thread alone cost lh1 8-9 CPU-us per query). A lone write still goes at once.
            if self._stop.wait(last_pass + PASS_EVERY - time.monotonic()):
                return
            last_pass = time.monotonic()
            self._wake.clear()
            with self._lock:  # both at once: a record queued before a punch naming its node is written first
                ops, self._queue = self._queue, []
                punches = {lh: list(held) for lh, held in self._punches.items()}
            ops = _last_per_key(ops)
            for i in range(0, len(ops), etcd.MAX_TXN_OPS):
                try:
                    self.client.txn([], ops[i:i + etcd.MAX_TXN_OPS])
                    self.writes += len(ops[i:i + etcd.MAX_TXN_OPS])
                except etcd.EtcdError as exc:
                    self.write_errors += 1
                    self.last_error = str(exc)
                    # the next publish of these nodes writes them again
                    for op in ops[i:i + etcd.MAX_TXN_OPS]:
                        key = etcd.unb64(op.get("request_put", {}).get("key", "")).decode()
                        if key.startswith(f"{self.p}node/"):
                            self._published.pop(key.split("/")[-2], None)
            self._write_punches(punches)  # after the registrations: their records reach the watch first
            now = time.monotonic()
            if now - last_keepalive >= min(self.ttl / 3, 5.0):
                last_keepalive = now
                self._keepalive(now)
            if now - last_check >= 2.0:
                last_check = now
                self._check_members()

    def _write_punches(self, todo: dict[str, list[tuple[str, str]]]) -> None:
        """One put per target lighthouse holding the pairs `todo` took from the queue
        (each put its own request: a batch may be up to PUNCH_BATCH_BYTES). What did
        not fit stays queued and wakes the next pass; a failed write is dropped and
        counted (the asker's engine asks again)."""
        now = time.time()
        for lh, items in todo.items():
            value, used = _punch_batch(items, now)
            with self._lock:
                held = self._punches[lh]
                for key in items[:used]:
                    del held[key]
                if not held:
                    del self._punches[lh]
                self._punches_queued -= used
                if held:
                    self._wake.set()
            try:
                self.client.put(f"{self.p}punches/{lh}/{self.me}", value, self.alive)
                self.punches_sent += used
                self.punch_batches += 1
            except etcd.EtcdError as exc:
                self.write_errors += 1
                self.punches_dropped += used
                self.last_error = str(exc)

    def _keepalive(self, now: float) -> None:
        try:
            if self.client.keepalive(self.alive) <= 0:
                self.alive = self.client.grant(max(5, int(self.ttl)))
                self.client.put(f"{self.p}lighthouse/{self.me}", b"{}", self.alive)
            if now - self.epoch_at >= self.ttl:  # a new epoch: records move to it when next published
                self.epoch, self.epoch_at = self.client.grant(int(4 * self.ttl)), now
        except etcd.EtcdError as exc:
            self.last_error = str(exc)

    # ---- Store
    def name_of_block(self, block: int) -> str | None:
        return self.owners.get(block)

    def all(self) -> dict[str, ipaddress.IPv4Network]:
        return {name: self.subnet(block) for name, block in list(self.names.items())}

    def _free_block(self) -> int | None:
        """A block no one holds and no other thread of ours is trying (the lease
        workers allocate at once: without this they all raced for the same block)."""
        with self._lock:
            owners, reserved = self.owners, self._reserved
            block = next((b for b in range(self._hint, self.blocks) if b not in owners and b not in reserved),
                         None)
            if block is None:
                block = next((b for b in range(1, self._hint) if b not in owners and b not in reserved), None)
            if block is not None:
                reserved.add(block)
                self._hint = block + 1
            return block

    def lease_for(self, name: str, now: float) -> ipaddress.IPv4Network:
        """The node's /24: from the cache when it has one, else a compare-and-swap
        transaction that writes name -> block and block -> name only if both are absent."""
        block = self.names.get(name)
        if block is not None:
            return self.subnet(block)
        if time.monotonic() < self._unavailable_until:  # etcd just failed: do not wait for it again
            raise StoreUnavailable(f"no new lease now: {self.last_error}")
        try:
            return self._allocate(name)
        except etcd.EtcdError as exc:
            self.last_error = str(exc)
            self._unavailable_until = time.monotonic() + 1.0
            raise StoreUnavailable(f"no new lease now: {exc}") from None

    def lease_needs_io(self, name: str) -> bool:
        return name not in self.names

    def _allocate(self, name: str) -> ipaddress.IPv4Network:
        name_key = f"{self.p}lease/name/{name}"
        for _ in range(32):
            block = self._free_block()
            if block is None:
                self._load()  # the cache may be behind; then it is really full
                block = self._free_block()
                if block is None:
                    raise LeaseExhausted(f"network {self.network} has no free /24 left ({self.blocks - 1} leased)")
            block_key = f"{self.p}lease/block/{block:08d}"
            try:
                ok, responses = self.client.txn(
                    [etcd.absent(name_key), etcd.absent(block_key)],
                    [etcd.put_op(name_key, str(block).encode()), etcd.put_op(block_key, name.encode())],
                    [etcd.range_op(name_key), etcd.range_op(block_key)])
            finally:
                with self._lock:
                    self._reserved.discard(block)
            if ok:
                self.allocations += 1
                self.names[name], self.owners[block] = block, name
                return self.subnet(block)
            self.cas_conflicts += 1
            held = responses[0]["response_range"].get("kvs", [])
            if held:  # this name got a lease through another lighthouse first
                block = int(etcd.unb64(held[0]["value"]))
                self.names[name], self.owners[block] = block, name
                return self.subnet(block)
            other = responses[1]["response_range"].get("kvs", [])
            self.owners[block] = etcd.unb64(other[0]["value"]).decode() if other else "?"
        raise StoreUnavailable("lease blocks kept being taken under us; try again")

    def publish(self, record: NodeRecord) -> None:
        held = self._published.get(record.name)
        if held is not None and held[1] == self.epoch and (held[0] is record or held[0] == record):
            return  # unchanged and on the newest epoch lease: nothing to write (no JSON made to know it)
        self._published[record.name] = (record, self.epoch)
        self._enqueue(etcd.put_op(f"{self.p}node/{record.name}/{self.me}", _record_json(record, time.time()),
                                  self.epoch))

    def withdraw(self, name: str) -> None:
        if self._published.pop(name, None) is not None:
            self._enqueue(etcd.delete_op(f"{self.p}node/{name}/{self.me}"))

    def remote(self, name: str) -> NodeRecord | None:
        """The node's registration through another lighthouse (None when it has none)."""
        held = self.nodes.get(name)
        if not held:
            return None
        others = [r for lh, r in held.items() if lh != self.me]
        return others[0] if others else None

    def remote_nodes(self) -> list[NodeRecord]:
        out = []
        for held in list(self.nodes.values()):
            rec = next((r for lh, r in held.items() if lh != self.me), None)
            if rec is not None and self.me not in held:
                out.append(rec)
        return out

    def request_punch(self, lighthouse: str, target: str, asker: NodeRecord) -> None:
        """Queued for the write thread's next pass (one batch per target lighthouse):
        every asker is kept, the same (target, asker) twice in a pass is one request.
        `asker` is registered here: the other lighthouse reads its record from etcd."""
        with self._lock:
            held = self._punches.get(lighthouse)
            if held is None:
                held = self._punches[lighthouse] = {}
            key = (target, asker.name)
            if key in held:
                return
            if self._punches_queued >= PUNCH_PENDING:
                self.punches_dropped += 1
                return
            self._punches_queued += 1
            held[key] = None
        if not self._wake.is_set():  # set() takes the event's lock: once per pass is enough
            self._wake.set()

    def health(self) -> dict:
        """From the last member check (the write thread, every 2 s): never waits."""
        members = self._members
        quorum = sum(1 for m in members if m.get("has_leader")) > len(members) // 2
        return {"backend": "etcd", "healthy": quorum, "members": members, "prefix": self.p,
                "leases": len(self.names), "nodes": len(self.nodes), "lighthouses": sorted(self.lighthouses),
                "revision": self.revision, "watch_restarts": self.watch_restarts, "allocations": self.allocations,
                "cas_conflicts": self.cas_conflicts, "write_errors": self.write_errors, "last_error": self.last_error,
                "writes": self.writes, "watch_events": self.watch_events,
                "punches": {"sent": self.punches_sent, "batches": self.punch_batches,
                            "received": self.punches_received, "dropped": self.punches_dropped,
                            "malformed": self.punches_malformed, "unknown": self.punches_unknown}}

    def _check_members(self) -> None:
        members = []
        for i, (host, port) in enumerate(self.client.endpoints):
            try:
                st = self.client.status_of(i)
                members.append({"endpoint": f"{host}:{port}", "up": True, "version": st.get("version"),
                                "leader": st.get("leader") == st.get("header", {}).get("member_id"),
                                "has_leader": int(st.get("leader", "0")) != 0,
                                "db_size": int(st.get("dbSize", 0))})
            except etcd.EtcdError as exc:
                members.append({"endpoint": f"{host}:{port}", "up": False, "error": str(exc)[:200]})
        self._members = members

    def close(self) -> None:
        self._stop.set()
        self._abort.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=3)
        try:
            self.client.revoke(self.alive)
        except etcd.EtcdError:
            pass
