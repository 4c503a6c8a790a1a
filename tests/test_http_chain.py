"""Discovery-chain entries and their compilation, as pure functions: parsing, bexpr filters, routes, splits."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import Config, MeshGatewayModeConfig, ServiceConfig, UpstreamConfig, parse_address
from gateway.http.entries import EntryError, HeaderMods, compile_filter, go_duration, parse_entries, parse_entry
from gateway.http.routing import BalancerCache, compile_chain, render_rules
from gateway.snapshot import Endpoint, gateway_mode


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0), ("0", 0.0), (2_000_000_000, 2.0)],
)
def test_go_durations(text: object, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", "1x", "s", "", True])
def test_bad_go_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        go_duration(bad)


DOC = {"Service": {"Meta": {"version": "v2", "zone": "a"}, "Tags": ["canary", "blue"], "Port": 8080}, "Node": {}}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("Service.Meta.version == v2", True),
        ('Service.Meta.version == "v1"', False),
        ("Service.Meta.version != v1", True),
        ("canary in Service.Tags", True),
        ("green not in Service.Tags", True),
        ("Service.Tags contains blue", True),
        ('Service.Meta.zone matches "^a$"', True),
        ("Service.Meta.missing is empty", True),
        ("Service.Tags is not empty", True),
        ("Service.Meta.version == v2 and not (Service.Meta.zone == b)", True),
        ("Service.Meta.version == v1 or Service.Port == 8080", True),
    ],
)
def test_bexpr_filters(expr: str, expected: bool) -> None:
    assert compile_filter(expr)(DOC) is expected


def test_entries_accept_consul_key_styles_and_report_problems_on_one_line_each() -> None:
    a = parse_entry(
        {"Kind": "service-router", "Name": "api", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}, "x"
    )
    b = parse_entry(
        {"kind": "service-router", "name": "api", "routes": [{"match": {"http": {"path_prefix": "/a"}}}]}, "x"
    )
    assert a == b
    with pytest.raises(EntryError) as e:
        parse_entries(
            [
                {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 60}, {"Weight": 30}]},
                {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v9", "LoadBalancer": {"Policy": "x"}},
            ],
            "f.yaml: config_entries",
        )
    assert e.value.problems == [
        "f.yaml: config_entries[0]: service-splitter/api: Splits: weights add up to 90, not 100",
        "f.yaml: config_entries[1]: service-resolver/api: DefaultSubset: 'v9' is not one of the Subsets",
        "f.yaml: config_entries[1]: service-resolver/api: LoadBalancer.Policy: 'x' is not a policy (expected one of: "
        "round_robin, least_request, random, ring_hash, maglev)",
    ]
    # From Consul, fields of a newer version are ignored instead of refused.
    lenient = parse_entry({"Kind": "service-resolver", "Name": "api", "NewThing": 1}, "consul", lenient=True)
    assert lenient.name == "api"


def test_header_rules_order_set_add_remove() -> None:
    split = HeaderMods(set=(("x-a", "split"),), add=(("x-b", "1"),))
    route = HeaderMods(set=(("X-A", "route"),), remove=("x-c",))
    rules = render_rules([split, route])
    assert rules.drop == {b"x-a", b"x-c"} and rules.extra == b"x-b: 1\r\nX-A: route\r\n"


def _up() -> UpstreamConfig:
    return UpstreamConfig(service="api", bind=parse_address("127.0.0.1:1"), protocol="http")


def test_chain_nested_splitters_redirect_and_subset_sni() -> None:
    entries = parse_entries(
        [
            {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "b"}]},
            {
                "Kind": "service-splitter",
                "Name": "b",
                "Splits": [{"Weight": 50, "ServiceSubset": "x"}, {"Weight": 50, "Service": "c"}],
            },
            {"Kind": "service-resolver", "Name": "b", "Subsets": {"x": {"Filter": "Service.Meta.k == x"}}},
            {"Kind": "service-resolver", "Name": "c", "Redirect": {"Service": "d", "Datacenter": "dc2"}},
        ],
        "t",
    )
    cat = {
        "api": (Endpoint("10.0.0.1", 1, "dc1"),),
        "b": (Endpoint("10.0.0.2", 1, "dc1", meta=(("k", "x"),)), Endpoint("10.0.0.3", 1, "dc1")),
        "d": (Endpoint("10.0.0.4", 1, "dc2"),),
    }
    chain = compile_chain(_up(), "dc1", "td.consul", cat, entries, BalancerCache(), "web")
    (route,) = chain.routes
    got = {s.cluster.name: (s.weight, s.cluster.sni, len(s.cluster.endpoints)) for s in route.splits}
    assert got == {
        "api": (50.0, "api.default.dc1.internal.td.consul", 1),
        "x.b": (25.0, "x.b.default.dc1.internal.td.consul", 1),
        "d.dc2": (25.0, "d.default.dc2.internal.td.consul", 1),
    }
    assert not chain.simple


def test_balancers_are_reused_while_endpoints_stay() -> None:
    cache = BalancerCache()
    cat = {"api": (Endpoint("10.0.0.1", 1, "dc1"),)}
    one = compile_chain(_up(), "dc1", "td", cat, (), cache).clusters[0].balancer
    cache.sweep()
    two = compile_chain(_up(), "dc1", "td", cat, (), cache).clusters[0].balancer
    cache.sweep()
    three = compile_chain(_up(), "dc1", "td", {"api": cat["api"] * 2}, (), cache).clusters[0].balancer
    assert one is two and three is not two


def _target(entries: tuple[object, ...], cat: dict[str, tuple[Endpoint, ...]], route: int = -1) -> tuple[str, str]:
    up = UpstreamConfig(service="api", bind=parse_address("127.0.0.1:1"), protocol="http")
    cluster = compile_chain(up, "dc1", "td", cat, entries, BalancerCache(), "web").routes[route].splits[0].cluster
    return cluster.name, cluster.sni


def test_resolver_failover_to_other_datacenters_and_services_in_order() -> None:
    entries = parse_entries(
        [
            {
                "Kind": "service-resolver",
                "Name": "api",
                "Subsets": {"v2": {"Filter": "Service.Meta.version == v2"}},
                "Failover": {
                    "*": {"Datacenters": ["dc2", "dc3"]},
                    "v2": {"Targets": [{"Service": "api-backup"}, {"Datacenter": "dc3"}]},
                },
            }
        ],
        "t",
    )
    ok, down = "passing", "critical"
    cat = {
        "api": (Endpoint("10.1.0.1", 1, "dc1", ok), Endpoint("10.2.0.1", 1, "dc2", ok), Endpoint("10.3.0.1", 1, "dc3")),
        "api-backup": (Endpoint("10.1.0.9", 1, "dc1"),),
    }
    assert _target(entries, cat) == ("api", "api.default.dc1.internal.td")
    # dc1 has no healthy instance: the first failover datacenter with one serves, with its own SNI.
    cat["api"] = (Endpoint("10.1.0.1", 1, "dc1", down), *cat["api"][1:])
    assert _target(entries, cat) == ("api.dc2", "api.default.dc2.internal.td")
    cat["api"] = (cat["api"][0], Endpoint("10.2.0.1", 1, "dc2", down), cat["api"][2])
    assert _target(entries, cat) == ("api.dc3", "api.default.dc3.internal.td")
    cat["api"] = tuple(Endpoint(e.address, 1, e.datacenter, down) for e in cat["api"])
    assert _target(entries, cat) == ("api", "api.default.dc1.internal.td")  # nothing anywhere: the primary
    # A subset's own failover wins over "*": another service first.
    v2 = parse_entries([{"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"ServiceSubset": "v2"}}]}], "t")  # fmt: skip
    assert _target(entries + v2, cat, route=0)[0] == "api-backup"


def test_bad_failover_entries_are_one_line_each() -> None:
    with pytest.raises(EntryError) as e:
        parse_entry(
            {
                "Kind": "service-resolver",
                "Name": "api",
                "Failover": {"v9": {"Datacenters": ["dc2"]}, "*": {"Peer": "other"}},
            },
            "f.yaml",
        )
    text = "\n".join(e.value.problems)
    assert "Failover.v9: 'v9' is not * or one of the Subsets" in text
    assert "Failover.*.Peer: cluster peering is not supported" in text


def test_mesh_gateway_mode_layers() -> None:
    """consul.md §6: upstream, then the proxy (meshgw.yaml), then the service's service-defaults, then
    proxy-defaults/global, else none; Consul's error text for a bad mode."""
    cfg = Config.__new__(Config)
    object.__setattr__(cfg, "service", ServiceConfig("web", "web", "127.0.0.1", 1))
    object.__setattr__(cfg, "mesh_gateway", MeshGatewayModeConfig())
    up = UpstreamConfig(service="api", bind=parse_address("127.0.0.1:1"), datacenter="dc2")
    entries = parse_entries(
        [
            {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "remote"}, "Config": {"x": 1}},
            {"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "local"}},
            {"Kind": "service-defaults", "Name": "other", "MeshGateway": {"Mode": "none"}},
        ],
        "t",
    )
    assert gateway_mode(up, cfg, ()) == "none"
    assert gateway_mode(up, cfg, entries[:1]) == "remote"
    assert gateway_mode(up, cfg, entries) == "local"
    object.__setattr__(cfg, "mesh_gateway", MeshGatewayModeConfig(mode="none"))
    assert gateway_mode(up, cfg, entries) == "none"
    assert gateway_mode(dataclasses.replace(up, mesh_gateway="remote"), cfg, entries) == "remote"
    with pytest.raises(EntryError, match=r'MeshGateway\.Mode: Invalid Mesh Gateway Mode: "sideways"'):
        parse_entry({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "sideways"}}, "t")
