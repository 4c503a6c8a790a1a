"""The console and the operator endpoints on the admin port's aiohttp app.

GET  /                      the console (server-rendered; console.js refreshes parts of it)
GET  /console/topology      the topology SVG fragment; /console/health and /console/listeners: what the page polls
GET  /console/check         "would this be allowed?" (JSON with Accept: application/json, else the page)
GET  /console/api/topology  the graph with live traffic per edge, as JSON
GET  /clusters /listeners /certs /config_dump /server_info   JSON (README "Admin console and operator endpoints")
POST /drain_listeners[?inboundonly]  /healthcheck/fail  /healthcheck/ok   loopback only by default (ops.py)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from gateway.console import intentions, inventory, topology
from gateway.console.ops import refusal
from gateway.console.source import ConsoleSource
from gateway.console.traffic import TrafficWindow

log = logging.getLogger("meshgw.admin")

STATIC = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
# Everything the page loads comes from the admin port itself: no inline script, no CDN.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    sign = "-" if s < 0 else ""
    s = abs(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if d or h:
        parts.append(f"{h}h")
    if d or h or m:
        parts.append(f"{m}m")
    parts.append(f"{s}s")
    return sign + " ".join(parts)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(inventory.scrub(body), indent=2, default=str) + "\n",
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _headers_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # One line, never a page or a traceback: what aiohttp would say, as JSON.
        resp = _error(e.status, e.reason or "error")
        if "Allow" in e.headers:  # 405: say which methods the path takes
            resp.headers["Allow"] = e.headers["Allow"]
    except Exception as e:  # a bug, not the caller's mistake: one log line, one answer line
        log.error("admin %s %s failed: %s: %s", request.method, request.path, type(e).__name__, e)
        resp = _error(500, f"internal error: {type(e).__name__}")
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


class Console:
    def __init__(self, source: ConsoleSource, allow_remote_maintenance: bool = False):
        self.source = source
        self.allow_remote_maintenance = allow_remote_maintenance
        self.window = TrafficWindow(source.stats)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.console", "templates"),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["duration"] = _duration

    def install(self, app: web.Application) -> None:
        app.middlewares.append(_headers_and_errors)
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/console/topology", self.topology_fragment)
        r.add_get("/console/health", self.health_fragment)
        r.add_get("/console/listeners", self.listeners_fragment)
        r.add_get("/console/check", self.check)
        r.add_get("/console/api/topology", self.topology_json)
        r.add_get("/console/static/{name}", self.static)
        r.add_get("/clusters", self.clusters)
        r.add_get("/listeners", self.listeners)
        r.add_get("/certs", self.certs)
        r.add_get("/config_dump", self.config_dump)
        r.add_get("/server_info", self.server_info)
        r.add_post("/drain_listeners", self.drain_listeners)
        r.add_post("/healthcheck/fail", self.healthcheck_fail)
        r.add_post("/healthcheck/ok", self.healthcheck_ok)

    # ------------------------------------------------------------------ data

    def _topology(self) -> topology.Topology:
        latest, base, seconds = self.window.sample()
        return topology.build(self.source, latest, base, seconds, inventory.clusters(self.source))

    def _context(self, **extra: Any) -> dict[str, Any]:
        src = self.source
        return {
            "now": time.time(),
            "health": inventory.health(src),
            "certs": inventory.certs(src),
            "intentions": intentions.rules(src),
            "topology": self._topology(),
            "listeners": inventory.listeners(src),
            "check": None,
            "check_error": None,
            "form": {},
            **extra,
        }

    def _html(self, template: str, **ctx: Any) -> web.Response:
        text = self.env.get_template(template).render(**ctx)
        return web.Response(text=text, content_type="text/html")

    # ------------------------------------------------------------------ pages

    async def page(self, request: web.Request) -> web.Response:
        return self._html("console.html.j2", **self._context())

    async def topology_fragment(self, request: web.Request) -> web.Response:
        return self._html("topology.html.j2", topology=self._topology())

    async def health_fragment(self, request: web.Request) -> web.Response:
        return self._html("health.html.j2", health=inventory.health(self.source), now=time.time())

    async def listeners_fragment(self, request: web.Request) -> web.Response:
        return self._html("listeners.html.j2", listeners=inventory.listeners(self.source))

    async def topology_json(self, request: web.Request) -> web.Response:
        return _json(self._topology().to_json())

    async def check(self, request: web.Request) -> web.Response:
        wants_json = "application/json" in request.headers.get("Accept", "") or request.query.get("format") == "json"
        form = {k: request.query.get(k, "") for k in ("source", "destination", "method", "path", "headers")}
        try:
            req = intentions.CheckRequest.from_query(form, self.source.snapshot.service, form["headers"].splitlines())
            answer = intentions.evaluate(self.source, req)
        except intentions.CheckError as e:
            if wants_json:
                return _error(400, str(e))
            return self._html("console.html.j2", **self._context(check_error=str(e), form=form))
        if wants_json:
            return _json(answer)
        return self._html("console.html.j2", **self._context(check=answer, form=form))

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("gateway.console").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC[name])

    # ------------------------------------------------------------------ JSON endpoints

    async def clusters(self, request: web.Request) -> web.Response:
        return _json({"clusters": inventory.clusters(self.source)})

    async def listeners(self, request: web.Request) -> web.Response:
        return _json({"listeners": inventory.listeners(self.source)})

    async def certs(self, request: web.Request) -> web.Response:
        return _json(inventory.certs(self.source))

    async def config_dump(self, request: web.Request) -> web.Response:
        return _json(inventory.config_dump(self.source))

    async def server_info(self, request: web.Request) -> web.Response:
        return _json(inventory.health(self.source))

    # ------------------------------------------------------------------ maintenance (POST only)

    def _refused(self, request: web.Request) -> web.Response | None:
        why = refusal(
            request.remote,
            request.host,
            request.headers.get("Origin"),
            request.headers.get("Sec-Fetch-Site"),
            self.allow_remote_maintenance,
        )
        return None if why is None else _error(403, why)

    async def drain_listeners(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        inbound_only = "inboundonly" in request.query
        stopped = self.source.drain_listeners(inbound_only)
        log.warning("operator drained listeners: %s", ", ".join(stopped) or "none")
        return _json({"drained": stopped, "ready": False})

    async def healthcheck_fail(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.source.maintenance.healthcheck_failed = True
        log.warning("operator failed the health check: /ready answers 503 until POST /healthcheck/ok")
        return _json({"healthcheck_failed": True})

    async def healthcheck_ok(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.source.maintenance.healthcheck_failed = False
        log.info("operator restored the health check")
        return _json({"healthcheck_failed": False})
