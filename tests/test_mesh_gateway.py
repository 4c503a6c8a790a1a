"""Mesh gateways: SNI routing across datacenters without decrypting (consul.md §5.2, §6).

Two datacenters on loopback: ``web`` in dc1 calls ``api`` in dc2, through dc1's gateway then dc2's
(mode local), or straight to dc2's gateway (mode remote). The mTLS session is web's sidecar ↔ api's
sidecar end to end: the api sidecar still sees web's identity and applies intentions.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from mesh import Mesh, Sidecar, echo_app, echo_roundtrip, free_port, refused, wait_for

TD = "test.consul"


def _client_hello(server_hostname: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# The ClientHello and SNI-name parsers are the core's (gateway/core/proto/src/sni.rs, spiffe.rs): their cases,
# including those that were here for the Python parser (a real ClientHello byte by byte, split over two records,
# no SNI, non-TLS bytes, every SNI-name form), are Rust unit tests and fuzz targets now.


# ---------------------------------------------------------------------------- two datacenters on loopback


def _gateway(mesh: Mesh, dc: str) -> tuple[Sidecar, int]:
    port = free_port()
    gw = mesh.sidecar(
        f"mgw-{dc}",
        inbound=False,
        start=False,
        dc=dc,
        mode="mesh-gateway",
        service={"name": "mesh-gateway"},
        gateway={"bind": f"127.0.0.1:{port}"},
    )
    mesh.register("mesh-gateway", port, dc=dc)
    return gw, port


def _web(mesh: Mesh, name: str, mode: str) -> tuple[Sidecar, int]:
    port = free_port()
    sc = mesh.sidecar(name, inbound=False, start=False, service={"name": "web"}, upstreams={"api": port})
    cfg: dict[str, Any] = yaml.safe_load(sc.cfg_path.read_text())
    cfg["upstreams"][0].update(datacenter="dc2", mesh_gateway=mode)
    sc.cfg_path.write_text(yaml.safe_dump(cfg))
    return sc, port


@pytest.mark.slow
def test_cross_datacenter_through_mesh_gateways(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, TD)
    try:
        with echo_app(b"api:") as app:
            api = mesh.sidecar("api", app_port=app.port, dc="dc2", start=False)
            gw1, _ = _gateway(mesh, "dc1")
            gw2, _ = _gateway(mesh, "dc2")
            web_local, local_port = _web(mesh, "web-local", "local")
            web_remote, remote_port = _web(mesh, "web-remote", "remote")
            web_direct, direct_port = _web(mesh, "web-direct", "none")
            mesh.allow("web", "api")
            for sc in (api, gw1, gw2, web_local, web_remote, web_direct):
                sc.start()

            # mode local: web → dc1 gateway → dc2 gateway → api's sidecar.
            assert echo_roundtrip(local_port, b"via-local") == b"api:via-local"
            wait_for(lambda: gw1.metric("meshgw_gateway_connections_routed_total", route="remote") == 1, 5, "dc1 gw")
            wait_for(lambda: gw2.metric("meshgw_gateway_connections_routed_total", route="local") == 1, 5, "dc2 gw")
            # mode remote: web → dc2 gateway → api's sidecar; dc1's gateway is not involved.
            assert echo_roundtrip(remote_port, b"via-remote") == b"api:via-remote"
            wait_for(lambda: gw2.metric("meshgw_gateway_connections_routed_total", route="local") == 2, 5, "dc2 gw")
            assert gw1.metric("meshgw_gateway_connections_routed_total", route="remote") == 1
            # mode none: straight to api's sidecar.
            assert echo_roundtrip(direct_port, b"direct") == b"api:direct"
            assert gw2.metric("meshgw_gateway_connections_routed_total", route="local") == 2

            # A large transfer both ways passes through unchanged (the gateways relay bytes, nothing else).
            blob = bytes(range(256)) * 4096
            assert _transfer(local_port, blob).replace(b"api:", b"") == blob

            # The callee's sidecar saw web's identity through both gateways: a deny intention applies.
            mesh.allow("web", "api", action="deny")
            wait_for(lambda: refused(local_port), 5, "deny through the gateways")
            assert api.metric("meshgw_connections_denied_total", reason="intention") >= 1

            # The gateway never terminated TLS: its config snapshot shows routes, and it holds no session keys.
            status, body = gw2.admin("/config")
            assert status == 200 and '"local"' in body and "PRIVATE KEY" not in body
    finally:
        mesh.close()


def _transfer(port: int, blob: bytes) -> bytes:
    """Send everything, half-close, read to EOF: the half-close crosses both gateways too."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(blob)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)



@pytest.mark.slow
def test_mesh_gateway_refuses_what_it_cannot_route(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, TD)
    try:
        gw, port = _gateway(mesh, "dc1")
        gw.start()

        def refused_after(data: bytes) -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(data)
                try:
                    return s.recv(100) == b""
                except ConnectionResetError:
                    return True

        assert refused_after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert gw.metric("meshgw_connections_denied_total", listener="mesh-gateway", reason="not_tls") == 1
        assert refused_after(_client_hello(None))
        assert gw.metric("meshgw_connections_denied_total", reason="no_sni") == 1
        assert refused_after(_client_hello("www.example.com"))
        assert refused_after(_client_hello("api.default.dc1.internal.other.consul"))
        assert gw.metric("meshgw_connections_denied_total", reason="unknown_sni") == 2
        # A mesh name with no healthy instance, and a datacenter with no gateway: closed, counted.
        assert refused_after(_client_hello(f"nosuch.default.dc1.internal.{TD}"))
        assert refused_after(_client_hello(f"api.default.dc9.internal.{TD}"))
        assert gw.metric("meshgw_upstream_connect_errors_total", reason="no_healthy_endpoints") == 2
        assert gw.metric("meshgw_gateway_connections_routed_total") == 0
    finally:
        mesh.close()


@pytest.mark.slow
def test_tcp_upstream_fails_over_to_another_datacenter_through_gateways(tmp_path: Path) -> None:
    """service-resolver Failover (consul.md §8.5) on a TCP upstream: dc1's api goes critical, connections go to
    dc2's api through both mesh gateways; when dc1 recovers they come back."""
    mesh = Mesh(tmp_path, TD)
    try:
        with echo_app(b"dc1:") as east, echo_app(b"dc2:") as west:
            apps = [
                mesh.sidecar("api-dc1", east.port, start=False, service={"name": "api"}),
                mesh.sidecar("api-dc2", west.port, start=False, dc="dc2", service={"name": "api"}),
            ]
            # Both instances under the service's name, each in its datacenter.
            mesh.catalog["api"] = mesh.catalog.pop("api-dc1") + mesh.catalog.pop("api-dc2")
            mesh.write_catalog()
            gw1, _ = _gateway(mesh, "dc1")
            gw2, _ = _gateway(mesh, "dc2")
            up = free_port()
            web = mesh.sidecar(
                "web",
                inbound=False,
                start=False,
                upstreams={"api": up},
                mesh_gateway={"mode": "local"},
                config_entries=[
                    {"Kind": "service-resolver", "Name": "api", "Failover": {"*": {"Datacenters": ["dc2"]}}}
                ],
            )
            mesh.allow("web", "api")
            for sc in (*apps, gw1, gw2, web):
                sc.start()
            assert echo_roundtrip(up, b"a") == b"dc1:a"

            mesh.catalog["api"][0]["health"] = "critical"
            mesh.write_catalog()
            wait_for(lambda: echo_roundtrip(up, b"b") == b"dc2:b", 5, "failover to dc2")
            assert gw2.metric("meshgw_gateway_connections_routed_total", route="local") >= 1
            status, body = web.admin("/config")
            assert status == 200 and "api.default.dc2.internal" in body

            mesh.catalog["api"][0]["health"] = "passing"
            mesh.write_catalog()
            wait_for(lambda: echo_roundtrip(up, b"c") == b"dc1:c", 5, "back to dc1")
    finally:
        mesh.close()
