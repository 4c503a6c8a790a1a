"""The JSON of the operator endpoints: /clusters, /listeners, /certs, /config_dump and the health summary.
Every value is built from the snapshot, the config's public view and the core's counters; nothing here reads a
private key, and ``scrub`` drops any string that looks like one before a body leaves the process."""

from __future__ import annotations

import time
from typing import Any

from gateway import metrics
from gateway.console.certs import describe_bundle, rotation_due
from gateway.console.source import ConsoleSource, upstreams
from gateway.snapshot import HEALTHY, Endpoint

_SECRET_MARKERS = ("PRIVATE KEY", "-----BEGIN ENCRYPTED")


def scrub(value: Any) -> Any:
    """Defence in depth: no string with key material ever leaves, whatever a future field holds."""
    if isinstance(value, str):
        return "(redacted)" if any(m in value for m in _SECRET_MARKERS) else value
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _endpoint(e: Endpoint, live: dict[str, Any] | None) -> dict[str, Any]:
    ejected = bool(live and live.get("ejected"))
    return {
        "address": e.address,
        "port": e.port,
        "datacenter": e.datacenter,
        "health": e.health,
        "weight": e.weight,
        "ejected": ejected,
        "ejected_for_seconds": round(live.get("ejected_for_ms", 0) / 1000, 1) if live and ejected else 0,
        "in_rotation": e.health in HEALTHY and not ejected,
        # HTTP clusters count requests in flight per endpoint; an L4 relay has no requests (None).
        "active_requests": live.get("active_requests", 0) if live is not None else None,
    }


def clusters(src: ConsoleSource) -> list[dict[str, Any]]:
    cfg, snap = src.config(), src.snapshot
    live = src.runtime_clusters()
    stats = src.stats()
    out: list[dict[str, Any]] = []
    for _u, key, lname in upstreams(cfg):
        view = snap.upstreams.get(key)
        if view is None:
            continue
        if view.chain is not None:
            for c in view.chain.clusters:
                rt = live.get((lname, c.name))
                by_ep = {(e["address"], e["port"]): e for e in (rt or {}).get("endpoints", [])}
                out.append(
                    {
                        "name": c.name,
                        "listener": lname,
                        "protocol": "http",
                        # A chain with routes or splits counts per cluster; a simple one on its listener.
                        "routed": not view.chain.simple,
                        "service": c.service,
                        "subset": c.subset or None,
                        "datacenter": c.datacenter,
                        "sni": c.sni,
                        "expected_identity": c.expected_uri,
                        "active_requests": (rt or {}).get("active_requests", 0),
                        "pending_requests": (rt or {}).get("pending_requests", 0),
                        "ejected_endpoints": (rt or {}).get("ejected", 0),
                        "pooled_connections": (rt or {}).get("connections", 0),
                        "endpoints": [_endpoint(e, by_ep.get((e.address, e.port), {})) for e in c.endpoints],
                    }
                )
            continue
        out.append(
            {
                "name": view.service if view.datacenter == snap.datacenter else f"{view.service}.{view.datacenter}",
                "listener": lname,
                "protocol": "tcp",
                "service": view.service,
                "subset": None,
                "datacenter": view.datacenter,
                "sni": view.sni,
                "expected_identity": view.expected_uri,
                "active_connections": int(stats.gauge("meshgw_connections_active", listener=lname)),
                "endpoints": [_endpoint(e, None) for e in view.endpoints],
            }
        )
    if snap.gateway is not None:
        for scope, table in (("local", snap.gateway.local), ("remote", snap.gateway.remote)):
            for name, eps in sorted(table.items()):
                out.append(
                    {
                        "name": f"{scope}:{name}",
                        "listener": "mesh-gateway",
                        "protocol": "tcp",
                        "service": name if scope == "local" else None,
                        "datacenter": snap.datacenter if scope == "local" else name,
                        "endpoints": [_endpoint(e, None) for e in eps],
                    }
                )
    if snap.terminating is not None:
        for name, linked in sorted(snap.terminating.linked.items()):
            out.append(
                {
                    "name": name,
                    "listener": "terminating-gateway",
                    "protocol": "tcp",
                    "service": name,
                    "datacenter": snap.datacenter,
                    "sni": linked.sni,
                    "tls_origination": linked.origination is not None,
                    "endpoints": [_endpoint(e, None) for e in linked.endpoints],
                }
            )
    return out


def listeners(src: ConsoleSource) -> list[dict[str, Any]]:
    ports = src.ports()
    stats = src.stats()
    return [
        {
            "name": info.name,
            "kind": info.kind,
            "bind": info.bind,
            "protocol": info.protocol,
            "port": ports.get(info.name),
            "accepting": info.name in ports,
            "active_connections": int(stats.gauge("meshgw_connections_active", listener=info.name)),
            "accepted_total": int(stats.counter("meshgw_connections_accepted_total", listener=info.name)),
            "denied_total": int(stats.counter("meshgw_connections_denied_total", listener=info.name)),
        }
        for info in src.listeners()
    ]


def _leaf(
    cert_pem: bytes, spiffe_id: str, serial: str, not_before: float, not_after: float, now: float
) -> dict[str, Any]:
    parsed = describe_bundle(cert_pem)
    due = rotation_due(not_before, not_after)
    return {
        "spiffe_id": spiffe_id,
        "serial": serial,
        "issuer": parsed[0].issuer if parsed else None,
        "subject": parsed[0].subject if parsed else None,
        "not_before": not_before,
        "not_after": not_after,
        "valid": not_before <= now < not_after,
        "expires_in_seconds": round(not_after - now, 1),
        "rotation_due_at": round(due, 1),
        "rotation_in_seconds": round(max(0.0, due - now), 1),
        "sha256_fingerprint": parsed[0].sha256 if parsed else None,
    }


_SOURCES = {"builtin": "built-in CA", "consul": "Consul Connect CA", "vault": "Vault PKI"}


def certs(src: ConsoleSource) -> dict[str, Any]:
    cfg, snap, now = src.config(), src.snapshot, time.time()
    source = _SOURCES.get(cfg.certificates.type, cfg.certificates.type)
    out: dict[str, Any] = {"source": source, "provider": cfg.certificates.type, "trust_domain": None, "leaf": None}
    roots: list[dict[str, Any]] = []
    if snap.tls is not None:
        leaf = snap.tls.leaf
        out["trust_domain"] = snap.tls.trust_domain
        out["leaf"] = _leaf(leaf.cert_pem, leaf.spiffe_id, leaf.serial, leaf.not_before, leaf.not_after, now)
        roots = [{**c.to_json(now), "source": source} for c in describe_bundle(snap.tls.roots_pem)]
    out["roots"] = roots
    if snap.terminating is not None:
        linked = {}
        for name, view in sorted(snap.terminating.linked.items()):
            lf = view.leaf
            linked[name] = (
                None if lf is None else _leaf(lf.cert_pem, lf.spiffe_id, lf.serial, lf.not_before, lf.not_after, now)
            )
        out["linked_services"] = linked
    return out


def _sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels or {})


def _sum_samples(name: str) -> float:
    total = 0.0
    for fam in metrics.REGISTRY.collect():
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


def health(src: ConsoleSource) -> dict[str, Any]:
    cfg, snap, now = src.config(), src.snapshot, time.time()
    reason = src.not_ready()
    if reason is None:
        ok, why = snap.ready()
    else:
        ok, why = False, reason
    cp: dict[str, Any] = {"type": cfg.control_plane.type}
    if cfg.control_plane.type == "consul":
        up = _sample("meshgw_consul_up")
        cp["state"] = "up" if up == 1 else "down" if up == 0 else "unknown"
        cp["last_success_at"] = _sample("meshgw_consul_last_success_timestamp_seconds")
    else:
        cp["state"] = "files"
    cp["errors_total"] = _sum_samples("meshgw_control_plane_errors_total")
    certs_state: dict[str, Any] = {"provider": cfg.certificates.type}
    if cfg.certificates.type == "vault":
        certs_state["vault_failures_total"] = _sum_samples("meshgw_vault_failures_total")
    certs_state["leaf_valid"] = snap.tls is not None and snap.tls.valid(now)
    return {
        "ready": ok,
        "reason": why,
        "maintenance": {
            "healthcheck_failed": src.maintenance.healthcheck_failed,
            "drained_listeners": list(src.maintenance.drained),
        },
        "service": cfg.service.name,
        "mode": cfg.mode,
        "datacenter": cfg.datacenter,
        "snapshot": {
            "version": snap.version,
            "core_version": src.core.version(),
            "built_at": snap.built_at,
            "age_seconds": round(now - snap.built_at, 1),
        },
        "control_plane": cp,
        "certificates": certs_state,
        "last_errors": [e.to_json() for e in src.errors.latest()],
        "uptime_seconds": round(now - src.started_at, 1),
    }


def config_dump(src: ConsoleSource) -> dict[str, Any]:
    from gateway import dataplane
    from gateway.version import VERSION

    snap = src.snapshot
    return scrub(
        {
            "version": VERSION,
            "config": src.config().to_public_dict(),
            "snapshot": snap.to_json(),
            "snapshot_age_seconds": round(time.time() - snap.built_at, 3),
            "data_path": dataplane.describe(),
            "listeners": listeners(src),
        }
    )
