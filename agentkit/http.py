"""The small HTTP/1.x server of a daemon's ``/metrics`` and health routes (asyncio).

One request per connection (GET or HEAD), answered from a table of routes: path (the query
string is ignored) -> a function returning ``(status, content type, body)``; then close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

Response = tuple[int, str, str]
Route = Callable[[], Response]

READ_TIMEOUT = 10.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> (host, port); ValueError naming ``what``."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what}: {text!r} is not HOST:PORT (port 0-65535, 0: any free port)")
    return host, int(port)


async def serve(routes: Mapping[str, Route], host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port) and answer from ``routes``; ``OSError``
    when it cannot listen."""
    return await asyncio.start_server(lambda r, w: handle(routes, r, w), host, port)


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def handle(routes: Mapping[str, Route], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Answer one request on a connection, then close it."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        method = "GET"
        if len(parts) != 3:
            status, ctype, body = 400, "text/plain", "bad request\n"
        else:
            method, target = parts[0], parts[1].split("?", 1)[0]
            route = routes.get(target)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", "method not allowed\n"
            elif route is None:
                status, ctype, body = 404, "text/plain", "not found\n"
            else:
                status, ctype, body = route()
        data = body.encode()
        header = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(header if method == "HEAD" else header + data)
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
