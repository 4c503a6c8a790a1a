"""Scalar parsers and the problem-collecting reader every config section uses: one line per problem,
``FILE: key.path: what is wrong (expected ...)``, all problems of a file reported together."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.problems import Problems

T = TypeVar("T")

SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_-]{0,62}[a-zA-Z0-9])?$")

PROTOCOLS = ("tcp", "http", "http2", "grpc")
# Consul's IsProtocolHTTPLike (http2-grpc.md §1.1).
HTTP_LIKE = ("http", "http2", "grpc")

MODES = ("sidecar", "mesh-gateway", "ingress-gateway", "terminating-gateway")

# consul.md §6: "" defers to the next layer; meshgw's last layer is "none" (dial the target directly).
MESH_GATEWAY_MODES = ("none", "local", "remote")

HEALTH_STATES = ("passing", "warning", "critical")


class ConfigError(Exception):
    """One or more problems in a file, each already formatted as a one-line message."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# Go's time.ParseDuration, as Consul, Nomad and Vault read every duration (``1m30s``, ``250ms``, ``1.5h``), plus
# ``d`` for days, which meshgw configs have used for certificate TTLs.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_DURATION_HINT = "expected a duration such as 500ms, 30s, 1m30s or 72h"


def parse_duration(value: Any) -> float:
    """A Go duration string; a bare number is refused (``500`` could be seconds or milliseconds), except 0."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration ({_DURATION_HINT})")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{value!r} has no unit ({_DURATION_HINT})")
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration ({_DURATION_HINT})")
    s = value.strip()
    if s.startswith("-"):
        raise ValueError("must not be negative")
    s = s.removeprefix("+")
    if s == "0":
        return 0.0
    if re.fullmatch(r"\d+(?:\.\d*)?", s):
        raise ValueError(f"{value!r} has no unit ({_DURATION_HINT})")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{value!r} is not a duration ({_DURATION_HINT})")
    return total


def parse_address(value: Any) -> Address:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (expected host:port, e.g. 127.0.0.1:9191)")
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]]+):(\d+)$", value)
    if not m:
        raise ValueError(f"{value!r} is not an address (expected host:port, e.g. 127.0.0.1:9191)")
    port = int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (expected 0-65535)")
    return Address(m.group(1), port)


def parse_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (expected an integer 1-65535)")
    return value


def parse_service_name(value: Any) -> str:
    if not isinstance(value, str) or not SERVICE_NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a service name (expected letters, digits, '-' or '_', at most 64 characters)"
        )
    return value


def parse_host(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a host (expected an IP address or host name)")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", value):
            raise ValueError(f"{value!r} is not a host (expected an IP address or host name)") from None
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed (expected one of: {', '.join(options)})")
        return value

    return parse


def is_http_like(protocol: str) -> bool:
    """The one test of "requests are seen one by one" (L7 intentions, routes, splits, retries, access logs, HTTP
    metrics): Consul's IsProtocolHTTPLike (C:agent/structs/config_entry_discoverychain.go; http2-grpc.md §1.1)."""
    return protocol in HTTP_LIKE


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


class _Reader(Problems):
    """meshgw.yaml's reader (gateway/problems.py): exact snake_case keys, every problem of the file collected."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def _trust_domain(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", value.lower()):
        raise ValueError(f"{value!r} is not a trust domain (expected a DNS-like name such as example.consul)")
    return value.lower()


def _log_level(value: Any) -> str:
    # HashiCorp's names (hclog: trace, debug, info, warn, error; any case) and Python's ``warning``.
    levels = ("trace", "debug", "info", "warn", "warning", "error")
    if not isinstance(value, str) or value.lower() not in levels:
        raise ValueError(f"{value!r} is not a log level (expected one of: trace, debug, info, warn, error)")
    return value.lower()


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not a boolean (expected true or false)")


def _env_bool(value: str | None) -> bool | None:
    # Go's strconv.ParseBool, as Consul's client reads CONSUL_HTTP_SSL (consul.md §10).
    if value is None or value == "":
        return None
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value
