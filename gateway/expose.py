"""Consul's ``Expose`` paths (consul.md §3.1 ``Proxy.Expose.Paths``): plaintext listeners that let the Consul
agent's HTTP health checks reach chosen paths of the app without mTLS, as Envoy serves them for
``consul connect envoy``. One listener per ListenerPort; only the exact Path is forwarded to the app's
LocalPathPort, anything else is 404. Health-check traffic only, like the admin port (aiohttp): it never
carries mesh traffic, which stays on the core's data path."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

log = logging.getLogger("meshgw.expose")

# RFC 9110 §7.6.1 hop-by-hop fields, and Host (the app's own is used).
_DROP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
TIMEOUT = 10.0  # Consul's default HTTP check timeout


@dataclass(frozen=True)
class ExposePath:
    listener_port: int
    path: str
    local_path_port: int
    protocol: str = "http"


class ExposeServer:
    def __init__(self, bind_host: str, app_host: str, paths: tuple[ExposePath, ...]):
        self.bind_host = bind_host
        self.app_host = app_host
        self.paths = paths
        self.runners: list[web.AppRunner] = []
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self.paths:
            return
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT), auto_decompress=False)
        by_port: dict[int, dict[str, ExposePath]] = {}
        for p in self.paths:
            by_port.setdefault(p.listener_port, {})[p.path] = p
        for port, routes in sorted(by_port.items()):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handler(routes))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.bind_host, port, reuse_address=True).start()
            except OSError:
                await runner.cleanup()
                await self.stop()
                raise
            self.runners.append(runner)
            log.info("expose: %s:%d serves %s", self.bind_host, port, ", ".join(sorted(routes)))

    def _handler(self, routes: dict[str, ExposePath]):  # type: ignore[no-untyped-def]
        async def handle(request: web.Request) -> web.StreamResponse:
            target = routes.get(request.path)
            if target is None:
                return web.Response(status=404, text="not an exposed path\n")
            assert self.session is not None
            url = f"http://{self.app_host}:{target.local_path_port}{request.path_qs}"
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
            try:
                async with self.session.request(
                    request.method, url, headers=headers, data=await request.read(), allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    out = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP | {"content-length"}}
                    return web.Response(status=resp.status, body=body, headers=out)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.debug("expose %s: app unreachable: %s", request.path, e)
                return web.Response(status=503, text="app unreachable\n")

        return handle

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()
        self.runners.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None
