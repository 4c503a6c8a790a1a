"""The console's parts without processes: stats and quantiles, the traffic window, certificate descriptions, the
maintenance guard, the intention form's input checks, and every JSON view of a config holding a token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from connect.ca import BuiltinCA
from connect.intentions import parse_entries
from gateway.config import load_config
from gateway.console import intentions, inventory
from gateway.console.certs import describe_bundle, rotation_due
from gateway.console.errors import RecentErrors
from gateway.console.ops import Maintenance, refusal
from gateway.console.source import ConsoleSource, ListenerInfo
from gateway.console.stats import Histogram, Stats
from gateway.console.traffic import EdgeSource, TrafficWindow, edge_traffic
from gateway.snapshot import Endpoint, SnapshotBuilder

BOUNDS = [0.001, 0.01, 0.1, 1.0]


def stats(requests: int, errors: int, buckets: list[int], count: int, accepted: int = 0) -> Stats:
    return Stats.parse(
        json.dumps(
            {
                "counters": [
                    [
                        "meshgw_http_responses_total",
                        {"listener": "upstream:api", "code_class": "2xx"},
                        requests - errors,
                    ],
                    ["meshgw_http_responses_total", {"listener": "upstream:api", "code_class": "5xx"}, errors],
                    ["meshgw_connections_accepted_total", {"listener": "inbound"}, accepted],
                    ["meshgw_connections_denied_total", {"listener": "inbound", "reason": "intention"}, 1],
                ],
                "gauges": [["meshgw_connections_active", {"listener": "inbound"}, 2]],
                "histograms": [
                    ["meshgw_http_request_duration_seconds", {"listener": "upstream:api"}, buckets, count, 0.5]
                ],
                "buckets": BOUNDS,
            }
        )
    )


def test_stats_lookups_sum_matching_series() -> None:
    s = stats(10, 2, [1, 5, 10, 10], 10)
    assert s.counter("meshgw_http_responses_total", listener="upstream:api") == 10
    assert s.counter("meshgw_http_responses_total", code_class="5xx") == 2
    assert s.counter("meshgw_http_responses_total", listener="other") == 0
    assert s.gauge("meshgw_connections_active", listener="inbound") == 2
    assert s.histogram("meshgw_http_request_duration_seconds", listener="nope") is None


def test_quantile_interpolates_like_prometheus() -> None:
    h = Histogram(tuple(BOUNDS), (0, 0, 100, 100), 100, 1.0)
    # All 100 observations in (0.01, 0.1]: p99 is 99 % of the way through that bucket.
    assert h.quantile(0.99) == pytest.approx(0.01 + 0.09 * 0.99)
    assert Histogram(tuple(BOUNDS), (0, 0, 0, 0), 0, 0).quantile(0.99) is None
    # Past the last finite bound: that bound (as histogram_quantile does for +Inf).
    assert Histogram(tuple(BOUNDS), (0, 0, 0, 0), 5, 50).quantile(0.99) == 1.0


def test_edge_traffic_is_the_difference_of_two_samples() -> None:
    base = stats(10, 0, [10, 10, 10, 10], 10)
    latest = stats(30, 5, [10, 10, 30, 30], 30)
    t = edge_traffic(EdgeSource("upstream:api", http=True), latest, base, 2.0)
    assert t.rate == pytest.approx(10.0)
    assert t.error_rate == pytest.approx(0.25)
    assert t.p99_ms is not None and 10 < t.p99_ms <= 100  # the 20 new ones were all in (10 ms, 100 ms]
    first = edge_traffic(EdgeSource("upstream:api", http=True), latest, None, 0)
    assert first.rate is None and first.total == 30
    tcp = edge_traffic(EdgeSource("inbound"), stats(0, 0, [0] * 4, 0, accepted=9), stats(0, 0, [0] * 4, 0, 1), 4)
    assert tcp.unit == "conn/s" and tcp.rate == pytest.approx(2.0) and tcp.p99_ms is None


def test_traffic_window_keeps_a_bounded_recent_window() -> None:
    now = [100.0]
    reads = []

    def read() -> Stats:
        reads.append(now[0])
        return stats(int(now[0]), 0, [0] * 4, 0)

    w = TrafficWindow(read, clock=lambda: now[0])
    _latest, base, seconds = w.sample()
    assert base is None
    now[0] += 0.1
    w.sample()
    assert len(reads) == 1, "samples closer than the minimum gap are not taken"
    for _ in range(40):
        now[0] += 1.0
        _latest, base, seconds = w.sample()
    assert base is not None and 9.0 <= seconds <= 11.0
    assert len(w.samples) <= 12
    now[0] += 100  # nobody looked for long: no rate from a stale sample
    assert w.sample()[1] is None


def test_certificates_are_described_from_public_pem_only(tmp_path: Path) -> None:
    ca = BuiltinCA.init(tmp_path / "ca", "test.consul")
    leaf = ca.issue("web", "dc1", 3600)
    infos = describe_bundle(leaf.cert_pem + leaf.key_pem + ca.cert_pem)
    assert len(infos) == 2  # the key in between is skipped, never parsed
    assert infos[0].uris == (leaf.spiffe_id,)
    assert infos[0].serial == leaf.serial
    assert infos[1].is_ca and not infos[0].is_ca
    assert rotation_due(0, 300) == pytest.approx(200)


def test_maintenance_posts_need_loopback_and_same_origin() -> None:
    assert refusal("127.0.0.1", "127.0.0.1:19000", None, None, False) is None
    assert refusal("::1", "[::1]:19000", None, None, False) is None
    assert "loopback" in (refusal("10.1.2.3", "x", None, None, False) or "")
    assert refusal("10.1.2.3", "x", None, None, True) is None
    assert refusal("127.0.0.1", "127.0.0.1:19000", "http://evil.example", None, False) is not None
    assert refusal("127.0.0.1", "127.0.0.1:19000", "http://127.0.0.1:19000", "same-origin", False) is None
    assert refusal("127.0.0.1", "127.0.0.1:19000", None, "cross-site", False) is not None
    assert refusal("127.0.0.1", "127.0.0.1:19000", "null", None, False) is not None
    m = Maintenance()
    assert m.not_ready() is None
    m.healthcheck_failed = True
    assert "healthcheck/fail" in (m.not_ready() or "")


@pytest.mark.parametrize(
    ("query", "headers", "problem"),
    [
        ({}, [], "source: required"),
        ({"source": "web", "method": "GE T"}, [], "method:"),
        ({"source": "web", "path": "admin"}, [], "path:"),
        ({"source": "web"}, ["no-colon"], "headers:"),
        ({"source": "w" * 5000}, [], "longer than"),
    ],
)
def test_check_form_input_errors_are_one_line(query: dict[str, str], headers: list[str], problem: str) -> None:
    with pytest.raises(intentions.CheckError) as e:
        intentions.CheckRequest.from_query(query, "api", headers)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_recent_errors_keeps_the_last_lines_bounded() -> None:
    import logging

    h = RecentErrors(keep=3)
    lg = logging.getLogger("meshgw.test-console")
    lg.addHandler(h)
    try:
        for i in range(5):
            lg.error("problem %d\nsecond line", i)
        lg.info("not kept")
    finally:
        lg.removeHandler(h)
    assert [e.message for e in h.latest()] == ["problem 4", "problem 3", "problem 2"]


class FakeCore:
    def stats_json(self) -> str:
        return json.dumps({"counters": [], "gauges": [], "histograms": [], "buckets": BOUNDS})

    def clusters_json(self) -> str:
        return "[]"

    def ports(self) -> dict[str, int]:
        return {"inbound": 21000}

    def version(self) -> int:
        return 1


def test_no_view_carries_a_token_or_a_key(tmp_path: Path) -> None:
    ca = BuiltinCA.init(tmp_path / "ca", "test.consul")
    cfg_path = tmp_path / "web.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "service": {"name": "web", "port": 8080},
                "inbound": {"bind": "127.0.0.1:21000"},
                "upstreams": [{"service": "api", "bind": "127.0.0.1:9191"}],
                "control_plane": {"type": "consul", "consul": {"token": "s3cr3t-consul-token"}},
                "certificates": {"type": "builtin", "builtin": {"dir": "ca"}},
            }
        )
    )
    cfg = load_config(cfg_path)
    builder = SnapshotBuilder(cfg)
    leaf = ca.issue("web", "dc1", 3600)
    builder.set_tls("test.consul", leaf, ca.cert_pem)
    builder.set_catalog({"api": (Endpoint("127.0.0.1", 21001, "dc1"),)})
    builder.set_intentions(
        parse_entries(
            [{"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "*", "Action": "deny"}]}], "t"
        )
    )
    src = ConsoleSource(
        config=lambda: cfg,
        holder=builder.holder,
        core=FakeCore(),
        listeners=lambda: [ListenerInfo("inbound", "inbound", "127.0.0.1:21000", "tcp")],
        not_ready=lambda: None,
        drain_listeners=lambda inbound_only: [],
    )
    views: dict[str, Any] = {
        "clusters": inventory.clusters(src),
        "listeners": inventory.listeners(src),
        "certs": inventory.certs(src),
        "config_dump": inventory.config_dump(src),
        "health": inventory.health(src),
        "intentions": intentions.rules(src),
    }
    text = json.dumps(views, default=str)
    assert "s3cr3t-consul-token" not in text
    assert "PRIVATE KEY" not in text
    key_body = leaf.key_pem.decode().splitlines()[1]
    assert key_body not in text
    assert views["certs"]["leaf"]["spiffe_id"] == leaf.spiffe_id
    assert views["certs"]["roots"][0]["is_ca"] is True
    assert views["clusters"][0]["endpoints"][0]["port"] == 21001
    assert views["listeners"][0]["accepting"] is True
    assert inventory.scrub({"a": ["-----BEGIN PRIVATE KEY-----"]}) == {"a": ["(redacted)"]}


def test_mesh_gateway_topology_shows_local_services_and_remote_datacenters(tmp_path: Path) -> None:
    from gateway.console import topology

    (tmp_path / "gw.yaml").write_text(
        yaml.safe_dump(
            {
                "mode": "mesh-gateway",
                "service": {"name": "mesh-gateway"},
                "gateway": {"bind": "127.0.0.1:8443"},
                "control_plane": {"type": "local", "local": {"catalog": "c.yaml", "intentions": "i.yaml"}},
                "certificates": {"type": "builtin", "builtin": {"dir": "ca", "create": True}},
            }
        )
    )
    cfg = load_config(tmp_path / "gw.yaml")
    builder = SnapshotBuilder(cfg)
    builder.set_catalog(
        {
            "api": (Endpoint("127.0.0.1", 21001, "dc1", health="critical"),),
            "mesh-gateway": (Endpoint("127.0.0.1", 8444, "dc2"), Endpoint("127.0.0.1", 8443, "dc1")),
        }
    )
    src = ConsoleSource(
        config=lambda: cfg,
        holder=builder.holder,
        core=FakeCore(),
        listeners=lambda: [ListenerInfo("mesh-gateway", "mesh-gateway", "127.0.0.1:8443", "tcp")],
        not_ready=lambda: None,
        drain_listeners=lambda inbound_only: [],
    )
    clusters = inventory.clusters(src)
    assert {c["name"] for c in clusters} >= {"remote:dc2"}
    topo = topology.build(src, Stats.empty(), None, 0, clusters).to_json()
    nodes = {n["id"]: n for n in topo["nodes"]}
    assert nodes["self"]["label"].startswith("mesh-gateway")
    assert nodes["cluster:remote:dc2"]["kind"] == "datacenter"
    edges = {e["id"]: e for e in topo["edges"]}
    assert edges["mesh-gateway"]["source"] == "callers" and edges["mesh-gateway"]["traffic"]["unit"] == "conn/s"
    assert edges["mesh-gateway/remote:dc2"]["target"] == "cluster:remote:dc2"
