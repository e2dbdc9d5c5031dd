"""Traffic between namespaces for tests: a TCP transfer checked end to end."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap

from tests.harness.cni import REPO
from tests.harness.wait import wait_listening

SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(30)
    c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(1 << 16)
        if not d: break
        h.update(d); n += len(d)
    print(n, h.hexdigest())
""")
CLIENT = textwrap.dedent("""
    import socket, sys, time
    data = open(sys.argv[1], "rb").read()
    chunk, gap = int(sys.argv[4]), float(sys.argv[5])
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30)
    for i in range(0, len(data), chunk):
        s.sendall(data[i:i + chunk])
        if gap:
            time.sleep(gap)
    s.close()
""")


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int, port: int = 9000, chunk: int = 1 << 20,
                 gap: float = 0.0) -> tuple[int, str, str]:
    """(bytes received, sha256 received, sha256 sent) of `size` random bytes sent over TCP,
    `chunk` bytes at a time with `gap` seconds between chunks (a long-lived stream)."""
    data = os.urandom(size)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", SERVER, str(port)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_listening(dst_ns, port)
        subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c", CLIENT, f.name, dst_ip, str(port),
                        str(chunk), str(gap)], check=True, timeout=120, cwd=REPO)
        out, _ = server.communicate(timeout=120)
    finally:
        server.kill()
        os.unlink(f.name)
    n, digest = out.split()
    return int(n), digest, hashlib.sha256(data).hexdigest()
