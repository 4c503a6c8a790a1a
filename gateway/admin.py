"""The admin port: /metrics, /ready, /health, /config. Never serves a private key.

Served by a small HTTP/1.1 server on asyncio streams instead of aiohttp's: the admin port answers a few GETs
from Prometheus, systemd/Nomad health checks and operators, and aiohttp's server and client stack was about 10 MB
of every sidecar's resident memory (issue #13; bench/rss_bench.py). Bounded like the data plane: a request head
of at most 16 KiB and 100 fields, read within 10 s; keep-alive for scrapers; request bodies are not taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway import dataplane, metrics
from gateway.config import Address
from gateway.snapshot import SnapshotHolder

MAX_HEAD = 16 * 1024
MAX_FIELDS = 100
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0  # a kept-alive connection without a new request this long is closed
TEXT = "text/plain; charset=utf-8"
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2: a field name
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT


Handler = Callable[[], Awaitable[Reply]]


class _Refused(Exception):
    def __init__(self, status: int):
        self.status = status


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> list[bytes] | None:
    """The request line and fields, or None when the peer closed before a request."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise _Refused(400) from None
    except asyncio.LimitOverrunError:
        raise _Refused(431) from None
    lines = raw[:-4].split(b"\r\n")
    while lines and not lines[0]:  # RFC 9112 §2.2: empty lines before the request line are ignored
        lines.pop(0)
    if not lines or len(lines) > MAX_FIELDS + 1:
        raise _Refused(431 if lines else 400)
    return lines


class Admin:
    def __init__(
        self,
        bind: Address,
        holder: SnapshotHolder,
        config_json: Callable[[], dict[str, Any]],
        not_ready: Callable[[], str | None],
    ):
        self.bind = bind
        self.holder = holder
        self.config_json = config_json
        # A reason the process as a whole is not ready (draining, control plane not answered yet), or None.
        self.not_ready = not_ready
        self.server: asyncio.Server | None = None
        self.port = bind.port
        self.routes: dict[str, Handler] = {
            "/metrics": self.metrics,
            "/ready": self.ready,
            "/health": self.health,
            "/config": self.config,
            "/": self.index,
        }
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, self.bind.host, self.bind.port, reuse_address=True, limit=MAX_HEAD
        )
        if self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            timeout = HEAD_TIMEOUT
            while True:
                try:
                    lines = await _read_head(reader, timeout)
                except TimeoutError:
                    if timeout == HEAD_TIMEOUT:
                        await self._send(writer, "GET", Reply(408, b""), close=True)
                    return
                except _Refused as e:
                    await self._send(writer, "GET", Reply(e.status, b""), close=True)
                    return
                if lines is None:
                    return
                reply, method, keep = await self._answer(lines)
                await self._send(writer, method, reply, close=not keep)
                if not keep:
                    return
                timeout = IDLE_TIMEOUT
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, lines: list[bytes]) -> tuple[Reply, str, bool]:
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return Reply(400, b""), "GET", False
        method, target, version = parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2]
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                return Reply(400, b""), method, False
            fields[name.lower()] = value.strip()
        conn = fields.get(b"connection", b"").lower()
        keep = b"close" not in conn if version == b"HTTP/1.1" else b"keep-alive" in conn
        if fields.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in fields:
            return Reply(413, b"request bodies are not taken here\n"), method, False
        path = target.split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            return Reply(404, b"not found\n"), method, keep
        if method not in ("GET", "HEAD"):
            return Reply(405, b"only GET and HEAD\n"), method, keep
        return await handler(), method, keep

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, method: str, reply: Reply, close: bool) -> None:
        head = (
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'OK')}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else reply.body))
        await writer.drain()

    # ------------------------------------------------------------------ handlers

    async def index(self) -> Reply:
        return Reply(200, b"meshgw admin: /metrics /ready /health /config\n")

    async def metrics(self) -> Reply:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Reply(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)

    async def ready(self) -> Reply:
        reason = self.not_ready()
        if reason:
            return Reply(503, f"{reason}\n".encode())
        ok, why = self.holder.current.ready()
        return Reply(200 if ok else 503, f"{why}\n".encode())

    async def health(self) -> Reply:
        # Liveness: the process and its loop answer. Readiness (certificates) is /ready.
        return Reply(200, b"ok\n")

    async def config(self) -> Reply:
        snap = self.holder.current
        from gateway.version import VERSION

        body = {
            "version": VERSION,
            "config": self.config_json(),
            "snapshot": snap.to_json(),
            "snapshot_age_seconds": round(time.time() - snap.built_at, 3),
            "data_path": dataplane.describe(),
        }
        return Reply(200, json.dumps(body, indent=2, default=str).encode(), "application/json; charset=utf-8")
