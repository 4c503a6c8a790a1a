"""Live traffic per topology edge: request (or connection) rate, error rate and p99 latency over the last few
seconds, from two samples of the core's stats. Sampling happens when the console asks (every few seconds while
a page is open), so an idle admin port costs nothing; the window and the number of samples are bounded."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.console.stats import Histogram, Stats

WINDOW_SECONDS = 10.0  # rates are over at most the last 10 s
MIN_GAP_SECONDS = 0.5  # samples closer together than this are not kept (many tabs polling)
MAX_SAMPLES = 64


@dataclass(frozen=True, slots=True)
class EdgeSource:
    """Where an edge's numbers come from: a listener of the core and, for a routed HTTP chain, one cluster."""

    listener: str
    http: bool = False
    cluster: str | None = None


@dataclass(frozen=True, slots=True)
class EdgeTraffic:
    unit: str  # "req/s" (HTTP) or "conn/s" (TCP)
    total: float  # requests or connections since the start
    rate: float | None  # per second over the window; None until two samples exist
    error_rate: float | None  # share of 5xx (HTTP) or of refused and failed connections (TCP), 0..1
    p99_ms: float | None  # HTTP only

    def to_json(self) -> dict[str, float | str | None]:
        return {
            "unit": self.unit,
            "total": self.total,
            "rate": None if self.rate is None else round(self.rate, 3),
            "error_rate": None if self.error_rate is None else round(self.error_rate, 4),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def _http_counts(stats: Stats, src: EdgeSource) -> tuple[float, float]:
    if src.cluster is None:
        name, labels = "meshgw_http_responses_total", {"listener": src.listener}
    else:
        name, labels = "meshgw_http_upstream_responses_total", {"listener": src.listener, "cluster": src.cluster}
    return stats.counter(name, **labels), stats.counter(name, **labels, code_class="5xx")


def _tcp_counts(stats: Stats, src: EdgeSource) -> tuple[float, float]:
    accepted = stats.counter("meshgw_connections_accepted_total", listener=src.listener)
    denied = stats.counter("meshgw_connections_denied_total", listener=src.listener)
    failed = stats.counter("meshgw_upstream_connect_errors_total", listener=src.listener)
    return accepted + denied, denied + failed


def _histogram(stats: Stats, src: EdgeSource) -> Histogram | None:
    if src.cluster is None:
        return stats.histogram("meshgw_http_request_duration_seconds", listener=src.listener)
    return stats.histogram("meshgw_http_upstream_request_duration_seconds", listener=src.listener, cluster=src.cluster)


def edge_traffic(src: EdgeSource, latest: Stats, base: Stats | None, seconds: float) -> EdgeTraffic:
    counts = _http_counts if src.http else _tcp_counts
    total, errors = counts(latest, src)
    unit = "req/s" if src.http else "conn/s"
    if base is None or seconds <= 0:
        return EdgeTraffic(unit, total, None, None, None)
    old_total, old_errors = counts(base, src)
    n = max(0.0, total - old_total)
    bad = max(0.0, errors - old_errors)
    p99 = None
    if src.http:
        now_h = _histogram(latest, src)
        if now_h is not None:
            q = now_h.minus(_histogram(base, src)).quantile(0.99)
            p99 = None if q is None else q * 1000.0
    return EdgeTraffic(unit, total, n / seconds, (min(1.0, bad / n) if n else 0.0), p99)


class TrafficWindow:
    """Samples of the stats, newest last; rates are taken between the newest and the oldest within the window."""

    def __init__(self, read: Callable[[], Stats], clock: Callable[[], float] = time.monotonic):
        self.read = read
        self.clock = clock
        self.samples: deque[tuple[float, Stats]] = deque(maxlen=MAX_SAMPLES)

    def sample(self) -> tuple[Stats, Stats | None, float]:
        """(latest, base or None, seconds between them)."""
        now = self.clock()
        if not self.samples or now - self.samples[-1][0] >= MIN_GAP_SECONDS:
            self.samples.append((now, self.read()))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_SECONDS:
            self.samples.popleft()
        t_latest, latest = self.samples[-1]
        if len(self.samples) < 2:
            return latest, None, 0.0
        t_base, base = self.samples[0]
        if now - t_base > WINDOW_SECONDS * 3:  # nobody looked for a while: the old sample says little
            self.samples.popleft()
            return latest, None, 0.0
        return latest, base, t_latest - t_base
