"""The ``http`` section of an inbound listener with an HTTP-like protocol (``http``, ``http2``, ``grpc``), as the
core's ``inbound::http`` reads it
(schema: gateway/core/src/inbound/http/mod.rs).

From meshgw.yaml: ``inbound.request_timeout`` (the route timeout, 15 s by default as in the Python path and as
Envoy's route default when Consul leaves ``local_request_timeout_ms`` unset), ``inbound.idle_timeout`` (keep-alive
connections, 1 h) and ``access_log`` (on/off, fields). From the ``mesh`` config entry (Consul's, or the local
control plane's ``config_entries``): ``HTTP.Incoming.RequestNormalization`` (l7-security.md §1.1); without one,
Consul's defaults apply (normalization on, merge off, escaped slashes kept, underscores allowed). The other bounds
(60 KiB head, 100 headers, 5 min stream idle, no header timeout) are Envoy's defaults and left to the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.snapshot import Snapshot


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _mesh_entry(cfg: Config, snap: Snapshot) -> Any:
    """The mesh entry in force: the snapshot's (Consul's watch or the local entries), else the config's."""
    entry = getattr(snap, "mesh", None)
    if entry is not None:
        return entry
    return next((e for e in reversed(cfg.config_entries) if getattr(e, "kind", "") == "mesh"), None)


def normalization(entry: Any) -> dict[str, Any]:
    """``HTTP.Incoming.RequestNormalization`` in the core's (snake_case) names; "" enums are Consul's defaults."""
    out: dict[str, Any] = {}
    rn = getattr(entry, "request_normalization", None)
    if rn is None:
        return out
    if rn.insecure_disable_path_normalization:
        out["insecure_disable_path_normalization"] = True
    if rn.merge_slashes:
        out["merge_slashes"] = True
    if rn.path_with_escaped_slashes_action:
        out["path_with_escaped_slashes_action"] = rn.path_with_escaped_slashes_action
    if rn.headers_with_underscores_action:
        out["headers_with_underscores_action"] = rn.headers_with_underscores_action
    return out


def spec(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    """The inbound listener's ``http`` section for ``snap``."""
    out: dict[str, Any] = {}
    if cfg.inbound is not None:
        out["request_timeout_ms"] = _ms(cfg.inbound.request_timeout)
        out["idle_timeout_ms"] = _ms(cfg.inbound.idle_timeout)
        out["stream_idle_timeout_ms"] = _ms(cfg.inbound.stream_idle_timeout)
    norm = normalization(_mesh_entry(cfg, snap))
    if norm:
        out["normalization"] = norm
    # Records are made only while the log is on; Python writes them with the snapshot's writer.
    out["access_log"] = {"enabled": cfg.access_log.enabled, "fields": list(cfg.access_log.fields)}
    return out
