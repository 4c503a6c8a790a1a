"""Reading meshgw.yaml: every section parsed with one reader, cross-section checks, and the parts a gateway or
sidecar takes from Consul instead (entries, registrations)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.config.http import (
    _HTTP_UPSTREAM_KEYS,
    _parse_access_log,
    _parse_http_upstream,
)
from gateway.config.protocol import consul_protocol, parse_protocol, resolve_protocols
from gateway.config.providers import (
    _parse_consul,
    _parse_vault,
)
from gateway.config.reader import (
    MESH_GATEWAY_MODES,
    MODES,
    Address,
    ConfigError,
    _bool,
    _log_level,
    _Reader,
    _resolve,
    _trust_domain,
    choice,
    is_http_like,
    parse_address,
    parse_duration,
    parse_host,
    parse_port,
    parse_service_name,
    text,
)
from gateway.config.schema import (
    AdminConfig,
    BuiltinCAConfig,
    CertificatesConfig,
    CheckConfig,
    Config,
    ControlPlaneConfig,
    ExposePathConfig,
    GatewayConfig,
    InboundConfig,
    LinkedServiceConfig,
    LocalControlPlaneConfig,
    MeshGatewayModeConfig,
    ServiceConfig,
    UpstreamConfig,
)
from gateway.config.templates import (
    _parse_templates,
)

log = logging.getLogger("meshgw.config")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError with every problem found."""
    path = Path(path)
    try:
        raw_text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read file: {e.strerror or e}"]) from None
    try:
        data = yaml.safe_load(raw_text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{path}: {where}invalid YAML: {reason}"]) from None
    return parse_config(data, path, env)


def parse_config(data: Any, path: Path, env: Mapping[str, str] | None = None) -> Config:
    """``env`` is where HashiCorp's environment defaults come from (os.environ unless given)."""
    env = os.environ if env is None else env
    r = _Reader(path)
    base = path.parent
    top = r.mapping(
        data,
        "",
        (
            "datacenter",
            "mode",
            "service",
            "inbound",
            "upstreams",
            "control_plane",
            "certificates",
            "admin",
            "drain_timeout",
            "log_level",
            "log_json",
            "templates",
            "access_log",
            "config_entries",
            "gateway",
            "mesh_gateway",
            "listeners",
            "services",
            "expose",
        ),
    )
    if data is None or (isinstance(data, Mapping) and not data):
        raise ConfigError([f"{path}: file is empty (expected a meshgw config mapping with at least 'service')"])
    if not isinstance(data, Mapping):
        raise ConfigError(r.problems)

    datacenter = r.get(top, "", "datacenter", text, "dc1") or "dc1"
    mode = r.get(top, "", "mode", choice(*MODES), "sidecar") or "sidecar"
    gateway_mode = mode != "sidecar"
    drain_timeout = r.get(top, "", "drain_timeout", parse_duration, 15.0) or 0.0
    log_level = r.get(top, "", "log_level", _log_level, "info") or "info"
    log_json = bool(r.get(top, "", "log_json", _bool, False))

    s = r.mapping(top.get("service"), "service", ("name", "id", "address", "port", "protocol", "check"))
    if "service" not in top:
        r.problem("service", "is required (the service this sidecar fronts: name, address, port)")
    # A gateway fronts no local app: its service is only the name it registers and gets a certificate for.
    needs_port = "service" in top and not gateway_mode
    default_address = "0.0.0.0" if mode == "ingress-gateway" else "127.0.0.1"
    sname = r.get(s, "service", "name", parse_service_name, required="service" in top) or "invalid"
    service = ServiceConfig(
        name=sname,
        # The app's service ID (Consul defaults ID to Name); the sidecar registers as "<id>-sidecar-proxy".
        id=r.get(s, "service", "id", text, None) or sname,
        # An ingress gateway's listeners from Consul's entry bind here: all interfaces unless said otherwise.
        address=r.get(s, "service", "address", parse_host, default_address) or default_address,
        port=r.get(s, "service", "port", parse_port, 0 if gateway_mode else None, required=needs_port) or 0,
        # Unset: resolved as Consul does (gateway/config/protocol.py), from the config entries.
        protocol=r.get(s, "service", "protocol", parse_protocol, "tcp") or "tcp",
        protocol_explicit=s.get("protocol") is not None,
        check=_parse_check(r, s.get("check")),
    )

    inbound = None
    if top.get("inbound") is not None:
        i = r.mapping(
            top.get("inbound"),
            "inbound",
            ("bind", "connect_timeout", "request_timeout", "idle_timeout", "stream_idle_timeout"),
        )
        inbound = InboundConfig(
            bind=r.get(i, "inbound", "bind", parse_address, required=True) or Address("0.0.0.0", 0),
            connect_timeout=r.get(i, "inbound", "connect_timeout", parse_duration, 5.0) or 5.0,
            request_timeout=r.get(i, "inbound", "request_timeout", parse_duration, 15.0) or 15.0,
            idle_timeout=r.get(i, "inbound", "idle_timeout", parse_duration, 3600.0) or 3600.0,
            stream_idle_timeout=r.get(i, "inbound", "stream_idle_timeout", parse_duration, 300.0) or 300.0,
        )

    raw_ups = top.get("upstreams") or []
    if not isinstance(raw_ups, list):
        r.problem("upstreams", f"expected a list of upstreams, got {type(raw_ups).__name__}")
        raw_ups = []
    binds: dict[Address, str] = {}
    upstreams = _parse_upstreams(r, raw_ups, binds)
    if inbound is not None and inbound.bind.port and inbound.bind in binds:
        r.problem("inbound.bind", f"{inbound.bind} is also used by {binds[inbound.bind]}")

    mg = r.mapping(top.get("mesh_gateway"), "mesh_gateway", ("mode", "service"))
    mesh_gateway = MeshGatewayModeConfig(
        mode=r.get(mg, "mesh_gateway", "mode", choice(*MESH_GATEWAY_MODES), "") or "",
        service=r.get(mg, "mesh_gateway", "service", parse_service_name, "mesh-gateway") or "mesh-gateway",
    )
    gateway = None
    if mode in ("mesh-gateway", "terminating-gateway"):
        g = r.mapping(top.get("gateway"), "gateway", ("bind", "lan_address", "wan_address", "handshake_timeout"))
        gateway = GatewayConfig(
            bind=r.get(g, "gateway", "bind", parse_address, required=True) or Address("0.0.0.0", 0),
            lan_address=r.get(g, "gateway", "lan_address", parse_address, None),
            wan_address=r.get(g, "gateway", "wan_address", parse_address, None),
            handshake_timeout=r.get(g, "gateway", "handshake_timeout", parse_duration, 10.0) or 10.0,
        )
    elif top.get("gateway") is not None:
        r.problem("gateway", f"only a mesh or terminating gateway has one (this is mode {mode})")
    raw_cp = top.get("control_plane")
    consul_cp = isinstance(raw_cp, Mapping) and raw_cp.get("type") == "consul"
    linked: tuple[LinkedServiceConfig, ...] = ()
    if mode == "terminating-gateway" and (top.get("services") is not None or not consul_cp):
        linked = _parse_linked_services(r, top.get("services"), base)
    elif top.get("services") is not None:
        r.problem("services", f"only a terminating gateway links services (this is mode {mode})")
    if mode == "ingress-gateway" and (top.get("listeners") is not None or not consul_cp):
        upstreams.extend(_parse_ingress_listeners(r, top.get("listeners"), binds))
    elif top.get("listeners") is not None:
        r.problem("listeners", f"only an ingress gateway has listeners (this is mode {mode}; expected upstreams)")
    if gateway_mode:
        if inbound is not None:
            r.problem("inbound", f"a {mode} has no inbound listener of its own (no local app behind it)")
        if raw_ups:
            what = "listeners" if mode == "ingress-gateway" else "gateway.bind"
            r.problem("upstreams", f"a {mode} has no upstreams (expected {what})")

    cp = r.mapping(top.get("control_plane"), "control_plane", ("type", "local", "consul", "default_intention_policy"))
    cp_type = r.get(cp, "control_plane", "type", choice("local", "consul"), "local") or "local"
    lo = r.mapping(cp.get("local"), "control_plane.local", ("catalog", "intentions", "poll_interval"))
    local = LocalControlPlaneConfig(
        catalog=_resolve(base, c) if (c := r.get(lo, "control_plane.local", "catalog", text)) else None,
        intentions=_resolve(base, c) if (c := r.get(lo, "control_plane.local", "intentions", text)) else None,
        poll_interval=r.get(lo, "control_plane.local", "poll_interval", parse_duration, 0.5) or 0.5,
    )
    consul = _parse_consul(r, cp.get("consul"), base, env) if cp_type == "consul" or cp.get("consul") else None
    control_plane = ControlPlaneConfig(
        type=cp_type,
        local=local,
        consul=consul,
        # With Consul, unset means Consul's own answer (the agent's default_intention_policy, else allow with ACLs
        # off and the ACL default_policy with them: consul.md §7.3), read from /v1/agent/self.
        default_intention_policy=r.get(
            cp,
            "control_plane",
            "default_intention_policy",
            choice("allow", "deny"),
            None if cp_type == "consul" else "deny",
        ),
    )

    c = r.mapping(top.get("certificates"), "certificates", ("type", "builtin", "vault"))
    ctype = r.get(c, "certificates", "type", choice("builtin", "vault", "consul"), "builtin") or "builtin"
    vault = _parse_vault(r, c.get("vault"), base, env) if ctype == "vault" else None
    if ctype == "consul" and cp_type != "consul":
        r.problem("certificates.type", "consul certificates need control_plane.type: consul")
    builtin = None
    if ctype == "builtin":
        b = r.mapping(c.get("builtin"), "certificates.builtin", ("dir", "trust_domain", "leaf_ttl", "create"))
        bdir = r.get(b, "certificates.builtin", "dir", text, required=True)
        ttl = r.get(b, "certificates.builtin", "leaf_ttl", parse_duration, 72 * 3600.0) or 72 * 3600.0
        if ttl < 2:
            r.problem("certificates.builtin.leaf_ttl", f"{ttl}s is too short (expected at least 2s)")
        builtin = BuiltinCAConfig(
            dir=_resolve(base, bdir or "."),
            trust_domain=r.get(b, "certificates.builtin", "trust_domain", _trust_domain, None),
            leaf_ttl=ttl,
            create=bool(r.get(b, "certificates.builtin", "create", _bool, False)),
        )
    certificates = CertificatesConfig(type=ctype, builtin=builtin, vault=vault)

    a = r.mapping(top.get("admin"), "admin", ("bind", "allow_remote_maintenance"))
    admin = AdminConfig(
        bind=r.get(a, "admin", "bind", parse_address, Address("127.0.0.1", 19000)),  # type: ignore[arg-type]
        allow_remote_maintenance=bool(r.get(a, "admin", "allow_remote_maintenance", _bool, False)),
    )

    templates, template_certs = _parse_templates(r, top.get("templates"), base, env)
    access_log = _parse_access_log(r, top.get("access_log"), base)
    config_entries: tuple[Any, ...] = ()
    if top.get("config_entries") is not None:
        from gateway.http.entries import EntryError, parse_entries  # imported here: entries imports this module

        raw_entries = top["config_entries"]
        if isinstance(raw_entries, str | list):
            raw_entries = _entry_files(r, raw_entries, base)
        try:
            config_entries = parse_entries(raw_entries, "config_entries")
        except EntryError as e:
            r.problems.extend(f"{path}: {p}" for p in e.problems)

    if consul is not None and consul.register and cp_type == "consul":
        if mode == "sidecar" and inbound is None and upstreams:
            # Consul refuses a connect-proxy without a port ("Port or SocketPath must be set", consul.md §3.1).
            r.problem(
                "control_plane.consul.register",
                "a sidecar without inbound has no port to register (expected inbound.bind, or register: false)",
            )
        if mode == "ingress-gateway" and not upstreams and not service.port:
            r.problem(
                "service.port",
                "an ingress gateway taking its listeners from Consul registers with this port "
                "(expected service.port, or register: false)",
            )
        if gateway_mode and consul.register_service:
            r.problem("control_plane.consul.register_service", f"a {mode} fronts no app service to register")
    sidecar_for = consul.sidecar_for if consul is not None and cp_type == "consul" else None
    if sidecar_for and mode != "sidecar":
        r.problem(
            "control_plane.consul.sidecar_for", f"only a sidecar takes its upstreams from a registration, not a {mode}"
        )
    if sidecar_for and upstreams:
        r.problem("control_plane.consul.sidecar_for", "upstreams come from the registration: leave upstreams out")
    expose, expose_checks = _parse_expose(r, top.get("expose"), mode, binds, inbound, cp_type)
    if mode == "sidecar" and inbound is None and not upstreams and not sidecar_for:
        r.problem("inbound", "a sidecar needs an inbound listener or at least one upstream (expected inbound.bind)")

    if service.check is not None and not (cp_type == "consul" and consul is not None and consul.register_service):
        r.problem(
            "service.check", "is registered with the app service (expected control_plane.consul.register_service: true)"
        )
    if r.problems:
        raise ConfigError(r.problems)
    cfg = Config(
        path=path,
        datacenter=datacenter,
        mode=mode,
        service=service,
        inbound=inbound,
        upstreams=tuple(upstreams),
        control_plane=control_plane,
        certificates=certificates,
        admin=admin,
        drain_timeout=drain_timeout,
        log_level=log_level,
        log_json=log_json,
        templates=templates,
        template_certs=template_certs,
        access_log=access_log,
        config_entries=config_entries,
        gateway=gateway,
        linked_services=linked,
        mesh_gateway=mesh_gateway,
        expose=expose,
        expose_checks=expose_checks,
    )
    # The protocols the file leaves unset, from its config entries (with Consul, from Consul's too: gateway/app.py).
    cfg, warnings = resolve_protocols(cfg, config_entries)
    for line in warnings:
        log.warning("%s: config_entries: %s", path, line)
    return cfg


def _parse_check(r: _Reader, raw: Any) -> CheckConfig | None:
    """``service.check``: the Consul check registered with the app (consul.md §3.4; http2-grpc.md §4)."""
    if raw is None:
        return None
    key = "service.check"
    m = r.mapping(
        raw,
        key,
        ("type", "grpc_service", "grpc_use_tls", "tls_skip_verify", "tls_server_name", "interval", "timeout"),
    )
    typ = r.get(m, key, "type", choice("tcp", "grpc"), "tcp") or "tcp"
    if typ != "grpc":
        for k in ("grpc_service", "grpc_use_tls", "tls_skip_verify", "tls_server_name"):
            if k in m:
                r.problem(f"{key}.{k}", f"only goes with type: grpc (type is {typ})")
    interval = r.get(m, key, "interval", parse_duration, 10.0) or 0.0
    if interval <= 0:
        r.problem(f"{key}.interval", "must be more than 0 (Consul runs the check every interval)")
    return CheckConfig(
        type=typ,
        grpc_service=r.get(m, key, "grpc_service", _grpc_service, "") or "",
        grpc_use_tls=bool(r.get(m, key, "grpc_use_tls", _bool, False)),
        tls_skip_verify=bool(r.get(m, key, "tls_skip_verify", _bool, False)),
        tls_server_name=r.get(m, key, "tls_server_name", parse_host, "") or "",
        interval=interval,
        timeout=r.get(m, key, "timeout", parse_duration, 2.0) or 2.0,
    )


def _grpc_service(value: Any) -> str:
    # grpc.health.v1 HealthCheckRequest.service: a fully-qualified service name such as pkg.v1.Billing.
    if not isinstance(value, str) or any(c.isspace() or c == "/" for c in value):
        raise ValueError(f"{value!r} is not a gRPC service name (expected e.g. billing.v1.Billing, or empty)")
    return value


def _parse_linked_services(r: _Reader, raw: Any, base: Path) -> tuple[LinkedServiceConfig, ...]:
    if not isinstance(raw, list) or not raw:
        r.problem("services", "a terminating gateway needs a list of linked services ({name, address, ca_file...})")
        return ()
    out = []
    seen: set[str] = set()
    for n, item in enumerate(raw):
        key = f"services[{n}]"
        m = r.mapping(item, key, ("name", "address", "ca_file", "cert_file", "key_file", "sni"))
        name = r.get(m, key, "name", parse_service_name, required=True) or "invalid"
        if name in seen:
            r.problem(f"{key}.name", f"{name} is linked twice")
        seen.add(name)

        def path(k: str, key: str = key, m: Mapping[str, Any] = m) -> Path | None:
            v = r.get(m, key, k, text, None)
            return _resolve(base, v) if v else None

        svc = LinkedServiceConfig(
            name=name,
            address=r.get(m, key, "address", parse_address, None),
            ca_file=path("ca_file"),
            cert_file=path("cert_file"),
            key_file=path("key_file"),
            sni=r.get(m, key, "sni", parse_host, None),
        )
        if (svc.cert_file is None) != (svc.key_file is None):
            r.problem(f"{key}.cert_file", "cert_file and key_file go together (a client certificate for the service)")
        if svc.cert_file is not None and svc.ca_file is None:
            r.problem(f"{key}.ca_file", "is required with cert_file (TLS to the service is verified)")
        out.append(svc)
    return tuple(out)


def linked_services_from_entry(entry: Mapping[str, Any], where: str) -> tuple[LinkedServiceConfig, ...]:
    """The Services of Consul's ``terminating-gateway`` config entry (consul.md §8.7): Name, CAFile, CertFile,
    KeyFile, SNI. Raises ConfigError (one line per problem, naming ``where``)."""
    r = _Reader(Path(where))
    raw = []
    for n, svc in enumerate(entry.get("Services") or []):
        if not isinstance(svc, Mapping):
            r.problem(f"Services[{n}]", "expected a mapping {Name, CAFile, CertFile, KeyFile, SNI}")
            continue
        if svc.get("Name") == "*":
            r.problem(f"Services[{n}].Name", "the wildcard service is not supported by meshgw")
            continue
        item = {"name": svc.get("Name")}
        for ours, theirs in (("ca_file", "CAFile"), ("cert_file", "CertFile"), ("key_file", "KeyFile"), ("sni", "SNI")):
            if svc.get(theirs):
                item[ours] = svc[theirs]
        raw.append(item)
    linked = _parse_linked_services(r, raw, Path("/")) if raw else ()
    if r.problems:
        raise ConfigError(r.problems)
    return linked


def _parse_expose(
    r: _Reader, raw: Any, mode: str, binds: dict[Address, str], inbound: InboundConfig | None, cp_type: str
) -> tuple[tuple[ExposePathConfig, ...], bool]:
    if raw is None:
        return (), False
    e = r.mapping(raw, "expose", ("checks", "paths"))
    if mode != "sidecar":
        r.problem("expose", f"only a sidecar exposes paths of its app (this is mode {mode})")
    # Consul's Expose.Checks: the agent picks a port per HTTP/gRPC check of the app (expose_min_port..max) and
    # points the check there; without Consul there are no agent checks to expose.
    checks = bool(r.get(e, "expose", "checks", _bool, False))
    if checks and cp_type != "consul":
        r.problem("expose.checks", "the checks exposed are the Consul agent's (expected control_plane.type consul)")
    paths = e.get("paths") or []
    if not isinstance(paths, list):
        r.problem("expose.paths", "expected a list of {listener_port, path, local_path_port, protocol}")
        return (), checks
    out = []
    used = {a.port for a in binds} | ({inbound.bind.port} if inbound is not None else set())
    seen: set[tuple[int, str]] = set()
    for n, item in enumerate(paths):
        key = f"expose.paths[{n}]"
        m = r.mapping(item, key, ("listener_port", "path", "local_path_port", "protocol"))
        path = r.get(m, key, "path", text, required=True) or "/"
        if not path.startswith("/"):
            r.problem(f"{key}.path", f"{path!r} is not a path (expected it to start with /)")
        p = ExposePathConfig(
            listener_port=r.get(m, key, "listener_port", parse_port, required=True) or 0,
            path=path,
            local_path_port=r.get(m, key, "local_path_port", parse_port, required=True) or 0,
            # Consul's two (consul.md §3.1): http2 is h2c to the app, for gRPC checks (http2-grpc.md §4).
            protocol=r.get(m, key, "protocol", choice("http", "http2"), "http") or "http",
        )
        if p.listener_port in used:
            r.problem(f"{key}.listener_port", f"{p.listener_port} is already a listener of this sidecar")
        if (p.listener_port, p.path) in seen:
            r.problem(f"{key}.path", f"{p.path} is already exposed on {p.listener_port}")
        seen.add((p.listener_port, p.path))
        out.append(p)
    return tuple(out), checks


def _parse_upstreams(r: _Reader, raw_ups: list[Any], binds: dict[Address, str] | None = None) -> list[UpstreamConfig]:
    binds = {} if binds is None else binds
    upstreams: list[UpstreamConfig] = []
    for n, raw in enumerate(raw_ups):
        key = f"upstreams[{n}]"
        u = r.mapping(
            raw,
            key,
            (
                "service",
                "bind",
                "datacenter",
                "protocol",
                "connect_timeout",
                "request_timeout",
                "mesh_gateway",
                *_HTTP_UPSTREAM_KEYS,
            ),
        )
        up = UpstreamConfig(
            service=r.get(u, key, "service", parse_service_name, required=True) or "invalid",
            bind=r.get(u, key, "bind", parse_address, required=True) or Address("127.0.0.1", 0),
            datacenter=r.get(u, key, "datacenter", text, None),
            protocol=r.get(u, key, "protocol", parse_protocol, "tcp") or "tcp",
            protocol_explicit=u.get("protocol") is not None,
            connect_timeout=r.get(u, key, "connect_timeout", parse_duration, 5.0) or 5.0,
            request_timeout=r.get(u, key, "request_timeout", parse_duration, 15.0) or 15.0,
            mesh_gateway=r.get(u, key, "mesh_gateway", choice(*MESH_GATEWAY_MODES), None),
            **_parse_http_upstream(r, u, key),
        )
        if up.bind.port and up.bind in binds:
            r.problem(f"{key}.bind", f"{up.bind} is already used by {binds[up.bind]} (expected a unique address)")
        binds[up.bind] = key
        upstreams.append(up)
    return upstreams


def upstreams_from_registration(proxy: Mapping[str, Any], where: str) -> tuple[UpstreamConfig, ...]:
    """A connect-proxy registration's ``Proxy.Upstreams`` (consul.md §3.1) as meshgw upstreams, as
    `consul connect envoy -sidecar-for` builds Envoy's listeners from them. Raises ConfigError."""
    r = _Reader(Path(where))
    raw = []
    for n, u in enumerate(proxy.get("Upstreams") or []):
        if not isinstance(u, Mapping):
            r.problem(f"Proxy.Upstreams[{n}]", "expected a mapping")
            continue
        if str(u.get("DestinationType") or "service") != "service":
            r.problem(f"Proxy.Upstreams[{n}].DestinationType", "only service upstreams are supported by meshgw")
            continue
        address = str(u.get("LocalBindAddress") or "127.0.0.1")
        port = u.get("LocalBindPort")
        item: dict[str, Any] = {
            "service": u.get("DestinationName"),
            "bind": f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
        }
        if u.get("Datacenter"):
            item["datacenter"] = u["Datacenter"]
        protocol = (u.get("Config") or {}).get("protocol")
        if protocol:  # else the caller's service-defaults or the discovery chain decide (http2-grpc.md §1.3)
            warnings: list[str] = []
            item["protocol"] = consul_protocol(protocol, f"{where}: Proxy.Upstreams[{n}].Config", warnings)
            for line in warnings:
                log.warning("%s", line)
        raw.append(item)
    ups = _parse_upstreams(r, raw) if raw else []
    if r.problems:
        raise ConfigError(r.problems)
    return tuple(ups)


def ingress_listeners_from_entry(entry: Mapping[str, Any], address: str, where: str) -> tuple[UpstreamConfig, ...]:
    """The listeners of Consul's ``ingress-gateway`` config entry (consul.md §8.6), bound on ``address``. Raises
    ConfigError (one line per problem, naming ``where``) for what meshgw cannot serve."""
    r = _Reader(Path(where))
    raw = []
    for n, lst in enumerate(entry.get("Listeners") or []):
        if not isinstance(lst, Mapping):
            r.problem(f"Listeners[{n}]", "expected a mapping {Port, Protocol, Services}")
            continue
        services = []
        for m, svc in enumerate(lst.get("Services") or []):
            name = svc.get("Name") if isinstance(svc, Mapping) else None
            if name == "*":
                r.problem(f"Listeners[{n}].Services[{m}].Name", "the wildcard service is not supported by meshgw")
                continue
            hosts = svc.get("Hosts") if isinstance(svc, Mapping) else None
            services.append({"name": name, **({"hosts": list(hosts)} if hosts else {})})
        port = lst.get("Port")
        raw.append(
            {
                "bind": f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
                "protocol": str(lst.get("Protocol") or "tcp").lower(),
                "services": services,
            }
        )
    ups = _parse_ingress_listeners(r, raw, {}) if raw else []
    if r.problems:
        raise ConfigError(r.problems)
    return tuple(ups)


def _parse_ingress_listeners(r: _Reader, raw: Any, binds: dict[Address, str]) -> list[UpstreamConfig]:
    """An ingress gateway's listeners, in the shape of Consul's ingress-gateway entry (consul.md §8.6), become
    upstream listeners: plaintext from outside the mesh, mTLS with the gateway's identity to the service."""
    if raw is None:
        r.problem("listeners", "is required for an ingress gateway (expected a list of {bind, protocol, services})")
        return []
    if not isinstance(raw, list) or not raw:
        r.problem("listeners", "expected a non-empty list of {bind, protocol, services}")
        return []
    out = []
    for n, item in enumerate(raw):
        key = f"listeners[{n}]"
        lst = r.mapping(
            item, key, ("bind", "protocol", "services", "connect_timeout", "request_timeout", *_HTTP_UPSTREAM_KEYS)
        )
        protocol = r.get(lst, key, "protocol", parse_protocol, "tcp") or "tcp"
        bind = r.get(lst, key, "bind", parse_address, required=True) or Address("0.0.0.0", 0)
        connect_timeout = r.get(lst, key, "connect_timeout", parse_duration, 5.0) or 5.0
        request_timeout = r.get(lst, key, "request_timeout", parse_duration, 15.0) or 15.0
        http_settings = _parse_http_upstream(r, lst, key)
        services = lst.get("services")
        chosen: list[tuple[str, tuple[str, ...]]] = []
        if not isinstance(services, list) or not services:
            r.problem(f"{key}.services", "expected a list of services (one for tcp; for http, told apart by Host)")
            services = []
        elif not is_http_like(protocol) and len(services) > 1:
            r.problem(f"{key}.services", f"lists {len(services)} services (a tcp listener reaches exactly one)")
        for m, svc in enumerate(services):
            skey = f"{key}.services[{m}]"
            if isinstance(svc, Mapping):
                unknown = sorted(set(svc) - {"name", "hosts"})
                if unknown:
                    r.problem(f"{skey}.{unknown[0]}", "unknown key (expected name, hosts)")
                name, hosts = svc.get("name"), svc.get("hosts")
            else:
                name, hosts = svc, None
            try:
                name = parse_service_name(name)
            except ValueError as e:
                r.problem(f"{skey}.name" if isinstance(svc, Mapping) else skey, str(e))
                continue
            if hosts is not None and (not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts)):
                r.problem(f"{skey}.hosts", "expected a list of host names (exact, *.suffix or prefix.*)")
                hosts = None
            if hosts is None and len(services) > 1:
                hosts = [f"{name}.ingress.*"]  # Consul's default Host for a service on a shared listener
            chosen.append((name, tuple(h.lower() for h in hosts or ())))
        for name, hosts in chosen or [("invalid", ())]:
            out.append(
                UpstreamConfig(
                    service=name,
                    bind=bind,
                    protocol=protocol,
                    connect_timeout=connect_timeout,
                    request_timeout=request_timeout,
                    hosts=hosts,
                    **http_settings,
                )
            )
        if bind.port and bind in binds:
            r.problem(f"{key}.bind", f"{bind} is already used by {binds[bind]} (expected a unique address)")
        binds[bind] = key
    return out


def _entry_files(r: _Reader, raw: str | list[Any], base: Path) -> list[Any]:
    """``config_entries`` items may name files (HCL, JSON or YAML, one entry or a list each), as operators keep
    the files they give `consul config write`."""
    from gateway.structured import SourceError, load_structured

    out: list[Any] = []
    for n, item in enumerate([raw] if isinstance(raw, str) else raw):
        if not isinstance(item, str):
            out.append(item)
            continue
        p = _resolve(base, item)
        try:
            data = load_structured(p, p.read_bytes())
        except OSError as e:
            r.problem(f"config_entries[{n}]", f"{p}: cannot read: {e.strerror or e}")
            continue
        except SourceError as e:
            r.problems.append(str(e))
            continue
        out.extend(data if isinstance(data, list) else [data])
    return out
