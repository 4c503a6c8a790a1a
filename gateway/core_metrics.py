"""The core's counters, gauges and histograms as Prometheus metrics, read at scrape time (design.md: "a custom
Collector reads the core's stats"). The names, help texts and labels stay those of gateway/metrics.py: in core
mode those metric objects leave the registry and this collector answers for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway import metrics

# Everything the data plane counts; the rest (certificates, snapshot, control plane, reloads) stays in Python.
DATA_PLANE = (
    metrics.CONNECTIONS_ACCEPTED,
    metrics.CONNECTIONS_DENIED,
    metrics.GATEWAY_ROUTED,
    metrics.CONNECTIONS_ACTIVE,
    metrics.BYTES_RECEIVED,
    metrics.BYTES_SENT,
    metrics.UPSTREAM_CONNECT_ERRORS,
    metrics.TLS_HANDSHAKES,
    metrics.HTTP_RESPONSES,
    metrics.HTTP_DURATION,
    metrics.HTTP_DENIED,
    metrics.HTTP_UPSTREAM_RESPONSES,
    metrics.HTTP_UPSTREAM_DURATION,
    metrics.HTTP_ROUTE_RESPONSES,
    metrics.HTTP_ROUTE_DURATION,
    metrics.HTTP_RETRIES,
    metrics.HTTP_RETRY_OVERFLOW,
    metrics.HTTP_BREAKER_TRIPS,
    metrics.HTTP_PENDING,
    metrics.OUTLIER_EJECTIONS,
    metrics.OUTLIER_EJECTED,
    metrics.HTTP_TIMEOUTS,
    metrics.GRPC_RESPONSES,
    metrics.HTTP2_CUTS,
)


def _core_name(m: Any) -> str:
    # The core keeps counters under their exposed name (with _total), as Prometheus' text format shows them.
    return f"{m._name}_total" if isinstance(m, Counter) else m._name


class CoreCollector(Collector):
    def __init__(self, core: Any):
        self.core = core
        self.known = {_core_name(m): m for m in DATA_PLANE}

    def describe(self) -> Iterator[Any]:
        for m in DATA_PLANE:
            yield from self._family(m)

    def _family(self, m: Any) -> Iterator[Any]:
        doc, labels = m._documentation, list(m._labelnames)
        if isinstance(m, Counter):
            yield CounterMetricFamily(m._name, doc, labels=labels)
        elif isinstance(m, Gauge):
            yield GaugeMetricFamily(m._name, doc, labels=labels)
        elif isinstance(m, Histogram):
            yield HistogramMetricFamily(m._name, doc, labels=labels)

    def collect(self) -> Iterator[Any]:
        stats = json.loads(self.core.stats_json())
        families: dict[str, Any] = {}
        for m in DATA_PLANE:
            (fam,) = self._family(m)
            families[_core_name(m)] = (m, fam)
        for kind in ("counters", "gauges"):
            for name, labels, value in stats[kind]:
                entry = families.get(name)
                if entry is not None:
                    m, fam = entry
                    fam.add_metric([labels.get(k, "") for k in m._labelnames], value)
        bounds = stats["buckets"]
        for name, labels, cumulative, count, total in stats["histograms"]:
            entry = families.get(name)
            if entry is not None:
                m, fam = entry
                buckets = [(repr(float(b)), c) for b, c in zip(bounds, cumulative, strict=True)]
                buckets.append(("+Inf", count))
                fam.add_metric([labels.get(k, "") for k in m._labelnames], buckets, total)
        for _m, fam in families.values():
            yield fam


def install(core: Any) -> None:
    """Core mode: the core's numbers replace the Python data plane's (which count nothing there)."""
    for m in DATA_PLANE:
        try:
            metrics.REGISTRY.unregister(m)
        except KeyError:
            pass
    metrics.REGISTRY.register(CoreCollector(core))
