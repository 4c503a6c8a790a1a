"""What the console and /certs say about certificates: identity, issuer, serial, validity, fingerprint. Parsed
from the public PEM only; a private key is never read here, and no PEM text leaves this module.

The X.509 library is imported when a certificate is first described (an operator opens the console or /certs),
not with the admin port: a sidecar that nobody looks at never maps it (issue #13, about 8 MB of RSS)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connect.leaf import colon_hex

if TYPE_CHECKING:
    from cryptography import x509

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)
# Leaves are renewed at about 2/3 of their life (connect/builtin_certs.py RENEW_AT, with a spread around it).
RENEW_SHARE = 2 / 3


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    issuer: str
    serial: str
    not_before: float
    not_after: float
    uris: tuple[str, ...]
    sha256: str
    is_ca: bool

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "expires_in_seconds": round(self.not_after - now, 1),
            "uri_sans": list(self.uris),
            "sha256_fingerprint": self.sha256,
            "is_ca": self.is_ca,
        }


def _info(cert: x509.Certificate) -> CertInfo:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string() or "(empty)",
        issuer=cert.issuer.rfc4514_string() or "(empty)",
        serial=colon_hex(cert.serial_number),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        uris=uris,
        sha256=colon_hex(int.from_bytes(cert.fingerprint(hashes.SHA256()), "big")).upper(),
        is_ca=is_ca,
    )


def describe_bundle(pem: bytes) -> tuple[CertInfo, ...]:
    """Every certificate of a PEM bundle that parses; anything else in the text (a key included) is skipped."""
    blocks = _PEM.findall(pem)
    if not blocks:
        return ()
    from cryptography import x509

    out = []
    for block in blocks:
        try:
            out.append(_info(x509.load_pem_x509_certificate(block)))
        except ValueError:
            continue
    return tuple(out)


def rotation_due(not_before: float, not_after: float) -> float:
    """About when the leaf is renewed (the providers add a spread of a few percent of its life)."""
    return not_before + (not_after - not_before) * RENEW_SHARE
