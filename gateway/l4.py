"""The TCP relay: two asyncio Protocols wired back to back.

The hot path is ``Side.data_received``: one call to the other transport's ``write``, bound once when
the relay starts. No task, no coroutine, no copy per record. Back-pressure is the transports' own:
when one side's write buffer passes its high-water mark, ``pause_writing`` pauses reading on the
other side, and ``resume_writing`` resumes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Bytes accepted from one side while the other is not connected yet (TLS handshake, app connect);
# past this the reading side is paused so a fast client cannot make us buffer without limit.
PENDING_LIMIT = 256 * 1024


class Side(asyncio.Protocol):
    __slots__ = (
        "_other",
        "_pending",
        "_pending_size",
        "eof",
        "lost",
        "nbytes",
        "on_made",
        "relay",
        "tls",
        "transport",
        "write",
    )

    def __init__(self, relay: Relay, tls: bool):
        self.relay = relay
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self._other: Side | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.nbytes = 0
        self.eof = False
        self.lost = False
        self.write: Callable[[bytes], None] = self._hold
        # Set by a listener that accepts straight into this side (no separate accept protocol).
        self.on_made: Callable[[asyncio.BaseTransport], None] | None = None

    # -- wiring

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made(transport)

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def connect_to(self, other: Side) -> None:
        """Start forwarding what this side receives to ``other``'s transport."""
        self._other = other
        assert other.transport is not None
        if self._pending:
            other.transport.write(b"".join(self._pending))
            self._pending.clear()
            if self._pending_size > PENDING_LIMIT and self.transport is not None:
                self.transport.resume_reading()
            self._pending_size = 0
        self.write = other.transport.write
        if self.eof:
            self._forward_eof()

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        self.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self._other is not None:
            self._forward_eof()
        # Returning True keeps a plain socket half-open so the answer can still flow back; asyncio's
        # TLS transports cannot stay half-open (and warn if asked), so they close.
        return None if self.tls else True

    def _forward_eof(self) -> None:
        other = self._other
        assert other is not None and other.transport is not None
        if other.transport.can_write_eof():
            other.transport.write_eof()
        else:
            # A TLS hop cannot be half-closed through asyncio (close_notify only comes with close()),
            # and keeping it open could leak it forever when the caller has gone: close it once what
            # is buffered has been flushed. Full closes, the common case, behave exactly right.
            other.transport.close()

    def pause_writing(self) -> None:
        if self._other is not None and self._other.transport is not None:
            self._other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._other is not None and self._other.transport is not None:
            self._other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.side_lost(self)


class Relay:
    """One proxied connection: a downstream side (who called us) and an upstream side (who we called)."""

    __slots__ = ("down", "on_close", "started", "up")

    def __init__(self, down_tls: bool, up_tls: bool, on_close: Callable[[Relay], None]):
        self.down = Side(self, down_tls)
        self.up = Side(self, up_tls)
        self.on_close = on_close
        self.started = False

    def start(self) -> None:
        """Both sides are connected: flush what was held and forward from now on."""
        self.started = True
        if self.down.lost or self.up.lost:
            self.close()
            return
        self.down.connect_to(self.up)
        self.up.connect_to(self.down)

    def side_lost(self, side: Side) -> None:
        if side is not self.down and side is not self.up:
            return  # a failed connection attempt, already replaced
        other = self.up if side is self.down else self.down
        if other.transport is not None and not other.lost:
            other.transport.close()  # flushes what is buffered, then closes
        if (self.down.lost or self.down.transport is None) and (self.up.lost or self.up.transport is None):
            self._finish()
        elif not self.started:
            self._finish()

    def close(self) -> None:
        for s in (self.down, self.up):
            if s.transport is not None and not s.lost:
                s.transport.close()
        self._finish()

    def abort(self) -> None:
        for s in (self.down, self.up):
            if s.transport is not None and not s.lost:
                s.transport.abort()
        self._finish()

    def _finish(self) -> None:
        cb = self.on_close
        if cb is not None:
            self.on_close = None  # type: ignore[assignment]
            cb(self)
