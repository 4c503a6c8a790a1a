"""Keep-alive connection pools: one per upstream cluster (or the local app), keyed by endpoint.

The pool counts every connection it handed out (``total``), for the max_connections circuit breaker, and
can give a released connection straight to a request waiting for one (``waiter``), which is how requests
queue as "pending" while the cluster is at its connection limit (Envoy's HTTP/1 pool behaviour).

Connections of the native engine (gateway/http/native_http.py, ``native`` true) and the Python proxy's
``ClientConnection`` serve different exchanges, so they idle apart; ``total`` counts both, as the breaker is
the cluster's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from gateway.http.proxy import ClientConnection

# Idle connections kept per endpoint; more are closed when returned.
MAX_IDLE = 64


class ConnectionPool:
    def __init__(self) -> None:
        self.idle: dict[Hashable, list[ClientConnection]] = {}
        self.idle_native: dict[Hashable, list[Any]] = {}
        self.total = 0  # open connections made through this pool, busy or idle
        # Requests waiting for a connection (at max_connections); ``waiter`` hands a released one to them and
        # returns True when one took it. Only consulted while ``waiters`` is not empty.
        self.waiters: deque[Any] = deque()
        self.waiter: Callable[[ClientConnection], bool] | None = None
        # Told when a connection is gone while requests wait: its slot under max_connections is free.
        self.slot_freed: Callable[[], None] | None = None

    def take(self, key: Hashable, native: bool = False) -> Any:
        conns = (self.idle_native if native else self.idle).get(key)
        while conns:
            c = conns.pop()
            if not c.closed:
                return c
        return None

    def take_any(self, native: bool = False) -> Any:
        for conns in (self.idle_native if native else self.idle).values():
            while conns:
                c = conns.pop()
                if not c.closed:
                    return c
        return None

    def add(self, client: Any) -> None:
        """A new connection: it returns here when an exchange leaves it reusable."""
        client.pool = self
        client.lost_cb = self._lost
        self.total += 1

    def release(self, client: Any) -> None:
        if client.closed:
            return
        if self.waiters and self.waiter is not None and self.waiter(client):
            return
        conns = (self.idle_native if client.native else self.idle).setdefault(client.key, [])
        if len(conns) >= MAX_IDLE:
            client.close()
            return
        client.idle_since = time.monotonic()
        conns.append(client)

    def _lost(self, client: Any) -> None:
        self.total -= 1
        client.lost_cb = None
        conns = (self.idle_native if client.native else self.idle).get(client.key)
        if conns and client in conns:
            conns.remove(client)
        if self.waiters and self.slot_freed is not None:
            self.slot_freed()

    def close_idle(self, older_than: float) -> int:
        """Close connections idle since before ``older_than`` (monotonic time). Returns how many."""
        n = 0
        for conns in (*self.idle.values(), *self.idle_native.values()):
            if conns and conns[0].idle_since < older_than:
                old = [c for c in conns if c.idle_since < older_than]
                # Out of the list before closing: a native connection's close tells the pool (_lost) at once.
                conns[:] = [c for c in conns if c.idle_since >= older_than]
                for c in old:
                    c.close()
                    n += 1
        return n

    def close(self) -> None:
        for conns in (*self.idle.values(), *self.idle_native.values()):
            for c in list(conns):
                c.close()
        self.idle.clear()
        self.idle_native.clear()
