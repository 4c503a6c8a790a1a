"""Gateways with Consul as the control plane: two federated datacenters (a Consul double each, forwarding
``?dc=`` requests to the other as WAN-federated servers do), mesh gateways registered with their lan/wan
addresses, and a sidecar in dc1 reaching a service in dc2 through them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
import requests
import yaml
from doubles.consul import ConsulDoubleThread
from mesh import Sidecar, echo_app, echo_roundtrip, free_port, refused, wait_for

from connect.ca import BuiltinCA

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def federation() -> Iterator[tuple[ConsulDoubleThread, ConsulDoubleThread]]:
    with ConsulDoubleThread(datacenter="dc1") as dc1, ConsulDoubleThread(datacenter="dc2") as dc2:
        dc1.join_wan(dc2)
        yield dc1, dc2


def test_federated_doubles_answer_for_each_other_through_py_consul(
    federation: tuple[ConsulDoubleThread, ConsulDoubleThread],
) -> None:
    dc1, dc2 = federation
    c2 = consul.Consul(host=dc2.host, port=dc2.port)
    c2.agent.service.register("api", service_id="api-1", port=8080, address="10.0.2.5")
    c1 = consul.Consul(host=dc1.host, port=dc1.port)
    assert c1.catalog.datacenters() == ["dc1", "dc2"]
    index, nodes = c1.health.service("api", dc="dc2")
    assert [n["Service"]["ID"] for n in nodes] == ["api-1"] and int(index) > 0
    assert c1.health.service("api")[1] == []  # not in dc1
    # A blocking query on the other datacenter blocks there and wakes on its change.
    assert c1.health.service("api", dc="dc2", index=index, wait="100ms")[0] == index
    with pytest.raises(consul.base.ConsulException, match="No path to datacenter"):
        c1.health.service("api", dc="dc9")


class Federation:
    def __init__(self, root: Path, dcs: dict[str, ConsulDoubleThread]):
        self.root = root
        self.dcs = dcs
        BuiltinCA.init(root / "ca", "test.consul")
        self.procs: list[Sidecar] = []

    def run(self, name: str, dc: str, **cfg: Any) -> Sidecar:
        admin = free_port()
        base: dict[str, Any] = {
            "datacenter": dc,
            "control_plane": {"type": "consul", "consul": {"address": self.dcs[dc].address, "wait": "10s"}},
            "certificates": {"type": "builtin", "builtin": {"dir": "ca", "leaf_ttl": "1h"}},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "drain_timeout": "5s",
        }
        base.update(cfg)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base, sort_keys=False))
        sc = Sidecar(None, name, path, admin, self.root / f"{name}.log")  # type: ignore[arg-type]
        self.procs.append(sc)
        return sc.start()

    def gateway(self, dc: str) -> tuple[Sidecar, int]:
        port = free_port()
        gw = self.run(
            f"mgw-{dc}",
            dc,
            mode="mesh-gateway",
            service={"name": "mesh-gateway", "id": f"mesh-gateway-{dc}"},
            gateway={"bind": f"127.0.0.1:{port}", "wan_address": f"127.0.0.1:{port}"},
        )
        return gw, port

    def close(self) -> None:
        for sc in self.procs:
            sc.stop()


@pytest.mark.parametrize("mode_from", ["meshgw.yaml", "proxy-defaults"])
def test_sidecar_reaches_another_datacenter_through_mesh_gateways(
    tmp_path: Path, federation: tuple[ConsulDoubleThread, ConsulDoubleThread], mode_from: str
) -> None:
    """The mode comes from web's YAML, or from `consul config write` of proxy-defaults (the last layer)."""
    dc1, dc2 = federation
    if mode_from == "proxy-defaults":
        _config_write(dc1.url, {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}})
    fed = Federation(tmp_path, {"dc1": dc1, "dc2": dc2})
    try:
        # `consul intention create web api`, sent to dc2 (intentions live with the destination).
        _allow(dc2.url, "web", "api")
        with echo_app(b"api@dc2:") as app:
            fed.run(
                "api",
                "dc2",
                service={"name": "api", "port": app.port},
                inbound={"bind": f"127.0.0.1:{free_port()}"},
            )
            gw1, gw1_port = fed.gateway("dc1")
            gw2, _ = fed.gateway("dc2")
            up = free_port()
            fed.run(
                "web",
                "dc1",
                service={"name": "web", "port": free_port()},
                inbound={"bind": f"127.0.0.1:{free_port()}"},
                upstreams=[{"service": "api", "bind": f"127.0.0.1:{up}", "datacenter": "dc2"}],
                **({"mesh_gateway": {"mode": "local"}} if mode_from == "meshgw.yaml" else {}),
            )

            # The gateways registered as Consul expects a mesh gateway (consul.md §3.3).
            c1 = consul.Consul(host=dc1.host, port=dc1.port)
            _, nodes = c1.health.service("mesh-gateway", dc="dc1")
            (svc,) = [n["Service"] for n in nodes]
            assert svc["Kind"] == "mesh-gateway" and svc["ID"] == "mesh-gateway-dc1" and svc["Port"] == gw1_port
            assert svc["TaggedAddresses"]["wan"] == {"Address": "127.0.0.1", "Port": gw1_port}

            wait_for(lambda: _answer(up) == b"api@dc2:hi", 20, "web -> gw1 -> gw2 -> api")
            assert gw1.metric("meshgw_gateway_connections_routed_total", route="remote") >= 1
            assert gw2.metric("meshgw_gateway_connections_routed_total", route="local") >= 1
            # dc2's gateway learnt api's sidecar from its own catalog, dc1's learnt dc2's gateway over the WAN.
            routes2 = yaml.safe_load(gw2.admin("/config")[1])
            assert routes2 is not None
    finally:
        fed.close()


def _allow(consul_url: str, source: str, destination: str) -> None:
    """What `consul intention create SOURCE DESTINATION` sends (intentions live with the destination's dc)."""
    r = requests.put(
        f"{consul_url}/v1/connect/intentions/exact",
        params={"source": source, "destination": destination},
        json={"SourceType": "consul", "Action": "allow"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def _config_write(consul_url: str, entry: dict[str, Any]) -> None:
    """What `consul config write entry.json` sends."""
    r = requests.put(f"{consul_url}/v1/config", json=entry, timeout=10)
    assert r.status_code == 200 and r.json() is True, r.text


def test_ingress_gateway_takes_its_listeners_from_consul(
    tmp_path: Path, federation: tuple[ConsulDoubleThread, ConsulDoubleThread]
) -> None:
    dc1, _ = federation
    fed = Federation(tmp_path, {"dc1": dc1})
    try:
        _allow(dc1.url, "ingress-gateway", "web")
        with echo_app(b"web:") as app:
            inbound = {"bind": f"127.0.0.1:{free_port()}"}
            fed.run("web", "dc1", service={"name": "web", "port": app.port}, inbound=inbound)
            # No listeners in the file: they come from the ingress-gateway entry (none written yet).
            gw = fed.run(
                "ingress",
                "dc1",
                mode="ingress-gateway",
                service={"name": "ingress-gateway", "address": "127.0.0.1", "port": free_port()},
            )
            _, nodes = consul.Consul(host=dc1.host, port=dc1.port).health.service("ingress-gateway")
            assert [n["Service"]["Kind"] for n in nodes] == ["ingress-gateway"]

            first, second = free_port(), free_port()
            entry = {
                "Kind": "ingress-gateway",
                "Name": "ingress-gateway",
                "Listeners": [{"Port": first, "Protocol": "tcp", "Services": [{"Name": "web"}]}],
            }
            _config_write(dc1.url, entry)
            wait_for(lambda: _answer(first) == b"web:hi", 10, "listener from the entry")

            # The operator moves the listener: the old port closes, the new one serves.
            entry["Listeners"][0]["Port"] = second
            _config_write(dc1.url, entry)
            wait_for(lambda: _answer(second) == b"web:hi", 10, "moved listener")
            wait_for(lambda: _answer(first) is None, 10, "old listener closed")

            # An entry meshgw cannot serve (a wildcard service) is said in one line; the listener stays.
            bad = {**entry, "Listeners": [{"Port": first, "Protocol": "http", "Services": [{"Name": "*"}]}]}
            _config_write(dc1.url, bad)
            wait_for(lambda: "wildcard service is not supported" in gw.log_text(), 10, "bad entry reported")
            assert _answer(second) == b"web:hi"
            assert "Traceback" not in gw.log_text()

            # A SIGHUP reload of the file (which has no listeners) keeps Consul's.
            _config_write(dc1.url, entry)
            gw.signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in gw.log_text(), 10, "reload")
            assert _answer(second) == b"web:hi"
    finally:
        fed.close()


def _answer(port: int) -> bytes | None:
    try:
        return echo_roundtrip(port, b"hi", timeout=3)
    except OSError:
        return None


def test_terminating_gateway_takes_its_services_from_consul(
    tmp_path: Path, federation: tuple[ConsulDoubleThread, ConsulDoubleThread]
) -> None:
    """`consul config write` of a terminating-gateway entry links billing (an external service registered in
    Consul) to the gateway; the gateway gets billing's leaf, finds its instance, and applies Consul's intentions.
    web's sidecar uses a local catalog here (the double does not list a terminating gateway under its linked
    services' connect endpoints)."""
    dc1, _ = federation
    fed = Federation(tmp_path, {"dc1": dc1})
    try:
        with echo_app(b"billing:") as billing:
            consul.Consul(host=dc1.host, port=dc1.port).agent.service.register(
                "billing", service_id="billing-1", address="127.0.0.1", port=billing.port
            )
            _allow(dc1.url, "web", "billing")
            tgw_port = free_port()
            tgw = fed.run(
                "tgw",
                "dc1",
                mode="terminating-gateway",
                service={"name": "terminating-gateway"},
                gateway={"bind": f"127.0.0.1:{tgw_port}"},
            )
            (tmp_path / "catalog.yaml").write_text(
                yaml.safe_dump({"services": {"billing": [{"address": "127.0.0.1", "port": tgw_port}]}})
            )
            (tmp_path / "intentions.yaml").write_text("[]\n")
            up = free_port()
            fed.run(
                "web",
                "dc1",
                service={"name": "web", "port": free_port()},
                upstreams=[{"service": "billing", "bind": f"127.0.0.1:{up}"}],
                control_plane={"type": "local", "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"}},
            )
            assert refused(up)  # not linked yet: the gateway has no certificate for billing

            _config_write(dc1.url, {"Kind": "terminating-gateway", "Name": "terminating-gateway",
                                    "Services": [{"Name": "billing"}]})  # fmt: skip
            wait_for(lambda: _answer(up) == b"billing:hi", 10, "linked through the entry")

            _config_write(dc1.url, {"Kind": "terminating-gateway", "Name": "terminating-gateway",
                                    "Services": [{"Name": "*"}]})  # fmt: skip
            wait_for(lambda: "wildcard service is not supported" in tgw.log_text(), 10, "bad entry reported")
            assert _answer(up) == b"billing:hi"
    finally:
        fed.close()


def test_terminating_gateway_with_consul_certificates(
    tmp_path: Path, federation: tuple[ConsulDoubleThread, ConsulDoubleThread]
) -> None:
    """Everything from Consul: the gateway's leaf for billing from /v1/agent/connect/ca/leaf/billing, web's
    sidecar finding billing (a Connect-native registration at the gateway's address) and checking that leaf."""
    dc1, _ = federation
    fed = Federation(tmp_path, {"dc1": dc1})
    certs = {"type": "consul"}
    try:
        with echo_app(b"billing:") as billing:
            _allow(dc1.url, "web", "billing")
            tgw_port = free_port()
            tgw = fed.run(
                "tgw",
                "dc1",
                mode="terminating-gateway",
                service={"name": "terminating-gateway"},
                gateway={"bind": f"127.0.0.1:{tgw_port}"},
                services=[{"name": "billing", "address": f"127.0.0.1:{billing.port}"}],
                certificates=certs,
            )
            # What `consul services register` sends for a Connect-native billing at the gateway's address.
            r = requests.put(
                f"{dc1.url}/v1/agent/service/register",
                json={"ID": "billing-at-tgw", "Name": "billing", "Address": "127.0.0.1", "Port": tgw_port,
                      "Connect": {"Native": True}},
                timeout=10,
            )  # fmt: skip
            assert r.status_code == 200, r.text
            up = free_port()
            fed.run(
                "web",
                "dc1",
                service={"name": "web", "port": free_port()},
                inbound={"bind": f"127.0.0.1:{free_port()}"},
                upstreams=[{"service": "billing", "bind": f"127.0.0.1:{up}"}],
                certificates=certs,
            )
            wait_for(lambda: _answer(up) == b"billing:hi", 15, "web -> terminating gateway -> billing")
            assert "leaf certificate from consul: spiffe://" in tgw.log_text()
            assert "/svc/billing serial" in tgw.log_text()
    finally:
        fed.close()
