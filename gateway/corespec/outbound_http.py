"""The ``http`` section of an upstream listener for the Rust core (gateway/core/src/outbound/http/mod.rs has the
schema): the discovery chains Python already compiled (gateway/http/routing.py ``compile_chain``: routes, splits
with merged header rules, clusters with their endpoints, balancer, breakers and outlier settings) flattened into
plain data. Nothing here re-reads Consul's entries; one view for a sidecar upstream, several (each with its Host
patterns) for an ingress gateway's HTTP listener.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.snapshot import upstream_key

if TYPE_CHECKING:
    from gateway.config import (
        Config,
        LimitsConfig,
        PassiveHealthCheckConfig,
        RetryConfig,
        UpstreamConfig,
    )
    from gateway.http.entries import HTTPMatch
    from gateway.http.routing import Cluster, HeaderRules, Route
    from gateway.snapshot import Snapshot, UpstreamView


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds * 1000))


def _retry(r: RetryConfig) -> dict[str, Any]:
    return {
        "num_retries": r.num_retries,
        "retry_on_connect_failure": r.retry_on_connect_failure,
        "retry_on_reset": r.retry_on_reset,
        "retry_on_status_codes": list(r.retry_on_status_codes),
        "retry_on": list(r.retry_on),
        "retry_non_idempotent": r.retry_non_idempotent,
        "budget_percent": r.budget_percent,
        "min_retry_concurrency": r.min_retry_concurrency,
        "backoff_base_ms": _ms(r.backoff_base),
        "backoff_max_ms": _ms(r.backoff_max),
    }


def _rules(h: HeaderRules) -> dict[str, Any]:
    """render_rules' pre-rendered form back into names to drop and (name, value) pairs to add."""
    add: list[list[str]] = []
    for line in h.extra.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            add.append([name.decode("latin-1").strip(), value.decode("latin-1").strip()])
    return {"drop": sorted(n.decode("latin-1") for n in h.drop), "add": add}


def _match(m: HTTPMatch | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "path_exact": m.path_exact,
        "path_prefix": m.path_prefix,
        "path_regex": m.path_regex,
        "case_insensitive": m.case_insensitive,
        "methods": list(m.methods),
        "headers": [
            {
                "name": h.name,
                "exact": h.exact,
                "prefix": h.prefix,
                "suffix": h.suffix,
                "regex": h.regex,
                "invert": h.invert,
            }
            for h in m.header
        ],
        "query": [{"name": q.name, "exact": q.exact, "regex": q.regex} for q in m.query_param],
    }


def _route(r: Route) -> dict[str, Any]:
    return {
        "name": r.name,
        "match": _match(r.http_match),
        "splits": [
            {
                "weight": s.weight,
                "cluster": s.cluster.name,
                "request_headers": _rules(s.request),
                "response_headers": _rules(s.response),
            }
            for s in r.splits
        ],
        "request_timeout_ms": _ms(r.request_timeout),
        "idle_timeout_ms": _ms(r.idle_timeout),
        "retry": _retry(r.retry) if r.retry is not None else None,
        "prefix_rewrite": r.prefix_rewrite.decode("latin-1") if r.prefix_rewrite is not None else None,
        "match_prefix": r.match_prefix.decode("latin-1"),
    }


def _limits(x: LimitsConfig) -> dict[str, int]:
    return {
        "max_connections": x.max_connections,
        "max_pending_requests": x.max_pending_requests,
        "max_concurrent_requests": x.max_concurrent_requests,
    }


def _outlier(o: PassiveHealthCheckConfig) -> dict[str, Any]:
    return {
        "interval_ms": _ms(o.interval),
        "max_failures": o.max_failures,
        "enforcing_consecutive_5xx": o.enforcing_consecutive_5xx,
        "consecutive_gateway_failure": o.consecutive_gateway_failure,
        "enforcing_consecutive_gateway_failure": o.enforcing_consecutive_gateway_failure,
        "max_ejection_percent": o.max_ejection_percent,
        "base_ejection_time_ms": _ms(o.base_ejection_time),
        "max_ejection_time_ms": _ms(o.max_ejection_time),
    }


def _cluster(c: Cluster) -> dict[str, Any]:
    bal = c.balancer
    lb: dict[str, Any] = {
        "policy": bal.policy,
        "choice_count": bal.choice_count,
        "hash_policies": [
            {"field": field, "name": name.decode("latin-1"), "terminal": terminal}
            for field, name, terminal in c.hash_policies
        ],
    }
    if bal.policy == "ring_hash" and bal.ring_hashes:
        # The ring Python built already has its size (the minimum scaled to the weights): the core builds the same.
        lb["minimum_ring_size"] = len(bal.ring_hashes)
        lb["maximum_ring_size"] = max(len(bal.ring_hashes), 1024)
    return {
        "sni": c.sni,
        "expected_uri": c.expected_uri,
        "endpoints": [e.to_json() for e in c.endpoints],
        "lb": lb,
        "connect_timeout_ms": _ms(c.connect_timeout),
        "request_timeout_ms": _ms(c.request_timeout),
        "limits": _limits(c.limits),
        "outlier": _outlier(c.outlier),
    }


def _upstream_of(cfg: Config, view: UpstreamView) -> UpstreamConfig | None:
    for u in cfg.upstreams:
        if upstream_key(u, cfg) == view.key:
            return u
    return None


def spec(cfg: Config, snap: Snapshot, views: list[UpstreamView]) -> dict[str, Any]:
    """The ``http`` section for one upstream listener: ``views[0]`` for a sidecar upstream, every service of an
    ingress gateway's HTTP listener otherwise (its chain picked by the Host patterns, consul.md §8.6)."""
    ingress = cfg.mode == "ingress-gateway"
    first = _upstream_of(cfg, views[0]) if views else None
    chains: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    observe = ingress
    for view in views:
        chain = view.chain
        if chain is None:
            continue
        u = _upstream_of(cfg, view)
        hosts = list(u.hosts) if (ingress and u is not None and u.hosts) else ["*"]
        chains.append({"name": view.key, "hosts": hosts, "routes": [_route(r) for r in chain.routes]})
        for c in chain.clusters:
            clusters.setdefault(c.name, _cluster(c))
        for r in chain.routes:  # a failover target may only be reachable through a split
            for s in r.splits:
                clusters.setdefault(s.cluster.name, _cluster(s.cluster))
        observe = observe or not chain.simple
    alog = snap.access_log
    return {
        "ingress": ingress,
        "observe": observe,
        "source": cfg.service.name,
        "request_timeout_ms": _ms(first.request_timeout) if first is not None else None,
        "idle_timeout_ms": _ms(first.idle_timeout) if first is not None else None,
        "retry": _retry(first.retries) if first is not None else None,
        "access_log": {"fields": list(alog.fields)} if alog is not None else None,
        "chains": chains,
        "clusters": clusters,
    }
