"""The snapshot the Rust core runs on, compiled from the Python one (design.md "The snapshot"): plain JSON with
the listeners this process serves, its mTLS material, compiled intention tables and the upstream clusters.

The schema is the core's `src/snapshot.rs`; each HTTP section has its own emitter beside this one
(``inbound_http``, ``outbound_http``, ``expose``) and its own reader in the core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import Config, UpstreamConfig
from gateway.config.reader import is_http_like
from gateway.snapshot import Endpoint, Snapshot, upstream_key

# What identifies a listener: the keys gateway.app._listener_specs makes ("inbound", ...), as tuples.
ListenerKey = tuple[Any, ...]


def _endpoint(e: Endpoint) -> dict[str, Any]:
    return {"address": e.address, "port": e.port, "weight": e.weight, "health": e.health, "datacenter": e.datacenter}


def _endpoints(eps: Iterable[Endpoint]) -> list[dict[str, Any]]:
    return [_endpoint(e) for e in eps]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _tls(snap: Snapshot) -> dict[str, Any] | None:
    if snap.tls is None:
        return None
    leaf = snap.tls.leaf
    return {
        "roots_pem": snap.tls.roots_pem.decode(),
        "cert_pem": leaf.cert_pem.decode(),
        "key_pem": leaf.key_pem.decode(),
        "not_before": leaf.not_before,
        "not_after": leaf.not_after,
    }


def _inbound(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    assert cfg.inbound is not None
    out: dict[str, Any] = {
        "name": "inbound",
        "bind": str(cfg.inbound.bind),
        "kind": "inbound",
        "protocol": cfg.service.protocol,
        "app": {"address": cfg.service.address, "port": cfg.service.port},
        "intentions": snap.intentions.to_core(),
        "limits": {"connect_timeout_ms": _ms(cfg.inbound.connect_timeout)},
    }
    if is_http_like(cfg.service.protocol):
        from gateway.corespec import inbound_http

        out["http"] = inbound_http.spec(cfg, snap)
    return out


def _upstream(cfg: Config, snap: Snapshot, ups: list[UpstreamConfig], name: str) -> dict[str, Any]:
    first = ups[0]
    out: dict[str, Any] = {
        "name": name,
        "bind": str(first.bind),
        "kind": "upstream",
        "protocol": first.protocol,
        "cluster": upstream_key(first, cfg),
        "limits": {"connect_timeout_ms": _ms(first.connect_timeout)},
    }
    if is_http_like(first.protocol):
        from gateway.corespec import outbound_http

        views = [snap.upstreams[upstream_key(u, cfg)] for u in ups if upstream_key(u, cfg) in snap.upstreams]
        out["http"] = outbound_http.spec(cfg, snap, views)
    return out


def _mesh_gateway(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    assert cfg.gateway is not None
    routes = snap.gateway
    return {
        "name": "mesh-gateway",
        "bind": str(cfg.gateway.bind),
        "kind": "mesh_gateway",
        "local": {k: _endpoints(v) for k, v in (routes.local.items() if routes else ())},
        "remote": {k: _endpoints(v) for k, v in (routes.remote.items() if routes else ())},
        "limits": {"handshake_timeout_ms": _ms(cfg.gateway.handshake_timeout)},
    }


def _read(path: Any) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None  # preflight checked the files; one gone since is refused by the core (never plaintext)


def _terminating_gateway(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    assert cfg.gateway is not None
    linked = snap.terminating.linked if snap.terminating is not None else {}
    by_name = {ls.name: ls for ls in cfg.linked_services}
    services = []
    for name, view in linked.items():
        ls = by_name.get(name)
        item: dict[str, Any] = {
            "service": name,
            "sni": view.sni,
            "intentions": view.intentions.to_core(),
            "endpoints": _endpoints(view.endpoints),
            "tls_required": view.tls_required,
        }
        if view.leaf is not None:
            item["cert_pem"] = view.leaf.cert_pem.decode()
            item["key_pem"] = view.leaf.key_pem.decode()
        if ls is not None and ls.ca_file is not None:
            ca = _read(ls.ca_file)
            if ca is not None:
                item["origination"] = {
                    "ca_pem": ca,
                    "cert_pem": _read(ls.cert_file),
                    "key_pem": _read(ls.key_file),
                    "sni": view.origination_sni,
                }
        services.append(item)
    return {
        "name": "terminating-gateway",
        "bind": str(cfg.gateway.bind),
        "kind": "terminating_gateway",
        "services": services,
    }


def _clusters(snap: Snapshot) -> dict[str, Any]:
    return {
        key: {"sni": v.sni, "expected_uri": v.expected_uri, "endpoints": _endpoints(v.endpoints)}
        for key, v in snap.upstreams.items()
    }


def listener_spec(cfg: Config, snap: Snapshot, key: ListenerKey) -> dict[str, Any]:
    kind = key[0]
    if kind == "expose":
        from gateway.corespec import expose

        return expose.spec(cfg, snap, key[1], key[2])
    if kind == "inbound":
        return _inbound(cfg, snap)
    if kind == "mesh-gateway":
        return _mesh_gateway(cfg, snap)
    if kind == "terminating-gateway":
        return _terminating_gateway(cfg, snap)
    if kind == "ingress-http":
        return _upstream(cfg, snap, list(key[1]), f"ingress:{key[1][0].bind.port}")
    u: UpstreamConfig = key[1]
    return _upstream(cfg, snap, [u], f"upstream:{u.service}")


def build(cfg: Config, snap: Snapshot, listeners: Mapping[ListenerKey, str]) -> dict[str, Any]:
    """The core's snapshot for ``listeners`` (key -> listener name)."""
    return {
        "version": snap.version,
        "datacenter": snap.datacenter,
        "trust_domain": snap.tls.trust_domain if snap.tls is not None else "",
        "tls": _tls(snap),
        "listeners": [listener_spec(cfg, snap, key) for key in listeners],
        "clusters": _clusters(snap),
    }
