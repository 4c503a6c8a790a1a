"""Cheaper per-request updates of prometheus_client children (the metrics themselves live in gateway/metrics.py).

``Counter.inc`` and ``Histogram.observe`` check observability and, for a histogram, walk the bucket list in Python
on every call; per request and per hop that was a visible share of the HTTP path. These helpers resolve the
child's value objects once and update them directly: the same values, the same exposition. If a prometheus_client
version lays its children out differently, they fall back to the public methods.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from typing import Any


def incrementer(child: Any) -> Callable[[], None]:
    """A zero-argument callable adding 1 to a Counter child."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    if callable(inc):
        return partial(inc, 1)
    return child.inc  # type: ignore[no-any-return]


class Observer:
    """``observe(seconds)`` for a Histogram child: one bisect, two value increments."""

    __slots__ = ("_bounds", "_buckets", "_child", "_sum", "observe")

    def __init__(self, child: Any):
        self._child = child
        bounds = getattr(child, "_upper_bounds", None)
        buckets = getattr(child, "_buckets", None)
        total = getattr(child, "_sum", None)
        if bounds is not None and buckets is not None and total is not None and len(bounds) == len(buckets):
            self._bounds = list(bounds)
            self._buckets = [b.inc for b in buckets]
            self._sum = total.inc
            self.observe = self._fast
        else:
            self.observe = child.observe

    def _fast(self, value: float) -> None:
        self._sum(value)
        self._buckets[bisect_left(self._bounds, value)](1)
