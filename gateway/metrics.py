"""Every Prometheus metric meshgw exports, defined in one place.

Label values are bounded: listener names come from the config (``inbound`` or ``upstream:<service>``),
reasons from the fixed sets below. Never a peer address, a SPIFFE ID or a path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

from gateway.version import PYTHON_VERSION, VERSION

# No `<name>_created` series: they double every counter and histogram and no dashboard reads them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_* metrics (CPU seconds, resident memory, open fds, start time), as every exporter has.
ProcessCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "meshgw_build_info",
    "Always 1; the running meshgw's version and Python version as labels.",
    ["version", "python_version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(VERSION, PYTHON_VERSION).set(1)

DENY_REASONS = (
    "intention",  # an intention (or the default policy) denied the caller
    "no_client_cert",  # TLS: the caller sent no certificate
    "untrusted_cert",  # TLS: the certificate does not chain to the current roots
    "cert_expired",  # TLS: the caller's certificate is expired or not yet valid
    "handshake_timeout",  # the caller did not finish the TLS handshake in time
    "tls_error",  # any other handshake failure (protocol version, garbage instead of TLS...)
    "foreign_trust_domain",  # a valid chain, but a SPIFFE ID of another trust domain
    "no_spiffe_id",  # a valid chain without a service SPIFFE URI SAN
    "not_ready",  # this sidecar has no valid leaf or roots: fail closed
    # mesh gateway (it reads the ClientHello's SNI, nothing else):
    "not_tls",  # the first bytes are not a TLS ClientHello
    "no_sni",  # a ClientHello without a server name
    "unknown_sni",  # a server name that is not a mesh name of this trust domain
    "max_connections",  # the listener's connection limit is reached (the Rust core's listeners)
)

UPSTREAM_ERRORS = (
    "no_healthy_endpoints",
    "connect_failed",  # TCP connect refused / unreachable / timed out
    "tls_failed",  # the handshake with the upstream failed
    "identity_mismatch",  # the upstream presented another service's SPIFFE ID
    "not_ready",  # no valid leaf of our own
)

CONNECTIONS_ACCEPTED = Counter(
    "meshgw_connections_accepted",
    "Connections accepted and forwarded, by listener.",
    ["listener"],
    registry=REGISTRY,
)
CONNECTIONS_DENIED = Counter(
    "meshgw_connections_denied",
    "Inbound connections refused before any byte reached the app, by reason.",
    ["listener", "reason"],
    registry=REGISTRY,
)
GATEWAY_ROUTED = Counter(
    "meshgw_gateway_connections_routed",
    "Connections a mesh gateway forwarded by SNI, to a service in its own datacenter (local) or to another "
    "datacenter's gateways (remote).",
    ["listener", "route"],
    registry=REGISTRY,
)
CONNECTIONS_ACTIVE = Gauge(
    "meshgw_connections_active",
    "Connections currently open, by listener.",
    ["listener"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "meshgw_bytes_received",
    "Bytes received from the downstream side of a listener (counted when a connection closes).",
    ["listener"],
    registry=REGISTRY,
)
BYTES_SENT = Counter(
    "meshgw_bytes_sent",
    "Bytes sent back to the downstream side of a listener (counted when a connection closes).",
    ["listener"],
    registry=REGISTRY,
)
TLS_HANDSHAKES = Counter(
    "meshgw_tls_handshakes",
    "mTLS handshakes finished, by listener and kind: full (certificates exchanged and verified) or resumed (a "
    "session ticket, no certificate work).",
    ["listener", "kind"],
    registry=REGISTRY,
)
UPSTREAM_CONNECT_ERRORS = Counter(
    "meshgw_upstream_connect_errors",
    "Failures to reach an upstream (or the local app), by reason.",
    ["listener", "reason"],
    registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    "meshgw_leaf_cert_expiry_timestamp_seconds",
    "Unix time at which the current leaf certificate expires.",
    registry=REGISTRY,
)
CERT_ROTATIONS = Counter(
    "meshgw_leaf_cert_rotations",
    "Leaf certificates issued and put into service.",
    registry=REGISTRY,
)
CERT_FAILURES = Counter(
    "meshgw_leaf_cert_failures",
    "Failures to obtain a leaf certificate, by provider.",
    ["provider"],
    registry=REGISTRY,
)
SNAPSHOT_VERSION = Gauge(
    "meshgw_snapshot_version",
    "Version of the configuration snapshot in service (grows with every change).",
    registry=REGISTRY,
)
SNAPSHOT_AGE = Gauge(
    "meshgw_snapshot_last_change_timestamp_seconds",
    "Unix time at which the snapshot in service was built.",
    registry=REGISTRY,
)
UPSTREAM_ENDPOINTS = Gauge(
    "meshgw_upstream_healthy_endpoints",
    "Healthy endpoints known for each upstream.",
    ["upstream"],
    registry=REGISTRY,
)
CONTROL_PLANE_ERRORS = Counter(
    "meshgw_control_plane_errors",
    "Control-plane inputs rejected (the last good content kept serving), by source.",
    ["source"],
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "meshgw_config_reloads",
    "Config reloads (SIGHUP), by result.",
    ["result"],
    registry=REGISTRY,
)
CONSUL_UP = Gauge(
    "meshgw_consul_up",
    "1 while every Consul watch and the registration succeed, 0 while any fails (the last good state serves).",
    registry=REGISTRY,
)
CONSUL_LAST_SUCCESS = Gauge(
    "meshgw_consul_last_success_timestamp_seconds",
    "Unix time at which Consul last answered after a failure (start of the current up period).",
    registry=REGISTRY,
)
HTTP_RESPONSES = Counter(
    "meshgw_http_responses",
    "HTTP responses sent downstream, by listener and status class (1xx..5xx).",
    ["listener", "code_class"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "meshgw_http_request_duration_seconds",
    "Time from a request's headers to its response headers, by listener.",
    ["listener"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
HTTP_DENIED = Counter(
    "meshgw_http_requests_denied",
    "HTTP requests refused before reaching the app, by listener and reason: intention (403 by an L7 intention or "
    "the default policy), or on the Rust core the request check that refused it (400/404/426/307: "
    "missing_host_header, path_with_fragment, path_normalization_failed, http_1_0, ...).",
    ["listener", "reason"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------- HTTP: clusters, routes, resilience
# ``cluster`` is a discovery-chain target ("api", "v2.api", "api.dc2") and ``route`` a router route
# ("default", "<service>/<index>"): both come from the config or Consul's config entries, never from a request.

CLUSTER_BREAKERS = ("max_connections", "max_pending_requests", "max_concurrent_requests")
RETRY_REASONS = ("connect_failure", "reset", "status")
EJECTION_REASONS = ("consecutive_5xx", "consecutive_gateway_failure")
TIMEOUT_KINDS = ("connect", "request", "idle")

HTTP_UPSTREAM_RESPONSES = Counter(
    "meshgw_http_upstream_responses",
    "HTTP responses per upstream cluster and status class, on listeners whose chain has routes or splits.",
    ["listener", "cluster", "code_class"],
    registry=REGISTRY,
)
HTTP_UPSTREAM_DURATION = Histogram(
    "meshgw_http_upstream_request_duration_seconds",
    "Request duration per upstream cluster (all attempts), on listeners whose chain has routes or splits.",
    ["listener", "cluster"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
HTTP_ROUTE_RESPONSES = Counter(
    "meshgw_http_route_responses",
    "HTTP responses per route and status class, on listeners whose chain has routes or splits.",
    ["listener", "route", "code_class"],
    registry=REGISTRY,
)
HTTP_ROUTE_DURATION = Histogram(
    "meshgw_http_route_request_duration_seconds",
    "Request duration per route, on listeners whose chain has routes or splits.",
    ["listener", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
HTTP_RETRIES = Counter(
    "meshgw_http_retries",
    "Request attempts made again, by upstream cluster and cause (connect_failure, reset, status, grpc_status).",
    ["listener", "cluster", "reason"],
    registry=REGISTRY,
)
HTTP_RETRY_OVERFLOW = Counter(
    "meshgw_http_retry_budget_exhausted",
    "Retries not made because the cluster's retry budget was used up.",
    ["listener", "cluster"],
    registry=REGISTRY,
)
HTTP_BREAKER_TRIPS = Counter(
    "meshgw_http_circuit_breaker_trips",
    "Requests refused with 503 by a circuit breaker, by cluster and breaker.",
    ["listener", "cluster", "breaker"],
    registry=REGISTRY,
)
HTTP_PENDING = Gauge(
    "meshgw_http_pending_requests",
    "Requests waiting for a connection to an upstream cluster (dialling or queued at max_connections).",
    ["listener", "cluster"],
    registry=REGISTRY,
)
OUTLIER_EJECTIONS = Counter(
    "meshgw_outlier_ejections",
    "Endpoints ejected by outlier detection, by cluster and reason.",
    ["listener", "cluster", "reason"],
    registry=REGISTRY,
)
OUTLIER_EJECTED = Gauge(
    "meshgw_outlier_ejected_endpoints",
    "Endpoints of a cluster ejected now.",
    ["listener", "cluster"],
    registry=REGISTRY,
)
HTTP_TIMEOUTS = Counter(
    "meshgw_http_timeouts",
    "HTTP timeouts by kind: connect (to an upstream endpoint or the app), request (504), idle (connection closed).",
    ["listener", "kind"],
    registry=REGISTRY,
)
GRPC_RESPONSES = Counter(
    "meshgw_grpc_responses",
    "gRPC calls by the grpc-status they ended with (the answer's head when trailers-only, else its trailers; the "
    "proxy's own answers included, e.g. 7 for an intention's deny).",
    ["listener", "grpc_status"],
    registry=REGISTRY,
)
HTTP2_CUTS = Counter(
    "meshgw_http2_connections_cut",
    "HTTP/2 connections closed because the peer broke a bound or the protocol, by reason (rapid_reset, "
    "control_frame_flood, stream_error_flood, header_flood, small_frame_flood, flow_control, protocol_error).",
    ["listener", "reason"],
    registry=REGISTRY,
)
VAULT_FAILURES = Counter(
    "meshgw_vault_failures",
    "Failed Vault calls, by operation (login, lookup, renew, sign, issue, issuers, parse) and reason "
    "(sealed, unavailable, unreachable, tls, timeout, server_error, forbidden, refused, not_found, "
    "rate_limited, bad_response, auth_file).",
    ["operation", "reason"],
    registry=REGISTRY,
)
