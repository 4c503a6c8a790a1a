"""HTTP policy sections: balancing, retries, limits, passive health checks, access logs (Consul's knobs with
Envoy's defaults where Consul leaves them unset, consul.md §8.1, §8.3, §8.5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway._core import access_log_fields
from gateway.config.reader import (
    _bool,
    _Reader,
    _resolve,
    choice,
    parse_duration,
    text,
)

# Consul's knobs (consul.md §8.1 UpstreamConfig Limits/PassiveHealthCheck, §8.3 route retries, §8.5 resolver
# LoadBalancer) with Envoy's defaults where Consul leaves them unset, in meshgw's snake_case YAML.

# peak_ewma: Linkerd's latency-aware balancer (power of two choices over peak-EWMA latency x requests in flight),
# in the Rust core. A service-resolver's LoadBalancer.Policy takes Consul's list only (consul.md §8.5).
CONSUL_LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
LB_POLICIES = (*CONSUL_LB_POLICIES, "peak_ewma")

HASH_FIELDS = ("header", "cookie", "query_parameter")

# Envoy retry-on tokens that mean something for HTTP/1.1 (C:api/config_entry_discoverychain.go RetryOn).
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
)
# gRPC's tokens (C:agent/structs/config_entry_discoverychain.go isValidRetryCondition): Envoy retries on them only
# when grpc-status comes in the response headers (trailers-only), http2-grpc.md §2.7.
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")

# The access log's field names and default selection are the core's (it renders the records): one list.
_names, _defaults = access_log_fields()
ACCESS_LOG_FIELDS: tuple[str, ...] = tuple(_names)
DEFAULT_ACCESS_LOG_FIELDS: tuple[str, ...] = tuple(_defaults)

_HTTP_UPSTREAM_KEYS = ("idle_timeout", "load_balancer", "retries", "limits", "passive_health_check")


@dataclass(frozen=True)
class HashPolicyConfig:
    """One of a resolver's ``LoadBalancer.HashPolicies``: a header, cookie or query parameter, or the source IP."""

    field: str = ""
    field_value: str = ""
    source_ip: bool = False
    terminal: bool = False


@dataclass(frozen=True)
class LoadBalancerConfig:
    policy: str = "round_robin"
    choice_count: int = 2  # least_request (Envoy's default: power of two choices)
    minimum_ring_size: int = 1024  # ring_hash (Envoy's defaults)
    maximum_ring_size: int = 8 * 1024 * 1024
    hash_policies: tuple[HashPolicyConfig, ...] = ()


@dataclass(frozen=True)
class RetryConfig:
    """Retries of one request. Connect failures are retried for every method (nothing was sent); resets and status
    codes only for idempotent methods (RFC 9110 §9.2.2) unless ``retry_non_idempotent``. Concurrent retries of a
    cluster are capped by a budget: ``budget_percent`` of the requests in flight, at least ``min_retry_concurrency``
    (Envoy's retry_budget defaults, 20 % and 3)."""

    num_retries: int = 2
    retry_on_connect_failure: bool = True
    retry_on_reset: bool = True
    retry_on_status_codes: tuple[int, ...] = ()
    retry_on: tuple[str, ...] = ()
    retry_non_idempotent: bool = False
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    backoff_base: float = 0.025  # Envoy's base_interval; full jitter, capped at 10 x base
    backoff_max: float = 0.25


@dataclass(frozen=True)
class LimitsConfig:
    """Circuit breakers of each cluster (Consul's UpstreamConfig.Limits; Envoy's defaults 1024)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_concurrent_requests: int = 1024


@dataclass(frozen=True)
class PassiveHealthCheckConfig:
    """Outlier detection (Consul's PassiveHealthCheck → Envoy OutlierDetection, C:agent/xds/config.go
    ToOutlierDetection; unset fields keep Envoy's defaults)."""

    interval: float = 10.0
    max_failures: int = 5  # consecutive 5xx (connect failures and resets count as 503)
    enforcing_consecutive_5xx: int = 100
    consecutive_gateway_failure: int = 5  # consecutive 502/503/504 (and local errors)
    enforcing_consecutive_gateway_failure: int = 0  # Envoy's default: counted, not enforced
    max_ejection_percent: int = 10
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0


@dataclass(frozen=True)
class AccessLogConfig:
    """JSON access logs, one line per request (the fields of Consul's proxy-defaults AccessLogs, JSON only)."""

    enabled: bool = False
    type: str = "stdout"  # stdout | stderr | file
    path: Path | None = None
    fields: tuple[str, ...] = DEFAULT_ACCESS_LOG_FIELDS
    flush_interval: float = 0.2  # lines are written in batches, never one syscall per request


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError(f"{value!r} is not a percentage (expected a number 0-100)")
    return float(value)


def _status_codes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
    ):
        raise ValueError(f"{value!r} is not a list of HTTP status codes (expected e.g. [502, 503])")
    return tuple(value)


def _retry_on(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"{value!r} is not a list of retry conditions (expected some of: {', '.join(RETRY_ON + GRPC_RETRY_ON)})"
        )
    for v in value:
        if v not in RETRY_ON and v not in GRPC_RETRY_ON:
            raise ValueError(f"{v!r} is not a retry condition (expected one of: {', '.join(RETRY_ON + GRPC_RETRY_ON)})")
    return tuple(value)


def _parse_hash_policy(r: _Reader, raw: Any, key: str) -> HashPolicyConfig:
    h = r.mapping(raw, key, ("field", "field_value", "source_ip", "terminal"))
    source_ip = bool(r.get(h, key, "source_ip", _bool, False))
    fld = r.get(h, key, "field", choice(*HASH_FIELDS), "") or ""
    value = r.get(h, key, "field_value", text, "") or ""
    if source_ip and fld:
        r.problem(key, "set either field (with field_value) or source_ip: true, not both")
    elif not source_ip and not fld:
        r.problem(key, f"needs field ({', '.join(HASH_FIELDS)}) with field_value, or source_ip: true")
    elif fld and not value:
        r.problem(f"{key}.field_value", f"is required with field: {fld} (the {fld.replace('_', ' ')} name)")
    return HashPolicyConfig(
        field=fld,
        field_value=value.lower() if fld == "header" else value,
        source_ip=source_ip,
        terminal=bool(r.get(h, key, "terminal", _bool, False)),
    )


def _parse_load_balancer(r: _Reader, raw: Any, key: str) -> LoadBalancerConfig:
    lb = r.mapping(raw, key, ("policy", "choice_count", "minimum_ring_size", "maximum_ring_size", "hash_policies"))
    policy = r.get(lb, key, "policy", choice(*LB_POLICIES), "round_robin") or "round_robin"
    raw_hp = lb.get("hash_policies") or []
    if not isinstance(raw_hp, list):
        r.problem(f"{key}.hash_policies", "expected a list of {field, field_value, terminal} or {source_ip: true}")
        raw_hp = []
    hps = tuple(_parse_hash_policy(r, h, f"{key}.hash_policies[{n}]") for n, h in enumerate(raw_hp))
    if hps and policy not in ("ring_hash", "maglev"):
        r.problem(f"{key}.hash_policies", f"only apply to ring_hash and maglev (policy is {policy})")
    cc = r.get(lb, key, "choice_count", _nonneg_int, 2) or 2
    if cc < 2:
        r.problem(f"{key}.choice_count", f"{cc} is too small (expected at least 2)")
    lo = r.get(lb, key, "minimum_ring_size", _nonneg_int, 1024) or 1024
    hi = r.get(lb, key, "maximum_ring_size", _nonneg_int, 8 * 1024 * 1024) or 8 * 1024 * 1024
    if lo > hi:
        r.problem(f"{key}.minimum_ring_size", f"{lo} is larger than maximum_ring_size {hi}")
    return LoadBalancerConfig(policy, cc, lo, hi, hps)


def _parse_retries(r: _Reader, raw: Any, key: str) -> RetryConfig:
    d = RetryConfig()
    m = r.mapping(raw, key, tuple(RetryConfig.__dataclass_fields__))
    return RetryConfig(
        num_retries=r.get(m, key, "num_retries", _nonneg_int, d.num_retries),  # type: ignore[arg-type]
        retry_on_connect_failure=bool(r.get(m, key, "retry_on_connect_failure", _bool, d.retry_on_connect_failure)),
        retry_on_reset=bool(r.get(m, key, "retry_on_reset", _bool, d.retry_on_reset)),
        retry_on_status_codes=r.get(m, key, "retry_on_status_codes", _status_codes, ()) or (),
        retry_on=r.get(m, key, "retry_on", _retry_on, ()) or (),
        retry_non_idempotent=bool(r.get(m, key, "retry_non_idempotent", _bool, False)),
        budget_percent=r.get(m, key, "budget_percent", _percent, d.budget_percent),  # type: ignore[arg-type]
        min_retry_concurrency=r.get(m, key, "min_retry_concurrency", _nonneg_int, d.min_retry_concurrency),  # type: ignore[arg-type]
        backoff_base=r.get(m, key, "backoff_base", parse_duration, d.backoff_base),  # type: ignore[arg-type]
        backoff_max=r.get(m, key, "backoff_max", parse_duration, d.backoff_max),  # type: ignore[arg-type]
    )


def _parse_limits(r: _Reader, raw: Any, key: str) -> LimitsConfig:
    d = LimitsConfig()
    m = r.mapping(raw, key, tuple(LimitsConfig.__dataclass_fields__))
    return LimitsConfig(
        *(r.get(m, key, n, _nonneg_int, getattr(d, n)) for n in LimitsConfig.__dataclass_fields__)  # type: ignore[arg-type]
    )


def _parse_passive(r: _Reader, raw: Any, key: str) -> PassiveHealthCheckConfig:
    d = PassiveHealthCheckConfig()
    m = r.mapping(raw, key, tuple(PassiveHealthCheckConfig.__dataclass_fields__))
    return PassiveHealthCheckConfig(
        interval=r.get(m, key, "interval", parse_duration, d.interval) or d.interval,
        max_failures=r.get(m, key, "max_failures", _nonneg_int, d.max_failures),  # type: ignore[arg-type]
        enforcing_consecutive_5xx=int(
            r.get(m, key, "enforcing_consecutive_5xx", _percent, d.enforcing_consecutive_5xx)  # type: ignore[arg-type]
        ),
        consecutive_gateway_failure=r.get(
            m, key, "consecutive_gateway_failure", _nonneg_int, d.consecutive_gateway_failure
        ),  # type: ignore[arg-type]
        enforcing_consecutive_gateway_failure=int(
            r.get(m, key, "enforcing_consecutive_gateway_failure", _percent, 0)  # type: ignore[arg-type]
        ),
        max_ejection_percent=int(r.get(m, key, "max_ejection_percent", _percent, d.max_ejection_percent)),  # type: ignore[arg-type]
        base_ejection_time=r.get(m, key, "base_ejection_time", parse_duration, d.base_ejection_time),  # type: ignore[arg-type]
        max_ejection_time=r.get(m, key, "max_ejection_time", parse_duration, d.max_ejection_time),  # type: ignore[arg-type]
    )


def _parse_http_upstream(r: _Reader, u: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "idle_timeout": r.get(u, key, "idle_timeout", parse_duration, 3600.0) or 3600.0,
        "load_balancer": _parse_load_balancer(r, u.get("load_balancer"), f"{key}.load_balancer"),
        "retries": _parse_retries(r, u.get("retries"), f"{key}.retries"),
        "limits": _parse_limits(r, u.get("limits"), f"{key}.limits"),
        "passive_health_check": _parse_passive(r, u.get("passive_health_check"), f"{key}.passive_health_check"),
    }


def _access_log_fields(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{value!r} is not a list of field names (expected some of: {', '.join(ACCESS_LOG_FIELDS)})")
    for v in value:
        if v not in ACCESS_LOG_FIELDS:
            raise ValueError(f"{v!r} is not an access log field (expected one of: {', '.join(ACCESS_LOG_FIELDS)})")
    return tuple(value)


def _parse_access_log(r: _Reader, raw: Any, base: Path) -> AccessLogConfig:
    key = "access_log"
    m = r.mapping(raw, key, ("enabled", "type", "path", "fields", "flush_interval"))
    if raw is None:
        return AccessLogConfig()
    typ = r.get(m, key, "type", choice("stdout", "stderr", "file"), None)
    path = r.get(m, key, "path", text, None)
    if typ is None:
        typ = "file" if path else "stdout"
    if typ == "file" and not path:
        r.problem(f"{key}.path", "is required with type: file")
    if typ != "file" and path:
        r.problem(f"{key}.path", f"only goes with type: file (type is {typ})")
    return AccessLogConfig(
        enabled=bool(r.get(m, key, "enabled", _bool, True)),
        type=typ,
        path=_resolve(base, path) if path else None,
        fields=r.get(m, key, "fields", _access_log_fields, DEFAULT_ACCESS_LOG_FIELDS) or DEFAULT_ACCESS_LOG_FIELDS,
        flush_interval=r.get(m, key, "flush_interval", parse_duration, 0.2) or 0.2,
    )
