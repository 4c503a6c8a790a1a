"""Request decoding for the Consul double (test support): case-insensitive keys, registration validation.

Go's encoding/json matches keys case-insensitively and Consul adds snake_case aliases (consul.md §0 trap 4), so
py-consul's ``name``/``port``/``checks``/``ttl`` and Go's ``Name``/``Port``/``Checks``/``TTL`` land on the same
field. Unknown keys are dropped, as Go does. Output is Consul's PascalCase JSON (NodeService, §4.1).
"""

from __future__ import annotations

from typing import Any

from doubles.consul_state import STATUSES, ApiError, ConsulState, parse_duration

OPAQUE = object()  # keep the value as given (maps such as Meta, Proxy.Config)


def _keys(*names: str, **sub: Any) -> dict[str, tuple[str, Any]]:
    out = {n.lower(): (n, None) for n in names}
    out.update({n.lower(): (n, spec) for n, spec in sub.items()})
    return out


MODE = _keys("Mode")
EXPOSE = _keys("Checks", Paths=_keys("ListenerPort", "Path", "LocalPathPort", "Protocol", "ParsedFromCheck"))
UPSTREAM = _keys(
    "DestinationType", "DestinationNamespace", "DestinationPartition", "DestinationPeer", "DestinationName",
    "Datacenter", "LocalBindAddress", "LocalBindPort", "LocalBindSocketPath", "LocalBindSocketMode",
    "CentrallyConfigured", Config=OPAQUE, MeshGateway=MODE,
)  # fmt: skip
PROXY = _keys(
    "DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
    "LocalServiceSocketPath", "Mode", Config=OPAQUE, Upstreams=UPSTREAM, MeshGateway=MODE, Expose=EXPOSE,
    TransparentProxy=_keys("OutboundListenerPort", "DialedDirectly"),
    AccessLogs=_keys("Enabled", "DisableListenerLogs", "Type", "Path", "JSONFormat", "TextFormat"),
    EnvoyExtensions=OPAQUE,
)  # fmt: skip
CHECK = _keys(
    "CheckID", "Name", "Notes", "Status", "ScriptArgs", "DockerContainerID", "Shell", "Interval", "Timeout", "TTL",
    "HTTP", "Method", "Body", "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "GRPC", "GRPCUseTLS", "TLSServerName",
    "TLSSkipVerify", "H2PING", "H2PingUseTLS", "AliasNode", "AliasService", "OSService",
    "DeregisterCriticalServiceAfter", "SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical",
    "OutputMaxSize", Header=OPAQUE,
)  # fmt: skip
CHECK["args"] = ("ScriptArgs", None)
CHECK_REGISTRATION = {**CHECK, **_keys("ID", "ServiceID", "Token")}
SERVICE = _keys(
    "Kind", "ID", "Name", "Tags", "Address", "Port", "SocketPath", "EnableTagOverride", "Namespace", "Partition",
    "Token", Meta=OPAQUE, TaggedAddresses=OPAQUE, Weights=_keys("Passing", "Warning"), Check=CHECK, Checks=CHECK,
    Proxy=PROXY, Locality=_keys("Region", "Zone"),
)  # fmt: skip
SERVICE["connect"] = ("Connect", _keys("Native", SidecarService=SERVICE))
SERVICE["port"] = ("Port", None)
TAGGED = _keys("Address", "Port")


def canon(obj: Any, spec: dict[str, tuple[str, Any]]) -> Any:
    """Rename keys to their canonical PascalCase, recursively; lists of objects share the item spec."""
    if isinstance(obj, list):
        return [canon(x, spec) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        hit = spec.get(str(k).replace("_", "").replace("-", "").lower())
        if hit is None or v is None:
            continue  # Go ignores unknown fields and leaves null ones at zero
        name, sub = hit
        out[name] = v if sub is None or sub is OPAQUE else canon(v, sub)
    return out


def _bad(text: str) -> ApiError:
    return ApiError(400, text)


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(
            f"Request decode failed: json: cannot unmarshal {type(v).__name__} into Go struct field {what} of type int"
        )
    return int(v)


# ---------------------------------------------------------------------- checks


def validate_check(c: dict[str, Any], where: str = "Invalid check") -> None:
    if c.get("Status") and c["Status"] not in STATUSES:
        raise _bad("Status for checks must 'passing', 'warning', 'critical'")
    try:
        interval = parse_duration(c.get("Interval") or "0")
        ttl = parse_duration(c.get("TTL") or "0")
        for k in ("Timeout", "DeregisterCriticalServiceAfter"):
            if c.get(k):
                parse_duration(c[k])
    except ValueError as e:
        raise _bad(f"Request decode failed: {e}") from None
    interval_check = any(c.get(k) for k in ("ScriptArgs", "DockerContainerID", "HTTP", "TCP", "UDP", "GRPC", "H2PING"))
    interval_check = interval_check or bool(c.get("OSService"))
    alias = bool(c.get("AliasService") or c.get("AliasNode"))
    if interval > 0 and ttl > 0:
        raise _bad(f"{where}: Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise _bad(f"{where}: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks")
    if not interval_check and not alias and ttl <= 0:
        raise _bad(f"{where}: TTL must be > 0 for TTL checks")


def service_checks(svc_body: dict[str, Any], sid: str, name: str) -> list[dict[str, Any]]:
    raw = ([svc_body["Check"]] if svc_body.get("Check") else []) + list(svc_body.get("Checks") or [])
    raw = [c for c in raw if isinstance(c, dict) and c]
    out = []
    for n, c in enumerate(raw, start=1):
        c = dict(c)
        validate_check(c)
        c.setdefault("CheckID", f"service:{sid}" if len(raw) == 1 else f"service:{sid}:{n}")
        c.setdefault("Name", f"Service '{name}' check")
        out.append(c)
    return out


# ---------------------------------------------------------------------- services


def _validate_upstreams(proxy: dict[str, Any]) -> None:
    for u in proxy.get("Upstreams") or []:
        if u.get("DestinationType", "") not in ("", "service", "prepared_query"):
            raise _bad(f"Validation failed: unknown upstream destination type: {u['DestinationType']!r}")
        if not u.get("DestinationName"):
            raise _bad("Validation failed: upstream destination name cannot be empty")
        if u["DestinationName"] == "*":
            raise _bad("Validation failed: upstream destination name cannot be a wildcard")
        if u.get("DestinationPeer") and u.get("Datacenter"):
            raise _bad("Validation failed: upstream cannot specify both destination peer and datacenter")
        port, sock = u.get("LocalBindPort") or 0, u.get("LocalBindSocketPath") or ""
        if not port and not sock:
            raise _bad("Validation failed: upstream local bind port or local socket path must be defined and nonzero")
        if port and sock:
            raise _bad(
                "Validation failed: only one of upstream local bind port or local socket path "
                "can be defined and nonzero"
            )


def _proxy_json(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
              "LocalServiceSocketPath"):  # fmt: skip
        if p.get(k):
            out[k] = p[k]
    out["Mode"] = p.get("Mode") or ""
    if p.get("TransparentProxy"):
        out["TransparentProxy"] = p["TransparentProxy"]
    if p.get("Config"):
        out["Config"] = p["Config"]
    ups = []
    for u in p.get("Upstreams") or []:
        uo = {k: v for k, v in u.items() if v not in ("", 0, None, False, {}) and k != "MeshGateway"}
        uo.setdefault("DestinationType", "service")
        uo["MeshGateway"] = {k: v for k, v in (u.get("MeshGateway") or {}).items() if v}
        ups.append(uo)
    if ups:
        out["Upstreams"] = ups
    out["MeshGateway"] = {k: v for k, v in (p.get("MeshGateway") or {}).items() if v}
    out["Expose"] = {k: v for k, v in (p.get("Expose") or {}).items() if v}
    for k in ("AccessLogs", "EnvoyExtensions"):
        if p.get(k):
            out[k] = p[k]
    return out


def validate_service(s: dict[str, Any]) -> None:
    if not s.get("Name"):
        raise _bad("Missing service name")
    if s.get("Address") in ("0.0.0.0", "::", "[::]"):
        raise _bad("Invalid service address")
    w = s.get("Weights")
    if w is not None and (_int(w.get("Passing", 0), "Weights.Passing") < 1 or _int(w.get("Warning", 0), "Weights") < 0):
        raise _bad("Invalid Weights: Passing must be greater than 0")
    for k, v in (s.get("Meta") or {}).items():
        if str(k).startswith("consul-"):
            raise _bad("Invalid Service Meta: Key prefix 'consul-' is reserved for internal use")
        if not isinstance(v, str):
            raise _bad(
                f"Request decode failed: json: cannot unmarshal {type(v).__name__} into map value of type string"
            )
    if "Port" in s:
        _int(s["Port"], "ServiceDefinition.Port")
    kind = s.get("Kind") or ""
    if kind not in ("", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"):
        raise _bad(f"Validation failed: Invalid service kind: {kind!r}")
    proxy = s.get("Proxy") or {}
    mode = (proxy.get("MeshGateway") or {}).get("Mode", "")
    if mode not in ("", "none", "local", "remote"):
        raise _bad(f'Invalid Mesh Gateway Mode: "{mode}"')
    if proxy.get("Mode", "") not in ("", "direct", "transparent"):
        raise _bad(f"Validation failed: Invalid Proxy Mode: {proxy['Mode']!r}")
    if kind == "connect-proxy":
        if not proxy.get("DestinationServiceName"):
            raise _bad("Validation failed: Proxy.DestinationServiceName must be non-empty for Connect proxy services")
        if not s.get("Port") and not s.get("SocketPath"):
            raise _bad("Validation failed: Port or SocketPath must be set for a Connect proxy")
        _validate_upstreams(proxy)
    elif kind.endswith("gateway") and not s.get("Port"):
        raise _bad(f"Validation failed: Port must be non-zero for a {kind}")


def node_service(s: dict[str, Any]) -> dict[str, Any]:
    """The stored NodeService JSON, as health/catalog/agent endpoints return it (consul.md §4.1)."""
    out: dict[str, Any] = {}
    if s.get("Kind"):
        out["Kind"] = s["Kind"]
    out["ID"] = s.get("ID") or s["Name"]
    out["Service"] = s["Name"]
    out["Tags"] = list(s.get("Tags") or [])
    out["Address"] = s.get("Address") or ""
    if s.get("TaggedAddresses"):
        out["TaggedAddresses"] = {k: canon(v, TAGGED) for k, v in s["TaggedAddresses"].items()}
    out["Meta"] = dict(s.get("Meta") or {})
    out["Port"] = int(s.get("Port") or 0)
    if s.get("SocketPath"):
        out["SocketPath"] = s["SocketPath"]
    w = s.get("Weights") or {}
    out["Weights"] = {"Passing": int(w.get("Passing", 1)), "Warning": int(w.get("Warning", 1))}
    out["EnableTagOverride"] = bool(s.get("EnableTagOverride"))
    out["Proxy"] = _proxy_json(s.get("Proxy") or {})
    out["Connect"] = {"Native": True} if (s.get("Connect") or {}).get("Native") else {}
    if s.get("Locality"):
        out["Locality"] = s["Locality"]
    return out


def _sidecar(parent: dict[str, Any], sc: dict[str, Any], state: ConsulState) -> dict[str, Any]:
    """Connect.SidecarService expansion (consul.md §3.2, C:agent/sidecar_service.go)."""
    pid = parent.get("ID") or parent["Name"]
    s = dict(sc)
    s["ID"] = f"{pid}-sidecar-proxy"
    s.setdefault("Name", f"{parent['Name']}-sidecar-proxy")
    s.setdefault("Kind", "connect-proxy")
    if not s.get("Address") and parent.get("Address"):
        s["Address"] = parent["Address"]
    for k in ("Tags", "Meta", "Locality"):
        if not s.get(k) and parent.get(k):
            s[k] = parent[k]
    p = dict(s.get("Proxy") or {})
    p.setdefault("DestinationServiceName", parent["Name"])
    p.setdefault("DestinationServiceID", pid)
    if not p.get("LocalServiceSocketPath") and (not p.get("LocalServiceAddress") or not p.get("LocalServicePort")):
        if parent.get("SocketPath"):
            p["LocalServiceSocketPath"] = parent["SocketPath"]
        else:
            p.setdefault("LocalServiceAddress", "127.0.0.1")
            p.setdefault("LocalServicePort", parent.get("Port") or 0)
    s["Proxy"] = p
    if not s.get("Port"):
        prev = state.services.get(s["ID"])
        if prev and prev.get("Port"):
            s["Port"] = prev["Port"]
        else:
            used = {v["Port"] for v in state.services.values()}
            free = [n for n in range(21000, 21256) if n not in used]
            if not free:
                raise _bad("Invalid SidecarService: no port provided for sidecar_service and none left in the "
                           "configured range [21000, 21255]")  # fmt: skip
            s["Port"] = free[0]
    if not s.get("Check") and not s.get("Checks"):
        addr = s.get("Address") or p.get("LocalServiceAddress") or "127.0.0.1"
        s["Checks"] = [
            {"Name": "Connect Sidecar Listening", "TCP": f"{addr}:{s['Port']}", "Interval": "10s"},
            {"Name": f"Connect Sidecar Aliasing {pid}", "AliasService": pid},
        ]
    return s


def decode_registration(body: Any, state: ConsulState) -> list[tuple[dict[str, Any], list[dict[str, Any]], str]]:
    """(NodeService JSON, check definitions, parent ID for a sidecar) for the service and its sidecar, if any."""
    if not isinstance(body, dict):
        raise _bad("Request decode failed: json: cannot unmarshal into Go value of type structs.ServiceDefinition")
    s = canon(body, SERVICE)
    validate_service(s)
    sid = s.get("ID") or s["Name"]
    out = [(node_service(s), service_checks(s, sid, s["Name"]), "")]
    sc = (s.get("Connect") or {}).get("SidecarService")
    if sc is not None:
        side = _sidecar(s, sc, state)
        try:
            checks = service_checks(side, side["ID"], side["Name"])
        except ApiError as e:
            raise _bad(e.text.replace("Invalid check", "Invalid check in sidecar_service")) from None
        try:
            validate_service(side)
        except ApiError as e:
            raise _bad(f"Failed Validation: {e.text}") from None
        out.append((node_service(side), checks, sid))
    return out


def decode_check_registration(body: Any, state: ConsulState) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request decode failed: json: cannot unmarshal into Go value of type structs.CheckDefinition")
    c = canon(body, CHECK_REGISTRATION)
    if not c.get("Name"):
        raise _bad("Missing check name")
    validate_check(c)
    c["CheckID"] = c.pop("ID", None) or c.get("CheckID") or c["Name"]
    sid = c.get("ServiceID") or ""
    if sid and sid not in state.services:
        raise _bad(f'ServiceID "{sid}" does not exist')
    return c
