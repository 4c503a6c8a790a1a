"""The blocking-query loop's rules (consul.md §1) and the Consul answer translators."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connect import watch
from connect.consul import endpoints_from_health
from connect.watch import WatchError, WatchHealth, backoff_delay, blocking_watch


def run_watch(answers: list[Any], health: WatchHealth | None = None) -> tuple[list[int], list[Any]]:
    """Feed scripted answers (index, data) or WatchError to the loop; return the indexes it sent."""
    sent: list[int] = []
    seen: list[Any] = []
    script = list(answers)

    async def fetch(index: int) -> tuple[int, Any]:
        sent.append(index)
        if not script:
            raise asyncio.CancelledError
        a = script.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def main() -> None:
        try:
            await blocking_watch("t", fetch, seen.append, health or WatchHealth())
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return sent, seen


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "BACKOFF_MIN", 0.001)
    monkeypatch.setattr(watch, "BACKOFF_MAX", 0.002)


def test_index_is_sent_back_and_data_only_reported_on_change() -> None:
    sent, seen = run_watch([(5, "a"), (7, "a"), (9, "b")])
    assert sent == [0, 5, 7, 9]
    assert seen == ["a", "b"]


def test_index_going_backwards_resets_to_zero() -> None:
    sent, _ = run_watch([(50, "a"), (10, "b"), (11, "c")])
    assert sent == [0, 50, 0, 11]


def test_index_zero_answer_never_makes_a_nonblocking_loop() -> None:
    sent, _ = run_watch([(0, "a"), (0, "a")])
    assert sent == [0, 1, 1]


def test_errors_back_off_and_health_reports_once() -> None:
    changes: list[bool] = []
    health = WatchHealth(on_change=changes.append)
    sent, seen = run_watch([WatchError("down"), WatchError("down"), WatchError("down"), (3, "x")], health)
    assert sent == [0, 0, 0, 0, 3]
    assert changes == [False, True] and seen == ["x"]


def test_backoff_grows_and_is_capped() -> None:
    watch.BACKOFF_MIN, watch.BACKOFF_MAX = 0.5, 30.0
    assert backoff_delay(1) <= 1.0
    assert 15.0 <= backoff_delay(20) <= 30.0


def _entry(address: str, port: int, weight: int = 1, wan: str | None = None, node: str = "10.0.0.9") -> dict[str, Any]:
    svc: dict[str, Any] = {"Address": address, "Port": port, "Weights": {"Passing": weight, "Warning": 1}}
    if wan:
        svc["TaggedAddresses"] = {"wan": {"Address": wan, "Port": port + 1}}
    return {"Node": {"Address": node, "TaggedAddresses": {}}, "Service": svc, "Checks": []}


def test_endpoints_follow_best_address_and_weights() -> None:
    eps = endpoints_from_health([_entry("10.0.0.2", 21000, 3), _entry("", 21001)], "dc1", "dc1")
    assert [(e.address, e.port, e.weight) for e in eps] == [("10.0.0.2", 21000, 3), ("10.0.0.9", 21001, 1)]
    # another datacenter: the WAN tagged address wins (consul.md §4.1 BestAddress)
    eps = endpoints_from_health([_entry("10.0.0.2", 21000, wan="203.0.113.5")], "dc2", "dc1")
    assert [(e.address, e.port, e.datacenter) for e in eps] == [("203.0.113.5", 21001, "dc2")]
