"""Metrics hygiene (issue #15): process_* metrics, no _created series, units in names, and the Grafana dashboard
and alert rules meshgw ships: valid JSON/YAML whose every metric and label exists."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics

ROOT = Path(__file__).resolve().parents[1]
SHARE = ROOT / "gateway" / "share"
DASHBOARD = SHARE / "grafana" / "meshgw.json"
ALERTS = SHARE / "prometheus" / "meshgw-alerts.yml"
# Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}
PROCESS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
}
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "min",
    "max",
    "count",
    "time",
    "histogram_quantile",
    "absent",
    "or",
    "and",
    "without",
    "on",
    "up",
    "ignoring",
    "group_left",
    "avg",
    "topk",
    "bool",
    "unless",
}


def families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every series name meshgw exports -> (family type, label names)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for v in vars(metrics).values():
        if isinstance(v, MetricWrapperBase):
            name, kind, labels = v._name, v._type, tuple(v._labelnames)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}[kind]
            for s in suffixes:
                out[name + s] = (kind, labels)
    for name in PROCESS:
        out[name] = ("process", ())
    return out


def exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(f"dashboard panel {p['title']!r}", t["expr"]) for p in dash["panels"] for t in p["targets"]]
    out += [(f"dashboard variable {v['name']}", v["query"]) for v in dash["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load(ALERTS.read_text())
    out += [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return out


def test_dashboard_and_alerts_are_valid_and_use_only_exported_metrics_and_labels() -> None:
    known = families()
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])
    rules = yaml.safe_load(ALERTS.read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["annotations"]["summary"], r
    used: set[str] = set()
    for where, expr in exprs():
        names = set(re.findall(r"\b((?:meshgw|process)_[a-z0-9_]+)\b", expr))
        assert names, f"{where}: uses no meshgw metric: {expr}"
        for n in names:
            assert n in known, f"{where}: {n} is not a metric meshgw exports"
        used |= names
        labels_of = set().union(*(known[n][1] for n in names)) | SCRAPE_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in labels_of, f"{where}: label {label!r} is not on {sorted(names)}"
        for label in re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|=)", expr):
            assert label in labels_of, f"{where}: label {label!r} is not on {sorted(names)}"
    for must in ("meshgw_leaf_cert_expiry_timestamp_seconds", "meshgw_connections_denied_total", "meshgw_consul_up"):
        assert must in used


def test_scrape_has_process_metrics_build_info_and_no_created_series() -> None:
    from prometheus_client import generate_latest

    metrics.CONNECTIONS_ACCEPTED.labels("inbound").inc(0)
    metrics.HTTP_DURATION.labels("inbound").observe(0.01)
    text = generate_latest(metrics.REGISTRY).decode()
    for name in PROCESS - {"process_max_fds"}:
        assert f"\n{name} " in text, name
    assert "meshgw_build_info{" in text
    assert "_created" not in text


def test_metric_names_carry_their_units_and_help() -> None:
    for v in vars(metrics).values():
        if not isinstance(v, MetricWrapperBase):
            continue
        assert v._documentation.strip(), f"{v._name} has no help text"
        if "duration" in v._name or "timestamp" in v._name:
            assert v._name.endswith("_seconds"), f"{v._name}: durations and timestamps are in seconds (_seconds)"
        if v._type == "histogram":
            assert re.search(r"_(seconds|bytes)$", v._name), f"{v._name}: a histogram names its unit"


@pytest.mark.parametrize("path", [DASHBOARD, ALERTS], ids=lambda p: p.name)
def test_shipped_as_package_data(path: Path) -> None:
    # maturin ships every file of the gateway package but what [tool.maturin] exclude names (the wheel test in
    # test_packaging.py checks a built wheel too).
    conf: Any = tomllib.loads((ROOT / "pyproject.toml").read_text())
    excluded = conf["tool"]["maturin"].get("exclude", [])
    rel = str(path.relative_to(ROOT))
    assert rel.startswith("gateway/")
    assert not any(fnmatch.fnmatch(rel, g) for g in excluded), (rel, excluded)
