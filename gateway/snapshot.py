"""Immutable snapshots of everything the data plane needs, and the builder that makes them.

Providers hand facts (catalog, intentions, TLS material) to the builder; the builder does the
expensive work once (SSLContexts, compiled intention tables, healthy endpoint lists) and swaps
``holder.current`` in one assignment. Listeners read ``holder.current`` once per connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from connect.intentions import IntentionTable, ServiceIntentions
from connect.leaf import Leaf
from connect.spiffe import service_uri, upstream_sni
from gateway import metrics
from gateway.accesslog import AccessLog
from gateway.config import Config, UpstreamConfig
from gateway.config.reader import is_http_like
from gateway.http.routing import BalancerCache, cfg_entries, compile_chain, subset_endpoints

log = logging.getLogger("meshgw.snapshot")

# Consul's Envoy config keeps warning instances in the load-balancing set (only critical ones leave it)
# unless a resolver asks for OnlyPassing; `?passing` on the HTTP API is stricter (consul.md §4.1).
HEALTHY = frozenset({"passing", "warning"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    datacenter: str
    health: str = "passing"
    weight: int = 1
    # Service.Meta and Service.Tags, for service-resolver subset filters (consul.md §8.5).
    meta: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": self.address,
            "port": self.port,
            "datacenter": self.datacenter,
            "health": self.health,
            "weight": self.weight,
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        if self.tags:
            out["tags"] = list(self.tags)
        return out


@dataclass(frozen=True, slots=True)
class TLSState:
    trust_domain: str
    leaf: Leaf
    roots_pem: bytes

    @classmethod
    def build(cls, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> TLSState:
        # The PEMs only: the core builds its rustls configurations from them, once per snapshot.
        return cls(trust_domain=trust_domain, leaf=leaf, roots_pem=roots_pem)

    def valid(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.leaf.not_before <= now < self.leaf.not_after

    def to_json(self) -> dict[str, Any]:
        # The leaf's identity and validity, never its key (or the PEM, which /certs may serve later).
        return {
            "trust_domain": self.trust_domain,
            "leaf": {
                "spiffe_id": self.leaf.spiffe_id,
                "serial": self.leaf.serial,
                "not_before": self.leaf.not_before,
                "not_after": self.leaf.not_after,
            },
            "roots": self.roots_pem.count(b"-----BEGIN CERTIFICATE-----"),
        }


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """One upstream listener's target: who to dial, what SNI to send, which identity to expect."""

    key: str
    service: str
    datacenter: str
    sni: str
    expected_uri: str
    endpoints: tuple[Endpoint, ...]
    # HTTP-like protocols: the compiled discovery chain (gateway.http.routing.Chain): routes, splits, clusters,
    # balancers.
    chain: Any = None


@dataclass(frozen=True, slots=True)
class GatewayRoutes:
    """A mesh gateway's routing table, keyed the way SNI names read (consul.md §5.2, §6)."""

    # "<service>" and "<subset>.<service>": healthy connect-capable instances in this datacenter.
    local: Mapping[str, tuple[Endpoint, ...]]
    # "<dc>": healthy mesh gateways of another datacenter.
    remote: Mapping[str, tuple[Endpoint, ...]]

    def to_json(self) -> dict[str, Any]:
        return {
            "local": {k: [e.to_json() for e in v] for k, v in sorted(self.local.items())},
            "remote": {k: [e.to_json() for e in v] for k, v in sorted(self.remote.items())},
        }


@dataclass(frozen=True, slots=True)
class Origination:
    """The TLS files of a linked service that wants TLS, read once per config (``preflight`` checked them)."""

    ca_pem: str
    cert_pem: str | None = None
    key_pem: str | None = None


@dataclass(frozen=True, slots=True)
class LinkedView:
    """One service a terminating gateway stands in for: its leaf, who may call it, where it is, and how to reach
    it (plaintext, or TLS with ``origination``)."""

    service: str
    sni: str
    intentions: IntentionTable
    endpoints: tuple[Endpoint, ...]
    origination: Origination | None = None
    origination_sni: str | None = None
    tls_required: bool = False  # ca_file was set: without usable files, refuse (never plaintext instead)
    leaf: Leaf | None = None  # the service's own leaf while valid

    def to_json(self) -> dict[str, Any]:
        return {
            "sni": self.sni,
            "leaf": self.leaf is not None,
            "endpoints": [e.to_json() for e in self.endpoints],
            "tls_origination": self.origination is not None,
        }


@dataclass(frozen=True, slots=True)
class TerminatingRoutes:
    linked: Mapping[str, LinkedView]


def gateway_mode(u: UpstreamConfig, cfg: Config, entries: tuple[Any, ...]) -> str:
    """The mesh gateway mode of an upstream, Consul's layers first to last (consul.md §6): the upstream's own, the
    proxy's (meshgw.yaml's mesh_gateway.mode), the local service's service-defaults, proxy-defaults/global."""
    if u.mesh_gateway or cfg.mesh_gateway.mode:
        return u.mesh_gateway or cfg.mesh_gateway.mode
    for kind, name in (("service-defaults", cfg.service.name), ("proxy-defaults", "global")):
        for e in entries:
            if e.kind == kind and e.name == name and getattr(e, "mesh_gateway_mode", ""):
                return str(e.mesh_gateway_mode)
    return "none"


def upstream_key(u: UpstreamConfig, cfg: Config) -> str:
    """``<service>.<dc>``, and the bind address after it when another upstream has the same target (two listeners
    for one service with different settings, e.g. one through mesh gateways and one direct)."""
    dc = u.datacenter or cfg.datacenter
    base = f"{u.service}.{dc}"
    twins = sum(1 for x in cfg.upstreams if x.service == u.service and (x.datacenter or cfg.datacenter) == dc)
    return base if twins <= 1 else f"{base}@{u.bind}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    built_at: float
    datacenter: str
    service: str
    tls: TLSState | None
    upstreams: Mapping[str, UpstreamView]
    intentions: IntentionTable
    intention_entries: tuple[ServiceIntentions, ...] = field(default=())
    access_log: Any = None  # gateway.accesslog.AccessLog when access logs are on
    mesh: Any = None  # gateway.http.entries.MeshEntry: inbound HTTP request normalization (l7-security.md §1.1)
    gateway: GatewayRoutes | None = None  # mode mesh-gateway
    terminating: TerminatingRoutes | None = None  # mode terminating-gateway
    # Expose.Checks: the paths the Consul agent exposed for the app's HTTP/gRPC checks (ExposePathConfig with
    # from_check), and the addresses besides loopback that may call them (the agent's LAN address).
    exposed_checks: tuple[Any, ...] = ()
    check_sources: tuple[str, ...] = ()

    def ready(self) -> tuple[bool, str]:
        if self.tls is None:
            return False, "no leaf certificate yet"
        if not self.tls.valid():
            return False, f"leaf certificate {self.tls.leaf.serial} is not valid now (expired or not yet valid)"
        return True, "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "built_at": self.built_at,
            "datacenter": self.datacenter,
            "service": self.service,
            "tls": self.tls.to_json() if self.tls else None,
            "upstreams": {
                k: {
                    "service": v.service,
                    "datacenter": v.datacenter,
                    "sni": v.sni,
                    "expected_identity": v.expected_uri,
                    "endpoints": [e.to_json() for e in v.endpoints],
                }
                for k, v in self.upstreams.items()
            },
            "intentions": self.intentions.rules(),
            **({"gateway": self.gateway.to_json()} if self.gateway is not None else {}),
            **(
                {
                    "exposed_checks": [
                        {"listener_port": p.listener_port, "path": p.path, "local_path_port": p.local_path_port,
                         "protocol": p.protocol}
                        for p in self.exposed_checks
                    ]
                }
                if self.exposed_checks
                else {}
            ),
            **(
                {"linked_services": {k: v.to_json() for k, v in self.terminating.linked.items()}}
                if self.terminating is not None
                else {}
            ),
        }


def _merge_pem(a: bytes, b: bytes) -> bytes:
    """Concatenate PEM bundles, each certificate once."""
    seen: list[bytes] = []
    for bundle in (a, b):
        for part in bundle.split(b"-----END CERTIFICATE-----"):
            part = part.strip()
            if part:
                cert = part + b"\n-----END CERTIFICATE-----\n"
                if cert not in seen:
                    seen.append(cert)
    return b"".join(seen)


class SnapshotHolder:
    """The one piece of shared mutable state in the data plane: a reference, swapped atomically. Observers (the
    Rust core's hand-over) are told of every new snapshot."""

    def __init__(self, snapshot: Snapshot):
        self._current = snapshot
        self.observers: list[Callable[[Snapshot], None]] = []

    @property
    def current(self) -> Snapshot:
        return self._current

    @current.setter
    def current(self, snapshot: Snapshot) -> None:
        self._current = snapshot
        for observe in self.observers:
            observe(snapshot)


class SnapshotBuilder:
    """Collects provider facts and publishes a new Snapshot whenever one of them changes."""

    def __init__(self, config: Config):
        self.config = config
        self._catalog: Mapping[str, tuple[Endpoint, ...]] = {}
        self._entries: tuple[ServiceIntentions, ...] = ()
        self._tls: TLSState | None = None
        self._tls_inputs: tuple[str, Leaf, bytes] | None = None
        # Also told of every leaf/roots (the template renderer writes them to files).
        self.tls_listeners: list[Callable[[str, Leaf, bytes], None]] = []
        # Roots trusted besides the leaf provider's own, e.g. Consul's during a move between CAs.
        self._extra_roots = b""
        self._version = 0
        self._agent_default_allow: bool | None = None  # Consul's, when the config leaves the default to it
        # HTTP: discovery-chain config entries from Consul (the local ones are in the config), balancers kept
        # across builds while their endpoints stay, the access log writer kept while its settings stay.
        self._chain_entries: tuple[Any, ...] = ()
        self._balancers = BalancerCache()
        self._access_log: AccessLog | None = None
        # Terminating gateway: each linked service's leaf, and the TLS contexts to services that want TLS.
        self._linked_tls: dict[str, tuple[str, Leaf, bytes]] = {}
        self._linked_state: dict[str, TLSState] = {}  # built when a leaf arrives, not on every snapshot
        self._origination: dict[str, Origination] = {}
        self._exposed_checks: tuple[Any, ...] = ()
        self._check_sources: tuple[str, ...] = ()
        self._load_origination(config)
        self.holder = SnapshotHolder(self._build())

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._load_origination(config)
        self.publish()

    def _load_origination(self, config: Config) -> None:
        """Read once per config, not per snapshot: ``preflight`` has checked the files load."""
        out = {}
        for ls in config.linked_services:
            if ls.ca_file is not None:
                try:
                    out[ls.name] = Origination(
                        ls.ca_file.read_text(),
                        ls.cert_file.read_text() if ls.cert_file else None,
                        ls.key_file.read_text() if ls.key_file else None,
                    )
                except (OSError, UnicodeDecodeError) as e:
                    log.error("%s: services: %s: TLS files unusable: %s", config.path, ls.name, e)
        self._origination = out

    def set_catalog(self, catalog: Mapping[str, tuple[Endpoint, ...]]) -> None:
        self._catalog = catalog
        self.publish()

    def set_intentions(self, entries: tuple[ServiceIntentions, ...]) -> None:
        self._entries = entries
        self.publish()

    def set_exposed_checks(self, paths: tuple[Any, ...], sources: tuple[str, ...]) -> None:
        if (paths, sources) == (self._exposed_checks, self._check_sources):
            return
        self._exposed_checks, self._check_sources = paths, sources
        self.publish()

    def set_chain_entries(self, entries: tuple[Any, ...]) -> None:
        self._chain_entries = entries
        self.publish()

    def set_tls(self, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> None:
        self._tls_inputs = (trust_domain, leaf, roots_pem)
        for listener in self.tls_listeners:
            listener(trust_domain, leaf, roots_pem)
        self._tls = TLSState.build(trust_domain, leaf, _merge_pem(roots_pem, self._extra_roots))
        metrics.CERT_EXPIRY.set(leaf.not_after)
        self.publish()

    def set_extra_roots(self, roots_pem: bytes) -> None:
        if roots_pem == self._extra_roots:
            return
        self._extra_roots = roots_pem
        for service, inputs in self._linked_tls.items():
            self._linked_state[service] = TLSState.build(inputs[0], inputs[1], _merge_pem(inputs[2], roots_pem))
        if self._tls_inputs is not None:
            self.set_tls(*self._tls_inputs)
        elif self._linked_tls:
            self.publish()

    @property
    def extra_roots(self) -> bytes:
        return self._extra_roots

    @property
    def tls_inputs(self) -> tuple[str, Leaf, bytes] | None:
        return self._tls_inputs

    @property
    def trust_domain(self) -> str | None:
        return self._tls.trust_domain if self._tls else None

    def set_default_allow(self, allow: bool) -> None:
        self._agent_default_allow = allow
        self.publish()

    def default_allow(self) -> bool:
        """The config's default_intention_policy, else Consul's answer; deny until there is one."""
        policy = self.config.control_plane.default_intention_policy
        if policy is not None:
            return policy == "allow"
        return bool(self._agent_default_allow)

    def publish(self) -> None:
        self.holder.current = self._build()

    def _build(self) -> Snapshot:
        cfg = self.config
        self._version += 1
        td = self._tls.trust_domain if self._tls else "unknown.consul"
        ups: dict[str, UpstreamView] = {}
        entries = cfg_entries(cfg) + self._chain_entries
        resolvers = tuple(e for e in entries if e.kind == "service-resolver")
        for u in cfg.upstreams:
            key = upstream_key(u, cfg)
            via = self._via_gateway(u)
            # TCP: the discovery chain is its resolvers only (Consul allows routers and splitters for HTTP only):
            # redirect, default subset and failover decide the one target.
            chain = compile_chain(
                u,
                cfg.datacenter,
                td,
                self._catalog,
                entries if is_http_like(u.protocol) else resolvers,
                self._balancers,
                cfg.service.name,
                via,
            )
            if is_http_like(u.protocol):
                # Requests follow the chain's clusters; the view says what the upstream's own service has.
                dc = u.datacenter or cfg.datacenter
                if via is not None and dc != cfg.datacenter:
                    eps = via(dc)
                else:
                    own = self._catalog.get(u.service, ())
                    eps = tuple(e for e in own if e.health in HEALTHY and e.datacenter == dc)
                sni, uri = upstream_sni(u.service, dc, td), service_uri(td, dc, u.service)
                view = UpstreamView(key, u.service, dc, sni, uri, eps, chain)
            else:
                target = chain.routes[-1].splits[0].cluster
                eps = target.endpoints
                view = UpstreamView(key, target.service, target.datacenter, target.sni, target.expected_uri, eps)
            ups[key] = view
            metrics.UPSTREAM_ENDPOINTS.labels(key).set(len(eps))
        self._balancers.sweep()
        self._access_log = AccessLog.update(self._access_log, cfg.access_log)
        snap = Snapshot(
            version=self._version,
            built_at=time.time(),
            datacenter=cfg.datacenter,
            service=cfg.service.name,
            tls=self._tls,
            upstreams=MappingProxyType(ups),
            intentions=IntentionTable.build(
                self._entries,
                cfg.service.name,
                default_allow=self.default_allow(),
            ),
            intention_entries=self._entries,
            access_log=self._access_log,
            mesh=next((e for e in reversed(entries) if e.kind == "mesh"), None),
            gateway=self._gateway_routes() if cfg.mode == "mesh-gateway" else None,
            terminating=self._terminating_routes(td) if cfg.mode == "terminating-gateway" else None,
            exposed_checks=self._exposed_checks if cfg.expose_checks else (),
            check_sources=self._check_sources,
        )
        metrics.SNAPSHOT_VERSION.set(snap.version)
        metrics.SNAPSHOT_AGE.set(snap.built_at)
        return snap

    def set_linked_tls(self, service: str, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> None:
        """A terminating gateway's leaf for one of its linked services."""
        self._linked_tls[service] = (trust_domain, leaf, roots_pem)
        self._linked_state[service] = TLSState.build(trust_domain, leaf, _merge_pem(roots_pem, self._extra_roots))
        self.publish()

    def _terminating_routes(self, td: str) -> TerminatingRoutes:
        cfg = self.config
        linked: dict[str, LinkedView] = {}
        for ls in cfg.linked_services:
            state = self._linked_state.get(ls.name)
            if ls.address is not None:
                eps: tuple[Endpoint, ...] = (Endpoint(ls.address.host, ls.address.port, cfg.datacenter),)
            else:
                own = self._catalog.get(ls.name, ())
                eps = tuple(e for e in own if e.health in HEALTHY and e.datacenter == cfg.datacenter)
            origination = self._origination.get(ls.name)
            linked[ls.name] = LinkedView(
                service=ls.name,
                sni=upstream_sni(ls.name, cfg.datacenter, td),
                leaf=state.leaf if state is not None and state.valid() else None,
                intentions=IntentionTable.build(self._entries, ls.name, default_allow=self.default_allow()),
                endpoints=eps,
                origination=origination,
                origination_sni=ls.sni or (ls.address.host if ls.address is not None else None),
                tls_required=ls.ca_file is not None,
            )
        return TerminatingRoutes(linked=MappingProxyType(linked))

    def _gateways(self, dc: str) -> tuple[Endpoint, ...]:
        name = self.config.mesh_gateway.service
        return tuple(e for e in self._catalog.get(name, ()) if e.health in HEALTHY and e.datacenter == dc)

    def _via_gateway(self, u: UpstreamConfig) -> Callable[[str], tuple[Endpoint, ...]] | None:
        """consul.md §6: with mode local a target in another datacenter is dialled through this datacenter's mesh
        gateways, with mode remote through the target datacenter's; the SNI and the identity checked stay the
        target's (the gateways pass TLS through)."""
        mode = gateway_mode(u, self.config, cfg_entries(self.config) + self._chain_entries)
        if mode == "local":
            local = self._gateways(self.config.datacenter)
            return lambda dc: local
        if mode == "remote":
            return self._gateways
        return None

    def _gateway_routes(self) -> GatewayRoutes:
        cfg = self.config
        own = cfg.mesh_gateway.service
        local: dict[str, tuple[Endpoint, ...]] = {}
        remote: dict[str, list[Endpoint]] = {}
        for name, eps in self._catalog.items():
            if name == own or name == cfg.service.name:
                for e in eps:
                    if e.datacenter != cfg.datacenter and e.health in HEALTHY:
                        remote.setdefault(e.datacenter, []).append(e)
                continue
            here = tuple(e for e in eps if e.datacenter == cfg.datacenter and e.health in HEALTHY)
            if here:
                local[name] = here
        # Subset SNI names (<subset>.<service>...) reach only the subset's instances: the resolver's filter.
        for entry in cfg_entries(cfg) + self._chain_entries:
            if getattr(entry, "kind", "") != "service-resolver" or entry.name not in local:
                continue
            for subset, _ in entry.subsets:
                local[f"{subset}.{entry.name}"] = subset_endpoints(entry, subset, local[entry.name])
        return GatewayRoutes(MappingProxyType(local), MappingProxyType({k: tuple(v) for k, v in remote.items()}))
