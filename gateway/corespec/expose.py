"""The `expose` section of the core's expose listeners (gateway/core/src/inbound/expose.rs): Consul's Expose
paths, the ones meshgw.yaml lists and, with ``expose: {checks: true}``, the ones the Consul agent exposed for the
app's HTTP and gRPC checks (consul.md §3.1). One listener per listener port, bound where the inbound listener is.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Address, Config, ExposePathConfig
from gateway.snapshot import Snapshot

# Consul lets only these call a path parsed from a check, besides the agent's own LAN address: its
# SourcePrefixRanges (C:agent/xds/listeners.go makeExposedCheckListener: 127.0.0.1/8, the advertise address, ::1).
LOOPBACK = ("127.0.0.1/8", "::1/128")
CONNECT_TIMEOUT_MS = 5000  # Consul's local_connect_timeout_ms default for the app cluster


def bind_host(cfg: Config) -> str:
    """Where Envoy binds them: the proxy's address (here the inbound listener's host), else every address."""
    return cfg.inbound.bind.host if cfg.inbound is not None else "0.0.0.0"


def by_port(cfg: Config, exposed_checks: tuple[ExposePathConfig, ...]) -> dict[int, list[ExposePathConfig]]:
    """The paths of each listener port, the config's first; a path the agent exposed for a check on a port the
    config already uses for another protocol is left out (one protocol per listener)."""
    out: dict[int, list[ExposePathConfig]] = {}
    for p in (*cfg.expose, *exposed_checks):
        same_port = out.setdefault(p.listener_port, [])
        if same_port and same_port[0].protocol != p.protocol:
            continue
        if all(q.path != p.path for q in same_port):
            same_port.append(p)
    return out


def spec(cfg: Config, snap: Snapshot, host: str, port: int) -> dict[str, Any]:
    paths = by_port(cfg, snap.exposed_checks).get(port, [])
    check_sources = [*LOOPBACK, *snap.check_sources]
    return {
        "name": f"expose:{port}",
        "bind": str(Address(host, port)),
        "kind": "expose",
        "expose": {
            "app_address": cfg.service.address,
            "protocol": paths[0].protocol if paths else "http",
            "paths": [
                {"path": p.path, "port": p.local_path_port, "sources": check_sources if p.from_check else []}
                for p in paths
            ],
        },
        "limits": {"connect_timeout_ms": CONNECT_TIMEOUT_MS},
    }
