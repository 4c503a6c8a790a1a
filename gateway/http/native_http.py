"""HTTP connections served by the native engine (gateway/_httpcore.c), and the Python side of its exchanges.

The engine parses, frames and relays; Python decides. A listener hands an accepted connection over with
``serve`` (its TLS session, if any, included) and gets ``on_request(conn, method, url)`` per request, where it
makes a ``NativeExchange``: the same interface as ``gateway.http.proxy.Exchange`` for what the listeners and the
outbound driver (``gateway.http.outbound.Call``) use, so routing, intentions, balancing, breakers, retries and
outlier detection are the same code for both paths. The engine calls the exchange back when the upstream
connection is lost before an answer (``upstream_lost``), on a response head a retry policy may act on
(``on_head``) and once the exchange is over (``finish``: metrics, access log, the pool).

A request the engine does not serve (HTTP/1.0, ``Upgrade``, ``Expect``, unusual framing) makes the engine call
``on_fallback(conn, fd)``: the connection goes on as an L4 relay into a socketpair whose end ``fd`` the Python
proxy serves (``fallback``), for that request and the rest of the connection.

``MESHGW_NATIVE_HTTP=0`` keeps HTTP in Python (the native L4 relay stays on: ``MESHGW_NATIVE_RELAY`` governs both).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway import metrics, native
from gateway.l4 import _HANDED_OVER, Side, TLSSide

if TYPE_CHECKING:
    from gateway.listeners import Listener

log = logging.getLogger("meshgw.http.native")


def _enabled() -> bool:
    return os.environ.get("MESHGW_NATIVE_HTTP", "1").strip().lower() not in ("0", "false", "no", "off")


_ON = _enabled()


def enabled() -> bool:
    return _ON and native.available()


class _NotBuilt:
    """Stands for the engine's connection type where the extension is not built: no object is one."""


HttpConn: type = getattr(native.module(), "HttpConn", _NotBuilt) if native.available() else _NotBuilt


_SERVED = metrics.NATIVE_HTTP.inc
_FALLBACKS = metrics.NATIVE_HTTP_FALLBACKS.inc


def _release(side: Side) -> None:
    """The engine has its own descriptor of the side's socket: the event loop's transport lets go of its one
    (nothing is queued there: the callers checked), without a word to the peer."""
    t = side.transport
    assert t is not None
    side.lost = True
    t.set_protocol(_HANDED_OVER)  # type: ignore[attr-defined]
    t.close()


def _movable(side: Side) -> bool:
    t = side.transport
    if t is None or side.lost or side.eof or t.is_closing() or t.get_write_buffer_size():  # type: ignore[attr-defined]
        return False
    return not (isinstance(side, TLSSide) and (not side.handshake.done() or side._shutdown_sent))


def _tls(side: Side) -> tuple[Any, Any]:
    if isinstance(side, TLSSide):
        return side._ssl, side._ssl.context
    return None, None


def serve(
    side: Side,
    peer_ip: str,
    on_request: Callable[[Any, bytes | None, bytes | None], Any],
    on_fallback: Callable[[Any, int], Any],
    on_close: Callable[[Any], None],
) -> Any:
    """Hand an accepted (and, for TLS, authenticated) connection to the engine. None: it stays in Python (bytes
    still queued, an end of stream already seen, or the extension refused the TLS object)."""
    if not _movable(side):
        return None
    ssl_obj, ctx = _tls(side)
    early = b"".join(side._pending)  # plaintext that came with the handshake
    fd = os.dup(side.transport.get_extra_info("socket").fileno())  # type: ignore[union-attr]
    try:
        conn = native.core(asyncio.get_running_loop()).http(
            fd, ssl_obj, ctx, on_request, on_fallback, on_close, peer_ip, b"", early
        )
    except (TypeError, ValueError) as e:
        os.close(fd)
        native.disable(str(e))
        return None
    except OSError as e:
        os.close(fd)
        log.warning("HTTP connection stays in Python: %s", e)
        return None
    side._pending.clear()
    _release(side)
    _SERVED()
    return conn


async def upstream(side: Side, key: Any) -> Any:
    """A connection the listener dialled (TCP, or TCP and mTLS with the peer's identity checked), as an engine
    connection for the pool. Raises OSError when it cannot be handed over."""
    for _ in range(200):
        if not side.transport or not side.transport.get_write_buffer_size():  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.005)  # the end of the handshake still leaving: it goes first
    if not _movable(side):
        side.abort()
        raise OSError("the connection closed while it was being set up")
    ssl_obj, ctx = _tls(side)
    if side._pending:
        side.abort()
        raise OSError("the upstream spoke before it was asked")
    # The TLS 1.3 session ticket usually comes after the hand-over: the engine tells when, for resumption.
    on_ticket = side._save_session if isinstance(side, TLSSide) and side._want_session else None
    fd = os.dup(side.transport.get_extra_info("socket").fileno())  # type: ignore[union-attr]
    try:
        conn = native.core(asyncio.get_running_loop()).upstream(fd, ssl_obj, ctx, on_ticket)
    except (TypeError, ValueError, OSError) as e:
        os.close(fd)
        side.abort()
        raise OSError(f"cannot hand the connection to the native engine: {e}") from None
    _release(side)
    conn.key = key
    conn.native = True
    return conn


def fallback(
    listener: Listener,
    conn: Any,
    fd: int,
    make: Callable[[Side, asyncio.BaseTransport], None],
) -> Callable[[Any], None]:
    """The engine gave up on ``conn`` (a request it does not serve): ``fd`` is a socketpair end carrying the
    connection's plaintext from now on, served by the Python proxy (``make`` sets up its ServerConnection, as
    for an accepted connection). The native connection is no longer tracked: the Python one is."""
    from gateway.http.flow import FlowSide
    from gateway.listeners import _Detached

    _FALLBACKS()
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    side = FlowSide(_Detached())  # type: ignore[arg-type]

    def made(transport: asyncio.BaseTransport) -> None:
        make(side, transport)  # the Python connection is tracked: the native one is not any more
        listener._closed(conn)

    side.on_made = made
    listener._spawn(loop.connect_accepted_socket(lambda: side, sock))  # a drain waits for it
    return _ignore


def _ignore(_relay: Any) -> None:
    return None


class NativeExchange:
    """One request through the engine: what ``gateway.http.proxy.Exchange`` offers the listeners and ``Call``."""

    __slots__ = (
        "call",
        "deadline",
        "done",
        "flags",
        "head_time",
        "info",
        "listener",
        "method",
        "replay",
        "response_status",
        "rx",
        "server",
        "started",
        "tx",
        "url",
    )

    native = True
    version = "1.1"
    upgrade = False
    chunked = False
    expect_continue = False

    def __init__(self, server: Any, method: bytes, url: bytes, listener: Any):
        self.server = server
        self.method = method
        self.url = url
        self.listener = listener
        self.call: Any = None
        self.flags = ""
        self.info: list[bytes] | None = None
        self.replay = False
        self.response_status: int | None = None
        self.rx = 0
        self.tx = 0
        self.started = 0.0
        self.head_time = 0.0
        self.deadline = 0.0
        self.done = False  # finished: later calls (a dial or a timer that outlived it) must not touch the
        # connection, which may be serving the next request by then

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.server.headers()  # type: ignore[no-any-return]

    # -- what the listeners and Call ask

    def attach(self, client: Any, head: bytes | None = None) -> None:
        if self.done or self.server.closed:
            pool = getattr(client, "pool", None)
            pool.release(client) if pool is not None else client.close()
            return
        if client.closed:
            self.upstream_lost()  # it went away between its set-up and now: as a reset before any answer
            return
        self.server.forward(client)

    def detach(self) -> None:
        if not self.done:
            self.server.detach()

    def can_replay(self) -> bool:
        return not self.done and self.server.can_replay()  # type: ignore[no-any-return]

    def upstream_failed(self, status: int, reason: str, headers: bytes = b"") -> None:
        if not self.done:
            self.server.respond(status, reason, headers)

    def arm_timeout(self, seconds: float) -> None:
        if not self.done:
            self.server.arm_timeout(seconds)

    # -- what the engine tells

    def upstream_lost(self) -> None:
        call = self.call
        if call is not None:
            call.on_reset()
        else:
            self.upstream_failed(503, "upstream connection reset before the response headers")

    def on_head(self, status: int) -> bool:
        call = self.call
        return call is not None and call.on_response_head(status)  # type: ignore[no-any-return]

    def finish(self, client: Any) -> None:
        self.done = True
        status, self.rx, self.tx, self.started, self.head_time = self.server.stats()
        self.response_status = status or None
        if self.info is not None:
            self.info = list(self.server.info())
        if client is not None:
            pool = getattr(client, "pool", None)
            if pool is not None:
                pool.release(client)
            else:
                client.close()
        self.listener._native_finished(self, status)
