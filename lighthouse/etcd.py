"""A small etcd v3 client over etcd's JSON gateway (HTTP/1.1, the standard library only).

Why not a library (docs/decisions.md): `etcd3` pins old grpc/protobuf and is
unmaintained, `aetcd` is asyncio-only and pulls grpcio (a large native wheel) for the
five calls the lighthouse needs. The gateway (`/v3/kv/range`, `/v3/kv/txn`,
`/v3/lease/grant`, `/v3/watch`, ...) is part of every etcd 3.4+ server, Debian's
`etcd-server` included, and speaks JSON with base64 keys and values.

Each call goes to the endpoint that answered last; on a connection error, a timeout or
a member without a leader it tries the next one (every endpoint at most once per call),
so one dead or partitioned member costs one timeout, not an outage. A call that no
member answers raises EtcdError. Nothing here knows the lighthouse's keys.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from typing import Callable, Iterator

TIMEOUT = 2.0          # per request: a member that does not answer by then is skipped
MAX_TXN_OPS = 128      # etcd's default --max-txn-ops
WATCH_KEEPIDLE = 30    # seconds of silence on a watch stream before TCP keepalive probes it


class EtcdError(OSError):
    """No member answered, or one refused the request (the message says which)."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range_end that covers every key starting with `prefix` (etcd's rule)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    raw[-1] += 1
    return b64(bytes(raw))


def _endpoint(text: str) -> tuple[str, int]:
    text = text.removeprefix("http://")
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Client:
    def __init__(self, endpoints: list[str], timeout: float = TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = [_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.current = 0
        self._local = threading.local()  # one keep-alive connection per thread
        self.failovers = 0

    # ---- transport
    def _conn(self, index: int) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(index)
        if conn is None:
            host, port = self.endpoints[index]
            conn = conns[index] = http.client.HTTPConnection(host, port, timeout=self.timeout)
        return conn

    def _drop(self, index: int) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(index, None)
        if conn is not None:
            conn.close()

    def call(self, path: str, body: dict) -> dict:
        """POST the JSON `body` to `path` on one member after another until one answers."""
        data = json.dumps(body).encode()
        errors = []
        start = self.current
        for i in range(len(self.endpoints)):
            index = (start + i) % len(self.endpoints)
            try:
                conn = self._conn(index)
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(index)
                errors.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}: {exc or type(exc).__name__}")
                continue
            try:
                doc = json.loads(payload or b"{}")
            except ValueError:
                doc = {"error": payload[:200].decode(errors="replace")}
            if resp.status != 200:
                # "no leader", "too many requests", a stopping member: another may answer
                msg = doc.get("message") or doc.get("error") or f"HTTP {resp.status}"
                errors.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}: {msg}")
                if resp.status >= 500 or "leader" in str(msg):
                    self._drop(index)
                    continue
                raise EtcdError(f"etcd {path}: {msg}")
            if index != self.current:
                self.failovers += 1
                self.current = index
            return doc
        raise EtcdError(f"etcd {path}: no member answered ({'; '.join(errors)})")

    # ---- kv
    def range(self, key: str, prefix: bool = False, limit: int = 0, revision: int = 0) -> tuple[list[dict], int]:
        """([{key, value, create_revision, mod_revision, lease}], the store's revision)."""
        body: dict = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision
        doc = self.call("/v3/kv/range", body)
        return [_kv(kv) for kv in doc.get("kvs", [])], int(doc["header"]["revision"])

    def get(self, key: str) -> bytes | None:
        kvs, _ = self.range(key)
        return kvs[0]["value"] if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value), **({"lease": str(lease)} if lease else {})})

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": b64(key)})

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> tuple[bool, list]:
        """One transaction (compare-and-swap): (succeeded, the responses of the branch run)."""
        doc = self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(doc.get("succeeded")), doc.get("responses", [])

    # ---- leases (etcd's TTLs, not Flatnet's subnet leases)
    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's remaining TTL after the refresh (0 or less: it had expired)."""
        doc = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    # ---- cluster
    def members(self) -> list[dict]:
        return self.call("/v3/cluster/member/list", {}).get("members", [])

    def status_of(self, index: int, timeout: float = 0.5) -> dict:
        """One member's own status (leader, raft index, db size); raises if it is down."""
        conn = http.client.HTTPConnection(*self.endpoints[index], timeout=min(timeout, self.timeout))
        try:
            conn.request("POST", "/v3/maintenance/status", b"{}", {"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read() or b"{}")
            if resp.status != 200:
                raise EtcdError(doc.get("message") or f"HTTP {resp.status}")
            return doc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise EtcdError(str(exc) or type(exc).__name__) from None
        finally:
            conn.close()

    # ---- watch
    def watch(self, prefix: str, start_revision: int, stop: threading.Event,
              index: int | None = None) -> Iterator[tuple[int, list[dict]]]:
        """(revision, events) as they come for keys under `prefix`, from `start_revision`
        on, from one member; each event {type: PUT|DELETE, key, value, ...}. Ends (returns)
        when the stream breaks or `stop` is set; raises EtcdError("compacted") when the
        start revision is gone (the caller reads everything again)."""
        host, port = self.endpoints[self.current if index is None else index]
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        closer = None
        body = {"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        try:
            conn.request("POST", "/v3/watch", json.dumps(body).encode(), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                return
            # No read timeout: events may be minutes apart. (It was 0.5 s, so `stop` was
            # looked at twice a second, but after one timeout the socket's file refuses
            # every read: an idle watch reconnected every 0.6 s, 10 times in 6 s.)
            # `stop` shuts the socket down instead, which ends the blocked read.
            conn.sock.settimeout(None)
            _keepalive(conn.sock)
            closer = _Closer(conn.sock, stop)
            buf = b""
            while not stop.is_set():
                chunk = resp.read1(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("compact_revision") and int(result["compact_revision"]) > 0:
                        raise EtcdError("compacted")
                    if result.get("canceled"):
                        return
                    events = [dict(_kv(e["kv"]), type=e.get("type", "PUT")) for e in result.get("events", [])]
                    yield int(result.get("header", {}).get("revision", 0)), events
        except (OSError, http.client.HTTPException, ValueError):
            return
        finally:
            if closer is not None:
                closer.done()
            conn.close()


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive on a watch stream, which may be quiet for minutes: a probe after
    WATCH_KEEPIDLE s of silence keeps a firewall's or NAT's state for it, and a peer
    gone without a word (no FIN: a black hole) fails the read after about a minute,
    so the watch moves to another member instead of waiting forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", WATCH_KEEPIDLE), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Closer:
    """Shuts `sock` down when `stop` is set, which ends a read blocked on it in another
    thread; done() ends its thread (looked at twice a second) and, once it returned,
    no shutdown follows (the socket's number may belong to another one by then)."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self._sock, self._stop = sock, stop
        self._lock = threading.Lock()
        self._finished = False
        threading.Thread(target=self._run, name="etcd-watch-closer", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self._finished:
                return
        with self._lock:
            if not self._finished:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def done(self) -> None:
        with self._lock:
            self._finished = True


def _kv(kv: dict) -> dict:
    return {"key": unb64(kv.get("key", "")).decode(), "value": unb64(kv.get("value", "")),
            "create_revision": int(kv.get("create_revision", 0)), "mod_revision": int(kv.get("mod_revision", 0)),
            "lease": int(kv.get("lease", 0))}


def put_op(key: str, value: bytes, lease: int = 0) -> dict:
    return {"request_put": {"key": b64(key), "value": b64(value), **({"lease": str(lease)} if lease else {})}}


def range_op(key: str) -> dict:
    return {"request_range": {"key": b64(key)}}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def absent(key: str) -> dict:
    """A compare that holds when `key` does not exist."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_is(key: str, value: bytes) -> dict:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


OnEvents = Callable[[int, list[dict]], None]
