"""A small aiohttp stand-in in front of a real Vault, for the two faults a real server cannot produce on demand.

It forwards every request to the real server (OpenBao, tests/vault_server.py) and passes the answer back
unchanged: status, body and the exact ``Content-Type`` (hvac reads ``errors`` only when it is exactly
``application/json``, vault-nomad.md §0.4). For requests whose path starts with one of ``fault_paths``:
  - ``mode = "hang"``: the connection is accepted and the request read, and no answer ever comes;
  - ``mode = "cut"``: the real answer's status and headers (with its full Content-Length) are sent, then half
    of its body, then the connection is closed.
It never makes up an answer, so it cannot drift from the real API.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web

FORWARDED = ("X-Vault-Token", "X-Vault-Request", "X-Vault-Namespace", "X-Vault-Wrap-TTL", "Content-Type")


class VaultStandIn:
    def __init__(self, upstream: str, mode: str = "proxy", fault_paths: tuple[str, ...] = ("/",)):
        self.upstream = upstream.rstrip("/")
        self.mode = mode  # proxy | hang | cut
        self.fault_paths = fault_paths
        self.requests: Counter[str] = Counter()  # "METHOD /path" -> count
        self.faulted = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._hung: set[asyncio.Task[object]] = set()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> VaultStandIn:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a hung handler must end when the client gives up and closes.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def stop(self) -> None:
        for t in list(self._hung):
            t.cancel()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _faulty(self, path: str) -> bool:
        return self.mode != "proxy" and any(path.startswith(p) for p in self.fault_paths)

    async def _forward(self, request: web.Request) -> tuple[int, str | None, bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as r:
            return r.status, r.headers.get("Content-Type"), await r.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests[f"{request.method} {request.path}"] += 1
        if self._faulty(request.path) and self.mode == "hang":
            self.faulted += 1
            await request.read()
            task = asyncio.current_task()
            assert task is not None
            self._hung.add(task)
            try:
                await asyncio.Event().wait()  # never answers; ends when the client closes or on stop()
            finally:
                self._hung.discard(task)
        status, ctype, body = await self._forward(request)
        if self._faulty(request.path) and self.mode == "cut":
            self.faulted += 1
            resp = web.StreamResponse(status=status)
            if ctype:
                resp.headers["Content-Type"] = ctype
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])  # write() drains: the half is on the wire before the close
            assert request.transport is not None
            request.transport.close()
            return resp
        resp = web.Response(status=status, body=body)
        if ctype:
            resp.headers["Content-Type"] = ctype
        return resp
