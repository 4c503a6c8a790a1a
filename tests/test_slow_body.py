"""Slow bodies against the inbound HTTP/1.1 listener (l7-security.md §4, Envoy's `stream_idle_timeout`): a caller
that stops sending its request body in the middle gets 408 once no byte came for the stream idle timeout, and an
app that stops in the middle of its response body has the exchange cut at the same bound, each counted as
`meshgw_http_timeouts_total{kind="stream_idle"}`. Neither holds the listener: an honest request is served
meanwhile."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from mesh import Mesh, Sidecar, free_port, read_request, wait_for

pytestmark = pytest.mark.slow

IDLE = "600ms"


class _App(socketserver.BaseRequestHandler):
    """`/stall` answers a head and half its body, then nothing; a request with a body is read whole first."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(15)
        buf = b""
        try:
            # None: the connection ended, or the sidecar gave up on the caller's body (so does the app).
            while (got := read_request(sock, buf)) is not None:
                head, _, buf = got
                if head.split(b" ")[1] == b"/stall":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-")
                    time.sleep(10)
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return


class App(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _App)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def api(mesh: Mesh) -> Iterator[tuple[Mesh, Sidecar, int]]:
    mesh.allow("web", "api")
    app = App()
    try:
        sc = mesh.sidecar(
            "api",
            app_port=app.server_address[1],
            service={"protocol": "http"},
            inbound={"stream_idle_timeout": IDLE},
        )
        yield mesh, sc, mesh.inbound_port("api")
    finally:
        app.shutdown()
        app.server_close()


def _tls(mesh: Mesh, port: int) -> ssl.SSLSocket:
    ctx = mesh.client_context(mesh.leaf_files("web"))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def _read_all(s: ssl.SSLSocket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ssl.SSLError, OSError):
            return data
        if not chunk:
            return data
        data += chunk


def _honest(mesh: Mesh, port: int) -> bytes:
    with _tls(mesh, port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        return _read_all(s)


def _stream_idle(sc: Sidecar) -> float:
    return sc.metric("meshgw_http_timeouts_total", listener="inbound", kind="stream_idle")


def test_request_body_that_stops_gets_408(api: tuple[Mesh, Sidecar, int]) -> None:
    mesh, sc, port = api
    with _tls(mesh, port) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nhalf-")
        # Meanwhile the listener serves others.
        assert _honest(mesh, port).endswith(b"ok")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert _stream_idle(sc) == 1


def test_response_body_that_stops_is_cut(api: tuple[Mesh, Sidecar, int]) -> None:
    mesh, sc, port = api
    with _tls(mesh, port) as s:
        s.sendall(b"GET /stall HTTP/1.1\r\nHost: api\r\n\r\n")
        answer = _read_all(s)  # the head and half the body, then the sidecar closes (the app waits 10 s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"half-"), answer[:200]
    wait_for(lambda: _stream_idle(sc) == 1, 10, "the stream idle timeout counted")
    assert _honest(mesh, port).endswith(b"ok")
