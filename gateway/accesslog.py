"""JSON access logs: one line per finished request, with the fields the config names.

The field names follow Envoy's access-log operators as Consul's default JSON format uses them
(``start_time``, ``method``, ``path``, ``protocol``, ``response_code`` → ``status``, ``response_flags``,
``bytes_received``, ``bytes_sent``, ``duration``, ``upstream_cluster``, ``upstream_host``, ``x-request-id``…;
C:agent/xds/accesslogs/accesslogs.go). Response flags are Envoy's: UH no healthy upstream, UF upstream connect
failure, UO upstream overflow (circuit breaker), UT upstream request timeout, UC upstream connection
termination, URX retry limit reached, DC downstream connection termination, NR no route; RBAC for a request an
intention denied.

Lines are buffered and written in batches (every ``flush_interval`` or 64 KiB), never one write per request;
``close`` writes what is left. The writer is part of the snapshot: a reload that changes the settings swaps it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from gateway.config import AccessLogConfig

FLUSH_BYTES = 64 * 1024


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class AccessLog:
    def __init__(self, cfg: AccessLogConfig):
        self.cfg = cfg
        self.fields = cfg.fields
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._own_fd = False
        if cfg.type == "file":
            assert cfg.path is not None
            cfg.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(cfg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own_fd = True
        else:
            self._fd = 2 if cfg.type == "stderr" else 1
        self.closed = False

    @classmethod
    def update(cls, old: AccessLog | None, cfg: AccessLogConfig) -> AccessLog | None:
        """The writer for ``cfg``: the old one while nothing changed, else a new one (the old one closed)."""
        if old is not None and old.cfg == cfg:
            return old
        if old is not None:
            old.close()
        return cls(cfg) if cfg.enabled else None

    def log(self, record: dict[str, Any]) -> None:
        self.log_line(json.dumps(record, separators=(",", ":")))

    def log_line(self, line: str) -> None:
        """One record already rendered as JSON (the core's), written as it is."""
        if self.closed:
            return
        line += "\n"
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.cfg.flush_interval, self._tick)
            except RuntimeError:
                self.flush()

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode()
        self._buf.clear()
        self._size = 0
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except OSError:
            pass  # a full disk or a closed pipe must not take requests down with it

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._own_fd:
            os.close(self._fd)
