"""The Rust core as the process's data plane: every snapshot the builder publishes is
compiled (gateway.corespec) and handed to the core in one call; the core's log lines and access-log records are
drained here on the event loop, its counters read at scrape time (gateway.core_metrics).

The listeners the app starts and stops are ``CoreListener``s: each one adds or removes its entry in the core's
listener set, so binding, accepting and draining happen in the core, and a bind error still surfaces as the
StartupError naming the config key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

from gateway import corespec
from gateway.config import Config
from gateway.snapshot import Snapshot, SnapshotHolder

log = logging.getLogger("meshgw.core")
PUMP_INTERVAL = 0.2  # without a wake-up descriptor: how often the core's bounded queues are read
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def describe() -> str:
    from gateway import _core

    return f"data plane: the Rust core {_core.__version__} (tokio, rustls/aws-lc-rs, hyper; {build()})"


def build() -> str:
    """Whether the core is the profile-guided build (README, "The data plane"), as it says itself: the checksum
    of the profile it was compiled with (gateway/core/pgo/rustc-pgo), empty without one."""
    from gateway import _core

    profile = _core.__pgo_profile__
    return f"profile-guided build, profile {profile}" if profile else "built without a PGO profile"


class CoreDataPlane:
    def __init__(self, holder: SnapshotHolder, config: Config):
        from gateway import _core

        self.core = _core.Core()
        self.holder = holder
        self.config = config
        self.listeners: dict[tuple[Any, ...], str] = {}  # key -> listener name, in start order
        self.ports: dict[str, int] = {}
        self._pump: asyncio.Task[None] | None = None
        self._wake: socket.socket | None = None
        self._watching = False
        self._last_error: str | None = None
        holder.observers.append(self._on_snapshot)

    def _spec(self, snap: Snapshot) -> str:
        return json.dumps(corespec.build(self.config, snap, self.listeners), separators=(",", ":"))

    def apply(self) -> None:
        """Hands the current snapshot over; ValueError with one line when a listener cannot bind."""
        self.ports = self.core.apply(self._spec(self.holder.current))

    def _on_snapshot(self, snap: Snapshot) -> None:
        if not self.listeners:
            return
        try:
            self.ports = self.core.apply(self._spec(snap))
            self._last_error = None
        except ValueError as e:  # the last good snapshot keeps serving
            if str(e) != self._last_error:
                log.error("snapshot %d not applied: %s", snap.version, e)
            self._last_error = str(e)

    def set_config(self, config: Config) -> None:
        self.config = config

    def add(self, key: tuple[Any, ...], name: str) -> None:
        self.listeners[key] = name
        try:
            self.apply()
        except ValueError:
            del self.listeners[key]
            raise

    def remove(self, key: tuple[Any, ...]) -> None:
        if self.listeners.pop(key, None) is not None:
            try:
                self.apply()
            except ValueError as e:
                log.error("%s", e)

    def start_pump(self) -> None:
        if self._pump is not None or self._watching:
            return
        fd = self.core.wakeup_fd()
        loop = asyncio.get_running_loop()
        if fd >= 0:
            self._wake = socket.socket(fileno=os.dup(fd))
            self._wake.setblocking(False)
            loop.add_reader(self._wake.fileno(), self._woken)
            self._watching = True
        else:
            self._pump = loop.create_task(self._pump_loop())

    def _woken(self) -> None:
        assert self._wake is not None
        try:
            while self._wake.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self.pump()

    async def _pump_loop(self) -> None:
        while True:
            await asyncio.sleep(PUMP_INTERVAL)
            self.pump()

    def pump(self) -> None:
        for level, line in self.core.take_logs():
            log.log(_LEVELS.get(level, logging.INFO), "%s", line)
        records = self.core.take_access_log()
        if records:
            writer = self.holder.current.access_log
            if writer is not None:
                for line in records:
                    writer.log_line(line)

    async def drain(self, timeout: float) -> int:
        left = await asyncio.to_thread(self.core.drain, timeout)
        self.pump()
        return int(left)

    async def close(self) -> None:
        if self._wake is not None:
            asyncio.get_running_loop().remove_reader(self._wake.fileno())
            self._wake.close()
            self._wake = None
            self._watching = False
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self.pump()
        await asyncio.to_thread(self.core.close)
        if self._on_snapshot in self.holder.observers:
            self.holder.observers.remove(self._on_snapshot)


class CoreListener:
    """What the app keeps per listener (start, stop_accepting, drain, port) when the core serves it."""

    def __init__(self, plane: CoreDataPlane, key: tuple[Any, ...], name: str, bind: Any):
        self.plane = plane
        self.key = key
        self.name = name
        self.bind = bind
        self.relays: tuple[()] = ()  # open connections are the core's; drain counts them there

    @property
    def port(self) -> int:
        return self.plane.ports.get(self.name, 0)

    async def start(self) -> None:
        try:
            self.plane.add(self.key, self.name)
        except ValueError as e:
            # The core's message ends with the system's reason; the app names the config key.
            raise OSError(str(e).rsplit(": ", 1)[-1]) from None
        self.plane.start_pump()
        log.info("%s listening on %s (core)", self.name, self.bind)

    def stop_accepting(self) -> None:
        self.plane.remove(self.key)

    async def drain(self, timeout: float) -> int:
        # Connections of a removed listener finish in the core; the process-wide drain is CoreDataPlane.drain.
        return 0
