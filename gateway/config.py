"""The typed meshgw configuration: parsed and validated once, at load.

Nothing else in meshgw reads the YAML file or the environment for settings. Every
problem is reported as one line, ``FILE: key.path: what is wrong (expected ...)``,
and all problems of a file are reported together so an operator fixes them in one go.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_-]{0,62}[a-zA-Z0-9])?$")
PROTOCOLS = ("tcp", "http")
MODES = ("sidecar", "mesh-gateway", "ingress-gateway", "terminating-gateway")
# consul.md §6: "" defers to the next layer; meshgw's last layer is "none" (dial the target directly).
MESH_GATEWAY_MODES = ("none", "local", "remote")
HEALTH_STATES = ("passing", "warning", "critical")


class ConfigError(Exception):
    """One or more problems in a file, each already formatted as a one-line message."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    id: str
    address: str
    port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class InboundConfig:
    bind: Address
    connect_timeout: float = 5.0
    request_timeout: float = 15.0  # http only: Envoy's default route timeout
    idle_timeout: float = 3600.0  # http only: an idle keep-alive connection closes (Envoy's HCM default, 1h)


@dataclass(frozen=True)
class UpstreamConfig:
    service: str
    bind: Address
    datacenter: str | None = None
    protocol: str = "tcp"
    connect_timeout: float = 5.0
    request_timeout: float = 15.0  # http only: no answer by then gives 504
    # http only (below): Envoy's cluster defaults as Consul configures them (consul.md §8.1, §8.5).
    idle_timeout: float = 3600.0
    # How to reach a target in another datacenter (consul.md §6): None follows the top-level mesh_gateway.mode.
    mesh_gateway: str | None = None
    # Ingress HTTP listeners with several services: the Host patterns that pick this one (consul.md §8.6).
    hosts: tuple[str, ...] = ()
    load_balancer: LoadBalancerConfig = field(default_factory=lambda: LoadBalancerConfig())
    retries: RetryConfig = field(default_factory=lambda: RetryConfig())
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig())
    passive_health_check: PassiveHealthCheckConfig = field(default_factory=lambda: PassiveHealthCheckConfig())


@dataclass(frozen=True)
class MeshGatewayModeConfig:
    """Cross-datacenter dialling for sidecars and ingress gateways (Consul's proxy-defaults MeshGateway.Mode)."""

    mode: str = ""  # "": not set here; Consul's service-defaults / proxy-defaults decide, else none
    service: str = "mesh-gateway"  # the mesh gateways' service name in the catalog, in every datacenter


@dataclass(frozen=True)
class GatewayConfig:
    """``mode: mesh-gateway``: one listener that routes mTLS connections by their SNI without decrypting them."""

    bind: Address
    # What Consul advertises (TaggedAddresses lan/wan, consul.md §3.3); default: the bind address.
    lan_address: Address | None = None
    wan_address: Address | None = None
    # How long a caller may take to send its whole TLS ClientHello.
    handshake_timeout: float = 10.0


@dataclass(frozen=True)
class LinkedServiceConfig:
    """A service outside the mesh that a terminating gateway stands in for (Consul's LinkedService, consul.md §8.7):
    the gateway presents this service's leaf to callers and forwards to ``address`` (else the catalog's instances),
    in plaintext or, with ``ca_file``, over TLS that it originates."""

    name: str
    address: Address | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    sni: str | None = None


@dataclass(frozen=True)
class LocalControlPlaneConfig:
    catalog: Path | None = None
    intentions: Path | None = None
    poll_interval: float = 0.5


@dataclass(frozen=True)
class ConsulConfig:
    """How to reach the Consul agent. Defaults come from Consul's own environment variables
    (consul.md §10; C:api/api.go): CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_HTTP_SSL,
    CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY, CONSUL_NAMESPACE."""

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 8500
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    namespace: str | None = None
    # Blocking-query wait (Consul caps it at 10m, consul.md §1).
    wait: float = 300.0
    # Register the sidecar (Kind connect-proxy) and, if asked, the app service itself.
    register: bool = True
    register_service: bool = False

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlPlaneConfig:
    type: str = "local"
    local: LocalControlPlaneConfig = field(default_factory=LocalControlPlaneConfig)
    consul: ConsulConfig | None = None
    # Consul's agent setting of the same name: what happens when no intention matches.
    default_intention_policy: str = "deny"


@dataclass(frozen=True)
class BuiltinCAConfig:
    dir: Path
    trust_domain: str | None = None
    leaf_ttl: float = 72 * 3600.0


@dataclass(frozen=True)
class VaultAuthConfig:
    """token: VAULT_TOKEN, token_file, or Nomad's ${NOMAD_SECRETS_DIR}/vault_token; approle: role_id_file +
    secret_id_file; jwt: a JWT file (Nomad workload identity) posted to auth/<path>/login (vault-nomad.md §2)."""

    method: str = "token"
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    jwt_file: Path | None = None
    role: str | None = None
    path: str | None = None  # mount path of the auth method (default: approle, jwt-nomad)


@dataclass(frozen=True)
class VaultConfig:
    """Vault PKI. Defaults from VAULT_ADDR, VAULT_CACERT, VAULT_NAMESPACE (vault-nomad.md §2.4)."""

    address: str = "https://127.0.0.1:8200"
    mount: str = "pki"
    role: str = ""
    trust_domain: str = ""
    ttl: float | None = None  # None: the role's default
    namespace: str | None = None
    ca_file: Path | None = None
    key_type: str = "ec"
    key_bits: int = 256
    issue: bool = False  # True: Vault generates the key (pki/issue) instead of signing our CSR
    write_key_to: Path | None = None  # off by default: private keys stay in memory
    auth: VaultAuthConfig = field(default_factory=VaultAuthConfig)


@dataclass(frozen=True)
class CertificatesConfig:
    type: str = "builtin"
    builtin: BuiltinCAConfig | None = None
    vault: VaultConfig | None = None


@dataclass(frozen=True)
class AdminConfig:
    bind: Address = Address("127.0.0.1", 19000)


@dataclass(frozen=True)
class TemplateWait:
    """Quiescence (vault-nomad.md §5.2): render when changes settle for ``min``, at the latest ``max`` after one."""

    min: float
    max: float


@dataclass(frozen=True)
class TemplateConfig:
    """One ``templates:`` entry: consul-template's template block in meshgw terms (vault-nomad.md §5.1)."""

    source: Path
    destination: Path
    perms: int | None = None  # None: keep the existing file's mode, 0644 for a new file (CT renderer)
    # A string runs through ``sh -c``, a list runs directly (CT:README.md "Multiple Commands").
    command: str | tuple[str, ...] | None = None
    command_timeout: float = 30.0
    wait: TemplateWait | None = None
    backup: bool = False
    error_on_missing_key: bool = False
    create_dest_dirs: bool = True


@dataclass(frozen=True)
class TemplateCertsConfig:
    """Where meshgw writes its current leaf certificate and CA roots for templates to point at."""

    dir: Path
    write_key: bool = False  # the private key stays in memory unless asked


@dataclass(frozen=True)
class Config:
    path: Path
    datacenter: str
    mode: str
    service: ServiceConfig
    inbound: InboundConfig | None
    upstreams: tuple[UpstreamConfig, ...]
    control_plane: ControlPlaneConfig
    certificates: CertificatesConfig
    admin: AdminConfig
    drain_timeout: float = 15.0
    log_level: str = "info"
    templates: tuple[TemplateConfig, ...] = ()
    template_certs: TemplateCertsConfig | None = None
    access_log: AccessLogConfig = field(default_factory=lambda: AccessLogConfig())
    # Discovery-chain entries for the local control plane (service-router/-splitter/-resolver/-defaults, in
    # Consul's shapes: gateway/http/entries.py); with Consul they come from its config entries instead.
    config_entries: tuple[Any, ...] = ()
    gateway: GatewayConfig | None = None
    linked_services: tuple[LinkedServiceConfig, ...] = ()  # mode terminating-gateway
    mesh_gateway: MeshGatewayModeConfig = field(default_factory=MeshGatewayModeConfig)

    @property
    def is_gateway(self) -> bool:
        return self.mode != "sidecar"

    def to_public_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (no secrets are ever part of it)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        if isinstance(value, Address):
            return str(value)
        # Fields marked repr=False (tokens) never leave the process, not even on /config.
        return {k: _plain(getattr(value, k)) for k, f in value.__dataclass_fields__.items() if f.repr}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- scalar parsers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30s``, ``500ms``, ``72h``, ``1.5m`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 72h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (expected e.g. 500ms, 30s, 5m, 72h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_address(value: Any) -> Address:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (expected host:port, e.g. 127.0.0.1:9191)")
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]]+):(\d+)$", value)
    if not m:
        raise ValueError(f"{value!r} is not an address (expected host:port, e.g. 127.0.0.1:9191)")
    port = int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (expected 0-65535)")
    return Address(m.group(1), port)


def parse_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (expected an integer 1-65535)")
    return value


def parse_service_name(value: Any) -> str:
    if not isinstance(value, str) or not SERVICE_NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a service name (expected letters, digits, '-' or '_', at most 64 characters)"
        )
    return value


def parse_host(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a host (expected an IP address or host name)")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", value):
            raise ValueError(f"{value!r} is not a host (expected an IP address or host name)") from None
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed (expected one of: {', '.join(options)})")
        return value

    return parse


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


# --------------------------------------------------------------------------- the reader


class _Reader:
    """Walks a YAML mapping, collecting problems with their key paths instead of raising at the first."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, msg: str) -> None:
        self.problems.append(f"{self.path}: {key}: {msg}")

    def mapping(self, data: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.problem(key, f"expected a mapping, got {type(data).__name__}")
            return {}
        for k in data:
            if k not in allowed:
                self.problem(f"{key}.{k}" if key else str(k), f"unknown key (expected one of: {', '.join(allowed)})")
        return data

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        name: str,
        parse: Callable[[Any], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        full = f"{key}.{name}" if key else name
        if name not in data or data[name] is None:
            if required:
                self.problem(full, "is required")
            return default
        try:
            return parse(data[name])
        except ValueError as e:
            self.problem(full, str(e))
            return default


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


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
            "templates",
            "access_log",
            "config_entries",
            "gateway",
            "mesh_gateway",
            "listeners",
            "services",
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
    log_level = r.get(top, "", "log_level", choice("debug", "info", "warning", "error"), "info") or "info"

    s = r.mapping(top.get("service"), "service", ("name", "id", "address", "port", "protocol"))
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
        protocol=r.get(s, "service", "protocol", choice(*PROTOCOLS), "tcp") or "tcp",
    )

    inbound = None
    if top.get("inbound") is not None:
        i = r.mapping(top.get("inbound"), "inbound", ("bind", "connect_timeout", "request_timeout", "idle_timeout"))
        inbound = InboundConfig(
            bind=r.get(i, "inbound", "bind", parse_address, required=True) or Address("0.0.0.0", 0),
            connect_timeout=r.get(i, "inbound", "connect_timeout", parse_duration, 5.0) or 5.0,
            request_timeout=r.get(i, "inbound", "request_timeout", parse_duration, 15.0) or 15.0,
            idle_timeout=r.get(i, "inbound", "idle_timeout", parse_duration, 3600.0) or 3600.0,
        )

    upstreams: list[UpstreamConfig] = []
    raw_ups = top.get("upstreams") or []
    if not isinstance(raw_ups, list):
        r.problem("upstreams", f"expected a list of upstreams, got {type(raw_ups).__name__}")
        raw_ups = []
    binds: dict[Address, str] = {}
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
            protocol=r.get(u, key, "protocol", choice(*PROTOCOLS), "tcp") or "tcp",
            connect_timeout=r.get(u, key, "connect_timeout", parse_duration, 5.0) or 5.0,
            request_timeout=r.get(u, key, "request_timeout", parse_duration, 15.0) or 15.0,
            mesh_gateway=r.get(u, key, "mesh_gateway", choice(*MESH_GATEWAY_MODES), None),
            **_parse_http_upstream(r, u, key),
        )
        if up.bind.port and up.bind in binds:
            r.problem(f"{key}.bind", f"{up.bind} is already used by {binds[up.bind]} (expected a unique address)")
        binds[up.bind] = key
        upstreams.append(up)
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
        default_intention_policy=r.get(cp, "control_plane", "default_intention_policy", choice("allow", "deny"), "deny")
        or "deny",
    )

    c = r.mapping(top.get("certificates"), "certificates", ("type", "builtin", "vault"))
    ctype = r.get(c, "certificates", "type", choice("builtin", "vault", "consul"), "builtin") or "builtin"
    vault = _parse_vault(r, c.get("vault"), base, env) if ctype == "vault" else None
    if ctype == "consul" and cp_type != "consul":
        r.problem("certificates.type", "consul certificates need control_plane.type: consul")
    builtin = None
    if ctype == "builtin":
        b = r.mapping(c.get("builtin"), "certificates.builtin", ("dir", "trust_domain", "leaf_ttl"))
        bdir = r.get(b, "certificates.builtin", "dir", text, required=True)
        ttl = r.get(b, "certificates.builtin", "leaf_ttl", parse_duration, 72 * 3600.0) or 72 * 3600.0
        if ttl < 2:
            r.problem("certificates.builtin.leaf_ttl", f"{ttl}s is too short (expected at least 2s)")
        builtin = BuiltinCAConfig(
            dir=_resolve(base, bdir or "."),
            trust_domain=r.get(b, "certificates.builtin", "trust_domain", _trust_domain, None),
            leaf_ttl=ttl,
        )
    certificates = CertificatesConfig(type=ctype, builtin=builtin, vault=vault)

    a = r.mapping(top.get("admin"), "admin", ("bind",))
    admin = AdminConfig(bind=r.get(a, "admin", "bind", parse_address, Address("127.0.0.1", 19000)))  # type: ignore[arg-type]

    templates, template_certs = _parse_templates(r, top.get("templates"), base, env)
    access_log = _parse_access_log(r, top.get("access_log"), base)
    config_entries: tuple[Any, ...] = ()
    if top.get("config_entries") is not None:
        from gateway.http.entries import EntryError, parse_entries  # imported here: entries imports this module

        try:
            config_entries = parse_entries(top["config_entries"], "config_entries")
        except EntryError as e:
            r.problems.extend(f"{path}: {p}" for p in e.problems)

    if consul is not None and consul.register and cp_type == "consul":
        if mode == "sidecar" and inbound is None and upstreams:
            # Consul refuses a connect-proxy without a port ("Port or SocketPath must be set", consul.md §3.1).
            r.problem("control_plane.consul.register", "a sidecar without inbound has no port to register "
                      "(expected inbound.bind, or register: false)")
        if mode == "ingress-gateway" and not upstreams and not service.port:
            r.problem("service.port", "an ingress gateway taking its listeners from Consul registers with this port "
                      "(expected service.port, or register: false)")
        if gateway_mode and consul.register_service:
            r.problem("control_plane.consul.register_service", f"a {mode} fronts no app service to register")
    if mode == "sidecar" and inbound is None and not upstreams:
        r.problem("inbound", "a sidecar needs an inbound listener or at least one upstream (expected inbound.bind)")

    if r.problems:
        raise ConfigError(r.problems)
    return Config(
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
        templates=templates,
        template_certs=template_certs,
        access_log=access_log,
        config_entries=config_entries,
        gateway=gateway,
        linked_services=linked,
        mesh_gateway=mesh_gateway,
    )


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
        protocol = r.get(lst, key, "protocol", choice(*PROTOCOLS), "tcp") or "tcp"
        bind = r.get(lst, key, "bind", parse_address, required=True) or Address("0.0.0.0", 0)
        connect_timeout = r.get(lst, key, "connect_timeout", parse_duration, 5.0) or 5.0
        request_timeout = r.get(lst, key, "request_timeout", parse_duration, 15.0) or 15.0
        http_settings = _parse_http_upstream(r, lst, key)
        services = lst.get("services")
        chosen: list[tuple[str, tuple[str, ...]]] = []
        if not isinstance(services, list) or not services:
            r.problem(f"{key}.services", "expected a list of services (one for tcp; for http, told apart by Host)")
            services = []
        elif protocol == "tcp" and len(services) > 1:
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


def _trust_domain(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", value.lower()):
        raise ValueError(f"{value!r} is not a trust domain (expected a DNS-like name such as example.consul)")
    return value.lower()


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not a boolean (expected true or false)")


def _env_bool(value: str | None) -> bool | None:
    # Go's strconv.ParseBool, as Consul's client reads CONSUL_HTTP_SSL (consul.md §10).
    if value is None or value == "":
        return None
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _parse_consul_address(value: str, ssl: bool | None) -> tuple[str, str, int]:
    scheme = "https" if ssl else "http"
    rest = value
    if "://" in value:
        scheme, rest = value.split("://", 1)
        if scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: unknown protocol scheme {scheme!r} (expected http or https)")
        if ssl:
            scheme = "https"
    rest = rest.rstrip("/")
    addr = parse_address(rest if ":" in rest.lstrip("[") or rest.startswith("[") else f"{rest}:8500")
    return scheme, addr.host, addr.port


def _parse_consul(r: _Reader, raw: Any, base: Path, env: Mapping[str, str]) -> ConsulConfig:
    key = "control_plane.consul"
    c = r.mapping(
        raw,
        key,
        (
            "address",
            "token",
            "token_file",
            "ca_file",
            "cert_file",
            "key_file",
            "namespace",
            "verify",
            "wait",
            "register",
            "register_service",
        ),
    )
    ssl = _env_bool(env.get("CONSUL_HTTP_SSL"))
    address = r.get(c, key, "address", text, None) or env.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"
    try:
        scheme, host, port = _parse_consul_address(address, ssl)
    except ValueError as e:
        r.problem(f"{key}.address", str(e))
        scheme, host, port = "http", "127.0.0.1", 8500

    def path_or_env(name: str, var: str) -> Path | None:
        v = r.get(c, key, name, text, None) or env.get(var)
        return _resolve(base, v) if v else None

    # Token precedence of Consul's client: explicit token file > explicit token > env token file > env token
    # (consul.md §10; C:api/api.go). py-consul itself lets CONSUL_HTTP_TOKEN override everything, so
    # meshgw resolves the token here and never leaves it to the library.
    token = r.get(c, key, "token", text, None)
    token_file = r.get(c, key, "token_file", text, None)
    if token_file is None and token is None:
        token_file = env.get("CONSUL_HTTP_TOKEN_FILE") or None
        token = None if token_file else (env.get("CONSUL_HTTP_TOKEN") or None)
    verify_env = _env_bool(env.get("CONSUL_HTTP_SSL_VERIFY"))
    wait = r.get(c, key, "wait", parse_duration, 300.0) or 300.0
    if wait > 600:
        r.problem(f"{key}.wait", "at most 10m (Consul caps blocking queries there)")
    return ConsulConfig(
        scheme=scheme,
        host=host,
        port=port,
        token=token if not token_file else None,
        token_file=_resolve(base, token_file) if token_file else None,
        ca_file=path_or_env("ca_file", "CONSUL_CACERT"),
        cert_file=path_or_env("cert_file", "CONSUL_CLIENT_CERT"),
        key_file=path_or_env("key_file", "CONSUL_CLIENT_KEY"),
        verify=bool(r.get(c, key, "verify", _bool, True if verify_env is None else verify_env)),
        namespace=r.get(c, key, "namespace", text, None) or env.get("CONSUL_NAMESPACE") or None,
        wait=wait,
        register=bool(r.get(c, key, "register", _bool, True)),
        register_service=bool(r.get(c, key, "register_service", _bool, False)),
    )


def _parse_vault(r: _Reader, raw: Any, base: Path, env: Mapping[str, str]) -> VaultConfig:
    key = "certificates.vault"
    v = r.mapping(
        raw,
        key,
        (
            "address",
            "mount",
            "role",
            "trust_domain",
            "ttl",
            "namespace",
            "ca_file",
            "key_type",
            "key_bits",
            "issue",
            "write_key_to",
            "auth",
        ),
    )
    if raw is None:
        r.problem(key, "is required with certificates.type: vault (expected at least role and trust_domain)")
    key_type = r.get(v, key, "key_type", choice("ec", "rsa"), "ec") or "ec"
    key_bits = r.get(v, key, "key_bits", _int, 256 if key_type == "ec" else 2048) or 256
    if key_type == "ec" and key_bits not in (256, 384, 521):
        r.problem(f"{key}.key_bits", f"{key_bits} is not an EC curve size (expected 256, 384 or 521)")
    if key_type == "rsa" and key_bits < 2048:
        r.problem(f"{key}.key_bits", f"{key_bits} is too small for RSA (expected 2048 or more)")
    a = r.mapping(
        v.get("auth"),
        f"{key}.auth",
        ("method", "token", "token_file", "role_id_file", "secret_id_file", "jwt_file", "role", "path"),
    )
    akey = f"{key}.auth"
    method = r.get(a, akey, "method", choice("token", "approle", "jwt"), "token") or "token"

    def p(name: str) -> Path | None:
        val = r.get(a, akey, name, text, None)
        return _resolve(base, val) if val else None

    token_file = p("token_file")
    explicit_token = r.get(a, akey, "token", text, None)
    nomad_file = Path(env["NOMAD_SECRETS_DIR"]) / "vault_token" if env.get("NOMAD_SECRETS_DIR") else None
    if (
        token_file is None
        and explicit_token is None
        and method == "token"
        and nomad_file is not None
        and (not env.get("VAULT_TOKEN") or nomad_file.exists())
    ):
        # Nomad writes the task's token there and rewrites it on re-login, while VAULT_TOKEN is frozen at
        # task start (vault-nomad.md §2.4, vault_hook.go vaultTokenFile).
        token_file = nomad_file
    auth = VaultAuthConfig(
        method=method,
        token=r.get(a, akey, "token", text, None) or env.get("VAULT_TOKEN") or None,
        token_file=token_file,
        role_id_file=p("role_id_file"),
        secret_id_file=p("secret_id_file"),
        jwt_file=p("jwt_file"),
        role=r.get(a, akey, "role", text, None),
        path=r.get(a, akey, "path", text, None),
    )
    if method == "token" and not auth.token and auth.token_file is None:
        r.problem(f"{akey}.token_file", "token auth needs a token (VAULT_TOKEN, auth.token or auth.token_file)")
    if method == "approle" and (auth.role_id_file is None or auth.secret_id_file is None):
        r.problem(f"{akey}.role_id_file", "approle auth needs role_id_file and secret_id_file")
    if method == "jwt" and auth.jwt_file is None:
        r.problem(f"{akey}.jwt_file", "jwt auth needs jwt_file (the workload identity token Nomad writes)")
    ca = r.get(v, key, "ca_file", text, None) or env.get("VAULT_CACERT")
    wk = r.get(v, key, "write_key_to", text, None)
    return VaultConfig(
        address=(r.get(v, key, "address", text, None) or env.get("VAULT_ADDR") or "https://127.0.0.1:8200").rstrip("/"),
        mount=(r.get(v, key, "mount", text, "pki") or "pki").strip("/"),
        role=r.get(v, key, "role", text, required=raw is not None) or "",
        trust_domain=r.get(v, key, "trust_domain", _trust_domain, required=raw is not None) or "",
        ttl=r.get(v, key, "ttl", parse_duration, None),
        namespace=r.get(v, key, "namespace", text, None) or env.get("VAULT_NAMESPACE") or None,
        ca_file=_resolve(base, ca) if ca else None,
        key_type=key_type,
        key_bits=key_bits,
        issue=bool(r.get(v, key, "issue", _bool, False)),
        write_key_to=_resolve(base, wk) if wk else None,
        auth=auth,
    )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


# --------------------------------------------------------------------------- templates (gateway/render.py)

_TEMPLATE_KEYS = (
    "source",
    "destination",
    "perms",
    "command",
    "command_timeout",
    "wait",
    "backup",
    "error_on_missing_key",
    "create_dest_dirs",
)


def _perms(value: Any) -> int:
    # YAML reads an unquoted 0640 as the integer 416 and 640 as six hundred and forty: only a string is unambiguous.
    if not isinstance(value, str) or not re.match(r"^0?[0-7]{3,4}$", value):
        raise ValueError(f'{value!r} is not a mode (expected a quoted octal string such as "0640")')
    return int(value, 8)


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"{value!r} is not a command (expected a string for sh -c, or a list of arguments)")


def _wait(value: Any) -> TemplateWait:
    # consul-template's forms: {min, max}, or "min:max"; a missing max is 4 x min (CT:config/wait.go).
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max"}
        if unknown or "min" not in value:
            raise ValueError('expected {min: DURATION, max: DURATION} or "min:max"')
        lo = parse_duration(value["min"])
        hi = parse_duration(value["max"]) if value.get("max") is not None else 4 * lo
    elif isinstance(value, str):
        lo_s, _, hi_s = value.partition(":")
        lo = parse_duration(lo_s)
        hi = parse_duration(hi_s) if hi_s else 4 * lo
    else:
        raise ValueError(f'{value!r} is not a wait (expected {{min: 2s, max: 10s}} or "2s:10s")')
    if hi < lo:
        raise ValueError(f"max ({hi:g}s) is shorter than min ({lo:g}s)")
    return TemplateWait(lo, hi)


def _parse_templates(
    r: _Reader, raw: Any, base: Path, env: Mapping[str, str]
) -> tuple[tuple[TemplateConfig, ...], TemplateCertsConfig | None]:
    """``templates:`` is a list of templates, or ``{certs_dir, write_key, wait, files: [...]}`` for the settings
    shared by all of them. ``wait`` there is the default for each file (consul-template's top-level wait)."""
    default_wait: TemplateWait | None = None
    certs_dir: str | None = None
    write_key = False
    items: Any = raw
    if isinstance(raw, Mapping):
        t = r.mapping(raw, "templates", ("certs_dir", "write_key", "wait", "files"))
        certs_dir = r.get(t, "templates", "certs_dir", text, None)
        write_key = bool(r.get(t, "templates", "write_key", _bool, False))
        default_wait = r.get(t, "templates", "wait", _wait, None)
        items = t.get("files")
    if items is None:
        items = []
    if not isinstance(items, list):
        key = "templates.files" if isinstance(raw, Mapping) else "templates"
        r.problem(key, f"expected a list of templates {{source, destination, ...}}, got {type(items).__name__}")
        items = []
    prefix = "templates.files" if isinstance(raw, Mapping) else "templates"
    out: list[TemplateConfig] = []
    dests: dict[Path, str] = {}
    for n, item in enumerate(items):
        key = f"{prefix}[{n}]"
        m = r.mapping(item, key, _TEMPLATE_KEYS)
        src = r.get(m, key, "source", text, required=True)
        dst = r.get(m, key, "destination", text, required=True)
        tpl = TemplateConfig(
            source=_resolve(base, src or "."),
            destination=_resolve(base, dst or "."),
            perms=r.get(m, key, "perms", _perms, None),
            command=r.get(m, key, "command", _command, None),
            command_timeout=r.get(m, key, "command_timeout", parse_duration, 30.0) or 30.0,
            wait=r.get(m, key, "wait", _wait, default_wait),
            backup=bool(r.get(m, key, "backup", _bool, False)),
            error_on_missing_key=bool(r.get(m, key, "error_on_missing_key", _bool, False)),
            create_dest_dirs=bool(r.get(m, key, "create_dest_dirs", _bool, True)),
        )
        if dst and tpl.destination in dests:
            r.problem(f"{key}.destination", f"{tpl.destination} is already written by {dests[tpl.destination]}")
        if dst:
            dests[tpl.destination] = key
        out.append(tpl)
    # Without certs_dir: systemd's RuntimeDirectory= (exported as RUNTIME_DIRECTORY) or the Nomad task's secrets
    # directory (vault-nomad.md §4.4), so that a unit or a job needs no setting for it.
    if certs_dir is None and env.get("RUNTIME_DIRECTORY"):
        certs_dir = str(Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "certs")
    if certs_dir is None and env.get("NOMAD_SECRETS_DIR"):
        certs_dir = str(Path(env["NOMAD_SECRETS_DIR"]) / "meshgw")
    certs = TemplateCertsConfig(dir=_resolve(base, certs_dir), write_key=write_key) if certs_dir else None
    return tuple(out), certs


# --------------------------------------------------------------------------- HTTP: balancing, resilience, access logs
# Consul's knobs (consul.md §8.1 UpstreamConfig Limits/PassiveHealthCheck, §8.3 route retries, §8.5 resolver
# LoadBalancer) with Envoy's defaults where Consul leaves them unset, in meshgw's snake_case YAML.

# peak_ewma: Linkerd's latency-aware balancer (power of two choices over peak-EWMA latency x requests in flight);
# the Rust core implements it, the Python data path balances it as least_request.
# A service-resolver's LoadBalancer.Policy takes Consul's list only (consul.md §8.5).
CONSUL_LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
LB_POLICIES = (*CONSUL_LB_POLICIES, "peak_ewma")
HASH_FIELDS = ("header", "cookie", "query_parameter")
# Envoy retry-on tokens that mean something for HTTP/1.1 (C:api/config_entry_discoverychain.go RetryOn).
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
)
ACCESS_LOG_FIELDS = (
    "start_time",
    "listener",
    "method",
    "path",
    "protocol",
    "status",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_service_time_ms",
    "upstream_cluster",
    "upstream_host",
    "route",
    "retries",
    "request_id",
    "trace_id",
    "traceparent",
    "downstream_address",
    "source_service",
    "authority",
    "user_agent",
)
DEFAULT_ACCESS_LOG_FIELDS = (
    "start_time",
    "listener",
    "method",
    "path",
    "protocol",
    "status",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_cluster",
    "upstream_host",
    "route",
    "retries",
    "request_id",
    "trace_id",
    "traceparent",
    "downstream_address",
    "source_service",
)
_HTTP_UPSTREAM_KEYS = ("idle_timeout", "load_balancer", "retries", "limits", "passive_health_check")


@dataclass(frozen=True)
class HashPolicyConfig:
    """One of a resolver's ``LoadBalancer.HashPolicies``: a header, cookie or query parameter, or the source IP."""

    field: str = ""
    field_value: str = ""
    source_ip: bool = False
    terminal: bool = False


@dataclass(frozen=True)
class LoadBalancerConfig:
    policy: str = "round_robin"
    choice_count: int = 2  # least_request (Envoy's default: power of two choices)
    minimum_ring_size: int = 1024  # ring_hash (Envoy's defaults)
    maximum_ring_size: int = 8 * 1024 * 1024
    hash_policies: tuple[HashPolicyConfig, ...] = ()


@dataclass(frozen=True)
class RetryConfig:
    """Retries of one request. Connect failures are retried for every method (nothing was sent); resets and status
    codes only for idempotent methods (RFC 9110 §9.2.2) unless ``retry_non_idempotent``. Concurrent retries of a
    cluster are capped by a budget: ``budget_percent`` of the requests in flight, at least ``min_retry_concurrency``
    (Envoy's retry_budget defaults, 20 % and 3)."""

    num_retries: int = 2
    retry_on_connect_failure: bool = True
    retry_on_reset: bool = True
    retry_on_status_codes: tuple[int, ...] = ()
    retry_on: tuple[str, ...] = ()
    retry_non_idempotent: bool = False
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    backoff_base: float = 0.025  # Envoy's base_interval; full jitter, capped at 10 x base
    backoff_max: float = 0.25


@dataclass(frozen=True)
class LimitsConfig:
    """Circuit breakers of each cluster (Consul's UpstreamConfig.Limits; Envoy's defaults 1024)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_concurrent_requests: int = 1024


@dataclass(frozen=True)
class PassiveHealthCheckConfig:
    """Outlier detection (Consul's PassiveHealthCheck → Envoy OutlierDetection, C:agent/xds/config.go
    ToOutlierDetection; unset fields keep Envoy's defaults)."""

    interval: float = 10.0
    max_failures: int = 5  # consecutive 5xx (connect failures and resets count as 503)
    enforcing_consecutive_5xx: int = 100
    consecutive_gateway_failure: int = 5  # consecutive 502/503/504 (and local errors)
    enforcing_consecutive_gateway_failure: int = 0  # Envoy's default: counted, not enforced
    max_ejection_percent: int = 10
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0


@dataclass(frozen=True)
class AccessLogConfig:
    """JSON access logs, one line per request (the fields of Consul's proxy-defaults AccessLogs, JSON only)."""

    enabled: bool = False
    type: str = "stdout"  # stdout | stderr | file
    path: Path | None = None
    fields: tuple[str, ...] = DEFAULT_ACCESS_LOG_FIELDS
    flush_interval: float = 0.2  # lines are written in batches, never one syscall per request


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError(f"{value!r} is not a percentage (expected a number 0-100)")
    return float(value)


def _status_codes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
    ):
        raise ValueError(f"{value!r} is not a list of HTTP status codes (expected e.g. [502, 503])")
    return tuple(value)


def _retry_on(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{value!r} is not a list of retry conditions (expected some of: {', '.join(RETRY_ON)})")
    for v in value:
        if v not in RETRY_ON:
            raise ValueError(f"{v!r} is not a retry condition (expected one of: {', '.join(RETRY_ON)})")
    return tuple(value)


def _parse_hash_policy(r: _Reader, raw: Any, key: str) -> HashPolicyConfig:
    h = r.mapping(raw, key, ("field", "field_value", "source_ip", "terminal"))
    source_ip = bool(r.get(h, key, "source_ip", _bool, False))
    fld = r.get(h, key, "field", choice(*HASH_FIELDS), "") or ""
    value = r.get(h, key, "field_value", text, "") or ""
    if source_ip and fld:
        r.problem(key, "set either field (with field_value) or source_ip: true, not both")
    elif not source_ip and not fld:
        r.problem(key, f"needs field ({', '.join(HASH_FIELDS)}) with field_value, or source_ip: true")
    elif fld and not value:
        r.problem(f"{key}.field_value", f"is required with field: {fld} (the {fld.replace('_', ' ')} name)")
    return HashPolicyConfig(
        field=fld,
        field_value=value.lower() if fld == "header" else value,
        source_ip=source_ip,
        terminal=bool(r.get(h, key, "terminal", _bool, False)),
    )


def _parse_load_balancer(r: _Reader, raw: Any, key: str) -> LoadBalancerConfig:
    lb = r.mapping(raw, key, ("policy", "choice_count", "minimum_ring_size", "maximum_ring_size", "hash_policies"))
    policy = r.get(lb, key, "policy", choice(*LB_POLICIES), "round_robin") or "round_robin"
    raw_hp = lb.get("hash_policies") or []
    if not isinstance(raw_hp, list):
        r.problem(f"{key}.hash_policies", "expected a list of {field, field_value, terminal} or {source_ip: true}")
        raw_hp = []
    hps = tuple(_parse_hash_policy(r, h, f"{key}.hash_policies[{n}]") for n, h in enumerate(raw_hp))
    if hps and policy not in ("ring_hash", "maglev"):
        r.problem(f"{key}.hash_policies", f"only apply to ring_hash and maglev (policy is {policy})")
    cc = r.get(lb, key, "choice_count", _nonneg_int, 2) or 2
    if cc < 2:
        r.problem(f"{key}.choice_count", f"{cc} is too small (expected at least 2)")
    lo = r.get(lb, key, "minimum_ring_size", _nonneg_int, 1024) or 1024
    hi = r.get(lb, key, "maximum_ring_size", _nonneg_int, 8 * 1024 * 1024) or 8 * 1024 * 1024
    if lo > hi:
        r.problem(f"{key}.minimum_ring_size", f"{lo} is larger than maximum_ring_size {hi}")
    return LoadBalancerConfig(policy, cc, lo, hi, hps)


def _parse_retries(r: _Reader, raw: Any, key: str) -> RetryConfig:
    d = RetryConfig()
    m = r.mapping(raw, key, tuple(RetryConfig.__dataclass_fields__))
    return RetryConfig(
        num_retries=r.get(m, key, "num_retries", _nonneg_int, d.num_retries),  # type: ignore[arg-type]
        retry_on_connect_failure=bool(r.get(m, key, "retry_on_connect_failure", _bool, d.retry_on_connect_failure)),
        retry_on_reset=bool(r.get(m, key, "retry_on_reset", _bool, d.retry_on_reset)),
        retry_on_status_codes=r.get(m, key, "retry_on_status_codes", _status_codes, ()) or (),
        retry_on=r.get(m, key, "retry_on", _retry_on, ()) or (),
        retry_non_idempotent=bool(r.get(m, key, "retry_non_idempotent", _bool, False)),
        budget_percent=r.get(m, key, "budget_percent", _percent, d.budget_percent),  # type: ignore[arg-type]
        min_retry_concurrency=r.get(m, key, "min_retry_concurrency", _nonneg_int, d.min_retry_concurrency),  # type: ignore[arg-type]
        backoff_base=r.get(m, key, "backoff_base", parse_duration, d.backoff_base),  # type: ignore[arg-type]
        backoff_max=r.get(m, key, "backoff_max", parse_duration, d.backoff_max),  # type: ignore[arg-type]
    )


def _parse_limits(r: _Reader, raw: Any, key: str) -> LimitsConfig:
    d = LimitsConfig()
    m = r.mapping(raw, key, tuple(LimitsConfig.__dataclass_fields__))
    return LimitsConfig(
        *(r.get(m, key, n, _nonneg_int, getattr(d, n)) for n in LimitsConfig.__dataclass_fields__)  # type: ignore[arg-type]
    )


def _parse_passive(r: _Reader, raw: Any, key: str) -> PassiveHealthCheckConfig:
    d = PassiveHealthCheckConfig()
    m = r.mapping(raw, key, tuple(PassiveHealthCheckConfig.__dataclass_fields__))
    return PassiveHealthCheckConfig(
        interval=r.get(m, key, "interval", parse_duration, d.interval) or d.interval,
        max_failures=r.get(m, key, "max_failures", _nonneg_int, d.max_failures),  # type: ignore[arg-type]
        enforcing_consecutive_5xx=int(
            r.get(m, key, "enforcing_consecutive_5xx", _percent, d.enforcing_consecutive_5xx)  # type: ignore[arg-type]
        ),
        consecutive_gateway_failure=r.get(
            m, key, "consecutive_gateway_failure", _nonneg_int, d.consecutive_gateway_failure
        ),  # type: ignore[arg-type]
        enforcing_consecutive_gateway_failure=int(
            r.get(m, key, "enforcing_consecutive_gateway_failure", _percent, 0)  # type: ignore[arg-type]
        ),
        max_ejection_percent=int(r.get(m, key, "max_ejection_percent", _percent, d.max_ejection_percent)),  # type: ignore[arg-type]
        base_ejection_time=r.get(m, key, "base_ejection_time", parse_duration, d.base_ejection_time),  # type: ignore[arg-type]
        max_ejection_time=r.get(m, key, "max_ejection_time", parse_duration, d.max_ejection_time),  # type: ignore[arg-type]
    )


def _parse_http_upstream(r: _Reader, u: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "idle_timeout": r.get(u, key, "idle_timeout", parse_duration, 3600.0) or 3600.0,
        "load_balancer": _parse_load_balancer(r, u.get("load_balancer"), f"{key}.load_balancer"),
        "retries": _parse_retries(r, u.get("retries"), f"{key}.retries"),
        "limits": _parse_limits(r, u.get("limits"), f"{key}.limits"),
        "passive_health_check": _parse_passive(r, u.get("passive_health_check"), f"{key}.passive_health_check"),
    }


def _access_log_fields(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{value!r} is not a list of field names (expected some of: {', '.join(ACCESS_LOG_FIELDS)})")
    for v in value:
        if v not in ACCESS_LOG_FIELDS:
            raise ValueError(f"{v!r} is not an access log field (expected one of: {', '.join(ACCESS_LOG_FIELDS)})")
    return tuple(value)


def _parse_access_log(r: _Reader, raw: Any, base: Path) -> AccessLogConfig:
    key = "access_log"
    m = r.mapping(raw, key, ("enabled", "type", "path", "fields", "flush_interval"))
    if raw is None:
        return AccessLogConfig()
    typ = r.get(m, key, "type", choice("stdout", "stderr", "file"), None)
    path = r.get(m, key, "path", text, None)
    if typ is None:
        typ = "file" if path else "stdout"
    if typ == "file" and not path:
        r.problem(f"{key}.path", "is required with type: file")
    if typ != "file" and path:
        r.problem(f"{key}.path", f"only goes with type: file (type is {typ})")
    return AccessLogConfig(
        enabled=bool(r.get(m, key, "enabled", _bool, True)),
        type=typ,
        path=_resolve(base, path) if path else None,
        fields=r.get(m, key, "fields", _access_log_fields, DEFAULT_ACCESS_LOG_FIELDS) or DEFAULT_ACCESS_LOG_FIELDS,
        flush_interval=r.get(m, key, "flush_interval", parse_duration, 0.2) or 0.2,
    )
