"""Consul's discovery-chain config entries as frozen values: service-router, service-splitter, service-resolver,
service-defaults (consul.md §8.1, §8.3-§8.5; C:api/config_entry_discoverychain.go, C:api/config_entry.go), and the
``mesh`` entry's HTTP settings (l7-security.md §1.1; C:agent/structs/config_entry_mesh.go).

The same parser reads them from meshgw.yaml (``config_entries:``, local control plane) and from Consul's
``/v1/config/<kind>`` answers. Keys are matched the way Consul decodes entries: case-insensitively, with
snake_case accepted (``PathPrefix``, ``path_prefix``, ``pathprefix``). Durations are Go duration strings
(``"1m30s"``) or integer nanoseconds, as Consul writes and reads them. Problems are reported as one line each:
``WHERE: Kind/Name: key.path: what is wrong``.

Subset filters are Consul's bexpr (github.com/hashicorp/go-bexpr) over ``Service.*`` and ``Node.*``; the subset
of the grammar implemented here (``==``, ``!=``, ``in``, ``not in``, ``contains``, ``not contains``, ``matches``,
``not matches``, ``is empty``, ``is not empty``, ``and``, ``or``, ``not``, parentheses) covers what subset
filters use in practice (``Service.Meta.version == v1``, ``v2 in Service.Tags``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import (
    CONSUL_LB_POLICIES,
    GRPC_RETRY_ON,
    RETRY_ON,
    HashPolicyConfig,
    LimitsConfig,
    LoadBalancerConfig,
    PassiveHealthCheckConfig,
)
from gateway.problems import Problems, fold_loose

KINDS = ("service-router", "service-splitter", "service-resolver", "service-defaults", "proxy-defaults", "mesh")


class EntryError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------- values


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    present: bool = False
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    invert: bool = False


@dataclass(frozen=True)
class QueryMatch:
    name: str
    present: bool = False
    exact: str | None = None
    regex: str | None = None


@dataclass(frozen=True)
class HTTPMatch:
    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    case_insensitive: bool = False
    header: tuple[HeaderMatch, ...] = ()
    query_param: tuple[QueryMatch, ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeaderMods:
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteDestination:
    service: str = ""
    service_subset: str = ""
    prefix_rewrite: str | None = None
    request_timeout: float = 0.0
    idle_timeout: float = 0.0
    num_retries: int = 0
    retry_on_connect_failure: bool = False
    retry_on_status_codes: tuple[int, ...] = ()
    retry_on: tuple[str, ...] = ()
    request_headers: HeaderMods = HeaderMods()
    response_headers: HeaderMods = HeaderMods()

    @property
    def has_retry(self) -> bool:
        return bool(self.num_retries or self.retry_on_connect_failure or self.retry_on_status_codes or self.retry_on)


@dataclass(frozen=True)
class RouterRoute:
    match: HTTPMatch | None = None
    destination: RouteDestination = RouteDestination()


@dataclass(frozen=True)
class ServiceRouter:
    name: str
    routes: tuple[RouterRoute, ...] = ()
    kind: str = "service-router"


@dataclass(frozen=True)
class SplitEntry:
    weight: float
    service: str = ""
    service_subset: str = ""
    request_headers: HeaderMods = HeaderMods()
    response_headers: HeaderMods = HeaderMods()


@dataclass(frozen=True)
class ServiceSplitter:
    name: str
    splits: tuple[SplitEntry, ...] = ()
    kind: str = "service-splitter"


@dataclass(frozen=True)
class Subset:
    filter: str = ""
    only_passing: bool = False


@dataclass(frozen=True)
class Redirect:
    service: str = ""
    service_subset: str = ""
    datacenter: str = ""


@dataclass(frozen=True)
class FailoverTarget:
    service: str = ""  # "" : the resolver's own service
    service_subset: str = ""
    datacenter: str = ""  # "" : the datacenter of the target that failed


@dataclass(frozen=True)
class ServiceResolver:
    name: str
    default_subset: str = ""
    subsets: tuple[tuple[str, Subset], ...] = ()
    redirect: Redirect | None = None
    # subset name or "*" -> targets tried in order when the primary target has no healthy instance.
    failover: tuple[tuple[str, tuple[FailoverTarget, ...]], ...] = ()
    connect_timeout: float = 0.0
    request_timeout: float = 0.0
    load_balancer: LoadBalancerConfig | None = None
    kind: str = "service-resolver"

    def subset(self, name: str) -> Subset | None:
        for n, s in self.subsets:
            if n == name:
                return s
        return None

    def failover_for(self, subset: str) -> tuple[FailoverTarget, ...]:
        """The subset's own failover, else the "*" one (consul.md §8.5)."""
        table = dict(self.failover)
        return table.get(subset) or table.get("*") or ()


@dataclass(frozen=True)
class UpstreamSettings:
    """service-defaults UpstreamConfig (Defaults, or an Override for ``name``): None where unset."""

    name: str = ""
    connect_timeout: float | None = None
    limits: LimitsConfig | None = None
    passive_health_check: PassiveHealthCheckConfig | None = None
    protocol: str = ""  # the caller's view of the upstream's protocol (http2-grpc.md §1.3); "": not set


@dataclass(frozen=True)
class ServiceDefaults:
    name: str
    protocol: str = ""
    upstream_defaults: UpstreamSettings | None = None
    upstream_overrides: tuple[UpstreamSettings, ...] = ()
    mesh_gateway_mode: str = ""  # MeshGateway.Mode for this service's proxies' upstreams ("" : not set)
    kind: str = "service-defaults"


@dataclass(frozen=True)
class ProxyDefaults:
    """``proxy-defaults`` (name ``global``, consul.md §8.2): meshgw reads its MeshGateway.Mode and its
    ``Config.protocol`` (the default protocol, http2-grpc.md §1.2), the last layers."""

    name: str = "global"
    mesh_gateway_mode: str = ""
    protocol: str = ""  # Config.protocol, lower-cased; "": not set
    kind: str = "proxy-defaults"


# Consul's enum values for the mesh entry's HTTP.Incoming.RequestNormalization (l7-security.md §1.1;
# C:agent/structs/config_entry_mesh.go), in Consul's order: its error message lists them so.
ESCAPED_SLASH_ACTIONS = (
    "IMPLEMENTATION_SPECIFIC_DEFAULT",
    "KEEP_UNCHANGED",
    "REJECT_REQUEST",
    "UNESCAPE_AND_REDIRECT",
    "UNESCAPE_AND_FORWARD",
)
UNDERSCORE_ACTIONS = ("ALLOW", "REJECT_REQUEST", "DROP_HEADER")


@dataclass(frozen=True)
class RequestNormalization:
    """``HTTP.Incoming.RequestNormalization`` of the ``mesh`` entry (l7-security.md §1.1); "" means Consul's
    default (IMPLEMENTATION_SPECIFIC_DEFAULT / ALLOW)."""

    insecure_disable_path_normalization: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: str = ""
    headers_with_underscores_action: str = ""


@dataclass(frozen=True)
class MeshEntry:
    """The ``mesh`` entry (name ``mesh``): meshgw reads how inbound HTTP requests are normalized and whether
    X-Forwarded-Client-Cert is sanitized."""

    name: str = "mesh"
    sanitize_xfcc: bool = False
    request_normalization: RequestNormalization = RequestNormalization()
    kind: str = "mesh"


Entry = ServiceRouter | ServiceSplitter | ServiceResolver | ServiceDefaults | ProxyDefaults | MeshEntry


# ---------------------------------------------------------------------- parsing helpers

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(value: Any) -> float:
    """Go's time.ParseDuration (``"1m30s"``, ``"250ms"``) or integer nanoseconds (mapstructure's Duration)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration (expected a Go duration such as 5s or 1m30s)")
    s = value.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _GO_DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"{value!r} is not a duration (expected a Go duration such as 5s or 1m30s)")
    return sign * total


_norm = fold_loose


class _R(Problems):
    """A config entry's reader (gateway/problems.py): keys as Consul's decoder takes them, every problem collected.
    ``lenient``: entries read back from Consul may carry fields newer than this code; those are ignored."""

    def __init__(self, where: str, lenient: bool = False):
        super().__init__(where, fold=fold_loose, lenient=lenient)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError(f"{v!r} is not a boolean")


def _uint(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a non-negative integer")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return v


def _regex(v: Any) -> str:
    s = _str(v)
    try:
        re.compile(s)
    except re.error as e:
        raise ValueError(f"{s!r} is not a valid regular expression ({e})") from None
    return s


# ---------------------------------------------------------------------- per kind

_COMMON = ("Kind", "Name", "Namespace", "Partition", "Meta", "CreateIndex", "ModifyIndex", "Hash")


def _header_mods(r: _R, raw: Any, key: str) -> HeaderMods:
    m = r.mapping(raw, key, ("Add", "Set", "Remove"))

    def pairs(name: str) -> tuple[tuple[str, str], ...]:
        v = m.get(name)
        if v is None:
            return ()
        if not isinstance(v, Mapping) or not all(isinstance(x, str) for x in (*v.keys(), *v.values())):
            r.problem(f"{key}.{name}", "expected a mapping of header name to value")
            return ()
        return tuple((str(k), str(val)) for k, val in v.items())

    remove = r.get(m, key, "Remove", _list, []) or []
    if not all(isinstance(x, str) for x in remove):
        r.problem(f"{key}.Remove", "expected a list of header names")
        remove = []
    return HeaderMods(add=pairs("Add"), set=pairs("Set"), remove=tuple(remove))


def _http_match(r: _R, raw: Any, key: str) -> HTTPMatch:
    m = r.mapping(
        raw, key, ("PathExact", "PathPrefix", "PathRegex", "CaseInsensitive", "Header", "QueryParam", "Methods")
    )
    paths = [n for n in ("PathExact", "PathPrefix", "PathRegex") if m.get(n) is not None]
    if len(paths) > 1:
        r.problem(key, f"set at most one of PathExact, PathPrefix, PathRegex (got {', '.join(paths)})")
    for n in ("PathExact", "PathPrefix"):
        v = m.get(n)
        if v is not None and (not isinstance(v, str) or not v.startswith("/")):
            r.problem(f"{key}.{n}", f"{v!r} does not begin with a '/'")
    headers = []
    for i, h in enumerate(r.get(m, key, "Header", _list, []) or []):
        hk = f"{key}.Header[{i}]"
        hm = r.mapping(h, hk, ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert"))
        name = r.get(hm, hk, "Name", _str, "")
        if not name:
            r.problem(f"{hk}.Name", "is required")
        kinds = [n for n in ("Exact", "Prefix", "Suffix", "Regex") if hm.get(n) is not None]
        if hm.get("Present"):
            kinds.append("Present")
        if len(kinds) != 1:
            r.problem(hk, "set exactly one of Present, Exact, Prefix, Suffix, Regex")
        headers.append(
            HeaderMatch(
                name=name.lower(),
                present=bool(r.get(hm, hk, "Present", _bool, False)),
                exact=r.get(hm, hk, "Exact", _str),
                prefix=r.get(hm, hk, "Prefix", _str),
                suffix=r.get(hm, hk, "Suffix", _str),
                regex=r.get(hm, hk, "Regex", _regex),
                invert=bool(r.get(hm, hk, "Invert", _bool, False)),
            )
        )
    queries = []
    for i, q in enumerate(r.get(m, key, "QueryParam", _list, []) or []):
        qk = f"{key}.QueryParam[{i}]"
        qm = r.mapping(q, qk, ("Name", "Present", "Exact", "Regex"))
        name = r.get(qm, qk, "Name", _str, "")
        if not name:
            r.problem(f"{qk}.Name", "is required")
        kinds = [n for n in ("Exact", "Regex") if qm.get(n) is not None] + (["Present"] if qm.get("Present") else [])
        if len(kinds) != 1:
            r.problem(qk, "set exactly one of Present, Exact, Regex")
        queries.append(
            QueryMatch(
                name=name,
                present=bool(r.get(qm, qk, "Present", _bool, False)),
                exact=r.get(qm, qk, "Exact", _str),
                regex=r.get(qm, qk, "Regex", _regex),
            )
        )
    methods = r.get(m, key, "Methods", _list, []) or []
    if not all(isinstance(x, str) and x for x in methods):
        r.problem(f"{key}.Methods", "expected a list of HTTP methods")
        methods = []
    return HTTPMatch(
        path_exact=r.get(m, key, "PathExact", _str),
        path_prefix=r.get(m, key, "PathPrefix", _str),
        path_regex=r.get(m, key, "PathRegex", _regex),
        case_insensitive=bool(r.get(m, key, "CaseInsensitive", _bool, False)),
        header=tuple(headers),
        query_param=tuple(queries),
        methods=tuple(x.upper() for x in methods),  # Consul upper-cases them on normalize
    )


def _retry_on(v: Any) -> tuple[str, ...]:
    items = _list(v)
    for x in items:
        if x not in RETRY_ON and x not in GRPC_RETRY_ON and x not in (
            "envoy-ratelimited",
            "http3-post-connect-failure",
        ):
            raise ValueError(f"{x!r} is not a retry condition (expected one of: {', '.join(RETRY_ON)})")
    # gRPC's tokens are kept: the core retries on a trailers-only grpc-status (http2-grpc.md §2.7).
    return tuple(x for x in items if x in RETRY_ON or x in GRPC_RETRY_ON)


def _codes(v: Any) -> tuple[int, ...]:
    items = _list(v)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599 for x in items):
        raise ValueError(f"{v!r} is not a list of HTTP status codes")
    return tuple(items)


def _router(r: _R, d: Mapping[str, Any], name: str) -> ServiceRouter:
    routes = []
    for i, raw in enumerate(r.get(d, "", "Routes", _list, []) or []):
        key = f"Routes[{i}]"
        m = r.mapping(raw, key, ("Match", "Destination"))
        match_raw = r.mapping(m.get("Match"), f"{key}.Match", ("HTTP",))
        match = _http_match(r, match_raw["HTTP"], f"{key}.Match.HTTP") if match_raw.get("HTTP") is not None else None
        dk = f"{key}.Destination"
        dm = r.mapping(
            m.get("Destination"),
            dk,
            (
                "Service",
                "ServiceSubset",
                "Namespace",
                "Partition",
                "PrefixRewrite",
                "RequestTimeout",
                "IdleTimeout",
                "NumRetries",
                "RetryOnConnectFailure",
                "RetryOnStatusCodes",
                "RetryOn",
                "RequestHeaders",
                "ResponseHeaders",
            ),
        )
        dest = RouteDestination(
            service=r.get(dm, dk, "Service", _str, "") or "",
            service_subset=r.get(dm, dk, "ServiceSubset", _str, "") or "",
            prefix_rewrite=r.get(dm, dk, "PrefixRewrite", _str),
            request_timeout=r.get(dm, dk, "RequestTimeout", go_duration, 0.0),
            idle_timeout=r.get(dm, dk, "IdleTimeout", go_duration, 0.0),
            num_retries=r.get(dm, dk, "NumRetries", _uint, 0),
            retry_on_connect_failure=bool(r.get(dm, dk, "RetryOnConnectFailure", _bool, False)),
            retry_on_status_codes=r.get(dm, dk, "RetryOnStatusCodes", _codes, ()),
            retry_on=r.get(dm, dk, "RetryOn", _retry_on, ()),
            request_headers=_header_mods(r, dm.get("RequestHeaders"), f"{dk}.RequestHeaders"),
            response_headers=_header_mods(r, dm.get("ResponseHeaders"), f"{dk}.ResponseHeaders"),
        )
        if dest.prefix_rewrite is not None and (
            match is None or (match.path_prefix is None and match.path_exact is None)
        ):
            r.problem(
                f"{dk}.PrefixRewrite", "needs Match.HTTP.PathPrefix or PathExact (C:structs ServiceRouter.Validate)"
            )
        routes.append(RouterRoute(match, dest))
    return ServiceRouter(name, tuple(routes))


def _splitter(r: _R, d: Mapping[str, Any], name: str) -> ServiceSplitter:
    splits = []
    total = 0.0
    for i, raw in enumerate(r.get(d, "", "Splits", _list, []) or []):
        key = f"Splits[{i}]"
        m = r.mapping(
            raw,
            key,
            ("Weight", "Service", "ServiceSubset", "Namespace", "Partition", "RequestHeaders", "ResponseHeaders"),
        )
        w = m.get("Weight", 0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 100:
            r.problem(f"{key}.Weight", f"{w!r} is not a weight (expected a percentage 0-100)")
            w = 0
        total += float(w)
        splits.append(
            SplitEntry(
                weight=float(w),
                service=r.get(m, key, "Service", _str, "") or "",
                service_subset=r.get(m, key, "ServiceSubset", _str, "") or "",
                request_headers=_header_mods(r, m.get("RequestHeaders"), f"{key}.RequestHeaders"),
                response_headers=_header_mods(r, m.get("ResponseHeaders"), f"{key}.ResponseHeaders"),
            )
        )
    if not splits:
        r.problem("Splits", "needs at least one split")
    elif abs(total - 100.0) > 0.01:
        # Consul: "the sum of all split weights must be 100" (C:structs ServiceSplitterConfigEntry.Validate).
        r.problem("Splits", f"weights add up to {total:g}, not 100")
    return ServiceSplitter(name, tuple(splits))


def _load_balancer(r: _R, raw: Any, key: str) -> LoadBalancerConfig | None:
    if raw is None:
        return None
    m = r.mapping(raw, key, ("Policy", "RingHashConfig", "LeastRequestConfig", "HashPolicies"))
    policy = r.get(m, key, "Policy", _str, "") or "round_robin"
    if policy not in CONSUL_LB_POLICIES:
        r.problem(f"{key}.Policy", f"{policy!r} is not a policy (expected one of: {', '.join(CONSUL_LB_POLICIES)})")
        policy = "round_robin"
    rh = r.mapping(m.get("RingHashConfig"), f"{key}.RingHashConfig", ("MinimumRingSize", "MaximumRingSize"))
    lr = r.mapping(m.get("LeastRequestConfig"), f"{key}.LeastRequestConfig", ("ChoiceCount",))
    hps = []
    for i, raw_hp in enumerate(r.get(m, key, "HashPolicies", _list, []) or []):
        hk = f"{key}.HashPolicies[{i}]"
        h = r.mapping(raw_hp, hk, ("Field", "FieldValue", "CookieConfig", "SourceIP", "Terminal"))
        field = r.get(h, hk, "Field", _str, "") or ""
        source_ip = bool(r.get(h, hk, "SourceIP", _bool, False))
        value = r.get(h, hk, "FieldValue", _str, "") or ""
        if field and field not in ("header", "cookie", "query_parameter"):
            r.problem(f"{hk}.Field", f"{field!r} is not allowed (expected header, cookie or query_parameter)")
        if bool(field) == source_ip:
            r.problem(hk, "set either Field (with FieldValue) or SourceIP")
        elif field and not value:
            r.problem(f"{hk}.FieldValue", "is required with Field")
        hps.append(
            HashPolicyConfig(
                field,
                value.lower() if field == "header" else value,
                source_ip,
                bool(r.get(h, hk, "Terminal", _bool, False)),
            )
        )
    if hps and policy not in ("ring_hash", "maglev"):
        r.problem(f"{key}.HashPolicies", f"only apply to ring_hash and maglev (Policy is {policy})")
    return LoadBalancerConfig(
        policy=policy,
        choice_count=r.get(lr, f"{key}.LeastRequestConfig", "ChoiceCount", _uint, 0) or 2,
        minimum_ring_size=r.get(rh, f"{key}.RingHashConfig", "MinimumRingSize", _uint, 0) or 1024,
        maximum_ring_size=r.get(rh, f"{key}.RingHashConfig", "MaximumRingSize", _uint, 0) or 8 * 1024 * 1024,
        hash_policies=tuple(hps),
    )


def _resolver(r: _R, d: Mapping[str, Any], name: str) -> ServiceResolver:
    subsets = []
    raw_subsets = d.get("Subsets") or {}
    if not isinstance(raw_subsets, Mapping):
        r.problem("Subsets", "expected a mapping of subset name to {Filter, OnlyPassing}")
        raw_subsets = {}
    for sname, raw in raw_subsets.items():
        key = f"Subsets.{sname}"
        if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", str(sname)):
            r.problem(key, "is not a valid subset name (lower-case letters, digits and dashes)")
        m = r.mapping(raw, key, ("Filter", "OnlyPassing"))
        flt = r.get(m, key, "Filter", _str, "") or ""
        if flt:
            try:
                compile_filter(flt)
            except ValueError as e:
                r.problem(f"{key}.Filter", str(e))
        subsets.append((str(sname), Subset(flt, bool(r.get(m, key, "OnlyPassing", _bool, False)))))
    redirect = None
    if d.get("Redirect") is not None:
        rm = r.mapping(
            d["Redirect"],
            "Redirect",
            ("Service", "ServiceSubset", "Namespace", "Partition", "Datacenter", "Peer", "SamenessGroup"),
        )
        redirect = Redirect(
            service=r.get(rm, "Redirect", "Service", _str, "") or "",
            service_subset=r.get(rm, "Redirect", "ServiceSubset", _str, "") or "",
            datacenter=r.get(rm, "Redirect", "Datacenter", _str, "") or "",
        )
    failover = []
    raw_failover = d.get("Failover") or {}
    if not isinstance(raw_failover, Mapping):
        r.problem("Failover", "expected a mapping of subset name (or *) to {Service, Datacenters, Targets}")
        raw_failover = {}
    for fname, raw in raw_failover.items():
        key = f"Failover.{fname}"
        if fname != "*" and fname not in dict(subsets):
            r.problem(key, f"{fname!r} is not * or one of the Subsets")
        fm = r.mapping(
            raw,
            key,
            ("Service", "ServiceSubset", "Namespace", "Datacenters", "Targets"),
            # Policy orders by locality: meshgw has no localities, the listed order is kept. Peers: said below.
            ignore=("Policy", "SamenessGroup", "Peer"),
        )
        for unsupported in ("SamenessGroup", "Peer"):
            if isinstance(raw, Mapping) and raw.get(unsupported):
                r.problem(f"{key}.{unsupported}", "cluster peering is not supported by meshgw (expected Datacenters)")
        svc = r.get(fm, key, "Service", _str, "") or ""
        sub = r.get(fm, key, "ServiceSubset", _str, "") or ""
        targets = [FailoverTarget(svc, sub, str(dc)) for dc in r.get(fm, key, "Datacenters", _list, []) or []]
        for i, t in enumerate(r.get(fm, key, "Targets", _list, []) or []):
            tm = r.mapping(t, f"{key}.Targets[{i}]", ("Service", "ServiceSubset", "Namespace", "Datacenter"))
            targets.append(
                FailoverTarget(
                    r.get(tm, f"{key}.Targets[{i}]", "Service", _str, "") or "",
                    r.get(tm, f"{key}.Targets[{i}]", "ServiceSubset", _str, "") or "",
                    r.get(tm, f"{key}.Targets[{i}]", "Datacenter", _str, "") or "",
                )
            )
        if not targets and (svc or sub):
            targets.append(FailoverTarget(svc, sub, ""))
        if not targets:
            r.problem(key, "names no target (expected Service, ServiceSubset, Datacenters or Targets)")
        failover.append((str(fname), tuple(targets)))
    default_subset = r.get(d, "", "DefaultSubset", _str, "") or ""
    if default_subset and default_subset not in dict(subsets):
        r.problem("DefaultSubset", f"{default_subset!r} is not one of the Subsets")
    return ServiceResolver(
        name=name,
        default_subset=default_subset,
        subsets=tuple(subsets),
        redirect=redirect,
        connect_timeout=r.get(d, "", "ConnectTimeout", go_duration, 0.0),
        request_timeout=r.get(d, "", "RequestTimeout", go_duration, 0.0),
        load_balancer=_load_balancer(r, d.get("LoadBalancer"), "LoadBalancer"),
        failover=tuple(failover),
    )


def _upstream_settings(r: _R, raw: Any, key: str, named: bool) -> UpstreamSettings:
    m = r.mapping(
        raw,
        key,
        ("Name", "ConnectTimeoutMs", "Limits", "PassiveHealthCheck", "Protocol"),
        ignore=(
            "Namespace",
            "Partition",
            "Peer",
            "EnvoyListenerJSON",
            "EnvoyClusterJSON",
            "MeshGateway",
            "BalanceOutboundConnections",
        ),
    )
    limits = None
    if m.get("Limits") is not None:
        lm = r.mapping(m["Limits"], f"{key}.Limits", ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests"))
        d = LimitsConfig()
        limits = LimitsConfig(
            max_connections=r.get(lm, f"{key}.Limits", "MaxConnections", _uint, d.max_connections),
            max_pending_requests=r.get(lm, f"{key}.Limits", "MaxPendingRequests", _uint, d.max_pending_requests),
            max_concurrent_requests=r.get(
                lm, f"{key}.Limits", "MaxConcurrentRequests", _uint, d.max_concurrent_requests
            ),
        )
    phc = None
    if m.get("PassiveHealthCheck") is not None:
        pk = f"{key}.PassiveHealthCheck"
        pm = r.mapping(
            m["PassiveHealthCheck"],
            pk,
            ("Interval", "MaxFailures", "EnforcingConsecutive5xx", "MaxEjectionPercent", "BaseEjectionTime"),
        )
        d2 = PassiveHealthCheckConfig()
        # Unset fields keep Envoy's defaults (C:agent/xds/config.go ToOutlierDetection).
        phc = PassiveHealthCheckConfig(
            interval=r.get(pm, pk, "Interval", go_duration, 0.0) or d2.interval,
            max_failures=r.get(pm, pk, "MaxFailures", _uint, 0) or d2.max_failures,
            enforcing_consecutive_5xx=r.get(pm, pk, "EnforcingConsecutive5xx", _uint, d2.enforcing_consecutive_5xx),
            max_ejection_percent=r.get(pm, pk, "MaxEjectionPercent", _uint, d2.max_ejection_percent),
            base_ejection_time=r.get(pm, pk, "BaseEjectionTime", go_duration, 0.0) or d2.base_ejection_time,
        )
    ms = r.get(m, key, "ConnectTimeoutMs", _uint, 0)
    name = r.get(m, key, "Name", _str, "") or ""
    if named and not name:
        r.problem(f"{key}.Name", "is required in an override")
    return UpstreamSettings(
        name=name,
        connect_timeout=ms / 1000 if ms else None,
        limits=limits,
        passive_health_check=phc,
        protocol=(r.get(m, key, "Protocol", _str, "") or "").lower(),
    )


def _defaults(r: _R, d: Mapping[str, Any], name: str) -> ServiceDefaults:
    protocol = r.get(d, "", "Protocol", _str, "") or ""
    uc = r.mapping(d.get("UpstreamConfig"), "UpstreamConfig", ("Defaults", "Overrides"))
    defaults = _upstream_settings(r, uc["Defaults"], "UpstreamConfig.Defaults", False) if uc.get("Defaults") else None
    overrides = tuple(
        _upstream_settings(r, o, f"UpstreamConfig.Overrides[{i}]", True)
        for i, o in enumerate(r.get(uc, "UpstreamConfig", "Overrides", _list, []) or [])
    )
    return ServiceDefaults(name, protocol.lower(), defaults, overrides, _mesh_gateway_mode(r, d))


def _mesh_gateway_mode(r: _R, d: Mapping[str, Any]) -> str:
    m = r.mapping(d.get("MeshGateway"), "MeshGateway", ("Mode",))
    mode = str(m.get("Mode") or "")
    if mode not in ("", "none", "local", "remote"):
        r.problem("MeshGateway.Mode", f'Invalid Mesh Gateway Mode: "{mode}"')  # Consul's own words (consul.md §6)
        return ""
    return mode


def _proxy_defaults(r: _R, d: Mapping[str, Any], name: str) -> ProxyDefaults:
    if name != "global":
        r.problem("Name", "proxy-defaults must be named global")
    config = d.get("Config")
    if config is not None and not isinstance(config, Mapping):
        r.problem("Config", f"expected a mapping of proxy settings, got {type(config).__name__}")
        config = None
    # An opaque map stored as written: Consul's xDS side lower-cases protocol itself (C:agent/xds/config.go).
    protocol = next((v for k, v in (config or {}).items() if str(k).lower() == "protocol"), None)
    return ProxyDefaults(name, _mesh_gateway_mode(r, d), str(protocol or "").lower())


def _enum(r: _R, m: Mapping[str, Any], key: str, name: str, allowed: tuple[str, ...]) -> str:
    value = m.get(name)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value not in allowed:
        # Consul's own words (C:agent/structs/config_entry_mesh.go, l7-security.md §1.1).
        r.problem(
            f"{key}.{name}",
            "error in HTTP incoming request normalization configuration: no matching "
            f"{name} value found for {value}, please specify one of [{', '.join(allowed)}]",
        )
        return ""
    return value


def _mesh(r: _R, d: Mapping[str, Any], name: str) -> MeshEntry:
    if name != "mesh":
        r.problem("Name", "a mesh entry must be named mesh")
    http = r.mapping(d.get("HTTP"), "HTTP", ("SanitizeXForwardedClientCert", "Incoming"))
    incoming = r.mapping(http.get("Incoming"), "HTTP.Incoming", ("RequestNormalization",))
    key = "HTTP.Incoming.RequestNormalization"
    fields = (
        "InsecureDisablePathNormalization",
        "MergeSlashes",
        "PathWithEscapedSlashesAction",
        "HeadersWithUnderscoresAction",
    )
    rn = r.mapping(incoming.get("RequestNormalization"), key, fields)
    return MeshEntry(
        name,
        bool(r.get(http, "HTTP", "SanitizeXForwardedClientCert", _bool, False)),
        RequestNormalization(
            bool(r.get(rn, key, "InsecureDisablePathNormalization", _bool, False)),
            bool(r.get(rn, key, "MergeSlashes", _bool, False)),
            _enum(r, rn, key, "PathWithEscapedSlashesAction", ESCAPED_SLASH_ACTIONS),
            _enum(r, rn, key, "HeadersWithUnderscoresAction", UNDERSCORE_ACTIONS),
        ),
    )


_PARSERS: dict[str, tuple[Callable[[_R, Mapping[str, Any], str], Any], tuple[str, ...]]] = {
    "mesh": (_mesh, ("TransparentProxy", "AllowEnablingPermissiveMutualTLS", "TLS", "HTTP", "Peering")),
    "service-router": (_router, ("Routes",)),
    "service-splitter": (_splitter, ("Splits",)),
    "service-resolver": (
        _resolver,
        (
            "DefaultSubset",
            "Subsets",
            "Redirect",
            "Failover",
            "ConnectTimeout",
            "RequestTimeout",
            "LoadBalancer",
            "PrioritizeByLocality",
        ),
    ),
    "proxy-defaults": (
        _proxy_defaults,
        (
            "Config",
            "Mode",
            "TransparentProxy",
            "MutualTLSMode",
            "MeshGateway",
            "Expose",
            "AccessLogs",
            "EnvoyExtensions",
            "FailoverPolicy",
            "PrioritizeByLocality",
        ),
    ),
    "service-defaults": (
        _defaults,
        (
            "Protocol",
            "UpstreamConfig",
            "Mode",
            "TransparentProxy",
            "MutualTLSMode",
            "MeshGateway",
            "Expose",
            "ExternalSNI",
            "Destination",
            "MaxInboundConnections",
            "LocalConnectTimeoutMs",
            "LocalRequestTimeoutMs",
            "BalanceInboundConnections",
            "RateLimits",
            "EnvoyExtensions",
            "JWTProvider",
        ),
    ),
}


def parse_entry(raw: Any, where: str, lenient: bool = False) -> Entry:
    """One config entry. Raises EntryError with every problem found. ``lenient``: unknown keys are ignored (an
    entry read back from Consul may carry fields of a newer version)."""
    if not isinstance(raw, Mapping):
        raise EntryError([f"{where}: expected a config entry mapping with Kind and Name"])
    kind = next((v for k, v in raw.items() if _norm(str(k)) == "kind"), None)
    name = next((v for k, v in raw.items() if _norm(str(k)) == "name"), None)
    if kind not in _PARSERS:
        raise EntryError([f"{where}: Kind: {kind!r} is not supported here (expected one of: {', '.join(KINDS)})"])
    if not isinstance(name, str) or not name:
        raise EntryError([f"{where}: {kind}: Name is required"])
    parser, fields = _PARSERS[kind]
    r = _R(f"{where}: {kind}/{name}", lenient)
    d = r.mapping(raw, "", (*_COMMON, *fields))
    entry = parser(r, d, name)
    if r.problems:
        raise EntryError(r.problems)
    return entry


def parse_entries(raw: Any, where: str) -> tuple[Entry, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise EntryError([f"{where}: expected a list of config entries"])
    out: list[Entry] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        try:
            e = parse_entry(item, f"{where}[{i}]")
        except EntryError as err:
            problems.extend(err.problems)
            continue
        if (e.kind, e.name) in seen:
            problems.append(f"{where}[{i}]: {e.kind}/{e.name}: defined twice")
        seen.add((e.kind, e.name))
        out.append(e)
    if problems:
        raise EntryError(problems)
    return tuple(out)


# ---------------------------------------------------------------------- bexpr subset filters

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<op>==|!=|\(|\))|(?P<word>[A-Za-z0-9_.\-/:]+))')


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse filter {expr!r} at {expr[pos:]!r}")
        pos = m.end()
        if m.group("str") is not None:
            s = m.group("str")
            out.append(("str", s[1:-1].replace('\\"', '"') if s[0] == '"' else s[1:-1]))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            out.append(("word", m.group("word")))
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


Filter = Callable[[Mapping[str, Any]], bool]


def _select(doc: Mapping[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if isinstance(cur, Mapping):
            # bexpr field names are case-sensitive, map keys (Meta) are taken as they are
            cur = cur.get(part)
        else:
            return None
    return cur


def compile_filter(expr: str) -> Filter:
    """A bexpr filter (see the module doc) compiled to a predicate over ``{"Service": ..., "Node": ...}``."""
    toks = _tokens(expr)
    pos = 0

    def peek(n: int = 0) -> tuple[str, str] | None:
        return toks[pos + n] if pos + n < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError(f"filter {expr!r} ends too early")
        t = toks[pos]
        pos += 1
        return t

    def is_word(t: tuple[str, str] | None, *words: str) -> bool:
        return t is not None and t[0] == "word" and t[1] in words

    def value() -> str:
        kind, v = take()
        if kind == "op":
            raise ValueError(f"filter {expr!r}: expected a value, got {v!r}")
        return v

    def primary() -> Filter:
        t = peek()
        if t == ("op", "("):
            take()
            f = disjunction()
            if take() != ("op", ")"):
                raise ValueError(f"filter {expr!r}: missing ')'")
            return f
        if is_word(t, "not"):
            take()
            inner = primary()
            return lambda d: not inner(d)
        left = value()
        nxt = peek()
        if is_word(nxt, "in") or (is_word(nxt, "not") and is_word(peek(1), "in")):
            negate = is_word(take(), "not")
            if negate:
                take()
            sel = value()
            return lambda d: (left in (_select(d, sel) or ())) != negate
        if is_word(nxt, "is"):
            take()
            negate = is_word(peek(), "not")
            if negate:
                take()
            if not is_word(take(), "empty"):
                raise ValueError(f"filter {expr!r}: expected 'empty' after 'is'")
            return lambda d: (not _select(d, left)) != negate
        negate = False
        if is_word(nxt, "not"):
            take()
            negate = True
        op = take()
        if op == ("op", "=="):
            rhs = value()
            return lambda d: str(_select(d, left)) == rhs if _select(d, left) is not None else False
        if op == ("op", "!="):
            rhs = value()
            return lambda d: _select(d, left) is None or str(_select(d, left)) != rhs
        if op == ("word", "contains"):
            rhs = value()
            return lambda d: (rhs in (_select(d, left) or ())) != negate
        if op == ("word", "matches"):
            rx = re.compile(value())
            return lambda d: (rx.search(str(_select(d, left) or "")) is not None) != negate
        raise ValueError(f"filter {expr!r}: unknown operator {op[1]!r}")

    def conjunction() -> Filter:
        parts = [primary()]
        while is_word(peek(), "and"):
            take()
            parts.append(primary())
        return parts[0] if len(parts) == 1 else (lambda d: all(p(d) for p in parts))

    def disjunction() -> Filter:
        parts = [conjunction()]
        while is_word(peek(), "or"):
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda d: any(p(d) for p in parts))

    if not toks:
        raise ValueError("empty filter")
    f = disjunction()
    if pos != len(toks):
        raise ValueError(f"filter {expr!r}: unexpected {toks[pos][1]!r}")
    return f


def referenced_services(entries: tuple[Entry, ...]) -> set[tuple[str, str]]:
    """(service, datacenter or "") pairs that routes, splits and redirects send traffic to."""
    out: set[tuple[str, str]] = set()
    for e in entries:
        if isinstance(e, ServiceRouter):
            out.update((r.destination.service, "") for r in e.routes if r.destination.service)
        elif isinstance(e, ServiceSplitter):
            out.update((sp.service, "") for sp in e.splits if sp.service)
        elif isinstance(e, ServiceResolver):
            if e.redirect is not None:
                out.add((e.redirect.service or e.name, e.redirect.datacenter))
            out.update((t.service or e.name, t.datacenter) for _, targets in e.failover for t in targets)
    return out
