"""The native HTTP engine (gateway/_httpcore.c) on its own, over real sockets: a downstream connection served by
the engine, Python decisions as a listener makes them, and a scripted upstream that answers each request with
the bytes a test chooses. What the sidecar e2e tests cannot steer: framing corner cases, malformed input on
either side, resets, replays, pipelining, the fallback to the Python proxy, bounded queues."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway import native

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")


def on_a_loop(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test on its own event loop (no pytest plugin needed), within a minute."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return run

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message (head, body as framed on the wire) from a stream; (b"", b"") at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b"", b""
    low = head.lower()
    if b"transfer-encoding: chunked" in low:
        body = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            body += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while True:
                    t = await reader.readuntil(b"\r\n")
                    body += t
                    if t == b"\r\n":
                        return head, body
            body += await reader.readexactly(size + 2)
    m = re.search(rb"content-length: *(\d+)", low)
    return head, (await reader.readexactly(int(m.group(1))) if m else b"")


class Upstream:
    """An upstream server: ``answer(head, body)`` gives the bytes to send back (None: close without a word)."""

    def __init__(self, answer: Callable[[bytes, bytes], Any]):
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head, body = await read_message(reader)
                if not head:
                    break
                self.requests.append((head, body))
                out = self.answer(head, body)
                if asyncio.iscoroutine(out):
                    out = await out
                if out is None:
                    writer.transport.abort()
                    return
                writer.write(out)
                await writer.drain()
                if b"connection: close" in out.split(b"\r\n\r\n")[0].lower():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]  # type: ignore[no-any-return]


class Token:
    """What a listener's NativeExchange does, reduced to what these tests look at."""

    def __init__(self, front: Front, conn: Any, method: bytes, url: bytes):
        self.front, self.conn, self.method, self.url = front, conn, method, url
        self.finished: tuple[Any, ...] | None = None
        self.lost = 0

    def upstream_lost(self) -> None:
        self.lost += 1
        if self.front.retry and self.lost == 1 and self.conn.can_replay():
            self.front.dial(self)
        else:
            self.conn.respond(503, "upstream connection reset before the response headers")

    def on_head(self, status: int) -> bool:
        return False

    def finish(self, client: Any) -> None:
        self.finished = self.conn.stats()
        if client is not None:
            self.front.idle.append(client)


class Front:
    """A listening socket whose connections the engine serves; each request goes to ``upstream_port``."""

    def __init__(self, upstream_port: int, replay: bool = False, retry: bool = False):
        self.upstream_port = upstream_port
        self.replay = replay
        self.retry = retry
        self.tokens: list[Token] = []
        self.malformed = 0
        self.fallbacks = 0
        self.conns: list[Any] = []
        self.closed: list[Any] = []
        self.idle: list[Any] = []
        self.loop = asyncio.get_running_loop()
        self.core = native.core(self.loop)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            s, addr = self.sock.accept()
        except BlockingIOError:
            return
        conn = self.core.http(
            s.detach(), None, None, self.on_request, self.on_fallback, self.closed.append, addr[0], b""
        )
        self.conns.append(conn)
        conn.start()

    def on_request(self, conn: Any, method: bytes | None, url: bytes | None) -> Any:
        if method is None:
            self.malformed += 1
            return None
        tok = Token(self, conn, method, url or b"")
        self.tokens.append(tok)
        conn.prepare(None, b"x-added: 1\r\n", None, b"", None, self.replay, False)
        self.dial(tok)
        return tok

    def dial(self, tok: Token) -> None:
        while self.idle:
            client = self.idle.pop()
            if not client.closed:
                tok.conn.forward(client)
                return
        s = socket.create_connection(("127.0.0.1", self.upstream_port))
        s.setblocking(False)
        client = self.core.upstream(s.detach(), None, None)
        client.start()
        tok.conn.forward(client)

    def on_fallback(self, conn: Any, fd: int) -> Any:
        """The Python proxy's stand-in: it answers whatever arrives with 'fallback' and closes."""
        self.fallbacks += 1
        sock = socket.socket(fileno=fd)

        async def serve() -> None:
            reader, writer = await asyncio.open_connection(sock=sock)
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(head), head))
            await writer.drain()
            writer.close()

        self.loop.create_task(serve())
        return lambda _relay: None

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for c in self.conns + self.idle:
            c.abort()


@asynccontextmanager
async def setup(answer: Callable[[bytes, bytes], Any], **kw: Any) -> AsyncIterator[tuple[Front, Upstream]]:
    up = Upstream(answer)
    port = await up.start()
    front = Front(port, **kw)
    try:
        yield front, up
    finally:
        front.close()
        assert up.server is not None
        up.server.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def exchange(port: int, data: bytes, n: int = 1) -> tuple[list[tuple[bytes, bytes]], asyncio.StreamReader]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = [await asyncio.wait_for(read_message(reader), 10) for _ in range(n)]
    writer.close()
    return out, reader


async def raw_answer(port: int, data: bytes) -> bytes:
    """Everything the engine sends back until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return got


@on_a_loop
async def test_forwarding_headers_hop_by_hop_and_ids() -> None:
    async with setup(lambda h, b: ok(extra=b"Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-App: 1\r\n")) as (
        front,
        up,
    ):
        req = (
            b"GET /a?b=1 HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, Foo\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
            b"X-Forwarded-For: 10.0.0.1\r\nProxy-Connection: x\r\n\r\n"
        )
        # "Connection: ..., Foo" names another field: the Python proxy serves that one
        (resp,), _ = await exchange(front.port, req.replace(b", Foo", b""))
    head, body = resp
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"ok"
    assert b"x-app: 1" in head.lower() and b"keep-alive" not in head.lower()
    sent = up.requests[0][0].decode().lower()
    assert sent.startswith("get /a?b=1 http/1.1\r\n")
    for gone in ("connection:", "keep-alive:", "te:", "proxy-connection:"):
        assert gone not in sent
    assert "x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n" in sent and "x-added: 1\r\n" in sent
    ids = dict(line.split(": ", 1) for line in sent.split("\r\n")[1:] if ": " in line)
    assert UUID4.match(ids["x-request-id"].encode())
    version, trace, span, flags = ids["traceparent"].split("-")
    assert (version, flags, len(trace), len(span)) == ("00", "01", 32, 16)
    tok = front.tokens[0]
    assert tok.finished is not None and tok.finished[0] == 200
    assert tok.conn.info() == (ids["x-request-id"].encode(), ids["traceparent"].encode())


@on_a_loop
async def test_pipelined_requests_are_answered_in_order_on_one_upstream_connection() -> None:
    async with setup(lambda h, b: ok(h.split(b" ")[1])) as (front, up):
        resps, _ = await exchange(front.port, b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)), 5)
    assert [b for _, b in resps] == [b"/%d" % i for i in range(5)]
    assert up.connections == 1 and len(front.tokens) == 5


@on_a_loop
async def test_long_request_ids_and_many_forwarding_lines_are_kept_whole() -> None:
    async with setup(lambda h, b: ok()) as (front, up):
        rid = b"r" * 200
        xff = b"".join(b"X-Forwarded-For: 10.0.0.%d\r\n" % i for i in range(12))
        req = b"GET / HTTP/1.1\r\nHost: a\r\nx-request-id: %s\r\n%sForwarded: for=a\r\n\r\n" % (rid, xff)
        await exchange(front.port, req)
    sent = up.requests[0][0].decode()
    assert sent.count("x-request-id") == 1 and front.tokens[0].conn.info()[0] == rid
    chain = ", ".join(f"10.0.0.{i}" for i in range(12))
    assert f"x-forwarded-for: {chain}, 127.0.0.1\r\n" in sent and "forwarded: for=a, for=127.0.0.1\r\n" in sent


@on_a_loop
async def test_a_long_pipeline_behind_a_slow_answer_is_served_whole() -> None:
    release = asyncio.Event()

    async def answer(h: bytes, b: bytes) -> bytes:
        if h.startswith(b"GET /0 "):
            await release.wait()
        return ok(h.split(b" ")[1])

    async with setup(answer) as (front, _up):
        n = 400  # about 100 KiB of requests waiting behind the first: past what is read ahead
        reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 200) for i in range(n))
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(reqs)
        await asyncio.sleep(0.3)
        release.set()
        bodies = [(await asyncio.wait_for(read_message(reader), 10))[1] for _ in range(n)]
        assert bodies == [b"/%d" % i for i in range(n)]
        writer.close()


@on_a_loop
async def test_chunked_both_ways_with_trailers_and_a_close_delimited_answer() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            # no length, not chunked: it ends with the connection
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
            ok(),
        ]
    )

    async def answer(h: bytes, b: bytes) -> bytes:
        out = next(answers)
        return out

    async with setup(answer) as (front, up):
        body = b"5\r\nhello\r\n6;ext\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        req = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        resps, _ = await exchange(front.port, req + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 3)
        # passed through as it came, but for the trailer section: dropped, as by the Python proxy and Envoy
        assert up.requests[0][1] == body.replace(b"X-Trailer: t\r\n", b"")
        (h1, b1), (h2, b2), (_h3, b3) = resps
        assert b"transfer-encoding: chunked" in h1.lower() and b1 == b"3;x=y\r\nabc\r\n0\r\n\r\n"
        assert b"transfer-encoding: chunked" in h2.lower() and b2 == b"d\r\nuntil the end\r\n0\r\n\r\n"
        assert b3 == b"ok"
        assert up.connections == 2  # the close-delimited answer's connection could not be reused


@on_a_loop
async def test_head_204_304_and_interim_answers() -> None:
    answers = {
        b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        b"/204": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/304": b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
        b"/103": b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n" + ok(b"final"),
    }
    async with setup(lambda h, b: answers[h.split(b" ")[1]]) as (front, up):
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: 1000" in head  # a HEAD answer's length, with no body after it
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204")
        writer.write(b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET /103 HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 304") and b"etag: x" in head
        early = await reader.readuntil(b"\r\n\r\n")
        assert early.startswith(b"HTTP/1.1 103") and b"link:" in early
        final, body = await read_message(reader)
        assert final.startswith(b"HTTP/1.1 200") and body == b"final"
        writer.close()
        assert up.connections == 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x01b\r\nx\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nno colon\r\n\r\n", 400),
    ],
)
@on_a_loop
async def test_malformed_requests_get_an_error_and_reach_nobody(raw: bytes, status: int) -> None:
    async with setup(lambda h, b: ok()) as (front, up):
        got = await raw_answer(front.port, raw)
    assert got.startswith(b"HTTP/1.1 %d" % status) and b"connection: close" in got, got
    assert not up.requests or (status == 400 and raw.startswith(b"POST"))
    assert front.malformed == (0 if raw.startswith(b"POST") else 1)


@on_a_loop
async def test_requests_it_does_not_serve_fall_back_to_the_python_proxy() -> None:
    async with setup(lambda h, b: ok()) as (front, up):
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        _head, body = await read_message(reader)
        assert body == b"ok"
        writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        _head, body = await asyncio.wait_for(read_message(reader), 10)
        assert body.startswith(b"GET /ws HTTP/1.1") and b"Upgrade: websocket" in body  # served by the fallback
        assert await reader.read() == b""  # which closed: so does the client's connection
        writer.close()
        for raw in (
            b"GET /old HTTP/1.0\r\n\r\n",
            b"PUT /e HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ):
            got = await raw_answer(front.port, raw)
            assert got.endswith(raw), got
        assert front.fallbacks == 4 and len(up.requests) == 1


@on_a_loop
async def test_reset_before_the_answer_is_replayed_once_on_a_new_connection() -> None:
    calls = 0

    def answer(h: bytes, b: bytes) -> bytes | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else ok(b)

    async with setup(answer, replay=True, retry=True) as (front, up):
        (resp,), _ = await exchange(front.port, b"PUT /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        assert resp[1] == b"hello" and [b for _, b in up.requests] == [b"hello", b"hello"]
        assert front.tokens[0].lost == 1 and up.connections == 2
    async with setup(lambda h, b: None) as (front, up):  # without a replay: 503
        (resp,), _ = await exchange(front.port, b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp[0].startswith(b"HTTP/1.1 503")


@pytest.mark.parametrize(
    "bad",
    [b"HTTP/1.1 2OO OK\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n", b"nonsense\r\n\r\n", b"HTTP/1.1 200 OK\nx: y\n\n"],
)
@on_a_loop
async def test_a_malformed_answer_gets_502(bad: bytes) -> None:
    async with setup(lambda h, b: bad) as (front, _up):
        (resp,), _ = await exchange(front.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp[0].startswith(b"HTTP/1.1 502") and b"malformed" in resp[1]


@on_a_loop
async def test_request_deadline_runs_from_the_end_of_the_request() -> None:
    release = asyncio.Event()

    async def answer(h: bytes, b: bytes) -> bytes:
        await release.wait()
        return ok()

    async with setup(answer) as (front, _up):
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        for _ in range(100):
            if front.tokens:
                break
            await asyncio.sleep(0.01)
        conn = front.tokens[0].conn
        conn.arm_timeout(5.0)
        assert conn.deadline == 0.0  # the body is not whole yet
        writer.write(b"cd")
        for _ in range(100):
            if conn.deadline:
                break
            await asyncio.sleep(0.01)
        assert conn.deadline > asyncio.get_running_loop().time() - 1
        conn.respond(504, "upstream request timeout")  # what the listener's ticker does once it passed
        head, body = await read_message(reader)
        assert head.startswith(b"HTTP/1.1 504") and body == b"upstream request timeout\n"
        release.set()
        writer.close()


@on_a_loop
async def test_queue_towards_a_client_that_does_not_read_stays_bounded() -> None:
    size = 64 << 20
    sent = 0

    async def answer(h: bytes, b: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size

    class BigUpstream(Upstream):
        async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await read_message(reader)
            writer.write(await answer(b"", b""))
            block = b"z" * (1 << 20)
            try:
                while sent < size:
                    writer.write(block)
                    sent += len(block)
                    await writer.drain()
            except ConnectionError:
                pass

    up = BigUpstream(answer)
    front = Front(await up.start())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port, limit=1 << 16)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(1.5)
        conn = front.conns[0]
        assert conn.queued() <= 2 << 20, conn.queued()
        assert sent < size // 2  # the upstream was held back, not read into memory
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        head = await reader.readuntil(b"\r\n\r\n")
        got = 0
        while got < size:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk
            got += len(chunk)
        assert got == size and head.startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        front.close()
        assert up.server is not None
        up.server.close()


@on_a_loop
async def test_an_early_answer_ends_the_exchange_and_the_rest_of_the_body_is_dropped() -> None:
    class EarlyUpstream(Upstream):
        async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")  # the body is never read: refused at the head
            self.requests.append((head, b""))
            writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

    up = EarlyUpstream(lambda h, b: None)
    front = Front(await up.start())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        head, _ = await asyncio.wait_for(read_message(reader), 10)
        assert head.startswith(b"HTTP/1.1 413"), head
        # As the Python proxy (and Envoy): the connection stays; the rest of that body is read and dropped.
        writer.write(b"56789GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _ = await asyncio.wait_for(read_message(reader), 10)
        assert head.startswith(b"HTTP/1.1 413")
        assert [h.split(b" ")[1] for h, _ in up.requests] == [b"/u", b"/next"]
        writer.close()
        assert [t.finished[0] for t in front.tokens if t.finished] == [413, 413]
    finally:
        front.close()
        assert up.server is not None
        up.server.close()


@on_a_loop
async def test_pool_closes_every_idle_connection_even_when_closing_tells_it_at_once() -> None:
    """A native connection's close() reports its loss to the pool before returning (the reap runs then)."""
    from gateway.http.pool import ConnectionPool

    class Conn:
        native = True

        def __init__(self) -> None:
            self.key = ("a", 1)
            self.closed = False
            self.idle_since = 0.0

        def close(self) -> None:
            self.closed = True
            self.lost_cb(self)  # type: ignore[attr-defined]

    pool = ConnectionPool()
    conns = [Conn() for _ in range(5)]
    for c in conns:
        pool.add(c)  # type: ignore[arg-type]
        pool.release(c)  # type: ignore[arg-type]
    assert pool.close_idle(time.monotonic() + 1) == 5
    assert all(c.closed for c in conns) and pool.total == 0 and not pool.idle_native[("a", 1)]
