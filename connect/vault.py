"""Leaf certificates from Vault's PKI secrets engine, through hvac in a worker thread (vault-nomad.md §1-2).

meshgw makes its own key (ECDSA P-256 unless configured) and sends a CSR carrying only the SPIFFE URI SAN to
``<mount>/sign/<role>``, the way Consul's agent does with its leaf-cert role (§3); with ``issue: true`` Vault makes
the key (``<mount>/issue/<role>``). The leaf is renewed at about 2/3 of its life, with jitter. A renewal only swaps
the snapshot's SSLContexts: open connections finish on the certificate they started with, new ones get the new one.

Trust: the roots of the chain Vault returns, plus every root issuer of the mount (``LIST <mount>/issuers`` and
``<mount>/issuer/<id>/json`` are unauthenticated, §1.5), polled, so that a new root an operator adds before making
it the default reaches every sidecar before any leaf it signs does; plus ``extra_roots_pem()`` when given (Consul's
roots, while a mesh migrates between CAs).

Auth (§2): a token (VAULT_TOKEN, a file, or Nomad's ``${NOMAD_SECRETS_DIR}/vault_token``), AppRole (role_id and
secret_id files) or JWT (Nomad's workload identity file, ``auth/jwt-nomad/login`` by default). The token is
renewed with ``renew-self`` at about 2/3 of its TTL; when renewal fails for good, or stops extending the token
(max TTL reached), meshgw logs in again (a token file is re-read: Nomad rewrites it).

Faults: Vault sealed, unreachable, slow, 403, or a role refusing the SAN keep the current leaf; attempts retry with
capped exponential backoff and jitter, and each component logs one line per change of state, never per retry.
When the leaf expires with no replacement the snapshot's TLS is no longer valid: listeners fail closed and
/ready answers 503 until a new leaf arrives. Keys and tokens never reach a log line; a key is written to disk
only when ``write_key_to`` is configured, mode 0600.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvac_exc
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connect.builtin_certs import renew_delay
from connect.ca import Leaf, _write_private, _write_public, colon_hex
from connect.spiffe import service_uri
from gateway import metrics
from gateway.config import ConfigError, VaultConfig

log = logging.getLogger("meshgw.vault")

T = TypeVar("T")

# Per socket operation (requests' connect and read timeouts), and the bound on a whole call awaited from the
# loop: a server that drips a body slowly can outlast the per-read timeout, the await cannot.
REQUEST_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0
# How long start() waits for the first leaf before letting the sidecar come up without one (/ready 503).
START_WAIT = 5.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0  # with a valid leaf: no hurry, the current one keeps serving
BACKOFF_MAX_NO_LEAF = 10.0  # without a valid leaf the sidecar is down: come back sooner
ROOTS_POLL_MAX = 60.0
ROOTS_POLL_MIN = 1.0
# Token renewal at about 2/3 of its TTL, as Vault Agent's lifetime watcher does (and with a spread like leaves').
TOKEN_RENEW_AT = (0.60, 0.73)

# Reasons are bounded (metric label values). Sealed, unavailable, unreachable and TLS failures describe the server,
# not one call, so they share one "vault" log state that any answer clears; the others (a slow or broken answer
# included: one endpoint can hang while others answer) belong to the operation that got them.
SERVER_REASONS = frozenset({"sealed", "unavailable", "unreachable", "tls"})
REASONS = (
    *sorted(SERVER_REASONS),
    "timeout",
    "server_error",
    "forbidden",
    "refused",
    "not_found",
    "rate_limited",
    "bad_response",
    "auth_file",
)


FINAL_RENEWAL_ERRORS = (
    "lease is not renewable",
    "lease expired",
    "invalid lease",
    "lease not found",
    "token not found",
    "past the max TTL",
    "cannot renew a token across namespaces",
)


class VaultFailure(Exception):
    """One failed Vault operation: a bounded reason and a stable one-line message (no secrets in either)."""

    def __init__(self, reason: str, message: str, relogin: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.relogin = relogin  # the token itself was refused: a fresh login may fix it
        self.op = ""  # the operation that failed (login, lookup, renew, sign, issue, issuers, parse)


def _errors(e: hvac_exc.VaultError) -> str:
    errs = [str(x).strip() for x in (e.errors or []) if str(x).strip()]
    text = "; ".join(errs) or (str(e).split(", on ", 1)[0] if str(e) else "")
    # Errors may come as a go-multierror text ("1 error occurred:\n\t* permission denied\n\n", §1.7): one line.
    text = re.sub(r"^\d+ errors? occurred:\s*\*?\s*", "", text.strip())
    return re.sub(r"\s*\n\s*\*?\s*", "; ", text).strip("; ") or "no error text"


def _oserror_text(e: BaseException) -> str:
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
    if m:
        return m.group(1).strip()
    if "RemoteDisconnected" in str(e) or "without response" in str(e):
        return "connection closed without an answer"
    return type(e).__name__


def classify(e: BaseException) -> VaultFailure:
    """Map an hvac/requests/parse error to a VaultFailure; messages are built here so they stay stable."""
    if isinstance(e, VaultFailure):
        return e
    if isinstance(e, hvac_exc.VaultError) and not isinstance(e, hvac_exc.VaultDown):
        text = _errors(e)
        # Renewal errors that only a new token fixes, matched by substring as Nomad does (vault-nomad.md §2.1),
        # whatever the status: OpenBao answers "past the max TTL, cannot renew" with a 500.
        if any(s in text for s in FINAL_RENEWAL_ERRORS):
            return VaultFailure("refused", text, relogin=True)
    if isinstance(e, hvac_exc.VaultDown):
        text = _errors(e)
        return VaultFailure("sealed" if "sealed" in text.lower() else "unavailable", f"{text} (HTTP 503)")
    if isinstance(e, hvac_exc.Forbidden | hvac_exc.Unauthorized):
        return VaultFailure("forbidden", _errors(e), relogin=True)
    if isinstance(e, hvac_exc.InvalidRequest):
        return VaultFailure("refused", _errors(e))
    if isinstance(e, hvac_exc.InvalidPath):
        return VaultFailure("not_found", f"{_errors(e)} (HTTP 404: is the path or mount right?)")
    if isinstance(e, hvac_exc.RateLimitExceeded):
        return VaultFailure("rate_limited", f"{_errors(e)} (HTTP 429)")
    if isinstance(e, hvac_exc.VaultError):
        return VaultFailure("server_error", f"{_errors(e)} ({type(e).__name__})")
    if isinstance(e, TimeoutError | requests.exceptions.Timeout):
        return VaultFailure("timeout", f"no answer within {REQUEST_TIMEOUT:g}s")
    if isinstance(e, requests.exceptions.SSLError):
        return VaultFailure("tls", f"TLS failed ({_oserror_text(e)})")
    if isinstance(e, requests.exceptions.ConnectionError):
        return VaultFailure("unreachable", f"cannot connect ({_oserror_text(e)})")
    if isinstance(e, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return VaultFailure("bad_response", "the answer was cut off")
    if isinstance(e, requests.exceptions.RequestException):
        return VaultFailure("unreachable", f"the request failed ({type(e).__name__})")
    if isinstance(e, ValueError | KeyError | TypeError):
        return VaultFailure("bad_response", f"unexpected answer ({type(e).__name__}: {e})")
    return VaultFailure("server_error", f"{type(e).__name__}")


# ---------------------------------------------------------------------------------------------- the hvac adapter


@dataclass(frozen=True)
class TokenInfo:
    ttl: float  # seconds left; 0 = never expires (a root token)
    renewable: bool


class VaultAPI:
    """One hvac client (session, TLS, namespace, timeouts) and the few endpoints meshgw uses. Blocking: call
    its methods in a worker thread. hvac is given every setting explicitly, so neither VAULT_TOKEN nor
    ~/.vault-token is picked up behind the config's back (hvac:v1/__init__.py)."""

    def __init__(self, cfg: VaultConfig):
        self.cfg = cfg
        self.token = ""
        self.client = self._new_client()

    def _verify(self) -> bool | str:
        # Vault's client: CACERT wins over CAPATH; VAULT_SKIP_VERIFY turns checking off (vault-nomad.md §2.4).
        if not self.cfg.verify:
            return False
        if self.cfg.ca_file:
            return str(self.cfg.ca_file)
        return str(self.cfg.ca_path) if self.cfg.ca_path else True

    def _new_client(self) -> hvac.Client:
        return hvac.Client(
            url=self.cfg.address,
            token=self.token,
            verify=self._verify(),
            cert=(str(self.cfg.cert_file), str(self.cfg.key_file))
            if self.cfg.cert_file and self.cfg.key_file
            else None,
            timeout=REQUEST_TIMEOUT,
            namespace=self.cfg.namespace,
            # LIST as GET ?list=true (§0.8): proxies and load balancers in front of Vault may refuse the verb.
            strict_http=True,
        )

    def reset(self) -> None:
        """A fresh session: a call that timed out may still be running in its thread on the old one."""
        self.client = self._new_client()

    def set_token(self, token: str) -> None:
        self.token = token
        self.client.token = token

    @staticmethod
    def _dict(resp: Any) -> dict[str, Any]:
        # hvac returns the parsed body only for 200 + JSON, otherwise the raw Response (§1.8).
        if not isinstance(resp, dict):
            raise ValueError(f"HTTP {getattr(resp, 'status_code', '?')} without a JSON body")
        return resp

    @staticmethod
    def _auth(resp: dict[str, Any]) -> tuple[str, TokenInfo]:
        auth = resp.get("auth") or {}
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise ValueError("no auth.client_token in the login answer")
        return token, TokenInfo(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))

    def login_approle(self, role_id: str, secret_id: str, path: str) -> tuple[str, TokenInfo]:
        return self._auth(
            self._dict(self.client.auth.approle.login(role_id, secret_id, use_token=False, mount_point=path))
        )

    def login_jwt(self, jwt: str, role: str, path: str) -> tuple[str, TokenInfo]:
        return self._auth(self._dict(self.client.auth.jwt.jwt_login(role, jwt, use_token=False, path=path)))

    def lookup_self(self) -> TokenInfo:
        data = self._dict(self.client.auth.token.lookup_self()).get("data") or {}
        return TokenInfo(float(data.get("ttl") or 0), bool(data.get("renewable")))

    def renew_self(self) -> TokenInfo:
        return self._auth(self._dict(self.client.auth.token.renew_self()))[1]

    def sign(self, csr_pem: str, ttl: float | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"format": "pem"}
        if ttl:
            extra["ttl"] = f"{round(ttl)}s"
        # common_name "" with use_csr_common_name (the default) keeps the CSR's (empty) subject: no warning.
        resp = self.client.secrets.pki.sign_certificate(
            name=self.cfg.role, csr=csr_pem, common_name="", extra_params=extra, mount_point=self.cfg.mount
        )
        return self._dict(resp).get("data") or {}

    def issue(self, uri: str, ttl: float | None) -> dict[str, Any]:
        # key_type/key_bits in the request: a role with key_type "any" (Consul's template) needs them to issue.
        extra: dict[str, Any] = {
            "uri_sans": uri,
            "format": "pem",
            "private_key_format": "pkcs8",
            "key_type": self.cfg.key_type,
            "key_bits": self.cfg.key_bits,
        }
        if ttl:
            extra["ttl"] = f"{round(ttl)}s"
        resp = self.client.secrets.pki.generate_certificate(
            name=self.cfg.role, common_name="", extra_params=extra, mount_point=self.cfg.mount
        )
        return self._dict(resp).get("data") or {}

    def issuer_ids(self) -> list[str]:
        try:
            resp = self._dict(self.client.secrets.pki.list_issuers(mount_point=self.cfg.mount))
        except hvac_exc.InvalidPath as e:
            if not e.errors:  # a LIST with no results is a 404 with "errors": [] (§1.7)
                return []
            raise
        keys = (resp.get("data") or {}).get("keys") or []
        return [str(k) for k in keys]

    def issuer_pems(self, issuer_id: str) -> list[str]:
        # Unauthenticated JSON form: the issuer's certificate and its chain as a list (§1.5).
        try:
            resp = self._dict(self.client.adapter.get(f"/v1/{self.cfg.mount}/issuer/{issuer_id}/json"))
        except (hvac_exc.InvalidPath, hvac_exc.InternalServerError) as e:
            # Deleted between the LIST and this read: OpenBao answers 500 "unable to find PKI issuer for reference"
            # (or "pki issuer id ... does not exist" while the delete is in flight). It is simply gone.
            text = " ".join(str(x) for x in e.errors or [])
            if "unable to find PKI issuer" in text or "does not exist" in text:
                return []
            raise
        data = resp.get("data") or {}
        out = [data.get("certificate") or ""]
        chain = data.get("ca_chain") or []
        out.extend(chain if isinstance(chain, list) else [chain])
        return [p for p in out if isinstance(p, str) and p.strip()]


# ---------------------------------------------------------------------------------------------- certificates


def _load_pems(pems: list[str]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for p in pems:
        if p and p.strip():
            out.extend(x509.load_pem_x509_certificates(p.encode()))
    return out


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # InvalidSignature, or a key type that cannot self-verify
        return False
    return True


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string() or "?"


def _unique(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out = []
    for c in certs:
        fp = c.fingerprint(hashes.SHA256())
        if fp not in seen:
            seen.add(fp)
            out.append(c)
    return out


def make_key(key_type: str, key_bits: int) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    curve = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}[key_bits]
    return ec.generate_private_key(curve())


def make_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, uri: str) -> str:
    # Like Consul's agent: an empty subject and the SPIFFE ID as the only SAN (C:agent/connect/csr.go); the role
    # needs require_cn=false, as Consul's leaf-cert role has (vault-nomad.md §1.3).
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Issued:
    leaf: Leaf
    roots: tuple[x509.Certificate, ...]  # self-signed certificates of the chain Vault returned
    issuer_cn: str


def parse_issued(data: dict[str, Any], uri: str, key_pem: bytes | None) -> Issued:
    """A sign/issue answer's data (§1.4) as a Leaf: the leaf and its chain minus the root, times and serial taken
    from the certificate itself. Refuses a certificate that lacks our SPIFFE ID or does not match our key."""
    cert_pem = data.get("certificate")
    if not isinstance(cert_pem, str) or "BEGIN CERTIFICATE" not in cert_pem:
        raise ValueError("no certificate in the answer")
    certs = x509.load_pem_x509_certificates(cert_pem.encode())
    cert, bundled = certs[0], certs[1:]  # format pem_bundle would append the chain here
    chain_pems = data.get("ca_chain") or [data.get("issuing_ca") or ""]
    if isinstance(chain_pems, str):
        chain_pems = [chain_pems]
    chain = _unique([*bundled, *_load_pems(list(chain_pems))])
    if not chain:
        raise ValueError("no issuing_ca or ca_chain in the answer")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uri not in uris:
        raise VaultFailure("bad_response", f"Vault returned a certificate without the URI SAN {uri} (has {uris})")
    if key_pem is None:
        raw_key = data.get("private_key")
        if not isinstance(raw_key, str) or "PRIVATE KEY" not in raw_key:
            raise ValueError("no private_key in the issue answer")
        key_pem = raw_key.encode() + (b"" if raw_key.endswith("\n") else b"\n")
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise VaultFailure("bad_response", "Vault returned a certificate for another key")
    intermediates = [c for c in chain if not is_self_signed(c)]
    roots = tuple(c for c in chain if is_self_signed(c))
    leaf = Leaf(
        cert_pem=b"".join(_pem(c) for c in [cert, *intermediates]),
        key_pem=key_pem,
        spiffe_id=uri,
        serial=colon_hex(cert.serial_number),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )
    return Issued(leaf, roots, _cn(chain[0]) if chain else "?")


# ---------------------------------------------------------------------------------------------- the provider


class _Backoff:
    """Capped exponential backoff with jitter (half to full of the step), reset by a success."""

    def __init__(self) -> None:
        self.failures = 0

    def next(self, cap: float) -> float:
        step = min(cap, BACKOFF_MIN * (2**self.failures))
        self.failures = min(self.failures + 1, 30)
        return step * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _read_secret_file(path: Path) -> str:
    text = path.read_text().strip()
    if not text:
        raise ValueError("the file is empty")
    return text


class VaultCertProvider:
    def __init__(
        self,
        cfg: VaultConfig,
        service: str,
        datacenter: str,
        on_tls: Callable[[str, Leaf, bytes], None],
        extra_roots_pem: Callable[[], bytes] | None = None,
    ):
        self.cfg = cfg
        self.service = service
        self.datacenter = datacenter
        self.on_tls = on_tls
        self.extra_roots_pem = extra_roots_pem
        self.spiffe_id = service_uri(cfg.trust_domain, datacenter, service)
        self.api = VaultAPI(cfg)
        self.leaf: Leaf | None = None
        self.roots_pem = b""
        self._leaf_life = 0.0  # seconds of validity the current leaf had when it arrived
        self._chain_roots: tuple[x509.Certificate, ...] = ()
        self._issuer_roots: tuple[x509.Certificate, ...] = ()
        self._issuer_cache: dict[str, list[x509.Certificate]] = {}
        # token state (monotonic deadlines)
        self._token_ok = False
        self._token_due: float | None = None  # when to renew (or log in again); None: never
        self._token_expires: float | None = None
        self._token_relogin = False  # at _token_due: log in again rather than renew
        self._token_ttl = 0.0
        # schedule
        self._leaf_due = 0.0
        self._roots_due = 0.0
        self._expiry_logged: str | None = None
        self._leaf_backoff = _Backoff()
        self._token_backoff = _Backoff()
        self._roots_backoff = _Backoff()
        self._states: dict[str, tuple[str, str] | None] = {}
        self._first_attempt = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the local auth files (an operator's mistake: ConfigError), then get the first leaf in the
        background. Wait a little for it so a healthy start is ready at once; never fail because of Vault."""
        self._read_credentials(at_start=True)
        self._first_attempt = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vault-certs")
        try:
            async with asyncio.timeout(START_WAIT):
                await self._first_attempt.wait()
        except TimeoutError:
            pass

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ------------------------------------------------------------------ credentials

    def _auth_desc(self) -> str:
        a = self.cfg.auth
        if a.method == "approle":
            return f"approle login at auth/{a.path or 'approle'}"
        if a.method == "jwt":
            return f"jwt login at auth/{a.path or 'jwt-nomad'}" + (f" (role {a.role})" if a.role else "")
        return f"token from {a.token_file}" if a.token_file else "token from the config or VAULT_TOKEN"

    def _read_credentials(self, at_start: bool = False) -> dict[str, str]:
        a = self.cfg.auth
        files: dict[str, Path | None] = {}
        if a.method == "token":
            if a.token_file is None:
                return {"token": a.token or ""}
            files = {"token_file": a.token_file}
        elif a.method == "approle":
            files = {"role_id_file": a.role_id_file, "secret_id_file": a.secret_id_file}
        else:
            files = {"jwt_file": a.jwt_file}
        out: dict[str, str] = {}
        for key, path in files.items():
            assert path is not None  # config validation guarantees it
            try:
                out[key] = _read_secret_file(path)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                why = getattr(e, "strerror", None) or str(e)
                if at_start:
                    raise ConfigError([f"{path}: certificates.vault.auth.{key}: cannot read ({why})"]) from None
                f = VaultFailure("auth_file", f"{path}: cannot read ({why})")
                f.op = "login"
                raise f from None
        return out

    # ------------------------------------------------------------------ calls

    async def _call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """One blocking hvac call in a worker thread, bounded; failures come back as VaultFailure."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as the
            # thread finishes, and stop() would then wait on a loop that never ends.
            async with asyncio.timeout(CALL_TIMEOUT):
                result: T = await asyncio.to_thread(fn, *args)
        except Exception as e:  # every failure is classified; none may escape the provider's loop
            f = classify(e)
            f.op = op
            if f.reason in ("timeout", "bad_response", "unreachable"):
                self.api.reset()
            self._vault_state(f)
            self._fail_metric(op, f.reason)
            raise f from None
        self._vault_state(None)
        return result

    def _fail_metric(self, op: str, reason: str) -> None:
        # Failures by operation and reason, once gateway/metrics.py defines VAULT_FAILURES (see the module's report);
        # the leaf counter CERT_FAILURES{provider="vault"} is counted per failed leaf attempt in _leaf_attempt.
        by_reason = getattr(metrics, "VAULT_FAILURES", None)
        if by_reason is not None:
            by_reason.labels(op, reason).inc()

    # ------------------------------------------------------------------ state logging

    def _set_state(self, component: str, state: tuple[str, str] | None, bad: str, good: str | None) -> None:
        old = self._states.get(component)
        if old == state:
            return
        self._states[component] = state
        if state is not None:
            log.error(bad)
        elif old is not None and good:
            log.info(good)

    def _keeping(self) -> str:
        if self.leaf is not None and time.time() < self.leaf.not_after:
            return f"keeping leaf {self.leaf.serial} (valid until {_utc(self.leaf.not_after)})"
        return "no valid leaf certificate: inbound refuses, upstreams fail, /ready answers 503"

    def _vault_state(self, f: VaultFailure | None) -> None:
        if f is not None and f.reason in ("timeout", "bad_response"):
            return  # no (whole) answer: says nothing about the server as a whole
        if f is not None and f.reason not in SERVER_REASONS:
            f = None  # the server answered: it is up, whatever it said
        self._set_state(
            "vault",
            (f.reason, f.message) if f else None,
            f"Vault at {self.cfg.address}: {f.message if f else ''} [{f.reason if f else ''}]; "
            f"{self._keeping()}; retrying with backoff",
            f"Vault at {self.cfg.address} answers again",
        )

    def _op_state(self, component: str, f: VaultFailure | None, what: str) -> None:
        if f is not None and f.reason in SERVER_REASONS:
            return  # already told as the server's state
        self._set_state(
            component,
            (f.reason, f.message) if f else None,
            f"{what} failed: {f.message if f else ''} [{f.reason if f else ''}]; {self._keeping()}; "
            "retrying with backoff",
            f"{what} works again",
        )

    # ------------------------------------------------------------------ token

    async def _login(self) -> None:
        """A fresh token: log in (AppRole, JWT) or (re-)read the configured token and look it up."""
        a = self.cfg.auth
        creds = self._read_credentials()
        self._token_ok = False
        if a.method == "approle":
            token, info = await self._call(
                "login", self.api.login_approle, creds["role_id_file"], creds["secret_id_file"], a.path or "approle"
            )
            self.api.set_token(token)
        elif a.method == "jwt":
            token, info = await self._call(
                "login", self.api.login_jwt, creds["jwt_file"], a.role or "", a.path or "jwt-nomad"
            )
            self.api.set_token(token)
        else:
            self.api.set_token(creds["token_file"] if "token_file" in creds else creds["token"])
            info = await self._call("lookup", self.api.lookup_self)
        self._token_ok = True
        self._token_ttl = info.ttl
        self._schedule_token(info, relogin_only=not info.renewable)

    def _schedule_token(self, info: TokenInfo, relogin_only: bool) -> None:
        now = time.monotonic()
        if info.ttl <= 0:
            self._token_due = self._token_expires = None  # never expires (root or periodic-less admin token)
            return
        self._token_expires = now + info.ttl
        # Never sooner than a second (or the expiry): a token near its end must not turn into a busy loop.
        self._token_due = now + max(info.ttl * random.uniform(*TOKEN_RENEW_AT), min(info.ttl, 1.0))
        self._token_relogin = relogin_only

    async def _renew(self) -> None:
        info = await self._call("renew", self.api.renew_self)
        # A renewal that no longer extends the token (its max TTL is near) means the next step is a new login
        # (Vault Agent's lifetime watcher does the same), except for a bare token, which can only be re-read.
        capped = info.ttl < self._token_ttl * 0.9 - 1
        self._token_ttl = max(self._token_ttl, info.ttl)
        self._schedule_token(info, relogin_only=capped or not info.renewable)

    async def _ensure_token(self) -> None:
        if not self._token_ok:
            await self._login()

    async def _token_upkeep(self) -> None:
        """Renew (or replace) the token when due. Transient failures retry; a token refused for good, or past
        its expiry, is replaced by a fresh login."""
        what = f"Vault token upkeep ({self._auth_desc()})"
        try:
            expired = self._token_expires is not None and time.monotonic() >= self._token_expires
            if not self._token_ok or self._token_relogin or expired:
                await self._login()
            else:
                try:
                    await self._renew()
                except VaultFailure as f:
                    if not f.relogin:
                        raise
                    log.info("Vault token renewal refused (%s): logging in again", f.message)
                    await self._login()
        except VaultFailure as f:
            if f.relogin:
                self._token_ok = False
            self._op_state("auth", f, what)
            self._token_due = time.monotonic() + self._token_backoff.next(self._retry_cap())
            return
        self._token_backoff.reset()
        self._op_state("auth", None, what)

    # ------------------------------------------------------------------ leaf

    async def _request_leaf(self) -> Issued:
        await self._ensure_token()
        if self.cfg.issue:
            data = await self._call("issue", self.api.issue, self.spiffe_id, self.cfg.ttl)
            return await self._call("parse", parse_issued, data, self.spiffe_id, None)
        key, csr = await asyncio.to_thread(self._key_and_csr)
        data = await self._call("sign", self.api.sign, csr, self.cfg.ttl)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return await self._call("parse", parse_issued, data, self.spiffe_id, key_pem)

    def _key_and_csr(self) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, str]:
        key = make_key(self.cfg.key_type, self.cfg.key_bits)
        return key, make_csr(key, self.spiffe_id)

    async def _leaf_attempt(self) -> None:
        endpoint = f"{self.cfg.mount}/{'issue' if self.cfg.issue else 'sign'}/{self.cfg.role}"
        what = f"leaf certificate for {self.spiffe_id} from {endpoint}"
        try:
            try:
                issued = await self._request_leaf()
            except VaultFailure as f:
                if not (f.relogin and self._token_ok):
                    raise
                # Our token was refused (revoked, expired early): one fresh login, then one more try. Told once:
                # when a fresh token is refused too (a policy problem), the leaf's failure state says so.
                if self._states.get("leaf") is None:
                    log.info("Vault refused the token (%s): logging in again", f.message)
                self._token_ok = False
                issued = await self._request_leaf()
            self._install(issued)
        except VaultFailure as f:
            metrics.CERT_FAILURES.labels("vault").inc()
            if f.relogin:
                self._token_ok = False
            if f.op in ("login", "lookup"):
                self._op_state("auth", f, f"Vault {self._auth_desc()}")
            else:
                self._op_state("leaf", f, what)
            self._leaf_due = time.monotonic() + self._leaf_backoff.next(self._retry_cap())
            return
        self._leaf_backoff.reset()
        self._op_state("auth", None, f"Vault {self._auth_desc()}")
        self._op_state("leaf", None, what)
        self._leaf_due = time.monotonic() + renew_delay(issued.leaf)
        self._roots_due = min(self._roots_due, time.monotonic())  # the issuer may be new: look at the mount now

    def _install(self, issued: Issued) -> None:
        leaf = issued.leaf
        previous = (self.leaf, self._chain_roots)
        self.leaf, self._chain_roots = leaf, issued.roots
        bundle = self._trust_bundle()
        try:
            self.on_tls(self.cfg.trust_domain, leaf, bundle)
        except Exception as e:  # e.g. OpenSSL refusing the key or chain: keep serving the previous leaf
            self.leaf, self._chain_roots = previous
            f = VaultFailure("bad_response", f"the certificate Vault returned cannot be used ({e})")
            f.op = "parse"
            raise f from None
        self.roots_pem = bundle
        self._leaf_life = max(0.0, leaf.not_after - time.time())
        self._expiry_logged = None
        if self.cfg.write_key_to is not None:
            self._write_files(leaf)
        metrics.CERT_ROTATIONS.inc()
        log.info(
            "leaf certificate %s serial %s from Vault (issuer %s) valid until %s",
            leaf.spiffe_id,
            leaf.serial,
            issued.issuer_cn,
            _utc(leaf.not_after),
        )

    def _write_files(self, leaf: Leaf) -> None:
        path = self.cfg.write_key_to
        assert path is not None
        crt = path.with_suffix(".crt") if path.suffix == ".key" else path.with_name(path.name + ".crt")
        try:
            _write_private(path, leaf.key_pem)
            _write_public(crt, leaf.cert_pem)
        except OSError as e:
            log.error("cannot write the leaf key to %s (%s); the certificate is in use regardless", path, e.strerror)

    # ------------------------------------------------------------------ trust

    def _trust_bundle(self) -> bytes:
        certs = [*self._chain_roots, *self._issuer_roots]
        if self.extra_roots_pem is not None:
            try:
                extra = self.extra_roots_pem()
                if extra:
                    certs.extend(x509.load_pem_x509_certificates(extra))
            except Exception as e:  # another provider's problem must not stop ours
                log.warning("extra trusted roots unavailable (%s); trusting Vault's only", e)
        certs = _unique(certs)
        if not certs and self.leaf is not None:
            # The chain stops below a root Vault does not hold (an intermediate mount without its parent imported):
            # trust the top of the chain we got. OpenSSL needs X509_V_FLAG_PARTIAL_CHAIN to accept it as an anchor.
            chain = x509.load_pem_x509_certificates(self.leaf.cert_pem)[1:]
            certs = chain[-1:]
        return b"".join(_pem(c) for c in certs)

    async def _roots_refresh(self) -> None:
        try:
            ids = await self._call("issuers", self.api.issuer_ids)
            roots: list[x509.Certificate] = []
            for i in ids:
                if i not in self._issuer_cache:
                    pems = await self._call("issuers", self.api.issuer_pems, i)
                    self._issuer_cache[i] = await asyncio.to_thread(_load_pems, pems)
                roots.extend(c for c in self._issuer_cache[i] if is_self_signed(c))
            for gone in set(self._issuer_cache) - set(ids):
                del self._issuer_cache[gone]
        except VaultFailure as f:
            self._op_state("roots", f, f"reading the issuers of {self.cfg.mount}/")
            self._roots_due = time.monotonic() + self._roots_backoff.next(self._roots_interval())
            return
        self._roots_backoff.reset()
        self._op_state("roots", None, f"reading the issuers of {self.cfg.mount}/")
        self._issuer_roots = tuple(_unique(roots))
        self._roots_due = time.monotonic() + self._roots_interval()
        if self.leaf is None:
            return
        bundle = self._trust_bundle()
        if bundle != self.roots_pem:
            self.roots_pem = bundle
            self.on_tls(self.cfg.trust_domain, self.leaf, bundle)
            names = ", ".join(_cn(c) for c in x509.load_pem_x509_certificates(bundle))
            log.info("trusted roots changed: %d (%s)", bundle.count(b"-----BEGIN CERTIFICATE-----"), names)

    def _roots_interval(self) -> float:
        life = self._leaf_life or ROOTS_POLL_MAX * 10
        return min(ROOTS_POLL_MAX, max(ROOTS_POLL_MIN, life / 10))

    # ------------------------------------------------------------------ the loop

    def _retry_cap(self) -> float:
        if self.leaf is None:
            return BACKOFF_MAX_NO_LEAF
        cap = min(BACKOFF_MAX, max(1.0, self._leaf_life / 10))
        if time.time() >= self.leaf.not_after:
            cap = min(cap, BACKOFF_MAX_NO_LEAF)
        return cap

    def _check_expiry(self) -> float | None:
        """Log once when the leaf expires unreplaced; the seconds until it would, otherwise."""
        if self.leaf is None:
            return None
        left = self.leaf.not_after - time.time()
        if left > 0:
            return left
        if self._expiry_logged != self.leaf.serial:
            self._expiry_logged = self.leaf.serial
            log.error(
                "leaf certificate %s expired at %s with no replacement: failing closed (inbound refuses, "
                "upstreams fail, /ready 503) until Vault issues a new one",
                self.leaf.serial,
                _utc(self.leaf.not_after),
            )
        return None

    async def _step(self, due: float, action: Callable[[], Awaitable[None]]) -> None:
        if time.monotonic() >= due:
            await self._guarded(action)

    async def _run(self) -> None:
        try:
            await self._guarded(self._leaf_attempt)
        finally:
            self._first_attempt.set()
        while not self._stopping:
            await self._step(self._leaf_due, self._leaf_attempt)
            if self._token_due is not None:
                await self._step(self._token_due, self._token_upkeep)
            await self._step(self._roots_due, self._roots_refresh)
            left = self._check_expiry()
            now = time.monotonic()
            dues = [self._leaf_due, self._roots_due]
            if self._token_due is not None:
                dues.append(self._token_due)
            if left is not None:
                dues.append(now + left + 0.01)
            await asyncio.sleep(max(0.0, min(dues) - now))

    async def _guarded(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except Exception:  # a bug here must not end certificate upkeep: log it, try again later
            log.exception("internal error in the Vault certificate provider; retrying")
            self._leaf_due = max(self._leaf_due, time.monotonic() + self._leaf_backoff.next(self._retry_cap()))
