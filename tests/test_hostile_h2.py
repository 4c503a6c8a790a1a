"""A hostile HTTP/2 peer with a valid mesh certificate against an ``http2`` sidecar's inbound listener
(http2-grpc.md §5.6, §5.8). One test per attack class: each checks the bound holds, the counter says why, the
app never saw what it must not, and an honest client on another connection is still served."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from h2_app import H2App
from mesh import Mesh, Sidecar, wait_for

pytestmark = pytest.mark.slow


class Peer:
    """A TLS connection to the inbound listener as ``web``, ALPN h2, with python-hyper's h2 for valid frames and
    raw writes for the rest. Outbound header checks are off: the point is to send what a client must not."""

    def __init__(self, mesh: Mesh, port: int, settings: dict[int, int] | None = None) -> None:
        ctx = mesh.client_context(mesh.leaf_files("web"))
        ctx.set_alpn_protocols(["h2"])
        tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(tcp)
        assert self.sock.selected_alpn_protocol() == "h2"
        cfg = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.events: list[h2.events.Event] = []

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str, extra: list[tuple[str, str]] | None = None, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "api"), (":path", path)]
        self.conn.send_headers(sid, headers + (extra or []), end_stream=end)
        self.flush()
        return sid

    def pump(self, until: float = 5.0) -> bool:
        """Reads for up to ``until`` seconds; False once the server closed the connection."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                return False
            if not data:
                return False
            try:
                self.events += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return False
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events):
                return False
        return True

    def closed(self, within: float = 10.0) -> bool:
        return not self.pump(within)

    def responses(self) -> dict[int, int]:
        return {
            e.stream_id: int(dict(e.headers)[":status"])
            for e in self.events
            if isinstance(e, h2.events.ResponseReceived)
        }

    def resets(self) -> dict[int, int]:
        return {e.stream_id: e.error_code for e in self.events if isinstance(e, h2.events.StreamReset)}

    def close(self) -> None:
        self.sock.close()


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def literal(name: bytes, value: bytes, index: bool = False) -> bytes:
    """An HPACK literal with a new name (RFC 7541 §6.2), lengths < 127 or 2-byte prefixed."""

    def s(b: bytes) -> bytes:
        if len(b) < 127:
            return bytes([len(b)]) + b
        n, out = len(b) - 127, bytearray([127])
        while n >= 128:
            out.append((n % 128) + 128)
            n //= 128
        out.append(n)
        return bytes(out) + b

    return (b"\x40" if index else b"\x00") + s(name) + s(value)


REQUEST_BLOCK = b"\x82\x87\x84" + b"\x01\x03api"  # GET, https, /, :authority api (literal, indexed name)


@pytest.fixture
def target(mesh: Mesh) -> Iterator[tuple[Mesh, Sidecar, H2App, int]]:
    mesh.allow("web", "api")
    with H2App() as app:
        sc = mesh.sidecar("api", app.port, service={"protocol": "http2"}, inbound={"stream_idle_timeout": "1s"})
        yield mesh, sc, app, mesh.inbound_port("api")


def honest_client_is_served(mesh: Mesh, port: int) -> None:
    p = Peer(mesh, port)
    sid = p.get("/honest")
    wait_for(lambda: p.pump(0.2) and p.responses().get(sid) == 200, 10, "honest client's answer")
    p.close()


def cut(sc: Sidecar, reason: str) -> float:
    return sc.metric("meshgw_http2_connections_cut_total", listener="inbound", reason=reason)


def test_rapid_reset_is_cut(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    mesh, sc, _app, port = target
    p = Peer(mesh, port)
    for _ in range(3000):
        sid = p.conn.get_next_available_stream_id()
        p.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "api"), (":path", "/rr")])
        p.conn.reset_stream(sid)
        try:
            p.flush()
        except OSError:
            break  # cut while sending
    assert p.closed()
    wait_for(lambda: cut(sc, "rapid_reset") == 1, 10, "rapid_reset counted")
    honest_client_is_served(mesh, port)


def test_continuation_flood_is_cut(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    mesh, sc, app, port = target
    p = Peer(mesh, port)
    p.raw(frame(0x1, 0x0, 1, REQUEST_BLOCK))  # HEADERS without END_HEADERS
    junk = literal(b"x-junk", b"j" * 4000)
    try:
        for _ in range(200):
            p.raw(frame(0x9, 0x0, 1, junk * 4))  # CONTINUATION, never END_HEADERS
    except OSError:
        pass
    assert p.closed()
    wait_for(lambda: cut(sc, "header_flood") == 1, 10, "header_flood counted")
    assert not [r for r in app.requests if r["path"] == "/"]
    honest_client_is_served(mesh, port)


def test_hpack_bomb_is_cut(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    """One 4 KB entry in the dynamic table, then thousands of one-byte references to it: megabytes decoded."""
    mesh, sc, app, port = target
    p = Peer(mesh, port)
    block = REQUEST_BLOCK + literal(b"x-bomb", b"b" * 4000, index=True) + b"\xbe" * 5000
    p.raw(frame(0x1, 0x5, 1, block[:16000]))  # within one frame: HEADERS, END_HEADERS|END_STREAM
    assert p.closed()
    wait_for(lambda: cut(sc, "header_flood") == 1, 10, "header_flood counted")
    assert not app.requests
    honest_client_is_served(mesh, port)


def test_ping_and_settings_floods_are_cut(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    mesh, sc, _app, port = target
    for kind, payload in ((0x6, b"12345678"), (0x4, b"")):
        p = Peer(mesh, port)
        try:
            p.raw(frame(kind, 0, 0, payload) * 5000)
        except OSError:
            pass
        assert p.closed()
    wait_for(lambda: cut(sc, "control_frame_flood") == 2, 10, "control_frame_flood counted twice")
    honest_client_is_served(mesh, port)


def test_pings_within_the_budget_are_answered(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    """The budget does not bite an honest peer: a PING per request, many requests (Consul's H2PING checks too)."""
    mesh, sc, _app, port = target
    p = Peer(mesh, port)
    for i in range(50):
        p.conn.ping(f"{i:08d}".encode())
        p.get(f"/r{i}")
    wait_for(lambda: p.pump(0.2) and len(p.responses()) == 50, 15, "50 answers")
    assert len([e for e in p.events if isinstance(e, h2.events.PingAckReceived)]) == 50
    assert cut(sc, "control_frame_flood") == 0


def test_concurrent_streams_are_bounded(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    mesh, _sc, _app, port = target
    p = Peer(mesh, port)
    p.pump(1)
    assert p.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 1024
    # Open more than that without ending them (the app waits for each request's end), in raw frames (the client
    # library would keep to the limit): the excess is refused with REFUSED_STREAM, which a client may retry
    # (RFC 9113 §8.7), and the connection goes on.
    p.raw(b"".join(frame(0x1, 0x4, 2 * i + 101, REQUEST_BLOCK) for i in range(1100)))
    refused = 0
    buf = b""
    p.sock.settimeout(10)
    while refused < 1100 - 1024:
        chunk = p.sock.recv(65536)
        assert chunk, "the connection closed"
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            if buf[3] == 0x3 and int.from_bytes(buf[9:13], "big") == h2.errors.ErrorCodes.REFUSED_STREAM:
                refused += 1
            buf = buf[9 + n :]
    assert refused == 1100 - 1024
    honest_client_is_served(mesh, port)


def test_flow_control_stall_is_reset_by_the_stream_idle_timeout(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    """A peer that never opens its window pins one stream's response, bounded by the windows, until the stream
    idle timeout (1 s here) resets it; the rest of the sidecar is unaffected meanwhile."""
    mesh, sc, _app, port = target
    p = Peer(mesh, port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    p.pump(0.5)
    sid = p.get("/big")
    honest_client_is_served(mesh, port)
    wait_for(lambda: p.pump(0.2) and sid in p.resets(), 15, "the stalled stream reset")
    assert sc.metric("meshgw_http_timeouts_total", listener="inbound", kind="stream_idle") == 1


@pytest.mark.parametrize(
    "extra",
    [
        [("transfer-encoding", "chunked")],
        [("connection", "keep-alive")],
        [("te", "gzip")],
        [("x-a", "b\r\nx-smuggled: 1")],
        [("X-Upper", "1")],
        [("content-length", "5")],  # and no DATA: the length disagrees with the stream (RFC 9113 §8.1.1)
    ],
    ids=["transfer-encoding", "connection", "te-gzip", "crlf-in-value", "uppercase-name", "content-length"],
)
def test_malformed_requests_never_reach_the_app(
    target: tuple[Mesh, Sidecar, H2App, int], extra: list[tuple[str, str]]
) -> None:
    """h2→h1 smuggling vectors (http2-grpc.md §5.6): each is refused, never forwarded. h2 makes some of them a
    stream error (the connection goes on) and some a connection error (GOAWAY PROTOCOL_ERROR, as Envoy's default
    for an invalid HEADERS frame); either way the app sees nothing of it."""
    mesh, _sc, app, port = target
    p = Peer(mesh, port)
    sid = p.get("/smuggle", extra)

    def refused() -> bool:
        alive = p.pump(0.2)
        return not alive or sid in p.resets() or p.responses().get(sid, 200) >= 400

    wait_for(refused, 10, "refusal")
    if p.pump(0.2):
        ok = p.get("/after")
        wait_for(lambda: p.pump(0.2) and p.responses().get(ok) == 200, 10, "the next stream served")
    honest_client_is_served(mesh, port)
    assert "/smuggle" not in [r["path"] for r in app.requests]


def test_garbage_after_the_preface_is_a_protocol_error(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    mesh, sc, _app, port = target
    p = Peer(mesh, port)
    p.raw(frame(0x1, 0x4, 0, b"\x82"))  # HEADERS on stream 0
    assert p.closed()
    wait_for(lambda: cut(sc, "protocol_error") == 1, 10, "protocol_error counted")
    honest_client_is_served(mesh, port)


def test_connect_is_refused_cleanly(target: tuple[Mesh, Sidecar, H2App, int]) -> None:
    """HTTP/2 CONNECT is not routed (Consul configures no connect matcher), and extended CONNECT cannot even be
    asked for: meshgw never sends SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)."""
    mesh, sc, app, port = target
    p = Peer(mesh, port)
    p.pump(0.5)
    assert p.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
    sid = p.conn.get_next_available_stream_id()
    p.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "db.internal:5432")], end_stream=False)
    p.flush()
    wait_for(lambda: p.pump(0.2) and p.responses().get(sid) == 400, 10, "400 to CONNECT")
    assert not app.requests
    assert sc.metric("meshgw_http_requests_denied_total", listener="inbound", reason="authority_form_target") == 1
    honest_client_is_served(mesh, port)


def test_h2_caller_of_an_http_service_is_translated(mesh: Mesh) -> None:
    """Not an attack: the other translation. An h2 caller (ALPN h2, offered last by an `http` listener) of an
    HTTP/1.1 app: `:authority` becomes Host, the body goes with a length, the answer comes back on the stream."""
    import json

    from http_app import http_app

    mesh.allow("web", "api")
    with http_app("api") as app:
        sc = mesh.sidecar("api", app.port, service={"protocol": "http"})
        p = Peer(mesh, mesh.inbound_port("api"))
        sid = p.conn.get_next_available_stream_id()
        p.conn.send_headers(
            sid,
            [(":method", "POST"), (":scheme", "https"), (":authority", "api.example:8080"), (":path", "/x?y=1"),
             ("te", "trailers"), ("x-user", "ann")],
        )
        p.conn.send_data(sid, b"abc", end_stream=True)
        p.flush()
        body = b""

        def answered() -> bool:
            nonlocal body
            p.pump(0.2)
            body = b"".join(e.data for e in p.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
            return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in p.events)

        wait_for(answered, 10, "the answer")
        assert p.responses()[sid] == 200
        seen = json.loads(body)
        assert seen["method"] == "POST" and seen["path"] == "/x?y=1" and seen["size"] == 3
        assert seen["headers"]["host"] == "api.example:8080" and seen["headers"]["x-user"] == "ann"
        assert sc.metric("meshgw_http_responses_total", listener="inbound", code_class="2xx") == 1
