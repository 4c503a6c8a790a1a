"""The typed configuration: frozen dataclasses, built once by gateway.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.http import (
    AccessLogConfig,
    LimitsConfig,
    LoadBalancerConfig,
    PassiveHealthCheckConfig,
    RetryConfig,
)
from gateway.config.reader import (
    Address,
)


@dataclass(frozen=True)
class CheckConfig:
    """``service.check``: the health check registered with the app service in Consul (consul.md §3.4). ``grpc``:
    Consul's GRPC check, ``GRPC: "<address>:<port>/<grpc_service>"`` (http2-grpc.md §4; the same string Nomad
    builds, N:command/agent/consul/service_client.go createCheckReg); ``tcp``: a TCP connect check."""

    type: str = "tcp"
    grpc_service: str = ""  # "" asks grpc.health.v1.Health/Check about the whole server
    grpc_use_tls: bool = False
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    interval: float = 10.0
    timeout: float = 2.0


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    id: str
    address: str
    port: int
    # The protocol served (after resolution, gateway/config/protocol.py); ``protocol_explicit``: meshgw.yaml set it,
    # so neither the registration nor Consul's config entries change it.
    protocol: str = "tcp"
    protocol_explicit: bool = True
    # A Consul health check registered with the app (control_plane.consul.register_service).
    check: CheckConfig | None = None


@dataclass(frozen=True)
class InboundConfig:
    bind: Address
    connect_timeout: float = 5.0
    request_timeout: float = 15.0  # http only: Envoy's default route timeout
    idle_timeout: float = 3600.0  # http only: an idle keep-alive connection closes (Envoy's HCM default, 1h)
    # http only: a request or response stream with no frame either way this long is answered 408 / reset (Envoy's
    # stream_idle_timeout, 5 min): what frees a stream an HTTP/2 peer stalls by never opening its window.
    stream_idle_timeout: float = 300.0


@dataclass(frozen=True)
class UpstreamConfig:
    service: str
    bind: Address
    datacenter: str | None = None
    protocol: str = "tcp"
    protocol_explicit: bool = True  # False: the caller's service-defaults or the discovery chain decide
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
    (consul.md §10; C:api/api.go): CONSUL_HTTP_ADDR (``unix:///path`` included), CONSUL_HTTP_TOKEN(_FILE),
    CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT/KEY,
    CONSUL_TLS_SERVER_NAME, CONSUL_NAMESPACE; under Nomad 1.7+ workload identity, CONSUL_TOKEN and
    ``secrets/consul_token``."""

    scheme: str = "http"  # http, https or unix (then ``socket`` is the agent's socket)
    host: str = "127.0.0.1"
    port: int = 8500
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_path: Path | None = None
    tls_server_name: str | None = None
    socket: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    namespace: str | None = None
    # Blocking-query wait (Consul caps it at 10m, consul.md §1).
    wait: float = 300.0
    # Register the sidecar (Kind connect-proxy) and, if asked, the app service itself.
    register: bool = True
    register_service: bool = False
    # `consul connect envoy -sidecar-for <id>`: take the upstreams from the connect-proxy registration on the local
    # agent whose DestinationServiceID (else, when unique, DestinationServiceName) is this, instead of from YAML.
    sidecar_for: str | None = None

    @property
    def address(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}"
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlPlaneConfig:
    type: str = "local"
    local: LocalControlPlaneConfig = field(default_factory=LocalControlPlaneConfig)
    consul: ConsulConfig | None = None
    # Consul's agent setting of the same name: what happens when no intention matches. None (Consul only): what
    # the agent says (ConsulControlPlane reads /v1/agent/self).
    default_intention_policy: str | None = "deny"


@dataclass(frozen=True)
class BuiltinCAConfig:
    dir: Path
    trust_domain: str | None = None
    leaf_ttl: float = 72 * 3600.0
    # Create the CA when the directory has none. Off by default: a mistyped dir must not start a new trust domain.
    create: bool = False


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
    """Vault PKI. Defaults from VAULT_AGENT_ADDR (wins, as in Vault's client) or VAULT_ADDR, VAULT_CACERT,
    VAULT_CAPATH, VAULT_CLIENT_CERT/KEY, VAULT_SKIP_VERIFY, VAULT_NAMESPACE (vault-nomad.md §2.4; V:api/client.go)."""

    address: str = "https://127.0.0.1:8200"
    mount: str = "pki"
    role: str = ""
    trust_domain: str = ""
    ttl: float | None = None  # None: the role's default
    namespace: str | None = None
    ca_file: Path | None = None
    ca_path: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
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
    bind: Address = Address("127.0.0.1", 19000)  # noqa: RUF009 - a frozen dataclass: an immutable default
    # POST /drain_listeners and /healthcheck/fail|ok answer loopback callers only unless this is true (issue #16).
    allow_remote_maintenance: bool = False


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
class ExposePathConfig:
    """One of Consul's ``Expose.Paths`` (consul.md §3.1): ListenerPort, Path, LocalPathPort, Protocol."""

    listener_port: int
    path: str
    local_path_port: int
    protocol: str = "http"
    # Consul's ParsedFromCheck: a path the agent exposed for one of the app's HTTP/gRPC checks (Expose.Checks);
    # only loopback and the agent's own address may call it (C:agent/xds/listeners.go makeExposedCheckListener).
    from_check: bool = False


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
    log_json: bool = False
    templates: tuple[TemplateConfig, ...] = ()
    template_certs: TemplateCertsConfig | None = None
    access_log: AccessLogConfig = field(default_factory=lambda: AccessLogConfig())
    # Discovery-chain entries for the local control plane (service-router/-splitter/-resolver/-defaults, in
    # Consul's shapes: gateway/http/entries.py); with Consul they come from its config entries instead.
    config_entries: tuple[Any, ...] = ()
    gateway: GatewayConfig | None = None
    linked_services: tuple[LinkedServiceConfig, ...] = ()  # mode terminating-gateway
    mesh_gateway: MeshGatewayModeConfig = field(default_factory=MeshGatewayModeConfig)
    # Consul's Proxy.Expose.Paths: plaintext paths of the app for the agent's health checks, served by the core
    # (gateway/core/src/inbound/expose.rs); expose_checks is Expose.Checks: every HTTP/gRPC check of the app too.
    expose: tuple[ExposePathConfig, ...] = ()
    expose_checks: bool = False

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
