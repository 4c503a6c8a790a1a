"""The console and the operator endpoints on the admin port's own small HTTP/1.1 server (gateway/admin.py).

GET  /                      the console (server-rendered; console.js refreshes parts of it)
GET  /console/topology      the topology SVG fragment; /console/health and /console/listeners: what the page polls
GET  /console/check         "would this be allowed?" (JSON with Accept: application/json, else the page)
GET  /console/api/topology  the graph with live traffic per edge, as JSON
GET  /clusters /listeners /certs /config_dump /server_info   JSON (README "Admin console and operator endpoints")
POST /drain_listeners[?inboundonly]  /healthcheck/fail  /healthcheck/ok   loopback only by default (ops.py)

Jinja2 is imported when the first page is rendered, not with the admin port: the JSON endpoints and a sidecar
nobody looks at do without it (issue #13: idle RSS).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from gateway.admin import Reply, Request, Route, json_reply
from gateway.console import intentions, inventory, topology
from gateway.console.ops import refusal
from gateway.console.source import ConsoleSource
from gateway.console.traffic import TrafficWindow

if TYPE_CHECKING:
    import jinja2

    from gateway.admin import Admin

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
GET = frozenset({"GET"})
POST = frozenset({"POST"})


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


def _json(body: Any, status: int = 200) -> Reply:
    return json_reply(inventory.scrub(body), status)


def _error(status: int, message: str) -> Reply:
    return _json({"error": message}, status)


class Console:
    def __init__(self, source: ConsoleSource, allow_remote_maintenance: bool = False):
        self.source = source
        self.allow_remote_maintenance = allow_remote_maintenance
        self.window = TrafficWindow(source.stats)
        self._env: jinja2.Environment | None = None

    @property
    def env(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            env = jinja2.Environment(
                loader=jinja2.PackageLoader("gateway.console", "templates"),
                autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.filters["when"] = _when
            env.filters["duration"] = _duration
            self._env = env
        return self._env

    def install(self, admin: Admin) -> None:
        """The console's paths on the admin port (its own "/" replaces the plain index), its security fields on
        every answer, and errors as one line of JSON."""
        admin.extra_headers = tuple(SECURITY_HEADERS.items())
        admin.prefixes["/console/static/"] = Route(GET, self.static)
        admin.routes.update(
            {
                "/": Route(GET, self.page),
                "/console/topology": Route(GET, self.topology_fragment),
                "/console/health": Route(GET, self.health_fragment),
                "/console/listeners": Route(GET, self.listeners_fragment),
                "/console/check": Route(GET, self.check),
                "/console/api/topology": Route(GET, self.topology_json),
                "/clusters": Route(GET, self.clusters),
                "/listeners": Route(GET, self.listeners),
                "/certs": Route(GET, self.certs),
                "/config_dump": Route(GET, self.config_dump),
                "/server_info": Route(GET, self.server_info),
                "/drain_listeners": Route(POST, self.drain_listeners),
                "/healthcheck/fail": Route(POST, self.healthcheck_fail),
                "/healthcheck/ok": Route(POST, self.healthcheck_ok),
            }
        )

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

    def _html(self, template: str, **ctx: Any) -> Reply:
        text = self.env.get_template(template).render(**ctx)
        return Reply(200, text.encode(), "text/html; charset=utf-8")

    # ------------------------------------------------------------------ pages

    async def page(self, request: Request) -> Reply:
        return self._html("console.html.j2", **self._context())

    async def topology_fragment(self, request: Request) -> Reply:
        return self._html("topology.html.j2", topology=self._topology())

    async def health_fragment(self, request: Request) -> Reply:
        return self._html("health.html.j2", health=inventory.health(self.source), now=time.time())

    async def listeners_fragment(self, request: Request) -> Reply:
        return self._html("listeners.html.j2", listeners=inventory.listeners(self.source))

    async def topology_json(self, request: Request) -> Reply:
        return _json(self._topology().to_json())

    async def check(self, request: Request) -> Reply:
        accept = request.header("Accept") or ""
        wants_json = "application/json" in accept or request.query.get("format") == "json"
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

    async def static(self, request: Request) -> Reply:
        name = request.path.removeprefix("/console/static/")
        if name not in STATIC:  # a fixed set of names: no path from the caller reaches the file system
            return _error(404, "Not Found")
        body = resources.files("gateway.console").joinpath("static", name).read_bytes()
        return Reply(200, body, STATIC[name])

    # ------------------------------------------------------------------ JSON endpoints

    async def clusters(self, request: Request) -> Reply:
        return _json({"clusters": inventory.clusters(self.source)})

    async def listeners(self, request: Request) -> Reply:
        return _json({"listeners": inventory.listeners(self.source)})

    async def certs(self, request: Request) -> Reply:
        return _json(inventory.certs(self.source))

    async def config_dump(self, request: Request) -> Reply:
        return _json(inventory.config_dump(self.source))

    async def server_info(self, request: Request) -> Reply:
        return _json(inventory.health(self.source))

    # ------------------------------------------------------------------ maintenance (POST only)

    def _refused(self, request: Request) -> Reply | None:
        why = refusal(
            request.remote,
            request.header("Host"),
            request.header("Origin"),
            request.header("Sec-Fetch-Site"),
            self.allow_remote_maintenance,
        )
        return None if why is None else _error(403, why)

    async def drain_listeners(self, request: Request) -> Reply:
        if (refused := self._refused(request)) is not None:
            return refused
        inbound_only = "inboundonly" in request.query
        stopped = self.source.drain_listeners(inbound_only)
        log.warning("operator drained listeners: %s", ", ".join(stopped) or "none")
        return _json({"drained": stopped, "ready": False})

    async def healthcheck_fail(self, request: Request) -> Reply:
        if (refused := self._refused(request)) is not None:
            return refused
        self.source.maintenance.healthcheck_failed = True
        log.warning("operator failed the health check: /ready answers 503 until POST /healthcheck/ok")
        return _json({"healthcheck_failed": True})

    async def healthcheck_ok(self, request: Request) -> Reply:
        if (refused := self._refused(request)) is not None:
            return refused
        self.source.maintenance.healthcheck_failed = False
        log.info("operator restored the health check")
        return _json({"healthcheck_failed": False})
