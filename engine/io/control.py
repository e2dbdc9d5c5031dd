"""The local control API: HTTP/1.0 + JSON on a Unix socket (and optionally TCP on
127.0.0.1). Small on purpose: GET only, one request per connection."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Callable

Handler = Callable[[str], tuple[int, str, bytes]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def json_response(obj: object, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass
        parts = line.decode("latin-1").split()
        if len(parts) < 2:
            status, ctype, body = json_response({"error": "bad request line"}, 400)
        elif parts[0] != "GET":
            status, ctype, body = json_response({"error": "only GET is supported"}, 405)
        else:
            try:
                status, ctype, body = handler(parts[1])
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                status, ctype, body = json_response({"error": f"internal error: {exc!r}"}, 500)
        writer.write(f"HTTP/1.0 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def start(path: str, handler: Handler, tcp_port: int | None = None) -> list[asyncio.AbstractServer]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    servers = [await asyncio.start_unix_server(lambda r, w: _serve(r, w, handler), path)]
    os.chmod(path, 0o660)
    if tcp_port is not None:
        servers.append(await asyncio.start_server(lambda r, w: _serve(r, w, handler), "127.0.0.1", tcp_port))
    return servers


def get(path: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Blocking client for the CLI."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: flatnet\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body
