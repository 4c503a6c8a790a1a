"""The typed meshgw configuration: parsed and validated once, at load.

Nothing else in meshgw reads the YAML file or the environment for settings. Every
problem is reported as one line, ``FILE: key.path: what is wrong (expected ...)``,
and all problems of a file are reported together so an operator fixes them in one go.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_-]{0,62}[a-zA-Z0-9])?$")
PROTOCOLS = ("tcp", "http")
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


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    id: str
    address: str
    port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class InboundConfig:
    bind: Address
    connect_timeout: float = 5.0


@dataclass(frozen=True)
class UpstreamConfig:
    service: str
    bind: Address
    datacenter: str | None = None
    protocol: str = "tcp"
    connect_timeout: float = 5.0


@dataclass(frozen=True)
class LocalControlPlaneConfig:
    catalog: Path | None = None
    intentions: Path | None = None
    poll_interval: float = 0.5


@dataclass(frozen=True)
class ControlPlaneConfig:
    type: str = "local"
    local: LocalControlPlaneConfig = field(default_factory=LocalControlPlaneConfig)
    # Consul's agent setting of the same name: what happens when no intention matches.
    default_intention_policy: str = "deny"


@dataclass(frozen=True)
class BuiltinCAConfig:
    dir: Path
    trust_domain: str | None = None
    leaf_ttl: float = 72 * 3600.0


@dataclass(frozen=True)
class CertificatesConfig:
    type: str = "builtin"
    builtin: BuiltinCAConfig | None = None


@dataclass(frozen=True)
class AdminConfig:
    bind: Address = Address("127.0.0.1", 19000)


@dataclass(frozen=True)
class Config:
    path: Path
    datacenter: str
    mode: str
    service: ServiceConfig
    inbound: InboundConfig | None
    upstreams: tuple[UpstreamConfig, ...]
    control_plane: ControlPlaneConfig
    certificates: CertificatesConfig
    admin: AdminConfig
    drain_timeout: float = 15.0
    log_level: str = "info"

    def to_public_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (no secrets are ever part of it)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        if isinstance(value, Address):
            return str(value)
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- scalar parsers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30s``, ``500ms``, ``72h``, ``1.5m`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 72h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (expected e.g. 500ms, 30s, 5m, 72h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


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


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


# --------------------------------------------------------------------------- the reader


class _Reader:
    """Walks a YAML mapping, collecting problems with their key paths instead of raising at the first."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, msg: str) -> None:
        self.problems.append(f"{self.path}: {key}: {msg}")

    def mapping(self, data: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.problem(key, f"expected a mapping, got {type(data).__name__}")
            return {}
        for k in data:
            if k not in allowed:
                self.problem(f"{key}.{k}" if key else str(k), f"unknown key (expected one of: {', '.join(allowed)})")
        return data

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        name: str,
        parse: Callable[[Any], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        full = f"{key}.{name}" if key else name
        if name not in data or data[name] is None:
            if required:
                self.problem(full, "is required")
            return default
        try:
            return parse(data[name])
        except ValueError as e:
            self.problem(full, str(e))
            return default


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError with every problem found."""
    path = Path(path)
    try:
        raw_text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read file: {e.strerror or e}"]) from None
    try:
        data = yaml.safe_load(raw_text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{path}: {where}invalid YAML: {reason}"]) from None
    return parse_config(data, path)


def parse_config(data: Any, path: Path) -> Config:
    r = _Reader(path)
    base = path.parent
    top = r.mapping(
        data,
        "",
        (
            "datacenter",
            "mode",
            "service",
            "inbound",
            "upstreams",
            "control_plane",
            "certificates",
            "admin",
            "drain_timeout",
            "log_level",
        ),
    )
    if data is None or (isinstance(data, Mapping) and not data):
        raise ConfigError([f"{path}: file is empty (expected a meshgw config mapping with at least 'service')"])
    if not isinstance(data, Mapping):
        raise ConfigError(r.problems)

    datacenter = r.get(top, "", "datacenter", text, "dc1") or "dc1"
    mode = r.get(top, "", "mode", choice("sidecar"), "sidecar") or "sidecar"
    drain_timeout = r.get(top, "", "drain_timeout", parse_duration, 15.0) or 0.0
    log_level = r.get(top, "", "log_level", choice("debug", "info", "warning", "error"), "info") or "info"

    s = r.mapping(top.get("service"), "service", ("name", "id", "address", "port", "protocol"))
    if "service" not in top:
        r.problem("service", "is required (the service this sidecar fronts: name, address, port)")
    sname = r.get(s, "service", "name", parse_service_name, required="service" in top) or "invalid"
    service = ServiceConfig(
        name=sname,
        id=r.get(s, "service", "id", text, None) or f"{sname}-sidecar-proxy",
        address=r.get(s, "service", "address", parse_host, "127.0.0.1") or "127.0.0.1",
        port=r.get(s, "service", "port", parse_port, required="service" in top) or 1,
        protocol=r.get(s, "service", "protocol", choice(*PROTOCOLS), "tcp") or "tcp",
    )

    inbound = None
    if top.get("inbound") is not None:
        i = r.mapping(top.get("inbound"), "inbound", ("bind", "connect_timeout"))
        inbound = InboundConfig(
            bind=r.get(i, "inbound", "bind", parse_address, required=True) or Address("0.0.0.0", 0),
            connect_timeout=r.get(i, "inbound", "connect_timeout", parse_duration, 5.0) or 5.0,
        )

    upstreams: list[UpstreamConfig] = []
    raw_ups = top.get("upstreams") or []
    if not isinstance(raw_ups, list):
        r.problem("upstreams", f"expected a list of upstreams, got {type(raw_ups).__name__}")
        raw_ups = []
    binds: dict[Address, str] = {}
    for n, raw in enumerate(raw_ups):
        key = f"upstreams[{n}]"
        u = r.mapping(raw, key, ("service", "bind", "datacenter", "protocol", "connect_timeout"))
        up = UpstreamConfig(
            service=r.get(u, key, "service", parse_service_name, required=True) or "invalid",
            bind=r.get(u, key, "bind", parse_address, required=True) or Address("127.0.0.1", 0),
            datacenter=r.get(u, key, "datacenter", text, None),
            protocol=r.get(u, key, "protocol", choice(*PROTOCOLS), "tcp") or "tcp",
            connect_timeout=r.get(u, key, "connect_timeout", parse_duration, 5.0) or 5.0,
        )
        if up.bind.port and up.bind in binds:
            r.problem(f"{key}.bind", f"{up.bind} is already used by {binds[up.bind]} (expected a unique address)")
        binds[up.bind] = key
        upstreams.append(up)
    if inbound is not None and inbound.bind.port and inbound.bind in binds:
        r.problem("inbound.bind", f"{inbound.bind} is also used by {binds[inbound.bind]}")

    cp = r.mapping(top.get("control_plane"), "control_plane", ("type", "local", "default_intention_policy"))
    cp_type = r.get(cp, "control_plane", "type", choice("local"), "local") or "local"
    lo = r.mapping(cp.get("local"), "control_plane.local", ("catalog", "intentions", "poll_interval"))
    local = LocalControlPlaneConfig(
        catalog=_resolve(base, c) if (c := r.get(lo, "control_plane.local", "catalog", text)) else None,
        intentions=_resolve(base, c) if (c := r.get(lo, "control_plane.local", "intentions", text)) else None,
        poll_interval=r.get(lo, "control_plane.local", "poll_interval", parse_duration, 0.5) or 0.5,
    )
    control_plane = ControlPlaneConfig(
        type=cp_type,
        local=local,
        default_intention_policy=r.get(cp, "control_plane", "default_intention_policy", choice("allow", "deny"), "deny")
        or "deny",
    )

    c = r.mapping(top.get("certificates"), "certificates", ("type", "builtin"))
    ctype = r.get(c, "certificates", "type", choice("builtin"), "builtin") or "builtin"
    builtin = None
    if ctype == "builtin":
        b = r.mapping(c.get("builtin"), "certificates.builtin", ("dir", "trust_domain", "leaf_ttl"))
        bdir = r.get(b, "certificates.builtin", "dir", text, required=True)
        ttl = r.get(b, "certificates.builtin", "leaf_ttl", parse_duration, 72 * 3600.0) or 72 * 3600.0
        if ttl < 2:
            r.problem("certificates.builtin.leaf_ttl", f"{ttl}s is too short (expected at least 2s)")
        builtin = BuiltinCAConfig(
            dir=_resolve(base, bdir or "."),
            trust_domain=r.get(b, "certificates.builtin", "trust_domain", _trust_domain, None),
            leaf_ttl=ttl,
        )
    certificates = CertificatesConfig(type=ctype, builtin=builtin)

    a = r.mapping(top.get("admin"), "admin", ("bind",))
    admin = AdminConfig(bind=r.get(a, "admin", "bind", parse_address, Address("127.0.0.1", 19000)))  # type: ignore[arg-type]

    if inbound is None and not upstreams:
        r.problem("inbound", "a sidecar needs an inbound listener or at least one upstream (expected inbound.bind)")

    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        path=path,
        datacenter=datacenter,
        mode=mode,
        service=service,
        inbound=inbound,
        upstreams=tuple(upstreams),
        control_plane=control_plane,
        certificates=certificates,
        admin=admin,
        drain_timeout=drain_timeout,
        log_level=log_level,
    )


def _trust_domain(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", value.lower()):
        raise ValueError(f"{value!r} is not a trust domain (expected a DNS-like name such as example.consul)")
    return value.lower()
