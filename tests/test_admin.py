"""The admin port's own small HTTP/1.1 server (gateway/admin.py) on a real socket: the answers Prometheus and
health checkers get, keep-alive, and the bounds a hostile caller meets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from gateway.admin import MAX_HEAD, Admin
from gateway.config import Address, load_config
from gateway.snapshot import SnapshotBuilder


def _admin(tmp_path: Path) -> Admin:
    (tmp_path / "m.yaml").write_text(
        "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
        "certificates: {builtin: {dir: ca, create: true}}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", env={})
    return Admin(Address("127.0.0.1", 0), SnapshotBuilder(cfg).holder, lambda: {"service": "web"}, lambda: None)


def _exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def _with_admin(tmp_path: Path, fn: Any) -> Any:
    admin = _admin(tmp_path)
    await admin.start()
    try:
        return await asyncio.to_thread(fn, admin.port)
    finally:
        await admin.stop()


def test_answers_keep_alive_and_head(tmp_path: Path) -> None:
    def talk(port: int) -> bytes:
        return _exchange(
            port,
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )

    out = asyncio.run(_with_admin(tmp_path, talk))
    answers = out.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"200", b"503", b"200", b"404", b"405"]
    assert answers[0].endswith(b"\r\n\r\nok\n")
    # HEAD: the length of the body it does not send, and no body (the next answer follows at once).
    assert b"Content-Length: 24\r\n" in answers[1] and answers[1].endswith(b"\r\n\r\n")  # no leaf yet\n
    assert b"meshgw_snapshot_version" in answers[2] and b"text/plain; version=" in answers[2]
    assert b"Connection: close" in answers[4]


def test_bounds_refuse_hostile_requests(tmp_path: Path) -> None:
    def talk(port: int) -> list[bytes]:
        return [
            _exchange(port, b"GET /health HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n"),
            _exchange(port, b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 150 + b"\r\n"),
            _exchange(port, b"POST /ready HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            _exchange(port, b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            _exchange(port, b"BOGUS\r\n\r\n"),
            _exchange(port, b"GET /health HTTP/1.1\r\nBad Field: x\r\n\r\n"),
        ]

    statuses = [a.split(b" ", 2)[1] for a in asyncio.run(_with_admin(tmp_path, talk))]
    assert statuses == [b"431", b"431", b"413", b"413", b"400", b"400"]
