"""gRPC through two sidecars with ``protocol: grpc`` (http2-grpc.md §2, §3, §7): a grpcio client speaks h2c to the
caller's upstream port, the sidecars speak h2 over mTLS (ALPN h2), the callee's sidecar speaks h2c to a grpcio
server. Every gRPC shape, large messages, deadlines, cancellation, statuses and trailers passed through, L7
intentions on ``/package.Service/Method`` (PERMISSION_DENIED as Envoy answers), many calls on one channel, and
retries on ``unavailable``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_app import Client, EchoApp
from mesh import Mesh, free_port, wait_for

pytestmark = pytest.mark.slow

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
        },
    ],
}

BIG = 4 << 20


class Pair:
    def __init__(self, mesh: Mesh, app: EchoApp, up: int) -> None:
        self.mesh = mesh
        self.app = app
        self.up = up
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{up}",
            options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)],
        )
        self.client = Client(self.channel)

    @property
    def web(self):  # type: ignore[no-untyped-def]
        return self.mesh.sidecars[-1]

    @property
    def api(self):  # type: ignore[no-untyped-def]
        return self.mesh.sidecars[0]


def _web(mesh: Mesh, api_upstream: dict[str, object]) -> int:
    up = free_port()
    log = {"path": "access.log", "fields": ["path", "status", "grpc_status"]}
    mesh.sidecar("web", upstreams={"api": up}, access_log=log, upstream={"protocol": "grpc", **api_upstream})
    return up


@pytest.fixture
def pair(mesh: Mesh) -> Iterator[Pair]:
    mesh.intentions = [L7]
    mesh.write_intentions()
    app = EchoApp(name="api")
    try:
        mesh.sidecar("api", app.port, service={"protocol": "grpc"})
        up = _web(mesh, {})
        p = Pair(mesh, app, up)
        yield p
        p.channel.close()
    finally:
        app.stop()


def test_unary_with_metadata_and_trailers_end_to_end(pair: Pair) -> None:
    resp, call = pair.client.unary_call("Unary", b"hello", metadata=(("x-user", "ann"),), timeout=10)
    assert resp == b"api:hello"
    # Trailers came back through both sidecars (an HTTP/1.1 hop would have dropped them).
    assert ("x-served-by", "api") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK
    md = pair.app.seen_metadata[-1]
    assert md["x-user"] == "ann"
    assert md.get("te") is None or md["te"] == "trailers"
    assert "x-request-id" in md and "traceparent" in md  # the sidecars' own headers, as on HTTP/1.1


def test_streaming_shapes(pair: Pair) -> None:
    items = list(pair.client.server_stream(b"50", timeout=10))
    assert items == [f"item {i}".encode() for i in range(50)]
    assert pair.client.client_stream(iter([b"a", b"b", b"c"]), timeout=10) == b"a|b|c"
    got = list(pair.client.bidi(iter([f"m{i}".encode() for i in range(20)]), timeout=10))
    assert got == [f"echo m{i}".encode() for i in range(20)]


def test_bidi_in_lockstep_keeps_the_request_stream_going_after_the_response_head(pair: Pair) -> None:
    # The caller sends each message only once the answer to the previous one came back: the request body is
    # still streaming long after the response head (and the first answers) went through both sidecars, so each
    # sidecar must keep piping it on its own rather than stop once it has the head.
    import queue

    q: queue.Queue[bytes | None] = queue.Queue()
    q.put(b"m0")

    def requests() -> Iterator[bytes]:
        while (m := q.get(timeout=10)) is not None:
            yield m

    got = []
    for i, answer in enumerate(pair.client.bidi(requests(), timeout=20)):
        got.append(answer)
        q.put(f"m{i + 1}".encode() if i < 9 else None)
    assert got == [f"echo m{i}".encode() for i in range(10)]


def test_large_messages_both_ways(pair: Pair) -> None:
    big = bytes(range(256)) * (BIG // 256)
    assert pair.client.unary("Unary", big, timeout=30) == b"api:" + big
    assert pair.client.client_stream(iter([big, big]), timeout=30) == big + b"|" + big


def test_server_status_and_message_pass_through(pair: Pair) -> None:
    with pytest.raises(grpc.RpcError) as e:
        pair.client.unary("Fail", b"NOT_FOUND:no such thing", timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "no such thing"
    wait_for(lambda: pair.web.metric("meshgw_grpc_responses_total", grpc_status="5") == 1, 10, "status metric")
    assert pair.api.metric("meshgw_grpc_responses_total", grpc_status="5") == 1

    def logged() -> list[dict[str, object]]:
        path = pair.mesh.root / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    rec = wait_for(lambda: [r for r in logged() if r["path"] == "/demo.Echo/Fail"], 10, "access record")
    assert rec == [{"path": "/demo.Echo/Fail", "status": 200, "grpc_status": 5}]


def test_denied_method_is_permission_denied_and_never_reaches_the_app(pair: Pair) -> None:
    with pytest.raises(grpc.RpcError) as e:
        pair.client.unary("Secret", b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "RBAC: access denied"
    assert "Secret" not in pair.app.calls
    assert pair.api.metric("meshgw_http_requests_denied_total", reason="intention") == 1
    # The channel is still good: the deny was one stream's answer, not a broken connection.
    assert pair.client.unary("Unary", b"after", timeout=10) == b"api:after"


def test_deadline_and_cancellation_reach_the_app(pair: Pair) -> None:
    with pytest.raises(grpc.RpcError) as e:
        pair.client.unary("Slow", b"5", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The caller's RST_STREAM(CANCEL) went through both sidecars: the app saw its call cancelled.
    assert pair.app.cancelled.wait(10)
    pair.app.cancelled.clear()
    fut = pair.client.unary_future("Slow", b"5", timeout=30)
    wait_for(lambda: pair.app.calls.get("Slow", 0) == 2, 10, "second slow call at the app")
    fut.cancel()
    assert pair.app.cancelled.wait(10)


def test_hundreds_of_concurrent_calls_on_one_channel(pair: Pair) -> None:
    futs = [pair.client.unary_future("Unary", f"c{i}".encode(), timeout=30) for i in range(300)]
    assert [f.result() for f in futs] == [f"api:c{i}".encode() for i in range(300)]
    # One h2 connection from the caller's sidecar to the callee's carried them (Envoy's HTTP/2 pool).
    assert pair.api.metric("meshgw_connections_accepted_total", listener="inbound") == 1


def test_retry_on_unavailable(mesh: Mesh) -> None:
    mesh.intentions = [L7]
    mesh.write_intentions()
    app = EchoApp(name="api")
    try:
        mesh.sidecar("api", app.port, service={"protocol": "grpc"})
        up = _web(mesh, {"retries": {"retry_on": ["unavailable"], "num_retries": 3}})
        client = Client(grpc.insecure_channel(f"127.0.0.1:{up}"))
        # UNAVAILABLE twice (trailers-only answers), then OK: the caller sees only the success.
        assert client.unary("Flaky", b"3", timeout=10) == b"ok after 3"
        web = mesh.sidecars[-1]
        assert web.metric("meshgw_http_retries_total", reason="grpc_status") == 2
        # A status in the trailers after a message is not retried (Envoy: trailers-only only) - and NOT_FOUND is
        # not named by the policy anyway.
        with pytest.raises(grpc.RpcError) as e:
            client.unary("Fail", b"NOT_FOUND:x", timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert app.calls["Fail"] == 1
    finally:
        app.stop()


def test_h2_and_http1_callers_of_a_grpc_service_over_plain_http(mesh: Mesh) -> None:
    """An HTTP/1.1 caller of an http2 service: the sidecars translate (h1 in, h2 between sidecars, h2c to the
    app) and an h2 client of the same upstream port gets h2 end to end."""
    import http.client

    from h2_app import H2App

    mesh.allow("web", "api")
    with H2App() as app:
        mesh.sidecar("api", app.port, service={"protocol": "http2"})
        up = _web(mesh, {"protocol": "http2"})
        conn = http.client.HTTPConnection("127.0.0.1", up, timeout=10)
        conn.request("POST", "/echo?x=1", body=b"payload", headers={"Host": "api.example"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        seen = json.loads(body)
        assert seen["version"] == "HTTP/2"
        assert seen["method"] == "POST" and seen["path"] == "/echo?x=1" and seen["body"] == "payload"
        assert seen["authority"] == "api.example"
        conn.close()


def test_threads_share_the_channel_without_errors(pair: Pair) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                assert pair.client.unary("Unary", f"{n}-{i}".encode(), timeout=10) == f"api:{n}-{i}".encode()
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_expose_path_with_protocol_http2_serves_a_grpc_method(mesh: Mesh) -> None:
    """Consul's Expose path with `Protocol: http2` (a gRPC check's path): plaintext h2c on the listener port,
    h2c to the app, only that path (http2-grpc.md §4; anything else is 404, which gRPC reads as UNIMPLEMENTED)."""
    app = EchoApp(name="api")
    try:
        port = free_port()
        path = {"listener_port": port, "path": "/demo.Echo/Unary", "local_path_port": app.port, "protocol": "http2"}
        mesh.sidecar("api", app.port, service={"protocol": "grpc"}, expose={"paths": [path]})
        wait_for(lambda: _connects(port), 10, "the expose listener")
        client = Client(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert client.unary("Unary", b"check", timeout=10) == b"api:check"
        with pytest.raises(grpc.RpcError) as e:
            client.unary("Secret", b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "Secret" not in app.calls
    finally:
        app.stop()


def _connects(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
