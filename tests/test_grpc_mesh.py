"""A real gRPC client and server (grpcio) joined by two meshgw sidecars whose protocol is grpc, taken from the
config entries the way Consul resolves it (issue #14): L7 intentions on /package.Service/Method, a denied call
answered as Envoy does (grpc-status 7: PERMISSION_DENIED, http2-grpc.md §3, §7.9)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from mesh import Mesh, free_port, wait_for

pytestmark = pytest.mark.slow

SERVICE = "billing.v1.Billing"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0


@pytest.fixture
def grpc_app() -> Iterator[int]:
    """billing.v1.Billing with raw-bytes methods (no generated stubs needed): GetInvoice echoes the request
    reversed, IssueRefund answers b"refunded"."""

    def get_invoice(request: bytes, context: Any) -> bytes:
        return request[::-1]

    def issue_refund(request: bytes, context: Any) -> bytes:
        return b"refunded"

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetInvoice": grpc.unary_unary_rpc_method_handler(get_invoice),
            "IssueRefund": grpc.unary_unary_rpc_method_handler(issue_refund),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def speaks_h2c(port: int) -> tuple[bool, bytes]:
    """Whether the listener answers an h2c prior-knowledge preface with a SETTINGS frame (RFC 9113 §3.4)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(PREFACE + EMPTY_SETTINGS)
        got = b""
        try:
            while len(got) < 9:
                chunk = s.recv(9 - len(got))
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    return len(got) == 9 and got[3] == 0x04, got


def test_grpc_calls_through_the_mesh_with_l7_intentions(mesh: Mesh, grpc_app: int) -> None:
    entries = [{"Kind": "service-defaults", "Name": "billing", "Protocol": "grpc"}]
    mesh.intentions.append(
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "web",
                    # Consul's documented gRPC intention (http2-grpc.md §3).
                    "Permissions": [
                        {"Action": "deny", "HTTP": {"PathExact": f"/{SERVICE}/IssueRefund"}},
                        {"Action": "allow", "HTTP": {"PathPrefix": f"/{SERVICE}/"}},
                    ],
                }
            ],
        }
    )
    mesh.write_intentions()
    billing = mesh.sidecar("billing", app_port=grpc_app, config_entries=entries)
    up = free_port()
    web = mesh.sidecar("web", upstreams={"billing": up}, config_entries=entries)
    for sc, protocol in ((billing, lambda c: c["service"]["protocol"]), (web, lambda c: c["upstreams"][0]["protocol"])):
        status, body = sc.admin("/config")
        assert status == 200 and protocol(json.loads(body)["config"]) == "grpc", body

    ok, answer = speaks_h2c(up)
    assert ok, f"a grpc listener answers an h2c preface with SETTINGS, got {answer!r}"

    with grpc.insecure_channel(f"127.0.0.1:{up}") as channel:
        get_invoice = channel.unary_unary(f"/{SERVICE}/GetInvoice")
        issue_refund = channel.unary_unary(f"/{SERVICE}/IssueRefund")

        def allowed() -> bool:
            try:
                return bool(get_invoice(b"inv-42", timeout=5) == b"24-vni")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:  # only "not reachable yet" is waited out
                    raise
                return False

        wait_for(allowed, 15, "an allowed gRPC call")
        with pytest.raises(grpc.RpcError) as denied:
            issue_refund(b"inv-42", timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == "RBAC: access denied"
