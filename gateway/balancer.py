"""Endpoint selection: round_robin, least_request, random, ring_hash, maglev, weighted by Consul's Weights.Passing.

A ``Balancer`` is built once per (endpoints, policy) when a snapshot is built: the weighted round-robin
schedule, the cumulative weights, the hash ring and the Maglev table are all computed there. What changes per
request (the round-robin position, requests in flight per endpoint, outlier ejections) lives in a mutable
``ClusterState`` the listener owns and keeps across snapshots, so a new snapshot does not reset it.

Picking is pure arithmetic over those tables: no allocation besides the chosen index, no lock (one event loop).
Semantics follow Envoy's load balancers as Consul configures them from a service-resolver's ``LoadBalancer``
(consul.md §8.5; Envoy docs "Supported load balancers"):

* ``round_robin``: each endpoint in turn, weighted (smooth weighted round robin, as nginx's: the same shares as
  Envoy's EDF scheduler, with the heavy endpoints spread out instead of bunched).
* ``least_request``: power of ``choice_count`` (default 2) choices: that many weighted-random candidates, the one
  with the fewest requests in flight per unit of weight wins (Envoy's P2C; weighted as its EDF variant does).
* ``random``: weighted random.
* ``ring_hash``: Ketama-style ring, each endpoint with a number of points proportional to its weight, the ring
  at least ``minimum_ring_size`` points (Envoy's default 1024); a request's hash picks the next point clockwise.
* ``maglev``: Maglev lookup table (Eisenbud et al., NSDI'16, with Envoy's weighted fill); the table size is the
  smallest prime >= 100 x endpoints from a fixed list (the paper's M >> N rule), at most 65537 as Envoy's.

Without a hash (no policy or no value in the request), the hash policies pick at random, like Envoy.
Ejected endpoints are skipped; when every endpoint is ejected they are all used again (Envoy's panic mode).
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.snapshot import Endpoint

# peak_ewma is the Rust core's (gateway/core/src/outbound/http/balancer.rs); here it balances as least_request.
POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev", "peak_ewma")
HASH_POLICIES = ("ring_hash", "maglev")
# Primes for the Maglev table (the paper's table sizes are primes; Envoy's default is 65537).
MAGLEV_SIZES = (251, 509, 1021, 2053, 4099, 8191, 16381, 32771, 65537)
# Longest weighted round-robin schedule kept; larger weight sums are scaled down (shares kept to ~0.1%).
RR_SCHEDULE_MAX = 4096
_MASK64 = (1 << 64) - 1


def hash64(data: bytes) -> int:
    """A stable 64-bit hash, the same in every process (so two sidecars map a key to the same endpoint)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def combine(h: int, more: int) -> int:
    """Several hash policies: Envoy rotates the running hash left by one and XORs the next one in."""
    return (((h << 1) | (h >> 63)) & _MASK64) ^ more


class HostStats:
    """What one endpoint of one cluster is doing now: requests in flight, outlier state."""

    __slots__ = ("active", "consecutive_5xx", "consecutive_gateway", "ejected_until", "ejections", "last_ejected")

    def __init__(self) -> None:
        self.active = 0
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected_until = 0.0  # loop time; 0 when in service
        self.ejections = 0  # times ejected: the next ejection lasts base x (ejections + 1)
        self.last_ejected = 0.0


class ClusterState:
    """Mutable per-cluster state a listener owns; ``sync`` aligns it with a new balancer's endpoints."""

    __slots__ = ("balancer", "by_key", "ejected", "hosts", "rr")

    def __init__(self) -> None:
        self.balancer: Balancer | None = None
        self.rr = random.randrange(1 << 16)  # different sidecars start at different places
        self.by_key: dict[tuple[str, int], HostStats] = {}
        self.hosts: list[HostStats] = []  # aligned with balancer.endpoints
        self.ejected = 0  # endpoints of the current balancer that are ejected now

    def sync(self, balancer: Balancer) -> None:
        """A new snapshot: keep the stats of endpoints that stay, start fresh ones for new endpoints."""
        self.balancer = balancer
        by_key = self.by_key
        fresh: dict[tuple[str, int], HostStats] = {}
        hosts = []
        for key in balancer.keys:
            hs = by_key.get(key) or HostStats()
            fresh[key] = hs
            hosts.append(hs)
        self.by_key = fresh
        self.hosts = hosts
        self.ejected = sum(1 for h in hosts if h.ejected_until)


class Balancer:
    """Precomputed selection tables for one endpoint set and one policy. Immutable once built."""

    __slots__ = (
        "choice_count",
        "cum",
        "endpoints",
        "keys",
        "maglev",
        "n",
        "policy",
        "ring_hashes",
        "ring_index",
        "schedule",
        "total",
        "uniform",
        "weights",
    )

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        policy: str = "round_robin",
        choice_count: int = 2,
        minimum_ring_size: int = 1024,
        maximum_ring_size: int = 8 * 1024 * 1024,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown load-balancing policy {policy!r} (expected one of: {', '.join(POLICIES)})")
        self.endpoints = tuple(endpoints)
        self.keys = tuple((e.address, e.port) for e in self.endpoints)
        self.n = len(self.endpoints)
        self.policy = policy
        self.choice_count = max(2, choice_count)
        self.weights = tuple(max(1, int(e.weight)) for e in self.endpoints)
        self.uniform = len(set(self.weights)) <= 1
        self.total = sum(self.weights)
        self.cum = tuple(accumulate(self.weights))
        self.schedule: tuple[int, ...] = ()
        self.ring_hashes: list[int] = []
        self.ring_index: tuple[int, ...] = ()
        self.maglev: tuple[int, ...] = ()
        if not self.n:
            return
        if policy == "round_robin":
            self.schedule = tuple(range(self.n)) if self.uniform else _smooth_wrr(self.weights)
        elif policy == "ring_hash":
            self.ring_hashes, self.ring_index = _ring(self.keys, self.weights, minimum_ring_size, maximum_ring_size)
        elif policy == "maglev":
            self.maglev = _maglev(self.keys, self.weights)

    # ------------------------------------------------------------------ picking

    def pick(self, state: ClusterState, hash_key: int | None = None, exclude: int = -1, now: float = 0.0) -> int:
        """Index of the chosen endpoint (-1 when there is none). ``exclude``: an index to avoid if any other
        is available (a retry goes elsewhere); ``now`` (loop time) is only needed while endpoints are ejected."""
        n = self.n
        if n == 0:
            return -1
        if n == 1:
            return 0
        policy = self.policy
        if policy == "round_robin":
            i = self._rr(state)
        elif policy in ("least_request", "peak_ewma"):
            i = self._least(state)
        elif policy == "random":
            i = self._random()
        elif hash_key is None:
            i = self._random()  # a hash policy without a key: Envoy picks at random
        elif policy == "ring_hash":
            i = self.ring_index[bisect_left(self.ring_hashes, hash_key) % len(self.ring_hashes)]
        else:
            i = self.maglev[hash_key % len(self.maglev)]
        if i != exclude and not (state.ejected and state.hosts[i].ejected_until > now):
            return i
        return self._fallback(state, i, hash_key, exclude, now)

    def _rr(self, state: ClusterState) -> int:
        s = self.schedule
        r = state.rr
        state.rr = r + 1
        return s[r % len(s)]

    def _random(self) -> int:
        if self.uniform:
            return int(random.random() * self.n)
        return bisect_right(self.cum, random.random() * self.total)

    def _least(self, state: ClusterState) -> int:
        hosts = state.hosts
        best = -1
        best_load = math.inf
        for _ in range(self.choice_count):
            i = self._random()
            load = hosts[i].active if self.uniform else (hosts[i].active + 1) / self.weights[i]
            if load < best_load:
                best, best_load = i, load
        return best

    def _usable(self, state: ClusterState, i: int, exclude: int, now: float) -> bool:
        return i != exclude and not (state.ejected and state.hosts[i].ejected_until > now)

    def _fallback(self, state: ClusterState, first: int, hash_key: int | None, exclude: int, now: float) -> int:
        """The choice was ejected (or excluded): walk on in the policy's own order to the next usable one."""
        n = self.n
        if self.policy == "ring_hash" and hash_key is not None:
            # Clockwise along the ring: the keys of an ejected endpoint spread like a removal would spread them.
            start = bisect_left(self.ring_hashes, hash_key)
            ring = self.ring_index
            size = len(ring)
            for step in range(1, size):
                i = ring[(start + step) % size]
                if self._usable(state, i, exclude, now):
                    return i
        elif self.policy == "maglev" and hash_key is not None:
            table = self.maglev
            size = len(table)
            for step in range(1, size):
                i = table[(hash_key + step) % size]
                if self._usable(state, i, exclude, now):
                    return i
        else:
            for step in range(1, n):
                i = (first + step) % n
                if self._usable(state, i, exclude, now):
                    return i
        # Every other endpoint is ejected (or it is the only one): panic mode, use them anyway.
        if first != exclude:
            return first
        return (first + 1) % n


# ---------------------------------------------------------------------- table builders


def _smooth_wrr(weights: Sequence[int]) -> tuple[int, ...]:
    """The sequence nginx's smooth weighted round robin produces over one full cycle."""
    total = sum(weights)
    if total > RR_SCHEDULE_MAX:
        scale = RR_SCHEDULE_MAX / total
        weights = [max(1, round(w * scale)) for w in weights]
        total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return tuple(out)


def _ring(
    keys: Sequence[tuple[str, int]], weights: Sequence[int], min_size: int, max_size: int
) -> tuple[list[int], tuple[int, ...]]:
    """Envoy's ring_hash construction: scale so the lightest endpoint gets at least one point and the ring at
    least ``min_size`` points (capped at ``max_size``); each endpoint hashes ``"address:port_i"`` for its points."""
    total = sum(weights)
    normalized = [w / total for w in weights]
    min_norm = min(normalized)
    scale = min(math.ceil(min_norm * min_size) / min_norm, float(max_size))
    points: list[tuple[int, int]] = []
    target = 0.0
    made = 0
    for idx, ((addr, port), w) in enumerate(zip(keys, normalized, strict=True)):
        # Envoy's running-total rounding: counts add up to the scaled size without drifting.
        target += scale * w
        count = int(math.floor(target) - made)
        made += count
        base = f"{addr}:{port}_".encode()
        for j in range(count):
            points.append((hash64(base + str(j).encode()), idx))
    points.sort()
    return [h for h, _ in points], tuple(i for _, i in points)


def _maglev(keys: Sequence[tuple[str, int]], weights: Sequence[int]) -> tuple[int, ...]:
    n = len(keys)
    size = next((m for m in MAGLEV_SIZES if m >= 100 * n), MAGLEV_SIZES[-1])
    max_w = max(weights)
    offsets = []
    skips = []
    for addr, port in keys:
        name = f"{addr}:{port}".encode()
        offsets.append(hash64(name) % size)
        skips.append(hash64(name + b"#skip") % (size - 1) + 1)
    nxt = [0] * n
    target = [0.0] * n
    table = [-1] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i in range(n):
            # Envoy's weighted fill: an endpoint of weight max_w takes a slot every round, one of max_w/3
            # every third round, and so on.
            if iteration * weights[i] < target[i]:
                continue
            target[i] += max_w
            off, skip = offsets[i], skips[i]
            c = (off + skip * nxt[i]) % size
            while table[c] >= 0:
                nxt[i] += 1
                c = (off + skip * nxt[i]) % size
            table[c] = i
            nxt[i] += 1
            filled += 1
            if filled == size:
                break
        iteration += 1
    return tuple(table)


def request_hash(
    policies: Sequence[tuple[str, bytes, bool]],
    headers: Sequence[tuple[bytes, bytes]],
    query: bytes,
    peer_ip: str,
) -> int | None:
    """The request's hash for ring_hash/maglev from the resolver's hash policies, in order, as Envoy combines them:
    a policy without a value in the request is skipped; a ``terminal`` policy that produced a hash ends the list.

    ``policies`` are precompiled ``(field, lower-case name, terminal)``, field one of header, cookie,
    query_parameter, source_ip.
    """
    h: int | None = None
    for field, name, terminal in policies:
        value: bytes | None = None
        if field == "header":
            for n, v in headers:
                if len(n) == len(name) and n.lower() == name:
                    value = v
                    break
        elif field == "cookie":
            value = _cookie(headers, name)
        elif field == "query_parameter":
            value = _query_param(query, name)
        elif field == "source_ip":
            value = peer_ip.encode() if peer_ip else None
        if value is None:
            continue
        one = hash64(value)
        h = one if h is None else combine(h, one)
        if terminal:
            break
    return h


def _cookie(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == b"cookie":
            for part in v.split(b";"):
                k, sep, val = part.strip().partition(b"=")
                if sep and k == name:
                    return val
    return None


def _query_param(query: bytes, name: bytes) -> bytes | None:
    for part in query.split(b"&"):
        k, _, val = part.partition(b"=")
        if k == name:
            return val
    return None
