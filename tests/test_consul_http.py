"""The Consul API client of our own (connect/consul_http.py) against a real HTTPS listener: TLS verified with the
configured CA and server name, the token sent, chunked and Content-Length answers read, one-line errors for a
wrong CA, a truncated answer and a head over the bound."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connect.consul import ConsulAPI
from connect.watch import WatchError
from gateway.config import load_config

Handler = Callable[[bytes], Awaitable[bytes]]


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, k = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return crt, k


async def _serve(
    tmp_path: Path, answer: Handler, check: Callable[[ConsulAPI], Awaitable[None]], ca: Path | None
) -> None:
    crt, key = _self_signed(tmp_path, "consul.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            w.write(await answer(head))
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "m.yaml").write_text(
        "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
        "control_plane: {type: consul, consul: {token: s3cret}}\ncertificates: {type: consul}\n"
    )
    env = {
        "CONSUL_HTTP_ADDR": f"https://127.0.0.1:{port}",
        "CONSUL_CACERT": str(crt if ca is None else ca),
        "CONSUL_TLS_SERVER_NAME": "consul.test",
    }
    cfg = load_config(tmp_path / "m.yaml", env=env)
    assert cfg.control_plane.consul is not None
    api = ConsulAPI(cfg.control_plane.consul)
    await api.open()
    try:
        await check(api)
    finally:
        await api.close()
        server.close()


def test_https_with_the_configured_ca_and_server_name(tmp_path: Path) -> None:
    heads: list[bytes] = []

    async def answer(head: bytes) -> bytes:
        heads.append(head)
        if head.startswith(b"GET /v1/agent/self"):
            body = b'{"Member": {"Addr": "10.0.0.5"}}'
            # Go's net/http chunks answers it does not know the length of.
            return (
                b"HTTP/1.1 200 OK\r\nX-Consul-Index: 42\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(body[:10]):x}\r\n".encode() + body[:10] + b"\r\n"
                + f"{len(body[10:]):x}\r\n".encode() + body[10:] + b"\r\n0\r\n\r\n"
            )  # fmt: skip
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 25\r\n\r\nPermission denied: token\n"

    async def check(api: ConsulAPI) -> None:
        assert await api.request("GET", "/v1/agent/self", {"dc": "dc1"}) == (42, {"Member": {"Addr": "10.0.0.5"}})
        with pytest.raises(WatchError, match=r"^PUT /v1/agent/service/register: 403 Permission denied: token$"):
            await api.request("PUT", "/v1/agent/service/register", body={"Name": "web"})

    asyncio.run(_serve(tmp_path, answer, check, None))
    assert heads[0].startswith(b"GET /v1/agent/self?dc=dc1 HTTP/1.1\r\n")
    assert b"\r\nX-Consul-Token: s3cret\r\n" in heads[0]
    assert b"\r\nContent-Length: 15\r\n" in heads[1] and b"Content-Type: application/json" in heads[1]


def test_errors_are_one_line(tmp_path: Path) -> None:
    other_ca, _ = _self_signed(tmp_path, "other.test")
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000])

    async def answer(head: bytes) -> bytes:
        return next(answers)

    async def check(api: ConsulAPI) -> None:
        for what in ("connection closed after 2 bytes", "response head over"):
            with pytest.raises(WatchError, match=what) as e:
                await api.request("GET", "/v1/agent/self")
            assert "\n" not in str(e.value)

    asyncio.run(_serve(tmp_path, answer, check, None))

    async def refused(api: ConsulAPI) -> None:
        with pytest.raises(WatchError, match=r"SSLCertVerificationError|certificate verify failed") as e:
            await api.request("GET", "/v1/agent/self")
        assert "\n" not in str(e.value)

    asyncio.run(_serve(tmp_path, answer, refused, other_ca))
