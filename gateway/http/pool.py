"""Keep-alive connection pools, one per listener, keyed by endpoint."""

from __future__ import annotations

from collections.abc import Hashable

from gateway.http.proxy import ClientConnection

# Idle connections kept per endpoint; more are closed when returned.
MAX_IDLE = 64


class ConnectionPool:
    def __init__(self) -> None:
        self.idle: dict[Hashable, list[ClientConnection]] = {}

    def take(self, key: Hashable) -> ClientConnection | None:
        conns = self.idle.get(key)
        while conns:
            c = conns.pop()
            if not c.closed:
                return c
        return None

    def add(self, client: ClientConnection) -> None:
        """A new connection: it returns here when an exchange leaves it reusable."""
        client.pool = self
        client.lost_cb = self._lost

    def release(self, client: ClientConnection) -> None:
        conns = self.idle.setdefault(client.key, [])
        if len(conns) >= MAX_IDLE or client.closed:
            client.close()
            return
        conns.append(client)

    def _lost(self, client: ClientConnection) -> None:
        conns = self.idle.get(client.key)
        if conns and client in conns:
            conns.remove(client)

    def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.close()
        self.idle.clear()
