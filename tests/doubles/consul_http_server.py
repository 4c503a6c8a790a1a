"""Server-side routes of the Consul double (test support): health, catalog, config entries, intentions, CA config.

Shapes as in consul.md §4 (CheckServiceNode, CatalogService), §7.4 (config and intention endpoints), §2.1 (roots).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from aiohttp import web

from doubles.consul_chain import compile_chain, field
from doubles.consul_http import body_json, empty, json_response, parse_bool
from doubles.consul_state import ApiError, parse_duration

if TYPE_CHECKING:
    from doubles.consul_http import ConsulHTTP


def add_server_routes(h: ConsulHTTP) -> None:
    s = h.state

    # ------------------------------------------------------------------ health

    def matching(kind: str, name: str, tags: list[str]) -> list[str]:
        out = []
        for sid, svc in sorted(s.services.items()):
            if kind == "connect":
                hit = (svc.get("Kind") == "connect-proxy" and svc["Proxy"].get("DestinationServiceName") == name) or (
                    svc["Service"] == name and svc["Connect"].get("Native")
                )
            elif kind == "ingress":
                hit = svc.get("Kind") == "ingress-gateway" and _ingress_exposes(sid, name)
            else:
                hit = svc["Service"] == name
            if hit and all(t in svc["Tags"] for t in tags):
                out.append(sid)
        return out

    def _ingress_exposes(sid: str, name: str) -> bool:
        entry = s.config.get(("ingress-gateway", s.services[sid]["Service"])) or {}
        return any(
            x.get("Name") in (name, "*") for lst in entry.get("Listeners") or [] for x in lst.get("Services") or []
        )

    async def health_service(request: web.Request, g: tuple[str, ...]) -> web.Response:
        kind, name = g
        if not name:
            raise ApiError(400, "Missing service name")
        passing = parse_bool(request.query, "passing")
        await h.block(request, "services")
        entries = [s.health_entry(sid) for sid in matching(kind, name, request.query.getall("tag", []))]
        if passing:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return json_response(entries, s.tables["services"].index)

    async def health_checks(request: web.Request, g: tuple[str, ...]) -> web.Response:
        await h.block(request, "services")
        out = [s.check_out(c) for c in sorted(s.checks) if s.checks[c]["ServiceName"] == g[0]]
        return json_response(out, s.tables["services"].index)

    async def health_state(request: web.Request, g: tuple[str, ...]) -> web.Response:
        if g[0] not in ("any", "passing", "warning", "critical"):
            raise ApiError(400, "Invalid check state")
        await h.block(request, "services")
        out = [s.check_out(c) for c in sorted(s.checks)]
        out = [c for c in out if g[0] == "any" or c["Status"] == g[0]]
        return json_response(out, s.tables["services"].index)

    async def health_node(request: web.Request, g: tuple[str, ...]) -> web.Response:
        await h.block(request, "services")
        out = [s.check_out(c) for c in sorted(s.checks)] if g[0] == s.node_name else []
        return json_response(out, s.tables["services"].index)

    h.route("/v1/health/(service|connect|ingress)/(.*)", get=health_service)
    h.route("/v1/health/checks/(.+)", get=health_checks)
    h.route("/v1/health/state/(.+)", get=health_state)
    h.route("/v1/health/node/(.+)", get=health_node)

    # ------------------------------------------------------------------ catalog

    def catalog_service_json(sid: str) -> dict[str, Any]:
        node, svc = s.node_json(), s.services[sid]
        out = {
            "ID": node["ID"], "Node": node["Node"], "Address": node["Address"], "Datacenter": s.datacenter,
            "TaggedAddresses": node["TaggedAddresses"], "NodeMeta": node["Meta"], "ServiceKind": svc.get("Kind", ""),
            "ServiceID": svc["ID"], "ServiceName": svc["Service"], "ServiceTags": svc["Tags"],
            "ServiceAddress": svc["Address"], "ServiceWeights": svc["Weights"], "ServiceMeta": svc["Meta"],
            "ServicePort": svc["Port"], "ServiceSocketPath": svc.get("SocketPath", ""),
            "ServiceEnableTagOverride": svc["EnableTagOverride"], "ServiceProxy": svc["Proxy"],
            "ServiceConnect": svc["Connect"], "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"],
        }  # fmt: skip
        if svc.get("TaggedAddresses"):
            out["ServiceTaggedAddresses"] = svc["TaggedAddresses"]
        return out

    async def catalog_services(request: web.Request, _: tuple[str, ...]) -> web.Response:
        await h.block(request, "services")
        out: dict[str, list[str]] = {"consul": []}
        for svc in s.services.values():
            tags = out.setdefault(svc["Service"], [])
            tags.extend(t for t in svc["Tags"] if t not in tags)
        return json_response(dict(sorted(out.items())), s.tables["services"].index)

    async def catalog_service(request: web.Request, g: tuple[str, ...]) -> web.Response:
        kind, name = g
        await h.block(request, "services")
        sids = matching("connect" if kind == "connect" else "service", name, request.query.getall("tag", []))
        return json_response([catalog_service_json(i) for i in sids], s.tables["services"].index)

    async def catalog_datacenters(request: web.Request, _: tuple[str, ...]) -> web.Response:
        return json_response(sorted({s.datacenter, *h.wan}))

    async def catalog_nodes(request: web.Request, _: tuple[str, ...]) -> web.Response:
        await h.block(request, "services")
        return json_response([s.node_json()], s.tables["services"].index)

    async def status_leader(request: web.Request, _: tuple[str, ...]) -> web.Response:
        return json_response(f"{s.node_address}:8300")

    async def status_peers(request: web.Request, _: tuple[str, ...]) -> web.Response:
        return json_response([f"{s.node_address}:8300"])

    h.route("/v1/catalog/services", get=catalog_services)
    h.route("/v1/catalog/(service|connect)/(.+)", get=catalog_service)
    h.route("/v1/catalog/datacenters", get=catalog_datacenters)
    h.route("/v1/catalog/nodes", get=catalog_nodes)
    h.route("/v1/status/leader", get=status_leader)
    h.route("/v1/status/peers", get=status_peers)

    # ------------------------------------------------------------------ config entries

    def cas_of(request: web.Request) -> int | None:
        raw = request.query.get("cas")
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f"Request decoding failed: invalid cas value {raw!r}") from None

    async def config_put(request: web.Request, _: tuple[str, ...]) -> web.Response:
        body = await body_json(request, "Request decoding failed")
        return json_response(h.config.apply(body, cas_of(request)))

    async def config_list(request: web.Request, g: tuple[str, ...]) -> web.Response:
        await h.block(request, "config")
        return json_response(h.config.list(g[0]), s.tables["config"].index)

    async def config_get(request: web.Request, g: tuple[str, ...]) -> web.StreamResponse:
        await h.block(request, "config")
        try:
            return json_response(h.config.get(*g), s.tables["config"].index)
        except ApiError as e:
            e.headers = {"X-Consul-Index": str(s.tables["config"].index), "X-Consul-KnownLeader": "true"}
            raise

    async def config_delete(request: web.Request, g: tuple[str, ...]) -> web.Response:
        cas = cas_of(request)
        done = h.config.delete(g[0], g[1], cas)
        return json_response(done if cas is not None else {})

    async def discovery_chain(request: web.Request, g: tuple[str, ...]) -> web.Response:
        # GET, or POST with {"OverrideProtocol", ...} (snake_case too); blocks on the config entries' index
        # (http2-grpc.md §1.5; C:agent/discovery_chain_endpoint.go).
        override = ""
        if request.method == "POST":
            body = await body_json(request, "Request decoding failed")
            override = str(field(body, "OverrideProtocol") or field(body, "override_protocol") or "")
        await h.block(request, "config")
        dc = request.query.get("compile-dc") or s.datacenter
        chain = compile_chain(s.config, g[0], dc, s.trust_domain, override)
        return json_response(chain, s.tables["config"].index)

    h.route("/v1/discovery-chain/(.+)", get=discovery_chain, post=discovery_chain)
    h.route("/v1/config", put=config_put)
    h.route("/v1/config/([^/]+)", get=config_list)
    h.route("/v1/config/([^/]+)/(.+)", get=config_get, delete=config_delete)

    # ------------------------------------------------------------------ intentions

    async def exact_get(request: web.Request, _: tuple[str, ...]) -> web.Response:
        q = request.query
        h.config.split(q.get("source"), "source")
        h.config.split(q.get("destination"), "destination")
        await h.block(request, "config")
        return json_response(h.config.exact_get(q.get("source"), q.get("destination")), s.tables["config"].index)

    async def exact_put(request: web.Request, _: tuple[str, ...]) -> web.Response:
        q = request.query
        h.config.split(q.get("source"), "source")
        h.config.split(q.get("destination"), "destination")
        h.config.exact_put(q.get("source"), q.get("destination"), await body_json(request))
        return json_response(True)

    async def exact_delete(request: web.Request, _: tuple[str, ...]) -> web.Response:
        h.config.exact_delete(request.query.get("source"), request.query.get("destination"))
        return json_response(True)

    async def intentions_list(request: web.Request, _: tuple[str, ...]) -> web.Response:
        await h.block(request, "config")
        return json_response(h.config.list_intentions(), s.tables["config"].index)

    async def intentions_match(request: web.Request, _: tuple[str, ...]) -> web.Response:
        q = request.query
        h.config.match(q.get("by"), q.getall("name", []))  # validate before blocking
        await h.block(request, "config")
        return json_response(h.config.match(q.get("by"), q.getall("name", [])), s.tables["config"].index)

    async def intentions_check(request: web.Request, _: tuple[str, ...]) -> web.Response:
        q = request.query
        allowed = h.config.check(q.get("source"), q.get("destination"), q.get("source-type"))
        return json_response({"Allowed": allowed}, s.tables["config"].index)

    h.route("/v1/connect/intentions", get=intentions_list)
    h.route("/v1/connect/intentions/exact", get=exact_get, put=exact_put, delete=exact_delete)
    h.route("/v1/connect/intentions/match", get=intentions_match)
    h.route("/v1/connect/intentions/check", get=intentions_check)

    # ------------------------------------------------------------------ CA (server)

    async def ca_config_get(request: web.Request, _: tuple[str, ...]) -> web.Response:
        return json_response(s.ca_config, s.tables["ca-config"].index)

    async def ca_config_put(request: web.Request, _: tuple[str, ...]) -> web.Response:
        body = await body_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request decode failed: EOF")
        f = {str(k).lower(): v for k, v in body.items()}
        provider, cfg = f.get("provider") or "consul", dict(f.get("config") or {})
        ttl_raw = next((v for k, v in cfg.items() if k.lower() in ("leafcertttl", "leaf_cert_ttl")), None)
        if ttl_raw is not None:
            try:
                ttl = parse_duration(ttl_raw)
            except ValueError as e:
                raise ApiError(400, str(e)) from None
            if ttl < 3600:
                raise ApiError(400, "leaf cert TTL must be greater or equal than 1h0m0s")
            if ttl > 8760 * 3600:
                raise ApiError(400, "leaf cert TTL must be less than 8760h0m0s")
            s.set_leaf_ttl(dt.timedelta(seconds=ttl))
        rotate = provider != s.ca_config["Provider"] or any(k.lower() in ("privatekey", "private_key") for k in cfg)
        idx = s.bump("ca-config")
        s.ca_config.update({"Provider": provider, "Config": {**s.ca_config["Config"], **cfg}, "ModifyIndex": idx})
        if rotate:
            s.rotate_ca()
        return empty()

    h.route("/v1/connect/ca/roots", get=h.ca_roots)
    h.route("/v1/connect/ca/configuration", get=ca_config_get, put=ca_config_put)
