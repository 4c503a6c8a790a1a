"""What the console reads from the running process, in one value the app hands to the admin port."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, UpstreamConfig
from gateway.console.errors import RecentErrors
from gateway.console.ops import Maintenance
from gateway.console.stats import Stats
from gateway.snapshot import Snapshot, SnapshotHolder, upstream_key


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    name: str  # the core's listener name: inbound, upstream:<svc>, ingress:<port>, mesh-gateway, ...
    kind: str  # inbound | upstream | ingress | mesh-gateway | terminating-gateway | expose
    bind: str  # as configured
    protocol: str


@dataclass(frozen=True)
class ConsoleSource:
    config: Callable[[], Config]
    holder: SnapshotHolder
    core: Any  # gateway._core.Core: stats_json(), clusters_json(), ports(), version()
    listeners: Callable[[], Sequence[ListenerInfo]]  # the listeners the app runs (drained ones included)
    not_ready: Callable[[], str | None]
    drain_listeners: Callable[[bool], list[str]]  # inbound_only -> names of the listeners that stopped
    maintenance: Maintenance = field(default_factory=Maintenance)
    errors: RecentErrors = field(default_factory=RecentErrors)
    started_at: float = field(default_factory=time.time)

    @property
    def snapshot(self) -> Snapshot:
        return self.holder.current

    def stats(self) -> Stats:
        return Stats.parse(self.core.stats_json())

    def ports(self) -> Mapping[str, int]:
        return dict(self.core.ports())

    def runtime_clusters(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The core's live HTTP cluster state by (listener, cluster)."""
        return {(c["listener"], c["cluster"]): c for c in json.loads(self.core.clusters_json())}


def listener_name(cfg: Config, u: UpstreamConfig) -> str:
    """The core's name for the listener serving ``u`` (gateway/corespec listener_spec)."""
    if cfg.mode == "ingress-gateway" and u.protocol == "http":
        return f"ingress:{u.bind.port}"
    return f"upstream:{u.service}"


def upstreams(cfg: Config) -> list[tuple[UpstreamConfig, str, str]]:
    """(upstream, snapshot key, listener name) for every configured upstream."""
    return [(u, upstream_key(u, cfg), listener_name(cfg, u)) for u in cfg.upstreams]
