"""meshgw sidecars against the Consul double: registration, discovery, intentions, Connect CA, outages."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from doubles.consul import ConsulDoubleThread
from http_app import http_app
from mesh import Sidecar, echo_app, echo_roundtrip, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


class ConsulMesh:
    def __init__(self, root: Path, consul: ConsulDoubleThread, token: str | None = None):
        self.root = root
        self.consul = consul
        self.token = token
        self.sidecars: list[Sidecar] = []

    def sidecar(
        self,
        name: str,
        app_port: int,
        instance: str | None = None,
        inbound: bool = True,
        upstreams: dict[str, int] | None = None,
        protocol: str = "tcp",
    ) -> Sidecar:
        admin = free_port()
        sid = instance or name
        consul: dict[str, Any] = {"address": self.consul.address, "register_service": True, "wait": "10s"}
        if self.token:
            consul["token"] = self.token
        cfg: dict[str, Any] = {
            "datacenter": "dc1",
            "service": {"name": name, "id": sid, "port": app_port, "protocol": protocol},
            "control_plane": {"type": "consul", "consul": consul},
            "certificates": {"type": "consul"},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "drain_timeout": "5s",
        }
        if inbound:
            cfg["inbound"] = {"bind": f"127.0.0.1:{free_port()}"}
        if upstreams:
            cfg["upstreams"] = [
                {"service": s, "bind": f"127.0.0.1:{p}", "protocol": protocol} for s, p in upstreams.items()
            ]
        path = self.root / f"{sid}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        sc = Sidecar(None, sid, path, admin, self.root / f"{sid}.log")  # type: ignore[arg-type]
        self.sidecars.append(sc)
        sc.start()
        return sc

    def put(self, path: str, body: Any = None, params: dict[str, str] | None = None) -> requests.Response:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        r = requests.put(f"{self.consul.url}{path}", json=body, params=params, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r

    def intention(self, src: str, dst: str, action: str) -> None:
        # Exactly what `consul intention create [-deny] -replace SRC DST` sends (consul.md §7.4).
        self.put(
            "/v1/connect/intentions/exact",
            {"SourceType": "consul", "Action": action},
            {"source": src, "destination": dst},
        )

    def close(self) -> None:
        for sc in self.sidecars:
            sc.stop()


@pytest.fixture
def consul() -> Iterator[ConsulDoubleThread]:
    with ConsulDoubleThread() as c:
        yield c


@pytest.fixture
def cmesh(tmp_path: Path, consul: ConsulDoubleThread) -> Iterator[ConsulMesh]:
    m = ConsulMesh(tmp_path, consul)
    try:
        yield m
    finally:
        m.close()


def refused(port: int) -> bool:
    try:
        return echo_roundtrip(port, b"ping", timeout=5) == b""
    except OSError:
        return True


def test_two_sidecars_discover_each_other_and_talk_mtls(cmesh: ConsulMesh, consul: ConsulDoubleThread) -> None:
    cmesh.intention("web", "api", "allow")
    with echo_app() as app:
        api = cmesh.sidecar("api", app.port)
        up = free_port()
        web = cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: not refused(up), 15, "web -> api through consul discovery")
        assert echo_roundtrip(up, b"x" * 100_000, timeout=10) == b"x" * 100_000
        services = requests.get(f"{consul.url}/v1/agent/services", timeout=5).json()
        proxy = services["api-sidecar-proxy"]
        assert proxy["Kind"] == "connect-proxy" and proxy["Proxy"]["DestinationServiceName"] == "api"
        assert services["web-sidecar-proxy"]["Proxy"]["Upstreams"][0]["DestinationName"] == "api"
        _, cfg = api.admin("/config")
        assert consul.trust_domain in cfg and "PRIVATE KEY" not in cfg
        assert api.metric("meshgw_consul_up") == 1
    web.stop()
    # deregistered on clean exit
    wait_for(lambda: "web-sidecar-proxy" not in requests.get(f"{consul.url}/v1/agent/services").json(), 5, "dereg")


def test_critical_instance_leaves_within_one_watch_round(cmesh: ConsulMesh, consul: ConsulDoubleThread) -> None:
    cmesh.intention("web", "api", "allow")
    with echo_app(b"A:") as a, echo_app(b"B:") as b:
        cmesh.sidecar("api", a.port, instance="api-1")
        cmesh.sidecar("api", b.port, instance="api-2")
        up = free_port()
        cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: {echo_roundtrip(up, b"x")[:2] for _ in range(6)} == {b"A:", b"B:"}, 20, "both instances")
        consul.set_check_status("service:api-2", "critical")  # the app check; the sidecar aliases it
        wait_for(lambda: {echo_roundtrip(up, b"x")[:2] for _ in range(6)} == {b"A:"}, 5, "api-2 out")


def test_consul_intention_create_deny_replayed_refuses_new_connections(cmesh: ConsulMesh) -> None:
    cmesh.intention("web", "api", "allow")
    with echo_app() as app:
        api = cmesh.sidecar("api", app.port)
        up = free_port()
        cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: not refused(up), 15, "allowed")
        cmesh.intention("web", "api", "deny")  # `consul intention create -deny -replace web api`
        wait_for(lambda: refused(up), 5, "denied within a watch round")
        assert api.metric("meshgw_connections_denied_total", reason="intention") >= 1


def test_l7_permissions_from_a_consul_config_entry(cmesh: ConsulMesh, consul: ConsulDoubleThread) -> None:
    # A request no permission matches gets Consul's default (consul.md §7.3), which meshgw now reads from the
    # agent (issue #15): an agent whose default_intention_policy is deny, as this test has always assumed.
    consul.call(setattr, consul.state, "default_allow", False)
    cmesh.put(
        "/v1/config",
        {
            "Kind": "service-intentions",
            "Name": "api",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [
                        {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                        {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"]}},
                    ],
                }
            ],
        },
    )
    with http_app("api") as app:
        cmesh.sidecar("api", app.port, protocol="http")
        up = free_port()
        cmesh.sidecar("web", free_port(), upstreams={"api": up}, protocol="http")

        def status(method: str, path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
            try:
                conn.request(method, path)
                return conn.getresponse().status
            except OSError:
                return 0
            finally:
                conn.close()

        wait_for(lambda: status("GET", "/ok") == 200, 15, "GET allowed")
        assert status("POST", "/ok") == 403
        assert status("GET", "/admin") == 403


def test_ca_root_rotation_with_traffic_flowing(cmesh: ConsulMesh, consul: ConsulDoubleThread) -> None:
    cmesh.intention("web", "api", "allow")
    with echo_app() as app:
        api = cmesh.sidecar("api", app.port)
        up = free_port()
        web = cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: not refused(up), 15, "allowed")
        failures: list[str] = []
        done = threading.Event()
        count = [0]

        def traffic() -> None:
            while not done.is_set():
                try:
                    if echo_roundtrip(up, b"r" * 64) != b"r" * 64:
                        failures.append("bad answer")
                    count[0] += 1
                except OSError as e:
                    failures.append(repr(e))

        t = threading.Thread(target=traffic)
        t.start()
        try:
            before = (api.metric("meshgw_leaf_cert_rotations_total"), web.metric("meshgw_leaf_cert_rotations_total"))
            consul.rotate_ca()
            wait_for(lambda: api.metric("meshgw_leaf_cert_rotations_total") > before[0], 10, "api got a new leaf")
            wait_for(lambda: web.metric("meshgw_leaf_cert_rotations_total") > before[1], 10, "web got a new leaf")
            n = count[0]
            wait_for(lambda: count[0] > n + 20, 10, "traffic after the rotation")
        finally:
            done.set()
            t.join(10)
        assert failures == []
        roots = requests.get(f"{consul.url}/v1/agent/connect/ca/roots", timeout=5).json()
        assert len(roots["Roots"]) == 2
        _, cfg = api.admin("/config")
        assert '"roots": 2' in cfg  # both roots trusted while the old one's leaves may still be out there


def test_consul_outage_keeps_traffic_and_registrations_come_back(cmesh: ConsulMesh, consul: ConsulDoubleThread) -> None:
    cmesh.intention("web", "api", "allow")
    with echo_app() as app:
        api = cmesh.sidecar("api", app.port)
        up = free_port()
        web = cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: not refused(up), 15, "allowed")
        consul.kill()
        wait_for(lambda: web.metric("meshgw_consul_up") == 0, 20, "consul_up 0")
        for _ in range(10):
            assert echo_roundtrip(up, b"during") == b"during"  # last good state keeps serving
        assert api.admin("/ready")[0] == 200
        consul.restart()
        wait_for(lambda: web.metric("meshgw_consul_up") == 1, 30, "consul_up 1")
        wait_for(
            lambda: (
                {"api-sidecar-proxy", "web-sidecar-proxy"}
                <= set(requests.get(f"{consul.url}/v1/agent/services", timeout=5).json())
            ),
            15,
            "registrations back",
        )
        for _ in range(10):
            assert echo_roundtrip(up, b"after") == b"after"
        assert "consul unreachable" in web.log_text() and web.log_text().count("consul unreachable") == 1


def test_acl_token_sent_on_every_call(tmp_path: Path) -> None:
    with ConsulDoubleThread(acl_token="s3cret-token") as consul:
        m = ConsulMesh(tmp_path, consul, token="s3cret-token")
        try:
            m.intention("web", "api", "allow")
            with echo_app() as app:
                m.sidecar("api", app.port)
                up = free_port()
                m.sidecar("web", free_port(), upstreams={"api": up})
                wait_for(lambda: not refused(up), 15, "allowed with ACLs")
                assert "s3cret" not in m.sidecars[0].admin("/config")[1]  # tokens never leave via /config
        finally:
            m.close()
        calls = consul.requests
        assert calls and all(token == "s3cret-token" for _, _, _, token in calls), [
            (meth, path, tok) for meth, path, _, tok in calls if tok != "s3cret-token"
        ][:5]
        for sc in m.sidecars:
            assert "s3cret" not in sc.log_text()


def test_meshgw_intention_round_trip_against_consul(consul: ConsulDoubleThread) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        env["CONSUL_HTTP_ADDR"] = consul.address
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "intention", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    assert run("create", "web", "db").returncode == 0
    r = run("create", "web", "db")
    assert r.returncode == 1 and "already exists" in r.stderr
    assert run("check", "web", "db").returncode == 0
    assert run("create", "-deny", "-replace", "web", "db").returncode == 0
    r = run("check", "web", "db")
    assert r.returncode == 1 and "Denied" in r.stdout and "web => db (deny)" in r.stdout
    r = run("list")
    assert "web => db (deny, precedence 9)" in r.stdout
    assert run("delete", "web", "db").returncode == 0
    assert run("get", "web", "db").returncode == 1


def test_starting_with_consul_down_waits_with_ready_503(tmp_path: Path, consul: ConsulDoubleThread) -> None:
    m = ConsulMesh(tmp_path, consul)
    consul.kill()
    try:
        with echo_app() as app:
            admin = free_port()
            cfg = {
                "service": {"name": "api", "port": app.port},
                "inbound": {"bind": f"127.0.0.1:{free_port()}"},
                "control_plane": {"type": "consul", "consul": {"address": consul.address, "wait": "10s"}},
                "certificates": {"type": "builtin", "builtin": {"dir": "ca", "leaf_ttl": "1h", "create": True}},
                "admin": {"bind": f"127.0.0.1:{admin}"},
            }
            path = tmp_path / "api.yaml"
            path.write_text(yaml.safe_dump(cfg))
            sc = Sidecar(None, "api", path, admin, tmp_path / "api.log")  # type: ignore[arg-type]
            m.sidecars.append(sc)
            sc.start(wait_ready=False)

            def status() -> tuple[int, str] | None:
                try:
                    return sc.admin("/ready")
                except OSError:
                    return None

            first = wait_for(status, 15, "admin up")
            assert first[0] == 503 and "waiting for a first answer from consul" in first[1]
            consul.restart()
            wait_for(lambda: sc.ready(), 20, "ready once consul answers")
    finally:
        m.close()


def test_expose_checks_serves_the_agents_http_checks_through_the_core(
    tmp_path: Path, consul: ConsulDoubleThread
) -> None:
    """Expose.Checks: the agent gives the app's HTTP check a port of its expose range and probes it there; meshgw
    reads that from the agent's checks and serves the port from the core, plaintext, the check's path only."""
    exposed = free_port()  # the agent's expose_min_port..expose_max_port, one port wide here
    consul.call(setattr, consul.state, "expose_min_port", exposed)
    consul.call(setattr, consul.state, "expose_max_port", exposed + 1)
    m = ConsulMesh(tmp_path, consul)
    with http_app("web") as app:
        m.put(
            "/v1/agent/service/register",
            {
                "Name": "web",
                "ID": "web",
                "Address": "127.0.0.1",
                "Port": app.port,
                "Check": {"CheckID": "web-health", "Name": "web health", "Interval": "200ms",
                          "HTTP": f"http://127.0.0.1:{app.port}/health?full=1"},
            },
        )  # fmt: skip
        admin = free_port()
        cfg = {
            "datacenter": "dc1",
            "service": {"name": "web", "id": "web", "port": app.port},
            "inbound": {"bind": f"127.0.0.1:{free_port()}"},
            "control_plane": {"type": "consul", "consul": {"address": consul.address, "register_service": False}},
            "certificates": {"type": "consul"},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "expose": {"checks": True},
            "drain_timeout": "1s",
        }
        path = tmp_path / "web.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        sc = Sidecar(None, "web", path, admin, tmp_path / "web.log")  # type: ignore[arg-type]
        m.sidecars.append(sc)
        try:
            sc.start()
            # /ready does not wait for the registration (it says the proxy serves): wait for it here.
            wait_for(lambda: "web-sidecar-proxy" in consul.state.services, 15, "the proxy's registration")
            assert consul.state.services["web-sidecar-proxy"]["Proxy"]["Expose"] == {"Checks": True}

            def through_meshgw() -> dict[str, Any] | None:
                chk = consul.state.checks["web-health"]
                ok = chk["Status"] == "passing" and f"127.0.0.1:{exposed}/health?full=1: 200" in chk["Output"]
                return chk if ok else None

            # The agent's probe now goes to the exposed port, and passes only because meshgw serves it.
            chk = wait_for(through_meshgw, 30, f"the check passing through the exposed port ({sc.log_text()[-2000:]})")
            assert chk["ExposedPort"] == exposed
            r = requests.get(f"http://127.0.0.1:{exposed}/health?full=1", timeout=5)
            assert r.status_code == 200 and r.json()["path"] == "/health?full=1"
            seen = len(app.requests)
            assert requests.get(f"http://127.0.0.1:{exposed}/admin", timeout=5).status_code == 404
            assert requests.post(f"http://127.0.0.1:{exposed}/health/../admin", timeout=5).status_code == 404
            assert all(r["path"] == "/health?full=1" for r in app.requests[seen:])

            # The check goes away: so does its listener.
            m.put("/v1/agent/check/deregister/web-health")

            def closed() -> bool:
                try:
                    requests.get(f"http://127.0.0.1:{exposed}/health", timeout=2)
                except requests.ConnectionError:
                    return True
                return False

            wait_for(closed, 30, "the exposed port closed after its check left")
        finally:
            m.close()


def test_a_consul_sidecar_loads_neither_the_x509_library_nor_aiohttp(cmesh: ConsulMesh) -> None:
    """Issue #13: the leaf's validity comes from Consul's ValidAfter/ValidBefore and the agent's API is spoken by
    connect/consul_http.py, so cryptography and aiohttp (18 MB of resident memory) stay out; mTLS still works."""
    with echo_app() as app:
        api = cmesh.sidecar("api", app.port)
        up = free_port()
        cmesh.intention("web", "api", "allow")
        cmesh.sidecar("web", free_port(), upstreams={"api": up})
        wait_for(lambda: not refused(up), 15, "web -> api over mTLS with Consul's leaves")
        assert api.proc is not None
        maps = Path(f"/proc/{api.proc.pid}/maps").read_text()
        for lib in ("cryptography", "aiohttp", "multidict", "yarl"):
            assert f"/{lib}/" not in maps, f"{lib} is loaded"
