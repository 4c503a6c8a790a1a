"""Which protocol a sidecar serves and each upstream speaks, resolved as Consul resolves them (http2-grpc.md §1).

One pure function, ``resolve_protocols``, used by the local control plane (meshgw.yaml's ``config_entries``, at
load) and by the Consul control plane (its service-defaults / proxy-defaults entries, the sidecar's registration and
each upstream's ``/v1/discovery-chain``, every time one of them changes):

- own (inbound): meshgw.yaml ``service.protocol`` > the registration's ``Proxy.Config.protocol`` >
  ``service-defaults/<service>.Protocol`` (when non-empty) > ``proxy-defaults/global`` ``Config.protocol`` > ``tcp``
  (§1.2; C:agent/configentry/resolve.go ComputeResolvedServiceConfig, merge_service_config.go MergeServiceConfig:
  the registration's keys win the non-overwriting merge, and a protocol written in the YAML is ours, so it wins too);
- upstream: meshgw.yaml ``upstreams[].protocol`` (the registration's ``Proxy.Upstreams[].Config.protocol`` with
  ``sidecar_for``) > the caller's ``service-defaults.UpstreamConfig`` (an Override naming the upstream, else Defaults)
  > the discovery chain's ``Protocol`` > ``tcp`` (§1.3; C:agent/xds/clusters.go finalizeUpstreamConfig uses the
  resolved upstream config's protocol, else Chain.Protocol).

Every value Consul stores is lower-cased; an unknown one is served as ``tcp``, as Consul's listener switch does
("Anything else is treated as tcp", C:agent/xds/config.go ParseProxyConfig), and said in one warning line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.config.reader import PROTOCOLS

if TYPE_CHECKING:
    from gateway.config.schema import Config, UpstreamConfig

# (service, datacenter) -> the discovery chain's Protocol, as /v1/discovery-chain/<service>?compile-dc= says.
ChainProtocols = Mapping[tuple[str, str], str]


def parse_protocol(value: Any) -> str:
    """A protocol written in meshgw.yaml: one of Consul's values, any case (Consul lower-cases them)."""
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return value.lower()
    raise ValueError(f"{value!r} is not allowed (expected one of: {', '.join(PROTOCOLS)})")


def consul_protocol(value: Any, where: str, warnings: list[str]) -> str:
    """A protocol as Consul stored it: lower-cased, empty as ``tcp``, an unknown one as ``tcp`` with a warning."""
    text = str(value or "").strip().lower()
    if not text:
        return "tcp"
    if text not in PROTOCOLS:
        expected = ", ".join(PROTOCOLS)
        warnings.append(f"{where}: protocol {value!r} is unknown (expected one of: {expected}): served as tcp")
        return "tcp"
    return text


def _entry(entries: Iterable[Any], kind: str, name: str) -> Any:
    found = None
    for e in entries:
        if getattr(e, "kind", "") == kind and e.name == name:
            found = e  # the last one wins: Consul's entries come after the YAML ones
    return found


def chain_protocol(service: str, entries: Iterable[Any], warnings: list[str]) -> str:
    """The chain's protocol as Consul's compiler records it: the service's service-defaults Protocol when that entry
    exists (an empty one is ``tcp``, hashicorp/consul#11457), else proxy-defaults' ``protocol``, else ``tcp``
    (C:agent/consul/discoverychain/compile.go recordServiceProtocol; http2-grpc.md §1.4)."""
    entries = tuple(entries)
    sd = _entry(entries, "service-defaults", service)
    if sd is not None:
        return consul_protocol(sd.protocol, f"service-defaults/{service}", warnings)
    pd = _entry(entries, "proxy-defaults", "global")
    return consul_protocol(pd.protocol if pd is not None else "", "proxy-defaults/global", warnings)


def own_protocol(service: str, registration: str | None, entries: Iterable[Any], warnings: list[str]) -> str:
    """What Consul merges into the sidecar's Proxy.Config.protocol (http2-grpc.md §1.2)."""
    if registration:
        return consul_protocol(registration, f"registration of {service}: Proxy.Config", warnings)
    entries = tuple(entries)
    sd = _entry(entries, "service-defaults", service)
    if sd is not None and sd.protocol:
        return consul_protocol(sd.protocol, f"service-defaults/{service}", warnings)
    pd = _entry(entries, "proxy-defaults", "global")
    return consul_protocol(pd.protocol if pd is not None else "", "proxy-defaults/global", warnings)


def upstream_protocol(
    u: UpstreamConfig, caller: str, dc: str, entries: Iterable[Any], chains: ChainProtocols | None, warnings: list[str]
) -> str:
    entries = tuple(entries)
    sd = _entry(entries, "service-defaults", caller)
    if sd is not None:
        where = f"service-defaults/{caller}: UpstreamConfig"
        for o in sd.upstream_overrides:
            if o.name == u.service and o.protocol:
                return consul_protocol(o.protocol, f"{where}.Overrides", warnings)
        if sd.upstream_defaults is not None and sd.upstream_defaults.protocol:
            return consul_protocol(sd.upstream_defaults.protocol, f"{where}.Defaults", warnings)
    if chains is not None and (u.service, dc) in chains:
        return consul_protocol(chains[(u.service, dc)], f"discovery-chain/{u.service}", warnings)
    return chain_protocol(u.service, entries, warnings)


def resolve_protocols(
    cfg: Config,
    entries: Iterable[Any],
    chains: ChainProtocols | None = None,
    registration: str | None = None,
) -> tuple[Config, tuple[str, ...]]:
    """``cfg`` with every protocol the file left unset resolved, and the warnings to log (one line each).
    ``chains``: Consul's discovery chains; without one for an upstream, its chain is compiled from ``entries``."""
    warnings: list[str] = []
    entries = tuple(entries)
    service = cfg.service
    if not service.protocol_explicit:
        protocol = own_protocol(service.name, registration, entries, warnings)
        if protocol != service.protocol:
            service = dataclasses.replace(service, protocol=protocol)
    upstreams = []
    for u in cfg.upstreams:
        if not u.protocol_explicit:
            dc = u.datacenter or cfg.datacenter
            protocol = upstream_protocol(u, cfg.service.name, dc, entries, chains, warnings)
            if protocol != u.protocol:
                u = dataclasses.replace(u, protocol=protocol)
        upstreams.append(u)
    if service == cfg.service and tuple(upstreams) == cfg.upstreams:
        return cfg, tuple(warnings)
    return dataclasses.replace(cfg, service=service, upstreams=tuple(upstreams)), tuple(warnings)


@dataclass(frozen=True)
class ProtocolFacts:
    """What Consul says about protocols (http2-grpc.md §1.5), handed from the control plane to the app: its
    service-defaults / proxy-defaults entries (parsed), each upstream's discovery-chain Protocol, and the protocol of
    a registration meshgw did not write itself (``sidecar_for``: the agent's merged ``Proxy.Config.protocol``)."""

    entries: tuple[Any, ...] = ()
    chains: tuple[tuple[tuple[str, str], str], ...] = ()
    registration: str | None = None

    def resolve(self, cfg: Config) -> tuple[Config, tuple[str, ...]]:
        return resolve_protocols(cfg, tuple(cfg.config_entries) + self.entries, dict(self.chains), self.registration)
