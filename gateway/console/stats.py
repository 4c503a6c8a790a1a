"""The core's counters, gauges and histograms (``Core.stats_json``, gateway/core/src/stats.rs) as lookups by name
and labels, for the console: the same numbers /metrics exposes, without a Prometheus text round trip."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Histogram:
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # per finite bound; +Inf is ``count``
    count: int
    total: float

    def minus(self, older: Histogram | None) -> Histogram:
        """What was observed since ``older`` (None: since the start)."""
        if older is None or older.bounds != self.bounds:
            return self
        return Histogram(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, older.cumulative, strict=True)),
            self.count - older.count,
            self.total - older.total,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket that holds the rank; None without
        observations; the highest finite bound when the rank is in +Inf."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            if cum >= rank:
                inside = cum - below
                if inside <= 0:
                    return bound
                return lower + (bound - lower) * (rank - below) / inside
            lower, below = bound, cum
        return self.bounds[-1] if self.bounds else None


def _matches(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


@dataclass(frozen=True, slots=True)
class Stats:
    counters: tuple[tuple[str, Mapping[str, str], float], ...]
    gauges: tuple[tuple[str, Mapping[str, str], float], ...]
    histograms: tuple[tuple[str, Mapping[str, str], Histogram], ...]

    @classmethod
    def parse(cls, text: str) -> Stats:
        data: dict[str, Any] = json.loads(text)
        bounds = tuple(float(b) for b in data.get("buckets", ()))
        return cls(
            counters=tuple((n, dict(lab), float(v)) for n, lab, v in data.get("counters", ())),
            gauges=tuple((n, dict(lab), float(v)) for n, lab, v in data.get("gauges", ())),
            histograms=tuple(
                (n, dict(lab), Histogram(bounds, tuple(int(c) for c in cum), int(count), float(total)))
                for n, lab, cum, count, total in data.get("histograms", ())
            ),
        )

    @classmethod
    def empty(cls) -> Stats:
        return cls((), (), ())

    def counter(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        return sum(v for n, lab, v in self.counters if n == name and _matches(lab, labels))

    def gauge(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.gauges if n == name and _matches(lab, labels))

    def histogram(self, name: str, **labels: str) -> Histogram | None:
        """The series of ``name`` with ``labels`` merged (buckets added)."""
        found = [h for n, lab, h in self.histograms if n == name and _matches(lab, labels)]
        if not found:
            return None
        first = found[0]
        cum = [0] * len(first.cumulative)
        count, total = 0, 0.0
        for h in found:
            if h.bounds != first.bounds:
                continue
            cum = [a + b for a, b in zip(cum, h.cumulative, strict=True)]
            count += h.count
            total += h.total
        return Histogram(first.bounds, tuple(cum), count, total)
