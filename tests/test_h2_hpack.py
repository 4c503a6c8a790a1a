"""How the sidecars' HTTP/2 client hops encode the per-request fields (RFC 7541): ``x-request-id`` and
``traceparent`` carry a value made for one request, so after the first request on a connection (which puts the
two names in the peer's HPACK table) they go out "never indexed" and fill no table, at the app's end as between
the sidecars (both hops are the same client). The values themselves are unchanged: an id per request, the
caller's trace continued."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from h2_app import H2App
from mesh import Mesh, free_port

pytestmark = pytest.mark.slow

PER_REQUEST = ["traceparent", "x-request-id"]
CALLER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_per_request_fields_go_out_never_indexed_after_the_first_request(mesh: Mesh) -> None:
    mesh.allow("web", "api")
    with H2App() as app:
        mesh.sidecar("api", app.port, service={"protocol": "http2"})
        up = free_port()
        mesh.sidecar("web", upstreams={"api": up}, upstream={"protocol": "http2"})
        conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
        seen: list[dict[str, Any]] = []
        for i in range(4):
            headers = {"Host": "api"}
            if i == 3:
                headers["traceparent"] = CALLER_TRACE
            conn.request("GET", f"/r{i}", headers=headers)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, body
            seen.append(json.loads(body))
        conn.close()
        assert app.connections == 1, "the requests shared one h2c connection to the app"
    # The connection's first request indexes the two fields (their names enter the app's table) ...
    assert seen[0]["never_indexed"] == [], seen[0]
    # ... every later one sends them never indexed; the other fields stay indexable.
    for s in seen[1:]:
        assert s["never_indexed"] == PER_REQUEST, s
    ids = [s["headers"]["x-request-id"] for s in seen]
    assert len(set(ids)) == len(ids), "an id per request"
    trace = seen[3]["headers"]["traceparent"].split("-")
    assert trace[1] == CALLER_TRACE.split("-")[1] and trace[2] != CALLER_TRACE.split("-")[2], trace
