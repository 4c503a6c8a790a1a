"""A small HTTP/1.1 client for the Consul agent's API, on asyncio streams: TCP, TLS (the context from
``consul_ssl_context``) or a unix socket, one connection per request (``Connection: close``), a bounded response
head and body, Content-Length or chunked framing. It replaces aiohttp and py-consul's session here: those were
about 10 MB of every Consul-mode sidecar's resident memory for a handful of JSON GETs and PUTs (issue #13).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from connect.deadline import within

MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024 * 1024  # a big catalog answer fits; a runaway one does not
MAX_FIELDS = 200


class HTTPError(Exception):
    """The exchange failed (connection, TLS, framing, bounds); the message says how, on one line."""


@dataclass(frozen=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 8500
    tls: ssl.SSLContext | None = None
    unix: str | None = None  # a socket path instead of host and port


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names; a repeated field keeps its last value
    body: bytes


def target(path: str, params: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


async def _connect(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if ep.unix is not None:
        return await asyncio.open_unix_connection(ep.unix, limit=MAX_HEAD)
    return await asyncio.open_connection(ep.host, ep.port, ssl=ep.tls, limit=MAX_HEAD)


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError("bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise HTTPError(f"response body over {MAX_BODY} bytes")
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HTTPError("bad chunk framing")
    if "content-length" in headers:
        try:
            n = int(headers["content-length"])
        except ValueError:
            raise HTTPError("bad Content-Length") from None
        if not 0 <= n <= MAX_BODY:
            raise HTTPError(f"response body of {n} bytes (at most {MAX_BODY})")
        return await reader.readexactly(n)
    chunks, total = [], 0  # no framing: until the server closes
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > MAX_BODY:
            raise HTTPError(f"response body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _exchange(ep: Endpoint, method: str, tgt: str, headers: Mapping[str, str], body: bytes) -> Response:
    reader, writer = await _connect(ep)
    try:
        host = "localhost" if ep.unix is not None else (f"[{ep.host}]" if ":" in ep.host else ep.host)
        lines = [f"{method} {tgt} HTTP/1.1", f"Host: {host}:{ep.port}" if ep.unix is None else f"Host: {host}"]
        lines += ["User-Agent: meshgw", "Accept: application/json", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPError(f"not an HTTP response: {status_line[:80]!r}")
        if len(fields) > MAX_FIELDS:
            raise HTTPError(f"more than {MAX_FIELDS} response fields")
        got: dict[str, str] = {}
        for f in fields:
            name, sep, value = f.partition(":")
            if sep:
                got[name.strip().lower()] = value.strip()
        status = int(parts[1])
        data = b"" if method == "HEAD" or status in (204, 304) else await _read_body(reader, got)
        return Response(status, got, data)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def request(
    ep: Endpoint, method: str, tgt: str, headers: Mapping[str, str], body: bytes, timeout: float
) -> Response:
    """One exchange within ``timeout`` seconds; HTTPError (or OSError, TimeoutError) when it fails."""
    try:
        return await within(_exchange(ep, method, tgt, headers, body), timeout)
    except asyncio.IncompleteReadError as e:
        raise HTTPError(f"connection closed after {len(e.partial)} bytes of a message") from None
    except asyncio.LimitOverrunError:
        raise HTTPError(f"response head over {MAX_HEAD} bytes") from None
