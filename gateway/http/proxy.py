"""HTTP/1.1 proxying over relay sides: llhttp (httptools) callbacks, no task per request.

One ``ServerConnection`` per downstream connection parses requests; each request becomes an
``Exchange`` that borrows a pooled ``ClientConnection`` (keep-alive, to the local app or to an mTLS
upstream endpoint), streams the request body as it arrives and the response body back the same way.
Framing is re-done on each hop (Content-Length kept, chunked re-chunked, close-delimited answers
turned into chunked ones), hop-by-hop headers are dropped per RFC 9110 §7.6.1, and an ``Upgrade``
answered with 101 turns the two connections into a plain byte relay (WebSocket passthrough).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from gateway.http.headers import ResponseHead, render_response_head, simple_response
from gateway.l4 import Side

log = logging.getLogger("meshgw.http")

# Buffered request body while the upstream connection is being set up; past it the client is paused.
BODY_BUFFER_LIMIT = 256 * 1024
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ClientConnection:
    """One keep-alive connection to an upstream (the app, or a mesh endpoint over mTLS)."""

    __slots__ = (
        "_parser",
        "body_mode",
        "closed",
        "exchange",
        "head_request",
        "headers",
        "keep_alive",
        "key",
        "lost_cb",
        "pool",
        "side",
        "upgraded",
    )

    def __init__(self, side: Side, key: Any):
        self.side = side
        self.key = key
        side.relay = self  # type: ignore[assignment]  # duck-typed owner: side_lost / close
        side.write = self.feed
        self._parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.closed = False
        self.upgraded = False
        self.head_request = False
        self.body_mode = b""  # b"length", b"chunked" or b"close" for the answer being relayed
        self.lost_cb: Callable[[ClientConnection], None] | None = None
        self.pool: Any = None  # the pool it goes back to after a reusable exchange

    # -- owner protocol for the Side

    def side_lost(self, side: Side) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            ex.upstream_lost()
        if self.lost_cb is not None:
            self.lost_cb(self)

    def side_eof(self, side: Side) -> None:
        ex = self.exchange
        if self.upgraded and ex is not None:
            down = ex.server.side
            down.send_eof()  # half-close passes through a tunnel
            if down.eof:
                self.close()
                ex.server.close()
            return
        self.close()  # the upstream is done sending: the connection cannot be reused; side_lost finishes

    def close(self) -> None:
        self.closed = True
        self.side.close()

    def abort(self) -> None:
        self.closed = True
        self.side.abort()

    # -- sending the request

    def begin(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.headers = []
        self.head_request = exchange.method == b"HEAD"
        if self.head_request:
            # llhttp cannot be told an answer belongs to HEAD (no body despite Content-Length): a fresh
            # parser is used after it, and on_headers_complete ends the message.
            self._parser = httptools.HttpResponseParser(self)

    def send(self, data: bytes) -> None:
        self.side.send(data)

    # -- parsing the response

    def feed(self, data: bytes) -> None:
        if self.upgraded:
            ex = self.exchange
            if ex is not None:
                ex.server.side.send(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            rest = data[offset:]
            if self.exchange is not None and rest:
                self.exchange.server.side.send(rest)
        except httptools.HttpParserError as e:
            log.warning("upstream sent a malformed response: %s", e)
            ex = self.exchange
            self.abort()
            if ex is not None:
                ex.upstream_failed(502, "upstream sent a malformed response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            ex.send_interim(status, self.headers)
            self.headers = []
            return
        self.keep_alive = self._parser.should_keep_alive()
        head = ResponseHead(status, self.headers, self._parser.get_http_version())
        self.body_mode = ex.send_response_head(head, self)
        if status == 101:
            self.upgraded = True
        elif self.head_request:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.send_response_body(body, self.body_mode)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or ex.response_status is None or self.upgraded:
            return
        self.exchange = None
        if self.head_request:
            self._parser = httptools.HttpResponseParser(self)
            self.head_request = False
        ex.response_complete(self)


class Exchange:
    """One request/response through the proxy."""

    __slots__ = (
        "body_buffer",
        "body_size",
        "chunked",
        "client",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "request_done",
        "response_status",
        "server",
        "started",
        "timer",
        "upgrade",
        "url",
        "version",
    )

    def __init__(self, server: ServerConnection):
        self.server = server
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self.content_length: bytes | None = None
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.body_buffer: list[bytes] | None = []
        self.body_size = 0
        self.request_done = False
        self.client: ClientConnection | None = None
        self.response_status: int | None = None
        self.started = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    # -- request side

    def request_body(self, data: bytes) -> None:
        framed = chunk(data) if self.chunked else data
        if self.client is not None:
            self.client.send(framed)
            return
        if self.body_buffer is None:
            return  # answered already (e.g. 403): the rest of the body is read and dropped
        self.body_buffer.append(framed)
        self.body_size += len(framed)
        if self.body_size > BODY_BUFFER_LIMIT:
            self.server.pause()

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked:
            if self.client is not None:
                self.client.send(LAST_CHUNK)
            elif self.body_buffer is not None:
                self.body_buffer.append(LAST_CHUNK)

    def attach(self, client: ClientConnection, head: bytes) -> None:
        """The upstream connection is ready: send the head and what body arrived so far."""
        self.client = client
        client.begin(self)
        buffered = self.body_buffer or []
        self.body_buffer = None
        client.send(head + b"".join(buffered) if buffered else head)
        if self.body_size > BODY_BUFFER_LIMIT:
            self.server.resume()

    # -- response side

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        # 100 Continue and friends go to the client as they are (RFC 9110 §15.2).
        self.server.side.send(render_response_head(ResponseHead(status, headers, "1.1"), b"", keep_alive=True))

    def send_response_head(self, head: ResponseHead, client: ClientConnection) -> bytes:
        self.response_status = head.status
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if head.status == 101:
            mode = b"upgrade"
        elif self.method == b"HEAD" or head.status in (204, 304):
            mode = b"none"
        elif head.content_length is not None:
            mode = b"length"
        elif head.chunked:
            mode = b"chunked"
        else:
            mode = b"close"  # delimited by the upstream closing: re-framed as chunked for the client
        keep_alive = self.keep_alive and (mode != b"close" or self.version == "1.1") and not self.server.draining
        self.keep_alive = keep_alive
        te = b"chunked" if mode in (b"chunked", b"close") and self.version == "1.1" else b""
        self.server.send_response(
            render_response_head(head, te, keep_alive, self.server.extra_response_headers), head.status, self
        )
        if mode == b"upgrade":
            self.server.upgrade_to(client)
        return mode

    def send_response_body(self, body: bytes, mode: bytes) -> None:
        if mode == b"length" or self.version != "1.1":
            self.server.side.send(body)
        else:
            self.server.side.send(chunk(body))

    def response_complete(self, client: ClientConnection) -> None:
        if self.client is not None and client.body_mode in (b"chunked", b"close") and self.version == "1.1":
            self.server.side.send(LAST_CHUNK)
        reuse = client.keep_alive and self.request_done and not client.closed
        self.server.exchange_done(self, client, reuse)

    def upstream_lost(self) -> None:
        client = self.client
        if self.response_status is None:
            self.upstream_failed(503, "upstream connection reset before the response headers")
        elif client is not None and client.body_mode == b"close" and not client.upgraded:
            self.response_complete(client)  # a close-delimited answer ends with the connection
        else:
            self.server.abort()  # mid-body: the client must not take a truncated answer as whole

    def upstream_failed(self, status: int, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.response_status is not None:
            self.server.abort()
            return
        self.server.local_response(self, status, reason)


class ServerConnection:
    """A downstream HTTP/1.1 connection on top of a relay side (plaintext or TLS)."""

    def __init__(
        self,
        side: Side,
        handle: Callable[[Exchange], Awaitable[None] | None],
        on_response: Callable[[Exchange, int], None],
        on_close: Callable[[ServerConnection], None],
        peer_ip: str = "",
        extra_response_headers: bytes = b"",
    ):
        self.side = side
        side.relay = self  # type: ignore[assignment]
        self.handle = handle
        self.on_response = on_response
        self.on_close = on_close
        self.peer_ip = peer_ip
        self.extra_response_headers = extra_response_headers
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the one being parsed
        self.closed = False
        self.paused = False
        self.upgraded_to: ClientConnection | None = None
        self.draining = False

    def counts(self) -> tuple[int, int]:
        return (self.side.nbytes, 0)

    # -- owner protocol for the Side

    def side_lost(self, side: Side) -> None:
        self.closed = True
        self._abort_exchanges()
        if self.upgraded_to is not None:
            self.upgraded_to.close()
        self.on_close(self)

    def _abort_exchanges(self) -> None:
        for ex in self.queue:
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None
            if ex.client is not None and not ex.client.closed:
                ex.client.abort()  # mid-exchange: the upstream connection cannot be reused
            ex.response_status = ex.response_status or 0  # a dial still under way must not attach
        self.queue.clear()

    def close(self) -> None:
        self.side.close()

    def abort(self) -> None:
        self.side.abort()

    def side_eof(self, side: Side) -> None:
        up = self.upgraded_to
        if up is not None:
            up.side.send_eof()  # half-close passes through a tunnel
            if up.side.eof:
                up.close()
                self.close()
            return
        if not self.queue:
            self.close()
        else:
            self.draining = True  # the client sends no more requests: answer the one in flight, then close

    def drain(self) -> None:
        """Shutdown: an idle keep-alive connection closes now, a busy one after its current answer."""
        self.draining = True
        if not self.queue and self.current is None and self.upgraded_to is None:
            self.side.close()

    def pause(self) -> None:
        if not self.paused and self.side.transport is not None:
            self.paused = True
            self.side.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.side.transport is not None:
            self.paused = False
            self.side.transport.resume_reading()

    # -- parsing requests

    def feed(self, data: bytes) -> None:
        if self.upgraded_to is not None:
            self.upgraded_to.send(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            rest = data[offset:]
            ex = self.current
            if ex is not None and rest:
                ex.request_body(rest)  # bytes after an upgrade request: held until the 101 arrives
        except httptools.HttpParserError as e:
            # Malformed: 400 and close; nothing has reached the app for this request.
            self.bad_request(str(e))

    def bad_request(self, why: str) -> None:
        log.info("malformed request: %s", why)
        self.on_response(None, 400)  # type: ignore[arg-type]
        self.side.send(simple_response(400, "malformed request", keep_alive=False))
        self._abort_exchanges()  # a head already on its way upstream is cut off with its connection
        self.side.close()

    def on_message_begin(self) -> None:
        self.current = Exchange(self)

    def on_url(self, url: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.current
        if ex is None:
            return
        p = self.parser
        ex.method = p.get_method()
        ex.version = p.get_http_version()
        ex.keep_alive = p.should_keep_alive()
        ex.upgrade = p.should_upgrade()
        for name, value in ex.headers:
            lname = name.lower()
            if lname == b"transfer-encoding":
                ex.chunked = b"chunked" in value.lower()
            elif lname == b"content-length":
                ex.content_length = value
            elif lname == b"expect" and value.lower() == b"100-continue":
                ex.expect_continue = True
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._start(ex)
        else:
            self.pause()  # pipelined: one exchange at a time, the next waits its turn

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is not None:
            ex.request_complete()
        self.current = None

    # -- exchanges

    def _start(self, ex: Exchange) -> None:
        result = self.handle(ex)
        if result is not None:
            task = asyncio.ensure_future(result)
            task.add_done_callback(_log_failure)

    def send_response(self, head: bytes, status: int, ex: Exchange) -> None:
        self.on_response(ex, status)
        self.side.send(head)

    def local_response(self, ex: Exchange, status: int, reason: str, headers: bytes = b"") -> None:
        """An answer made here (403, 503, 504...): the request never reached (or never left) the app."""
        ex.response_status = status
        if ex.client is not None:
            ex.client.abort()
            ex.client = None
        # Keep the connection only if the whole request body has been read (else the next bytes
        # would be taken for a new request).
        keep = ex.keep_alive and ex.request_done and not ex.upgrade and not self.draining
        self.on_response(ex, status)
        self.side.send(simple_response(status, reason, keep_alive=keep, extra=headers + self.extra_response_headers))
        ex.body_buffer = None
        if keep:
            self._next(ex)
        else:
            self.side.close()

    def exchange_done(self, ex: Exchange, client: ClientConnection, reuse: bool) -> None:
        if reuse and client.pool is not None:
            client.pool.release(client)
        else:
            client.close()
        if not ex.keep_alive or self.draining:
            self.side.close()
            return
        self._next(ex)

    def _next(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if self.queue:
            self._start(self.queue[0])
        else:
            self.resume()

    def upgrade_to(self, client: ClientConnection) -> None:
        """101 Switching Protocols: from now on, bytes both ways as they are."""
        self.upgraded_to = client
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.body_buffer:
            client.send(b"".join(ex.body_buffer))
            ex.body_buffer = None


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("request handling failed: %r", task.exception())
