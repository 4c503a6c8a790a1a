"""HTTP/1.1 proxying over relay sides: llhttp (httptools) callbacks, no task per request.

One ``ServerConnection`` per downstream connection parses requests; each request becomes an
``Exchange`` that borrows a pooled ``ClientConnection`` (keep-alive, to the local app or to an mTLS
upstream endpoint), streams the request body as it arrives and the response body back the same way.
Framing is re-done on each hop (Content-Length kept, chunked re-chunked, close-delimited answers
turned into chunked ones), hop-by-hop headers are dropped per RFC 9110 §7.6.1, and an ``Upgrade``
answered with 101 turns the two connections into a plain byte relay (WebSocket passthrough).

Back-pressure: the sides are ``gateway.http.flow`` sides, so a full write buffer towards one end pauses
reading from the end that feeds it (the server connection pauses its current client connection, and the
other way round), for bodies and for upgraded tunnels alike.

Retries: an exchange keeps what it sent upstream (head and body, up to ``REPLAY_LIMIT``) while its ``call``
(the outbound request driver, ``gateway.http.outbound``) may still retry; a failed attempt detaches the client
connection and the next attempt replays those bytes to a new one. Once a response head went downstream, or
the body outgrew the limit, nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from gateway import native
from gateway.http.headers import ResponseHead, render_response_head, simple_response
from gateway.l4 import HAND_OVER_FIRST_RETRY, Relay, Side

log = logging.getLogger("meshgw.http")

# Buffered request body while the upstream connection is being set up; past it the client is paused.
BODY_BUFFER_LIMIT = 256 * 1024
# Request bytes kept for a retry once sent (Envoy also buffers a bounded request for retries); past it, none.
REPLAY_LIMIT = 256 * 1024
LAST_CHUNK = b"0\r\n\r\n"

# Why a server connection's reading is paused; it resumes when no reason is left.
PAUSE_BUFFER = 1  # request body buffered while no upstream connection is attached
PAUSE_PIPELINE = 2  # a pipelined request waits for the one before it
PAUSE_UPSTREAM = 4  # the upstream connection's write buffer is full


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ClientConnection:
    """One keep-alive connection to an upstream (the app, or a mesh endpoint over mTLS)."""

    native = False  # not an engine connection (gateway/http/native_http.py): the pool keeps them apart

    __slots__ = (
        "_parser",
        "body_mode",
        "closed",
        "exchange",
        "head_request",
        "idle_since",
        "in_head",
        "keep_alive",
        "key",
        "lost_cb",
        "pool",
        "raw",
        "read_paused",
        "side",
        "throttling",
        "upgraded",
    )

    def __init__(self, side: Side, key: Any):
        self.side = side
        self.key = key
        side.relay = self  # type: ignore[assignment]  # duck-typed owner: side_lost / close / peer_pause
        side.write = self.feed
        self._parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        # The response head is taken from the bytes as they came (no per-header callback: llhttp only frames
        # the message); ``raw`` holds what arrived since the request went out, until the head is complete.
        self.raw = b""
        self.in_head = False
        self.keep_alive = True
        self.closed = False
        self.upgraded = False
        self.head_request = False
        self.body_mode = b""  # b"length", b"chunked" or b"close" for the answer being relayed
        self.lost_cb: Callable[[ClientConnection], None] | None = None
        self.pool: Any = None  # the pool it goes back to after a reusable exchange
        self.idle_since = 0.0
        self.read_paused = False  # paused by the downstream end's back-pressure
        self.throttling: ServerConnection | None = None  # the server connection this one paused

    # -- owner protocol for the Side

    def side_lost(self, side: Side) -> None:
        self.closed = True
        self._unthrottle()
        ex = self.exchange
        if ex is not None:
            ex.upstream_lost(self)
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

    # -- back-pressure

    def peer_pause(self) -> None:
        """Our write buffer towards the upstream is full: stop reading from the downstream that fills it."""
        ex = self.exchange
        if ex is not None and self.throttling is None:
            self.throttling = ex.server
            ex.server.pause(PAUSE_UPSTREAM)

    def peer_resume(self) -> None:
        self._unthrottle()

    def _unthrottle(self) -> None:
        server = self.throttling
        if server is not None:
            self.throttling = None
            server.resume(PAUSE_UPSTREAM)

    def pause_reading(self) -> None:
        t = self.side.transport
        if not self.read_paused and t is not None and not self.side.lost:
            self.read_paused = True
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.side.transport
        if self.read_paused and t is not None and not self.side.lost:
            self.read_paused = False
            t.resume_reading()

    # -- sending the request

    def detach(self) -> None:
        """A failed attempt: this connection is dropped and the exchange goes on elsewhere."""
        self.exchange = None
        self._unthrottle()
        self.abort()

    def send(self, data: bytes) -> None:
        self.side.send(data)

    # -- parsing the response

    def feed(self, data: bytes) -> None:
        ex = self.exchange
        if self.upgraded:
            if ex is not None:
                ex.server.side.send(data)
            return
        # Everything this read produces for the client (head, body, last chunk) leaves in one write: one
        # syscall and, on a TLS side, one record instead of one per piece.
        srv = ex.server if ex is not None else None
        if srv is not None:
            srv.out = []
        if self.in_head:
            self.raw = self.raw + data if self.raw else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            rest = data[offset:]
            if srv is not None and rest:
                srv.write(rest)
        except httptools.HttpParserError as e:
            log.warning("upstream sent a malformed response: %s", e)
            ex = self.exchange
            self.abort()
            if ex is not None:
                ex.upstream_failed(502, "upstream sent a malformed response")
        finally:
            if srv is not None:
                srv.flush()

    def _take_head(self) -> bytes:
        """The head that just completed (status line and header lines, without the blank line)."""
        raw = self.raw
        end = raw.find(b"\r\n\r\n")
        if end >= 0:
            self.raw = raw[end + 4 :]
            return raw[: end + 2]
        end = raw.find(b"\n\n")  # bare LF line ends, which llhttp tolerates
        self.raw = raw[end + 2 :] if end >= 0 else b""
        return raw[: end + 1] if end >= 0 else raw

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        block = self._take_head()
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            ex.send_interim(ResponseHead(status, block, "1.1"))  # a final head follows: still in the head
            return
        self.in_head = False
        self.raw = b""
        self.keep_alive = self._parser.should_keep_alive()
        head = ResponseHead(status, block, self._parser.get_http_version())
        mode = ex.send_response_head(head, self)
        if mode == b"retry":
            return  # the exchange detached this connection and tries again elsewhere
        self.body_mode = mode
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
        self._unthrottle()
        ex.response_complete(self)


class Exchange:
    """One request/response through the proxy."""

    native = False  # see gateway/http/native_http.py NativeExchange

    __slots__ = (
        "call",
        "chunked",
        "client",
        "content_length",
        "deadline",
        "expect_continue",
        "finished",
        "flags",
        "head",
        "head_time",
        "headers",
        "info",
        "keep_alive",
        "method",
        "out",
        "out_size",
        "replay",
        "request_done",
        "resp_drop",
        "resp_extra",
        "response_status",
        "rx",
        "server",
        "started",
        "timeout",
        "tx",
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
        self.head = b""
        # Body bytes not sent yet (no connection attached), or everything sent while a retry may replay it.
        # None once neither applies: attached without replay, or answered locally (the rest is dropped).
        self.out: list[bytes] | None = []
        self.out_size = 0
        self.replay = False
        self.request_done = False
        self.client: ClientConnection | None = None
        self.response_status: int | None = None
        self.started = time.monotonic()
        # The request timeout (seconds, 0: none) becomes a deadline (monotonic) once the request is complete; the
        # listener's ticker answers 504 for exchanges past theirs (no timer per request: see Listener._tick).
        self.timeout = 0.0
        self.deadline = 0.0
        self.call: Any = None  # the outbound driver (retries, breakers, balancing), upstream listeners only
        self.resp_drop: frozenset[bytes] = frozenset()  # route header rules for the response
        self.resp_extra = b""
        self.finished = False
        self.rx = 0  # request body bytes received
        self.tx = 0  # response body bytes sent
        self.info: list[bytes] | None = None  # [x-request-id, traceparent] as sent upstream, for access logs
        self.head_time = 0.0  # when the upstream's response head arrived
        self.flags = ""  # Envoy-style response flags for the access log (UF, UO, UT, ...)

    # -- request side

    def request_body(self, data: bytes) -> None:
        self.rx += len(data)
        self._forward(chunk(data) if self.chunked else data)

    def _forward(self, framed: bytes) -> None:
        client = self.client
        out = self.out
        if client is not None:
            client.send(framed)
            if out is not None:
                out.append(framed)
                self.out_size += len(framed)
                if self.out_size > REPLAY_LIMIT:
                    self.out = None  # too large to replay: from now on this attempt is the last
                    self.replay = False
            return
        if out is None:
            return  # answered already (e.g. 403): the rest of the body is read and dropped
        out.append(framed)
        self.out_size += len(framed)
        if self.out_size > BODY_BUFFER_LIMIT:
            self.server.pause(PAUSE_BUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked:
            self._forward(LAST_CHUNK)
        if self.timeout and self.response_status is None:
            self.deadline = time.monotonic() + self.timeout

    def arm_timeout(self, seconds: float) -> None:
        """The request timeout, counted as Envoy's route timeout is: from the end of the downstream request to
        the response head, so a long upload is not cut short (Envoy docs, RouteAction.timeout)."""
        self.timeout = seconds
        if self.request_done and self.response_status is None:
            self.deadline = time.monotonic() + seconds

    def attach(self, client: ClientConnection, head: bytes | None = None) -> None:
        """An upstream connection is ready: send the head and what body arrived so far."""
        if head is not None:
            self.head = head
        self.client = client
        client.exchange = self
        client.raw = b""
        client.in_head = True
        if self.method == b"HEAD":
            # llhttp cannot be told an answer belongs to HEAD (no body despite Content-Length): a fresh parser
            # is used after it, and on_headers_complete ends the message.
            client.head_request = True
            client._parser = httptools.HttpResponseParser(client)
        out = self.out
        client.send(self.head + b"".join(out) if out else self.head)
        if not self.replay:
            self.out = None
        if self.out_size > BODY_BUFFER_LIMIT:
            self.server.resume(PAUSE_BUFFER)
            if self.out is not None and self.out_size > REPLAY_LIMIT:
                self.out = None
                self.replay = False

    def can_replay(self) -> bool:
        return self.response_status is None and self.out is not None

    def detach(self) -> None:
        client = self.client
        if client is not None:
            self.client = None
            client.detach()

    # -- response side

    def send_interim(self, head: ResponseHead) -> None:
        # 100 Continue and friends go to the client as they are (RFC 9110 §15.2).
        self.server.write(render_response_head(head, b"", keep_alive=True)[0])

    def send_response_head(self, head: ResponseHead, client: ClientConnection) -> bytes:
        call = self.call
        if call is not None and call.on_response_head(head.status):
            return b"retry"
        self.response_status = head.status
        self.head_time = time.monotonic()
        self.deadline = 0.0
        server = self.server
        extra = self.resp_extra + server.extra_response_headers if self.resp_extra else server.extra_response_headers
        # One pass over the headers renders them and finds the framing; the framing lines follow (RFC 9112 §6).
        rendered, framing = render_response_head(head, b"", True, extra, self.resp_drop, pending=True)
        if head.status == 101:
            mode = b"upgrade"
        elif self.method == b"HEAD" or head.status in (204, 304):
            mode = b"none"
        elif framing == b"length":
            mode = b"length"
        elif framing == b"chunked":
            mode = b"chunked"
        else:
            mode = b"close"  # delimited by the upstream closing: re-framed as chunked for the client
        keep_alive = self.keep_alive and (mode != b"close" or self.version == "1.1") and not server.draining
        self.keep_alive = keep_alive
        tail = b"transfer-encoding: chunked\r\n" if mode in (b"chunked", b"close") and self.version == "1.1" else b""
        if head.status == 101:
            tail += b"connection: upgrade\r\n"
        elif not keep_alive:
            tail += b"connection: close\r\n"
        server.send_response(rendered + tail + b"\r\n", head.status, self)
        if mode == b"upgrade":
            self.server.upgrade_to(client)
        return mode

    def send_response_body(self, body: bytes, mode: bytes) -> None:
        self.tx += len(body)
        if mode == b"length" or self.version != "1.1":
            self.server.write(body)
        else:
            self.server.write(chunk(body))

    def response_complete(self, client: ClientConnection) -> None:
        if self.client is not None and client.body_mode in (b"chunked", b"close") and self.version == "1.1":
            self.server.write(LAST_CHUNK)
        reuse = client.keep_alive and self.request_done and not client.closed
        self.server.exchange_done(self, client, reuse)

    def upstream_lost(self, client: ClientConnection) -> None:
        if self.response_status is None:
            call = self.call
            if call is not None:
                self.client = None
                call.on_reset()
                return
            self.upstream_failed(503, "upstream connection reset before the response headers")
        elif client.body_mode == b"close" and not client.upgraded:
            self.response_complete(client)  # a close-delimited answer ends with the connection
        else:
            self.server.abort()  # mid-body: the client must not take a truncated answer as whole

    def upstream_failed(self, status: int, reason: str, headers: bytes = b"") -> None:
        self.deadline = 0.0
        if self.response_status is not None:
            self.server.abort()
            return
        self.server.local_response(self, status, reason, headers)


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
        on_done: Callable[[Exchange], None] | None = None,
    ):
        self.side = side
        side.relay = self  # type: ignore[assignment]
        self.handle = handle
        self.on_response = on_response
        self.on_close = on_close
        self.on_done = on_done
        self.peer_ip = peer_ip
        self.extra_response_headers = extra_response_headers
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the one being parsed
        self.closed = False
        self.paused = 0  # PAUSE_* reasons
        self.upgraded_to: ClientConnection | None = None
        self.throttled: ClientConnection | None = None  # the client connection our back-pressure paused
        self.draining = False
        self.idle_since = time.monotonic()
        self.out: list[bytes] | None = None  # writes held while a client connection's read is being parsed
        self.tunnel: Relay | None = None  # an upgraded connection, carried by the native data path once .native

    def counts(self) -> tuple[int, int]:
        carried = self.tunnel.native if self.tunnel is not None else None
        return (self.side.nbytes + (carried.counts()[0] if carried is not None else 0), 0)

    # -- owner protocol for the Side

    def side_lost(self, side: Side) -> None:
        self.closed = True
        self._abort_exchanges()
        if self.upgraded_to is not None:
            self.upgraded_to.close()
        self._unthrottle()
        self.on_close(self)

    def _abort_exchanges(self) -> None:
        for ex in self.queue:
            ex.deadline = 0.0
            if ex.client is not None:
                ex.detach()  # mid-exchange: the upstream connection cannot be reused
            ex.response_status = ex.response_status or 0  # a dial still under way must not attach
            ex.out = None
            self._finish(ex)
        self.queue.clear()

    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(data)
        else:
            self.side.send(data)

    def flush(self) -> None:
        out = self.out
        if out is None:
            return
        self.out = None
        if out and not self.side.lost:
            self.side.send(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.tunnel is not None and self.tunnel.native is not None:
            self.tunnel.close()
            return
        self.flush()
        self.side.close()

    def abort(self) -> None:
        if self.tunnel is not None and self.tunnel.native is not None:
            self.tunnel.abort()
            return
        self.out = None
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
        if self.idle():
            self.close()

    def idle(self) -> bool:
        return not self.queue and self.current is None and self.upgraded_to is None

    # -- flow control

    def pause(self, reason: int) -> None:
        if not self.paused and self.side.transport is not None and not self.side.lost:
            self.side.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.side.transport is not None and not self.side.lost:
            self.side.transport.resume_reading()

    def peer_pause(self) -> None:
        """Our write buffer towards the client is full: stop reading from the upstream connection feeding it."""
        up = self.upgraded_to
        if up is None and self.queue:
            up = self.queue[0].client
        if up is not None and self.throttled is None:
            self.throttled = up
            up.pause_reading()

    def peer_resume(self) -> None:
        self._unthrottle()

    def _unthrottle(self) -> None:
        up = self.throttled
        if up is not None:
            self.throttled = None
            up.resume_reading()

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
            result = self.handle(ex)  # _start, inlined: this is the path of every request
            if result is not None:
                asyncio.ensure_future(result).add_done_callback(_log_failure)
        else:
            self.pause(PAUSE_PIPELINE)  # pipelined: one exchange at a time, the next waits its turn

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

    def _finish(self, ex: Exchange) -> None:
        if not ex.finished:
            ex.finished = True
            if self.on_done is not None:
                self.on_done(ex)

    def send_response(self, head: bytes, status: int, ex: Exchange) -> None:
        self.on_response(ex, status)
        self.write(head)

    def local_response(self, ex: Exchange, status: int, reason: str, headers: bytes = b"") -> None:
        """An answer made here (403, 503, 504...): the request never reached (or never left) the app."""
        ex.response_status = status
        if ex.client is not None:
            if self.throttled is ex.client:
                self.throttled = None
            ex.detach()  # mid-exchange (a timeout, a malformed answer): that connection is done
        # Keep the connection only if the whole request body has been read (else the next bytes
        # would be taken for a new request).
        keep = ex.keep_alive and ex.request_done and not ex.upgrade and not self.draining
        self.on_response(ex, status)
        self.write(simple_response(status, reason, keep_alive=keep, extra=headers + self.extra_response_headers))
        if ex.out_size > BODY_BUFFER_LIMIT:
            self.resume(PAUSE_BUFFER)  # the rest of the body is read and dropped
        ex.out = None
        self._finish(ex)
        if keep:
            self._next(ex)
        else:
            self.close()

    def exchange_done(self, ex: Exchange, client: ClientConnection, reuse: bool) -> None:
        if self.throttled is client:
            self.throttled = None
            client.resume_reading()
        if reuse and client.pool is not None:
            client.pool.release(client)
        else:
            client.close()
        self._finish(ex)
        if not ex.keep_alive or self.draining:
            self.close()
            return
        self._next(ex)

    def _next(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if self.queue:
            self._start(self.queue[0])
        else:
            self.idle_since = time.monotonic()
            self.resume(PAUSE_PIPELINE)

    def upgrade_to(self, client: ClientConnection) -> None:
        """101 Switching Protocols: from now on, bytes both ways as they are."""
        self.upgraded_to = client
        ex = self.queue[0] if self.queue else None
        if ex is not None:
            ex.out = None  # everything received so far went upstream when the request was attached
        if native.available():
            # A tunnel is an L4 relay from now on (a WebSocket may carry traffic for hours): the relay's own
            # hand-over, once this read's writes (the 101 itself) have gone. Until it happens, or if it never does
            # (an end of stream first), this connection and ``client`` go on relaying in Python.
            relay = Relay(on_close=lambda _r: self._tunnel_closed(client))
            relay.down, relay.up, relay.started = self.side, client.side, True
            self.tunnel = relay
            asyncio.get_running_loop().call_soon(relay._try_hand_over, HAND_OVER_FIRST_RETRY)

    def _tunnel_closed(self, client: ClientConnection) -> None:
        # What the two sockets' connection_lost would have done: the exchange ends, the listener counts it.
        client.side_lost(client.side)
        if not self.closed:
            self.side_lost(self.side)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("request handling failed: %r", task.exception())
