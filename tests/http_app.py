"""An aiohttp app on a background loop, for HTTP tests through the mesh: echoes what it received."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import WSMsgType, web


class HTTPApp:
    """``ssl_context``: serve HTTPS (with a Connect leaf and client certificates required, the app stands in for a
    mesh endpoint: a sidecar's inbound). ``fail_status`` / ``fail_reset`` make every request fail, for outlier
    detection and retry tests; ``delay`` slows every answer down."""

    def __init__(self, name: str = "app", ssl_context: ssl.SSLContext | None = None):
        self.name = name
        self.port = 0
        self.ssl_context = ssl_context
        self.requests: list[dict[str, Any]] = []
        self.fail_status = 0
        self.fail_reset = False
        self.delay = 0.0
        self.hold = threading.Event()  # /hold waits for it before reading the body
        self.in_flight = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _failure(self, request: web.Request) -> web.StreamResponse | None:
        if self.fail_reset:
            self.requests.append({"app": self.name, "method": request.method, "path": request.path_qs, "reset": 1})
            assert request.transport is not None
            request.transport.abort()  # no answer at all: the proxy sees a reset before any response head
            return web.Response(status=500)
        if self.fail_status:
            self.requests.append(
                {"app": self.name, "method": request.method, "path": request.path_qs, "status": self.fail_status}
            )
            return web.Response(status=self.fail_status, text=f"{self.name} fails")
        return None

    async def echo(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure(request)
        if failure is not None:
            return failure
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._echo(request)
        finally:
            self.in_flight -= 1

    async def status(self, request: web.Request) -> web.Response:
        self.requests.append({"app": self.name, "method": request.method, "path": request.path_qs})
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"{self.name} {code}", headers={"x-app": self.name})

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.append({"app": self.name, "method": request.method, "path": request.path_qs, "reset": 1})
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    async def held(self, request: web.Request) -> web.Response:
        """Reads a little, then waits for ``hold`` before draining the rest: a slow consumer of a large body."""
        size = len(await request.content.read(65536))
        await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 60)
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
        return web.json_response({"app": self.name, "size": size})

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
        info = {
            "app": self.name,
            "method": request.method,
            "path": request.path_qs,
            "size": size,
            # The sidecar's source port: how many distinct ones = how many pooled connections.
            "peer_port": request.transport.get_extra_info("peername")[1] if request.transport else 0,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        self.requests.append(info)
        return web.json_response(info)

    async def big(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        resp = web.StreamResponse()  # chunked: streamed, never whole in memory
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text="late")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/big/{size}", self.big)
        app.router.add_get("/slow/{seconds}", self.slow)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_route("*", "/reset", self.reset)
        app.router.add_route("*", "/hold", self.held)
        app.router.add_route("*", "/{tail:.*}", self.echo)

        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> HTTPApp:
        self.thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def mesh_server_context(cert: Any, key: Any, ca: Any) -> ssl.SSLContext:
    """TLS as a sidecar's inbound does it: the service's leaf, client certificates required, the mesh CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@contextmanager
def http_app(name: str = "app", ssl_context: ssl.SSLContext | None = None) -> Iterator[HTTPApp]:
    app = HTTPApp(name, ssl_context).start()
    try:
        yield app
    finally:
        app.stop()
