"""Graceful maintenance in Envoy's spirit: ``POST /healthcheck/fail`` (and ``/healthcheck/ok``) turn /ready to
503 so Consul's check (and any load balancer) takes the proxy out; ``POST /drain_listeners`` stops accepting.

These change what the proxy serves, so they answer loopback callers only unless the config says
``admin.allow_remote_maintenance: true``, and never a browser request sent by another site (a page elsewhere
could otherwise make a local browser POST here)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Maintenance:
    """What an operator has asked for; mutable on purpose (one per process, read by /ready)."""

    healthcheck_failed: bool = False
    drained: list[str] = field(default_factory=list)  # listener names no longer accepting

    def not_ready(self) -> str | None:
        if self.drained:
            return "listeners drained by an operator (POST /drain_listeners)"
        if self.healthcheck_failed:
            return "health check failed by an operator (POST /healthcheck/fail)"
        return None


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def refusal(
    remote: str | None, host: str | None, origin: str | None, fetch_site: str | None, allow_remote: bool
) -> str | None:
    """Why a maintenance POST is refused (one line), or None when it may go ahead."""
    if not allow_remote and not is_loopback(remote):
        return "maintenance endpoints answer loopback callers only (admin.allow_remote_maintenance is false)"
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return "cross-site requests are refused"
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != (host or ""):
            return "cross-site requests are refused"
    elif origin == "null":
        return "cross-site requests are refused"
    return None
