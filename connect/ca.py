"""The built-in certificate authority: an ECDSA P-256 root on disk and short-lived SPIFFE leaves.

Layout of a CA directory (``meshgw ca init --dir D``):
  D/ca.crt   the root certificate, for other tools to trust
  D/ca.key   its private key, mode 0600
  D/roots/*.crt (optional) further roots to trust, e.g. the previous root during a rotation
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connect.leaf import Leaf, colon_hex
from connect.spiffe import service_uri

__all__ = ["BACKDATE", "BuiltinCA", "CAError", "Leaf", "colon_hex", "trust_domain_of", "write_leaf"]

# Consul backdates leaves by a minute so that small clock skew between hosts does not make a fresh
# certificate "not yet valid" (C:agent/connect/ca/provider_consul.go Sign).
BACKDATE = dt.timedelta(minutes=1)
ROOT_TTL = dt.timedelta(days=3650)


class CAError(Exception):
    """A problem with a CA directory, phrased for the operator."""


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 from the first byte (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class BuiltinCA:
    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str):
        self.dir = directory
        self.cert = cert
        self.key = key
        self.trust_domain = trust_domain
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    # ------------------------------------------------------------------ create / load

    @classmethod
    def init(cls, directory: Path, trust_domain: str | None = None, exist_ok: bool = False) -> BuiltinCA:
        """Create a new root in ``directory``; with exist_ok, load the one already there instead.

        Several sidecars may share one directory and start at once: the root is created under an
        exclusive lock file so exactly one of them writes it.
        """
        directory = Path(directory)
        if (directory / "ca.crt").exists():
            if exist_ok:
                return cls.load(directory)
            raise CAError(f"{directory}/ca.crt: a CA already exists here (remove it or use another --dir)")
        directory.mkdir(parents=True, exist_ok=True)
        lock = directory / ".init.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return cls._wait_for_other_init(directory)
        try:
            os.close(fd)
            if (directory / "ca.crt").exists():  # another process created it while we took the lock
                if exist_ok:
                    return cls.load(directory)
                raise CAError(f"{directory}/ca.crt: a CA already exists here (remove it or use another --dir)")
            td = (trust_domain or f"{uuid.uuid4()}.consul").lower()
            key = ec.generate_private_key(ec.SECP256R1())
            now = dt.datetime.now(dt.UTC)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshgw CA {td}")])
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
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
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                # The signing certificate carries the trust-domain URI, as Consul's does (consul.md §5.1).
                .add_extension(
                    x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
                    critical=False,
                )
                .sign(key, hashes.SHA256())
            )
            _write_private(
                directory / "ca.key",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            _write_public(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
            return cls(directory, cert, key, td)
        finally:
            lock.unlink(missing_ok=True)

    @classmethod
    def _wait_for_other_init(cls, directory: Path) -> BuiltinCA:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (directory / "ca.crt").exists() and (directory / "ca.key").exists():
                return cls.load(directory)
            time.sleep(0.05)
        raise CAError(f"{directory}/.init.lock: another process is creating this CA and did not finish")

    @classmethod
    def load(cls, directory: Path) -> BuiltinCA:
        directory = Path(directory)
        crt, keyf = directory / "ca.crt", directory / "ca.key"
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
        except FileNotFoundError:
            raise CAError(f"{crt}: no CA here (create one with: meshgw ca init --dir {directory})") from None
        except (OSError, ValueError) as e:
            raise CAError(f"{crt}: not a PEM certificate ({e})") from None
        try:
            key = serialization.load_pem_private_key(keyf.read_bytes(), password=None)
        except FileNotFoundError:
            raise CAError(f"{keyf}: the CA key is missing (expected beside ca.crt)") from None
        except (OSError, ValueError, TypeError) as e:
            raise CAError(f"{keyf}: not an unencrypted PEM private key ({e})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{keyf}: expected an ECDSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CAError(f"{keyf}: does not match {crt}")
        td = trust_domain_of(cert)
        if td is None:
            raise CAError(f"{crt}: has no spiffe://<trust-domain> URI SAN (expected a meshgw or Consul CA)")
        return cls(directory, cert, key, td)

    # ------------------------------------------------------------------ trust bundle

    def roots_pem(self) -> bytes:
        """The active root plus any extra roots under roots/ (kept trusted during a rotation)."""
        parts = [self.cert_pem]
        extra = self.dir / "roots"
        if extra.is_dir():
            for p in sorted(extra.glob("*.crt")):
                parts.append(p.read_bytes())
        return b"".join(parts)

    # ------------------------------------------------------------------ leaves

    def issue(
        self,
        service: str,
        datacenter: str,
        ttl: float,
        namespace: str = "default",
        not_before: dt.datetime | None = None,
        uri: str | None = None,
    ) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        return self.sign_key(key, service, datacenter, ttl, namespace, not_before, uri)

    def sign_key(
        self,
        key: ec.EllipticCurvePrivateKey,
        service: str,
        datacenter: str,
        ttl: float,
        namespace: str = "default",
        not_before: dt.datetime | None = None,
        uri: str | None = None,
    ) -> Leaf:
        start = not_before or (dt.datetime.now(dt.UTC) - BACKDATE)
        end = (not_before or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=ttl)
        spiffe = uri or service_uri(self.trust_domain, datacenter, service, namespace)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            spiffe_id=spiffe,
            serial=colon_hex(serial),
            # X.509 times have whole seconds: report what the certificate says, not what was asked for,
            # or a short-lived leaf would be renewed after it has already expired.
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )


def trust_domain_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[9:].split("/", 1)[0].lower() or None
    return None


def write_leaf(leaf: Leaf, prefix: Path) -> tuple[Path, Path]:
    crt = prefix.with_name(prefix.name + ".crt")
    key = prefix.with_name(prefix.name + ".key")
    _write_public(crt, leaf.cert_pem)
    _write_private(key, leaf.key_pem)
    return crt, key
