"""Hostile answers from the app, through the inbound sidecar's HTTP/1.1 client hop (gateway/core's
http/h1_client.rs, which both stacks use): an answer whose framing two parsers could read differently is refused
with 502 and its connection closed, so nothing the app smuggled in it can be read as the answer to the caller's
next request (response splitting; RFC 9112 §6.3 and §11.2). After each, the same caller connection gets the
honest answer to its next request.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from mesh import Mesh, free_port, read_request
from test_hostile_http import INTENTIONS, _exchange, _status

pytestmark = pytest.mark.slow

HONEST = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

# path -> the app's whole answer
ANSWERS = {
    # Both framings: a parser that takes Content-Length reads "0\r\n\r\n" as the body and the rest as the next
    # answer; one that takes chunked sees an empty body and the smuggled answer next.
    "/te-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "/cl-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 41\r\n\r\nok" + SMUGGLED,
    "/cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 41\r\n\r\nok" + SMUGGLED,
    "/chunked-not-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "/te-http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "/cl-sign": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok" + SMUGGLED,
    "/many-fields": b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(101)) + b"\r\n",
    "/unasked-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n" + SMUGGLED,
}


class _Scripted(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        buf = b""
        try:
            while (got := read_request(sock, buf)) is not None:
                head, _, buf = got
                target = head.split(b"\r\n")[0].split(b" ")[1].decode()
                sock.sendall(ANSWERS.get(target, HONEST))
        except OSError:
            return


class ScriptedApp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), _Scripted)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def api(mesh: Mesh) -> Iterator[tuple[Mesh, int]]:
    mesh.intentions = [INTENTIONS]
    mesh.write_intentions()
    app = ScriptedApp(free_port())
    try:
        mesh.sidecar("api", app_port=app.server_address[1], service={"protocol": "http"})
        yield mesh, mesh.inbound_port("api")
    finally:
        app.shutdown()
        app.server_close()


@pytest.mark.parametrize("path", sorted(ANSWERS))
def test_ambiguous_answer_is_refused_and_the_next_request_gets_its_own(api: tuple[Mesh, int], path: str) -> None:
    mesh, port = api
    raw = f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\nGET /next HTTP/1.1\r\nHost: api\r\n\r\n".encode()
    answers = _exchange(mesh, port, raw, responses=2)
    assert [_status(a) for a in answers] == [502, 200], answers
    assert answers[1].endswith(b"\r\n\r\nhonest"), answers[1]
    assert not any(b"smuggled" in a for a in answers)


def test_bytes_after_a_whole_answer_never_answer_the_next_request(api: tuple[Mesh, int]) -> None:
    # The app's answer is complete after "ok"; what follows was never asked for. The connection it came on is
    # not reused, so the next request is answered by the app again, not by the leftover bytes.
    mesh, port = api
    ANSWERS["/extra"] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED
    try:
        raw = b"GET /extra HTTP/1.1\r\nHost: api\r\n\r\nGET /next HTTP/1.1\r\nHost: api\r\n\r\n"
        answers = _exchange(mesh, port, raw, responses=2)
    finally:
        del ANSWERS["/extra"]
    assert [_status(a) for a in answers] == [200, 200], answers
    assert answers[0].endswith(b"\r\n\r\nok") and answers[1].endswith(b"\r\n\r\nhonest"), answers
