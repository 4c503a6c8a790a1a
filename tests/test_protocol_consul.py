"""meshgw sidecars whose protocols come from Consul (issue #14; http2-grpc.md §1.2, §1.3, §4), against the Consul
double: resolution and re-application as entries change, what the registration carries, L7 intentions on a protocol
Consul resolved."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from doubles.consul import ConsulDoubleThread
from http_app import http_app
from mesh import Sidecar, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def consul() -> Iterator[ConsulDoubleThread]:
    with ConsulDoubleThread() as c:
        yield c


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sc in started:
        sc.stop()


def start(
    root: Path,
    consul: ConsulDoubleThread,
    sidecars: list[Sidecar],
    name: str,
    app_port: int,
    upstreams: dict[str, int] | None = None,
    **service: Any,
) -> Sidecar:
    """A sidecar whose YAML names no protocol: Consul's entries decide."""
    admin = free_port()
    cfg: dict[str, Any] = {
        "service": {"name": name, "port": app_port, **service},
        "inbound": {"bind": f"127.0.0.1:{free_port()}"},
        "control_plane": {
            "type": "consul",
            "consul": {"address": consul.address, "register_service": True, "wait": "10s"},
        },
        "certificates": {"type": "consul"},
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "drain_timeout": "2s",
    }
    if upstreams:
        cfg["upstreams"] = [{"service": s, "bind": f"127.0.0.1:{p}"} for s, p in upstreams.items()]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sc = Sidecar(None, name, path, admin, root / f"{name}.log")  # type: ignore[arg-type]
    sidecars.append(sc)
    sc.start()
    return sc


def running(sc: Sidecar) -> dict[str, Any]:
    status, body = sc.admin("/config")
    assert status == 200, body
    return dict(json.loads(body)["config"])


def put(consul: ConsulDoubleThread, body: dict[str, Any]) -> None:
    r = requests.put(f"{consul.url}/v1/config", json=body, timeout=10)
    assert r.status_code == 200, r.text


def test_protocols_follow_consuls_entries_as_they_change(
    tmp_path: Path, consul: ConsulDoubleThread, sidecars: list[Sidecar]
) -> None:
    billing = start(tmp_path, consul, sidecars, "billing", free_port(), {"ledger": free_port()})
    cfg = running(billing)
    assert (cfg["service"]["protocol"], cfg["upstreams"][0]["protocol"]) == ("tcp", "tcp")

    put(consul, {"Kind": "service-defaults", "Name": "billing", "Protocol": "GRPC"})
    wait_for(lambda: running(billing)["service"]["protocol"] == "grpc", 15, "billing's own protocol from consul")
    assert running(billing)["upstreams"][0]["protocol"] == "tcp"

    # ledger has no service-defaults: its discovery chain takes proxy-defaults' protocol.
    put(consul, {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http2"}})
    wait_for(lambda: running(billing)["upstreams"][0]["protocol"] == "http2", 15, "ledger's chain protocol")
    assert running(billing)["service"]["protocol"] == "grpc"  # service-defaults beats proxy-defaults

    put(consul, {"Kind": "service-defaults", "Name": "ledger", "Protocol": "thrift"})
    wait_for(lambda: running(billing)["upstreams"][0]["protocol"] == "tcp", 15, "an unknown protocol served as tcp")
    wait_for(lambda: "discovery-chain/ledger: protocol 'thrift' is unknown" in billing.log_text(), 10, "warning")

    r = requests.delete(f"{consul.url}/v1/config/service-defaults/billing", timeout=10)
    assert r.status_code == 200, r.text
    wait_for(lambda: running(billing)["service"]["protocol"] == "http2", 15, "back to proxy-defaults")


def test_registration_leaves_protocol_to_consul_and_carries_the_grpc_check(
    tmp_path: Path, consul: ConsulDoubleThread, sidecars: list[Sidecar]
) -> None:
    app_port = free_port()
    check = {"type": "grpc", "grpc_service": "billing.v1.Billing", "interval": "5s", "timeout": "1500ms"}
    put(consul, {"Kind": "service-defaults", "Name": "billing", "Protocol": "grpc"})
    billing = start(tmp_path, consul, sidecars, "billing", app_port, check=check)
    wait_for(lambda: running(billing)["service"]["protocol"] == "grpc", 15, "protocol from service-defaults")
    # The admin port answers (and the protocol resolves) before the registration lands; a loaded CI run saw that gap.
    def registered() -> bool:
        return "billing-sidecar-proxy" in consul.state.services and "service:billing" in consul.state.check_defs

    wait_for(lambda: consul.call(registered), 15, "registration of the proxy and the app's check")

    # What meshgw wrote: no protocol of its own (Consul's central config decides, http2-grpc.md §1.2)...
    stored = consul.call(lambda: json.loads(json.dumps(consul.state.services["billing-sidecar-proxy"])))
    assert "protocol" not in (stored["Proxy"].get("Config") or {})
    # ... and what the agent answers for it: the registration merged with the central defaults.
    merged = requests.get(f"{consul.url}/v1/agent/service/billing-sidecar-proxy", timeout=10).json()
    assert merged["Proxy"]["Config"]["protocol"] == "grpc"

    # The app's check is Consul's GRPC check (consul.md §3.4; http2-grpc.md §4).
    defs = consul.call(lambda: {k: dict(v) for k, v in consul.state.check_defs.items()})
    grpc_check = defs["service:billing"]
    assert grpc_check["GRPC"] == f"127.0.0.1:{app_port}/billing.v1.Billing"
    assert grpc_check["GRPCUseTLS"] is False
    assert (grpc_check["Interval"], grpc_check["Timeout"]) == ("5s", "1500ms")
    assert "TCP" not in grpc_check
    checks = requests.get(f"{consul.url}/v1/agent/checks", timeout=10).json()
    assert checks["service:billing"]["Type"] == "grpc"


def test_l7_intentions_apply_on_a_protocol_consul_resolved(
    tmp_path: Path, consul: ConsulDoubleThread, sidecars: list[Sidecar]
) -> None:
    # Before issue #14 the YAML's default (tcp) won over Consul's http, and every L7 intention acted as deny.
    consul.call(setattr, consul.state, "default_allow", False)
    put(consul, {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    put(
        consul,
        {
            "Kind": "service-intentions",
            "Name": "api",
            "Sources": [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/ok"}}]}],
        },
    )
    with http_app("api") as app:
        start(tmp_path, consul, sidecars, "api", app.port)
        up = free_port()
        web = start(tmp_path, consul, sidecars, "web", free_port(), {"api": up})
        assert running(web)["upstreams"][0]["protocol"] == "http"  # api's discovery chain

        def status(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
            try:
                conn.request("GET", path)
                return conn.getresponse().status
            except OSError:
                return 0
            finally:
                conn.close()

        wait_for(lambda: status("/ok") == 200, 15, "an allowed path through an L7 intention")
        assert status("/other") == 403
