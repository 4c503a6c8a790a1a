"""The load balancers as pure functions: shares, weights, consistency, ejection, least request."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.balancer import Balancer, ClusterState, hash64, request_hash
from gateway.snapshot import Endpoint


def eps(*weights: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint("127.0.0.1", 9000 + i, "dc1", "passing", w) for i, w in enumerate(weights))


def picks(bal: Balancer, n: int, state: ClusterState | None = None, key: int | None = None) -> Counter[int]:
    state = state or ClusterState()
    state.sync(bal)
    return Counter(bal.pick(state, key) for _ in range(n))


def test_round_robin_is_exact_and_weighted() -> None:
    assert picks(Balancer(eps(1, 1, 1)), 30) == Counter({0: 10, 1: 10, 2: 10})
    # Weights.Passing 1, 2, 3: exact shares over whole cycles, the heavy one spread out (smooth WRR).
    bal = Balancer(eps(1, 2, 3))
    assert picks(bal, 60) == Counter({0: 10, 1: 20, 2: 30})
    assert bal.schedule == (2, 1, 0, 2, 1, 2)


def test_huge_weights_are_scaled_not_exploded() -> None:
    bal = Balancer(eps(10000, 1))
    assert len(bal.schedule) <= 4096 + 2 and 1 in bal.schedule


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 3)])
def test_random_follows_weights(weights: tuple[int, ...]) -> None:
    random.seed(7)
    n = 20000
    got = picks(Balancer(eps(*weights), "random"), n)
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(got[i] / n - w / total) < 0.02


def test_least_request_prefers_idle_endpoints() -> None:
    random.seed(3)
    bal = Balancer(eps(1, 1, 1), "least_request")
    state = ClusterState()
    state.sync(bal)
    state.hosts[0].active = 50  # a slow endpoint with many requests in flight
    got = Counter(bal.pick(state) for _ in range(3000))
    # P2C: endpoint 0 only wins when both candidates are endpoint 0 (1/9 of draws).
    assert got[0] < 3000 * 0.15 and got[1] > 1000 and got[2] > 1000


def test_ring_hash_is_consistent_and_spreads() -> None:
    bal = Balancer(eps(1, 1, 1), "ring_hash", minimum_ring_size=1024)
    assert len(bal.ring_hashes) >= 1024
    state = ClusterState()
    state.sync(bal)
    keys = [hash64(f"user-{i}".encode()) for i in range(3000)]
    first = [bal.pick(state, k) for k in keys]
    assert first == [bal.pick(state, k) for k in keys]  # same key, same endpoint
    shares = Counter(first)
    assert all(600 < shares[i] < 1400 for i in range(3))
    # A fourth endpoint moves only about a quarter of the keys (consistent hashing).
    bal4 = Balancer(eps(1, 1, 1, 1), "ring_hash")
    state4 = ClusterState()
    state4.sync(bal4)
    moved = sum(1 for k, f in zip(keys, first, strict=True) if bal4.pick(state4, k) != f)
    assert moved < 0.4 * len(keys)


def test_ring_hash_weights() -> None:
    bal = Balancer(eps(1, 3), "ring_hash")
    counts = Counter(bal.ring_index)
    assert 2.5 < counts[1] / counts[0] < 3.5


def test_maglev_is_consistent_weighted_and_minimally_disruptive() -> None:
    bal = Balancer(eps(1, 1, 1), "maglev")
    assert len(bal.maglev) >= 300 and -1 not in bal.maglev
    table = Counter(bal.maglev)
    assert max(table.values()) - min(table.values()) <= len(bal.maglev) * 0.02 + 1
    weighted = Counter(Balancer(eps(1, 2), "maglev").maglev)
    assert 1.8 < weighted[1] / weighted[0] < 2.2
    state = ClusterState()
    state.sync(bal)
    keys = [hash64(f"s-{i}".encode()) for i in range(2000)]
    assert [bal.pick(state, k) for k in keys] == [bal.pick(state, k) for k in keys]


def test_ejected_endpoints_are_skipped_then_panic() -> None:
    for policy in ("round_robin", "random", "least_request", "ring_hash", "maglev"):
        bal = Balancer(eps(1, 1, 1), policy)
        state = ClusterState()
        state.sync(bal)
        state.hosts[1].ejected_until = 100.0
        state.ejected = 1
        got = Counter(bal.pick(state, hash64(b"k%d" % i), now=50.0) for i in range(300))
        assert got[1] == 0, policy
        # Once the ejection is over (later "now") it is used again.
        assert 1 in {bal.pick(state, hash64(b"k%d" % i), now=150.0) for i in range(300)}, policy
        # Every endpoint ejected: Envoy's panic mode, all of them are used rather than none.
        for h in state.hosts:
            h.ejected_until = 100.0
        state.ejected = 3
        assert bal.pick(state, hash64(b"x"), now=50.0) in (0, 1, 2)


def test_exclude_moves_a_retry_elsewhere() -> None:
    bal = Balancer(eps(1, 1), "ring_hash")
    state = ClusterState()
    state.sync(bal)
    k = hash64(b"sticky")
    first = bal.pick(state, k)
    assert bal.pick(state, k, exclude=first) != first


def test_sync_keeps_stats_of_endpoints_that_stay() -> None:
    state = ClusterState()
    state.sync(Balancer(eps(1, 1)))
    state.hosts[1].ejections = 2
    state.sync(Balancer(eps(1, 1, 1)))
    assert state.hosts[1].ejections == 2 and state.hosts[2].ejections == 0


def test_request_hash_policies() -> None:
    headers = [(b"X-User", b"alice"), (b"Cookie", b"a=1; session=xyz")]
    h_user = request_hash([("header", b"x-user", False)], headers, b"", "10.0.0.1")
    assert h_user == hash64(b"alice")
    assert request_hash([("cookie", b"session", False)], headers, b"", "") == hash64(b"xyz")
    assert request_hash([("query_parameter", b"id", False)], [], b"a=1&id=42", "") == hash64(b"42")
    assert request_hash([("source_ip", b"", False)], [], b"", "10.0.0.1") == hash64(b"10.0.0.1")
    assert request_hash([("header", b"x-missing", False)], headers, b"", "") is None
    # terminal: the first policy that produced a hash ends the list
    only_user = request_hash([("header", b"x-user", True), ("source_ip", b"", False)], headers, b"", "1.1.1.1")
    both = request_hash([("header", b"x-user", False), ("source_ip", b"", False)], headers, b"", "1.1.1.1")
    assert only_user == h_user and both != h_user
