"""State of the Consul double (test support): raft index, tables with blocking waiters, services, checks, CA.

One global raft index grows on every write; each table (``services``, ``config``, ``roots``, ``leaf``) remembers the
index of its last write and wakes its blocking waiters (consul.md §1). Agent-local registrations (services, their
checks, TTL timers, check runners) can be forgotten at once, as an agent restart does; server state (config
entries, CA, index) stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from doubles.consul_ca import DEFAULT_LEAF_TTL, ConnectCA, Leaf

STATUSES = ("passing", "warning", "critical")
TABLES = ("services", "config", "roots", "leaf", "ca-config")
SERF_CHECK = "serfHealth"
MAX_OUTPUT = 4096  # the agent truncates check output (BufSize)


class ApiError(Exception):
    """An answer with a plain-text body, as Consul's handleErr writes errors (consul.md §0 trap 3)."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


class Table:
    __slots__ = ("_event", "index")

    def __init__(self, index: int):
        self.index = index
        self._event: asyncio.Event | None = None

    def bump(self, index: int) -> None:
        self.index = index
        ev, self._event = self._event, None
        if ev is not None:
            ev.set()

    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event


def worst(statuses: list[str]) -> str:
    for s in ("critical", "warning"):
        if s in statuses:
            return s
    return "passing"


class ConsulState:
    def __init__(
        self,
        datacenter: str = "dc1",
        node_name: str = "consul-double",
        leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        default_allow: bool = True,
    ):
        self.datacenter = datacenter
        self.node_name = node_name
        self.node_id = str(uuid.uuid4())
        self.node_address = "127.0.0.1"
        self.trust_domain = f"{uuid.uuid4()}.consul"
        self.default_allow = default_allow
        self.index = 1
        self.tables = {name: Table(1) for name in TABLES}
        self.ca = ConnectCA(self.trust_domain, datacenter, leaf_ttl)
        self.ca_config: dict[str, Any] = {
            "Provider": "consul",
            "Config": {"LeafCertTTL": "72h", "RotationPeriod": "2160h", "IntermediateCertTTL": "8760h"},
            "State": None,
            "ForceWithoutCrossSigning": False,
        }
        self.services: dict[str, dict[str, Any]] = {}  # service ID -> NodeService JSON
        self.sidecar_of: dict[str, str] = {}  # sidecar ID -> parent ID (registered through Connect.SidecarService)
        self.checks: dict[str, dict[str, Any]] = {}  # check ID -> HealthCheck JSON
        self.check_defs: dict[str, dict[str, Any]] = {}  # check ID -> normalized definition (TTL, TCP, ...)
        # Expose.Checks (C:agent/agent.go rerouteExposedChecks, listenerPortLocked): a port per exposed check from
        # expose_min_port..expose_max_port (the agent's config, 21500..21755 by default; tests move it), and the
        # URL the check then probes instead of its own (ProxyHTTP).
        self.expose_min_port, self.expose_max_port = 21500, 21755
        self.exposed_ports: dict[str, int] = {}  # "<service ID>:<check ID>" -> listener port
        self.proxy_http: dict[str, str] = {}  # check ID -> URL through the proxy
        self.config: dict[tuple[str, str], dict[str, Any]] = {}
        self.leaves: dict[str, Leaf] = {}
        self.cache_seen: dict[tuple[Any, ...], float] = {}  # agent-cache entries already served (X-Cache)
        self._timers: dict[str, asyncio.TimerHandle | asyncio.Task[None]] = {}
        self._leaf_timers: dict[str, asyncio.TimerHandle] = {}
        idx = self.bump("roots", "ca-config")
        self.ca.new_root(idx)
        self.ca_config["CreateIndex"] = self.ca_config["ModifyIndex"] = idx
        self.checks[SERF_CHECK] = self._check_json(
            SERF_CHECK, "Serf Health Status", "", "", [], "", "passing", "Agent alive and reachable", idx
        )

    # ------------------------------------------------------------------ index and waiting

    def bump(self, *tables: str) -> int:
        self.index += 1
        for t in tables:
            self.tables[t].bump(self.index)
        return self.index

    async def wait(self, table: str, min_index: int, timeout: float, current: Callable[[], int] | None = None) -> None:
        """Hold until the table's (or ``current()``'s) index exceeds ``min_index`` or ``timeout`` passes."""
        t = self.tables[table]
        cur = current or (lambda: t.index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while cur() <= min_index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(t.event().wait(), remaining)
            except TimeoutError:
                return

    # ------------------------------------------------------------------ JSON shapes

    def node_json(self) -> dict[str, Any]:
        a = self.node_address
        return {
            "ID": self.node_id,
            "Node": self.node_name,
            "Address": a,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": a, "lan_ipv4": a, "wan": a, "wan_ipv4": a},
            "Meta": {"consul-network-segment": "", "consul-version": "1.17.0"},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _check_json(
        self,
        cid: str,
        name: str,
        sid: str,
        sname: str,
        tags: list[str],
        type_: str,
        status: str,
        output: str,
        idx: int,
        notes: str = "",
        interval: str = "",
        timeout: str = "",
        definition: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "Node": self.node_name,
            "CheckID": cid,
            "Name": name,
            "Status": status,
            "Notes": notes,
            "Output": output,
            "ServiceID": sid,
            "ServiceName": sname,
            "ServiceTags": list(tags),
            "Type": type_,
            "Interval": interval,
            "Timeout": timeout,
            "ExposedPort": 0,
            "Definition": definition or {},
            "CreateIndex": idx,
            "ModifyIndex": idx,
        }

    def check_status(self, cid: str, depth: int = 0) -> str:
        chk = self.checks[cid]
        alias = self.check_defs.get(cid, {}).get("AliasService")
        if alias and depth < 4:
            # Alias checks mirror the worst status of the aliased local service (passing when it has no checks).
            if alias not in self.services:
                return "critical"
            return worst([self.check_status(c, depth + 1) for c in self.service_check_ids(alias)])
        return chk["Status"]

    def check_out(self, cid: str) -> dict[str, Any]:
        out = dict(self.checks[cid])
        out["Status"] = self.check_status(cid)
        return out

    def service_check_ids(self, sid: str) -> list[str]:
        return sorted(cid for cid, c in self.checks.items() if c["ServiceID"] == sid)

    def health_entry(self, sid: str) -> dict[str, Any]:
        node_checks = sorted(cid for cid, c in self.checks.items() if not c["ServiceID"])
        return {
            "Node": self.node_json(),
            "Service": self.services[sid],
            "Checks": [self.check_out(c) for c in node_checks + self.service_check_ids(sid)],
        }

    # ------------------------------------------------------------------ services and checks

    def register_service(
        self, svc: dict[str, Any], checks: list[dict[str, Any]], replace_existing: bool, sidecar_of: str = ""
    ) -> None:
        """``svc`` is a NodeService JSON without indexes; ``checks`` normalized definitions with CheckID/Name set."""
        sid = svc["ID"]
        idx = self.bump("services")
        prev = self.services.get(sid)
        svc["CreateIndex"] = prev["CreateIndex"] if prev else idx
        svc["ModifyIndex"] = idx
        self.services[sid] = svc
        if sidecar_of:
            self.sidecar_of[sid] = sidecar_of
        keep = {c["CheckID"] for c in checks}
        if replace_existing:
            for cid in self.service_check_ids(sid):
                if cid not in keep:
                    self._drop_check(cid)
        for c in checks:
            self.add_check(c, sid, idx)
        dest = (svc.get("Proxy") or {}).get("DestinationServiceID")
        if dest and dest in self.services:
            self._reset_exposed(dest)
            self._reroute(dest)
        for cid in self.service_check_ids(sid):  # tags follow the service
            self.checks[cid]["ServiceTags"] = list(svc.get("Tags") or [])
            self.checks[cid]["ServiceName"] = svc["Service"]

    def add_check(self, d: dict[str, Any], sid: str, idx: int | None = None) -> None:
        idx = idx or self.bump("services")
        cid = d["CheckID"]
        prev = self.checks.get(cid)
        svc = self.services.get(sid) if sid else None
        status = d.get("Status") or (prev["Status"] if prev else "critical")  # new checks start critical
        self._stop_timer(cid)
        self.checks[cid] = self._check_json(
            cid,
            d["Name"],
            sid,
            svc["Service"] if svc else "",
            (svc.get("Tags") or []) if svc else [],
            check_type(d),
            status,
            prev["Output"] if prev and not d.get("Status") else "",
            prev["CreateIndex"] if prev else idx,
            notes=d.get("Notes") or "",
            interval=d.get("Interval") or "",
            timeout=d.get("Timeout") or "",
            definition=_definition(d),
        )
        self.checks[cid]["ModifyIndex"] = idx
        self.check_defs[cid] = d
        if sid:
            self._reroute(sid)
        self._start_runner(cid, d)

    # ------------------------------------------------------------------ Expose.Checks

    def _exposing_proxy(self, sid: str) -> dict[str, Any] | None:
        for svc in self.services.values():
            proxy = svc.get("Proxy") or {}
            if proxy.get("DestinationServiceID") == sid and (proxy.get("Expose") or {}).get("Checks"):
                return svc
        return None

    def _reroute(self, sid: str) -> None:
        """Points the HTTP checks of ``sid`` at its proxy when that proxy has Expose.Checks (GRPC is not probed
        by this double; it still gets its port)."""
        proxy = self._exposing_proxy(sid)
        if proxy is None:
            return
        addr = proxy.get("Address") or "127.0.0.1"
        for cid in self.service_check_ids(sid):
            d = self.check_defs.get(cid, {})
            if not (d.get("HTTP") or d.get("GRPC")):
                continue
            key = f"{sid}:{cid}"
            if key not in self.exposed_ports:
                used = set(self.exposed_ports.values())
                free = [p for p in range(self.expose_min_port, self.expose_max_port) if p not in used]
                if not free:
                    raise ApiError(500, f"no ports available to expose '{cid}'")
                self.exposed_ports[key] = free[0]
            port = self.exposed_ports[key]
            self.checks[cid]["ExposedPort"] = port
            if d.get("HTTP"):
                u = urlsplit(d["HTTP"])
                self.proxy_http[cid] = urlunsplit((u.scheme, f"{addr}:{port}", u.path, u.query, u.fragment))

    def _reset_exposed(self, sid: str) -> None:
        for cid in self.service_check_ids(sid):
            self.exposed_ports.pop(f"{sid}:{cid}", None)
            self.proxy_http.pop(cid, None)
            self.checks[cid]["ExposedPort"] = 0

    def _drop_check(self, cid: str) -> None:
        sid = (self.checks.get(cid) or {}).get("ServiceID")
        self.exposed_ports.pop(f"{sid}:{cid}", None)
        self.proxy_http.pop(cid, None)
        self._stop_timer(cid)
        self.checks.pop(cid, None)
        self.check_defs.pop(cid, None)

    def deregister_service(self, sid: str) -> None:
        if sid not in self.services:
            raise ApiError(404, f'Unknown service ID "{sid}"')
        for child, parent in list(self.sidecar_of.items()):
            if parent == sid and child in self.services:
                self._remove_service(child)
        self._remove_service(sid)
        self.bump("services")

    def _remove_service(self, sid: str) -> None:
        for cid in self.service_check_ids(sid):
            self._drop_check(cid)
        dest = (self.services.get(sid, {}).get("Proxy") or {}).get("DestinationServiceID")
        self.services.pop(sid, None)
        if dest and dest in self.services:
            self._reset_exposed(dest)
            self._reroute(dest)
        self.sidecar_of.pop(sid, None)

    def deregister_check(self, cid: str) -> None:
        if cid not in self.checks or cid == SERF_CHECK:
            raise ApiError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
        self._drop_check(cid)
        self.bump("services")

    def update_check(self, cid: str, status: str, output: str, ttl_only: bool = True) -> None:
        if cid not in self.checks:
            raise ApiError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
        d = self.check_defs.get(cid, {})
        if ttl_only and not d.get("TTL"):
            raise ApiError(500, f'CheckID "{cid}" does not have associated TTL')
        self._set_status(cid, status, output[:MAX_OUTPUT])
        if d.get("TTL"):
            self._arm_ttl(cid, parse_duration(d["TTL"]))

    def _set_status(self, cid: str, status: str, output: str) -> None:
        chk = self.checks.get(cid)
        if chk is None:
            return
        changed = chk["Status"] != status
        chk["Status"], chk["Output"] = status, output
        if changed:
            # Output-only changes are synced lazily by a real agent (check_update_interval): no index bump.
            chk["ModifyIndex"] = self.bump("services")

    def set_check_status(self, check_or_service_id: str, status: str, output: str = "") -> None:
        """Test hook: one check by ID, or every check of a service by service ID."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if check_or_service_id in self.checks:
            ids = [check_or_service_id]
        elif check_or_service_id in self.services:
            ids = self.service_check_ids(check_or_service_id)
        else:
            raise KeyError(f"no check or service {check_or_service_id!r}")
        for cid in ids:
            ttl = self.check_defs.get(cid, {}).get("TTL")
            self._set_status(cid, status, output or f"set by the test: {status}")
            if ttl:
                self._arm_ttl(cid, parse_duration(ttl))

    def maintenance(self, sid: str, enable: bool, reason: str) -> None:
        if sid not in self.services:
            raise ApiError(404, f'Unknown service ID "{sid}"')
        cid = f"_service_maintenance:{sid}"
        if enable:
            notes = reason or (
                "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
            )
            self.add_check(
                {"CheckID": cid, "Name": "Service Maintenance Mode", "Notes": notes, "Status": "critical"}, sid
            )
            self.checks[cid]["Type"] = "maintenance"
        elif cid in self.checks:
            self.deregister_check(cid)

    def forget_agent(self) -> None:
        """An agent restart without persisted state: local services and their checks are gone."""
        for cid in [c for c in self.checks if c != SERF_CHECK]:
            self._drop_check(cid)
        self.services.clear()
        self.sidecar_of.clear()
        self.cache_seen.clear()
        # The agent's leaf cache is gone too: the next request gets a freshly signed leaf (higher ModifyIndex).
        for t in self._leaf_timers.values():
            t.cancel()
        self._leaf_timers.clear()
        self.leaves.clear()
        self.bump("services")

    # ------------------------------------------------------------------ check runners

    def _stop_timer(self, cid: str) -> None:
        t = self._timers.pop(cid, None)
        if t is not None:
            t.cancel()

    def _arm_ttl(self, cid: str, ttl: float) -> None:
        self._stop_timer(cid)
        self._timers[cid] = asyncio.get_running_loop().call_later(ttl, self._ttl_expired, cid)

    def _ttl_expired(self, cid: str) -> None:
        self._timers.pop(cid, None)
        chk = self.checks.get(cid)
        if chk is not None:
            last = chk["Output"]
            out = f"TTL expired (last output before timeout follows): {last}" if last else "TTL expired"
            self._set_status(cid, "critical", out)

    def _start_runner(self, cid: str, d: dict[str, Any]) -> None:
        if d.get("TTL"):
            self._arm_ttl(cid, parse_duration(d["TTL"]))
        elif d.get("TCP") or d.get("HTTP"):
            interval = max(0.05, parse_duration(d.get("Interval") or "10s"))
            timeout = parse_duration(d.get("Timeout") or "10s") or 10.0
            self._timers[cid] = asyncio.get_running_loop().create_task(self._probe_loop(cid, d, interval, timeout))

    async def _probe_loop(self, cid: str, d: dict[str, Any], interval: float, timeout: float) -> None:
        while cid in self.checks:
            status, output = await (
                self._probe_tcp(d["TCP"], timeout)
                if d.get("TCP")
                else self._probe_http({**d, "HTTP": self.proxy_http.get(cid) or d["HTTP"]}, timeout)
            )
            self._set_status(cid, status, output)
            await asyncio.sleep(interval)

    @staticmethod
    async def _probe_tcp(target: str, timeout: float) -> tuple[str, str]:
        host, _, port = target.rpartition(":")
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
            w.close()
            return "passing", f"TCP connect {target}: Success"
        except (OSError, ValueError, TimeoutError) as e:
            return "critical", f"dial tcp {target}: {e}"

    @staticmethod
    async def _probe_http(d: dict[str, Any], timeout: float) -> tuple[str, str]:
        url = d["HTTP"]
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
                s.request(d.get("Method") or "GET", url) as r,
            ):
                body = (await r.text())[:MAX_OUTPUT]
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return "critical", f'Get "{url}": {e}'
        status = "passing" if 200 <= r.status < 300 else "warning" if r.status == 429 else "critical"
        return status, f"HTTP {d.get('Method') or 'GET'} {url}: {r.status} Output: {body}"

    # ------------------------------------------------------------------ CA and leaves

    def leaf(self, service: str) -> Leaf:
        leaf = self.leaves.get(service)
        if leaf is None or dt.datetime.now(dt.UTC) >= self._renew_at(leaf):
            leaf = self._issue(service)
        return leaf

    @staticmethod
    def _renew_at(leaf: Leaf) -> dt.datetime:
        return leaf.valid_after + (leaf.valid_before - leaf.valid_after) * 0.6

    def _issue(self, service: str) -> Leaf:
        leaf = self.ca.sign_leaf(service, self.bump("leaf"))
        self.leaves[service] = leaf
        old = self._leaf_timers.pop(service, None)
        if old is not None:
            old.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: renewal happens on the next read
            delay = (self._renew_at(leaf) - dt.datetime.now(dt.UTC)).total_seconds()
            self._leaf_timers[service] = asyncio.get_running_loop().call_later(max(0.05, delay), self._issue, service)
        return leaf

    def rotate_ca(self) -> None:
        """New root cross-signed by the old one; both listed, the new one active; every leaf re-issued."""
        self.ca.new_root(self.bump("roots"))
        for service in list(self.leaves):
            self._issue(service)

    def set_leaf_ttl(self, ttl: dt.timedelta) -> None:
        self.ca.leaf_ttl = ttl

    def close(self) -> None:
        for cid in list(self._timers):
            self._stop_timer(cid)
        for t in self._leaf_timers.values():
            t.cancel()
        self._leaf_timers.clear()


def _definition(d: dict[str, Any]) -> dict[str, Any]:
    """HealthCheck.Definition (C:api/health.go HealthCheckDefinition): the probe's own target, never ProxyHTTP."""
    out: dict[str, Any] = {k: d.get(k) or "" for k in ("HTTP", "Method", "Body", "TLSServerName", "TCP", "UDP", "GRPC")}
    out.update({k: bool(d.get(k)) for k in ("TLSSkipVerify", "TCPUseTLS", "GRPCUseTLS")})
    out["Header"] = d.get("Header") or {}
    return out


def check_type(d: dict[str, Any]) -> str:
    for key, name in (
        ("TTL", "ttl"),
        ("HTTP", "http"),
        ("TCP", "tcp"),
        ("UDP", "udp"),
        ("GRPC", "grpc"),
        ("H2PING", "h2ping"),
        ("AliasService", "alias"),
        ("AliasNode", "alias"),
        ("DockerContainerID", "docker"),
        ("ScriptArgs", "script"),
        ("OSService", "os_service"),
    ):
        if d.get(key):
            return name
    return ""


def parse_duration(text: Any) -> float:
    """Go's time.ParseDuration, in seconds; ValueError when malformed."""
    return _parse_go_duration(str(text))


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_go_duration(s: str) -> float:
    orig = s
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    while s:
        i = 0
        while i < len(s) and (s[i].isdigit() or s[i] == "."):
            i += 1
        num, s = s[:i], s[i:]
        if not num or num == "." or num.count(".") > 1:
            raise ValueError(f'time: invalid duration "{orig}"')
        j = 0
        while j < len(s) and not (s[j].isdigit() or s[j] == "."):
            j += 1
        unit, s = s[:j], s[j:]
        if not unit:
            raise ValueError(f'time: missing unit in duration "{orig}"')
        if unit not in _UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        total += float(num) * _UNITS[unit]
    return sign * total
