"""The TCP relay: two asyncio Protocols wired back to back, one of them speaking TLS itself.

The hot path is ``data_received`` on one side calling ``send`` on the other, bound once when the relay
starts: no task, no coroutine, no extra loop wake-up per record. Back-pressure is the transports'
own: when one side's write buffer passes its high-water mark, ``pause_writing`` pauses reading on the
other side, and ``resume_writing`` resumes it.

TLS is done here, over OpenSSL memory BIOs on a plain uvloop TCP transport, instead of through the
event loop's SSL transport. Per record that saves the SSL transport's state machine, its flow-control
bookkeeping and its deferred reads (a ``call_soon`` per read), which the bench showed as the largest
per-request cost after the syscalls. It also lets a TLS hop be half-closed (close_notify sent, reading
on), which asyncio's SSL transports cannot do, and hands every handshake error to the listener so
refusals are counted by reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from gateway import native
from gateway.metrics import NATIVE_RELAYS

log = logging.getLogger("meshgw.l4")

# Bytes accepted from one side while the other is not connected yet (TLS handshake, app connect);
# past this the reading side is paused so a fast client cannot make us buffer without limit.
PENDING_LIMIT = 256 * 1024
# OpenSSL hands out at most one record (16 KiB) per read; ask for that.
READ_SIZE = 16 * 1024 + 256

_WANT_READ = ssl.SSLWantReadError
_ZERO_RETURN = ssl.SSLZeroReturnError
_SSL_ERROR = ssl.SSLError


class Side(asyncio.Protocol):
    """A plaintext end of a relay."""

    __slots__ = (
        "_other",
        "_pending",
        "_pending_size",
        "eof",
        "lost",
        "nbytes",
        "on_made",
        "relay",
        "send",
        "send_many",
        "transport",
        "write",
        "write_many",
    )

    def __init__(self, relay: Relay):
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self._other: Side | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.nbytes = 0
        self.eof = False
        self.lost = False
        # What this side received goes to ``write``: held until the relay starts, then the other side's send.
        self.write: Callable[[bytes], None] = self._hold
        # How to deliver bytes to this side's peer (the other side's ``write`` once started).
        self.send: Callable[[bytes], None] = self._not_connected
        # The same for several buffers in one gathered write (no join copy); None where only ``send`` exists.
        self.send_many: Callable[[list[bytes]], None] | None = None
        self.write_many: Callable[[list[bytes]], None] | None = None
        # Set by a listener that accepts straight into this side (no separate accept protocol).
        self.on_made: Callable[[asyncio.BaseTransport], None] | None = None

    # -- wiring

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send = transport.write  # type: ignore[attr-defined]
        self.send_many = transport.writelines  # type: ignore[attr-defined]
        if self.on_made is not None:
            self.on_made(transport)

    @staticmethod
    def _not_connected(data: bytes) -> None:
        raise ConnectionError("relay side not connected")

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        """Deliver what this side receives to ``sink`` (an HTTP parser) instead of another side."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if self._pending_size > PENDING_LIMIT and self.transport is not None:
                self.transport.resume_reading()
            self._pending_size = 0
            self.write = sink
            self.write_many = None
            sink(data)
        else:
            self.write = sink
            self.write_many = None

    def connect_to(self, other: Side) -> None:
        """Start forwarding what this side receives to ``other``'s peer."""
        self._other = other
        if self._pending:
            other.send(b"".join(self._pending))
            self._pending.clear()
            if self._pending_size > PENDING_LIMIT and self.transport is not None:
                self.transport.resume_reading()
            self._pending_size = 0
        self.write = other.send
        self.write_many = other.send_many
        if self.eof:
            other.send_eof()

    # -- what the other side asks of this one

    def send_eof(self) -> None:
        """The other side's peer will send nothing more: tell this side's peer (half-close)."""
        t = self.transport
        if t is not None and not self.lost:
            if t.can_write_eof():
                t.write_eof()
            else:
                t.close()

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()  # flushes what is buffered, then closes

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        self.write(data)

    def eof_received(self) -> bool | None:
        self._got_eof()
        return True  # keep the socket half-open: the answer can still flow back

    def _got_eof(self) -> None:
        self.eof = True
        other = self._other
        if other is None:
            # Not paired with another side (HTTP owns it): the owner decides what an EOF means.
            hook = getattr(self.relay, "side_eof", None)
            if hook is not None:
                hook(self)
            return
        if other is not None:
            other.send_eof()
            if other.eof:
                self.relay.close()

    def pause_writing(self) -> None:
        other = self._other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self._other
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.side_lost(self)


class TLSSide(Side):
    """A TLS end of a relay: OpenSSL over memory BIOs on a plain TCP transport.

    ``handshake`` resolves when the handshake is done (or fails with the OpenSSL error). Plaintext
    that arrives before the relay starts is held like any other early data.
    """

    __slots__ = (
        "_closing",
        "_incoming",
        "_outgoing",
        "_session_key",
        "_shutdown_sent",
        "_ssl",
        "_timer",
        "_want_session",
        "handshake",
        "sslobj",
    )

    def __init__(
        self,
        relay: Relay,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
    ):
        super().__init__(relay)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side, server_hostname)
        # The C object under ssl.SSLObject: its methods are the same, minus a Python frame per call.
        self._ssl = getattr(self.sslobj, "_sslobj", self.sslobj)
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            handshake_timeout, self._handshake_timeout, handshake_timeout
        )
        self._shutdown_sent = False
        self._closing = False
        self._want_session = False
        self._session_key: tuple[Any, ...] | None = None

    # -- handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send = self._encrypt
        if self.on_made is not None:
            self.on_made(transport)
        if not self.sslobj.server_side:
            # Resume the last session with this endpoint (TLS 1.3 ticket): a new connection then costs
            # no certificate signature or verification, as Envoy and HAProxy do by default.
            peer = transport.get_extra_info("peername")
            self._session_key = (self.sslobj.server_hostname, tuple(peer[:2]) if peer else None)
            cached = _session_cache(self.sslobj.context).get(self._session_key)
            if cached is not None:
                self.sslobj.session = cached
            self._want_session = True
            self._do_handshake()

    def _save_session(self) -> None:
        # TLS 1.3 tickets arrive after the handshake, with the first records from the server.
        session = self.sslobj.session
        if session is not None and session.has_ticket:
            self._want_session = False
            _session_cache(self.sslobj.context)[self._session_key] = session

    def _do_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except _WANT_READ:
            self._flush()
            return
        except (_SSL_ERROR, ValueError) as e:
            self._flush()  # the alert, so the peer learns why
            self._handshake_failed(e)
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._incoming.pending:
            self._decrypt()

    def _handshake_failed(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _handshake_timeout(self, seconds: float) -> None:
        self._timer = None
        if not self.handshake.done():
            self.handshake.set_exception(TimeoutError(f"TLS handshake took longer than {seconds:g}s"))
        if self.transport is not None:
            self.transport.abort()

    def peercert(self) -> dict | None:  # type: ignore[type-arg]
        return self._ssl.getpeercert()

    # -- data

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self.handshake.done():
            self._decrypt()
        else:
            self._do_handshake()

    def _decrypt(self) -> None:
        read = self._ssl.read
        incoming = self._incoming
        chunks: list[bytes] | None = None
        eof = False
        data = b""
        try:
            data = read(READ_SIZE)
            while data and (incoming.pending or self._ssl.pending()):
                # Several records in one TCP read (bulk transfer): join them into one write.
                if chunks is None:
                    chunks = [data]
                data = read(READ_SIZE)
                chunks.append(data)
        except _WANT_READ:
            # A partial record, or a post-handshake message (session ticket, key update) with no data.
            if self._outgoing.pending:
                self._flush()
            if self._want_session:
                self._save_session()
        except _ZERO_RETURN:
            eof = True
        except _SSL_ERROR:
            if self.transport is not None:
                self.transport.abort()
            return
        else:
            # CPython's read() returns b"" for close_notify: the peer will send no more.
            eof = not data
        if self._want_session:
            self._save_session()
        if chunks is not None:
            many = self.write_many
            if many is not None:
                # A bulk read: the records' plaintexts leave in one gathered write (writev) instead of being
                # copied once more into a joined buffer first.
                self.nbytes += sum(map(len, chunks))
                many(chunks)
                if eof:
                    self._got_eof()
                return
            out = b"".join(chunks)
        else:
            out = data
        if out:
            self.nbytes += len(out)
            self.write(out)
        if eof:
            self._got_eof()

    def _encrypt(self, data: bytes) -> None:
        if self._shutdown_sent:
            return
        try:
            self._ssl.write(data)
        except _SSL_ERROR:
            if self.transport is not None:
                self.transport.abort()
            return
        self.transport.write(self._outgoing.read())  # type: ignore[union-attr]

    def _flush(self) -> None:
        if self._outgoing.pending and self.transport is not None and not self.lost:
            self.transport.write(self._outgoing.read())

    # -- close_notify

    def _send_close_notify(self) -> None:
        if self._shutdown_sent or not self.handshake.done():
            return
        self._shutdown_sent = True
        try:
            self._ssl.shutdown()
        except (_WANT_READ, _SSL_ERROR, ValueError):
            pass  # WANT_READ: the peer's close_notify has not come yet; we keep reading
        self._flush()

    def send_eof(self) -> None:
        # TLS 1.3 allows a half-close: send close_notify, keep reading what the peer still sends.
        if self.transport is not None and not self.lost:
            self._send_close_notify()

    def eof_received(self) -> bool | None:
        # A TCP FIN (with or without close_notify before it): nothing more will come from the peer.
        if not self.handshake.done():
            # Closed before the handshake finished (a gateway with no route, a refusing server without an
            # alert): fail it now rather than at the handshake timeout.
            self._handshake_failed(ConnectionResetError("connection closed during the TLS handshake"))
            return False
        if not self.eof:
            self._got_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self._handshake_failed(exc or ConnectionResetError("connection lost during the TLS handshake"))
        super().connection_lost(exc)

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self._send_close_notify()
            self.transport.close()


def _session_cache(context: ssl.SSLContext) -> dict[Any, ssl.SSLSession]:
    """Client sessions live on their SSLContext: a leaf or root rotation brings a new context, and with it
    an empty cache, so a session never outlives the credentials it was made with."""
    cache = context.__dict__.get("_meshgw_sessions")
    if cache is None:
        cache = context.__dict__["_meshgw_sessions"] = {}
    return cache


class _HandedOver(asyncio.Protocol):
    """The protocol of a transport whose socket the native data path took over: closing it closes only the
    event loop's descriptor, not the connection, and nobody needs to hear about it."""

    def connection_lost(self, exc: Exception | None) -> None:
        return None


_HANDED_OVER = _HandedOver()
_NATIVE_RELAYS_INC = NATIVE_RELAYS.inc
# A relay whose transports still hold queued bytes when it starts is handed over once they drained: retried
# after 5 ms, doubling, for about 10 s in all.
HAND_OVER_FIRST_RETRY = 0.005
HAND_OVER_LAST_RETRY = 5.0


class Relay:
    """One proxied connection: a downstream side (who called us) and an upstream side (who we called)."""

    __slots__ = ("down", "native", "on_close", "started", "up")

    def __init__(self, on_close: Callable[[Relay], None]):
        self.down: Side = Side(self)
        self.up: Side = Side(self)
        self.on_close: Callable[[Relay], None] | None = on_close
        self.started = False
        self.native: Any = None  # the native relay once the data path was handed over (gateway/_relaycore.c)

    def start(self) -> None:
        """Both sides are connected: flush what was held and forward from now on."""
        self.started = True
        if self.down.lost or self.up.lost:
            self.close()
            return
        self.down.connect_to(self.up)
        self.up.connect_to(self.down)
        if native.available():
            self._try_hand_over(HAND_OVER_FIRST_RETRY)

    def _try_hand_over(self, delay: float) -> None:
        if self.on_close is None or self.native is not None or not native.available():
            return  # finished, or handed over already
        if self._hand_over() == "later" and delay <= HAND_OVER_LAST_RETRY:
            # Bytes are still queued in the event loop's transports (a client that wrote a lot before the upstream
            # was connected): try again once they have gone, rather than keep the connection in Python for life.
            asyncio.get_running_loop().call_later(delay, self._try_hand_over, delay * 2)

    def _hand_over(self) -> str:
        """Give both sockets (and the TLS sessions on them) to the native data path, when nothing is in flight
        inside Python: no queued write, no end of stream seen, handshakes done. Returns "done", "later" (writes
        queued) or "never" (an end of stream or a close under way: this connection stays in Python)."""
        sides = (self.down, self.up)
        for s in sides:
            t = s.transport
            if t is None or s.lost or s.eof or t.is_closing():
                return "never"
            if isinstance(s, TLSSide) and (not s.handshake.done() or s._shutdown_sent):
                return "never"
        if any(s.transport.get_write_buffer_size() for s in sides):  # type: ignore[union-attr]
            return "later"
        fds: list[int] = []
        tls: list[Any] = []
        ticket_end, on_ticket = -1, None
        try:
            for i, s in enumerate(sides):
                fds.append(os.dup(s.transport.get_extra_info("socket").fileno()))  # type: ignore[union-attr]
                if isinstance(s, TLSSide):
                    tls += [s._ssl, s._ssl.context]
                    if s._want_session:
                        ticket_end, on_ticket = i, s._save_session
                else:
                    tls += [None, None]
            core = native.core(asyncio.get_running_loop())
            self.native = core.relay(
                fds[0], tls[0], tls[1], fds[1], tls[2], tls[3], self._native_closed, on_ticket, ticket_end
            )
        except (TypeError, ValueError) as e:
            for fd in fds:
                os.close(fd)
            native.disable(str(e))
            return "never"
        except OSError as e:
            for fd in fds:
                os.close(fd)
            log.warning("relay stays in Python: %s", e)
            return "never"
        _NATIVE_RELAYS_INC()
        for s in sides:
            t = s.transport
            s.lost = True  # its transport is no longer this relay's way to the peer
            t.set_protocol(_HANDED_OVER)  # type: ignore[union-attr]
            t.close()  # type: ignore[union-attr]  # nothing is queued: only the loop's descriptor closes
        return "done"

    def _native_closed(self, _native: Any) -> None:
        self._finish()

    def counts(self) -> tuple[int, int]:
        """(bytes from downstream, bytes from upstream) once started, for the listener's metrics."""
        if not self.started:
            return (0, 0)
        down, up = self.down.nbytes, self.up.nbytes
        if self.native is not None:
            nd, nu = self.native.counts()
            down += nd
            up += nu
        return down, up

    def side_lost(self, side: Side) -> None:
        if side is not self.down and side is not self.up:
            return  # a failed connection attempt, already replaced
        other = self.up if side is self.down else self.down
        if other.transport is not None and not other.lost:
            other.close()
        if (self.down.lost or self.down.transport is None) and (self.up.lost or self.up.transport is None):
            self._finish()
        elif not self.started:
            self._finish()

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
            return
        self.down.close()
        self.up.close()
        if not self.started:
            self._finish()

    def abort(self) -> None:
        if self.native is not None:
            self.native.abort()
            return
        self.down.abort()
        self.up.abort()
        self._finish()

    def _finish(self) -> None:
        cb = self.on_close
        if cb is not None:
            self.on_close = None
            cb(self)
