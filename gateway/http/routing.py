"""The compiled discovery chain of one HTTP upstream: routes → weighted splits → clusters (targets).

Built once per snapshot by ``compile_chain`` from the upstream's config, the catalog and the
service-router / service-splitter / service-resolver / service-defaults entries (consul.md §8.1, §8.3-§8.5):
regexes compiled, header rules pre-rendered as bytes, split weights accumulated, balancers built. Per request
the listener only calls ``Chain.route_for`` and ``Route.pick``.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connect.spiffe import service_uri, upstream_sni
from gateway.balancer import Balancer
from gateway.config import Config, LoadBalancerConfig, RetryConfig, UpstreamConfig

if TYPE_CHECKING:
    from gateway.snapshot import Endpoint

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


def simple_chain(cluster: Cluster) -> Chain:
    return Chain(routes=(Route("default", None, (Split(100.0, cluster),), (100.0,)),), clusters=(cluster,))


# Consul keeps warning instances in Envoy's load-balancing set (consul.md §4.1; snapshot.HEALTHY).
_HEALTHY = frozenset({"passing", "warning"})


def cfg_entries(cfg: Config) -> tuple[Any, ...]:
    """The discovery-chain entries of the local control plane (meshgw.yaml ``config_entries``)."""
    return getattr(cfg, "config_entries", ())


def compile_chain(
    u: UpstreamConfig,
    local_dc: str,
    trust_domain: str,
    catalog: Mapping[str, tuple[Endpoint, ...]],
    entries: tuple[Any, ...],
    cache: BalancerCache,
) -> Chain:
    dc = u.datacenter or local_dc
    eps = tuple(e for e in catalog.get(u.service, ()) if e.health in _HEALTHY and e.datacenter == dc)
    name = u.service if dc == local_dc else f"{u.service}.{dc}"
    cluster = Cluster(
        name=name,
        service=u.service,
        subset="",
        datacenter=dc,
        sni=upstream_sni(u.service, dc, trust_domain),
        expected_uri=service_uri(trust_domain, dc, u.service),
        endpoints=eps,
        balancer=cache.get(name, eps, u.load_balancer),
        hash_policies=hash_policies_of(u.load_balancer),
        connect_timeout=u.connect_timeout,
    )
    return simple_chain(cluster)
