"""An aiohttp app on a background loop, for HTTP tests through the mesh: echoes what it received."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import WSMsgType, web


class HTTPApp:
    def __init__(self, name: str = "app"):
        self.name = name
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def echo(self, request: web.Request) -> web.StreamResponse:
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
        app.router.add_route("*", "/{tail:.*}", self.echo)

        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
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


@contextmanager
def http_app(name: str = "app") -> Iterator[HTTPApp]:
    app = HTTPApp(name).start()
    try:
        yield app
    finally:
        app.stop()
