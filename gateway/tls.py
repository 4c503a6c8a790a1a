"""TLS material for the data plane: SSLContexts built once per snapshot, peer identities, error reasons."""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from connect.spiffe import ServiceID, parse_service_uri

# Mesh hops are TLS 1.2+ with 1.3 preferred (OpenSSL negotiates the highest both sides offer).
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain only takes paths; hand it an anonymous in-memory file so the key never touches disk."""
    data = cert_pem + (b"" if cert_pem.endswith(b"\n") else b"\n") + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshgw-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="meshgw-leaf-") as f:  # pragma: no cover - non-Linux fallback
        os.chmod(f.name, 0o600)
        f.write(data)
        f.flush()
        ctx.load_cert_chain(f.name)


def _common(ctx: ssl.SSLContext, roots_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx.minimum_version = MIN_VERSION
    ctx.verify_mode = ssl.CERT_REQUIRED
    # A trusted CA need not be self-signed: a Vault mount holding only an intermediate (like Consul's
    # connect_inter) hands out chains that stop below the root; trusting the intermediate must suffice.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=roots_pem.decode())
    _load_chain(ctx, cert_pem, key_pem)
    # No compression, no renegotiation: the defaults of PROTOCOL_TLS_* already, stated for the reader.
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(roots_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Inbound: present our leaf, require a client certificate that chains to the roots."""
    return _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), roots_pem, cert_pem, key_pem)


def client_context(roots_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Upstream: present our leaf, verify the server chain. The identity check is on the SPIFFE URI SAN,
    not on a host name (Consul's Envoy config matches the URI SAN, never a DNS name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _common(ctx, roots_pem, cert_pem, key_pem)


def origination_context(ca_file: str, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A terminating gateway's TLS to a service outside the mesh: verified against ``ca_file`` with host-name
    checking, and a client certificate when the service asks for one. Raises OSError or ssl.SSLError."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = MIN_VERSION
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def sni_dispatch_context(by_name: dict[str, ssl.SSLContext], roots_pem: bytes) -> ssl.SSLContext:
    """A server context that takes on, per connection, the context of the name the caller asked for (SNI): a
    terminating gateway presents the leaf of the service the caller wants. No name, or an unknown one: the
    handshake fails with unrecognized_name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    # OpenSSL's SSL_set_SSL_CTX takes the new context's certificate, not its verify mode and flags: the
    # client-certificate requirement has to be on the context the connection starts with.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if roots_pem:
        ctx.load_verify_locations(cadata=roots_pem.decode())

    def pick(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        chosen = by_name.get((name or "").lower())
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        obj.context = chosen
        return None

    ctx.sni_callback = pick
    return ctx


@dataclass(frozen=True)
class PeerIdentity:
    uri: str | None
    service: ServiceID | None


def peer_identity(cert: dict[str, Any] | None) -> PeerIdentity:
    """The SPIFFE service identity in the verified peer certificate's URI SAN (``getpeercert()``)."""
    if not cert:
        return PeerIdentity(None, None)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return PeerIdentity(value, parse_service_uri(value))
    return PeerIdentity(None, None)


def handshake_failure_reason(exc: BaseException) -> str:
    """Map an OpenSSL handshake error to a bounded metric reason (metrics.DENY_REASONS)."""
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        # X509_V_ERR_CERT_NOT_YET_VALID = 9, X509_V_ERR_CERT_HAS_EXPIRED = 10
        if code in (9, 10):
            return "cert_expired"
        return "untrusted_cert"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
            return "no_client_cert"
        if "CERTIFICATE_EXPIRED" in reason:
            return "cert_expired"
        if "UNKNOWN_CA" in reason or "CERTIFICATE_VERIFY_FAILED" in reason or "BAD_CERTIFICATE" in reason:
            return "untrusted_cert"
    return "tls_error"
