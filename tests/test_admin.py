"""The admin port's own small HTTP/1.1 server (gateway/admin.py) on a real socket: the answers Prometheus and
health checkers get, keep-alive, and the bounds a hostile caller meets."""

from __future__ import annotations

import asyncio
import json
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


class _FakeCore:
    def stats_json(self) -> str:
        return '{"counters": [], "gauges": [], "histograms": [], "buckets": [0.1]}'

    def clusters_json(self) -> str:
        return "[]"

    def ports(self) -> dict[str, int]:
        return {"inbound": 21000}

    def version(self) -> int:
        return 1


def _console_admin(tmp_path: Path, drained: list[bool]) -> Admin:
    from gateway.console.source import ConsoleSource, ListenerInfo

    (tmp_path / "m.yaml").write_text(
        "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
        "certificates: {builtin: {dir: ca, create: true}}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", env={})
    holder = SnapshotBuilder(cfg).holder

    def drain(inbound_only: bool) -> list[str]:
        drained.append(inbound_only)
        return ["inbound"]

    source = ConsoleSource(
        config=lambda: cfg,
        holder=holder,
        core=_FakeCore(),
        listeners=lambda: [ListenerInfo("inbound", "inbound", "127.0.0.1:21000", "tcp")],
        not_ready=lambda: None,
        drain_listeners=drain,
    )
    return Admin(Address("127.0.0.1", 0), holder, lambda: {"service": "web"}, lambda: None, console=source)


def _answers(out: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each answer on one connection, framed by Content-Length."""
    found = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        found.append((int(head.split(b" ", 2)[1]), head, rest[:length]))
        out = rest[length:]
    return found


def test_console_routes_methods_and_headers(tmp_path: Path) -> None:
    """The console on the asyncio server: its JSON endpoints, POST-only maintenance (405 with Allow on a GET),
    the query string read, errors as one line of JSON, the CSP on every answer, no body taken on a POST."""
    drained: list[bool] = []

    def talk(port: int) -> list[bytes]:
        return [
            _exchange(
                port,
                b"GET /listeners HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /drain_listeners HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /drain_listeners?inboundonly HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                b"POST /healthcheck/fail HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\r\n"
                b"GET /console/check?format=json&source= HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /console/static/console.js HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /console/static/../admin.py HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /no/such/page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ),
            _exchange(port, b"POST /healthcheck/fail HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
        ]

    first, body_post = asyncio.run(_with_admin_of(_console_admin(tmp_path, drained), talk))
    answers = _answers(first)
    assert [a[0] for a in answers] == [200, 405, 200, 403, 400, 200, 404, 404]
    for status, head, _ in answers:
        assert b"Content-Security-Policy: default-src 'none'; script-src 'self'" in head, status
    assert json.loads(answers[0][2])["listeners"][0]["name"] == "inbound"
    assert b"Allow: POST\r\n" in answers[1][1]
    assert json.loads(answers[2][2]) == {"drained": ["inbound"], "ready": False} and drained == [True]
    assert "cross-site" in json.loads(answers[3][2])["error"]
    assert json.loads(answers[4][2])["error"].startswith("source: required")
    assert b"Content-Type: text/javascript" in answers[5][1] and b"addEventListener" in answers[5][2]
    assert json.loads(answers[7][2]) == {"error": "Not Found"}
    assert body_post.split(b" ", 2)[1] == b"413" and b"query string" in body_post


def test_maintenance_from_a_remote_caller_is_refused(tmp_path: Path) -> None:
    from gateway.admin import Request

    admin = _console_admin(tmp_path, [])
    remote = Request("POST", "/healthcheck/fail", {}, {"host": "10.0.0.5:19000"}, "10.0.0.5")
    reply = asyncio.run(admin.routes["/healthcheck/fail"].handler(remote))
    assert reply.status == 403 and "loopback" in json.loads(reply.body)["error"]
    local = Request("POST", "/healthcheck/fail", {}, {"host": "127.0.0.1:19000"}, "127.0.0.1")
    assert asyncio.run(admin.routes["/healthcheck/fail"].handler(local)).status == 200


async def _with_admin_of(admin: Admin, fn: Any) -> Any:
    await admin.start()
    try:
        return await asyncio.to_thread(fn, admin.port)
    finally:
        await admin.stop()
