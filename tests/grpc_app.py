"""A real gRPC app (grpcio, C-core) for the tests: service ``demo.Echo`` with raw-bytes messages, so no generated
stubs are needed. Methods cover the shapes gRPC has: unary, server/client/bidirectional streaming, large messages,
deadlines, server-set statuses and a method that fails until it has been called a given number of times."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "demo.Echo"


def _ident(b: bytes) -> bytes:
    return b


class EchoApp:
    def __init__(self, port: int = 0, name: str = "app") -> None:
        self.name = name
        self.calls: dict[str, int] = {}
        self.seen_metadata: list[dict[str, str]] = []
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ])
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, _ident, _ident),
            "Secret": grpc.unary_unary_rpc_method_handler(self.unary, _ident, _ident),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail, _ident, _ident),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky, _ident, _ident),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow, _ident, _ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, _ident, _ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, _ident, _ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, _ident, _ident),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def _count(self, method: str, ctx: grpc.ServicerContext) -> int:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.seen_metadata.append({k: v for k, v in ctx.invocation_metadata()})
            return self.calls[method]

    def unary(self, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        self._count("Unary", ctx)
        ctx.set_trailing_metadata((("x-served-by", self.name),))
        return self.name.encode() + b":" + req

    def fail(self, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        """Ends with the status the request names (``NOT_FOUND:message``)."""
        self._count("Fail", ctx)
        code, _, msg = req.decode().partition(":")
        ctx.abort(getattr(grpc.StatusCode, code), msg)
        return b""

    def flaky(self, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        """UNAVAILABLE (trailers-only: no message sent) until called ``int(req)`` times."""
        n = self._count("Flaky", ctx)
        if n < int(req.decode()):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, f"try again ({n})")
        return f"ok after {n}".encode()

    def slow(self, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        self._count("Slow", ctx)
        deadline = time.monotonic() + float(req.decode())
        while time.monotonic() < deadline:
            if not ctx.is_active():
                self.cancelled.set()
                return b""
            time.sleep(0.01)
        return b"slow done"

    def server_stream(self, req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        self._count("ServerStream", ctx)
        for i in range(int(req.decode())):
            yield f"item {i}".encode()

    def client_stream(self, reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        self._count("ClientStream", ctx)
        return b"|".join(reqs)

    def bidi(self, reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        self._count("Bidi", ctx)
        for r in reqs:
            yield b"echo " + r

    def stop(self) -> None:
        self.server.stop(0)


class Client:
    """Raw-bytes stubs for ``demo.Echo`` over a channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def _m(self, kind: str, name: str) -> Any:
        make = getattr(self.channel, kind)
        return make(f"/{SERVICE}/{name}", request_serializer=_ident, response_deserializer=_ident)

    def unary(self, name: str, req: bytes, **kw: Any) -> Any:
        return self._m("unary_unary", name)(req, **kw)

    def unary_call(self, name: str, req: bytes, **kw: Any) -> Any:
        return self._m("unary_unary", name).with_call(req, **kw)

    def unary_future(self, name: str, req: bytes, **kw: Any) -> Any:
        return self._m("unary_unary", name).future(req, **kw)

    def server_stream(self, req: bytes, **kw: Any) -> Any:
        return self._m("unary_stream", "ServerStream")(req, **kw)

    def client_stream(self, reqs: Iterator[bytes], **kw: Any) -> Any:
        return self._m("stream_unary", "ClientStream")(reqs, **kw)

    def bidi(self, reqs: Iterator[bytes], **kw: Any) -> Any:
        return self._m("stream_stream", "Bidi")(reqs, **kw)
