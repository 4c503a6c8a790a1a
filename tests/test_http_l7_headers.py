"""L7 header permissions through two real sidecars (protocol http on both hops), on both HTTP data paths:
Contains, IgnoreCase and repeated headers matched joined with "," (l7-security.md §2.3, §6 item 9, §7 #15/#16)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from http_app import http_app
from mesh import Mesh, free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("http_data_path")]

INTENTIONS = {
    "Kind": "service-intentions",
    "Name": "api",
    "Sources": [
        {
            "Name": "web",
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                {"Action": "allow", "HTTP": {"PathExact": "/exact", "Header": [{"Name": "X-Role", "Exact": "admin"}]}},
                {
                    "Action": "allow",
                    "HTTP": {"PathExact": "/contains", "Header": [{"Name": "X-Role", "Contains": "admin"}]},
                },
                {
                    "Action": "allow",
                    "HTTP": {
                        "PathExact": "/ignore-case",
                        "Header": [{"Name": "X-Role", "Exact": "admin", "IgnoreCase": True}],
                    },
                },
            ],
        },
    ],
}


@pytest.fixture
def upstream(mesh: Mesh) -> Iterator[int]:
    mesh.intentions = [INTENTIONS]
    mesh.write_intentions()
    with http_app("api") as app:
        mesh.sidecar("api", app.port, service={"protocol": "http"})
        up = free_port()
        mesh.sidecar("web", upstreams={"api": up}, upstream={"protocol": "http"})
        yield up


def request(up: int, path: str, roles: list[str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
    try:
        conn.putrequest("GET", path)
        for role in roles:  # one header line per value: the repeated-header case
            conn.putheader("X-Role", role)
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


CASES = [
    ("/exact", ["admin"], 200),
    ("/exact", ["Admin"], 403),  # #15: Exact is case-sensitive
    ("/exact", ["user", "admin"], 403),  # #16: matched as "user,admin"
    ("/contains", ["user", "admin"], 200),  # #16 with Contains
    ("/contains", ["user"], 403),
    ("/contains", [], 403),
    ("/ignore-case", ["ADMIN"], 200),
    ("/ignore-case", ["user", "ADMIN"], 403),
    ("/admin", ["admin"], 403),
]


def test_header_permissions_on_the_wire(upstream: int) -> None:
    got = [(path, roles, request(upstream, path, roles)) for path, roles, _ in CASES]
    assert got == CASES
