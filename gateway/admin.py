"""The admin port: /metrics, /ready, /health, /config, and the console with its operator endpoints
(gateway/console/routes.py). Never serves a private key.

Served by a small HTTP/1.1 server on asyncio streams instead of aiohttp's: the admin port answers GETs from
Prometheus, systemd/Nomad health checks, operators and the console's page, and a few bodiless POSTs (the
console's maintenance endpoints, whose parameters are in the query string as Envoy's are); aiohttp's server and
client stack was about 10 MB of every sidecar's resident memory (issue #13; bench/rss_bench.py). Bounded like the
data plane: a request head of at most 16 KiB and 100 fields, read within 10 s; keep-alive for scrapers and the
page's polling; request bodies are not taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from connect.deadline import within
from gateway import dataplane, metrics
from gateway.config import Address
from gateway.snapshot import SnapshotHolder

if TYPE_CHECKING:
    from gateway.console.source import ConsoleSource

log = logging.getLogger("meshgw.admin")

MAX_HEAD = 16 * 1024
MAX_FIELDS = 100
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0  # a kept-alive connection without a new request this long is closed
TEXT = "text/plain; charset=utf-8"
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2: a field name
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_VALUE = re.compile(r"^[\t\x20-\x7e]*$")  # a response field value we write: no CR/LF can reach the head


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()  # further response fields (Allow, the console's CSP, ...)


@dataclass(frozen=True)
class Request:
    """What a handler sees of a request: the head only (no body is taken)."""

    method: str
    path: str  # the target before "?", as sent (not percent-decoded: routes are exact)
    query: Mapping[str, str] = field(default_factory=dict)  # first value per name; "?flag" maps flag to ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names; a repeated field's last value
    remote: str | None = None  # the peer's address

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]  # HEAD is answered wherever GET is
    handler: Handler


def _query(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_FIELDS):
        out.setdefault(k, v)
    return out


class _Refused(Exception):
    def __init__(self, status: int):
        self.status = status


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> list[bytes] | None:
    """The request line and fields, or None when the peer closed before a request."""
    try:
        raw = await within(reader.readuntil(b"\r\n\r\n"), timeout)
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
        console: ConsoleSource | None = None,
        allow_remote_maintenance: bool = False,
    ):
        self.bind = bind
        self.holder = holder
        self.config_json = config_json
        # A reason the process as a whole is not ready (draining, control plane not answered yet), or None.
        self.not_ready = not_ready
        self.server: asyncio.Server | None = None
        self.port = bind.port
        get = frozenset({"GET"})
        self.routes: dict[str, Route] = {
            "/metrics": Route(get, self.metrics),
            "/ready": Route(get, self.ready),
            "/health": Route(get, self.health),
            "/config": Route(get, self.config),
            "/": Route(get, self.index),
        }
        self.prefixes: dict[str, Route] = {}  # "/console/static/": the rest of the path is the handler's to read
        # Fields every answer carries, and errors as one line of JSON: the console's (its CSP among them).
        self.extra_headers: tuple[tuple[str, str], ...] = ()
        self.console: Any = None
        if console is not None:
            from gateway.console.routes import Console  # not jinja2: that comes with the first page

            self.console = Console(console, allow_remote_maintenance)
            self.console.install(self)
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
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        try:
            timeout = HEAD_TIMEOUT
            while True:
                try:
                    lines = await _read_head(reader, timeout)
                except TimeoutError:
                    if timeout == HEAD_TIMEOUT:
                        await self._send(writer, "GET", self._with_headers(Reply(408, b"")), close=True)
                    return
                except _Refused as e:
                    await self._send(writer, "GET", self._with_headers(Reply(e.status, b"")), close=True)
                    return
                if lines is None:
                    return
                reply, method, keep = await self._answer(lines, remote)
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

    async def _answer(self, lines: list[bytes], remote: str | None) -> tuple[Reply, str, bool]:
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return self._with_headers(self._error(400, "Bad Request")), "GET", False
        method, target, version = parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2]
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                return self._with_headers(self._error(400, "Bad Request")), method, False
            fields[name.lower()] = value.strip()
        conn = fields.get(b"connection", b"").lower()
        keep = b"close" not in conn if version == b"HTTP/1.1" else b"keep-alive" in conn
        if fields.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in fields:
            # Nothing here takes a body (the maintenance POSTs read the query string), so none is read: the
            # connection closes rather than skip one.
            reply = self._error(413, "request bodies are not taken here (parameters go in the query string)")
            return self._with_headers(reply), method, False
        path, _, raw_query = target.partition("?")
        route = self.routes.get(path)
        if route is None:
            route = next((r for p, r in self.prefixes.items() if path.startswith(p)), None)
        if route is None:
            return self._with_headers(self._error(404, "Not Found")), method, keep
        allowed = route.methods | ({"HEAD"} if "GET" in route.methods else set())
        if method not in allowed:
            reply = self._error(405, "Method Not Allowed", (("Allow", ",".join(sorted(allowed))),))
            return self._with_headers(reply), method, keep
        request = Request(
            method,
            path,
            _query(raw_query),
            {k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()},
            remote,
        )
        try:
            reply = await route.handler(request)
        except Exception as e:  # a bug, not the caller's mistake: one log line, one answer line
            log.error("admin %s %s failed: %s: %s", method, path, type(e).__name__, e)
            reply = self._error(500, f"internal error: {type(e).__name__}")
        return self._with_headers(reply), method, keep

    def _error(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """One line: JSON ``{"error": ...}`` where the console serves (its callers read JSON), else text."""
        if self.console is not None:
            return json_reply({"error": message}, status, headers)
        return Reply(status, f"{message.lower()}\n".encode(), TEXT, headers)

    def _with_headers(self, reply: Reply) -> Reply:
        if not self.extra_headers:
            return reply
        have = {k.lower() for k, _ in reply.headers}
        extra = tuple((k, v) for k, v in self.extra_headers if k.lower() not in have)
        return Reply(reply.status, reply.body, reply.content_type, reply.headers + extra)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, method: str, reply: Reply, close: bool) -> None:
        fields = "".join(f"{k}: {v}\r\n" for k, v in reply.headers if _TOKEN.match(k.encode()) and _VALUE.match(v))
        head = (
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'OK')}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            + fields
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else reply.body))
        await writer.drain()

    # ------------------------------------------------------------------ handlers

    async def index(self, request: Request) -> Reply:
        return Reply(200, b"meshgw admin: /metrics /ready /health /config\n")

    async def metrics(self, request: Request) -> Reply:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Reply(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)

    async def ready(self, request: Request) -> Reply:
        reason = self.not_ready()
        if reason:
            return Reply(503, f"{reason}\n".encode())
        ok, why = self.holder.current.ready()
        return Reply(200 if ok else 503, f"{why}\n".encode())

    async def health(self, request: Request) -> Reply:
        # Liveness: the process and its loop answer. Readiness (certificates) is /ready.
        return Reply(200, b"ok\n")

    async def config(self, request: Request) -> Reply:
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


def json_reply(body: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(
        status,
        (json.dumps(body, indent=2, default=str) + "\n").encode(),
        "application/json; charset=utf-8",
        (("Cache-Control", "no-store"), *headers),
    )
