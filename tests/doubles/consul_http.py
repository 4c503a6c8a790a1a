"""aiohttp routes of the Consul double (test support): dispatch, errors, ACL, blocking, agent endpoints.

Consul conventions kept here (consul.md §0, §1): plain-text error bodies with the right status, ``405 method X not
allowed`` with ``Allow: OPTIONS,...``, ``X-Consul-Index`` never 0, ``X-Consul-KnownLeader``/``LastContact`` on
queries, 200 with an empty body for handlers that return nothing, ``index``+``wait`` (Go duration, default 5 min,
max 10 min, up to wait/16 of jitter) holding a request until the table it reads changes.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from doubles.consul_chain import merged_proxy_config
from doubles.consul_decode import canon, decode_check_registration, decode_registration
from doubles.consul_intent import ConfigStore
from doubles.consul_state import STATUSES, ApiError, ConsulState, parse_duration, worst

Handler = Callable[[web.Request, tuple[str, ...]], Awaitable[web.StreamResponse]]
NO_TOKEN_NEEDED = ("/v1/agent/connect/ca/roots", "/v1/connect/ca/roots", "/v1/status/leader", "/v1/status/peers")
_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_BOOL.update({"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False})


def json_response(data: Any, index: int | None = None, headers: dict[str, str] | None = None) -> web.Response:
    h = dict(headers or {})
    if index is not None:
        h["X-Consul-Index"] = str(max(1, index))  # setIndex rewrites 0 to 1
        h["X-Consul-KnownLeader"] = "true"
        h["X-Consul-LastContact"] = "0"
    return web.Response(body=json.dumps(data).encode(), content_type="application/json", headers=h)


def empty() -> web.Response:
    return web.Response(status=200, body=b"")


def error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8", headers=headers)


def parse_bool(q: Any, name: str) -> bool:
    """Consul's getBoolQueryParam: bare key → true, else strconv.ParseBool, else 400 (consul.md §4.1)."""
    if name not in q:
        return False
    v = q.get(name)
    if v == "":
        return True
    if v not in _BOOL:
        raise ApiError(400, f"Invalid value for ?{name}")
    return _BOOL[v]


async def body_json(request: web.Request, what: str = "Request decode failed") -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"{what}: {e}") from None


class ConsulHTTP:
    def __init__(self, state: ConsulState, acl_token: str | None = None):
        self.state = state
        self.config = ConfigStore(state)
        self.acl_token = acl_token
        self.requests: list[tuple[str, str, dict[str, str], str | None]] = []
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        # WAN federation: datacenter -> base URL of its server. A request with ?dc=<that dc> is forwarded there,
        # as Consul servers forward RPCs to the other datacenter's servers.
        self.wan: dict[str, str] = {}
        self._agent_routes()
        from doubles.consul_http_server import add_server_routes

        add_server_routes(self)

    def route(self, pattern: str, **methods: Handler) -> None:
        self.routes.append((re.compile(f"^{pattern}$"), {m.upper(): h for m, h in methods.items()}))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    # ------------------------------------------------------------------ dispatch

    @staticmethod
    def token_of(request: web.Request) -> str | None:
        tok = request.headers.get("X-Consul-Token")
        if not tok:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                tok = auth[7:].strip()
        return tok or request.query.get("token") or None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path, token = request.path, self.token_of(request)
        self.requests.append((request.method, path, {k: request.query.getone(k) for k in request.query}, token))
        dc = request.query.get("dc")
        if dc and dc in self.wan and dc != self.state.datacenter and not path.startswith("/v1/agent/"):
            return await self.forward(request, self.wan[dc])
        try:
            for pattern, methods in self.routes:
                m = pattern.match(path)
                if m is None:
                    continue
                if request.method == "OPTIONS":
                    return web.Response(status=200, headers={"Allow": ",".join(["OPTIONS", *methods])})
                handler = methods.get(request.method)
                if handler is None:
                    allow = ",".join(["OPTIONS", *methods])
                    raise ApiError(405, f"method {request.method} not allowed", {"Allow": allow})
                self.check_acl(path, token)
                self.check_query(request)
                return await handler(request, m.groups())
            return error(404, "404 page not found\n")
        except ApiError as e:
            return error(e.status, e.text, e.headers)

    async def forward(self, request: web.Request, base: str) -> web.StreamResponse:
        """Answer with the other datacenter's answer (blocking queries block there)."""
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("x-consul-token", "authorization")}
        timeout = aiohttp.ClientTimeout(total=700)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    request.method, base + request.path_qs, data=await request.read(), headers=headers
                ) as resp,
            ):
                body = await resp.read()
                keep = {k: v for k, v in resp.headers.items() if k.startswith("X-Consul-") or k == "Content-Type"}
                return web.Response(status=resp.status, body=body, headers=keep)
        except (aiohttp.ClientError, OSError):
            return error(500, "No path to datacenter")

    def check_acl(self, path: str, token: str | None) -> None:
        if self.acl_token is None or token == self.acl_token:
            return
        if token is None and path in NO_TOKEN_NEEDED:
            return  # anonymous may read the CA roots and the leader
        raise ApiError(403, "ACL not found")

    def check_query(self, request: web.Request) -> None:
        q = request.query
        if "stale" in q and "consistent" in q:
            raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        dc = q.get("dc")
        if dc and dc != self.state.datacenter and not request.path.startswith("/v1/agent/"):
            raise ApiError(500, "No path to datacenter")
        if q.get("filter"):
            raise ApiError(
                400, "Failed to create boolean expression evaluator: filters are not supported by the double"
            )

    async def block(self, request: web.Request, table: str, current: Callable[[], int] | None = None) -> None:
        """Honour ``index``/``wait`` (consul.md §1); answers 400 ``Invalid index``/``Invalid wait time``."""
        q = request.query
        wait = 300.0
        if q.get("wait"):
            try:
                wait = parse_duration(q["wait"])
            except ValueError:
                raise ApiError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = 300.0
        if "index" not in q:
            return
        try:
            index = int(q["index"])
            if index < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "Invalid index") from None
        if index == 0:
            return
        wait = min(wait, 600.0)
        await self.state.wait(table, index, wait + random.uniform(0, wait / 16), current)

    def cache_headers(self, key: tuple[Any, ...]) -> dict[str, str]:
        first = self.state.cache_seen.get(key)
        if first is None:
            self.state.cache_seen[key] = time.monotonic()
            return {"X-Cache": "MISS"}
        return {"X-Cache": "HIT", "Age": str(int(time.monotonic() - first))}

    # ------------------------------------------------------------------ agent endpoints

    def _agent_routes(self) -> None:
        self.route("/v1/agent/self", get=self.agent_self)
        self.route("/v1/agent/members", get=self.agent_members)
        self.route("/v1/agent/services", get=self.agent_services)
        self.route("/v1/agent/service/register", put=self.service_register)
        self.route("/v1/agent/service/deregister/(.+)", put=self.service_deregister)
        self.route("/v1/agent/service/maintenance/(.+)", put=self.service_maintenance)
        self.route("/v1/agent/service/(.+)", get=self.agent_service)
        self.route("/v1/agent/checks", get=self.agent_checks)
        self.route("/v1/agent/check/register", put=self.check_register)
        self.route("/v1/agent/check/deregister/(.+)", put=self.check_deregister)
        self.route("/v1/agent/check/(pass|warn|fail)/(.+)", put=self.check_ttl)
        self.route("/v1/agent/check/update/(.+)", put=self.check_update)
        self.route("/v1/agent/health/service/(id|name)/(.+)", get=self.agent_health)
        self.route("/v1/agent/connect/ca/roots", get=self.ca_roots)
        self.route("/v1/agent/connect/ca/leaf/(.+)", get=self.ca_leaf)
        self.route("/v1/agent/connect/authorize", post=self.authorize)

    async def agent_self(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        s = self.state
        cfg = {"Datacenter": s.datacenter, "PrimaryDatacenter": s.datacenter, "NodeName": s.node_name,
               "NodeID": s.node_id, "Server": True, "Version": "1.17.0", "Revision": "double"}  # fmt: skip
        member = {"Name": s.node_name, "Addr": s.node_address, "Port": 8301, "Status": 1,
                  "Tags": {"dc": s.datacenter, "role": "consul", "id": s.node_id}}  # fmt: skip
        # What meshgw reads for the intention default (consul.md §7.3): the agent's own default_intention_policy
        # when the test set one, else the ACL settings (allow without ACLs).
        acl_on = self.acl_token is not None
        acl_default = "allow" if s.default_allow else "deny"
        debug = {
            "ACLsEnabled": acl_on,
            "ACLResolverSettings": {"ACLDefaultPolicy": acl_default if acl_on else "allow"},
            "DefaultIntentionPolicy": "" if s.default_allow == (not acl_on or acl_default == "allow") else acl_default,
        }
        return json_response({"Config": cfg, "Member": member, "Meta": {}, "DebugConfig": debug, "Coord": None})

    async def agent_members(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        s = self.state
        return json_response([{"Name": s.node_name, "Addr": s.node_address, "Port": 8301, "Status": 1,
                               "Tags": {"dc": s.datacenter, "role": "consul"}}])  # fmt: skip

    def agent_service_json(self, sid: str) -> dict[str, Any]:
        svc = {k: v for k, v in self.state.services[sid].items() if k not in ("CreateIndex", "ModifyIndex")}
        if svc.get("Kind") == "connect-proxy":
            # The agent keeps the registration merged with the central defaults (http2-grpc.md §1.2).
            proxy = {k: v for k, v in svc["Proxy"].items() if k != "Config"}
            config = merged_proxy_config(self.state.config, svc)
            svc["Proxy"] = {**proxy, **({"Config": config} if config else {})}
        return {**svc, "Datacenter": self.state.datacenter}

    async def agent_services(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        return json_response({sid: self.agent_service_json(sid) for sid in sorted(self.state.services)})

    async def agent_service(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        if g[0] not in self.state.services:
            raise ApiError(404, f'unknown service ID "{g[0]}"')
        body = self.agent_service_json(g[0])
        return json_response(body, headers={"X-Consul-ContentHash": f"{hash(json.dumps(body, sort_keys=True)):x}"})

    async def service_register(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        body = await body_json(request)
        replace = request.query.get("replace-existing-checks") in ("", "true")
        for svc, checks, parent in decode_registration(body, self.state):
            self.state.register_service(svc, checks, replace, parent)
        return empty()

    async def service_deregister(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        self.state.deregister_service(g[0])
        return empty()

    async def service_maintenance(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        raw = request.query.get("enable")
        if raw is None or raw == "":
            raise ApiError(400, "Missing value for enable")
        if raw not in _BOOL:
            raise ApiError(400, f"Invalid value for enable: {raw!r}")
        self.state.maintenance(g[0], _BOOL[raw], request.query.get("reason", ""))
        return empty()

    async def agent_checks(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        s = self.state
        return json_response({cid: s.check_out(cid) for cid in sorted(s.checks) if s.checks[cid]["ServiceID"]
                              or cid in s.check_defs})  # fmt: skip

    async def check_register(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        c = decode_check_registration(await body_json(request), self.state)
        self.state.add_check(c, c.get("ServiceID") or "")
        return empty()

    async def check_deregister(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        self.state.deregister_check(g[0])
        return empty()

    async def check_ttl(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[g[0]]
        self.state.update_check(g[1], status, request.query.get("note", ""))
        return empty()

    async def check_update(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        body = await body_json(request)
        if not isinstance(body, dict):
            raise ApiError(
                400, "Request decode failed: EOF" if body is None else "Request decode failed: not an object"
            )
        u = canon(body, {"status": ("Status", None), "output": ("Output", None)})
        if u.get("Status") not in STATUSES:
            raise ApiError(400, f"Invalid check status: '{u.get('Status', '')}'")
        self.state.update_check(g[0], u["Status"], str(u.get("Output") or ""))
        return empty()

    async def agent_health(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        s = self.state
        sids = [g[1]] if g[0] == "id" else [i for i, v in s.services.items() if v["Service"] == g[1]]
        sids = [i for i in sids if i in s.services]
        text = request.query.get("format") == "text" or request.headers.get("Accept") == "text/plain"
        if not sids:
            what = "ServiceId" if g[0] == "id" else "ServiceName"
            raise ApiError(404, f"{what} {g[1]} not found")
        items = []
        for sid in sids:
            checks = [s.check_out(c) for c in s.service_check_ids(sid)]
            agg = worst([c["Status"] for c in checks])
            items.append({"AggregatedStatus": agg, "Service": self.agent_service_json(sid), "Checks": checks})
        agg = worst([i["AggregatedStatus"] for i in items])
        code = {"passing": 200, "warning": 429, "critical": 503}[agg]
        if text:
            return web.Response(status=code, text=agg, content_type="text/plain")
        data = items[0] if g[0] == "id" else items
        return web.Response(status=code, body=json.dumps(data).encode(), content_type="application/json")

    async def ca_roots(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        await self.block(request, "roots")
        idx = self.state.tables["roots"].index
        if request.query.get("pem") in ("1", "true") and request.path.startswith("/v1/connect/"):
            return web.Response(
                body=self.state.ca.roots_pem().encode(), content_type="application/pem-certificate-chain"
            )
        headers = self.cache_headers(("roots", idx)) if request.path.startswith("/v1/agent/") else {}
        return json_response(self.state.ca.roots_json(), idx, headers)

    async def ca_leaf(self, request: web.Request, g: tuple[str, ...]) -> web.Response:
        service = g[0]
        self.state.leaf(service)
        await self.block(request, "leaf", lambda: self.state.leaf(service).modify_index)
        leaf = self.state.leaf(service)
        return json_response(
            leaf.to_json(), leaf.modify_index, self.cache_headers(("leaf", service, leaf.modify_index))
        )

    async def authorize(self, request: web.Request, _: tuple[str, ...]) -> web.Response:
        body = await body_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request decode failed: EOF")
        f = {str(k).lower(): v for k, v in body.items()}
        target = f.get("target") or ""
        if not target:
            raise ApiError(400, "Target service must be specified")
        m = re.match(r"^spiffe://([^/]+)(/.*)?$", str(f.get("clientcerturi") or ""), re.IGNORECASE)
        if m is None:
            raise ApiError(400, "ClientCertURI not a valid Connect identifier")
        svc = re.match(r"^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$", m.group(2) or "")
        if svc is None:
            if re.match(r"^/(agent|gateway)/", m.group(2) or ""):
                raise ApiError(400, "ClientCertURI not a valid Service identifier")
            raise ApiError(400, "ClientCertURI not a valid Connect identifier")
        if svc.group(1) and svc.group(1) != "default":
            raise ApiError(400, f'Mismatched partitions: "{svc.group(1)}" != "default"')
        allowed, reason = self.config.authorize(target, svc.group(2), svc.group(4))
        return json_response({"Authorized": allowed, "Reason": reason}, headers={"X-Cache": "MISS"})
