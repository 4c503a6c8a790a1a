"""Test support: real meshgw processes, a real CA and real apps on loopback.

Waits are on conditions with deadlines, never sleeps used as synchronisation.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from connect.ca import BuiltinCA, write_leaf

# Ports for listeners come from below the kernel's ephemeral range (32768-60999 by default), so an outgoing
# connection of some other process cannot take one between free_port() and the sidecar's bind; each
# pytest-xdist worker gets its own slice, so two workers never hand out the same port.
_PORT_BASE = 20000
_PORT_SLICE = 1500
_next_port: list[int] = []  # [slice start, next candidate]


def free_port() -> int:
    """A free port not handed out before by this test process."""
    if not _next_port:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        n = int(worker[2:]) if worker[2:].isdigit() else 0
        start = _PORT_BASE + (n % 8) * _PORT_SLICE
        # A random first candidate in the slice: two test runs on one machine (the same worker names) rarely
        # reach for the same ports at the same time.
        _next_port.extend([start, start + random.randrange(_PORT_SLICE)])
    start = _next_port[0]
    while True:
        port = _next_port[1]
        _next_port[1] = start + (port - start + 1) % _PORT_SLICE
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (a previous run's TIME_WAIT, another program): take the next
            return port


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.connections += 1  # type: ignore[attr-defined]
        prefix = self.server.prefix  # type: ignore[attr-defined]
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    return
                self.server.received += len(data)  # type: ignore[attr-defined]
                sock.sendall(prefix + data if prefix else data)
        except OSError:
            return


class EchoServer(socketserver.ThreadingTCPServer):
    """A TCP echo app. ``connections`` counts accepted connections: a denied caller must not add one."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, prefix: bytes = b""):
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.prefix = prefix
        self.connections = 0
        self.received = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def echo_roundtrip(port: int, payload: bytes = b"hello", timeout: float = 5.0) -> bytes:
    """Send payload, read until as many bytes came back (or EOF). Raises on refusal."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def refused(port: int, payload: bytes = b"x", timeout: float = 5.0) -> bool:
    """The proxy closed or reset the connection without an answer. A hang is not a refusal: it raises."""
    try:
        return echo_roundtrip(port, payload, timeout=timeout) == b""
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        return True


def read_request(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """A naive app's read of one request from ``buf`` then ``sock``: the head up to CRLFCRLF, then a
    Content-Length body (nothing else frames it). (head, body, the bytes after them), or None when the
    connection ends first. Apps that must see exactly what a proxy sent parse this way, so anything smuggled
    past the proxy shows up as a request of its own."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    return head, buf[:length], buf[length:]


class Sidecar:
    def __init__(self, mesh: Mesh, name: str, cfg_path: Path, admin_port: int, log_path: Path):
        self.mesh = mesh
        self.name = name
        self.cfg_path = cfg_path
        self.admin_port = admin_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        # For a sidecar in another network namespace: the command that enters it, and where its admin port is.
        self.prefix: list[str] = []
        self.admin_host = "127.0.0.1"

    def start(self, wait_ready: bool = True) -> Sidecar:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "gateway.cli", "run", "-c", str(self.cfg_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        if wait_ready:
            wait_for(self.ready, 20, f"{self.name} sidecar /ready (log: {self.log_text()[-2000:]})")
        return self

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin_host}:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.log_text()[-3000:]}")
        try:
            return self.admin("/ready")[0] == 200
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        text = self.admin("/metrics")[1]
        total = 0.0
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Mesh:
    """A built-in CA, a local control plane (catalog + intentions files) and sidecars sharing them."""

    def __init__(self, root: Path, trust_domain: str = "test.consul"):
        self.root = root
        self.ca = BuiltinCA.init(root / "ca", trust_domain)
        self.trust_domain = trust_domain
        self.catalog: dict[str, list[dict[str, Any]]] = {}
        self.intentions: list[dict[str, Any]] = []
        self.sidecars: list[Sidecar] = []
        self.write_catalog()
        self.write_intentions()

    # -- control plane files (atomic replace, as an operator's tooling would)

    def _write(self, name: str, data: Any) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, self.root / name)

    def write_catalog(self) -> None:
        self._write("catalog.yaml", {"services": self.catalog})

    def write_intentions(self) -> None:
        self._write("intentions.yaml", self.intentions)

    def register(self, service: str, port: int, health: str = "passing", dc: str = "dc1") -> None:
        self.catalog.setdefault(service, []).append(
            {"address": "127.0.0.1", "port": port, "datacenter": dc, "health": health}
        )
        self.write_catalog()

    def allow(self, source: str, dest: str, action: str = "allow") -> None:
        for e in self.intentions:
            if e["Name"] == dest:
                e["Sources"] = [s for s in e["Sources"] if s["Name"] != source] + [{"Name": source, "Action": action}]
                break
        else:
            self.intentions.append(
                {"Kind": "service-intentions", "Name": dest, "Sources": [{"Name": source, "Action": action}]}
            )
        self.write_intentions()

    # -- sidecars

    def sidecar(
        self,
        name: str,
        app_port: int | None = None,
        inbound: bool | dict[str, Any] = True,
        upstreams: dict[str, int] | None = None,
        start: bool = True,
        dc: str = "dc1",
        upstream: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Sidecar:
        """``upstream``: settings for every entry of ``upstreams`` (``protocol``, timeouts, ...)."""
        admin = free_port()
        cfg: dict[str, Any] = {
            "datacenter": dc,
            "service": {"name": name, "port": app_port or free_port()},
            "control_plane": {
                "type": "local",
                "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml", "poll_interval": "100ms"},
            },
            "certificates": {"type": "builtin", "builtin": {"dir": "ca", "leaf_ttl": "1h"}},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "drain_timeout": "10s",
        }
        if inbound:
            port = free_port()
            # inbound=True, or the inbound section's settings (merged with its bind)
            cfg["inbound"] = {"bind": f"127.0.0.1:{port}", **(inbound if isinstance(inbound, dict) else {})}
            self.register(name, port, dc=dc)
        if upstreams:
            cfg["upstreams"] = [
                {"service": s, "bind": f"127.0.0.1:{p}", **(upstream or {})} for s, p in upstreams.items()
            ]
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = _merge(cfg[k], v)
            else:
                cfg[k] = v
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        sc = Sidecar(self, name, path, admin, self.root / f"{name}.log")
        self.sidecars.append(sc)
        if start:
            sc.start()
        return sc

    def inbound_port(self, name: str) -> int:
        return int(self.catalog[name][0]["port"])

    # -- direct TLS clients, for the handshake tests

    def leaf_files(self, service: str, ttl: float = 3600, ca: BuiltinCA | None = None, **kw: Any) -> tuple[Path, Path]:
        leaf = (ca or self.ca).issue(service, "dc1", ttl, **kw)
        return write_leaf(leaf, self.root / f"client-{service}-{leaf.serial[:8].replace(':', '')}")

    def client_context(self, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.root / "ca" / "ca.crt")
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def close(self) -> None:
        for sc in self.sidecars:
            sc.stop()


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextlib.contextmanager
def echo_app(prefix: bytes = b"") -> Iterator[EchoServer]:
    srv = EchoServer(prefix)
    try:
        yield srv
    finally:
        srv.stop()
