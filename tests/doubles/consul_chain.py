"""Central protocol resolution of the Consul double (test support): what the agent merges into a sidecar's
``Proxy.Config`` and what ``/v1/discovery-chain/<svc>`` compiles (http2-grpc.md §1.2, §1.4, §1.5).

Entries are read as stored (keys case-insensitive, as Consul decodes them with mapstructure); protocols are
lower-cased, never validated (Consul stores unknown values too, http2-grpc.md §1.1).
"""

from __future__ import annotations

from typing import Any

from doubles.consul_state import ApiError

HTTP_LIKE = ("http", "http2", "grpc")  # C:agent/structs/config_entry_discoverychain.go IsProtocolHTTPLike


def field(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == name.lower():
            return v
    return None


def merged_proxy_config(entries: dict[tuple[str, str], dict[str, Any]], svc: dict[str, Any]) -> dict[str, Any] | None:
    """A connect-proxy's ``Proxy.Config`` as the agent stores it: proxy-defaults' Config with service-defaults'
    Protocol (of ``DestinationServiceName``) over it (C:agent/configentry/resolve.go ComputeResolvedServiceConfig),
    merged under the registration's own keys, which win (mergo.Merge without override,
    C:agent/configentry/merge_service_config.go MergeServiceConfig). None: no Config at all."""
    proxy = svc.get("Proxy") or {}
    own = proxy.get("Config")
    if svc.get("Kind") != "connect-proxy":
        return own
    defaults = dict(field(entries.get(("proxy-defaults", "global")), "Config") or {})
    sd = entries.get(("service-defaults", proxy.get("DestinationServiceName") or ""))
    if field(sd, "Protocol"):
        defaults["protocol"] = str(field(sd, "Protocol")).lower()
    merged = {**defaults, **(own or {})}
    return merged or None


def chain_protocol(entries: dict[tuple[str, str], dict[str, Any]], service: str) -> str:
    """C:agent/consul/discoverychain/compile.go recordServiceProtocol: the service's service-defaults Protocol when
    that entry exists (empty: tcp, hashicorp/consul#11457), else proxy-defaults' protocol, else tcp."""
    sd = entries.get(("service-defaults", service))
    if sd is not None:
        return str(field(sd, "Protocol") or "tcp").lower()
    config = field(entries.get(("proxy-defaults", "global")), "Config")
    return str(field(config, "protocol") or "tcp").lower()


def compile_chain(
    entries: dict[tuple[str, str], dict[str, Any]],
    service: str,
    datacenter: str,
    trust_domain: str,
    override_protocol: str = "",
) -> dict[str, Any]:
    """``{"Chain": {...}}`` as /v1/discovery-chain answers, for a chain without redirects (the double compiles the
    start resolver only). Routers/splitters on a non-HTTP chain fail as Consul's compiler does (HTTP 500), unless
    the caller overrides the protocol, which drops them (http2-grpc.md §1.4)."""
    protocol = override_protocol.lower() or chain_protocol(entries, service)
    routed = any((kind, service) in entries for kind in ("service-router", "service-splitter"))
    if routed and protocol not in HTTP_LIKE and not override_protocol:
        raise ApiError(
            500,
            f'discovery chain "{service}" uses a protocol "{protocol}" that does not permit advanced routing or '
            "splitting behavior",
        )
    target = f"{service}.default.default.{datacenter}"
    resolver = entries.get(("service-resolver", service))
    connect_timeout = str(field(resolver, "ConnectTimeout") or "5s")
    node = f"resolver:{target}"
    custom = routed and protocol in HTTP_LIKE
    return {
        "Chain": {
            "ServiceName": service,
            "Namespace": "default",
            "Partition": "default",
            "Datacenter": datacenter,
            "CustomizationHash": "",
            "Default": resolver is None and not custom,
            "Protocol": protocol,
            "ServiceMeta": {},
            "EnvoyExtensions": None,
            "StartNode": node,
            "Nodes": {
                node: {
                    "Type": "resolver",
                    "Name": target,
                    "Resolver": {"ConnectTimeout": connect_timeout, "Default": resolver is None, "Target": target},
                }
            },
            "Targets": {
                target: {
                    "ID": target,
                    "Service": service,
                    "ServiceSubset": "",
                    "Namespace": "default",
                    "Partition": "default",
                    "Datacenter": datacenter,
                    "MeshGateway": {},
                    "Subset": {},
                    "ConnectTimeout": connect_timeout,
                    "SNI": f"{service}.default.{datacenter}.internal.{trust_domain}",
                    "Name": f"{service}.default.{datacenter}.internal.{trust_domain}",
                }
            },
        }
    }
