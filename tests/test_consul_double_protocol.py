"""The Consul double's protocol facts, driven by py-consul: service-defaults / proxy-defaults as stored, the agent's
merged Proxy.Config and /v1/discovery-chain (http2-grpc.md §1.1, §1.2, §1.4, §1.5)."""

from __future__ import annotations

from collections.abc import Iterator

import consul
import pytest
import requests
from consul.exceptions import ConsulException
from doubles.consul import ConsulDoubleThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def c() -> Iterator[consul.Consul]:
    with ConsulDoubleThread() as d:
        yield consul.Consul(host="127.0.0.1", port=d.port)


def register_sidecar(c: consul.Consul, config: dict[str, str] | None = None) -> None:
    proxy: dict[str, object] = {"DestinationServiceName": "billing", "DestinationServiceID": "billing-1"}
    if config is not None:
        proxy["Config"] = config
    assert c.agent.service.register(
        "billing-sidecar-proxy", service_id="billing-1-sidecar-proxy", port=21000, kind="connect-proxy", proxy=proxy
    )


def agent_protocol(c: consul.Consul) -> str | None:
    svc = c.agent.services()["billing-1-sidecar-proxy"]
    return (svc["Proxy"].get("Config") or {}).get("protocol")


def test_service_defaults_protocol_is_lower_cased_and_proxy_defaults_config_kept_as_written(c: consul.Consul) -> None:
    c.config.set("service-defaults", "billing", {"Protocol": "GRPC"})
    c.config.set("proxy-defaults", "global", {"Config": {"protocol": "HTTP2"}})
    assert c.config.get("service-defaults", "billing")["Protocol"] == "grpc"
    assert c.config.get("proxy-defaults", "global")["Config"]["protocol"] == "HTTP2"


def test_agent_merges_central_protocol_under_the_registrations_own(c: consul.Consul) -> None:
    register_sidecar(c)
    assert agent_protocol(c) is None
    c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    assert agent_protocol(c) == "http"
    c.config.set("service-defaults", "billing", {"Protocol": "grpc"})
    assert agent_protocol(c) == "grpc"
    register_sidecar(c, {"protocol": "http2"})  # the registration's key wins the non-overwriting merge
    assert agent_protocol(c) == "http2"
    # The one-service endpoint meshgw's spec names for this (http2-grpc.md §1.5) answers the same.
    body = requests.get(f"{c.http.base_uri}/v1/agent/service/billing-1-sidecar-proxy", timeout=10).json()
    assert body["Proxy"]["Config"]["protocol"] == "http2"


def test_discovery_chain_protocol_follows_service_defaults_then_proxy_defaults(c: consul.Consul) -> None:
    assert c.discovery_chain.get("ledger")["Chain"]["Protocol"] == "tcp"
    c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    chain = c.discovery_chain.get("ledger")["Chain"]
    assert (chain["ServiceName"], chain["Protocol"]) == ("ledger", "http")
    c.config.set("service-defaults", "ledger", {"Protocol": "gRPC"})
    assert c.discovery_chain.get("ledger")["Chain"]["Protocol"] == "grpc"
    # An entry without Protocol masks proxy-defaults' (hashicorp/consul#11457).
    c.config.set("service-defaults", "ledger", {"MeshGateway": {"Mode": "local"}})
    assert c.discovery_chain.get("ledger")["Chain"]["Protocol"] == "tcp"
    assert c.discovery_chain.get("ledger", override_protocol="grpc")["Chain"]["Protocol"] == "grpc"


def test_discovery_chain_refuses_a_router_on_a_tcp_chain(c: consul.Consul) -> None:
    c.config.set("service-router", "ledger", {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/v2"}}}]})
    with pytest.raises(ConsulException, match="does not permit advanced routing"):
        c.discovery_chain.get("ledger")
    c.config.set("service-defaults", "ledger", {"Protocol": "http2"})
    assert c.discovery_chain.get("ledger")["Chain"]["Protocol"] == "http2"
