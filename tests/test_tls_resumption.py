"""TLS 1.3 resumption on the mesh hop: a burst of new connections to one upstream resumes instead of paying a
full handshake (two ECDSA verifications per side) for every dial beyond rustls' default eight tickets."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from mesh import EchoServer, Mesh, echo_roundtrip, free_port, wait_for

from connect.ca import write_leaf

pytestmark = pytest.mark.slow

BURST = 48


class BurstEcho(EchoServer):
    # socketserver's backlog of 5 would drop most of a burst's connections to the app (SYN retried after 1 s).
    request_queue_size = 128


def burst(port: int, n: int = BURST) -> None:
    """`n` connections open at once, so the upstream side dials all of them before most handshakes finish."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"%d\n" % i)
        for i, s in enumerate(socks):
            want = b"%d\n" % i
            got = b""
            while len(got) < len(want):
                chunk = s.recv(64)
                assert chunk, f"connection {i} closed before its echo"
                got += chunk
            assert got == want
    finally:
        for s in socks:
            s.close()


def test_a_burst_of_new_connections_resumes(mesh: Mesh) -> None:
    app = BurstEcho()
    try:
        mesh.sidecar("api", app.port)
        up = free_port()
        web = mesh.sidecar("web", upstreams={"api": up})
        mesh.allow("web", "api")
        wait_for(lambda: echo_roundtrip(up, b"x", timeout=5) == b"x", 10, "web -> api")
        api = mesh.sidecars[0]

        def edits_applied() -> int:
            return min(sc.log_text().count("intentions.yaml: changed") for sc in (api, web))

        wait_for(lambda: edits_applied() >= 1, 10, "both sides on the intentions file")

        def handshakes(kind: str) -> float:
            return web.metric("meshgw_tls_handshakes_total", listener="upstream:api", kind=kind)

        # Every finished handshake brings two tickets back: two bursts fill the store.
        burst(up)
        burst(up)
        # A new snapshot with the same certificates (here an intention edit; with Consul, any endpoint change)
        # keeps both sides' TLS state: the tickets in the store stay valid at the server that issued them.
        mesh.allow("billing", "api")
        wait_for(lambda: edits_applied() >= 2, 10, "the intention edit applied on both sides")
        full, resumed = handshakes("full"), handshakes("resumed")
        burst(up)
        assert handshakes("full") == full, "a burst of dials to one upstream ran out of session tickets"
        assert handshakes("resumed") == resumed + BURST
        # The inbound side saw the same: its handshakes were resumed ones too.
        assert api.metric("meshgw_tls_handshakes_total", listener="inbound", kind="resumed") >= BURST
    finally:
        app.stop()


def test_a_resumed_session_with_an_expired_client_leaf_is_refused(mesh: Mesh) -> None:
    # A ticket outlives a short leaf: resumption does not look at the certificate again, the proxy must.
    app = BurstEcho()
    try:
        api = mesh.sidecar("api", app.port)
        mesh.allow("web", "api")
        port = mesh.inbound_port("api")
        leaf = mesh.ca.issue("web", "dc1", 4)
        cert = write_leaf(leaf, mesh.root / "short-web")
        ctx = mesh.client_context(cert)

        def call(session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSocket]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = ctx.wrap_socket(raw, session=session)
            try:
                s.sendall(b"ping\n")
                return s.recv(64), s
            except (ConnectionError, ssl.SSLError):
                return b"", s

        def first() -> ssl.SSLSession | None:
            got, s = call()
            session = s.session if got == b"ping\n" else None  # a TLS 1.3 ticket comes with the first answer
            s.close()
            return session if session is not None and session.has_ticket else None

        session = wait_for(first, 10, "a full handshake as web, answered, with a ticket")
        wait_for(lambda: time.time() > leaf.not_after + 1, 10, "the client leaf expired")
        got, s = call(session)
        reused = s.session_reused
        s.close()
        assert reused, "the test needs a resumed session"
        assert got == b"", "a resumed session with an expired client leaf reached the app"
        wait_for(
            lambda: api.metric("meshgw_connections_denied_total", listener="inbound", reason="cert_expired") >= 1,
            5,
            "counted as cert_expired",
        )
    finally:
        app.stop()
