"""The Consul control plane: registration, blocking-query watches, Connect CA roots and leaf.

Every call goes through ``ConsulAPI``: the token, TLS, unix socket and ``ns`` of the config on a small HTTP client
of our own (connect/consul_http.py), for the agent writes and the blocking watches alike (py-consul's readers
cannot block on leaf, roots or config entries and send no ``ns``, consul.md §9).
Failure never clears state: the builder keeps the last good facts and ``meshgw_consul_up`` says 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from connect import consul_http
from connect import consul_queries as queries
from connect.deadline import within
from connect.intentions import IntentionError, parse_entries
from connect.leaf import Leaf, colon_hex
from connect.watch import WatchError, WatchHealth, backoff_delay, blocking_watch
from gateway import metrics
from gateway.config import (
    CheckConfig,
    Config,
    ConfigError,
    ConsulConfig,
    ExposePathConfig,
    ServiceConfig,
    ingress_listeners_from_entry,
    is_http_like,
    linked_services_from_entry,
    upstreams_from_registration,
)
from gateway.config.protocol import ProtocolFacts
from gateway.http.entries import EntryError, parse_entry, referenced_services
from gateway.snapshot import Endpoint, SnapshotBuilder, gateway_mode

log = logging.getLogger("meshgw.consul")

TTL = 15.0  # the sidecar's TTL check; refreshed every TTL/3
CHAIN_KINDS = ("service-router", "service-splitter", "service-resolver", "service-defaults", "proxy-defaults", "mesh")
# After the agent comes back, it may answer from an empty local state until services register
# again (ours does so at once): an empty upstream set inside this window keeps the last good one.
RECOVERY_GRACE = 10.0
DATACENTERS_POLL = 30.0  # /v1/catalog/datacenters cannot block
AGENT_POLL = 60.0  # /v1/agent/self cannot block either
SIDECAR_POLL = 5.0  # /v1/agent/services (sidecar_for) cannot block
CHECKS_POLL = 5.0  # /v1/agent/checks (Expose.Checks) cannot block either
# The path Consul exposes for a gRPC check (C:agent/xds/listeners.go parseCheckPath).
GRPC_HEALTH_PATH = "/grpc.health.v1.Health/Check"
UNSPECIFIED = ("0.0.0.0", "::", "")


class _NamedContext(ssl.SSLContext):
    """Sends and verifies a fixed server name whatever host is dialled (Consul's TLSServerName)."""

    server_name: str = ""

    def wrap_bio(
        self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None, session: Any = None
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def consul_ssl_context(cfg: ConsulConfig) -> ssl.SSLContext:
    """The agent's TLS as Consul's client sets it up: CA file or directory (else the system's), client
    certificate, verification switch and server name (consul.md §10)."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = cfg.tls_server_name or ""
    try:
        if cfg.ca_file or cfg.ca_path:
            ctx.load_verify_locations(
                cafile=str(cfg.ca_file) if cfg.ca_file else None, capath=str(cfg.ca_path) if cfg.ca_path else None
            )
        else:
            ctx.load_default_certs()
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"control_plane.consul: TLS files: {getattr(e, 'strerror', None) or e}"]) from None
    if not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ConsulAPI:
    """The agent's HTTP API over one session (token, TLS, namespace applied to every call)."""

    def __init__(self, cfg: ConsulConfig):
        self.cfg = cfg
        self.token = self._read_token(cfg)
        self.client: Any = None

    @staticmethod
    def _read_token(cfg: ConsulConfig) -> str | None:
        if cfg.token_file is not None:
            try:
                # Read once and trimmed, as Consul's own client does (consul.md §10).
                return cfg.token_file.read_text().strip() or None
            except OSError as e:
                raise ConfigError([f"control_plane.consul.token_file: {cfg.token_file}: {e.strerror or e}"]) from None
        return cfg.token

    async def open(self) -> None:
        # The agent as Consul's Go client reaches it (consul.md §10): a unix socket, or TCP with TLS from the CA
        # file or directory, a client certificate and a server name (which py-consul knew none of).
        tls = consul_ssl_context(self.cfg) if self.cfg.socket is None and self.cfg.scheme == "https" else None
        self.client = consul_http.Endpoint(
            host=self.cfg.host,
            port=self.cfg.port,
            tls=tls,
            unix=str(self.cfg.socket) if self.cfg.socket is not None else None,
        )

    async def close(self) -> None:
        self.client = None

    def _headers(self, body: bool = False) -> dict[str, str]:
        h = {"X-Consul-Token": self.token} if self.token else {}
        if body:
            h["Content-Type"] = "application/json"
        return h

    def _params(self, params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        out = [(k, str(v)) for k, v in (params or {}).items() if v is not None]
        if self.cfg.namespace:
            out.append(("ns", self.cfg.namespace))
        return out

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float = 10.0,
        allow_404: bool = False,
    ) -> tuple[int, Any]:
        """(X-Consul-Index or 0, decoded JSON or None). Raises WatchError with a one-line cause."""
        assert self.client is not None, "ConsulAPI.open() first"
        data = json.dumps(body).encode() if body is not None else b""
        try:
            resp = await consul_http.request(
                self.client,
                method,
                consul_http.target(path, self._params(params)),
                self._headers(body is not None),
                data,
                timeout,
            )
            text = resp.body.decode("utf-8", errors="replace")
            if resp.status == 404 and allow_404:
                return int(resp.headers.get("x-consul-index", "0") or 0), None
            if resp.status >= 400:
                # Consul's error bodies are plain text (consul.md §0 trap 3).
                raise WatchError(f"{method} {path}: {resp.status} {text.strip()[:200]}")
            index = int(resp.headers.get("x-consul-index", "0") or 0)
            return index, (json.loads(text) if text.strip() else None)
        except (consul_http.HTTPError, TimeoutError, OSError, ValueError) as e:
            raise WatchError(f"{method} {path}: {type(e).__name__}: {e}") from None

    async def blocking_get(
        self, path: str, index: int, params: Mapping[str, Any] | None = None, allow_404: bool = False
    ) -> tuple[int, Any]:
        wait = self.cfg.wait
        q = dict(params or {})
        if index:
            q["index"] = index
            q["wait"] = f"{int(wait * 1000)}ms"  # the Go client's form (consul.md §10)
        # Consul adds up to wait/16 of jitter; leave room for it and for the network.
        return await self.request("GET", path, q, timeout=wait + wait / 16 + 10, allow_404=allow_404)


def endpoints_from_health(entries: list[dict[str, Any]], datacenter: str, local_dc: str) -> tuple[Endpoint, ...]:
    """CheckServiceNode list → endpoints (decoded by connect.consul_queries, as the templates' instances).
    Consul keeps warning instances, weighted by Weights.Warning; a weight of 0 takes the instance out, and any
    critical check (node checks included) does (C:agent/xds/endpoints.go; consul.md §4.1). Service.Meta/Tags
    are kept for service-resolver subset filters (a sidecar inherits its service's, consul.md §3.2)."""
    out = []
    for i in queries.parse_health(entries, wan=datacenter != local_dc, connect=False):
        health, weight = (i.health, i.weight) if i.weight >= 1 else ("critical", 1)
        out.append(Endpoint(i.address, i.port, datacenter, health, weight, i.meta, i.tags))
    # Sorted so that a reordered answer (Consul does not keep order, §4.1) is not a change.
    return tuple(sorted(out, key=lambda ep: (ep.address, ep.port)))


def _rfc3339(value: Any) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def leaf_from_consul(body: Mapping[str, Any]) -> Leaf:
    """The leaf as Consul's IssuedCert gives it: its validity from ValidAfter/ValidBefore, the certificate's own
    NotBefore/NotAfter (consul.md §2.1, C:agent/structs/connect_ca.go), so that the X.509 library is loaded only
    for an answer without them (about 8 MB of resident memory, issue #13)."""
    cert_pem = str(body["CertPEM"]).encode()
    not_before, not_after = _rfc3339(body.get("ValidAfter")), _rfc3339(body.get("ValidBefore"))
    serial = str(body.get("SerialNumber") or "")
    if not_before is None or not_after is None or not serial:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_pem)
        not_before, not_after = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        serial = serial or colon_hex(cert.serial_number)
    return Leaf(
        cert_pem=cert_pem,
        key_pem=str(body["PrivateKeyPEM"]).encode(),
        spiffe_id=str(body.get("ServiceURI") or ""),
        serial=serial,
        not_before=not_before,
        not_after=not_after,
    )


def roots_pem_from_consul(body: Mapping[str, Any]) -> bytes:
    parts = []
    for root in body.get("Roots") or []:
        pem = str(root.get("RootCert") or "").strip()
        if pem:
            parts.append(pem + "\n")
    return "".join(parts).encode()


def agent_default_allow(body: Any) -> bool | None:
    """Consul's intention default from /v1/agent/self (consul.md §7.3; C:agent/agent_endpoint.go): the agent's
    default_intention_policy when set, else allow with ACLs off and the ACL default_policy with them."""
    if not isinstance(body, Mapping):
        return None
    dbg = body.get("DebugConfig") or {}
    if not isinstance(dbg, Mapping):
        return None
    explicit = str(dbg.get("DefaultIntentionPolicy") or "").lower()
    if explicit in ("allow", "deny"):
        return explicit == "allow"
    if not dbg.get("ACLsEnabled"):
        return True
    resolver = dbg.get("ACLResolverSettings") or {}
    policy = str(resolver.get("ACLDefaultPolicy") or dbg.get("ACLDefaultPolicy") or "allow").lower()
    return policy == "allow"


def _go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def app_check(svc: ServiceConfig) -> dict[str, Any]:
    """The check registered with the app service (consul.md §3.4): TCP by default; with ``service.check.type: grpc``
    Consul's GRPC check, ``"<host>:<port>/<service>"`` (a trailing ``/`` probes the whole server), as Nomad registers
    it (http2-grpc.md §4; C:agent/checks/grpc.go; N:command/agent/consul/service_client.go createCheckReg)."""
    c = svc.check or CheckConfig()
    host = f"[{svc.address}]" if ":" in svc.address else svc.address
    out: dict[str, Any] = {"CheckID": f"service:{svc.id}", "Name": f"{svc.name} listening"}
    if c.type == "grpc":
        out["Name"] = f"{svc.name} gRPC health"
        out["GRPC"] = f"{host}:{svc.port}/{c.grpc_service}"
        out["GRPCUseTLS"] = c.grpc_use_tls
        if c.tls_skip_verify:
            out["TLSSkipVerify"] = True
        if c.tls_server_name:
            out["TLSServerName"] = c.tls_server_name
    else:
        out["TCP"] = f"{host}:{svc.port}"
    out["Interval"] = _go_duration(c.interval)
    out["Timeout"] = _go_duration(c.timeout)
    return out


def exposed_check_paths(checks: Any, service_id: str) -> tuple[ExposePathConfig, ...]:
    """The paths the agent exposed for the HTTP and gRPC checks of ``service_id`` (``/v1/agent/checks``), as
    Consul's own proxy config builds them for Envoy (C:agent/xds/listeners.go parseCheckPath): the check's URL path
    (gRPC: the health service's method, over h2c) to the port of its original target, on the listener port the
    agent picked for it from expose_min_port..expose_max_port and recorded as ExposedPort (C:agent/agent.go
    rerouteExposedChecks, listenerPortLocked). A check without an ExposedPort is not (yet) exposed."""
    out: list[ExposePathConfig] = []
    for cid in sorted(checks or {}):
        c = checks[cid]
        if not isinstance(c, Mapping) or c.get("ServiceID") != service_id:
            continue
        port, d = c.get("ExposedPort"), c.get("Definition") or {}
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536 or not isinstance(d, Mapping):
            continue
        try:
            if d.get("HTTP"):
                u = urlsplit(str(d["HTTP"]))
                local = u.port
                path, protocol = u.path or "/", "http"
            elif d.get("GRPC"):
                local = urlsplit("//" + str(d["GRPC"]).split("/", 1)[0]).port
                path, protocol = GRPC_HEALTH_PATH, "http2"
            else:
                continue
        except ValueError as e:
            log.warning("check %s: cannot expose it: %s", cid, e)
            continue
        if local is None:
            log.warning("check %s: cannot expose it: its target names no port", cid)
            continue
        out.append(ExposePathConfig(port, path, local, protocol, from_check=True))
    return tuple(out)


def find_sidecar_proxy(services: Mapping[str, Any], sidecar_for: str) -> Mapping[str, Any] | None:
    """The Proxy block of the connect-proxy registered for ``sidecar_for`` (consul.md §3.2): by
    DestinationServiceID as Consul's LookupProxyIDForSidecar, else by a unique DestinationServiceName."""
    proxies = [s for s in services.values() if isinstance(s, Mapping) and s.get("Kind") == "connect-proxy"]
    by_id = [p for p in proxies if (p.get("Proxy") or {}).get("DestinationServiceID") == sidecar_for]
    by_name = [p for p in proxies if (p.get("Proxy") or {}).get("DestinationServiceName") == sidecar_for]
    found = by_id if len(by_id) == 1 else by_name if len(by_name) == 1 else []
    return (found[0].get("Proxy") or {}) if found else None


async def fetch_default_allow(api: ConsulAPI) -> bool | None:
    _, body = await api.request("GET", "/v1/agent/self")
    return agent_default_allow(body)


class ConsulControlPlane:
    def __init__(
        self,
        config: Config,
        builder: SnapshotBuilder,
        provide_certs: bool,
        ready: Callable[[], tuple[bool, str]],
        on_entry: Callable[[tuple[Any, ...]], None] | None = None,
        on_protocols: Callable[[ProtocolFacts], None] | None = None,
    ):
        assert config.control_plane.consul is not None
        self.config = config
        self.cfg = config.control_plane.consul
        self.builder = builder
        self.provide_certs = provide_certs
        self.ready = ready
        # A gateway whose YAML leaves its listeners (ingress) or linked services (terminating) to Consul: what its
        # config entry says goes here.
        self.on_entry = on_entry
        # Told of every change of what Consul says about protocols (gateway/config/protocol.py resolves them).
        self.on_protocols = on_protocols
        self._chain_protocols: dict[tuple[str, str], str] = {}  # (service, dc) -> discovery-chain Protocol
        self._registration_protocol: str | None = None  # sidecar_for: the agent's merged Proxy.Config.protocol
        self._leaf_watched: set[str] = set()
        self.api = ConsulAPI(self.cfg)
        self.health = WatchHealth(on_change=self._on_health)
        self.tasks: list[asyncio.Task[None]] = []
        self._endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self._roots: tuple[str, bytes] | None = None
        self._chain: dict[str, tuple[Any, ...]] = {}  # kind -> parsed entries (the last good ones)
        self._watched_services: set[tuple[str, str]] = set()
        self._leaf: Leaf | None = None
        self._linked_leaves: dict[str, Leaf] = {}  # terminating gateway, with certificates.type consul
        self.registered = False
        self._names: set[str] = set()
        self._recovered_at = 0.0
        self._wake_registration = asyncio.Event()
        self._checks_wake = asyncio.Event()  # registered (again): the agent has just exposed the checks
        svc = config.service
        # A gateway registers under its own ID (consul.md §3.3); a sidecar as "<service ID>-sidecar-proxy" (§3.2).
        self.sidecar_id = svc.id if config.is_gateway else f"{svc.id}-sidecar-proxy"
        self.check_id = f"service:{self.sidecar_id}"
        metrics.CONSUL_UP.set(0)

    def waiting_for(self) -> str | None:
        """Not ready until every watch has had a first answer (started with Consul down: wait, 503)."""
        missing = self._names - self.health.answered
        return f"waiting for a first answer from consul ({', '.join(sorted(missing))})" if missing else None

    def _on_health(self, up: bool) -> None:
        metrics.CONSUL_UP.set(1 if up else 0)
        if up:
            metrics.CONSUL_LAST_SUCCESS.set_to_current_time()
            self._recovered_at = time.monotonic()
            self._wake_registration.set()  # an agent that restarted has forgotten us: check now

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Never waits for Consul: with the agent down, watches retry and /ready stays 503 meanwhile."""
        await self.api.open()
        loop = asyncio.get_running_loop()
        cfg = self.config
        dcs = {(u.service, u.datacenter or cfg.datacenter) for u in cfg.upstreams}
        self._names = {f"health/connect/{svc}" for svc, _ in dcs} | {"config/service-intentions", "connect/ca/roots"}
        if self.provide_certs:
            self._names.add("connect/ca/leaf")
        for service, dc in sorted(dcs):
            self._watch_service(service, dc)
        # Targets in other datacenters reached through mesh gateways (consul.md §6): local mode dials this
        # datacenter's gateways on their LAN address, remote mode the target datacenter's on their WAN address.
        gw = cfg.mesh_gateway.service
        for dc in sorted({self._gateway_dc(u) for u in cfg.upstreams} - {None}):
            assert dc is not None
            self._names.add(f"health/service/{gw}@{dc}")
            self._watched_services.add((gw, dc))
            self._spawn(loop, self._watch_upstream(gw, dc, "service"), f"watch-gateways-{dc}")
        self._spawn(loop, self._watch_intentions(), "watch-intentions")
        if cfg.control_plane.default_intention_policy is None:
            self._names.add("agent/self")
            self._spawn(loop, self._watch_agent_policy(), "watch-agent-policy")
        if cfg.mode in ("ingress-gateway", "terminating-gateway") and self.on_entry is not None:
            self._names.add(f"config/{cfg.mode}")
            self._spawn(loop, self._watch_gateway_entry(), f"watch-{cfg.mode}")
        if cfg.mode == "sidecar" and self.cfg.sidecar_for and self.on_entry is not None:
            self._names.add("agent/services")
            self._spawn(loop, self._watch_sidecar_registration(self.cfg.sidecar_for), "watch-sidecar-registration")
        own_resolved = cfg.mode == "sidecar" and not cfg.service.protocol_explicit
        if cfg.upstreams or cfg.mode != "sidecar" or self.cfg.sidecar_for:
            # The discovery chain's config entries (consul.md §8.1, §8.3-§8.5): resolvers for every upstream
            # (redirect, subsets, failover), routers and splitters for HTTP ones; a mesh gateway needs the
            # resolvers' subsets for subset SNI names.
            self._watched_services |= set(dcs)
            kinds: tuple[str, ...] = CHAIN_KINDS
        else:
            # The mesh entry's HTTP.Incoming.RequestNormalization shapes the inbound HTTP listener
            # (l7-security.md §1.1); service-defaults and proxy-defaults decide its protocol when the YAML does not.
            kinds = ("service-defaults", "proxy-defaults") if own_resolved else ()
            if own_resolved or is_http_like(cfg.service.protocol):
                kinds += ("mesh",)
        if own_resolved or any(not u.protocol_explicit for u in cfg.upstreams) or self.cfg.sidecar_for:
            # Not ready before the protocols are known: a first request must not be served as tcp by mistake.
            self._names |= {"config/service-defaults", "config/proxy-defaults"}
        for kind in kinds:
            self._spawn(loop, self._watch_chain_kind(kind), f"watch-{kind}")
        for u in cfg.upstreams:
            if not u.protocol_explicit:
                self._watch_chain(u.service, u.datacenter or cfg.datacenter)
        if cfg.mode == "mesh-gateway":
            self._names |= {"catalog/services", "catalog/datacenters"}
            self._spawn(loop, self._watch_catalog_services(), "watch-catalog-services")
            self._spawn(loop, self._watch_datacenters(), "watch-datacenters")
        self._spawn(loop, self._watch_roots(), "watch-roots")
        if self.provide_certs:
            self._spawn(loop, self._watch_leaf(), "watch-leaf")
        self._watch_linked(cfg.linked_services)
        if self.cfg.register:
            self._spawn(loop, self._registration(), "registration")
        if cfg.expose_checks:
            self._spawn(loop, self._watch_exposed_checks(), "watch-exposed-checks")

    async def _watch_sidecar_registration(self, sidecar_for: str) -> None:
        """The upstreams of the connect-proxy registered for ``sidecar_for`` on the local agent, as
        `consul connect envoy -sidecar-for` finds it (the proxy whose DestinationServiceID matches; meshgw also
        takes a unique DestinationServiceName match, since Nomad's service IDs are generated). The agent's service
        list cannot block: it is polled, and a changed registration (Nomad job update) changes the listeners."""
        where = f"consul agent service for {sidecar_for}"
        failures = 0
        last: Any = object()
        while True:
            try:
                _, services = await self.api.request("GET", "/v1/agent/services")
            except WatchError as e:
                failures += 1
                self.health.failure("agent/services", str(e))
                await asyncio.sleep(backoff_delay(failures))
                continue
            failures = 0
            proxy = find_sidecar_proxy(services or {}, sidecar_for)
            if proxy is None:
                self.health.failure("agent/services", f"{where}: no connect-proxy registered for it (yet)")
            else:
                self.health.success("agent/services")
                if proxy != last:
                    last = proxy
                    try:
                        value = upstreams_from_registration(proxy, where)
                    except ConfigError as e:
                        metrics.CONTROL_PLANE_ERRORS.labels("registration").inc()
                        for line in e.problems:
                            log.error("%s (unchanged)", line)
                    else:
                        for u in value:
                            self._watch_service(u.service, u.datacenter or self.config.datacenter)
                            if not u.protocol_explicit:
                                self._watch_chain(u.service, u.datacenter or self.config.datacenter)
                        log.info("%s: %d upstream(s)", where, len(value))
                        # The agent stores the registration merged with the central defaults (http2-grpc.md §1.2;
                        # C:agent/service_manager.go), so this is Consul's own answer for the proxy's protocol.
                        config = proxy.get("Config") or {}
                        protocol = config.get("protocol") if isinstance(config, Mapping) else None
                        self._registration_protocol = str(protocol) if protocol else None
                        self._publish_protocols()
                        assert self.on_entry is not None
                        self.on_entry(value)
            await asyncio.sleep(SIDECAR_POLL)

    async def _watch_agent_policy(self) -> None:
        """The agent's intention default; re-read now and then, since an agent reload may change it (it cannot
        block). Until a first answer the builder denies, and /ready says what it waits for."""
        failures = 0
        last: bool | None = None
        while True:
            try:
                allow = await fetch_default_allow(self.api)
            except WatchError as e:
                failures += 1
                self.health.failure("agent/self", str(e))
                await asyncio.sleep(backoff_delay(failures))
                continue
            failures = 0
            self.health.success("agent/self")
            if allow is not None and allow != last:
                last = allow
                log.info("intention default from consul: %s", "allow" if allow else "deny")
                self.builder.set_default_allow(allow)
            await asyncio.sleep(AGENT_POLL)

    async def _watch_exposed_checks(self) -> None:
        """Expose.Checks: the agent gives each HTTP/gRPC check of the app a port and points the check at this
        proxy; which ports, paths and targets is read from the agent's checks (they cannot block: polled, and
        at once after each registration). Callers other than loopback are the agent itself: its LAN address
        (/v1/agent/self Member.Addr) is the one more source the exposed paths admit, as Consul's Envoy does."""
        failures = 0
        sources: tuple[str, ...] | None = None
        while True:
            try:
                if sources is None:
                    _, me = await self.api.request("GET", "/v1/agent/self")
                    addr = ((me or {}).get("Member") or {}).get("Addr") if isinstance(me, Mapping) else None
                    sources = (str(addr),) if addr else ()
                _, checks = await self.api.request("GET", queries.agent_checks().path)
            except WatchError as e:
                failures += 1
                self.health.failure("agent/checks", str(e))
                await asyncio.sleep(backoff_delay(failures))
                continue
            failures = 0
            self.health.success("agent/checks")
            paths = exposed_check_paths(checks if isinstance(checks, Mapping) else {}, self.config.service.id)
            self.builder.set_exposed_checks(paths, sources)
            self._checks_wake.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._checks_wake.wait(), CHECKS_POLL)

    def _gateway_dc(self, u: Any) -> str | None:
        """Which datacenter's mesh gateways an upstream dials, or None when it dials its target directly."""
        dc = u.datacenter or self.config.datacenter
        if dc == self.config.datacenter:
            return None
        entries = tuple(e for k in CHAIN_KINDS for e in self._chain.get(k, ()))
        mode = gateway_mode(u, self.config, self.config.config_entries + entries)
        return {"local": self.config.datacenter, "remote": dc}.get(mode)

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any, name: str) -> None:
        self.tasks.append(loop.create_task(coro, name=name))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.registered:
            await self._deregister()
        await self.api.close()

    # ------------------------------------------------------------------ watches

    async def _watch_upstream(self, service: str, dc: str, kind: str = "connect") -> None:
        """Healthy instances of ``service`` in ``dc``: connect-capable ones (sidecars), or with kind "service" the
        service's own instances (mesh gateways are not behind sidecars)."""
        # Not ?passing (consul_queries.health): warning instances stay, weighted; the builder drops critical ones.
        q = queries.health(kind, service, dc, self.config.datacenter)
        name = f"health/{kind}/{service}" + ("" if kind == "connect" else f"@{dc}")  # as start() names them

        async def fetch(index: int) -> tuple[int, Any]:
            return await q.fetch(self.api, index)

        def on_data(entries: Any) -> None:
            eps = endpoints_from_health(entries or [], dc, self.config.datacenter)
            old = self._endpoints.get((service, dc))
            if old == eps:
                return
            if not eps and old and time.monotonic() - self._recovered_at < RECOVERY_GRACE:
                log.info("upstream %s: empty answer right after consul came back: keeping the last good set", service)
                return
            self._endpoints[(service, dc)] = eps
            catalog: dict[str, tuple[Endpoint, ...]] = {}
            for (svc, _), e in sorted(self._endpoints.items()):
                catalog[svc] = catalog.get(svc, ()) + e
            log.info("%s in %s: %d healthy instance(s)", service, dc, sum(1 for ep in eps if ep.health != "critical"))
            self.builder.set_catalog(catalog)

        await blocking_watch(name, fetch, on_data, self.health)

    def _watch_service(self, service: str, dc: str, kind: str = "connect") -> None:
        if (service, dc) not in self._watched_services:
            self._watched_services.add((service, dc))
            self._spawn(
                asyncio.get_running_loop(), self._watch_upstream(service, dc, kind), f"watch-{kind}-{service}-{dc}"
            )

    async def _watch_gateway_entry(self) -> None:
        """``consul config write`` of this gateway's ingress-gateway entry (or Nomad's gateway block, which writes
        it) sets its listeners; of its terminating-gateway entry, its linked services. A bad entry is said in one
        line and what is serving stays."""
        kind, name = self.config.mode, self.config.service.name
        where = f"consul config {kind}/{name}"

        async def fetch(index: int) -> tuple[int, Any]:
            return await queries.config_entry(kind, name).fetch(self.api, index)

        def on_data(entry: Any) -> None:
            try:
                if kind == "ingress-gateway":
                    value: tuple[Any, ...] = ingress_listeners_from_entry(
                        entry or {}, self.config.service.address, where
                    )
                else:
                    value = linked_services_from_entry(entry or {}, where)
            except ConfigError as e:
                metrics.CONTROL_PLANE_ERRORS.labels("config-entries").inc()
                for line in e.problems:
                    log.error("%s (unchanged)", line)
                return
            if kind == "ingress-gateway":
                for u in value:
                    self._watch_service(u.service, self.config.datacenter)
                log.info("%s: %d listener(s)", where, len({u.bind for u in value}))
            else:
                self._watch_linked(value)
                log.info("%s: %d linked service(s)", where, len(value))
            assert self.on_entry is not None
            self.on_entry(value)

        await blocking_watch(f"config/{kind}", fetch, on_data, self.health)

    def _watch_linked(self, linked: tuple[Any, ...]) -> None:
        """A terminating gateway presents each linked service's leaf and dials its instances (unless an address is
        given): Consul lists them under /v1/health/service, not /connect (consul.md §8.7)."""
        loop = asyncio.get_running_loop()
        for ls in linked:
            if self.provide_certs and ls.name not in self._leaf_watched:
                self._leaf_watched.add(ls.name)
                self._spawn(loop, self._watch_leaf(ls.name), f"watch-leaf-{ls.name}")
            if ls.address is None:
                self._watch_service(ls.name, self.config.datacenter, "service")

    async def _watch_catalog_services(self) -> None:
        """A mesh gateway routes to any service of its datacenter: watch the service list, then each service's
        connect-capable instances (Consul's own mesh gateways watch the same, consul.md §6)."""
        own = {self.config.service.name, self.config.mesh_gateway.service, "consul"}

        async def fetch(index: int) -> tuple[int, Any]:
            return await queries.catalog_services(self.config.datacenter, self.config.datacenter).fetch(self.api, index)

        def on_data(services: Any) -> None:
            for name in sorted(services or {}):
                # The list names sidecars ("<service>-sidecar-proxy", consul.md §3.2), not always their services
                # (an app need not be registered itself): health/connect/<service> finds the sidecars.
                base = name.removesuffix("-sidecar-proxy")
                if base not in own:
                    self._watch_service(base, self.config.datacenter)

        await blocking_watch("catalog/services", fetch, on_data, self.health)

    async def _watch_datacenters(self) -> None:
        """The other datacenters, each with a watch on its mesh gateways (WAN addresses). The list has no index to
        block on: it is read again every DATACENTERS_POLL seconds."""

        async def fetch(index: int) -> tuple[int, Any]:
            if index:
                await asyncio.sleep(DATACENTERS_POLL)
            _, body = await self.api.request("GET", "/v1/catalog/datacenters")
            return index + 1, body

        def on_data(dcs: Any) -> None:
            for dc in dcs or []:
                if isinstance(dc, str) and dc != self.config.datacenter:
                    self._watch_service(self.config.mesh_gateway.service, dc, "service")

        await blocking_watch("catalog/datacenters", fetch, on_data, self.health)

    async def _watch_intentions(self) -> None:
        # Every service-intentions entry: the builder keeps those naming this service or '*' as destination.
        async def fetch(index: int) -> tuple[int, Any]:
            return await queries.intentions().fetch(self.api, index)

        def on_data(entries: Any) -> None:
            try:
                parsed = parse_entries(entries or [], "consul /v1/config/service-intentions", from_server=True)
            except IntentionError as e:
                metrics.CONTROL_PLANE_ERRORS.labels("intentions").inc()
                log.error("%s (keeping the last good intentions)", e)
                return
            self.builder.set_intentions(parsed)

        await blocking_watch("config/service-intentions", fetch, on_data, self.health)

    async def _watch_chain_kind(self, kind: str) -> None:
        async def fetch(index: int) -> tuple[int, Any]:
            return await queries.config_kind(kind).fetch(self.api, index)

        def on_data(entries: Any) -> None:
            parsed = []
            for raw in entries or []:
                try:
                    parsed.append(parse_entry(raw, f"consul /v1/config/{kind}", lenient=True))
                except EntryError as e:
                    # One bad entry is left out (and said once per change); the others still apply.
                    metrics.CONTROL_PLANE_ERRORS.labels("config-entries").inc()
                    log.error("%s (entry ignored)", e)
            self._chain[kind] = tuple(parsed)
            combined = tuple(e for k in CHAIN_KINDS for e in self._chain.get(k, ()))
            # Routes and splits can send requests to other services: watch their endpoints too.
            for service, dc in referenced_services(combined):
                key = (service, dc or self.config.datacenter)
                self._watch_service(*key)
            # service-defaults / proxy-defaults may set a mesh gateway mode: watch the gateways it dials.
            for u in self.config.upstreams:
                gdc = self._gateway_dc(u)
                if gdc is not None:
                    self._watch_service(self.config.mesh_gateway.service, gdc, "service")
            log.info("consul %s entries: %d", kind, len(parsed))
            self.builder.set_chain_entries(combined)
            if kind in ("service-defaults", "proxy-defaults"):
                self._publish_protocols()

        await blocking_watch(f"config/{kind}", fetch, on_data, self.health)

    def protocol_facts(self) -> ProtocolFacts:
        entries = tuple(e for k in ("service-defaults", "proxy-defaults") for e in self._chain.get(k, ()))
        return ProtocolFacts(entries, tuple(sorted(self._chain_protocols.items())), self._registration_protocol)

    def _publish_protocols(self) -> None:
        if self.on_protocols is not None:
            self.on_protocols(self.protocol_facts())

    def _watch_chain(self, service: str, dc: str) -> None:
        q = queries.discovery_chain(service, dc, self.config.datacenter)
        if q.name not in self._names:
            self._names.add(q.name)
            self._spawn(asyncio.get_running_loop(), self._watch_chain_protocol(q, service, dc), f"watch-{q.name}")

    async def _watch_chain_protocol(self, q: queries.Query, service: str, dc: str) -> None:
        """The upstream's protocol as Consul compiles its discovery chain (``Chain.Protocol``, http2-grpc.md §1.3,
        §1.5): the target's service-defaults, else proxy-defaults, else tcp. Read as a blocking query, so a
        ``consul config write`` of either re-resolves it († that the endpoint blocks is Consul's API documentation
        from memory, not in the spec; were it not to block, blocking_watch re-reads it with its quick backoff)."""

        async def fetch(index: int) -> tuple[int, Any]:
            return await q.fetch(self.api, index)

        def on_data(body: Any) -> None:
            chain = (body or {}).get("Chain") if isinstance(body, Mapping) else None
            protocol = str((chain or {}).get("Protocol") or "tcp") if isinstance(chain, Mapping) else "tcp"
            if self._chain_protocols.get((service, dc)) == protocol:
                return
            self._chain_protocols[(service, dc)] = protocol
            log.info("discovery chain of %s in %s: protocol %s", service, dc, protocol)
            self._publish_protocols()

        await blocking_watch(q.name, fetch, on_data, self.health)

    async def _watch_roots(self) -> None:
        async def fetch(index: int) -> tuple[int, Any]:
            return await queries.roots().fetch(self.api, index)

        def on_data(body: Any) -> None:
            body = body or {}
            td = str(body.get("TrustDomain") or "").lower()
            pem = roots_pem_from_consul(body)
            if not td or not pem:
                log.warning("consul CA roots answer has no trust domain or roots: ignored")
                return
            self._roots = (td, pem)
            log.info("CA roots from consul: trust domain %s, %d root(s)", td, len(body.get("Roots") or []))
            self._publish_tls()

        await blocking_watch("connect/ca/roots", fetch, on_data, self.health)

    async def _watch_leaf(self, service: str | None = None) -> None:
        """This proxy's leaf, or (terminating gateway) the leaf of a linked ``service``."""
        name = service or self.config.service.name
        q = queries.leaf(name)

        async def fetch(index: int) -> tuple[int, Any]:
            return await q.fetch(self.api, index)

        def on_data(body: Any) -> None:
            try:
                leaf = leaf_from_consul(body or {})
            except (KeyError, ValueError) as e:
                metrics.CERT_FAILURES.labels("consul").inc()
                log.error("consul leaf certificate for %s unusable (%s): keeping the current one", name, e)
                return
            if service is None:
                self._leaf = leaf
            else:
                self._linked_leaves[service] = leaf
            metrics.CERT_ROTATIONS.inc()
            log.info("leaf certificate from consul: %s serial %s", leaf.spiffe_id, leaf.serial)
            self._publish_tls()

        await blocking_watch("connect/ca/leaf" + (f"/{service}" if service else ""), fetch, on_data, self.health)

    def _publish_tls(self) -> None:
        if self.provide_certs and self._leaf is not None and self._roots is not None:
            self.builder.set_tls(self._roots[0], self._leaf, self._roots[1])
        elif not self.provide_certs and self._roots is not None:
            self.builder.set_extra_roots(self._roots[1])
        if self._roots is not None:
            for svc, leaf in self._linked_leaves.items():
                self.builder.set_linked_tls(svc, self._roots[0], leaf, self._roots[1])

    # ------------------------------------------------------------------ registration

    def _ttl_check(self) -> dict[str, Any]:
        return {
            "CheckID": self.check_id,
            "Name": f"meshgw {self.config.mode} ready",
            "TTL": f"{int(TTL)}s",
            "Notes": "meshgw sets this from its /ready state every few seconds",
            "Status": "critical",
        }

    def gateway_registration(self) -> dict[str, Any]:
        """Kind mesh-gateway (with lan/wan tagged addresses) or ingress-gateway (consul.md §3.3)."""
        cfg = self.config
        body: dict[str, Any] = {
            "Kind": cfg.mode,
            "ID": cfg.service.id,
            "Name": cfg.service.name,
            "Meta": {"meshgw": cfg.mode},
            "Checks": [self._ttl_check()],
        }
        if cfg.gateway is not None:
            g = cfg.gateway
            lan = g.lan_address or g.bind
            wan = g.wan_address or lan
            body["Port"] = lan.port
            tagged = {}
            if lan.host not in UNSPECIFIED:
                body["Address"] = lan.host
                tagged["lan"] = {"Address": lan.host, "Port": lan.port}
            if wan.host not in UNSPECIFIED:
                tagged["wan"] = {"Address": wan.host, "Port": wan.port}
            if tagged:
                body["TaggedAddresses"] = tagged
        else:
            # Consul wants a port for a gateway (consul.md §3.3): service.port, else the first listener's.
            body["Port"] = cfg.service.port or (cfg.upstreams[0].bind.port if cfg.upstreams else 0)
        return body

    def sidecar_registration(self) -> dict[str, Any]:
        cfg = self.config
        svc = cfg.service
        if cfg.is_gateway:
            return self.gateway_registration()
        body: dict[str, Any] = {
            "Kind": "connect-proxy",
            "ID": self.sidecar_id,
            "Name": f"{svc.name}-sidecar-proxy",
            "Proxy": {
                "DestinationServiceName": svc.name,
                "DestinationServiceID": svc.id,
                "LocalServiceAddress": svc.address,
                "LocalServicePort": svc.port,
                # Only a protocol the YAML sets: else Consul's central defaults decide (http2-grpc.md §1.2).
                "Config": {"protocol": svc.protocol} if svc.protocol_explicit else {},
                "Upstreams": [
                    {
                        "DestinationType": "service",
                        "DestinationName": u.service,
                        "Datacenter": u.datacenter or "",
                        "LocalBindAddress": u.bind.host,
                        "LocalBindPort": u.bind.port,
                        "Config": {"protocol": u.protocol} if u.protocol_explicit else {},
                    }
                    for u in cfg.upstreams
                ],
            },
            "Meta": {"meshgw": "sidecar"},
            "Checks": [self._ttl_check()],
        }
        if cfg.expose or cfg.expose_checks:
            # Tells the agent which paths its checks may use without mTLS (consul.md §3.1 Proxy.Expose); with
            # Checks it also exposes every HTTP/gRPC check of the app through this proxy (C:agent/agent.go).
            body["Proxy"]["Expose"] = {
                **({"Checks": True} if cfg.expose_checks else {}),
                "Paths": [
                    {"ListenerPort": p.listener_port, "Path": p.path, "LocalPathPort": p.local_path_port,
                     "Protocol": p.protocol}
                    for p in cfg.expose
                ],
            }  # fmt: skip
        if self.cfg.register_service:
            # As Consul's own sidecar_service does (consul.md §3.2): the proxy is only as healthy as its app.
            body["Checks"].append(
                {
                    "CheckID": f"service:{self.sidecar_id}:alias",
                    "Name": f"Connect Sidecar Aliasing {svc.id}",
                    "AliasService": svc.id,
                }
            )
        if cfg.inbound is not None:
            body["Port"] = cfg.inbound.bind.port
            # 0.0.0.0 is refused by the agent ("Invalid service address", consul.md §3.1): let it use the node's.
            if cfg.inbound.bind.host not in UNSPECIFIED:
                body["Address"] = cfg.inbound.bind.host
        return body

    def service_registration(self) -> dict[str, Any]:
        svc = self.config.service
        return {
            "ID": svc.id,
            "Name": svc.name,
            "Address": svc.address,
            "Port": svc.port,
            "Meta": {"meshgw": "app"},
            "Checks": [app_check(svc)],
        }

    async def _register(self) -> None:
        if self.cfg.register_service:
            await self.api.request("PUT", "/v1/agent/service/register", body=self.service_registration())
        await self.api.request(
            "PUT", "/v1/agent/service/register", {"replace-existing-checks": "true"}, self.sidecar_registration()
        )
        self.registered = True
        self._checks_wake.set()
        log.info("registered %s with consul at %s", self.sidecar_id, self.cfg.address)

    async def _deregister(self) -> None:
        for sid in [self.sidecar_id] + ([self.config.service.id] if self.cfg.register_service else []):
            try:
                await self.api.request("PUT", f"/v1/agent/service/deregister/{sid}", timeout=5)
                log.info("deregistered %s", sid)
            except WatchError as e:
                log.warning("could not deregister %s: %s", sid, e)
        self.registered = False

    async def _registration(self) -> None:
        """Register, then keep the TTL check fresh; an agent that forgot us (restart) gets us again."""
        failures = 0
        while True:
            try:
                if not self.registered:
                    await self._register()
                ok, why = self.ready()
                await self.api.request(
                    "PUT",
                    f"/v1/agent/check/update/{self.check_id}",
                    body={"Status": "passing" if ok else "critical", "Output": why},
                )
                self.health.success("registration")
                failures = 0
                self._wake_registration.clear()
                try:
                    await within(self._wake_registration.wait(), TTL / 3 * random.uniform(0.9, 1.0))
                except TimeoutError:
                    pass
            except WatchError as e:
                failures += 1
                msg = str(e)
                if " 404 " in msg or "Unknown check" in msg or "does not have associated TTL" in msg:
                    if self.registered:
                        log.warning("consul agent forgot %s: registering again", self.sidecar_id)
                    self.registered = False
                    await asyncio.sleep(min(1.0, backoff_delay(failures)))
                    continue
                self.health.failure("registration", msg)
                await asyncio.sleep(backoff_delay(failures))
