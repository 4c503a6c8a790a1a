"""Ingress gateways: plaintext from outside the mesh, mTLS with the gateway's own identity to the service.

The gateway is a caller like any other: the services' sidecars authorize it by its SPIFFE ID
(``ingress-gateway``) with intentions, as Consul does for its ingress gateways (consul.md §8.6)."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from http_app import http_app
from mesh import Mesh, echo_app, echo_roundtrip, free_port, wait_for


@pytest.mark.slow
def test_ingress_gateway_tcp_and_http_listeners(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        with echo_app(b"web:") as tcp_app, http_app("api") as api_app:
            mesh.sidecar("web", tcp_app.port)
            mesh.sidecar("api", api_app.port, service={"protocol": "http"})
            tcp_port, http_port = free_port(), free_port()
            gw = mesh.sidecar(
                "ingress",
                inbound=False,
                mode="ingress-gateway",
                service={"name": "ingress-gateway"},
                listeners=[
                    {"bind": f"127.0.0.1:{tcp_port}", "protocol": "tcp", "services": ["web"]},
                    {"bind": f"127.0.0.1:{http_port}", "protocol": "http", "services": [{"name": "api"}]},
                ],
            )
            # Default deny: nothing passes until the gateway is allowed (it is a caller like any other).
            assert echo_roundtrip(tcp_port, b"x") == b""
            mesh.allow("ingress-gateway", "web")
            mesh.allow("ingress-gateway", "api")
            wait_for(lambda: echo_roundtrip(tcp_port, b"hello") == b"web:hello", 5, "tcp through the ingress")

            wait_for(lambda: _get(http_port) == 200, 5, "http through the ingress")
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            try:
                for _ in range(3):  # keep-alive from the outside client
                    conn.request("GET", "/orders?id=7", headers={"x-team": "blue"})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200
            finally:
                conn.close()
            seen = api_app.requests[-1]
            assert seen["path"] == "/orders?id=7"
            assert gw.metric("meshgw_http_responses_total", listener=f"ingress:{http_port}", code_class="2xx") >= 4

            # A deny for the gateway's identity closes its path to web again.
            mesh.allow("ingress-gateway", "web", action="deny")
            wait_for(lambda: echo_roundtrip(tcp_port, b"x") == b"", 5, "deny applies to the gateway")
    finally:
        mesh.close()


def _get(port: int, host: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


@pytest.mark.slow
def test_one_http_listener_several_services_by_host(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        with http_app("api") as api_app, http_app("shop") as shop_app:
            mesh.sidecar("api", api_app.port, service={"protocol": "http"})
            mesh.sidecar("shop", shop_app.port, service={"protocol": "http"})
            mesh.allow("ingress-gateway", "api")
            mesh.allow("ingress-gateway", "shop")
            port = free_port()
            gw = mesh.sidecar(
                "ingress",
                inbound=False,
                mode="ingress-gateway",
                service={"name": "ingress-gateway"},
                listeners=[
                    {
                        "bind": f"127.0.0.1:{port}",
                        "protocol": "http",
                        # api: Consul's default host (api.ingress.*); shop: its own names.
                        "services": ["api", {"name": "shop", "hosts": ["shop.example.com", "*.shop.example.com"]}],
                    }
                ],
            )

            def get(host: str) -> int:
                return _get(port, host)

            wait_for(lambda: get("api.ingress.example.org") == 200, 5, "api by its default host")
            assert api_app.requests[-1]["path"] == "/"
            n_api = len(api_app.requests)
            assert get("shop.example.com:8080") == 200  # the port does not take part in matching
            assert get("eu.shop.example.com") == 200
            assert len(shop_app.requests) == 2 and len(api_app.requests) == n_api
            # No service for that host: 404 from the gateway, nothing reaches an app.
            assert get("other.example.com") == 404
            assert get("shop.example.com.evil") == 404
            assert len(shop_app.requests) == 2 and len(api_app.requests) == n_api
            assert gw.metric("meshgw_http_responses_total", listener=f"ingress:{port}", code_class="4xx") == 2
    finally:
        mesh.close()
