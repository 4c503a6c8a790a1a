"""The Consul double's built-in Connect CA (test support): EC P-256 roots, SPIFFE leaves, cross-signed rotation.

Field shapes follow ../shared/spec/consul.md §2.1/§2.2: ``CARoot.SerialNumber`` is a JSON integer, the leaf's
``SerialNumber`` a colon-hex string, times are RFC 3339, a rotated-in root carries the cross-signed certificate
(new key, signed by the previous root) in ``IntermediateCerts`` and leaves carry it after the leaf PEM.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_TTL = dt.timedelta(days=3650)
DEFAULT_LEAF_TTL = dt.timedelta(hours=72)  # Consul's LeafCertTTL default (spec §2.2)


def colon_hex(data: bytes | int) -> str:
    if isinstance(data, int):
        raw = data.to_bytes(max(1, (data.bit_length() + 7) // 8), "big")
    else:
        raw = data
    return ":".join(f"{b:02x}" for b in raw)


def rfc3339(t: dt.datetime) -> str:
    """Go's time.Time JSON form (UTC, seconds precision, ``Z``)."""
    return t.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _serial() -> int:
    # Positive, 63 bits: fits Consul's uint64 CARoot.SerialNumber and JSON integers.
    return secrets.randbits(63) | 1


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


@dataclass
class Root:
    id: str
    name: str
    serial: int
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    intermediates: list[str] = field(default_factory=list)
    active: bool = True
    create_index: int = 0
    modify_index: int = 0

    def to_json(self) -> dict[str, Any]:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        return {
            "ID": self.id,
            "Name": self.name,
            "SerialNumber": self.serial,
            "SigningKeyID": colon_hex(ski),
            "ExternalTrustDomain": "",
            "NotBefore": rfc3339(self.cert.not_valid_before_utc),
            "NotAfter": rfc3339(self.cert.not_valid_after_utc),
            "RootCert": _pem(self.cert),
            "IntermediateCerts": list(self.intermediates) or None,
            "Active": self.active,
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Leaf:
    service: str
    uri: str
    serial: int
    cert_pem: str  # leaf followed by the active root's intermediates
    key_pem: str
    valid_after: dt.datetime
    valid_before: dt.datetime
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "SerialNumber": colon_hex(self.serial),
            "CertPEM": self.cert_pem,
            "PrivateKeyPEM": self.key_pem,
            "Service": self.service,
            "ServiceURI": self.uri,
            "ValidAfter": rfc3339(self.valid_after),
            "ValidBefore": rfc3339(self.valid_before),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConnectCA:
    """Roots and leaf signing for one trust domain."""

    def __init__(self, trust_domain: str, datacenter: str, leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL):
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.leaf_ttl = leaf_ttl
        self.roots: list[Root] = []
        self._generation = 0

    @property
    def active(self) -> Root:
        return next(r for r in self.roots if r.active)

    def _root_name(self) -> x509.Name:
        self._generation += 1
        td8 = self.trust_domain.split(".")[0][:8]
        cn = f"pri-{secrets.token_hex(4)}.consul.ca.{td8}.consul"
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgw Consul double"),
            ]
        )

    def _ca_builder(
        self, subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, serial: int
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_ski(key), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]),
                critical=False,
            )
        )

    def new_root(self, index: int) -> Root:
        """Create a root; with a previous active root, cross-sign the new key with it and make the new one active."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = self._root_name()
        serial = _serial()
        cert = (
            self._ca_builder(subject, subject, key, serial)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        root = Root(
            id=colon_hex(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()),
            name="Consul CA Primary Cert",
            serial=serial,
            key=key,
            cert=cert,
            create_index=index,
            modify_index=index,
        )
        if self.roots:
            old = self.active
            cross = (
                self._ca_builder(subject, old.cert.subject, key, _serial())
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old.key.public_key()), critical=False)
                .sign(old.key, hashes.SHA256())
            )
            root.intermediates = [_pem(cross)]
            old.active = False
            old.modify_index = index
        self.roots.append(root)
        return root

    def roots_json(self) -> dict[str, Any]:
        return {
            "ActiveRootID": self.active.id,
            "TrustDomain": self.trust_domain,
            "Roots": [r.to_json() for r in self.roots],
        }

    def roots_pem(self) -> str:
        return "".join(_pem(r.cert) for r in self.roots)

    def service_uri(self, service: str, namespace: str = "default") -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace}/dc/{self.datacenter}/svc/{service}"

    def sign_leaf(self, service: str, index: int) -> Leaf:
        root = self.active
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        valid_after = now - dt.timedelta(minutes=1)
        valid_before = now + self.leaf_ttl
        serial = _serial()
        uri = self.service_uri(service)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(root.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(valid_after)
            .not_valid_after(valid_before)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(_ski(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(root.key, hashes.SHA256())
        )
        return Leaf(
            service=service,
            uri=uri,
            serial=serial,
            cert_pem=_pem(cert) + "".join(root.intermediates),
            key_pem=_key_pem(key),
            valid_after=valid_after,
            valid_before=valid_before,
            create_index=index,
            modify_index=index,
        )
