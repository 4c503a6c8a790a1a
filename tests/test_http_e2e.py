"""HTTP through two sidecars (protocol: http on both hops): L7 intentions, keep-alive, streaming,
100-continue, WebSocket, malformed requests, timeouts, trace context."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from http_app import HTTPApp, http_app
from mesh import Mesh, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("http_data_path")]

L7 = {
    "Kind": "service-intentions",
    "Name": "api",
    "Sources": [
        {
            "Name": "web",
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET", "PUT", "POST"]}},
                {"Action": "allow", "HTTP": {"PathExact": "/hdr", "Header": [{"Name": "x-team", "Exact": "blue"}]}},
            ],
        },
        {"Name": "*", "Action": "deny"},
    ],
}


class Pair:
    def __init__(self, mesh: Mesh, app: HTTPApp, up: int):
        self.mesh = mesh
        self.app = app
        self.up = up

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.up, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()


@pytest.fixture
def pair(mesh: Mesh) -> Iterator[Pair]:
    mesh.intentions = [L7]
    mesh.write_intentions()
    with http_app("api") as app:
        mesh.sidecar("api", app.port, service={"protocol": "http"}, inbound={"request_timeout": "1s"})
        up = free_port()
        mesh.sidecar("web", upstreams={"api": up}, upstream={"protocol": "http", "request_timeout": "2s"})
        yield Pair(mesh, app, up)


def test_l7_intentions_allow_deny_and_first_match(pair: Pair) -> None:
    status, body, _ = pair.request("GET", "/hello?x=1")
    assert status == 200 and json.loads(body)["path"] == "/hello?x=1"
    status, body, _ = pair.request("DELETE", "/hello")  # no permission matches: default deny
    assert status == 403 and b"RBAC: access denied" in body
    status, _, _ = pair.request("GET", "/admin/users")  # the deny comes first, before the allow of /
    assert status == 403
    status, _, _ = pair.request("PATCH", "/hdr", headers={"x-team": "blue"})
    assert status == 200
    status, _, _ = pair.request("PATCH", "/hdr", headers={"x-team": "red"})
    assert status == 403
    assert all(not r["path"].startswith("/admin") for r in pair.app.requests)
    api = pair.mesh.sidecars[0]
    assert api.metric("meshgw_http_requests_denied_total") == 3
    assert api.metric("meshgw_http_responses_total", code_class="4xx") == 3


def test_l4_deny_applies_per_request_on_http(pair: Pair, mesh: Mesh) -> None:
    up = free_port()
    mesh.sidecar("intruder", upstreams={"api": up}, upstream={"protocol": "http"})
    conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 403


def test_keep_alive_both_sides_and_pooling(pair: Pair, http_data_path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", pair.up, timeout=10)
    for i in range(20):
        conn.request("GET", f"/n/{i}")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    conn.close()
    ports = {r["peer_port"] for r in pair.app.requests}
    assert len(pair.app.requests) == 20 and len(ports) == 1  # one pooled connection to the app


def test_streaming_upload_and_download(pair: Pair) -> None:
    size = 64 << 20  # 64 MiB each way, sent as a stream of chunks

    def gen() -> Iterator[bytes]:
        block = b"y" * (1 << 20)
        for _ in range(size >> 20):
            yield block

    conn = http.client.HTTPConnection("127.0.0.1", pair.up, timeout=30)
    conn.request("PUT", "/upload", body=gen(), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["size"] == size
    conn.request("GET", f"/big/{size}")
    r = conn.getresponse()
    got = 0
    while chunk := r.read(1 << 20):
        got += len(chunk)
    assert r.status == 200 and got == size


def test_expect_100_continue(pair: Pair) -> None:
    with socket.create_connection(("127.0.0.1", pair.up), timeout=10) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100"), first
        s.sendall(b"hello")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"200 OK" in data and b'"size": 5' in data


def test_websocket_echo_through_the_mesh(pair: Pair) -> None:
    async def run() -> list[str]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{pair.up}/ws") as ws:
            out = []
            for word in ("one", "two", "three"):
                await ws.send_str(word)
                msg = await ws.receive(timeout=5)
                out.append(msg.data)
            await ws.send_bytes(b"\x00" * 100_000)
            msg = await ws.receive(timeout=5)
            assert msg.data == b"\x00" * 100_000
            await ws.send_str("four")
            out.append((await ws.receive(timeout=5)).data)
            return out

    assert asyncio.run(run()) == ["api:one", "api:two", "api:three", "api:four"]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_request_gets_400_and_nothing_reaches_the_app(pair: Pair, raw: bytes) -> None:
    before = len(pair.app.requests)
    with socket.create_connection(("127.0.0.1", pair.up), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data
    assert len(pair.app.requests) == before


def test_trace_context_continues_across_two_hops(pair: Pair) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace}-00f067aa0ba902b7-01"
    status, body, _ = pair.request("GET", "/t", headers={"traceparent": incoming, "tracestate": "k=v"})
    seen: dict[str, Any] = json.loads(body)["headers"]
    assert status == 200
    version, trace_id, span, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01") and span != "00f067aa0ba902b7"
    assert seen["tracestate"] == "k=v" and seen["x-request-id"]
    status, body, _ = pair.request("GET", "/t2")  # none arrives: a trace is started
    started = json.loads(body)["headers"]["traceparent"].split("-")
    assert len(started[1]) == 32 and started[1] != "0" * 32


def test_upstream_timeout_gives_504(pair: Pair) -> None:
    status, body, _ = pair.request("GET", "/slow/3")
    assert status == 504 and b"timeout" in body


def test_no_healthy_upstream_gives_503(mesh: Mesh) -> None:
    up = free_port()
    sc = mesh.sidecar("web", upstreams={"ghost": up}, upstream={"protocol": "http"})
    conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
    conn.request("GET", "/")
    r = conn.getresponse()
    assert r.status == 503 and b"no_healthy_endpoints" in r.read()
    wait_for(lambda: sc.metric("meshgw_upstream_connect_errors_total", reason="no_healthy_endpoints") >= 1, 5, "n")
