"""Hostile requests against a sidecar's inbound HTTP listener, differentially: a caller holding a valid `web`
certificate sends each vector of l7-security.md §7 (plus the smuggling vector of the core issue) straight to
`api`'s mTLS port, and a naive keep-alive app behind the sidecar records every request it parses. The app must
see exactly the requests the intentions allow, with the path the intentions judged; everything else gets the
status Consul's Envoy gives and never reaches the app.

The Python/C data paths the Rust core replaced failed several of them (the reason for the core issue).
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from mesh import Mesh, free_port, read_request, wait_for

pytestmark = pytest.mark.slow

# l7-security.md §7 fixture: P0 deny PathPrefix /admin; P1 allow PUT /reports with X-Role: admin; P2 allow
# GET/POST on every path. Default deny.
INTENTIONS = {
    "Kind": "service-intentions",
    "Name": "api",
    "Sources": [
        {
            "Name": "web",
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                {
                    "Action": "allow",
                    "HTTP": {
                        "PathExact": "/reports",
                        "Methods": ["PUT"],
                        "Header": [{"Name": "X-Role", "Exact": "admin"}],
                    },
                },
                {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET", "POST"]}},
            ],
        }
    ],
}


@dataclass
class Seen:
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)  # (method, target, body)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Naive(socketserver.BaseRequestHandler):
    """Parses requests the simplest way an app does (head up to CRLFCRLF, Content-Length body, keep-alive), so
    anything smuggled past the proxy shows up as a request of its own."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        seen: Seen = self.server.seen  # type: ignore[attr-defined]
        buf = b""
        sock.settimeout(10)
        try:
            while (got := read_request(sock, buf)) is not None:
                head, body, buf = got
                method, target = head.split(b"\r\n")[0].split(b" ")[:2]
                with seen.lock:
                    seen.requests.append((method.decode(), target.decode("latin-1"), body))
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (OSError, ValueError):
            return


class NaiveApp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), _Naive)
        self.seen = Seen()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def take(self) -> list[tuple[str, str, bytes]]:
        with self.seen.lock:
            out, self.seen.requests = self.seen.requests, []
        return out


@pytest.fixture
def api(mesh: Mesh) -> Iterator[tuple[Mesh, NaiveApp, int]]:
    mesh.intentions = [INTENTIONS]
    mesh.write_intentions()
    app = NaiveApp(free_port())
    try:
        mesh.sidecar("api", app_port=app.server_address[1], service={"protocol": "http"})
        yield mesh, app, mesh.inbound_port("api")
    finally:
        app.shutdown()
        app.server_close()


def _exchange(mesh: Mesh, port: int, raw: bytes, service: str = "web", responses: int = 1) -> list[bytes]:
    """Sends ``raw`` over mTLS as ``service`` and returns the heads (and bodies) of the answers, split on the
    status lines; stops at ``responses`` answers or when the proxy closes."""
    ctx = mesh.client_context(mesh.leaf_files(service))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as tcp, ctx.wrap_socket(tcp) as s:
        s.sendall(raw)
        data = b""
        while data.count(b"HTTP/1.1 ") < responses or not _complete(data, responses):
            try:
                chunk = s.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
    parts = data.split(b"HTTP/1.1 ")
    return [b"HTTP/1.1 " + p for p in parts if p]


def _complete(data: bytes, responses: int) -> bool:
    """The last answer's head is in and, when it has a Content-Length, its body too (no vector ends in a HEAD)."""
    last = data.rsplit(b"HTTP/1.1 ", 1)[-1]
    head, sep, body = last.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# (request target or whole request, expected status, what the app must have parsed: (method, target) or None)
VECTORS = [
    ("GET /admin", 403, None),  # 1
    ("GET /api/../admin", 403, None),  # 2: normalized before the intentions
    ("GET /./admin", 403, None),  # 3
    ("GET /x/%2E%2e/admin", 403, None),  # 4: %2e counts as a dot
    ("GET /%61dmin", 403, None),  # 5: unreserved escapes decoded
    ("GET /a/..\\admin", (400, 403), None),  # 6: \ -> /, or refused by the codec
    ("GET //admin", 200, ("GET", "//admin")),  # 7: no slash merging by default
    ("GET /x%2f..%2fadmin", 200, ("GET", "/x%2f..%2fadmin")),  # 8: escaped slashes kept unchanged
    ("GET /admin%2Fx", 403, None),  # 9
    ("GET /ADMIN", 200, ("GET", "/ADMIN")),  # 10: never case-folded
    ("GET /admin?debug=1", 403, None),  # 11: the query does not hide the path
    ("GET /ok?next=/admin", 200, ("GET", "/ok?next=/admin")),  # 11
    ("GET /admin#x", 400, None),  # 12: fragment
    ("GET /x/..;p/admin", 403, None),  # 13: ;params stripped from dot segments
    ("GET /ok%00", 400, None),  # 14
    ("GET /public/%2e%2e/admin/x", 403, None),  # the vector
]


@pytest.mark.parametrize(("line", "status", "forwarded"), VECTORS, ids=[v[0] for v in VECTORS])
def test_path_vectors(api: tuple[Mesh, NaiveApp, int], line: str, status: object, forwarded: object) -> None:
    mesh, app, port = api
    (answer,) = _exchange(mesh, port, f"{line} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
    assert _status(answer) in (status if isinstance(status, tuple) else (status,)), answer[:200]
    if forwarded is None:
        assert app.take() == []
    else:
        wait_for(lambda: app.seen.requests, 5, "the request at the app")
        assert [(m, t) for m, t, _ in app.take()] == [forwarded]


def test_header_vectors(api: tuple[Mesh, NaiveApp, int]) -> None:
    mesh, app, port = api
    # 15: case-sensitive Exact fails and P2 has no PUT.
    (a,) = _exchange(mesh, port, b"PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: Admin\r\nContent-Length: 0\r\n\r\n")
    assert _status(a) == 403
    # 16: repeated headers are matched joined ("user,admin"): Exact fails.
    raw = b"PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: user\r\nX-Role: admin\r\nContent-Length: 0\r\n\r\n"
    (a,) = _exchange(mesh, port, raw)
    assert _status(a) == 403
    assert app.take() == []
    (a,) = _exchange(mesh, port, b"PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: admin\r\nContent-Length: 0\r\n\r\n")
    assert _status(a) == 200
    assert [(m, t) for m, t, _ in app.take()] == [("PUT", "/reports")]


def test_head_denied_has_no_body_and_the_pipeline_stays_in_step(api: tuple[Mesh, NaiveApp, int]) -> None:
    mesh, app, port = api
    # 17: a 403 to HEAD has content-length 19 and no body; the next answer must be read as the next answer.
    raw = b"HEAD /ok HTTP/1.1\r\nHost: api\r\n\r\nGET /ok HTTP/1.1\r\nHost: api\r\n\r\n"
    first, second = _exchange(mesh, port, raw, responses=2)
    assert _status(first) == 403
    assert first.endswith(b"\r\n\r\n"), first
    assert b"content-length: 19" in first.lower()
    assert _status(second) == 200 and second.endswith(b"ok")
    assert [(m, t) for m, t, _ in app.take()] == [("GET", "/ok")]


def test_absolute_form_host_and_framing(api: tuple[Mesh, NaiveApp, int]) -> None:
    mesh, app, port = api
    # 18: absolute form: judged (and forwarded) as origin form.
    (a,) = _exchange(mesh, port, b"GET http://evil.example/admin HTTP/1.1\r\nHost: api\r\n\r\n")
    assert _status(a) == 403
    (a,) = _exchange(mesh, port, b"GET http://api/ok HTTP/1.1\r\nHost: api\r\n\r\n")
    assert _status(a) == 200
    assert [(m, t) for m, t, _ in app.take()] == [("GET", "/ok")]
    # 19: no Host; two Hosts.
    for raw in (b"GET /ok HTTP/1.1\r\n\r\n", b"GET /ok HTTP/1.1\r\nHost: api\r\nHost: other\r\n\r\n"):
        (a,) = _exchange(mesh, port, raw)
        assert _status(a) == 400, raw
    # 20: Content-Length with Transfer-Encoding.
    raw = b"POST /ok HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    (a,) = _exchange(mesh, port, raw)
    assert _status(a) == 400
    assert app.take() == []


def test_connection_cannot_strip_content_length(api: tuple[Mesh, NaiveApp, int]) -> None:
    """The core issue's smuggling: `Connection: content-length` must not make the body a second request."""
    mesh, app, port = api
    body = b"GET /admin/smuggled HTTP/1.1\r\nHost: api\r\n\r\n"
    raw = (
        b"POST /public HTTP/1.1\r\nHost: api\r\nConnection: content-length\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answers = _exchange(mesh, port, raw)
    assert _status(answers[0]) in (200, 400)
    seen = app.take()
    assert ("GET", "/admin/smuggled") not in [(m, t) for m, t, _ in seen]
    assert [(m, t, b) for m, t, b in seen] in ([], [("POST", "/public", body)])


def test_unknown_caller_is_denied(api: tuple[Mesh, NaiveApp, int]) -> None:
    mesh, app, port = api
    (a,) = _exchange(mesh, port, b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\n", service="intruder")
    assert _status(a) == 403
    assert app.take() == []
