"""The outbound HTTP section handed to the core (gateway/corespec/outbound_http.py): the chain Python compiled,
flattened into the schema of gateway/core/src/outbound/http/mod.rs, and accepted by the core as it is."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from gateway.config import Config, LoadBalancerConfig, ServiceConfig, UpstreamConfig, parse_address
from gateway.corespec import outbound_http
from gateway.http.entries import parse_entries
from gateway.http.routing import BalancerCache, compile_chain
from gateway.snapshot import Endpoint, UpstreamView

ENTRIES = [
    {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {
                    "HTTP": {"PathPrefix": "/admin/", "Methods": ["GET"], "Header": [{"Name": "x-a", "Present": True}]}
                },
                "Destination": {
                    "PrefixRewrite": "/",
                    "NumRetries": 3,
                    "RetryOnStatusCodes": [503],
                    "RequestTimeout": "2s",
                },
            },
            {
                "Match": {"HTTP": {"QueryParam": [{"Name": "pin", "Exact": "v2"}]}},
                "Destination": {"ServiceSubset": "v2"},
            },
        ],
    },
    {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [
            {"Weight": 80, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-split": "v1"}, "Remove": ["x-gone"]}},
            {"Weight": 20, "ServiceSubset": "v2"},
        ],
    },
    {
        "Kind": "service-resolver",
        "Name": "api",
        "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
        "LoadBalancer": {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]},
    },
]


def _setup(policy: str = "round_robin") -> tuple[Config, UpstreamConfig, UpstreamView]:
    cfg = Config.__new__(Config)
    up = UpstreamConfig(
        service="api",
        bind=parse_address("127.0.0.1:0"),
        protocol="http",
        load_balancer=LoadBalancerConfig(policy=policy),
    )
    for k, v in {
        "service": ServiceConfig("web", "web", "127.0.0.1", 1),
        "upstreams": (up,),
        "datacenter": "dc1",
        "mode": "sidecar",
    }.items():
        object.__setattr__(cfg, k, v)
    cat = {
        "api": (
            Endpoint("10.0.0.1", 21000, "dc1", meta=(("version", "v1"),)),
            Endpoint("10.0.0.2", 21000, "dc1", weight=3, meta=(("version", "v2"),)),
        )
    }
    entries = parse_entries(ENTRIES, "t") if policy == "round_robin" else ()
    chain = compile_chain(up, "dc1", "td.consul", cat, entries, BalancerCache(), "web")
    view = UpstreamView(
        "api.dc1", "api", "dc1", "api.default.dc1.internal.td.consul", "spiffe://td.consul/x", (), chain
    )
    return cfg, up, view


def test_the_compiled_chain_flattened() -> None:
    cfg, _, view = _setup()
    snap: Any = SimpleNamespace(access_log=SimpleNamespace(fields=("status", "route")))
    out = outbound_http.spec(cfg, snap, [view])
    assert out["ingress"] is False and out["observe"] is True and out["source"] == "web"
    assert out["access_log"] == {"fields": ["status", "route"]}
    assert out["request_timeout_ms"] == 15000 and out["retry"]["num_retries"] == 2
    (chain,) = out["chains"]
    assert [r["name"] for r in chain["routes"]] == ["api/0", "api/1", "default"]
    admin = chain["routes"][0]
    assert admin["match"]["path_prefix"] == "/admin/" and admin["match"]["methods"] == ["GET"]
    assert admin["match"]["headers"] == [
        {"name": "x-a", "exact": None, "prefix": None, "suffix": None, "regex": None, "invert": False}
    ]
    assert admin["prefix_rewrite"] == "/" and admin["match_prefix"] == "/admin/"
    assert admin["request_timeout_ms"] == 2000
    assert admin["retry"]["num_retries"] == 3 and admin["retry"]["retry_on_status_codes"] == [503]
    assert chain["routes"][1]["match"]["query"] == [{"name": "pin", "exact": "v2", "regex": None}]
    assert chain["routes"][1]["splits"][0]["cluster"] == "v2.api"
    default = chain["routes"][2]
    assert default["match"] is None and default["retry"] is None
    v1 = default["splits"][0]
    assert (v1["weight"], v1["cluster"]) == (80.0, "v1.api")
    assert v1["request_headers"] == {"drop": ["x-gone", "x-split"], "add": [["x-split", "v1"]]}
    c = out["clusters"]["v1.api"]
    assert c["sni"] == "v1.api.default.dc1.internal.td.consul"
    assert [e["address"] for e in c["endpoints"]] == ["10.0.0.1"]
    assert c["lb"]["policy"] == "ring_hash"
    assert c["lb"]["hash_policies"] == [{"field": "header", "name": "x-user", "terminal": False}]
    assert c["limits"]["max_pending_requests"] == 1024 and c["outlier"]["base_ejection_time_ms"] == 30000


def _apply(http: dict[str, Any]) -> list[tuple[str, str]]:
    from gateway._core import Core

    core = Core()
    try:
        listener = {"name": "upstream:api", "bind": "127.0.0.1:0", "kind": "upstream", "protocol": "http"}
        core.apply(json.dumps({"version": 1, "listeners": [{**listener, "http": http}]}))
        return [(lvl, msg) for lvl, msg in core.take_logs() if lvl == "error"]
    finally:
        core.close()


def test_the_core_takes_the_section_as_it_is() -> None:
    cfg, _, view = _setup()
    snap: Any = SimpleNamespace(access_log=None)
    assert _apply(outbound_http.spec(cfg, snap, [view])) == []
    # peak_ewma, a policy of meshgw.yaml only (Consul's resolver has none), reaches the core too.
    cfg, _, view = _setup("peak_ewma")
    out = outbound_http.spec(cfg, snap, [view])
    assert out["clusters"]["api"]["lb"]["policy"] == "peak_ewma"
    assert _apply(out) == []
    # A section the core cannot use is refused with one line naming the listener.
    errors = _apply({"chains": [{"name": "x", "routes": [{"name": "default", "splits": [{"cluster": "nope"}]}]}]})
    assert len(errors) == 1 and "upstream:api" in errors[0][1] and "no cluster" in errors[0][1]
