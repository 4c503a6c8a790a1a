"""The access log's field names: one list, the core's (it renders the records), offered by the configuration."""

from __future__ import annotations

from gateway import _core
from gateway.config.http import ACCESS_LOG_FIELDS, DEFAULT_ACCESS_LOG_FIELDS


def test_the_configuration_offers_the_cores_fields() -> None:
    names, defaults = _core.access_log_fields()
    assert (ACCESS_LOG_FIELDS, DEFAULT_ACCESS_LOG_FIELDS) == (tuple(names), tuple(defaults))
    assert set(defaults) <= set(names)
    assert len(set(names)) == len(names)
    # What the README documents beside the defaults.
    assert {"upstream_service_time_ms", "authority", "user_agent", "grpc_status"} <= set(names) - set(defaults)
