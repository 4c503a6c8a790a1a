"""The Consul double, driven by py-consul itself (sync client against ConsulDoubleThread, consul.aio once).

What real Consul answers (../shared/spec/consul.md) is what py-consul expects: these tests pin the double to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import consul
import consul.aio
import pytest
import requests
from consul.exceptions import BadRequest, ClientError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from doubles.consul import ConsulDouble, ConsulDoubleThread
from doubles.consul_state import parse_duration

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # py-consul 1.8 lets CONSUL_HTTP_TOKEN override token= (consul.md §0 trap 9).
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def double() -> Iterator[ConsulDoubleThread]:
    with ConsulDoubleThread() as d:
        yield d


def client(d: ConsulDoubleThread, token: str | None = None) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=d.port, token=token)


def register_web(c: consul.Consul, ttl: str = "10s") -> None:
    assert c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=8080)
    assert c.agent.service.register(
        "web-sidecar-proxy",
        service_id="web-1-sidecar-proxy",
        port=21000,
        kind="connect-proxy",
        proxy={"DestinationServiceName": "web", "DestinationServiceID": "web-1", "LocalServicePort": 8080},
        check=consul.Check.ttl(ttl),
        replace_existing_checks=True,
    )


# ---------------------------------------------------------------------- registration and health


def test_connect_proxy_found_by_health_connect_after_ttl_pass(double: ConsulDoubleThread) -> None:
    c = client(double)
    register_web(c)
    index, nodes = c.health.connect("web", passing=True)
    assert nodes == [] and int(index) > 0  # new checks start critical
    assert c.agent.check.ttl_pass("service:web-1-sidecar-proxy", notes="ready")
    index2, nodes = c.health.connect("web", passing=True)
    assert int(index2) > int(index)
    [entry] = nodes
    svc = entry["Service"]
    assert svc["Kind"] == "connect-proxy" and svc["ID"] == "web-1-sidecar-proxy" and svc["Port"] == 21000
    assert svc["Proxy"]["DestinationServiceName"] == "web" and svc["Proxy"]["MeshGateway"] == {}
    assert svc["Weights"] == {"Passing": 1, "Warning": 1} and svc["Tags"] == []
    assert entry["Node"]["Datacenter"] == "dc1" and entry["Node"]["Address"] == "127.0.0.1"
    checks = {ch["CheckID"]: ch for ch in entry["Checks"]}
    assert checks["serfHealth"]["Status"] == "passing"
    assert checks["service:web-1-sidecar-proxy"]["Output"] == "ready"
    # health/service finds the app itself, not the proxy; its lone check-less entry only has the node check
    _, app = c.health.service("web")
    assert [e["Service"]["ID"] for e in app] == ["web-1"]
    # warning is dropped by ?passing too
    double.set_check_status("web-1-sidecar-proxy", "warning")
    assert c.health.connect("web", passing=True)[1] == []
    assert len(c.health.connect("web")[1]) == 1


def test_passing_parameter_forms(double: ConsulDoubleThread) -> None:
    c = client(double)
    register_web(c)
    double.set_check_status("service:web-1-sidecar-proxy", "passing")
    base = f"{double.url}/v1/health/connect/web"
    assert len(requests.get(base + "?passing").json()) == 1
    assert len(requests.get(base + "?passing=false").json()) == 1
    r = requests.get(base + "?passing=yes")
    assert (r.status_code, r.text) == (400, "Invalid value for ?passing")
    assert r.headers["Content-Type"].startswith("text/plain")
    r = requests.get(base + "?index=abc")
    assert (r.status_code, r.text) == (400, "Invalid index")
    with pytest.raises(BadRequest):
        c.health.connect("web", index="1", wait="soon")


def test_meshgw_registration_body_and_check_update(double: ConsulDoubleThread) -> None:
    """The PascalCase body connect/consul.py sends, then PUT /v1/agent/check/update as it refreshes its TTL."""
    body = {
        "Kind": "connect-proxy", "ID": "api-1-sidecar-proxy", "Name": "api-sidecar-proxy", "Port": 21001,
        "Proxy": {
            "DestinationServiceName": "api", "DestinationServiceID": "api-1", "LocalServiceAddress": "127.0.0.1",
            "LocalServicePort": 9090, "Config": {"protocol": "http"},
            "Upstreams": [{"DestinationType": "service", "DestinationName": "db", "Datacenter": "",
                           "LocalBindAddress": "127.0.0.1", "LocalBindPort": 9191, "Config": {"protocol": "tcp"}}],
        },
        "Meta": {"meshgw": "sidecar"},
        "Checks": [{"CheckID": "service:api-1-sidecar-proxy", "Name": "meshgw sidecar ready", "TTL": "15s",
                    "Notes": "n", "Status": "critical"}],
    }  # fmt: skip
    url = double.url
    r = requests.put(f"{url}/v1/agent/service/register", params={"replace-existing-checks": "true"}, json=body)
    assert (r.status_code, r.text) == (200, "")
    r = requests.put(
        f"{url}/v1/agent/check/update/service:api-1-sidecar-proxy", json={"Status": "passing", "Output": "ok"}
    )
    assert (r.status_code, r.text) == (200, "")
    _, [entry] = client(double).health.connect("api", passing=True)
    up = entry["Service"]["Proxy"]["Upstreams"][0]
    assert up["DestinationName"] == "db" and up["LocalBindPort"] == 9191 and "Datacenter" not in up
    assert entry["Service"]["Proxy"]["Config"] == {"protocol": "http"}
    r = requests.put(f"{url}/v1/agent/check/update/service:api-1-sidecar-proxy", json={"Status": "bogus"})
    assert (r.status_code, r.text) == (400, "Invalid check status: 'bogus'")
    r = requests.put(f"{url}/v1/agent/check/update/nope", json={"Status": "passing"})
    assert r.status_code == 404 and r.text.startswith('Unknown check ID "nope"')
    r = requests.put(f"{url}/v1/agent/service/register", json={**body, "Address": "0.0.0.0"})
    assert (r.status_code, r.text) == (400, "Invalid service address")
    r = requests.put(f"{url}/v1/agent/service/register", json={"Kind": "connect-proxy", "Name": "x", "Port": 1})
    assert r.status_code == 400 and "DestinationServiceName must be non-empty" in r.text
    assert requests.put(f"{url}/v1/agent/service/deregister/api-1-sidecar-proxy").status_code == 200
    r = requests.put(f"{url}/v1/agent/service/deregister/api-1-sidecar-proxy")
    assert (r.status_code, r.text) == (404, 'Unknown service ID "api-1-sidecar-proxy"')


def test_sidecar_service_expansion(double: ConsulDoubleThread) -> None:
    c = client(double)
    assert c.agent.service.register("db", service_id="db-1", port=5432, connect={"sidecar_service": {}})
    services = c.agent.services()
    side = services["db-1-sidecar-proxy"]
    assert side["Kind"] == "connect-proxy" and side["Service"] == "db-sidecar-proxy" and side["Port"] == 21000
    assert side["Proxy"]["DestinationServiceID"] == "db-1" and side["Proxy"]["LocalServicePort"] == 5432
    names = sorted(ch["Name"] for ch in c.agent.checks().values() if ch["ServiceID"] == "db-1-sidecar-proxy")
    assert names == ["Connect Sidecar Aliasing db-1", "Connect Sidecar Listening"]
    assert c.agent.service.deregister("db-1")
    assert c.agent.services() == {}


def test_ttl_check_goes_critical_when_not_refreshed(double: ConsulDoubleThread) -> None:
    c = client(double)
    register_web(c, ttl="300ms")
    c.agent.check.ttl_pass("service:web-1-sidecar-proxy", notes="fine")
    assert len(c.health.connect("web", passing=True)[1]) == 1
    time.sleep(0.6)
    assert c.health.connect("web", passing=True)[1] == []
    check = c.agent.checks()["service:web-1-sidecar-proxy"]
    assert check["Status"] == "critical" and check["Output"].startswith("TTL expired")


# ---------------------------------------------------------------------- blocking queries


def test_blocking_query_waits_then_returns_on_change(double: ConsulDoubleThread) -> None:
    c = client(double)
    register_web(c)
    index, _ = c.health.connect("web")
    t0 = time.monotonic()
    index2, _ = c.health.connect("web", index=index, wait="1s")
    took = time.monotonic() - t0
    assert index2 == index and 0.95 <= took < 1.0 + 1 / 16 + 0.5

    timer = threading.Timer(0.3, double.set_check_status, ("web-1-sidecar-proxy", "passing"))
    timer.start()
    t0 = time.monotonic()
    index3, nodes = c.health.connect("web", index=index, wait="5s", passing=True)
    took = time.monotonic() - t0
    timer.join()
    assert 0.25 <= took < 2 and int(index3) > int(index) and len(nodes) == 1

    # config entries block the same way on their own table
    ci, _ = c.config.list("service-intentions"), None
    r0 = requests.get(f"{double.url}/v1/config/service-intentions")
    cidx = r0.headers["X-Consul-Index"]
    assert ci == [] and r0.headers["X-Consul-KnownLeader"] == "true" and "X-Consul-LastContact" in r0.headers
    threading.Timer(0.3, c.connect.intentions.upsert, ("web", "db"), {"action": "allow"}).start()
    t0 = time.monotonic()
    r = requests.get(f"{double.url}/v1/config/service-intentions", params={"index": cidx, "wait": "5s"})
    assert time.monotonic() - t0 < 2 and int(r.headers["X-Consul-Index"]) > int(cidx)
    assert r.json()[0]["Sources"][0]["Name"] == "web"


# ---------------------------------------------------------------------- Connect CA


def test_leaf_and_roots_fields(double: ConsulDoubleThread) -> None:
    c = client(double)
    roots = c.agent.connect.ca.roots()
    assert roots["TrustDomain"] == double.trust_domain and double.trust_domain.endswith(".consul")
    [root] = roots["Roots"]
    assert root["Active"] is True and root["ID"] == roots["ActiveRootID"]
    assert isinstance(root["SerialNumber"], int) and root["IntermediateCerts"] is None
    assert root["NotAfter"].endswith("Z") and root["PrivateKeyType"] == "ec"
    leaf = c.agent.connect.ca.leaf("web")
    assert isinstance(leaf["SerialNumber"], str) and ":" in leaf["SerialNumber"]
    uri = f"spiffe://{double.trust_domain}/ns/default/dc/dc1/svc/web"
    assert leaf["ServiceURI"] == uri and leaf["Service"] == "web"
    assert leaf["ValidAfter"].endswith("Z") and leaf["ValidBefore"] > leaf["ValidAfter"]
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    root_cert = x509.load_pem_x509_certificate(root["RootCert"].encode())
    cert.verify_directly_issued_by(root_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert ":".join(f"{b:02x}" for b in cert.serial_number.to_bytes(8, "big")).lstrip("0:") in leaf["SerialNumber"]
    assert c.agent.connect.ca.leaf("web")["SerialNumber"] == leaf["SerialNumber"]  # cached until renewal
    r = requests.get(f"{double.url}/v1/agent/connect/ca/leaf/web")
    assert r.headers["X-Cache"] == "HIT" and int(r.headers["X-Consul-Index"]) == leaf["ModifyIndex"]
    assert c.connect.ca.roots()["ActiveRootID"] == root["ID"]


def test_rotate_ca_cross_signs_and_reissues_leaves(double: ConsulDoubleThread) -> None:
    c = client(double)
    old_leaf = c.agent.connect.ca.leaf("web")
    r = requests.get(f"{double.url}/v1/agent/connect/ca/roots")
    roots_index = r.headers["X-Consul-Index"]
    threading.Timer(0.3, double.rotate_ca).start()
    t0 = time.monotonic()
    r = requests.get(
        f"{double.url}/v1/agent/connect/ca/leaf/web", params={"index": old_leaf["ModifyIndex"], "wait": "5s"}
    )
    assert time.monotonic() - t0 < 2
    new_leaf = r.json()
    assert new_leaf["ModifyIndex"] > old_leaf["ModifyIndex"] and new_leaf["SerialNumber"] != old_leaf["SerialNumber"]
    r = requests.get(f"{double.url}/v1/agent/connect/ca/roots", params={"index": roots_index, "wait": "1s"})
    roots = r.json()
    old, new = roots["Roots"]
    assert (old["Active"], new["Active"]) == (False, True) and roots["ActiveRootID"] == new["ID"]
    old_root = x509.load_pem_x509_certificate(old["RootCert"].encode())
    new_root = x509.load_pem_x509_certificate(new["RootCert"].encode())
    cross = x509.load_pem_x509_certificate(new["IntermediateCerts"][0].encode())
    cross.verify_directly_issued_by(old_root)  # new key, signed by the old root
    assert isinstance(cross.public_key(), ec.EllipticCurvePublicKey)
    assert cross.public_key().public_numbers() == new_root.public_key().public_numbers()
    chain = x509.load_pem_x509_certificates(new_leaf["CertPEM"].encode())
    assert len(chain) == 2
    chain[0].verify_directly_issued_by(new_root)
    chain[0].verify_directly_issued_by(chain[1])


# ---------------------------------------------------------------------- authorize and intentions


def test_authorize_is_post_only(double: ConsulDoubleThread) -> None:
    c = client(double)
    with pytest.raises(ClientError, match=r"^405 method PUT not allowed"):
        c.agent.connect.authorize("db", f"spiffe://{double.trust_domain}/ns/default/dc/dc1/svc/web", "aa:bb")
    url = f"{double.url}/v1/agent/connect/authorize"
    assert requests.put(url, json={}).headers["Allow"] == "OPTIONS,POST"
    uri = f"spiffe://{double.trust_domain}/ns/default/dc/dc1/svc/web"
    body = requests.post(url, json={"Target": "db", "ClientCertURI": uri, "ClientCertSerial": "aa"}).json()
    assert body == {"Authorized": True, "Reason": "Default behavior configured by ACLs"}
    c.connect.intentions.upsert("web", "db", action="deny")
    body = requests.post(url, json={"Target": "db", "ClientCertURI": uri}).json()
    assert body["Authorized"] is False and body["Reason"].startswith(
        "Matched L4 intention: DENY default/web => default/db"
    )
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]
    c.connect.intentions.upsert("web", "db", permissions=perms)
    body = requests.post(url, json={"Target": "db", "ClientCertURI": uri}).json()
    assert body["Authorized"] is False and body["Reason"].startswith("Matched L7 intention")
    r = requests.post(
        url, json={"Target": "db", "ClientCertURI": f"spiffe://{double.trust_domain}/agent/client/dc/dc1/id/x"}
    )
    assert (r.status_code, r.text) == (400, "ClientCertURI not a valid Service identifier")
    r = requests.post(url, json={"ClientCertURI": uri})
    assert (r.status_code, r.text) == (400, "Target service must be specified")


def test_intentions_exact_api_as_the_cli_uses_it(double: ConsulDoubleThread) -> None:
    c = client(double)
    assert c.connect.intentions.check("web", "db") is True  # no ACLs: default allow
    assert c.connect.intentions.upsert("web", "db", action="deny", description="no")
    ix = c.connect.intentions.read("web", "db")
    assert ix["Action"] == "deny" and ix["Precedence"] == 9 and ix["SourceName"] == "web" and ix["Description"] == "no"
    assert c.connect.intentions.check("web", "db") is False
    assert c.connect.intentions.check("api", "db") is True
    assert c.connect.intentions.upsert("*", "db", action="allow")
    # stored in db's service-intentions entry, sources sorted by precedence
    entry = c.config.get("service-intentions", "db")
    assert [(s["Name"], s["Action"], s["Precedence"]) for s in entry["Sources"]] == [
        ("web", "deny", 9),
        ("*", "allow", 8),
    ]
    assert [i["SourceName"] for i in c.connect.intentions.list()] == ["web", "*"]
    assert list(c.connect.intentions.match("destination", "db")) == ["db"]
    # L7 intentions count as deny at /check
    c.connect.intentions.upsert(
        "api", "db", permissions=[{"Action": "allow", "HTTP": {"PathPrefix": "/v1", "Methods": ["get"]}}]
    )
    assert c.connect.intentions.check("api", "db") is False
    assert c.config.get("service-intentions", "db")["Sources"][1]["Permissions"][0]["HTTP"]["Methods"] == ["GET"]
    assert c.connect.intentions.delete("web", "db")
    assert c.connect.intentions.read("web", "db") is None  # 404
    assert c.connect.intentions.check("web", "db") is True  # now "*" allows
    r = requests.get(f"{double.url}/v1/connect/intentions/exact", params={"destination": "db"})
    assert (r.status_code, r.text) == (500, "required query parameter 'source' not set")
    with pytest.raises(consul.ConsulException, match=r"^500 "):
        c.connect.intentions.upsert("web", "db", action="maybe")
    c.connect.intentions.delete("*", "db")
    c.connect.intentions.delete("api", "db")
    assert c.config.list("service-intentions") == []  # the last source gone, the entry goes too


def test_config_entries(double: ConsulDoubleThread) -> None:
    c = client(double)
    entry = {"Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]}
    assert c.config.set("service-intentions", "db", entry) is True
    got = c.config.get("service-intentions", "db")
    assert got["Kind"] == "service-intentions" and got["CreateIndex"] == got["ModifyIndex"] > 0
    assert got["Sources"][0] == {"Name": "web", "Action": "allow", "Precedence": 9, "Type": "consul"}
    assert c.config.set("service-intentions", "db", entry, cas=got["ModifyIndex"] + 100) is False
    assert c.config.set("service-intentions", "db", entry, cas=got["ModifyIndex"]) is True
    assert [e["Name"] for e in c.config.list("service-intentions")] == ["db"]
    assert c.config.get("service-intentions", "nope") is None
    r = requests.get(f"{double.url}/v1/config/service-intentions/nope")
    assert (r.status_code, r.text) == (404, 'Config entry not found for "service-intentions" / "nope"')
    with pytest.raises(consul.ConsulException, match="more than once"):
        c.config.set("service-intentions", "db", {"Sources": [{"Name": "a", "Action": "allow"}] * 2})
    with pytest.raises(BadRequest, match="invalid config entry kind"):
        c.config.set("nonsense", "x", {})
    assert c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    assert c.config.delete("service-intentions", "db") is True
    assert c.config.list("service-intentions") == []


def test_acl_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with ConsulDoubleThread(acl_token="s3cret") as d:
        good, anon = client(d, token="s3cret"), client(d)
        assert good.agent.service.register("web", port=80) is True
        assert good.config.list("service-intentions") == []
        with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
            anon.agent.services()
        with pytest.raises(consul.ACLPermissionDenied):
            client(d, token="wrong").health.service("web")
        assert anon.agent.connect.ca.roots()["TrustDomain"] == d.trust_domain  # roots need no token
        assert requests.get(f"{d.url}/v1/agent/services", headers={"Authorization": "Bearer s3cret"}).ok
        assert requests.get(f"{d.url}/v1/agent/services", params={"token": "s3cret"}).ok
        assert good.connect.intentions.check("web", "db") is False  # ACLs on: default deny
        assert ("GET", "/v1/agent/services", {}, None) in d.requests
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "s3cret")  # py-consul: the env var beats token=
        assert client(d, token="wrong").agent.services()


def test_kill_and_restart_forget_agent_state(double: ConsulDoubleThread) -> None:
    c = client(double)
    register_web(c)
    c.connect.intentions.upsert("web", "db", action="allow")
    index, _ = c.health.service("web")
    leaf = c.agent.connect.ca.leaf("web")
    port = double.port
    double.kill()
    with pytest.raises(requests.ConnectionError):
        c.agent.services()
    double.restart()
    assert double.port == port
    assert c.agent.services() == {}
    index2, nodes = c.health.service("web")
    assert nodes == [] and int(index2) > int(index)
    r = requests.put(f"{double.url}/v1/agent/check/update/service:web-1-sidecar-proxy", json={"Status": "passing"})
    assert r.status_code == 404  # meshgw re-registers on this
    assert c.connect.intentions.read("web", "db")["Action"] == "allow"  # server state kept
    new_leaf = c.agent.connect.ca.leaf("web")  # the agent's leaf cache is gone: a new leaf, same CA
    assert new_leaf["ModifyIndex"] > leaf["ModifyIndex"] and new_leaf["SerialNumber"] != leaf["SerialNumber"]
    assert len(c.agent.connect.ca.roots()["Roots"]) == 1


def test_aio_client() -> None:
    async def main() -> None:
        async with ConsulDouble() as d:
            c = consul.aio.Consul(host="127.0.0.1", port=d.port)
            try:
                assert await c.agent.service.register(
                    "web-sidecar-proxy", service_id="wsp", port=21000, kind="connect-proxy",
                    proxy={"DestinationServiceName": "web", "LocalServicePort": 8080}, check=consul.Check.ttl("10s"),
                )  # fmt: skip
                index, nodes = await c.health.connect("web", passing=True)
                assert nodes == []
                asyncio.get_running_loop().call_later(0.2, d.set_check_status, "wsp", "passing")
                index2, nodes = await c.health.connect("web", passing=True, index=index, wait="5s")
                assert int(index2) > int(index) and nodes[0]["Service"]["ID"] == "wsp"
                leaf = await c.agent.connect.ca.leaf("web")
                assert leaf["ServiceURI"].endswith("/svc/web")
            finally:
                await c.http.close()

    asyncio.run(main())


def test_go_durations() -> None:
    assert parse_duration("300000ms") == 300.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("0") == 0.0
    for bad in ("", "10", "1x", "s", "1..5s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
