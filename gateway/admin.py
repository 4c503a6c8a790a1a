"""The admin port: /metrics, /ready, /health, /config, and the console with its operator endpoints
(gateway/console/). Never serves a private key."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import dataplane, metrics
from gateway.config import Address
from gateway.console.routes import Console
from gateway.console.source import ConsoleSource
from gateway.snapshot import SnapshotHolder


class Admin:
    def __init__(
        self,
        bind: Address,
        holder: SnapshotHolder,
        config_json: Callable[[], dict[str, Any]],
        not_ready: Callable[[], str | None],
        console: ConsoleSource | None = None,
        allow_remote_maintenance: bool = False,
    ):
        self.bind = bind
        self.holder = holder
        self.config_json = config_json
        # A reason the process as a whole is not ready (draining, control plane not answered yet), or None.
        self.not_ready = not_ready
        self.console = None if console is None else Console(console, allow_remote_maintenance)
        self.runner: web.AppRunner | None = None
        self.port = bind.port

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/health", self.health)
        app.router.add_get("/config", self.config)
        if self.console is not None:
            self.console.install(app)  # the console at /, the operator endpoints (gateway/console/routes.py)
        else:
            app.router.add_get("/", self.index)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind.host, self.bind.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound port
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="meshgw admin: /metrics /ready /health /config\n")

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ready(self, request: web.Request) -> web.Response:
        reason = self.not_ready()
        if reason:
            return web.Response(status=503, text=f"{reason}\n")
        ok, why = self.holder.current.ready()
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def health(self, request: web.Request) -> web.Response:
        # Liveness: the process and its loop answer. Readiness (certificates) is /ready.
        return web.Response(text="ok\n")

    async def config(self, request: web.Request) -> web.Response:
        snap = self.holder.current
        from gateway.version import VERSION

        body = {
            "version": VERSION,
            "config": self.config_json(),
            "snapshot": snap.to_json(),
            "snapshot_age_seconds": round(time.time() - snap.built_at, 3),
            "data_path": dataplane.describe(),
        }
        return web.Response(text=json.dumps(body, indent=2, default=str), content_type="application/json")
