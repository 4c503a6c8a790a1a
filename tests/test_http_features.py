"""HTTP features through a real meshgw upstream sidecar, with real HTTP traffic over mTLS.

The endpoints of ``api`` are small TLS apps presenting ``api``'s Connect leaf and requiring client
certificates (what a sidecar's inbound does), so one test can run several instances, make them fail on
demand (status codes, resets), slow them down, and see which one served each request. Traffic that must
cross two real sidecars (trace context, access logs on both ends, back-pressure) uses an ``api`` sidecar.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from http_app import HTTPApp, http_app, mesh_server_context
from mesh import Mesh, Sidecar, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("http_data_path")]


# ---------------------------------------------------------------------- helpers


@contextmanager
def instances(
    mesh: Mesh,
    n: int,
    service: str = "api",
    weights: list[int] | None = None,
    meta: list[dict[str, str]] | None = None,
) -> Iterator[list[HTTPApp]]:
    """``n`` endpoints of ``service`` registered in the local catalog (with Weights.Passing and meta)."""
    cert, key = mesh.leaf_files(service)
    ctx = mesh_server_context(cert, key, mesh.root / "ca" / "ca.crt")
    with ExitStack() as stack:
        apps = [stack.enter_context(http_app(f"{service}-{i}", ctx)) for i in range(n)]
        for i, app in enumerate(apps):
            entry: dict[str, Any] = {"address": "127.0.0.1", "port": app.port, "datacenter": "dc1"}
            if weights:
                entry["weight"] = weights[i]
            if meta:
                entry["meta"] = meta[i]
            mesh.catalog.setdefault(service, []).append(entry)
        mesh.write_catalog()
        mesh.allow("web", service)
        yield apps


def web(mesh: Mesh, upstream: dict[str, Any] | None = None, name: str = "web", **extra: Any) -> tuple[Sidecar, int]:
    """A client-side sidecar with an http upstream to ``api`` (plus any upstream settings given)."""
    port = free_port()
    settings = {"protocol": "http", **(upstream or {})}
    sc = mesh.sidecar(name, inbound=False, upstreams={"api": port}, upstream=settings, **extra)
    return sc, port


def wait_endpoints(sc: Sidecar, n: int) -> None:
    wait_for(lambda: sc.metric("meshgw_upstream_healthy_endpoints", upstream="api.dc1") == n, 10, f"{n} endpoints")


class Client:
    """A keep-alive HTTP/1.1 client to the upstream listener."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        out = {k.lower(): v for k, v in r.getheaders()}
        if r.will_close:
            self.conn.close()
        return r.status, data, out

    def app(self, path: str = "/", **kw: Any) -> str:
        status, body, _ = self.request("GET", path, **kw)
        assert status == 200, (status, body)
        return json.loads(body)["app"]

    def close(self) -> None:
        self.conn.close()


def served(apps: list[HTTPApp]) -> Counter[str]:
    return Counter(r["app"] for a in apps for r in a.requests)


# ---------------------------------------------------------------------- load balancing


def test_round_robin_with_consul_weights(mesh: Mesh) -> None:
    with instances(mesh, 3, weights=[1, 2, 3]):
        sc, port = web(mesh)
        wait_endpoints(sc, 3)
        c = Client(port)
        got = Counter(c.app(f"/rr/{i}") for i in range(60))
        # Weights.Passing 1:2:3, smooth weighted round robin: exact over whole cycles of 6.
        assert got == Counter({"api-0": 10, "api-1": 20, "api-2": 30})
        assert sc.metric("meshgw_http_responses_total", listener="upstream:api", code_class="2xx") == 60


def test_random_within_statistical_bounds(mesh: Mesh) -> None:
    with instances(mesh, 3) as apps:
        sc, port = web(mesh, {"load_balancer": {"policy": "random"}})
        wait_endpoints(sc, 3)
        c = Client(port)
        got = Counter(c.app() for _ in range(300))
        # Binomial(300, 1/3): mean 100, sd 8.2; 55..145 is beyond 5 sd.
        assert all(55 <= got[f"api-{i}"] <= 145 for i in range(3)), got
        assert served(apps) == got


def test_least_request_avoids_the_busy_endpoint(mesh: Mesh) -> None:
    with instances(mesh, 3) as apps:
        apps[0].delay = 0.3
        sc, port = web(mesh, {"load_balancer": {"policy": "least_request"}})
        wait_endpoints(sc, 3)

        def worker(_: int) -> list[str]:
            c = Client(port)
            try:
                return [c.app() for _ in range(10)]
            finally:
                c.close()

        with ThreadPoolExecutor(6) as pool:
            got = Counter(a for batch in pool.map(worker, range(6)) for a in batch)
        # With six requests in flight the slow endpoint nearly always has more of them than the others.
        assert got["api-0"] < got["api-1"] and got["api-0"] < got["api-2"], got


@pytest.mark.parametrize(
    ("policy", "hash_policy", "header"),
    [
        ("ring_hash", {"field": "header", "field_value": "x-user"}, "x-user"),
        ("maglev", {"field": "cookie", "field_value": "session"}, "cookie"),
    ],
)
def test_hash_policies_stick(mesh: Mesh, policy: str, hash_policy: dict[str, str], header: str) -> None:
    with instances(mesh, 3):
        sc, port = web(mesh, {"load_balancer": {"policy": policy, "hash_policies": [hash_policy]}})
        wait_endpoints(sc, 3)
        c = Client(port)

        def value(i: int) -> str:
            return f"user{i}" if header == "x-user" else f"a=b; session=user{i}"

        first = {i: c.app(headers={header: value(i)}) for i in range(30)}
        again = {i: c.app(headers={header: value(i)}) for i in range(30)}
        assert first == again  # the same key always reaches the same endpoint
        assert len(set(first.values())) >= 2  # and keys spread over endpoints


def test_source_ip_hash(mesh: Mesh) -> None:
    with instances(mesh, 3):
        sc, port = web(mesh, {"load_balancer": {"policy": "ring_hash", "hash_policies": [{"source_ip": True}]}})
        wait_endpoints(sc, 3)
        c = Client(port)
        assert len({c.app() for _ in range(20)}) == 1  # one client address, one endpoint


# ---------------------------------------------------------------------- retries

NO_OUTLIER = {"max_failures": 0, "consecutive_gateway_failure": 0}


def test_retry_on_reset_but_not_on_post(mesh: Mesh) -> None:
    with instances(mesh, 2) as apps:
        apps[0].fail_reset = True
        sc, port = web(mesh, {"passive_health_check": NO_OUTLIER})
        wait_endpoints(sc, 2)
        c = Client(port)
        for i in range(10):
            assert c.app(f"/get/{i}") == "api-1"  # every GET that met the reset was retried on api-1
        # Round robin alternates over the picks, the retries' included: every GET but maybe the first (the start
        # is random) meets api-0 first, and every one of those resets was retried.
        resets = len([r for r in apps[0].requests if r.get("reset")])
        assert resets >= 9 and sc.metric("meshgw_http_retries_total", reason="reset") == resets
        statuses = Counter(Client(port).request("POST", f"/post/{i}", body=b"x")[0] for i in range(10))
        # POST is not idempotent: the five that met the reset get a 503, and reached api-0 exactly once each.
        assert statuses == Counter({200: 5, 503: 5})
        assert len([r for r in apps[0].requests if r["method"] == "POST"]) == 5
        assert sc.metric("meshgw_http_retries_total", reason="reset") == resets


def test_retry_on_status_codes_and_non_idempotent_when_configured(mesh: Mesh) -> None:
    with instances(mesh, 2) as apps:
        apps[0].fail_status = 503
        retries = {"retry_on_status_codes": [503], "retry_non_idempotent": True}
        sc, port = web(mesh, {"retries": retries, "passive_health_check": NO_OUTLIER})
        wait_endpoints(sc, 2)
        c = Client(port)
        assert all(c.request("POST", f"/p/{i}", body=b"abc")[0] == 200 for i in range(8))
        assert sc.metric("meshgw_http_retries_total", reason="status") == len(apps[0].requests) >= 4
        assert all(r["size"] == 3 for r in apps[1].requests)  # the body was replayed whole


def test_retry_budget_exhaustion(mesh: Mesh) -> None:
    with instances(mesh, 2) as apps:
        apps[0].fail_status = 503
        apps[1].delay = 1.0
        retries = {"retry_on_status_codes": [503], "budget_percent": 0, "min_retry_concurrency": 1}
        sc, port = web(mesh, {"retries": retries, "passive_health_check": NO_OUTLIER})
        wait_endpoints(sc, 2)
        # A first request ends on api-1 (directly, or after a retry): round robin's next pick is api-0.
        assert Client(port).app("/probe") == "api-1"
        results: list[int] = []
        # A: api-0 answers 503, the retry goes to api-1 and stays there a second: the budget (one retry) is in use.
        a = threading.Thread(target=lambda: results.append(Client(port).request("GET", "/a")[0]))
        a.start()
        wait_for(lambda: apps[1].in_flight == 1, 10, "A's retry in flight")
        # B: round robin sends it to api-0; its retry does not fit in the budget, so api-0's 503 goes out as is.
        status, body, _ = Client(port).request("GET", "/b")
        assert status == 503 and b"api-0 fails" in body
        a.join(15)
        assert results == [200]
        assert sc.metric("meshgw_http_retry_budget_exhausted_total") == 1
        assert sc.metric("meshgw_http_retries_total", reason="status") in (1, 2)  # A (and the probe, maybe)


# ---------------------------------------------------------------------- circuit breakers


def test_max_concurrent_requests_breaker(mesh: Mesh) -> None:
    with instances(mesh, 1) as apps:
        apps[0].delay = 1.0
        sc, port = web(mesh, {"limits": {"max_concurrent_requests": 1}})
        wait_endpoints(sc, 1)
        a = threading.Thread(target=lambda: Client(port).request("GET", "/slow-a"))
        a.start()
        wait_for(lambda: apps[0].in_flight == 1, 10, "A in flight")
        status, _, headers = Client(port).request("GET", "/b")
        assert status == 503 and headers["x-meshgw-overloaded"] == "max_concurrent_requests"
        a.join(15)
        assert sc.metric("meshgw_http_circuit_breaker_trips_total", breaker="max_concurrent_requests") == 1


def test_max_connections_queues_then_max_pending_refuses(mesh: Mesh) -> None:
    with instances(mesh, 1) as apps:
        apps[0].delay = 1.0
        sc, port = web(mesh, {"limits": {"max_connections": 1, "max_pending_requests": 1}})
        wait_endpoints(sc, 1)
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda p=p: results.append(Client(port).request("GET", p)[0])) for p in ("/a", "/b")
        ]
        threads[0].start()
        wait_for(lambda: apps[0].in_flight == 1, 10, "A in flight on the only connection")
        threads[1].start()  # B waits for that connection (pending)
        wait_for(lambda: sc.metric("meshgw_http_pending_requests", cluster="api") == 1, 10, "B pending")
        status, _, headers = Client(port).request("GET", "/c")
        assert status == 503 and headers["x-meshgw-overloaded"] == "max_pending_requests"
        for t in threads:
            t.join(15)
        assert results == [200, 200]
        assert len({r["peer_port"] for r in apps[0].requests}) == 1  # A and B shared one connection


def test_max_connections_queue_serves_requests_of_either_data_path(mesh: Mesh) -> None:
    """An HTTP/1.0 request is served by the Python proxy even where the native engine serves the rest: waiting
    at max_connections behind a native request, it must get the connection's slot when that one is done."""
    with instances(mesh, 1) as apps:
        apps[0].delay = 1.0
        sc, port = web(mesh, {"limits": {"max_connections": 1, "max_pending_requests": 2}})
        wait_endpoints(sc, 1)
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(Client(port).request("GET", "/a")[0]))
        first.start()
        wait_for(lambda: apps[0].in_flight == 1, 10, "A in flight on the only connection")
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /b HTTP/1.0\r\nHost: api\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        first.join(15)
        assert results == [200] and data.startswith(b"HTTP/1.1 200"), data[:200]
        assert time.monotonic() - started < 5  # served after A, not at a timeout


# ---------------------------------------------------------------------- outlier detection


def test_outlier_ejection_return_and_growing_time(mesh: Mesh) -> None:
    with instances(mesh, 3) as apps:
        apps[0].fail_status = 500
        phc = {"max_failures": 3, "interval": "1s", "base_ejection_time": "500ms", "max_ejection_percent": 50}
        sc, port = web(mesh, {"passive_health_check": phc, "retries": {"num_retries": 0}})
        wait_endpoints(sc, 3)
        c = Client(port)
        statuses = Counter(c.request("GET", "/x")[0] for _ in range(9))
        assert statuses == Counter({200: 6, 500: 3})  # three 500s in a row at api-0: ejected
        assert sc.metric("meshgw_outlier_ejections_total", reason="consecutive_5xx") == 1
        before = len(apps[0].requests)
        assert {c.app() for _ in range(20)} == {"api-1", "api-2"}
        assert len(apps[0].requests) == before
        # Back in service after base_ejection_time; healthy now, it serves again.
        apps[0].fail_status = 0
        wait_for(lambda: sc.metric("meshgw_outlier_ejected_endpoints", cluster="api") == 0, 10, "return")
        assert "api-0" in {c.app() for _ in range(9)}
        # Failing again: the second ejection lasts twice as long (base x ejections).
        apps[0].fail_status = 500
        wait_for(lambda: c.request("GET", "/y")[0] and sc.metric("meshgw_outlier_ejections_total") == 2, 10, "2nd")
        assert "ejected for 0.5s" in sc.log_text() and "ejected for 1.0s" in sc.log_text()


def test_max_ejection_percent_caps_ejections(mesh: Mesh) -> None:
    with instances(mesh, 3) as apps:
        apps[0].fail_status = 502
        apps[1].fail_status = 502
        phc = {
            "max_failures": 0,
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "max_ejection_percent": 30,
            "base_ejection_time": "30s",
        }
        sc, port = web(mesh, {"passive_health_check": phc, "retries": {"num_retries": 0}})
        wait_endpoints(sc, 3)
        c = Client(port)
        for _ in range(30):
            c.request("GET", "/g")
        # One ejection (0 % ejected before it); a second would start from 33 % >= 30 %: refused.
        assert sc.metric("meshgw_outlier_ejections_total", reason="consecutive_gateway_failure") == 1
        assert sc.metric("meshgw_outlier_ejected_endpoints", cluster="api") == 1


# ---------------------------------------------------------------------- timeouts


def test_idle_timeout_closes_keepalive_connections(mesh: Mesh) -> None:
    with instances(mesh, 1) as apps:
        sc, port = web(mesh, {"idle_timeout": "300ms"})
        wait_endpoints(sc, 1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /i HTTP/1.1\r\nHost: api\r\n\r\n")
            data = b""
            while b'"app"' not in data:
                data += s.recv(65536)
            # Nothing more is sent: the sidecar closes the idle keep-alive connection.
            while chunk := s.recv(65536):
                data += chunk
        assert sc.metric("meshgw_http_timeouts_total", kind="idle") >= 1
        # And the idle pooled connection to the endpoint is closed too: a new request opens a new one.
        wait_for(lambda: Client(port).app("/j") == "api-0", 10, "second request")
        assert len({r["peer_port"] for r in apps[0].requests}) == 2


def test_connect_timeout_then_retry_elsewhere(mesh: Mesh) -> None:
    # A listening socket whose accept queue is full and never drained: SYNs go unanswered, connect hangs.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(blackhole.getsockname())
        fillers.append(f)
    try:
        with instances(mesh, 1):
            mesh.catalog["api"].insert(0, {"address": "127.0.0.1", "port": blackhole.getsockname()[1]})
            mesh.write_catalog()
            sc, port = web(mesh, {"connect_timeout": "200ms", "passive_health_check": NO_OUTLIER})
            wait_endpoints(sc, 2)
            c = Client(port)
            assert {c.app() for _ in range(4)} == {"api-0"}
            assert sc.metric("meshgw_http_timeouts_total", kind="connect") >= 1
            assert sc.metric("meshgw_http_retries_total", reason="connect_failure") >= 1
    finally:
        for f in fillers:
            f.close()
        blackhole.close()


# ---------------------------------------------------------------------- streaming with back-pressure


def rss(sc: Sidecar) -> int:
    assert sc.proc is not None
    for line in Path(f"/proc/{sc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled(sample: Any, what: str, timeout: float = 30.0) -> Any:
    """Wait until ``sample()`` stops changing (two readings 0.3 s apart within 1 MiB), return the value."""
    last = [sample()]

    def still() -> bool:
        time.sleep(0.3)  # the interval between two readings, not a synchronisation
        now = sample()
        done = abs(now - last[0]) < (1 << 20)
        last[0] = now
        return done

    wait_for(still, timeout, what)
    return last[0]


@pytest.fixture
def pair(mesh: Mesh) -> Iterator[tuple[HTTPApp, Sidecar, Sidecar, int]]:
    """web (upstream, http) → api sidecar (inbound, http) → api app: two real sidecars."""
    with http_app("api") as app:
        api = mesh.sidecar("api", app.port, service={"protocol": "http"})
        mesh.allow("web", "api")
        sc, port = web(mesh)
        wait_endpoints(sc, 1)
        yield app, api, sc, port


def test_upload_larger_than_memory_is_streamed_with_back_pressure(pair: tuple[HTTPApp, Sidecar, Sidecar, int]) -> None:
    app, api, sc, port = pair
    base = rss(api) + rss(sc)
    size = 256 << 20
    sent = [0]
    result: list[Any] = []

    def upload() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"PUT /hold HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"u" * (1 << 20)
            for _ in range(size >> 20):
                s.sendall(block)
                sent[0] += len(block)
            data = b""
            while not data.endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            result.append(data)

    t = threading.Thread(target=upload)
    t.start()
    try:
        stalled_at = settled(lambda: sent[0], "the upload to stall while the app holds")
        # The client is held back: the sidecars did not soak the body up.
        assert stalled_at < 64 << 20
        assert rss(api) + rss(sc) - base < 48 << 20
    finally:
        app.hold.set()
    t.join(60)
    assert result and b'"size": %d' % size in result[0]


def test_download_to_a_slow_reader_is_streamed_with_back_pressure(
    pair: tuple[HTTPApp, Sidecar, Sidecar, int],
) -> None:
    _app, api, sc, port = pair
    base = rss(api) + rss(sc)
    size = 256 << 20
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: api\r\n\r\n" % size)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # Not reading: the sidecars' memory stays put while the app is held back.
        grown = settled(lambda: rss(api) + rss(sc), "sidecar memory to settle") - base
        assert grown < 48 << 20
        got = len(first) - first.index(b"\r\n\r\n") - 4
        while chunk := s.recv(1 << 20):
            got += len(chunk)
            if chunk.endswith(b"0\r\n\r\n"):
                break
    assert got > size  # the body (chunked, so a little more than size)


# ---------------------------------------------------------------------- access logs and trace context


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_access_logs_and_trace_context_across_two_hops(mesh: Mesh) -> None:
    with http_app("api") as app:
        # api: the default fields, to stdout (the sidecar's log here); web: chosen fields, to a file.
        api = mesh.sidecar("api", app.port, service={"protocol": "http"}, access_log={"type": "stdout"})
        mesh.allow("web", "api")
        fields = [
            "method",
            "path",
            "status",
            "response_flags",
            "bytes_received",
            "bytes_sent",
            "upstream_cluster",
            "upstream_host",
            "request_id",
            "traceparent",
            "trace_id",
            "source_service",
            "user_agent",
        ]
        sc, port = web(mesh, access_log={"path": "logs/web-access.log", "fields": fields, "flush_interval": "50ms"})
        wait_endpoints(sc, 1)
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        c = Client(port)
        status, body, _ = c.request(
            "POST",
            "/t?q=1",
            body=b"hello",
            headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "user-agent": "t/1"},
        )
        assert status == 200
        seen = json.loads(body)["headers"]
        path = mesh.root / "logs" / "web-access.log"
        wait_for(lambda: path.exists() and json_lines(path.read_text()), 10, "web access log line")
        wait_for(lambda: json_lines(api.log_text()), 10, "api access log line")
        (w,) = json_lines(path.read_text())
        (a,) = json_lines(api.log_text())
        assert list(w) == fields  # exactly the configured fields, in order
        assert w["method"] == "POST" and w["path"] == "/t?q=1" and w["status"] == 200 and w["response_flags"] == "-"
        assert w["bytes_received"] == 5 and w["bytes_sent"] == len(body) and w["user_agent"] == "t/1"
        assert w["upstream_cluster"] == "api" and w["upstream_host"] == f"127.0.0.1:{mesh.inbound_port('api')}"
        assert w["source_service"] == "web"
        # One request id across both hops (made at the first, kept at the second), the same trace id, and a new
        # span at each hop: web's span is the parent the api sidecar saw, api's the one the app saw.
        assert a["request_id"] == w["request_id"] == seen["x-request-id"]
        assert a["trace_id"] == w["trace_id"] == trace
        spans = {w["traceparent"].split("-")[2], a["traceparent"].split("-")[2], "00f067aa0ba902b7"}
        assert len(spans) == 3 and seen["traceparent"] == a["traceparent"]
        assert a["source_service"] == "web" and a["upstream_cluster"] == "local_app" and a["listener"] == "inbound"
        assert set(a) >= {"start_time", "duration_ms", "protocol", "downstream_address", "retries", "route"}
        # A denied request is logged too, with the RBAC flag (no intention allows intruder).
        mesh.intentions = [
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [{"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/no"}}]}],
            }
        ]
        mesh.write_intentions()
        wait_for(lambda: c.request("GET", "/no")[0] == 403, 10, "L7 deny")
        wait_for(
            lambda: any(r["status"] == 403 and r["response_flags"] == "RBAC" for r in json_lines(api.log_text())),
            10,
            "the 403 in api's access log",
        )


# ---------------------------------------------------------------------- routing, splitting, subsets

CHAIN = [
    {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"PathPrefix": "/admin/", "Methods": ["GET"]}},
                "Destination": {
                    "Service": "admin",
                    "PrefixRewrite": "/",
                    "RequestHeaders": {"Add": {"x-routed": "admin"}, "Remove": ["x-secret"]},
                    "ResponseHeaders": {"Set": {"x-route": "admin"}, "Remove": ["x-app"]},
                },
            },
            {
                "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
                "Destination": {"ServiceSubset": "v2"},
            },
            {
                "Match": {"HTTP": {"QueryParam": [{"Name": "pin", "Exact": "v1"}]}},
                "Destination": {"ServiceSubset": "v1"},
            },
            {"Match": {"HTTP": {"PathPrefix": "/slow/"}}, "Destination": {"RequestTimeout": "300ms"}},
            {
                "Match": {"HTTP": {"PathRegex": "/status/5[0-9]{2}"}},
                "Destination": {"ServiceSubset": "v1", "NumRetries": 2, "RetryOnStatusCodes": [503]},
            },
        ],
    },
    {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [
            {"Weight": 80, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-split": "v1"}}},
            {"Weight": 20, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-split": "v2"}}},
        ],
    },
    {
        "Kind": "service-resolver",
        "Name": "api",
        "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
    },
]


def test_routes_splits_subsets_and_header_rules(mesh: Mesh) -> None:
    meta = [{"version": "v1"}, {"version": "v2"}]
    with instances(mesh, 2, meta=meta) as apps, instances(mesh, 1, service="admin") as admin:
        sc, port = web(mesh, {"passive_health_check": NO_OUTLIER}, config_entries=CHAIN)
        wait_endpoints(sc, 2)
        c = Client(port)
        # Path prefix + method → another service, prefix rewritten, request and response headers changed.
        status, body, headers = c.request("GET", "/admin/users?x=1", headers={"x-secret": "s", "x-keep": "k"})
        seen = json.loads(body)
        assert status == 200 and seen["app"] == "admin-0" and seen["path"] == "/users?x=1"
        assert seen["headers"]["x-routed"] == "admin" and "x-secret" not in seen["headers"]
        assert seen["headers"]["x-keep"] == "k"
        assert headers["x-route"] == "admin" and "x-app" not in headers
        # Not a GET: no match, so the default route (api) answers it.
        assert c.request("POST", "/admin/users")[0] == 200 and len(admin[0].requests) == 1
        # Header and query matches → subsets.
        assert {c.app(headers={"x-canary": "1"}) for _ in range(10)} == {"api-1"}
        assert {c.app("/p?a=b&pin=v1") for _ in range(10)} == {"api-0"}
        # The default route goes through the splitter: 80/20 between the subsets, with each split's header.
        got = Counter()
        for _ in range(400):
            status, body, _ = c.request("GET", "/split")
            seen = json.loads(body)
            got[seen["app"]] += 1
            assert seen["headers"]["x-split"] == {"api-0": "v1", "api-1": "v2"}[seen["app"]]
        # Binomial(400, 0.2): mean 80, sd 8; 40..120 is 5 sd.
        assert 40 <= got["api-1"] <= 120 and got["api-0"] + got["api-1"] == 400, got
        # Per-route request timeout: 504 after 300 ms instead of the upstream's 15 s.
        status, body, _ = c.request("GET", "/slow/3")
        assert status == 504
        # Per-route retries (RetryOnStatusCodes): 503 tried 1 + 2 times on the v1 subset, then passed on.
        before = len(apps[0].requests)
        assert c.request("GET", "/status/503")[0] == 503
        assert len(apps[0].requests) - before == 3
        assert c.request("GET", "/status/500")[0] == 500
        assert len(apps[0].requests) - before == 4  # 500 is not in RetryOnStatusCodes
        # Per-route and per-cluster metrics (the chain has routes, so they are kept).
        assert sc.metric("meshgw_http_route_responses_total", route="api/0", code_class="2xx") == 1
        assert sc.metric("meshgw_http_upstream_responses_total", cluster="v2.api") >= 40
        assert sc.metric("meshgw_http_route_responses_total", route="api/3", code_class="5xx") == 1


# ---------------------------------------------------------------------- the same entries from Consul


def consul_sidecar(
    root: Path, consul: Any, name: str, app_port: int, upstream: int | None = None, **extra: Any
) -> Sidecar:
    """A meshgw sidecar with Consul as control plane and CA (as in test_consul_e2e), protocol http."""
    admin = free_port()
    cfg: dict[str, Any] = {
        "datacenter": "dc1",
        "service": {"name": name, "port": app_port, "protocol": "http"},
        "control_plane": {"type": "consul", "consul": {"address": consul.address, "wait": "10s"}},
        "certificates": {"type": "consul"},
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "drain_timeout": "5s",
        "inbound": {"bind": f"127.0.0.1:{free_port()}"},
        **extra,
    }
    if upstream:
        cfg["upstreams"] = [{"service": "api", "bind": f"127.0.0.1:{upstream}", "protocol": "http"}]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Sidecar(None, name, path, admin, root / f"{name}.log").start()  # type: ignore[arg-type]


def test_routes_and_splits_from_consul_config_entries(tmp_path: Path) -> None:
    from doubles.consul import ConsulDoubleThread

    sidecars: list[Sidecar] = []
    with ConsulDoubleThread() as consul, http_app("api") as api, http_app("api-v2") as v2, http_app("admin") as adm:

        def put(body: dict[str, Any]) -> None:
            r = urllib_put(f"{consul.url}/v1/config", body)
            assert r == 200

        try:
            for src, dst in (("web", "api"), ("web", "api-v2"), ("web", "admin")):
                put({"Kind": "service-intentions", "Name": dst, "Sources": [{"Name": src, "Action": "allow"}]})
            put(
                {
                    "Kind": "service-router",
                    "Name": "api",
                    "Routes": [
                        {
                            "Match": {"HTTP": {"PathPrefix": "/admin"}},
                            "Destination": {"Service": "admin", "ResponseHeaders": {"Add": {"x-via": "router"}}},
                        }
                    ],
                }
            )
            put(
                {
                    "Kind": "service-splitter",
                    "Name": "api",
                    "Splits": [{"Weight": 50, "Service": "api"}, {"Weight": 50, "Service": "api-v2"}],
                }
            )
            for name, app in (("api", api), ("api-v2", v2), ("admin", adm)):
                sidecars.append(consul_sidecar(tmp_path, consul, name, app.port))
            up = free_port()
            sidecars.append(consul_sidecar(tmp_path, consul, "web", free_port(), upstream=up))
            c = Client(up)

            def both() -> bool:
                # Each split target answers once its instances are watched: until then a request may get 503.
                apps = set()
                for _ in range(20):
                    status, body, _ = c.request("GET", "/s")
                    if status != 200:
                        return False
                    apps.add(json.loads(body)["app"])
                return apps == {"api", "api-v2"}

            wait_for(both, 20, "the splitter's two services answering")
            # admin's instances are watched once the router names it: they may come a moment after api-v2's.
            wait_for(lambda: c.request("GET", "/admin/x")[0] == 200, 10, "the router's target answering")
            status, body, headers = c.request("GET", "/admin/x")
            assert status == 200 and json.loads(body)["app"] == "admin" and headers["x-via"] == "router"
            # A change in Consul applies live: without the splitter everything goes to api.
            r = urllib_delete(f"{consul.url}/v1/config/service-splitter/api")
            assert r == 200
            wait_for(lambda: {json.loads(c.request("GET", "/s")[1])["app"] for _ in range(10)} == {"api"}, 15, "api")
        finally:
            for sc in sidecars:
                sc.stop()


def urllib_put(url: str, body: Any) -> int:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def urllib_delete(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10) as r:
        return r.status
