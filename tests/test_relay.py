"""The L4 relay's data path, in process, on both implementations: the native one (gateway/_relaycore.c) and the
Python one it replaces. Real sockets and real TLS on loopback:

    client ──plain──► relay A ──mTLS (client side)──► relay B ──plain──► app
               (Side → TLSSide)              (TLSSide server → Side)

Each relay is built the way the listeners build theirs (accept into ``relay.down``, dial into ``relay.up``,
``start()``), so ``start()`` hands the sockets to the native core exactly as in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvloop

from connect.ca import BuiltinCA
from gateway import l4, native
from gateway.tls import client_context, server_context

IMPLS = ["native", "python"]


def test_native_relay_is_built_and_usable() -> None:
    # The install builds gateway/_relaycore.c (setup.py); if it silently did not, every relay would run on the
    # slower Python path and the other tests here would only test that one.
    assert native.available(), native.why_not


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = BuiltinCA.init(tmp_path_factory.mktemp("ca"), "relay.test")
    web = ca.issue("web", "dc1", 3600)
    api = ca.issue("api", "dc1", 3600)
    roots = ca.roots_pem()
    return client_context(roots, web.cert_pem, web.key_pem), server_context(roots, api.cert_pem, api.key_pem)


class Pair:
    """Relay A (plaintext in, mTLS out) and relay B (mTLS in, plaintext to the app) on one event loop thread."""

    def __init__(self, impl: str, ctxs: tuple[ssl.SSLContext, ssl.SSLContext], app_port: int, sndbuf: int = 0):
        self.impl = impl
        self.sndbuf = sndbuf  # SO_SNDBUF of relay A's mTLS socket (0: the kernel's)
        self.client_ctx, self.server_ctx = ctxs
        self.app_port = app_port
        self.loop = uvloop.new_event_loop()
        self.relays: list[l4.Relay] = []
        self.closed: list[l4.Relay] = []
        self.counts: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.front = self.back = 0

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def _on_close(self, relay: l4.Relay) -> None:
        self.closed.append(relay)
        self.counts.append(relay.counts())

    def _new(self) -> l4.Relay:
        r = l4.Relay(on_close=self._on_close)
        self.relays.append(r)
        return r

    async def _serve_b(self, relay: l4.Relay, side: l4.TLSSide) -> None:
        try:
            await side.handshake
            await self.loop.create_connection(lambda: relay.up, "127.0.0.1", self.app_port)
        except (OSError, ssl.SSLError):
            relay.abort()
            return
        relay.start()

    def _accept_b(self) -> asyncio.Protocol:
        relay = self._new()
        side = l4.TLSSide(relay, self.server_ctx, server_side=True)
        relay.down = side
        side.on_made = lambda _t: self.loop.create_task(self._serve_b(relay, side))
        return side

    async def _dial_a(self, relay: l4.Relay) -> None:
        up = l4.TLSSide(relay, self.client_ctx, server_side=False, server_hostname="api.default.dc1.internal.x")
        relay.up = up
        try:
            if self.sndbuf:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
                sock.setblocking(False)
                await self.loop.sock_connect(sock, ("127.0.0.1", self.back))
                await self.loop.create_connection(lambda: up, sock=sock)
            else:
                await self.loop.create_connection(lambda: up, "127.0.0.1", self.back)
            await up.handshake
        except (OSError, ssl.SSLError):
            relay.abort()
            return
        relay.start()

    def _accept_a(self) -> asyncio.Protocol:
        relay = self._new()
        relay.down.on_made = lambda _t: self.loop.create_task(self._dial_a(relay))
        return relay.down

    async def _start(self) -> None:
        b = await self.loop.create_server(self._accept_b, "127.0.0.1", 0)
        a = await self.loop.create_server(self._accept_a, "127.0.0.1", 0)
        self.back = b.sockets[0].getsockname()[1]
        self.front = a.sockets[0].getsockname()[1]

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def native_relays(self) -> int:
        return self.call(lambda: sum(1 for r in self.relays if r.native is not None))

    def stop(self) -> None:
        self.call(lambda: [r.abort() for r in self.relays])
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class App:
    """A TCP app in a thread running ``handler(conn)`` per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handler(conn)
        except BaseException as e:  # reported by the test
            self.errors.append(e)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def pair(
    impl: str,
    ctxs: tuple[ssl.SSLContext, ssl.SSLContext],
    handler: Callable[[socket.socket], None],
    sndbuf: int = 0,
) -> Iterator[Pair]:
    if impl == "native" and not native.available():
        pytest.skip(f"native relay: {native.why_not}")
    saved = native._module
    if impl == "python":
        native._module = None
    app = App(handler)
    p = Pair(impl, ctxs, app.port, sndbuf)
    try:
        p.start()
        yield p
        assert not app.errors, app.errors
    finally:
        p.stop()
        app.close()
        native._module = saved


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(65536, n - len(buf)))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(s: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := s.recv(65536):
        buf += chunk
    return bytes(buf)


def wait(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("impl", IMPLS)
def test_small_messages_both_ways_and_counts(impl: str, contexts: Any) -> None:
    with pair(impl, contexts, echo) as p, socket.create_connection(("127.0.0.1", p.front), timeout=10) as s:
        for i in range(200):
            msg = b"ping %d " % i * (i % 7 + 1)
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
        if impl == "native":
            assert p.native_relays() == 2  # both relays of the pair run natively
        sent = sum(len(b"ping %d " % i * (i % 7 + 1)) for i in range(200))
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b""
        wait(lambda: len(p.counts) == 2, "both relays to close")
        # Each relay counts the plaintext it took from each end: all of it, both ways.
        assert p.counts == [(sent, sent), (sent, sent)]


def sha_then_payload(conn: socket.socket) -> None:
    """Reads everything until the client's half-close, then answers with its digest and 8 MiB of its own."""
    h = hashlib.sha256()
    while data := conn.recv(65536):
        h.update(data)
    conn.sendall(h.digest())
    conn.sendall(PAYLOAD)


PAYLOAD = os.urandom(8 << 20)


@pytest.mark.parametrize("impl", IMPLS)
def test_bulk_both_ways_with_half_close(impl: str, contexts: Any) -> None:
    upload = os.urandom(8 << 20)
    with pair(impl, contexts, sha_then_payload) as p, socket.create_connection(("127.0.0.1", p.front)) as s:
        s.settimeout(20)
        s.sendall(upload)
        s.shutdown(socket.SHUT_WR)  # crosses the TLS hop as close_notify and reaches the app as a FIN
        got = recv_all(s)
        assert got[:32] == hashlib.sha256(upload).digest()
        assert got[32:] == PAYLOAD


def slow_reader(conn: socket.socket) -> None:
    """Sends 16 MiB while reading nothing, then reads the client's 16 MiB slowly: both directions fill up."""
    import time

    conn.sendall(PAYLOAD * 2)
    h = hashlib.sha256()
    total = 0
    while total < len(PAYLOAD) * 2:
        data = conn.recv(16384)
        if not data:
            break
        total += len(data)
        h.update(data)
        time.sleep(0.0002)
    conn.sendall(h.digest())


@pytest.mark.parametrize("impl", IMPLS)
def test_back_pressure_keeps_every_byte(impl: str, contexts: Any) -> None:
    upload = PAYLOAD[::-1] * 2
    with pair(impl, contexts, slow_reader) as p, socket.create_connection(("127.0.0.1", p.front)) as s:
        s.settimeout(30)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                s.sendall(upload)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=send)
        t.start()
        # Read nothing for a while: the app's 16 MiB must wait in bounded buffers, not be dropped.
        import time

        time.sleep(0.5)
        got = recv_exactly(s, len(PAYLOAD) * 2 + 32)
        t.join(30)
        assert not errors
        assert got[: len(PAYLOAD) * 2] == PAYLOAD * 2
        assert got[-32:] == hashlib.sha256(upload).digest()


def reset_after_hello(conn: socket.socket) -> None:
    conn.recv(100)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


@pytest.mark.parametrize("impl", IMPLS)
def test_app_reset_closes_the_client_promptly(impl: str, contexts: Any) -> None:
    with pair(impl, contexts, reset_after_hello) as p, socket.create_connection(("127.0.0.1", p.front)) as s:
        s.settimeout(5)
        s.sendall(b"hello")
        try:
            rest = recv_all(s)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        # The client got the end of the stream (half-close passes through); once it closes too, both relays end.
        s.close()
        wait(lambda: len(p.closed) == 2, f"both relays to close ({len(p.closed)} of {len(p.relays)})")


def hold_open(conn: socket.socket) -> None:
    conn.sendall(b"ready")
    conn.recv(1)  # until the relay closes towards us


@pytest.mark.parametrize("impl", IMPLS)
def test_close_from_the_proxy_ends_both_connections(impl: str, contexts: Any) -> None:
    # What drain on SIGTERM does past its timeout, and what a graceful close does: both peers see an end.
    with pair(impl, contexts, hold_open) as p, socket.create_connection(("127.0.0.1", p.front)) as s:
        s.settimeout(5)
        assert recv_exactly(s, 5) == b"ready"
        p.call(lambda: [r.close() for r in list(p.relays)])
        assert recv_all(s) == b""
        wait(lambda: len(p.closed) == 2, "both relays to close")


@pytest.mark.parametrize("impl", IMPLS)
def test_client_keeps_the_session_ticket_for_resumption(impl: str, contexts: Any) -> None:
    # The first server records carry the TLS 1.3 ticket; the dialing side must still keep it once the data path
    # is native, or every new connection pays a full handshake.
    client_ctx = contexts[0]
    with pair(impl, contexts, echo) as p:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", p.front), timeout=5) as s:
                s.sendall(b"x")
                assert recv_exactly(s, 1) == b"x"
        wait(lambda: bool(client_ctx.__dict__.get("_meshgw_sessions")), "a saved session")
        a_relays = [r for r in p.call(lambda: list(p.relays)) if isinstance(r.up, l4.TLSSide)]
        assert a_relays[-1].up.sslobj.session_reused


def test_python_fallback_when_native_is_unavailable(contexts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_module", None)
    assert not native.available()
    assert "Python" in native.describe()
    with pair("python", contexts, echo) as p, socket.create_connection(("127.0.0.1", p.front), timeout=5) as s:
        s.sendall(b"abc")
        assert recv_exactly(s, 3) == b"abc"
        assert p.native_relays() == 0


def test_native_refuses_a_foreign_ssl_object() -> None:
    if not native.available():
        pytest.skip(native.why_not)
    core = native._module.Core()  # type: ignore[union-attr]
    a, b = socket.socketpair()
    try:
        with pytest.raises(TypeError):
            core.relay(a.fileno(), object(), object(), b.fileno(), None, None, lambda r: None, None, -1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())._sslobj  # type: ignore[attr-defined]
        with pytest.raises(TypeError):  # the context passed is not the object's
            core.relay(a.fileno(), obj, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), b.fileno(), None, None,
                       lambda r: None, None, -1)
        with pytest.raises(ValueError):  # no handshake yet
            core.relay(a.fileno(), obj, ctx, b.fileno(), None, None, lambda r: None, None, -1)
    finally:
        a.close()
        b.close()



def chunked_echo(conn: socket.socket) -> None:
    """Echoes what it reads in pieces of its own sizes, then half-closes when the client did."""
    import random

    rng = random.Random(conn.fileno())
    while data := conn.recv(rng.choice((1, 7, 512, 16384, 65536))):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("impl", IMPLS)
def test_many_connections_with_odd_write_sizes(impl: str, contexts: Any) -> None:
    # Twenty connections at once, each writing its own payload in sizes that straddle TLS record and read-buffer
    # boundaries (1 byte, a record and one byte, 64 KiB and more), reading the echo concurrently: every byte
    # comes back in order on its own connection, and every relay ends.
    import random

    results: dict[int, bytes] = {}
    payloads = {n: os.urandom(random.Random(n).randint(1, 600_000)) for n in range(20)}

    def client(n: int, port: int) -> None:
        rng = random.Random(1000 + n)
        data = payloads[n]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            got = bytearray()
            reader = threading.Thread(target=lambda: got.extend(recv_all(s)))
            reader.start()
            i = 0
            while i < len(data):
                step = rng.choice((1, 100, 16385, 65536, 200_000))
                s.sendall(data[i : i + step])
                i += step
            s.shutdown(socket.SHUT_WR)
            reader.join(20)
            results[n] = bytes(got)

    with pair(impl, contexts, chunked_echo) as p:
        threads = [threading.Thread(target=client, args=(n, p.front)) for n in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == sorted(payloads)
        for n, data in payloads.items():
            assert results[n] == data, f"connection {n}: {len(results[n])} of {len(data)} bytes, or out of order"
        wait(lambda: len(p.closed) == 2 * len(payloads), "every relay to close")


def late_echo(conn: socket.socket) -> None:
    import time

    time.sleep(0.3)  # reads nothing at first: what the client sends queues up in the relays
    echo(conn)


def test_relay_with_queued_bytes_goes_native_once_they_drain(contexts: Any) -> None:
    # A client that writes a lot before the app reads leaves bytes queued in the event loop's transports when the
    # relay starts; the hand-over waits for them to drain instead of keeping the connection in Python for life.
    data = os.urandom(4 << 20)
    # A small send buffer on relay A's mTLS socket: what it held while dialing cannot all go into the socket.
    with pair("native", contexts, late_echo, sndbuf=4096) as p, socket.create_connection(("127.0.0.1", p.front)) as s:
        s.settimeout(20)
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(recv_exactly(s, len(data))))
        reader.start()
        s.sendall(data)
        reader.join(20)
        assert bytes(got) == data
        wait(lambda: p.native_relays() == 2, "both relays to be handed over", timeout=15)
        s.sendall(b"after")
        assert recv_exactly(s, 5) == b"after"


def stall_then_drain(conn: socket.socket) -> None:
    import time

    time.sleep(1.5)  # reads nothing: everything the client sends must wait in bounded buffers
    conn.sendall(hashlib.sha256(recv_exactly(conn, STALLED_UPLOAD)).digest())


STALLED_UPLOAD = 32 << 20


def test_native_queue_stays_bounded_while_the_app_does_not_read(contexts: Any) -> None:
    # Relay B decrypts from the mesh and writes to an app that reads nothing: once its queue towards the app
    # passes the high-water mark it must stop reading the TLS socket (records already inside OpenSSL excepted),
    # so TCP's own window pushes back on the sender, instead of the queue growing with the upload. The sender is
    # a TLS client in its own thread (one SSL_write for the whole upload, without the GIL), as a caller's sidecar
    # in its own process would be.
    import time

    upload = os.urandom(STALLED_UPLOAD)
    with pair("native", contexts, stall_then_drain) as p:
        raw = socket.create_connection(("127.0.0.1", p.back))
        s = contexts[0].wrap_socket(raw, server_hostname="api.default.dc1.internal.x")
        s.settimeout(30)
        sender = threading.Thread(target=lambda: s.sendall(upload))
        sender.start()
        deadline = time.monotonic() + 1.2
        most = 0
        while time.monotonic() < deadline:
            queued = p.call(lambda: [r.native.queued() for r in p.relays if r.native is not None])
            most = max([most, *(max(q) for q in queued)])
            time.sleep(0.01)
        assert 0 < most <= 512 * 1024 + 64 * 1024, most
        sender.join(20)  # one SSL object must not be read and written from two threads at once
        assert not sender.is_alive()
        assert recv_exactly(s, 32) == hashlib.sha256(upload).digest()
        s.close()
