"""The Consul and Vault sections, with the defaults HashiCorp's own clients take from the environment
(consul.md §10, vault-nomad.md §2.4)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.reader import (
    _bool,
    _env_bool,
    _int,
    _Reader,
    _resolve,
    _trust_domain,
    choice,
    parse_address,
    parse_duration,
    text,
)
from gateway.config.schema import (
    ConsulConfig,
    VaultAuthConfig,
    VaultConfig,
)


def _parse_consul_address(value: str, ssl: bool | None) -> tuple[str, str, int]:
    scheme = "https" if ssl else "http"
    rest = value
    if "://" in value:
        scheme, rest = value.split("://", 1)
        if scheme == "unix":
            # Nomad hands bridge-mode tasks unix://<alloc>/alloc/tmp/consul_http.sock (consul.md §10).
            if not rest.startswith("/"):
                raise ValueError(f"{value!r}: expected unix:///absolute/path.sock")
            return "unix", rest, 0
        if scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: unknown protocol scheme {scheme!r} (expected http, https or unix)")
        if ssl:
            scheme = "https"
    rest = rest.rstrip("/")
    addr = parse_address(rest if ":" in rest.lstrip("[") or rest.startswith("[") else f"{rest}:8500")
    return scheme, addr.host, addr.port


def _parse_consul(r: _Reader, raw: Any, base: Path, env: Mapping[str, str]) -> ConsulConfig:
    key = "control_plane.consul"
    c = r.mapping(
        raw,
        key,
        (
            "address",
            "token",
            "token_file",
            "ca_file",
            "ca_path",
            "cert_file",
            "key_file",
            "tls_server_name",
            "namespace",
            "verify",
            "wait",
            "register",
            "register_service",
            "sidecar_for",
        ),
    )
    ssl = _env_bool(env.get("CONSUL_HTTP_SSL"))
    address = r.get(c, key, "address", text, None) or env.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"
    try:
        scheme, host, port = _parse_consul_address(address, ssl)
    except ValueError as e:
        r.problem(f"{key}.address", str(e))
        scheme, host, port = "http", "127.0.0.1", 8500

    def path_or_env(name: str, var: str) -> Path | None:
        v = r.get(c, key, name, text, None) or env.get(var)
        return _resolve(base, v) if v else None

    # Token precedence of Consul's client: explicit token file > explicit token > env token file > env token
    # (consul.md §10; C:api/api.go). py-consul itself lets CONSUL_HTTP_TOKEN override everything, so
    # meshgw resolves the token here and never leaves it to the library.
    token = r.get(c, key, "token", text, None)
    token_file = r.get(c, key, "token_file", text, None)
    if token_file is None and token is None:
        token_file = env.get("CONSUL_HTTP_TOKEN_FILE") or None
        token = None if token_file else (env.get("CONSUL_HTTP_TOKEN") or None)
    if token_file is None and token is None:
        # Nomad 1.7+ workload identity: the task's Consul token is written to secrets/consul_token and exported
        # as CONSUL_TOKEN (N:client/allocrunner/taskrunner/consul_hook.go, the issue #15); the file wins, as for Vault.
        wi_file = Path(env["NOMAD_SECRETS_DIR"]) / "consul_token" if env.get("NOMAD_SECRETS_DIR") else None
        if wi_file is not None and wi_file.exists():
            token_file = str(wi_file)
        else:
            token = env.get("CONSUL_TOKEN") or None
    verify_env = _env_bool(env.get("CONSUL_HTTP_SSL_VERIFY"))
    wait = r.get(c, key, "wait", parse_duration, 300.0) or 300.0
    if wait > 600:
        r.problem(f"{key}.wait", "at most 10m (Consul caps blocking queries there)")
    return ConsulConfig(
        scheme=scheme,
        host=host,
        port=port,
        token=token if not token_file else None,
        token_file=_resolve(base, token_file) if token_file else None,
        ca_file=path_or_env("ca_file", "CONSUL_CACERT"),
        ca_path=path_or_env("ca_path", "CONSUL_CAPATH"),
        # Consul strips a port from the server name (C:api/api.go).
        tls_server_name=(
            r.get(c, key, "tls_server_name", text, None) or env.get("CONSUL_TLS_SERVER_NAME") or ""
        ).rsplit(":", 1)[0]
        or None,
        socket=Path(host) if scheme == "unix" else None,
        cert_file=path_or_env("cert_file", "CONSUL_CLIENT_CERT"),
        key_file=path_or_env("key_file", "CONSUL_CLIENT_KEY"),
        verify=bool(r.get(c, key, "verify", _bool, True if verify_env is None else verify_env)),
        namespace=r.get(c, key, "namespace", text, None) or env.get("CONSUL_NAMESPACE") or None,
        wait=wait,
        register=bool(r.get(c, key, "register", _bool, True)),
        register_service=bool(r.get(c, key, "register_service", _bool, False)),
        sidecar_for=r.get(c, key, "sidecar_for", text, None),
    )


def _parse_vault(r: _Reader, raw: Any, base: Path, env: Mapping[str, str]) -> VaultConfig:
    key = "certificates.vault"
    v = r.mapping(
        raw,
        key,
        (
            "address",
            "mount",
            "role",
            "trust_domain",
            "ttl",
            "namespace",
            "ca_file",
            "ca_path",
            "cert_file",
            "key_file",
            "verify",
            "key_type",
            "key_bits",
            "issue",
            "write_key_to",
            "auth",
        ),
    )
    if raw is None:
        r.problem(key, "is required with certificates.type: vault (expected at least role and trust_domain)")
    key_type = r.get(v, key, "key_type", choice("ec", "rsa"), "ec") or "ec"
    key_bits = r.get(v, key, "key_bits", _int, 256 if key_type == "ec" else 2048) or 256
    if key_type == "ec" and key_bits not in (256, 384, 521):
        r.problem(f"{key}.key_bits", f"{key_bits} is not an EC curve size (expected 256, 384 or 521)")
    if key_type == "rsa" and key_bits < 2048:
        r.problem(f"{key}.key_bits", f"{key_bits} is too small for RSA (expected 2048 or more)")
    a = r.mapping(
        v.get("auth"),
        f"{key}.auth",
        ("method", "token", "token_file", "role_id_file", "secret_id_file", "jwt_file", "role", "path"),
    )
    akey = f"{key}.auth"
    method = r.get(a, akey, "method", choice("token", "approle", "jwt"), "token") or "token"

    def p(name: str) -> Path | None:
        val = r.get(a, akey, name, text, None)
        return _resolve(base, val) if val else None

    token_file = p("token_file")
    explicit_token = r.get(a, akey, "token", text, None)
    nomad_file = Path(env["NOMAD_SECRETS_DIR"]) / "vault_token" if env.get("NOMAD_SECRETS_DIR") else None
    if (
        token_file is None
        and explicit_token is None
        and method == "token"
        and nomad_file is not None
        and (not env.get("VAULT_TOKEN") or nomad_file.exists())
    ):
        # Nomad writes the task's token there and rewrites it on re-login, while VAULT_TOKEN is frozen at
        # task start (vault-nomad.md §2.4, vault_hook.go vaultTokenFile).
        token_file = nomad_file
    auth = VaultAuthConfig(
        method=method,
        token=r.get(a, akey, "token", text, None) or env.get("VAULT_TOKEN") or None,
        token_file=token_file,
        role_id_file=p("role_id_file"),
        secret_id_file=p("secret_id_file"),
        jwt_file=p("jwt_file"),
        role=r.get(a, akey, "role", text, None),
        path=r.get(a, akey, "path", text, None),
    )
    if method == "token" and not auth.token and auth.token_file is None:
        r.problem(f"{akey}.token_file", "token auth needs a token (VAULT_TOKEN, auth.token or auth.token_file)")
    if method == "approle" and (auth.role_id_file is None or auth.secret_id_file is None):
        r.problem(f"{akey}.role_id_file", "approle auth needs role_id_file and secret_id_file")
    if method == "jwt" and auth.jwt_file is None:
        r.problem(f"{akey}.jwt_file", "jwt auth needs jwt_file (the workload identity token Nomad writes)")

    def path_or_env(name: str, var: str) -> Path | None:
        val = r.get(v, key, name, text, None) or env.get(var)
        return _resolve(base, val) if val else None

    skip_env = _env_bool(env.get("VAULT_SKIP_VERIFY"))
    wk = r.get(v, key, "write_key_to", text, None)
    address = (
        r.get(v, key, "address", text, None)
        or env.get("VAULT_AGENT_ADDR")
        or env.get("VAULT_ADDR")
        or "https://127.0.0.1:8200"
    )
    return VaultConfig(
        address=address.rstrip("/"),
        mount=(r.get(v, key, "mount", text, "pki") or "pki").strip("/"),
        role=r.get(v, key, "role", text, required=raw is not None) or "",
        trust_domain=r.get(v, key, "trust_domain", _trust_domain, required=raw is not None) or "",
        ttl=r.get(v, key, "ttl", parse_duration, None),
        namespace=r.get(v, key, "namespace", text, None) or env.get("VAULT_NAMESPACE") or None,
        ca_file=path_or_env("ca_file", "VAULT_CACERT"),
        ca_path=path_or_env("ca_path", "VAULT_CAPATH"),
        cert_file=path_or_env("cert_file", "VAULT_CLIENT_CERT"),
        key_file=path_or_env("key_file", "VAULT_CLIENT_KEY"),
        verify=bool(r.get(v, key, "verify", _bool, not skip_env if skip_env is not None else True)),
        key_type=key_type,
        key_bits=key_bits,
        issue=bool(r.get(v, key, "issue", _bool, False)),
        write_key_to=_resolve(base, wk) if wk else None,
        auth=auth,
    )
