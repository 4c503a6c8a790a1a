"""The local control plane: a catalog file and an intentions file, re-read when they change.

A broken edit is reported in one log line (once per distinct problem) and the last good content keeps
serving; the next good edit is picked up as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from connect.intentions import IntentionError, ServiceIntentions, parse_entries
from gateway import metrics
from gateway.config import HEALTH_STATES, ConfigError, LocalControlPlaneConfig, parse_service_name
from gateway.snapshot import Endpoint
from gateway.structured import SourceError, load_structured

log = logging.getLogger("meshgw.local")
T = TypeVar("T")


def parse_catalog(data: Any, path: Path, default_dc: str) -> dict[str, tuple[Endpoint, ...]]:
    def bad(key: str, msg: str) -> SourceError:
        return SourceError(f"{path}: {key}: {msg}")

    if data is None:
        return {}
    if not isinstance(data, Mapping) or set(data) - {"services"}:
        raise bad("services", "expected a mapping with one key 'services' (service name -> list of instances)")
    services = data.get("services") or {}
    if not isinstance(services, Mapping):
        raise bad("services", "expected a mapping of service name -> list of instances")
    out: dict[str, tuple[Endpoint, ...]] = {}
    for name, instances in services.items():
        key = f"services.{name}"
        try:
            parse_service_name(name)
        except ValueError as e:
            raise bad(key, str(e)) from None
        if instances is None:
            instances = []
        if not isinstance(instances, list):
            raise bad(key, "expected a list of instances {address, port, datacenter, health}")
        eps = []
        for i, inst in enumerate(instances):
            ikey = f"{key}[{i}]"
            if not isinstance(inst, Mapping):
                raise bad(ikey, "expected a mapping {address, port, datacenter, health}")
            # id/node/tags/meta are for templates (gateway/render_state.py); the data plane ignores them.
            unknown = set(inst) - {"address", "port", "datacenter", "health", "weight", "id", "node", "tags", "meta"}
            if unknown:
                raise bad(f"{ikey}.{sorted(unknown)[0]}", "unknown key (expected address, port, datacenter, health)")
            addr = inst.get("address")
            if not isinstance(addr, str) or not addr:
                raise bad(f"{ikey}.address", f"{addr!r} is not an address (expected an IP or host name)")
            port = inst.get("port")
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise bad(f"{ikey}.port", f"{port!r} is not a port (expected the instance's mesh port, 1-65535)")
            health = inst.get("health", "passing")
            if health not in HEALTH_STATES:
                raise bad(f"{ikey}.health", f"{health!r} is not allowed (expected one of: {', '.join(HEALTH_STATES)})")
            dc = inst.get("datacenter", default_dc)
            if not isinstance(dc, str) or not dc:
                raise bad(f"{ikey}.datacenter", f"{dc!r} is not a datacenter name")
            weight = inst.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise bad(f"{ikey}.weight", f"{weight!r} is not a weight (expected an integer >= 1)")
            # meta/tags also feed service-resolver subset filters (Service.Meta / Service.Tags, consul.md §8.5).
            meta = inst.get("meta")
            meta_t = tuple(sorted((str(k), str(v)) for k, v in meta.items())) if isinstance(meta, Mapping) else ()
            tags = inst.get("tags")
            tags_t = tuple(str(t) for t in tags) if isinstance(tags, list) else ()
            eps.append(Endpoint(addr, port, dc, health, weight, meta_t, tags_t))
        out[str(name)] = tuple(eps)
    return out


def read_catalog(path: Path, default_dc: str) -> dict[str, tuple[Endpoint, ...]]:
    return parse_catalog(load_structured(path, _read(path)), path, default_dc)


def read_intentions(path: Path) -> tuple[ServiceIntentions, ...]:
    data = load_structured(path, _read(path))
    if data is None:
        return ()
    try:
        return parse_entries(data, str(path))
    except IntentionError as e:
        raise SourceError(str(e)) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None


class WatchedFile(Generic[T]):
    """Polls one file's (inode, size, mtime); on a change, parses it and hands the result on.

    Polling (not inotify) because it also sees atomic renames, NFS and bind mounts, and costs one stat.
    """

    def __init__(
        self,
        path: Path,
        parse: Callable[[Path], T],
        apply: Callable[[T], None],
        source: str,
        keeper: str = "",
        applied: str = "applied to new connections",
    ):
        self.path = path
        self.parse = parse
        self.apply = apply
        self.source = source  # a metric label: bounded
        self.keeper = keeper or f"keeping the last good {source}"  # who keeps what, for the log line
        self.applied = applied
        self._sig: tuple[int, int, int] | None = None
        self._last_error: str | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load_initial(self) -> None:
        """First read at start-up: a problem here is fatal (there is no last good content to keep)."""
        self._sig = self._signature()
        self.apply(self.parse(self.path))

    def poll(self) -> None:
        sig = self._signature()
        if sig == self._sig:
            return
        self._sig = sig
        try:
            value = self.parse(self.path)
        except SourceError as e:
            msg = str(e)
            metrics.CONTROL_PLANE_ERRORS.labels(self.source).inc()
            if msg != self._last_error:
                log.error("%s (%s)", msg, self.keeper)
                self._last_error = msg
            return
        if self._last_error is not None:
            log.info("%s: good again, applied", self.path)
        self._last_error = None
        log.info("%s: changed, %s", self.path, self.applied)
        self.apply(value)


class LocalControlPlane:
    def __init__(
        self,
        cfg: LocalControlPlaneConfig,
        datacenter: str,
        on_catalog: Callable[[Mapping[str, tuple[Endpoint, ...]]], None],
        on_intentions: Callable[[tuple[ServiceIntentions, ...]], None],
    ):
        self.cfg = cfg
        self.files: list[WatchedFile[Any]] = []
        if cfg.catalog is not None:
            self.files.append(WatchedFile(cfg.catalog, lambda p: read_catalog(p, datacenter), on_catalog, "catalog"))
        if cfg.intentions is not None:
            self.files.append(WatchedFile(cfg.intentions, read_intentions, on_intentions, "intentions"))
        self._task: asyncio.Task[None] | None = None

    def load_initial(self) -> None:
        problems = []
        for f in self.files:
            try:
                f.load_initial()
            except SourceError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError(problems)

    async def start(self) -> None:
        """First leaf/content now (a problem here is the operator's to fix: ConfigError), then watch."""
        self.load_initial()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="local-control-plane")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            for f in self.files:
                f.poll()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
