"""Terminating gateways: mesh callers reach services outside the mesh (consul.md §8.7).

The gateway presents the linked service's own leaf (picked by SNI), authorizes the caller with that
service's intentions, and forwards in plaintext or over TLS it originates (verified against the
service's CA, with its SNI)."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mesh import Mesh, Sidecar, echo_app, echo_roundtrip, free_port, refused, wait_for

pytestmark = pytest.mark.slow


def _tls_server_files(d: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA (not the mesh's) and a server certificate for ``host``, as an external service would have."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "external CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (d / "ext-ca.crt", d / "ext.crt", d / "ext.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@contextlib.contextmanager
def tls_echo(
    cert: Path, key: Path, prefix: bytes, resumed: list[bool] | None = None
) -> Iterator[tuple[int, list[str]]]:
    """A TLS echo server; yields its port and the SNI names it was asked for. ``resumed`` gets, per
    connection, whether its handshake resumed an earlier session."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    names: list[str] = []
    ctx.sni_callback = lambda _s, name, _c: names.append(name or "")  # type: ignore[func-returns-value]
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                if resumed is not None:
                    resumed.append(s.session_reused)
                while data := s.recv(65536):
                    s.sendall(prefix + data)
        except (OSError, ssl.SSLError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1], names
    finally:
        stop.set()
        srv.close()


def _gateway(mesh: Mesh, ca_file: Path, billing_port: int, payments_port: int) -> tuple[Sidecar, int]:
    """A terminating gateway for billing (plaintext) and payments (TLS it originates, verified against
    ``ca_file``, SNI payments.example.com); both registered at the gateway's port, as Consul's health/connect
    answers them. Returns the gateway and its port."""
    tgw_port = free_port()
    tgw = mesh.sidecar(
        "tgw",
        inbound=False,
        mode="terminating-gateway",
        service={"name": "terminating-gateway"},
        gateway={"bind": f"127.0.0.1:{tgw_port}"},
        services=[
            {"name": "billing", "address": f"127.0.0.1:{billing_port}"},
            {
                "name": "payments",
                "address": f"127.0.0.1:{payments_port}",
                "ca_file": str(ca_file),
                "sni": "payments.example.com",
            },
        ],
    )
    mesh.register("billing", tgw_port)
    mesh.register("payments", tgw_port)
    return tgw, tgw_port


def test_mesh_callers_reach_external_services_through_a_terminating_gateway(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    ca_file, cert, key = _tls_server_files(tmp_path, "payments.example.com")
    try:
        with echo_app(b"billing:") as billing, tls_echo(cert, key, b"payments:") as (payments_port, sni_seen):
            tgw, tgw_port = _gateway(mesh, ca_file, billing.port, payments_port)
            up_billing, up_payments, up_other = free_port(), free_port(), free_port()
            mesh.sidecar("web", inbound=False, upstreams={"billing": up_billing, "payments": up_payments})
            mesh.sidecar("intruder", inbound=False, upstreams={"billing": up_other})
            mesh.allow("web", "billing")
            mesh.allow("web", "payments")

            # web's sidecar checked the gateway's certificate for billing's own SPIFFE ID, as for any upstream.
            wait_for(lambda: echo_roundtrip(up_billing, b"hi") == b"billing:hi", 5, "plaintext service")
            assert echo_roundtrip(up_payments, b"hi") == b"payments:hi"  # TLS originated by the gateway
            assert sni_seen and set(sni_seen) == {"payments.example.com"}
            assert tgw.metric("meshgw_connections_accepted_total", listener="terminating-gateway") == 2

            # billing's intentions decide, at the gateway: intruder is denied (default deny).
            denied = tgw.metric("meshgw_connections_denied_total", reason="intention")
            assert refused(up_other)
            wait_for(
                lambda: tgw.metric("meshgw_connections_denied_total", reason="intention") == denied + 1, 5, "counted"
            )
            assert "svc/intruder -> billing: default policy deny" in tgw.log_text()
            assert billing.connections == 1

            # A name the gateway does not stand in for: no certificate to present, the handshake fails.
            ctx = mesh.client_context(mesh.leaf_files("web"))
            with socket.create_connection(("127.0.0.1", tgw_port), timeout=5) as s, pytest.raises(ssl.SSLError):
                ctx.wrap_socket(s, server_hostname="nosuch.default.dc1.internal.test.consul").recv(1)
            wait_for(lambda: tgw.metric("meshgw_connections_denied_total", reason="tls_error") >= 1, 5, "counted")
    finally:
        mesh.close()


def test_originated_tls_resumes_across_snapshots(tmp_path: Path) -> None:
    # The gateway's TLS client to an external service keeps its session cache while the service's TLS settings
    # stay the same: a new snapshot (here an intention edit) does not cost the next connection a full handshake.
    mesh = Mesh(tmp_path)
    ca_file, cert, key = _tls_server_files(tmp_path, "payments.example.com")
    resumed: list[bool] = []
    try:
        with echo_app(b"billing:") as billing, tls_echo(cert, key, b"payments:", resumed) as (payments_port, _):
            _gateway(mesh, ca_file, billing.port, payments_port)
            up_billing, up_payments = free_port(), free_port()
            mesh.sidecar("web", inbound=False, upstreams={"payments": up_payments})
            mesh.sidecar("intruder", inbound=False, upstreams={"billing": up_billing})
            mesh.allow("web", "payments")
            wait_for(lambda: echo_roundtrip(up_payments, b"a") == b"payments:a", 5, "the first connection")
            # The server's session tickets reach the gateway after the handshake: a later connection resumes.
            wait_for(lambda: echo_roundtrip(up_payments, b"b") == b"payments:b" and resumed[-1], 5, "a resumed one")
            # A new snapshot at the gateway: intruder may now reach billing.
            assert refused(up_billing)
            mesh.allow("intruder", "billing")
            wait_for(lambda: echo_roundtrip(up_billing, b"c") == b"billing:c", 10, "the edited intentions")
            before = len(resumed)
            assert echo_roundtrip(up_payments, b"d") == b"payments:d"
            assert resumed[before:] == [True], "the first connection after the snapshot resumed"
    finally:
        mesh.close()
