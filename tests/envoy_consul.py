"""Static Envoy bootstraps that configure Envoy the way Consul configures a Connect sidecar (TCP services).

Consul never writes listeners or clusters into Envoy's bootstrap: the agent serves them over xDS (ADS). No
Consul binary exists here, so this module renders the *same resources* Consul would serve for an L4
(``protocol = "tcp"``) connect-proxy into ``static_resources``, plus an admin listener. Envoy is then
started with ``envoy -c FILE``. It is used by the Envoy/meshgw interop tests and by the benchmark to build a
reference Envoy pair.

What is mirrored, and where it comes from (hashicorp/consul; paths are in that repository):

* Public listener ``public_listener:<addr>:<port>`` (``trafficDirection: INBOUND``), one filter chain:
  ``envoy.filters.network.rbac`` (``stat_prefix: connect_authz``) then ``envoy.filters.network.tcp_proxy``
  (``stat_prefix: public_listener``, cluster ``local_app``), transport socket ``tls`` with a
  ``DownstreamTlsContext`` whose ``require_client_certificate`` is true and whose common TLS context carries
  the leaf (certificate chain + private key, inlined) and the roots as ``validation_context.trusted_ca``.
  Sources: ``agent/xds/listeners.go`` (makeInboundListener, finalizePublicListenerFromConfig,
  injectConnectTLSForPublicListener, makeCommonTLSContext) and the golden file
  ``agent/xds/testdata/listeners/connect-proxy-with-tls-incoming-min-version.latest.golden``.
* RBAC rules from intentions: ``agent/xds/rbac.go`` makeRBACRules / makeRBACNetworkFilter. Default deny
  gives an allow-list (``action: ALLOW``), default allow a block-list (``action: DENY``); intentions are
  sorted by precedence, precedence is removed by AND-NOT-ing higher-precedence sources out of lower ones
  (removeSourcePrecedence), intentions whose action equals the default are dropped, and all L4 principals go
  into one policy ``consul-intentions-layer4`` with permission ``any: true``. A source principal is
  ``authenticated.principal_name.safe_regex`` with the pattern of makeSpiffePattern:
  ``^spiffe://<local trust domain>/ns/<ns>/dc/[^/]+/svc/<svc>$`` (``[^/]+`` for a ``*`` service; the
  datacenter is never checked). Older Consul releases used ``[^/]+`` for the trust domain too
  (``^spiffe://[^/]+/ns/...``); current ones put the local trust domain, unescaped, as in
  ``agent/xds/testdata/rbac/*.golden``. With no policies at all the rules are ``{}`` (ALLOW-list with no
  entries: everything denied) as in the golden above.
* Upstream listener ``<svc>:<addr>:<port>`` (``trafficDirection: OUTBOUND``) with a tcp_proxy whose
  ``stat_prefix`` is ``upstream.<svc>.default.default.<dc>`` and whose cluster is the upstream's SNI name
  (same golden file).
* Upstream cluster named by ``connect.ServiceSNI`` (``agent/connect/sni.go``):
  ``<svc>.default.<dc>.internal.<trust-domain>``, ``alt_stat_name`` = the name, ``connect_timeout: 5s``, empty
  ``circuit_breakers`` and ``outlier_detection``, ``common_lb_config.healthy_panic_threshold`` = 0 (panic
  mode off), transport socket ``tls`` with an ``UpstreamTlsContext``: ``sni`` = the cluster name, the leaf
  as client certificate, ``trusted_ca`` = the roots, and a SAN matcher on the exact upstream SPIFFE URI
  ``spiffe://<td>/ns/default/dc/<dc>/svc/<svc>``. Sources: ``agent/xds/clusters.go``
  (makeUpstreamClustersForDiscoveryChain, makeMTLSTransportSocket, injectSANMatcher) and
  ``agent/xds/testdata/clusters/connect-proxy-with-chain.latest.golden``.
  Two deliberate differences, both forced by a static bootstrap or a newer Envoy:
    - Consul's upstream clusters are ``type: EDS`` fed over ADS; here they are ``type: STATIC`` with the
      endpoints in ``load_assignment`` (what EDS would have delivered).
    - Consul still sets the deprecated ``match_subject_alt_names`` (a plain StringMatcher on any SAN,
      ``//nolint:staticcheck`` in clusters.go). By default this module emits the typed form
      ``match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: <uri>}}]``, which is the same check
      restricted to URI SANs; ``legacy_san_matcher=True`` emits Consul's literal field instead.
* ``local_app`` cluster: ``type: STATIC``, ``connect_timeout: 5s``, one endpoint (``makeAppCluster`` in
  clusters.go).
* TLS parameters: Consul emits ``tls_params: {}`` unless the mesh config entry sets TLS versions
  (makeTLSParametersFromProxyTLSConfig). Envoy's defaults already are TLS 1.2 minimum; this module sets
  ``tls_minimum_protocol_version: TLSv1_2`` explicitly (what ``mesh { TLS { Incoming/Outgoing {
  TLSMinVersion = "TLSv1_2" } } }`` would produce) so the floor does not depend on the Envoy build.

Names follow Consul's SPIFFE and SNI formats (consul.md §5): the SPIFFE URI is
``spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`` and the SNI
``<service>.default.<dc>.internal.<trust-domain>``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EnvoyError",
    "EnvoyProcess",
    "envoy_binary",
    "free_port",
    "intentions_from_lists",
    "local_app_cluster",
    "public_listener",
    "rbac_network_filter",
    "rbac_rules",
    "sidecar_bootstrap",
    "spiffe_pattern",
    "spiffe_service_uri",
    "upstream_cluster",
    "upstream_listener",
    "upstream_sni",
    "write_bootstrap",
]

TYPE_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TYPE_NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TYPE_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TYPE_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

LOCAL_APP_CLUSTER = "local_app"  # xdscommon.LocalAppClusterName
RBAC_STAT_PREFIX = "connect_authz"  # makeRBACNetworkFilter
RBAC_L4_POLICY = "consul-intentions-layer4"  # makeRBACRules
CONNECT_TIMEOUT = "5s"  # Consul's default for local_app and upstream clusters
ANY_PATH = "[^/]+"  # rbac.go anyPath
WILDCARD = "*"


# ----------------------------------------------------------------------------------------------------
# Names (agent/connect/uri_service.go, agent/connect/sni.go)


def spiffe_service_uri(trust_domain: str, datacenter: str, service: str, namespace: str = "default") -> str:
    """The leaf URI SAN of a service: ``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`` (default partition)."""
    return f"spiffe://{trust_domain}/ns/{namespace or 'default'}/dc/{datacenter}/svc/{service}"


def upstream_sni(service: str, datacenter: str, trust_domain: str, namespace: str = "default") -> str:
    """Consul's ServiceSNI, also the upstream cluster's name: ``<svc>.<ns>.<dc>.internal.<td>``."""
    return f"{service}.{namespace or 'default'}.{datacenter}.internal.{trust_domain}"


def spiffe_pattern(trust_domain: str, source: str, namespace: str = "default") -> str:
    """The RBAC principal regex for an intention source (rbac.go makeSpiffePattern, non-peered source).

    ``*`` as service (or namespace) becomes ``[^/]+``; the datacenter is always ``[^/]+`` ("Datacenter is not
    verified by RBAC"). The trust domain is inserted as-is, unescaped, exactly as Consul does.
    """
    ns = ANY_PATH if namespace == WILDCARD else (namespace or "default")
    svc = ANY_PATH if source == WILDCARD else source
    if ns == ANY_PATH and svc != ANY_PATH:
        raise ValueError(f"not possible to have a wildcarded namespace but an exact service {source!r}")
    return f"^spiffe://{trust_domain}/ns/{ns}/dc/{ANY_PATH}/svc/{svc}$"


# ----------------------------------------------------------------------------------------------------
# Intentions -> RBAC (agent/xds/rbac.go)


def intentions_from_lists(
    allowed_sources: Iterable[str] | None = None, denied_sources: Iterable[str] | None = None
) -> list[dict[str, str]]:
    """A Consul ``service-intentions`` ``Sources`` list: ``[{"Name": src, "Action": "allow"|"deny"}, ...]``.

    A name in both lists is an error (Consul rejects a source defined twice).
    """
    allowed = list(allowed_sources or ())
    denied = list(denied_sources or ())
    both = set(allowed) & set(denied)
    if both:
        raise ValueError(f"sources both allowed and denied: {sorted(both)}")
    return [{"Name": s, "Action": "allow"} for s in allowed] + [{"Name": s, "Action": "deny"} for s in denied]


@dataclass
class _RbacIntention:
    source: str  # service name or "*", namespace default (CE)
    allow: bool
    not_sources: list[str] = field(default_factory=list)
    skip: bool = False


def _count_wild(src: str) -> int:
    # rbac.go countWild with namespace fixed to "default": a wildcard name counts 1, an exact name 0.
    return 1 if src == WILDCARD else 0


def _source_matches(tester: str, against: str) -> bool:
    # rbac.go ixnSourceMatches: does the (more wildcarded) 'against' cover 'tester'?
    if _count_wild(tester) >= _count_wild(against):
        return False
    return against in (tester, WILDCARD)


def _precedence(source: str) -> int:
    # consul.md §7.2 with an exact destination: exact source name 9, wildcard name 8 (namespace default).
    return 8 if source == WILDCARD else 9


def _principal(trust_domain: str, source: str) -> dict[str, Any]:
    # rbac.go idPrincipal / authenticatedPatternPrincipal. Consul's MakeEnvoyRegexMatch emits only "regex"
    # (older releases also an empty "google_re2": {}); RE2 is Envoy's only engine either way.
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": spiffe_pattern(trust_domain, source)}}}}


def rbac_rules(intentions: Sequence[Mapping[str, Any]], *, default_allow: bool, trust_domain: str) -> dict[str, Any]:
    """Envoy ``config.rbac.v3.RBAC`` rules for L4 intentions, as Consul's makeRBACRules builds them.

    ``intentions`` are the ``Sources`` of one ``service-intentions`` entry for this (exact) destination:
    dicts with ``Name`` (a service or ``*``) and ``Action`` (``allow``/``deny``). A source carrying
    ``Permissions`` (an L7 intention) is treated as ``deny`` on a TCP listener, as rbac.go does ("In case L7
    intentions slip through to here, treat them as deny intentions").
    """
    ixns: list[_RbacIntention] = []
    seen: set[str] = set()
    for src in intentions:
        name = str(src["Name"])
        if name in seen:
            raise ValueError(f"source {name!r} defined more than once")
        seen.add(name)
        if src.get("Permissions"):
            allow = False
        else:
            action = str(src.get("Action", "")).lower()
            if action not in ("allow", "deny"):
                raise ValueError(f"source {name!r}: Action must be allow or deny, got {src.get('Action')!r}")
            allow = action == "allow"
        ixns.append(_RbacIntention(source=name, allow=allow))
    # IntentionPrecedenceSorter: higher precedence first, ties by source name ascending.
    ixns.sort(key=lambda i: (-_precedence(i.source), i.source))

    # removeSourcePrecedence: walk backwards, push each intention as NOT into later ones it covers; drop those
    # whose action is the default one (the catch-all handles them).
    for i in range(len(ixns) - 1, -1, -1):
        for j in range(i + 1, len(ixns)):
            if ixns[j].skip:
                continue
            if _source_matches(ixns[i].source, ixns[j].source):
                ixns[j].not_sources.append(ixns[i].source)
        if ixns[i].allow == default_allow:
            ixns[i].skip = True

    principals: list[dict[str, Any]] = []
    for ixn in ixns:
        if ixn.skip:
            continue
        # simplifyNotSourceSlice: with namespace fixed, NOT-sources are only exact names; keep them in order.
        if not ixn.not_sources:
            principals.append(_principal(trust_domain, ixn.source))
        else:
            ids = [_principal(trust_domain, ixn.source)]
            ids += [{"not_id": _principal(trust_domain, s)} for s in ixn.not_sources]
            principals.append({"and_ids": {"ids": ids}})

    rules: dict[str, Any] = {}
    if default_allow:
        rules["action"] = "DENY"  # block-list; ALLOW (the proto default) is left implicit as in the goldens
    if principals:
        rules["policies"] = {RBAC_L4_POLICY: {"permissions": [{"any": True}], "principals": principals}}
    return rules


def rbac_network_filter(
    intentions: Sequence[Mapping[str, Any]], *, default_allow: bool, trust_domain: str
) -> dict[str, Any]:
    """The ``envoy.filters.network.rbac`` filter Consul puts first on the public listener's filter chain."""
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": TYPE_NETWORK_RBAC,
            "rules": rbac_rules(intentions, default_allow=default_allow, trust_domain=trust_domain),
            "stat_prefix": RBAC_STAT_PREFIX,
        },
    }


# ----------------------------------------------------------------------------------------------------
# TLS, listeners, clusters (agent/xds/listeners.go, agent/xds/clusters.go)


def _pem(path: str | os.PathLike[str]) -> str:
    text = Path(path).read_text()
    return text if text.endswith("\n") else text + "\n"  # lib.EnsureTrailingNewline


def _common_tls_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    ca_file: str | os.PathLike[str],
    *,
    tls_min_version: str | None,
    tls_max_version: str | None,
    inline: bool,
) -> dict[str, Any]:
    """makeCommonTLSContext: leaf + roots (inline strings, as Consul sends them over xDS)."""

    def source(p: str | os.PathLike[str]) -> dict[str, str]:
        return {"inline_string": _pem(p)} if inline else {"filename": str(Path(p).resolve())}

    params: dict[str, str] = {}
    if tls_min_version:
        params["tls_minimum_protocol_version"] = tls_min_version
    if tls_max_version:
        params["tls_maximum_protocol_version"] = tls_max_version
    return {
        "tls_params": params,
        "tls_certificates": [{"certificate_chain": source(cert_file), "private_key": source(key_file)}],
        "validation_context": {"trusted_ca": source(ca_file)},
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _tcp_proxy(cluster: str, stat_prefix: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TYPE_TCP_PROXY, "cluster": cluster, "stat_prefix": stat_prefix},
    }


def public_listener(
    *,
    bind_address: str,
    port: int,
    rbac_filter: Mapping[str, Any],
    common_tls_context: Mapping[str, Any],
) -> dict[str, Any]:
    """``public_listener:<addr>:<port>``: mTLS (client cert required), RBAC, tcp_proxy to ``local_app``."""
    return {
        "name": f"public_listener:{bind_address}:{port}",
        "address": _socket_address(bind_address, port),
        "traffic_direction": "INBOUND",
        "filter_chains": [
            {
                "filters": [dict(rbac_filter), _tcp_proxy(LOCAL_APP_CLUSTER, "public_listener")],
                "transport_socket": {
                    "name": "tls",
                    "typed_config": {
                        "@type": TYPE_DOWNSTREAM_TLS,
                        "common_tls_context": dict(common_tls_context),
                        "require_client_certificate": True,
                    },
                },
            }
        ],
    }


def upstream_listener(
    *, service: str, datacenter: str, bind_address: str, port: int, cluster: str, namespace: str = "default"
) -> dict[str, Any]:
    """``<svc>:<addr>:<port>``: plaintext local listener, tcp_proxy to the upstream's mTLS cluster."""
    return {
        "name": f"{service}:{bind_address}:{port}",
        "address": _socket_address(bind_address, port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [_tcp_proxy(cluster, f"upstream.{service}.{namespace}.default.{datacenter}")]}],
    }


def local_app_cluster(host: str, port: int) -> dict[str, Any]:
    """makeAppCluster: STATIC, 5s connect timeout, the one local application endpoint."""
    return {
        "name": LOCAL_APP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": LOCAL_APP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
        },
    }


def upstream_cluster(
    *,
    name: str,
    spiffe_uri: str,
    endpoints: Sequence[tuple[str, int]],
    common_tls_context: Mapping[str, Any],
    legacy_san_matcher: bool = False,
) -> dict[str, Any]:
    """An upstream mTLS cluster: SNI = cluster name, verify the server's exact SPIFFE URI SAN.

    Consul's is EDS-fed; here the endpoints are static (``load_assignment``). See the module docstring.
    """
    ctx = json.loads(json.dumps(common_tls_context))  # deep copy: the SAN matcher is per cluster
    vc = ctx["validation_context"]
    if legacy_san_matcher:
        vc["match_subject_alt_names"] = [{"exact": spiffe_uri}]
    else:
        vc["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": spiffe_uri}}]
    return {
        "name": name,
        "alt_stat_name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "circuit_breakers": {},
        "outlier_detection": {},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(h, p)}} for h, p in endpoints]}],
        },
        "transport_socket": {
            "name": "tls",
            "typed_config": {"@type": TYPE_UPSTREAM_TLS, "common_tls_context": ctx, "sni": name},
        },
    }


def sidecar_bootstrap(
    *,
    admin_port: int,
    service_name: str,
    datacenter: str,
    trust_domain: str,
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    ca_file: str | os.PathLike[str],
    inbound_port: int | None,
    local_app_port: int | None,
    upstreams: Sequence[Mapping[str, Any]] = (),
    allowed_sources: Iterable[str] | None = None,
    denied_sources: Iterable[str] | None = None,
    default_allow: bool = False,
    intentions: Sequence[Mapping[str, Any]] | None = None,
    bind_address: str = "127.0.0.1",
    local_app_host: str = "127.0.0.1",
    tls_min_version: str | None = "TLSv1_2",
    tls_max_version: str | None = None,
    inline_certs: bool = True,
    legacy_san_matcher: bool = False,
    concurrency: int = 1,
) -> dict[str, Any]:
    """A complete Envoy bootstrap (a JSON-able dict) for a Connect sidecar of ``service_name``.

    Arguments:
      admin_port: Envoy admin on ``127.0.0.1:admin_port`` (``0``: let the kernel choose; ``EnvoyProcess`` then
        reads the real port from ``--admin-address-path``).
      service_name, datacenter, trust_domain: identity of the proxied service. ``cert_file``/``key_file``
        must hold a leaf for ``spiffe://<trust_domain>/ns/default/dc/<datacenter>/svc/<service_name>`` and
        ``ca_file`` the roots (PEM; several roots may be concatenated).
      inbound_port / local_app_port: the public mTLS listener and the local application it forwards to. Pass
        ``None`` for both to build a client-only proxy without a public listener. ``0`` binds an ephemeral
        port (see ``EnvoyProcess.listener_ports``); listener names then keep the ``:0`` they were given.
      upstreams: dicts with ``service``, ``local_port`` (plaintext listener on ``bind_address``; 0 allowed),
        ``endpoints`` (list of ``(host, port)`` of the upstream's mTLS ports) and optionally ``datacenter``
        (defaults to ``datacenter``; it selects both the SNI and the expected SPIFFE URI) and
        ``trust_domain``.
      allowed_sources / denied_sources / default_allow: L4 intentions for this service (source service names
        or ``*``) and the default intention policy; alternatively ``intentions`` as a Consul ``Sources`` list
        (``[{"Name": ..., "Action": "allow"|"deny"}]``), which then takes precedence.
      tls_min_version / tls_max_version: Envoy TLS version enums (``TLSv1_2``, ``TLSv1_3``) or None for
        Envoy's default; applied to both directions.
      inline_certs: inline PEMs like Consul's xDS (True) or reference the files by absolute path (False).
      legacy_san_matcher: emit Consul's literal (deprecated) ``match_subject_alt_names`` instead of the
        typed form.
      concurrency: Envoy worker threads. A bootstrap cannot set it (it is the ``--concurrency`` flag), so it
        is recorded under ``node.metadata.concurrency``, which ``EnvoyProcess`` uses unless told otherwise.
    """
    if (inbound_port is None) != (local_app_port is None):
        raise ValueError("inbound_port and local_app_port go together (both None for a client-only proxy)")
    common = _common_tls_context(
        cert_file,
        key_file,
        ca_file,
        tls_min_version=tls_min_version,
        tls_max_version=tls_max_version,
        inline=inline_certs,
    )
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    if inbound_port is not None and local_app_port is not None:
        ixns = list(intentions) if intentions is not None else intentions_from_lists(allowed_sources, denied_sources)
        rbac = rbac_network_filter(ixns, default_allow=default_allow, trust_domain=trust_domain)
        listeners.append(
            public_listener(bind_address=bind_address, port=inbound_port, rbac_filter=rbac, common_tls_context=common)
        )
        clusters.append(local_app_cluster(local_app_host, local_app_port))
    for up in upstreams:
        svc = str(up["service"])
        dc = str(up.get("datacenter") or datacenter)
        td = str(up.get("trust_domain") or trust_domain)
        name = upstream_sni(svc, dc, td)
        endpoints = [(str(h), int(p)) for h, p in up["endpoints"]]
        if not endpoints:
            raise ValueError(f"upstream {svc!r} has no endpoints")
        listeners.append(
            upstream_listener(
                service=svc,
                datacenter=dc,
                bind_address=bind_address,
                port=int(up["local_port"]),
                cluster=name,
            )
        )
        clusters.append(
            upstream_cluster(
                name=name,
                spiffe_uri=spiffe_service_uri(td, dc, svc),
                endpoints=endpoints,
                common_tls_context=common,
                legacy_san_matcher=legacy_san_matcher,
            )
        )
    return {
        # command/connect/envoy bootstrap: node.cluster = service, node.id = the proxy's service ID.
        "node": {
            "id": f"{service_name}-sidecar-proxy",
            "cluster": service_name,
            "metadata": {"namespace": "default", "partition": "default", "concurrency": concurrency},
        },
        "admin": {"address": _socket_address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_bootstrap(config: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a bootstrap as JSON (``envoy -c`` picks the format from the ``.json`` suffix)."""
    p = Path(path)
    if p.suffix != ".json":
        raise ValueError(f"{p}: use a .json file name so Envoy parses it as JSON")
    p.write_text(json.dumps(config, indent=2) + "\n")
    return p


# ----------------------------------------------------------------------------------------------------
# Running Envoy


class EnvoyError(RuntimeError):
    """Envoy failed to start or to become ready; the message carries the tail of its log."""


def envoy_binary() -> str:
    """Path of the ``envoy`` binary: ``$PATH`` first, then the bin directory next to ``sys.executable``.

    Raises FileNotFoundError when neither has one.
    """
    found = shutil.which("envoy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError("envoy binary not found on PATH nor next to the Python interpreter")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (for processes that cannot bind port 0 and report it)."""
    if host == "127.0.0.1":
        try:  # in the tests: the same per-worker port slices as every other test helper
            from mesh import free_port as slice_port

            return slice_port()
        except ImportError:
            pass  # the bench imports this module without tests/ on the path
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_base_ids = itertools.count(0)


class EnvoyProcess:
    """One Envoy subprocess for a bootstrap file.

    ``start()`` launches ``envoy -c CONFIG --concurrency N --disable-hot-restart --log-path LOG`` (N: the
    ``concurrency`` argument, else the bootstrap's ``node.metadata.concurrency``, else 1) and waits until the
    admin endpoint's ``/ready`` says ``LIVE`` and every static listener is bound; ``stop()`` sends SIGTERM
    (SIGKILL after a grace period). Usable as a context manager. Hot restart is disabled, so several
    instances never compete for a shared-memory base id (a unique ``--base-id`` is passed all the same).
    Logs: ``<workdir>/<name>.envoy.log`` (Envoy's log) and ``<name>.envoy.out`` (stdout/stderr).
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str] | None = None,
        concurrency: int | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        name: str | None = None,
    ):
        self.config_path = Path(config_path)
        self.workdir = Path(workdir) if workdir else self.config_path.parent
        self.name = name or self.config_path.stem
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"{self.name}.envoy.log"
        self.stdout_path = self.workdir / f"{self.name}.envoy.out"
        self.admin_address_path = self.workdir / f"{self.name}.admin-address"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin: tuple[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        config = json.loads(self.config_path.read_text())
        concurrency = self.concurrency
        if concurrency is None:
            concurrency = int(config.get("node", {}).get("metadata", {}).get("concurrency", 1))
        with contextlib.suppress(FileNotFoundError):
            self.admin_address_path.unlink()
        argv = [
            envoy_binary(),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(concurrency),
            "--disable-hot-restart",
            "--base-id",
            str(os.getpid() * 100 + next(_base_ids)),  # irrelevant with hot restart off; unique anyway
            "--log-path",
            str(self.log_path),
            "-l",
            self.log_level,
            "--admin-address-path",
            str(self.admin_address_path),
            *self.extra_args,
        ]
        out = self.stdout_path.open("wb")
        try:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        finally:
            out.close()
        try:
            self._wait_ready(config, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, config: Mapping[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        expected = [ln["name"] for ln in config.get("static_resources", {}).get("listeners", [])]
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_alive()
            if self.admin is None:
                text = self.admin_address_path.read_text().strip() if self.admin_address_path.exists() else ""
                if text:
                    host, _, port = text.rpartition(":")
                    self.admin = (host, int(port))
            if self.admin is not None:
                try:
                    status, body = self._get("/ready")
                    last = f"/ready {status} {body.strip()!r}"
                    if status == 200 and body.strip() == "LIVE":
                        ports = self.listener_ports()
                        missing = [n for n in expected if not ports.get(n)]
                        if not missing:
                            return
                        last = f"listeners not bound yet: {missing}"
                except OSError as e:
                    last = f"admin: {e}"
            time.sleep(0.05)
        raise EnvoyError(f"envoy {self.name} not ready within {timeout}s ({last})\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise EnvoyError(f"envoy {self.name} exited with {self.proc.returncode}\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if Envoy has not exited after ``grace`` seconds. Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)

    def __enter__(self) -> EnvoyProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin ----------------------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        if self.admin is None:
            raise EnvoyError(f"envoy {self.name} has no admin address yet")
        return f"http://{self.admin[0]}:{self.admin[1]}"

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def listener_ports(self) -> dict[str, int]:
        """Listener name -> bound port, from ``/listeners?format=json`` (resolves port 0)."""
        status, body = self._get("/listeners?format=json")
        if status != 200:
            return {}
        out: dict[str, int] = {}
        for ls in json.loads(body).get("listener_statuses", []):
            port = ls.get("local_address", {}).get("socket_address", {}).get("port_value")
            if port:
                out[ls["name"]] = int(port)
        return out

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from ``/stats`` (optionally ``?filter=REGEX``) as ``{name: value}``."""
        path = "/stats"
        if filter_regex:
            path += "?filter=" + urllib.parse.quote(filter_regex, safe="")
        status, body = self._get(path)
        if status != 200:
            raise EnvoyError(f"envoy {self.name} /stats answered {status}: {body[:200]}")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str) -> int:
        """One counter/gauge by exact name (0 when Envoy has not created it)."""
        return self.stats("^" + name.replace(".", r"\.") + "$").get(name, 0)

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for p in (self.stdout_path, self.log_path):
            if p.exists():
                chunks.append(f"--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)


# ----------------------------------------------------------------------------------------------------
# protocol = "http": HTTP connection managers instead of tcp_proxy (added for the HTTP interop tests and bench)
#
# What Consul serves for a service or upstream whose protocol is http (hashicorp/consul):
# * The filter chain is one ``envoy.filters.network.http_connection_manager`` (listeners.go makeHTTPFilter):
#   ``codec_type: AUTO``, ``stat_prefix`` = the listener's filter name (``public_listener`` inbound), the
#   http filters ``[authz..., envoy.filters.http.router]``, and ``tracing: {random_sampling: {value: 0}}``
#   (trace only what the application already samples). Inbound the route is a static ``route_config`` named
#   like the listener with one virtual host (``domains: ["*"]``) and one route ``prefix: "/"`` to
#   ``local_app``; upstream listeners get their routes over RDS (``useRDS``), which a static bootstrap
#   inlines the same way (one catch-all route to the upstream's cluster, what a chain without router compiles
#   to).
# * On the public listener the RBAC moves from the network filter to the HTTP filter
#   ``envoy.filters.http.rbac`` placed first (makeRBACHTTPFilter, no stat_prefix: its stats are
#   ``http.public_listener.rbac.*``); the rules for L4 intentions are the same as the network filter's
#   (makeRBACRules with isHTTP: L4 sources still form the ``consul-intentions-layer4`` policy).
# * Inbound, unless the mesh entry sets ``HTTP.SanitizeXForwardedClientCert``, the HCM forwards client
#   certificate details: ``forward_client_cert_details: APPEND_FORWARD`` with
#   ``set_current_client_cert_details`` {subject, cert, chain, dns, uri} (listeners.go makeInboundListener).
# * WebSocket upgrades: ``upgrade_configs: [{upgrade_type: websocket}]`` on the HCM, which Consul enables
#   explicitly since hashicorp/consul#18150 ("Explicitly enable WebSocket upgrades", issue #8283).

TYPE_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TYPE_HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TYPE_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def rbac_http_filter(rules: Mapping[str, Any]) -> dict[str, Any]:
    """``envoy.filters.http.rbac`` with the given rules (rbac.go makeRBACHTTPFilter)."""
    return {"name": "envoy.filters.http.rbac", "typed_config": {"@type": TYPE_HTTP_RBAC, "rules": dict(rules)}}


def http_connection_manager(
    *,
    stat_prefix: str,
    route_name: str,
    cluster: str,
    authz_filters: Sequence[Mapping[str, Any]] = (),
    forward_client_cert: bool = False,
    websocket: bool = True,
) -> dict[str, Any]:
    """The HCM Consul builds (listeners.go makeHTTPFilter) with an inlined catch-all route to ``cluster``."""
    cfg: dict[str, Any] = {
        "@type": TYPE_HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "http_filters": [
            *(dict(f) for f in authz_filters),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": TYPE_ROUTER}},
        ],
        "tracing": {"random_sampling": {"value": 0}},
        "route_config": {
            "name": route_name,
            "virtual_hosts": [
                {
                    "name": route_name,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ],
        },
    }
    if websocket:
        cfg["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    if forward_client_cert:
        cfg["forward_client_cert_details"] = "APPEND_FORWARD"
        cfg["set_current_client_cert_details"] = {
            "subject": True,
            "cert": True,
            "chain": True,
            "dns": True,
            "uri": True,
        }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def http_sidecar_bootstrap(**kwargs: Any) -> dict[str, Any]:
    """``sidecar_bootstrap`` (same arguments) for a service and upstreams whose protocol is ``http``.

    The listeners, clusters, TLS and RBAC rules are the TCP bootstrap's; each listener's filters become the HTTP
    connection manager Consul uses for ``protocol = "http"`` (see the comment above): the public listener's
    network RBAC turns into the HTTP RBAC filter with the same rules, and each tcp_proxy into an HCM routing
    everything to the same cluster.
    """
    boot = sidecar_bootstrap(**kwargs)
    for listener in boot["static_resources"]["listeners"]:
        chain = listener["filter_chains"][0]
        filters = chain["filters"]
        tcp = filters[-1]["typed_config"]
        if listener["traffic_direction"] == "INBOUND":
            rules = filters[0]["typed_config"]["rules"]
            chain["filters"] = [
                http_connection_manager(
                    stat_prefix="public_listener",
                    route_name="public_listener",
                    cluster=tcp["cluster"],
                    authz_filters=[rbac_http_filter(rules)],
                    forward_client_cert=True,
                )
            ]
        else:
            service = listener["name"].split(":", 1)[0]
            chain["filters"] = [
                http_connection_manager(stat_prefix=f"upstream.{service}", route_name=service, cluster=tcp["cluster"])
            ]
    return boot


# ----------------------------------------------------------------------------------------------------
# protocol = "http2" / "grpc" (http2-grpc.md §2, from hashicorp/consul agent/xds):
# * HCM as for http plus ``http2_protocol_options: {}`` (makeHTTPFilter, for http2 and grpc).
# * grpc only: filters ``[grpc_stats (stats_for_all_methods), grpc_http1_bridge, rbac, router]`` and no XFCC (the
#   HCM default, SANITIZE); http2 keeps XFCC APPEND_FORWARD as http does.
# * The public listener's DownstreamTlsContext offers ALPN ``["h2", "http/1.1"]`` (getAlpnProtocols).
# * ``local_app`` and the upstream clusters get explicit HTTP/2: typed_extension_protocol_options
#   ``envoy.extensions.upstreams.http.v3.HttpProtocolOptions {explicit_http_config {http2_protocol_options {}}}``
#   (clusters.go setHttp2ProtocolOptions): h2c to the app, h2 over mTLS between sidecars, no ALPN configured on the
#   UpstreamTlsContext (Envoy's HTTP/2 pool then offers ``h2``).

TYPE_GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
TYPE_GRPC_BRIDGE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
TYPE_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_sidecar_bootstrap(protocol: str, **kwargs: Any) -> dict[str, Any]:
    """``http_sidecar_bootstrap`` (same arguments) for ``protocol`` ``http2`` or ``grpc``, as Consul configures it."""
    import copy

    if protocol not in ("http2", "grpc"):
        raise ValueError(f"protocol {protocol!r}: expected http2 or grpc")
    boot = http_sidecar_bootstrap(**kwargs)
    for listener in boot["static_resources"]["listeners"]:
        chain = listener["filter_chains"][0]
        hcm = chain["filters"][0]["typed_config"]
        hcm["http2_protocol_options"] = {}
        if protocol == "grpc":
            hcm.pop("forward_client_cert_details", None)
            hcm.pop("set_current_client_cert_details", None)
            hcm["http_filters"] = [
                {
                    "name": "envoy.filters.http.grpc_stats",
                    "typed_config": {"@type": TYPE_GRPC_STATS, "stats_for_all_methods": True},
                },
                {"name": "envoy.filters.http.grpc_http1_bridge", "typed_config": {"@type": TYPE_GRPC_BRIDGE}},
                *hcm["http_filters"],
            ]
        if listener["traffic_direction"] == "INBOUND":
            tls = chain["transport_socket"]["typed_config"]
            tls["common_tls_context"] = copy.deepcopy(tls["common_tls_context"])
            tls["common_tls_context"]["alpn_protocols"] = ["h2", "http/1.1"]
    for cluster in boot["static_resources"]["clusters"]:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return boot
