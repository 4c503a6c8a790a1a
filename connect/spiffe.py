"""SPIFFE IDs and Consul SNI names (consul.md §5; C:agent/connect/uri_service.go, C:agent/connect/sni.go)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceID:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str
    partition: str = "default"

    @property
    def uri(self) -> str:
        return service_uri(self.trust_domain, self.datacenter, self.service, self.namespace, self.partition)


def service_uri(
    trust_domain: str, datacenter: str, service: str, namespace: str = "default", partition: str = "default"
) -> str:
    # A non-default partition prefixes the path with /ap/<partition> (C:agent/connect/uri_service.go).
    prefix = f"/ap/{partition}" if partition and partition != "default" else ""
    return f"spiffe://{trust_domain}{prefix}/ns/{namespace or 'default'}/dc/{datacenter}/svc/{service}"


def parse_service_uri(uri: str) -> ServiceID | None:
    """The service identity in a leaf's URI SAN, or None for anything that is not a service URI."""
    if not uri.startswith("spiffe://"):
        return None
    host, _, path = uri[9:].partition("/")
    if not host:
        return None
    parts = path.split("/")
    partition = "default"
    if len(parts) == 8 and parts[0] == "ap":
        partition = parts[1]
        parts = parts[2:]
    if len(parts) != 6 or parts[0] != "ns" or parts[2] != "dc" or parts[4] != "svc":
        return None
    if not all(parts[1::2]):
        return None
    # Trust-domain comparison is case-insensitive (C:agent/connect/uri_signing.go).
    return ServiceID(host.lower(), parts[1], parts[3], parts[5], partition)


def upstream_sni(service: str, datacenter: str, trust_domain: str, namespace: str = "default") -> str:
    """``<service>.<namespace>.<dc>.internal.<trust-domain>`` (C:agent/connect/sni.go ServiceSNI)."""
    return f"{service}.{namespace or 'default'}.{datacenter}.internal.{trust_domain}"


def datacenter_sni(datacenter: str, trust_domain: str) -> str:
    return f"{datacenter}.internal.{trust_domain}"
