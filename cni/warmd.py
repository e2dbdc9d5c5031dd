"""The warm daemon: runs the CNI plugin's ADD and DEL and the netavark plugin's setup and
teardown for callers of cni.warm, with every module imported already
(`flatnet-cni-warm`, unit deploy/systemd/flatnet-cni-warm.service).

Rules:
- the daemon never does what its caller could not do itself (no confused deputy). The
  socket is root's only (mode 0600), and before reading a request it checks the caller
  by its SO_PEERCRED pid, not by anything the caller says: uid 0, the capabilities the
  plugin's work needs (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns), and the daemon's own
  mount and network namespaces (so the paths and the host network are the caller's).
  A caller that fails the check gets b"F" and does the work itself, with its own
  rights, exactly as without the daemon;
- it then runs `cni.skel.dispatch` (a netavark request: `cni.netavark.dispatch`) on the
  request exactly as the plugin would: the same validation before any change, the same
  undo on failure, the same answer;
- one request at a time, each read bounded in size and time (RECV_TIMEOUT): a caller
  that connects and stalls delays others by that much, and they fall back after
  cni.warm.WARM_TIMEOUT anyway. Bad input is counted and logged, never answered with
  a traceback.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import stat
import struct

from flatnet.cni.netavark import dispatch as netavark_dispatch
from flatnet.cni.skel import dispatch
from flatnet.cni.warm import DEFAULT_SOCKET, KEYS, MAGIC, MAX_REPLY, MAX_REQUEST, NV_MAGIC, NV_VERBS

log = logging.getLogger("flatnet.cni.warmd")
RECV_TIMEOUT = 1.0
_UCRED = struct.Struct("=iII")  # pid, uid, gid
CAP_SYS_ADMIN, CAP_NET_ADMIN = 21, 12
NEEDED_CAPS = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)


def namespaces(pid: int | str = "self") -> tuple[tuple[int, int], ...]:
    """(dev, inode) of a process's mount and network namespaces."""
    out = []
    for ns in ("mnt", "net"):
        st = os.stat(f"/proc/{pid}/ns/{ns}")
        out.append((st.st_dev, st.st_ino))
    return tuple(out)


def effective_caps(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def refusal(pid: int, uid: int, own_ns: tuple[tuple[int, int], ...]) -> str | None:
    """Why the daemon will not act for this caller, or None. From the kernel's view of
    the caller (its pid: the caller waits for the answer, so the pid is still its own;
    a caller that exits at once would need the whole pid space to wrap before this
    check to lend its pid to another process; SO_PEERPIDFD, Linux 6.5, would close
    even that, Debian 12's kernel lacks it)."""
    if uid != 0:
        return f"caller uid {uid} is not root"
    if pid <= 0:
        return "caller is in a pid namespace this daemon cannot see"
    try:
        if namespaces(pid) != own_ns:
            return f"caller pid {pid} is in another mount or network namespace"
        caps = effective_caps(pid)
    except OSError as exc:
        return f"cannot inspect caller pid {pid}: {exc.strerror}"
    if caps & NEEDED_CAPS != NEEDED_CAPS:
        return f"caller pid {pid} lacks CAP_NET_ADMIN or CAP_SYS_ADMIN"
    return None


def parse_request(msg: bytes) -> tuple[dict[str, str], bytes] | None:
    """(environment, stdin) or None for a malformed request."""
    parts = msg.split(b"\0", len(KEYS) + 1)
    if len(parts) != len(KEYS) + 2 or parts[0] != MAGIC:
        return None
    values = [p.decode("utf-8", "surrogateescape") for p in parts[1:-1]]
    env = {k: v for k, v in zip(KEYS, values) if v}
    if env.get("CNI_COMMAND") not in ("ADD", "DEL"):
        return None
    return env, parts[-1]


def parse_netavark_request(msg: bytes) -> tuple[list[str], bytes] | None:
    """(argv as netavark gives it to the plugin, stdin) or None for a malformed request."""
    parts = msg.split(b"\0", 3)
    if len(parts) != 4 or parts[0] != NV_MAGIC:
        return None
    verb, netns = (p.decode("utf-8", "surrogateescape") for p in parts[1:3])
    if verb not in NV_VERBS or not netns.startswith("/"):
        return None
    return ["flatnet", verb, netns], parts[3]


def handle(msg: bytes) -> bytes | None:
    """The answer to one request of a caller `refusal` passed; None: drop it."""
    out, err = io.StringIO(), io.StringIO()
    if msg.startswith(NV_MAGIC + b"\0"):
        nv = parse_netavark_request(msg)
        if nv is None:
            return None
        argv, data = nv
        rc = netavark_dispatch(argv, io.BytesIO(data), out, err)
    else:
        req = parse_request(msg)
        if req is None:
            return None
        env, data = req
        rc = dispatch(env, io.BytesIO(data), out, err)
    reply = b"R" + bytes([rc]) + out.getvalue().encode() + b"\0" + err.getvalue().encode()
    return reply if len(reply) <= MAX_REPLY else None


class Server:
    def __init__(self, path: str = DEFAULT_SOCKET, mode: int = 0o600) -> None:
        self.path = path
        self.counts = {"ok": 0, "refused": 0, "malformed": 0, "io_error": 0}
        self.own_ns = namespaces()
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of a daemon that died
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        self.sock.listen(16)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def serve_one(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            try:
                conn.settimeout(RECV_TIMEOUT)
                pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                why = refusal(pid, uid, self.own_ns)
                if why is not None:
                    self._drop("refused", why)
                    conn.send(b"F")  # do it yourself, with your own rights
                    return
                msg, _, flags, _ = conn.recvmsg(MAX_REQUEST + 4096)
                if flags & socket.MSG_TRUNC:
                    self._drop("malformed", "request larger than the limit")
                    return
                reply = handle(msg)
                if reply is None:
                    self._drop("malformed", "malformed request or oversized answer")
                    return
                self.counts["ok"] += 1
                conn.send(reply)
            except OSError as exc:  # the caller went away or timed out: it falls back
                self._drop("io_error", f"caller connection: {exc}")

    def _drop(self, what: str, msg: str) -> None:
        self.counts[what] += 1
        log.warning("warm request dropped (%s): %s", what, msg)

    def serve_forever(self) -> None:
        while True:
            self.serve_one()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flatnet-cni-warm",
                                description="answer the flatnet CNI plugin's ADD and DEL and the netavark "
                                "plugin's setup and teardown from a warm process")
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("flatnet-cni-warm must run as root (the plugin's work needs CAP_NET_ADMIN)")
    server = Server(a.socket)
    log.info("serving the flatnet CNI plugin on %s", a.socket)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
