"""Every Consul read meshgw makes, defined once: the sidecar's control plane (connect/consul.py) and the template
sources (gateway/render_state.py) both take their paths, parameters and the CheckServiceNode decoding from here,
so that a template and the proxy beside it see the same instances (consul.md §4.1, §7.4, §2.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Consul's aggregated status (C:api/health.go AggregatedStatus): any critical check (maintenance is one, an
# unknown status counts as one) makes the instance critical, else any warning makes it warning.
HEALTH_ORDER = {"passing": 0, "warning": 1, "critical": 2}


class BlockingAPI(Protocol):
    async def blocking_get(
        self, path: str, index: int, params: Mapping[str, Any] | None = None, allow_404: bool = False
    ) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class Query:
    name: str  # the watch's name in logs and /ready ("health/connect/api")
    path: str
    params: Mapping[str, str | None]
    allow_404: bool = False

    async def fetch(self, api: BlockingAPI, index: int) -> tuple[int, Any]:
        return await api.blocking_get(self.path, index, self.params, allow_404=self.allow_404)


def _dc(dc: str | None, local_dc: str) -> dict[str, str | None]:
    return {"dc": dc if dc and dc != local_dc else None}


def health(kind: str, service: str, dc: str, local_dc: str) -> Query:
    """``/v1/health/<connect|service|ingress>/<name>``, every instance with its checks. Never ``?passing``:
    Consul keeps warning instances in Envoy's set, and templates filter by health themselves."""
    suffix = "" if dc == local_dc else f"@{dc}"
    return Query(f"health/{kind}/{service}{suffix}", f"/v1/health/{kind}/{service}", _dc(dc, local_dc))


def catalog_services(dc: str, local_dc: str) -> Query:
    return Query("catalog/services", "/v1/catalog/services", _dc(dc, local_dc))


def intentions() -> Query:
    return Query("config/service-intentions", "/v1/config/service-intentions", {})


def config_kind(kind: str) -> Query:
    return Query(f"config/{kind}", f"/v1/config/{kind}", {})


def config_entry(kind: str, name: str) -> Query:
    return Query(f"config/{kind}", f"/v1/config/{kind}/{name}", {}, allow_404=True)


def discovery_chain(service: str, dc: str, local_dc: str) -> Query:
    """``/v1/discovery-chain/<service>``: the compiled chain, whose ``Chain.Protocol`` is the upstream's protocol
    when the caller sets none (http2-grpc.md §1.3, §1.5; C:agent/discovery_chain_endpoint.go)."""
    suffix = "" if dc == local_dc else f"@{dc}"
    params = {"compile-dc": dc if dc != local_dc else None}
    return Query(f"discovery-chain/{service}{suffix}", f"/v1/discovery-chain/{service}", params)


def agent_checks() -> Query:
    """The local agent's checks with their definitions and ExposedPort (C:api/health.go HealthCheck); no blocking."""
    return Query("agent/checks", "/v1/agent/checks", {})


def roots() -> Query:
    return Query("connect/ca/roots", "/v1/agent/connect/ca/roots", {})


def leaf(service: str) -> Query:
    return Query(f"connect/ca/leaf/{service}", f"/v1/agent/connect/ca/leaf/{service}", {})


@dataclass(frozen=True)
class HealthInstance:
    """One CheckServiceNode, decoded once."""

    name: str  # the service name (a connect-proxy's destination with connect=True)
    id: str
    address: str
    port: int
    node: str
    node_datacenter: str
    health: str
    weight: int  # Weights.Warning for a warning instance, else Weights.Passing; may be 0
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]


def parse_health(entries: Any, wan: bool, connect: bool) -> tuple[HealthInstance, ...]:
    """CheckServiceNode list → instances, with Consul's BestAddress rule: the WAN address for another
    datacenter, else the LAN one (consul.md §4.1)."""
    out = []
    for e in entries or []:
        svc, node = e.get("Service") or {}, e.get("Node") or {}
        s_tag, n_tag = svc.get("TaggedAddresses") or {}, node.get("TaggedAddresses") or {}
        if wan:
            address = (s_tag.get("wan") or {}).get("Address") or svc.get("Address") or n_tag.get("wan")
            port = (s_tag.get("wan") or {}).get("Port") or svc.get("Port")
        else:
            address, port = svc.get("Address") or (s_tag.get("lan") or {}).get("Address"), svc.get("Port")
        address = address or node.get("Address")
        if not address or not port:
            continue
        worst = max((HEALTH_ORDER.get(str(c.get("Status")), 2) for c in e.get("Checks") or ()), default=0)
        status = ("passing", "warning", "critical")[worst]
        weights = svc.get("Weights") or {}
        raw = weights.get("Warning" if status == "warning" else "Passing")
        name = svc.get("Service") or ""
        if connect and svc.get("Kind") == "connect-proxy":
            name = (svc.get("Proxy") or {}).get("DestinationServiceName") or name
        out.append(
            HealthInstance(
                name=str(name),
                id=str(svc.get("ID") or ""),
                address=str(address),
                port=int(port),
                node=str(node.get("Node") or ""),
                node_datacenter=str(node.get("Datacenter") or ""),
                health=status,
                weight=int(1 if raw is None else raw),
                tags=tuple(str(t) for t in svc.get("Tags") or ()),
                meta=tuple(sorted((str(k), str(v)) for k, v in (svc.get("Meta") or {}).items())),
            )
        )
    return tuple(out)
