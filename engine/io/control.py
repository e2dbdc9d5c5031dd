"""The local control API: HTTP/1.0 + JSON on a Unix socket (and optionally TCP on
127.0.0.1). Small on purpose: GET, POST and DELETE, one request per connection,
bodies up to 64 KiB."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Callable

Handler = Callable[[str, str, bytes], tuple[int, str, bytes]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error"}
MAX_BODY = 64 * 1024
API_GROUP = "flatnet"


def json_response(obj: object, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        length = 0
        while (header := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        parts = line.decode("latin-1").split()
        if len(parts) < 2:
            status, ctype, body = json_response({"error": "bad request line"}, 400)
        elif parts[0] not in ("GET", "POST", "DELETE"):
            status, ctype, body = json_response({"error": "use GET, POST or DELETE"}, 405)
        elif length > MAX_BODY:
            status, ctype, body = json_response({"error": f"body over {MAX_BODY} bytes"}, 413)
        else:
            data = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
            try:
                status, ctype, body = handler(parts[0], parts[1], data)
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                status, ctype, body = json_response({"error": f"internal error: {exc!r}"}, 500)
        writer.write(f"HTTP/1.0 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def start(path: str, handler: Handler) -> list[asyncio.AbstractServer]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    servers = [await asyncio.start_unix_server(lambda r, w: _serve(r, w, handler), path)]
    os.chmod(path, 0o660)
    # group `flatnet` (made by the installer) may use the API: the gateway's nginx runs
    # its workers with that group; nobody else but root can
    try:
        import grp
        os.chown(path, 0, grp.getgrnam(API_GROUP).gr_gid)
    except (KeyError, PermissionError):
        pass
    return servers


def request(path: str, method: str, url: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
    """Blocking client for the CLI and tests."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"{method} {url} HTTP/1.0\r\nHost: flatnet\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                  + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, data = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), data


def get(path: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return request(path, "GET", url, b"", timeout)
