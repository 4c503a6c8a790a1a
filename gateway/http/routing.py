"""The compiled discovery chain of one HTTP upstream: routes → weighted splits → clusters (targets).

Built once per snapshot by ``compile_chain`` from the upstream's config, the catalog and the
service-router / service-splitter / service-resolver / service-defaults entries (consul.md §8.1, §8.3-§8.5):
regexes compiled, header rules pre-rendered as bytes, split weights accumulated, balancers built. Per request
the listener only calls ``Chain.route_for`` and ``Route.pick``.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from connect.spiffe import service_uri, upstream_sni
from gateway.balancer import Balancer
from gateway.config import (
    Config,
    LimitsConfig,
    LoadBalancerConfig,
    PassiveHealthCheckConfig,
    RetryConfig,
    UpstreamConfig,
)
from gateway.http.entries import (
    HeaderMatch,
    HeaderMods,
    HTTPMatch,
    QueryMatch,
    RouteDestination,
    ServiceResolver,
    ServiceRouter,
    ServiceSplitter,
    compile_filter,
)

if TYPE_CHECKING:
    from gateway.snapshot import Endpoint

_LIMITS = LimitsConfig()
_OUTLIER = PassiveHealthCheckConfig()
# (method, path, query, headers) -> matches
Matcher = Callable[[bytes, bytes, bytes, Sequence[tuple[bytes, bytes]]], bool]


@dataclass(frozen=True, slots=True, eq=False)
class Cluster:
    """One target: a service (or a subset of it) in a datacenter, with its endpoints and balancer."""

    name: str  # metric label and state key: "api", "v2.api", "api.dc2"
    service: str
    subset: str
    datacenter: str
    sni: str
    expected_uri: str
    endpoints: tuple[Endpoint, ...]
    balancer: Balancer
    hash_policies: tuple[tuple[str, bytes, bool], ...] = ()  # (field, name, terminal) for request_hash
    connect_timeout: float = 5.0
    request_timeout: float | None = None  # the resolver's RequestTimeout, when set
    limits: LimitsConfig = _LIMITS  # circuit breakers (yaml or service-defaults UpstreamConfig)
    outlier: PassiveHealthCheckConfig = _OUTLIER


@dataclass(frozen=True, slots=True, eq=False)
class HeaderRules:
    """Request or response header changes, pre-rendered: names to drop (lower-case) and lines to add."""

    drop: frozenset[bytes] = frozenset()
    extra: bytes = b""


NO_RULES = HeaderRules()


@dataclass(frozen=True, slots=True, eq=False)
class Split:
    weight: float  # percent
    cluster: Cluster
    request: HeaderRules = NO_RULES  # route + split rules, merged at compile time
    response: HeaderRules = NO_RULES


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    name: str  # metric label: "default" or "<router>/<index>"
    match: Matcher | None  # None: matches everything
    splits: tuple[Split, ...]
    cum: tuple[float, ...] = ()  # cumulative split weights, for a weighted pick
    request_timeout: float | None = None
    idle_timeout: float | None = None
    retry: RetryConfig | None = None  # None: the upstream's retry settings
    prefix_rewrite: bytes | None = None
    match_prefix: bytes = b""  # the PathPrefix that PrefixRewrite replaces
    http_match: HTTPMatch | None = None  # what ``match`` was compiled from (the Rust core compiles its own)

    def pick(self) -> Split:
        splits = self.splits
        if len(splits) == 1:
            return splits[0]
        cum = self.cum
        i = bisect_right(cum, random.random() * cum[-1])
        return splits[min(i, len(splits) - 1)]


@dataclass(frozen=True, slots=True, eq=False)
class Chain:
    routes: tuple[Route, ...]  # in order, first match wins; the last one matches everything
    clusters: tuple[Cluster, ...]
    simple: bool = True  # one route to one cluster: the listener's own metrics say it all

    def route_for(self, method: bytes, url: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Route:
        routes = self.routes
        if len(routes) == 1:
            return routes[0]
        path, _, query = url.partition(b"?")
        for r in routes:
            m = r.match
            if m is None or m(method, path, query, headers):
                return r
        return routes[-1]


def hash_policies_of(lb: LoadBalancerConfig) -> tuple[tuple[str, bytes, bool], ...]:
    return tuple(
        ("source_ip", b"", hp.terminal) if hp.source_ip else (hp.field, hp.field_value.encode(), hp.terminal)
        for hp in lb.hash_policies
    )


class BalancerCache:
    """Balancers (hash rings, Maglev tables) survive snapshots whose endpoints and policy did not change."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[Endpoint, ...], LoadBalancerConfig, Balancer]] = {}
        self._seen: set[str] = set()

    def get(self, name: str, endpoints: tuple[Endpoint, ...], lb: LoadBalancerConfig) -> Balancer:
        self._seen.add(name)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == endpoints and hit[1] == lb:
            return hit[2]
        bal = Balancer(endpoints, lb.policy, lb.choice_count, lb.minimum_ring_size, lb.maximum_ring_size)
        self._cache[name] = (endpoints, lb, bal)
        return bal

    def sweep(self) -> None:
        """After a build: forget clusters that are gone."""
        for name in [n for n in self._cache if n not in self._seen]:
            del self._cache[name]
        self._seen.clear()


# ---------------------------------------------------------------------- compiling a chain

# Consul keeps warning instances in Envoy's load-balancing set unless a subset says OnlyPassing (consul.md §4.1).
_HEALTHY = frozenset({"passing", "warning"})
_MAX_DEPTH = 8  # nested splitters and redirects (Consul rejects cycles; this only bounds a broken set)


def cfg_entries(cfg: Config) -> tuple[Any, ...]:
    """The discovery-chain entries of the local control plane (meshgw.yaml ``config_entries``)."""
    return getattr(cfg, "config_entries", ())


def render_rules(mods: Sequence[HeaderMods]) -> HeaderRules:
    """Header changes of several levels, least specific last (it wins, as with Envoy's default order):
    ``Set`` replaces (the name is dropped from the message and from earlier lines), ``Add`` appends, ``Remove``
    drops."""
    drop: set[bytes] = set()
    lines: list[tuple[bytes, bytes]] = []
    for m in mods:
        for name in m.remove:
            n = name.lower().encode("latin-1")
            drop.add(n)
            lines = [line for line in lines if line[0] != n]
        for name, value in m.set:
            n = name.lower().encode("latin-1")
            drop.add(n)
            lines = [line for line in lines if line[0] != n]
            lines.append((n, b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))))
        for name, value in m.add:
            lines.append(
                (name.lower().encode("latin-1"), b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
            )
    if not drop and not lines:
        return NO_RULES
    return HeaderRules(frozenset(drop), b"".join(line for _, line in lines))


def compile_match(m: HTTPMatch | None) -> Matcher | None:
    """One route's match as a closure over bytes; None when it matches everything (Envoy: prefix "/")."""
    if m is None:
        return None
    checks: list[Callable[[bytes, bytes, bytes, Sequence[tuple[bytes, bytes]]], bool]] = []
    ci = m.case_insensitive
    if m.path_exact is not None:
        want = m.path_exact.encode()
        if ci:
            want = want.lower()
            checks.append(lambda _m, p, _q, _h: p.lower() == want)
        else:
            checks.append(lambda _m, p, _q, _h: p == want)
    elif m.path_prefix is not None and m.path_prefix != "/":
        pre = m.path_prefix.encode()
        if ci:
            pre = pre.lower()
            checks.append(lambda _m, p, _q, _h: p.lower().startswith(pre))
        else:
            checks.append(lambda _m, p, _q, _h: p.startswith(pre))
    elif m.path_regex is not None:
        # Envoy's safe_regex matches the whole path, without the query string.
        rx = re.compile(m.path_regex.encode(), re.IGNORECASE if ci else 0)
        checks.append(lambda _m, p, _q, _h: rx.fullmatch(p) is not None)
    if m.methods:
        methods = frozenset(x.encode() for x in m.methods)
        checks.append(lambda meth, _p, _q, _h: meth in methods)
    for hm in m.header:
        checks.append(_header_check(hm))
    for qm in m.query_param:
        checks.append(_query_check(qm))
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def match(meth: bytes, path: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for c in checks:
            if not c(meth, path, query, headers):
                return False
        return True

    return match


def _header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = None
    for n, v in headers:
        if n.lower() == name:
            found = v if found is None else found + b"," + v  # several fields: one list (RFC 9110 §5.3)
    return found


def _header_check(hm: HeaderMatch) -> Callable[[bytes, bytes, bytes, Sequence[tuple[bytes, bytes]]], bool]:
    name = hm.name.lower().encode()
    test: Callable[[bytes], bool]
    if hm.exact is not None:
        exact = hm.exact.encode()
        test = lambda v: v == exact  # noqa: E731
    elif hm.prefix is not None:
        prefix = hm.prefix.encode()
        test = lambda v: v.startswith(prefix)  # noqa: E731
    elif hm.suffix is not None:
        suffix = hm.suffix.encode()
        test = lambda v: v.endswith(suffix)  # noqa: E731
    elif hm.regex is not None:
        rx = re.compile(hm.regex.encode())
        test = lambda v: rx.fullmatch(v) is not None  # noqa: E731
    else:
        test = lambda v: True  # noqa: E731  # Present
    invert = hm.invert

    def check(_m: bytes, _p: bytes, _q: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        v = _header_value(headers, name)
        return (v is not None and test(v)) != invert

    return check


def _query_check(qm: QueryMatch) -> Callable[[bytes, bytes, bytes, Sequence[tuple[bytes, bytes]]], bool]:
    name = qm.name.encode()
    test: Callable[[bytes], bool]
    if qm.exact is not None:
        exact = qm.exact.encode()
        test = lambda v: v == exact  # noqa: E731
    elif qm.regex is not None:
        rx = re.compile(qm.regex.encode())
        test = lambda v: rx.fullmatch(v) is not None  # noqa: E731
    else:
        test = lambda v: True  # noqa: E731

    def check(_m: bytes, _p: bytes, query: bytes, _h: Sequence[tuple[bytes, bytes]]) -> bool:
        if not query:
            return False
        for part in query.split(b"&"):
            k, _, v = part.partition(b"=")
            if k == name:
                return test(v)
        return False

    return check


def _filter_doc(ep: Endpoint, service: str) -> dict[str, Any]:
    return {
        "Service": {
            "Service": service,
            "Address": ep.address,
            "Port": ep.port,
            "Meta": dict(ep.meta),
            "Tags": list(ep.tags),
            "Weights": {"Passing": ep.weight, "Warning": 1},
        },
        "Node": {"Datacenter": ep.datacenter},
        "Checks": [],
    }


@dataclass(frozen=True, slots=True)
class _Settings:
    limits: LimitsConfig
    outlier: PassiveHealthCheckConfig
    connect_timeout: float


def _upstream_settings(u: UpstreamConfig, idx: Mapping[tuple[str, str], Any], local_service: str) -> _Settings:
    """The upstream's breakers, outlier detection and connect timeout: meshgw.yaml where set (a local setting wins, as
    a proxy registration's upstream config does in Consul), else the local service's service-defaults UpstreamConfig
    (the override for this upstream over the defaults), else Envoy's defaults."""
    limits, outlier, ct = u.limits, u.passive_health_check, u.connect_timeout
    sd = idx.get(("service-defaults", local_service))
    if sd is not None:
        layers = [sd.upstream_defaults] + [o for o in sd.upstream_overrides if o.name == u.service]
        for layer in layers:
            if layer is None:
                continue
            if layer.limits is not None and u.limits == LimitsConfig():
                limits = layer.limits
            if layer.passive_health_check is not None and u.passive_health_check == PassiveHealthCheckConfig():
                outlier = layer.passive_health_check
            if layer.connect_timeout is not None and u.connect_timeout == 5.0:
                ct = layer.connect_timeout
    return _Settings(limits, outlier, ct)


def subset_endpoints(res: ServiceResolver, subset: str, eps: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The instances of a resolver's subset: its OnlyPassing and Filter (consul.md §8.5)."""
    sub = res.subset(subset)
    if sub is None:
        return ()  # an unknown subset has no instances (Consul refuses such an entry)
    if sub.only_passing:
        eps = tuple(e for e in eps if e.health == "passing")
    if sub.filter:
        f = compile_filter(sub.filter)
        eps = tuple(e for e in eps if f(_filter_doc(e, res.name)))
    return eps


def compile_chain(
    u: UpstreamConfig,
    local_dc: str,
    trust_domain: str,
    catalog: Mapping[str, tuple[Endpoint, ...]],
    entries: tuple[Any, ...],
    cache: BalancerCache,
    local_service: str = "",
    via_gateway: Callable[[str], tuple[Endpoint, ...]] | None = None,
) -> Chain:
    """Consul's discovery-chain compiler in small: router routes (plus the implicit default route to the upstream's
    own service) → splitters (nested ones flattened, weights multiplied) → resolvers (redirect, default subset,
    subset filters, connect/request timeout, load balancer) → clusters with their endpoints."""
    idx: dict[tuple[str, str], Any] = {(e.kind, e.name): e for e in entries}
    settings = _upstream_settings(u, idx, local_service)
    home_dc = u.datacenter or local_dc
    clusters: dict[str, Cluster] = {}

    def target(service: str, subset: str, dc: str, depth: int = 0) -> Cluster:
        res: ServiceResolver | None = idx.get(("service-resolver", service))
        if res is not None and res.redirect is not None and depth < _MAX_DEPTH:
            rd = res.redirect
            return target(
                rd.service or service,
                rd.service_subset if (rd.service or rd.service_subset) else subset,
                rd.datacenter or dc,
                depth + 1,
            )
        if not subset and res is not None:
            subset = res.default_subset
        name = ".".join(p for p in (subset, service) if p) + ("" if dc == local_dc else f".{dc}")
        hit = clusters.get(name)
        if hit is not None:
            return hit
        primary = _target(service, subset, dc, res, name)
        if not primary.endpoints and res is not None and depth < _MAX_DEPTH:
            # Failover (consul.md §8.5): with no healthy instance here, the first listed target that has one serves,
            # with its own SNI and identity, as Envoy's failover cluster does for Consul; back when this one recovers.
            for t in res.failover_for(subset):
                svc = t.service or service
                sub = t.service_subset if (t.service or t.service_subset) else subset
                alt = target(svc, sub, t.datacenter or dc, depth + 1)
                if alt.endpoints:
                    clusters[name] = alt
                    return alt
        clusters[name] = primary
        return primary

    def _target(service: str, subset: str, dc: str, res: ServiceResolver | None, name: str) -> Cluster:
        if via_gateway is not None and dc != local_dc:
            # Through mesh gateways: they pick the target's instances (and its subset, by SNI) in its datacenter.
            eps = via_gateway(dc)
        else:
            eps = tuple(e for e in catalog.get(service, ()) if e.health in _HEALTHY and e.datacenter == dc)
            if subset:
                eps = subset_endpoints(res, subset, eps) if res is not None else ()
        lb = res.load_balancer if res is not None and res.load_balancer is not None else u.load_balancer
        sni = (
            f"{subset}.{upstream_sni(service, dc, trust_domain)}" if subset else upstream_sni(service, dc, trust_domain)
        )
        cluster = Cluster(
            name=name,
            service=service,
            subset=subset,
            datacenter=dc,
            sni=sni,  # consul.md §5.2: <subset>.<service>.<ns>.<dc>.internal.<td>
            expected_uri=service_uri(trust_domain, dc, service),
            endpoints=eps,
            balancer=cache.get(name, eps, lb),
            hash_policies=hash_policies_of(lb),
            connect_timeout=(res.connect_timeout if res is not None and res.connect_timeout else 0)
            or settings.connect_timeout,
            request_timeout=(res.request_timeout if res is not None and res.request_timeout > 0 else None),
            limits=settings.limits,
            outlier=settings.outlier,
        )
        return cluster

    def node(
        service: str, subset: str, weight: float, mods: tuple[HeaderMods, ...], resp: tuple[HeaderMods, ...], depth: int
    ) -> list[tuple[float, Cluster, tuple[HeaderMods, ...], tuple[HeaderMods, ...]]]:
        splitter: ServiceSplitter | None = idx.get(("service-splitter", service)) if not subset else None
        if splitter is None or depth >= _MAX_DEPTH:
            return [(weight, target(service, subset, home_dc), mods, resp)]
        out = []
        for sp in splitter.splits:
            if sp.weight <= 0:
                continue
            w = weight * sp.weight / 100.0
            smods = (sp.request_headers, *mods)  # the split's own rules are more specific: applied first
            sresp = (sp.response_headers, *resp)
            svc = sp.service or service
            if svc == service:
                out.append((w, target(svc, sp.service_subset, home_dc), smods, sresp))
            else:
                out.extend(node(svc, sp.service_subset, w, smods, sresp, depth + 1))
        return out

    def make_route(name: str, match: HTTPMatch | None, dest: RouteDestination | None) -> Route:
        svc = (dest.service if dest else "") or u.service
        mods = (dest.request_headers,) if dest else ()
        resp = (dest.response_headers,) if dest else ()
        parts = node(svc, dest.service_subset if dest else "", 100.0, mods, resp, 0)
        splits = tuple(Split(w, c, render_rules(m), render_rules(r)) for w, c, m, r in parts)
        retry = None
        if dest is not None and dest.has_retry:
            # Consul's getRetryPolicyForDestination (C:agent/xds/routes.go): NumRetries (Envoy's default 1 when
            # unset), RetryOn tokens, connect-failure, retriable-status-codes; meshgw keeps its budget and its
            # idempotent-only rule.
            base = u.retries
            retry = RetryConfig(
                num_retries=dest.num_retries or 1,
                retry_on_connect_failure=dest.retry_on_connect_failure,
                retry_on_reset=False,
                retry_on_status_codes=dest.retry_on_status_codes,
                retry_on=dest.retry_on,
                retry_non_idempotent=base.retry_non_idempotent,
                budget_percent=base.budget_percent,
                min_retry_concurrency=base.min_retry_concurrency,
                backoff_base=base.backoff_base,
                backoff_max=base.backoff_max,
            )
        prefix = (
            match.path_prefix
            if match is not None and match.path_prefix is not None
            else (match.path_exact if match is not None and match.path_exact is not None else None)
        )
        return Route(
            name=name,
            match=compile_match(match),
            splits=splits,
            cum=tuple(accumulate(s.weight for s in splits)),
            request_timeout=(dest.request_timeout if dest and dest.request_timeout > 0 else None),
            idle_timeout=(dest.idle_timeout if dest and dest.idle_timeout > 0 else None),
            retry=retry,
            prefix_rewrite=dest.prefix_rewrite.encode() if dest and dest.prefix_rewrite is not None else None,
            match_prefix=prefix.encode() if prefix is not None else b"",
            http_match=match,
        )

    routes: list[Route] = []
    router: ServiceRouter | None = idx.get(("service-router", u.service))
    if router is not None:
        for i, rr in enumerate(router.routes):
            routes.append(make_route(f"{u.service}/{i}", rr.match, rr.destination))
    # Consul appends a catch-all route to the service itself (its own splitter and resolver apply).
    routes.append(make_route("default", None, None))
    simple = len(routes) == 1 and len(routes[0].splits) == 1
    return Chain(routes=tuple(routes), clusters=tuple(clusters.values()), simple=simple)
