#!/usr/bin/env python3
"""L4 mTLS proxy-pair benchmark: direct vs meshgw vs HAProxy vs Envoy, in one run.

Topology measured for every variant (see bench/README.md):

    wrk/curl -> [upstream side: plaintext listener -> mTLS client]
             -> [inbound side: mTLS server requiring a client cert -> plaintext] -> nginx

Every process this script starts is its own process group, is tracked, and is killed on exit,
on failure and on Ctrl-C. Ports are ephemeral free ports; readiness is polled with deadlines.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
VENV_BIN = REPO / ".venv" / "bin"

TRUST_DOMAIN = "bench.consul"
DC = "dc1"
SERVER_SVC = "api"  # the inbound side / the app
CLIENT_SVC = "web"  # the upstream side
OTHER_SVC = "intruder"  # has a valid leaf, but no intention allows it to reach api
SNI = f"{SERVER_SVC}.default.{DC}.internal.{TRUST_DOMAIN}"


def spiffe(svc: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/dc/{DC}/svc/{svc}"


SMALL_BODY = b"meshgw-bench small response " + b"." * 99 + b"\n"  # 128 bytes
VARIANTS = ("direct", "haproxy", "envoy", "meshgw")
LABEL = {
    "direct": "direct (no proxy)",
    "haproxy": "HAProxy pair",
    "envoy": "Envoy pair",
    "meshgw": "meshgw pair",
}
MESHGW_VARIANTS = ("meshgw",)
# Issue #13 ("Speed"), each against the peer it names: req/s >= 1.2 x HAProxy's; 100 MB transfer (MB/s), new mTLS
# connections per second >= 1.0 x Envoy's; p99 <= Envoy's (a ceiling: lower is better).
GOALS: dict[str, dict[str, float]] = {"haproxy": {"rps": 1.2}, "envoy": {"mbps": 1.0, "cps": 1.0, "p99": 1.0}}
CEILINGS = ("p99",)
NOISY = 0.15  # cores used by unrelated processes during a measurement above which it is flagged


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    logfile: Path
    role: str  # "proxy", "app", "tool"
    stopper: Callable[[], None] | None = None  # for processes someone else started (not our process group)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:]) or "(empty log)"

    def cpu_seconds(self) -> float:
        """user+system CPU of the process (all its threads), from /proc/PID/stat."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Harness:
    def __init__(self, workdir: Path, load_cpus: str | None, proxy_cpus: str | None):
        self.work = workdir
        self.load_cpus = load_cpus
        self.proxy_cpus = proxy_cpus
        self.procs: list[Proc] = []
        self.app: Proc | None = None
        self.meshgw_log_level = "warning"
        self._ports: set[int] = set()

    # -- ports: ephemeral ports the kernel hands out, never the same one twice in a run ----------
    def port(self) -> int:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
            s.close()
            if p not in self._ports:
                self._ports.add(p)
                return p
        raise BenchError("could not find a free port")

    # -- processes ------------------------------------------------------------------------------
    def pin(self, argv: list[str], cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus, *argv] if cpus else argv

    def spawn(
        self,
        name: str,
        argv: list[str],
        role: str,
        cpus: str | None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        logfile = self.work / "logs" / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        full = self.pin(argv, cpus)
        with open(logfile, "wb") as out:
            out.write(("$ " + " ".join(full) + "\n").encode())
            out.flush()
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(cwd or self.work),
                env=env,
                start_new_session=True,  # own process group: we kill the whole group
            )
        p = Proc(name, popen, logfile, role)
        self.procs.append(p)
        return p

    def stop(self, p: Proc, timeout: float = 5.0) -> None:
        if p.stopper is not None:
            try:
                p.stopper()
            finally:
                if p.alive():
                    p.popen.kill()
                if p in self.procs:
                    self.procs.remove(p)
            return
        if p.popen is None:
            pass
        elif p.alive():
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # the leader is gone; make sure nothing it left in its group survives
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p, timeout=3.0)

    # -- readiness ------------------------------------------------------------------------------
    def check_alive(self, procs: list[Proc]) -> None:
        for p in procs:
            if not p.alive():
                raise BenchError(f"{p.name} exited with code {p.popen.returncode}; log tail:\n{p.tail()}")

    def wait_port(self, port: int, procs: list[Proc], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(procs)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: port {port} not accepting connections after {timeout:.0f}s")
            time.sleep(0.05)

    def wait_http(
        self, port: int, path: str, procs: list[Proc], timeout: float, what: str, expect_body: bytes | None = None
    ) -> float:
        """Poll GET path on port until it answers 200 (and the body matches); returns seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "no attempt"
        while True:
            self.check_alive(procs)
            try:
                status, body = http_get(port, path, timeout=2.0)
                if status == 200 and (expect_body is None or body == expect_body):
                    return time.monotonic() - t0
                last = f"status {status}, {len(body)} byte body"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: GET 127.0.0.1:{port}{path} not OK after {timeout:.0f}s (last: {last})")
            time.sleep(0.1)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET with Connection: close (no dependency on the proxies' HTTP awareness)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return parse_http(read_all(s))


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def parse_http(raw: bytes) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError(f"no HTTP response ({len(raw)} bytes)")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"bad status line {head[:60]!r}") from None
    return status, body


# ---------------------------------------------------------------------------------------------- certificates


@dataclass
class Certs:
    ca_dir: Path
    ca_crt: Path
    server_crt: Path  # api
    server_key: Path
    server_pem: Path  # crt + key, for HAProxy
    client_crt: Path  # web
    client_key: Path
    client_pem: Path
    other_crt: Path  # a valid leaf of a service no intention allows
    other_key: Path


def meshgw_bin() -> str:
    exe = VENV_BIN / "meshgw"
    if exe.exists():
        return str(exe)
    found = shutil.which("meshgw")
    if not found:
        raise BenchError("meshgw not found (run bench/run.sh, which installs the repo into .venv)")
    return found


def make_certs(work: Path) -> Certs:
    ca = work / "ca"
    mg = meshgw_bin()
    subprocess.run(
        [mg, "ca", "init", "--dir", str(ca), "--trust-domain", TRUST_DOMAIN], check=True, stdout=subprocess.DEVNULL
    )
    out = {}
    for svc in (SERVER_SVC, CLIENT_SVC, OTHER_SVC):
        prefix = work / "certs" / svc
        prefix.parent.mkdir(exist_ok=True)
        subprocess.run(
            [mg, "ca", "issue", "--dir", str(ca), "--service", svc, "--dc", DC, "--ttl", "24h", "--out", str(prefix)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        crt, key = prefix.with_suffix(".crt"), prefix.with_suffix(".key")
        pem = prefix.with_suffix(".pem")
        pem.write_bytes(crt.read_bytes() + key.read_bytes())
        os.chmod(pem, 0o600)
        out[svc] = (crt, key, pem)
    return Certs(ca, ca / "ca.crt", *out[SERVER_SVC], *out[CLIENT_SVC], *out[OTHER_SVC][:2])


def add_dns_san(certs: Certs, dns_name: str, out: Path) -> Path:
    """Re-sign the server leaf (same key, same SPIFFE URI SAN) with an extra DNS SAN; returns a crt+key PEM.

    HAProxy 2.6 verifies the server certificate's hostname against the SNI whenever 'sni' is set (and
    'verifyhost' cannot turn that off), while a Connect leaf names its service only in a URI SAN. So for
    HAProxy's inbound side only, the leaf also names the SNI as a DNS SAN: same CA, same key type, same
    handshake cost; HAProxy still does full chain verification plus a name check on every connection.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert = x509.load_pem_x509_certificate(certs.ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key((certs.ca_dir / "ca.key").read_bytes(), password=None)
    leaf = x509.load_pem_x509_certificate(certs.server_crt.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            b = b.add_extension(ext.value, ext.critical)
    b = b.add_extension(
        x509.SubjectAlternativeName([*(x509.UniformResourceIdentifier(u) for u in uris), x509.DNSName(dns_name)]),
        critical=False,
    )
    cert = b.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + certs.server_key.read_bytes())
    os.chmod(out, 0o600)
    return out


def tls_probe(port: int, certs: Certs, client: tuple[Path, Path] | None) -> dict[str, Any]:
    """Talk TLS to an inbound-side port directly: what it negotiates, whether it serves this client."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_crt))
    ctx.check_hostname = False  # Connect identities are URI SANs, not DNS names
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=SNI) as s,
        ):
            info = {"version": s.version(), "cipher": s.cipher()[0]}
            san = s.getpeercert().get("subjectAltName", ())
            info["server_uri"] = next((v for k, v in san if k == "URI"), None)
            s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            status, body = parse_http(read_all(s))
            info["status"] = status
            info["ok"] = status == 200 and body == SMALL_BODY
            return info
    except (OSError, ssl.SSLError, ConnectionError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------- app (nginx)


def start_app(h: Harness, big_bytes: int) -> tuple[Proc, int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise BenchError("nginx not found (bench/run.sh installs nginx-light)")
    d = h.work / "app"
    (d / "www").mkdir(parents=True, exist_ok=True)
    (d / "tmp").mkdir(exist_ok=True)
    big = d / "www" / "big"
    with open(big, "wb") as f:  # incompressible data, 1 MiB blocks
        left = big_bytes
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    port = h.port()
    small = SMALL_BODY.decode().rstrip("\n")
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {d}/www;
        location = /small {{ return 200 "{small}\\n"; }}
        location = /big {{ }}
    }}
}}
""")
    p = h.spawn("nginx", [nginx, "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)], "app", h.load_cpus)
    h.wait_port(port, [p], 10, "nginx")
    h.wait_http(port, "/small", [p], 10, "nginx", SMALL_BODY)
    return p, port


# ---------------------------------------------------------------------------------------------- variants


@dataclass
class Pair:
    """A running proxy pair: the port wrk talks to, the inbound port, and the processes."""

    front_port: int
    back_port: int | None
    procs: list[Proc] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    by_side: dict[str, Proc] = field(default_factory=dict)


def start_haproxy(h: Harness, certs: Certs, app_port: int, timeout: float) -> Pair:
    return haproxy_pair(
        h,
        certs,
        app_port,
        timeout,
        label="haproxy",
        global_extra="    tune.ssl.default-dh-param 2048\n",
        defaults="    mode tcp\n",
    )


def haproxy_pair(
    h: Harness,
    certs: Certs,
    app_port: int,
    timeout: float,
    *,
    label: str,
    defaults: str,
    global_extra: str = "",
    front_extra: str = "",
    back_extra: str = "",
    info: dict[str, Any] | None = None,
    front_bind: str = "",
    mesh_server: str = "",
    inbound_bind: str = "",
    app_server: str = "",
) -> Pair:
    """Two HAProxy processes, upstream side and inbound side, with mTLS between them (L4 or HTTP mode).

    ``front_bind``, ``mesh_server``, ``inbound_bind`` and ``app_server`` are appended to the plaintext bind line,
    the mTLS server line, the mTLS bind line and the app's server line (e.g. ``proto h2``, ``alpn h2``)."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise BenchError("haproxy not found (bench/run.sh installs it)")
    d = h.work / label
    d.mkdir(exist_ok=True)
    front, back = h.port(), h.port()
    common = f"""global
    nbthread 1
    maxconn 4000
{global_extra}defaults
{defaults}    timeout connect 5s
    timeout client 300s
    timeout server 300s
"""
    server_pem = add_dns_san(certs, SNI, d / "server-with-dns-san.pem")
    mesh_tls = f"ssl crt {certs.client_pem} ca-file {certs.ca_crt} verify required sni str({SNI}){mesh_server}"
    (d / "front.cfg").write_text(
        common
        + f"""
frontend up_{SERVER_SVC}
    bind 127.0.0.1:{front}{front_bind}
{front_extra}    default_backend b_{SERVER_SVC}
backend b_{SERVER_SVC}
    server s 127.0.0.1:{back} {mesh_tls}
"""
    )
    (d / "back.cfg").write_text(
        common
        + f"""
frontend inbound
    bind 127.0.0.1:{back} ssl crt {server_pem} ca-file {certs.ca_crt} verify required{inbound_bind}
{back_extra}    default_backend app
backend app
    server app 127.0.0.1:{app_port}{app_server}
"""
    )
    for side in ("front", "back"):
        r = subprocess.run([haproxy, "-c", "-f", str(d / f"{side}.cfg")], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"haproxy {side}.cfg invalid:\n{r.stdout}{r.stderr}")
    pb = h.spawn(f"{label}-back", [haproxy, "-db", "-f", str(d / "back.cfg")], "proxy", h.proxy_cpus)
    pf = h.spawn(f"{label}-front", [haproxy, "-db", "-f", str(d / "front.cfg")], "proxy", h.proxy_cpus)
    procs = [pb, pf]
    h.wait_port(back, procs, timeout, "haproxy inbound side")
    h.wait_port(front, procs, timeout, "haproxy upstream side")
    v = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.splitlines()
    ver = v[0].split()[2] if v and len(v[0].split()) > 2 else "?"  # "HAProxy version 2.6.12-1+deb12u3 ..."
    return Pair(front, back, procs, {"version": ver, **(info or {})}, {"upstream": pf, "inbound": pb})


def write_yaml(path: Path, data: Any) -> None:
    # JSON is YAML; no dependency on PyYAML in the orchestrator.
    path.write_text(json.dumps(data, indent=2) + "\n")


def start_meshgw(h: Harness, certs: Certs, app_port: int, timeout: float, variant: str = "meshgw") -> Pair:
    mg = meshgw_bin()
    front, back = h.port(), h.port()
    admin_up, admin_in, web_dummy = h.port(), h.port(), h.port()
    for side in ("web", "api"):
        d = h.work / variant / side
        d.mkdir(parents=True, exist_ok=True)
        write_yaml(
            d / "catalog.yaml",
            {"services": {SERVER_SVC: [{"address": "127.0.0.1", "port": back, "datacenter": DC, "health": "passing"}]}},
        )
        write_yaml(
            d / "intentions.yaml",
            {"Kind": "service-intentions", "Name": SERVER_SVC, "Sources": [{"Name": CLIENT_SVC, "Action": "allow"}]},
        )
    common = {
        "datacenter": DC,
        "log_level": h.meshgw_log_level,
        "drain_timeout": "1s",  # the bench stops pairs with open connections; no need to wait 15s
        "control_plane": {"type": "local", "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"}},
        "certificates": {"type": "builtin", "builtin": {"dir": str(certs.ca_dir), "leaf_ttl": "24h"}},
    }
    web_cfg = h.work / variant / "web" / "meshgw.yaml"
    api_cfg = h.work / variant / "api" / "meshgw.yaml"
    write_yaml(
        web_cfg,
        {
            **common,
            "service": {"name": CLIENT_SVC, "address": "127.0.0.1", "port": web_dummy},
            "upstreams": [{"service": SERVER_SVC, "bind": f"127.0.0.1:{front}"}],
            "admin": {"bind": f"127.0.0.1:{admin_up}"},
        },
    )
    write_yaml(
        api_cfg,
        {
            **common,
            "service": {"name": SERVER_SVC, "address": "127.0.0.1", "port": app_port},
            "inbound": {"bind": f"127.0.0.1:{back}"},
            "admin": {"bind": f"127.0.0.1:{admin_in}"},
        },
    )
    for cfg in (web_cfg, api_cfg):
        r = subprocess.run([mg, "validate", "-c", str(cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"meshgw validate {cfg} failed:\n{r.stdout}{r.stderr}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pb = h.spawn("meshgw-inbound", [mg, "run", "-c", str(api_cfg)], "proxy", h.proxy_cpus, cwd=api_cfg.parent, env=env)
    pf = h.spawn("meshgw-upstream", [mg, "run", "-c", str(web_cfg)], "proxy", h.proxy_cpus, cwd=web_cfg.parent, env=env)
    procs = [pb, pf]
    h.wait_http(admin_in, "/ready", procs, timeout, "meshgw inbound side /ready")
    h.wait_http(admin_up, "/ready", procs, timeout, "meshgw upstream side /ready")
    h.wait_port(back, procs, timeout, "meshgw inbound listener")
    h.wait_port(front, procs, timeout, "meshgw upstream listener")
    return Pair(
        front,
        back,
        procs,
        {
            "version": meshgw_version(),
            "python": platform.python_version(),
            "data_path": subprocess.run(
                [sys.executable, "-c", "from gateway import dataplane; print(dataplane.describe())"],
                capture_output=True,
                text=True,
                cwd=str(REPO),
            ).stdout.strip(),
        },
        {"upstream": pf, "inbound": pb},
    )


def meshgw_version() -> str:
    """The meshgw under test: its commit (and whether the tree differs from it), and whether its core is the
    profile-guided build, as the core says itself (README, "The data plane"): a figure without the profile is
    another build's."""
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "connect"], capture_output=True, text=True
    ).stdout.strip()
    build = subprocess.run(
        [sys.executable, "-c", "from gateway import dataplane; print(dataplane.build())"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    ).stdout.strip()
    return f"git {rev}{' +uncommitted' if dirty else ''}, {build}"


def load_envoy_helpers() -> Any:
    """tests/envoy_consul.py: Consul-shaped Envoy bootstraps (written alongside the interop tests)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import tests.envoy_consul as ec
    except ImportError as first:
        try:
            sys.path.insert(0, str(REPO / "tests"))
            import envoy_consul as ec
        except ImportError:
            raise BenchError(f"tests/envoy_consul.py is not available ({first})") from None
    return ec


def start_envoy(h: Harness, certs: Certs, app_port: int, timeout: float) -> Pair:
    """Two Envoys with the bootstraps of tests/envoy_consul.py (what Consul's xDS would serve), started by
    its EnvoyProcess helper with --concurrency 1, then pinned (all threads) to the proxy CPUs."""
    ec = load_envoy_helpers()
    d = h.work / "envoy"
    d.mkdir(exist_ok=True)
    front, back = h.port(), h.port()
    common = dict(datacenter=DC, trust_domain=TRUST_DOMAIN, ca_file=certs.ca_crt, concurrency=1)
    api_boot = ec.sidecar_bootstrap(
        admin_port=0,
        service_name=SERVER_SVC,
        cert_file=certs.server_crt,
        key_file=certs.server_key,
        inbound_port=back,
        local_app_port=app_port,
        allowed_sources=[CLIENT_SVC],
        default_allow=False,
        **common,
    )
    web_boot = ec.sidecar_bootstrap(
        admin_port=0,
        service_name=CLIENT_SVC,
        cert_file=certs.client_crt,
        key_file=certs.client_key,
        inbound_port=None,
        local_app_port=None,
        upstreams=[{"service": SERVER_SVC, "local_port": front, "endpoints": [("127.0.0.1", back)]}],
        **common,
    )
    pair = Pair(front, back)
    for side, name, boot in (("inbound", "envoy-inbound", api_boot), ("upstream", "envoy-upstream", web_boot)):
        path = ec.write_bootstrap(boot, d / f"{name}.json")
        ep = ec.EnvoyProcess(path, workdir=d, concurrency=1, log_level="warning", name=name)
        proc = Proc(name, None, ep.log_path, "proxy", stopper=ep.stop)  # type: ignore[arg-type]
        h.procs.append(proc)
        try:
            ep.start(timeout=timeout)
        except ec.EnvoyError as e:
            raise BenchError(str(e)) from None
        finally:
            proc.popen = ep.proc  # type: ignore[assignment]
        if h.proxy_cpus:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", h.proxy_cpus, str(ep.proc.pid)], check=True, stdout=subprocess.DEVNULL
            )
        pair.procs.append(proc)
        pair.by_side[side] = proc
    h.wait_port(back, pair.procs, timeout, "envoy inbound listener")
    h.wait_port(front, pair.procs, timeout, "envoy upstream listener")
    v = subprocess.run([ec.envoy_binary(), "--version"], capture_output=True, text=True).stdout.split()
    parts = v[-1].split("/") if v else []  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    ver = f"{parts[1]} {parts[-1]}" if len(parts) >= 5 else (v[-1] if v else "?")
    pair.info = {"version": ver, "bootstrap": "tests/envoy_consul.py sidecar_bootstrap"}
    return pair


# ---------------------------------------------------------------------------------------------- measuring


WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.1f,"p75_us":%.1f,"p90_us":%.1f,' ..
    '"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f,"mean_us":%.1f,"stdev_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, latency.stdev,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# Latency at a fixed rate: each connection waits WRK_DELAY_MS after each answer, so the total stays near the rate
# (a little under it by the response time). At saturation p99 is mostly queueing, and a faster pair also loads the
# CPU wrk and nginx share harder; at a rate every pair holds, it is the pair's own latency (as http_bench.py).
WRK_PACED = (
    r"""
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "0")
function delay()
  return pause
end
"""
    + WRK_LUA
)


def run_wrk(
    h: Harness,
    port: int,
    args: argparse.Namespace,
    duration: float,
    lua: Path | None,
    close: bool = False,
    rate: float = 0.0,
) -> dict[str, Any]:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if close:  # one request per connection: every request pays a new connection (and mTLS handshake)
        argv += ["-H", "Connection: close"]
    if lua:
        argv += ["-s", str(lua)]
    argv.append(f"http://127.0.0.1:{port}/small")
    env = dict(os.environ)
    if rate:
        env["WRK_DELAY_MS"] = f"{args.connections / rate * 1000:.3f}"
    r = subprocess.run(h.pin(argv, h.load_cpus), capture_output=True, text=True, timeout=duration + 60, env=env)
    if r.returncode != 0:
        raise BenchError(f"wrk failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    if not lua:
        return {"raw": r.stdout}
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if not line:
        raise BenchError(f"wrk printed no summary:\n{r.stdout}{r.stderr}")
    res = json.loads(line[len("WRKJSON ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    res["raw"] = r.stdout
    return res


def run_transfer(h: Harness, port: int, big_bytes: int) -> dict[str, float]:
    curl = shutil.which("curl")
    if not curl:
        raise BenchError("curl not found (bench/run.sh installs it)")
    argv = [
        curl,
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "300",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
        f"http://127.0.0.1:{port}/big",
    ]
    r = subprocess.run(h.pin(argv, h.load_cpus), capture_output=True, text=True, timeout=330)
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) != 3:
        raise BenchError(f"curl /big failed ({r.returncode}): {r.stdout} {r.stderr}")
    code, size, secs = int(parts[0]), int(parts[1]), float(parts[2])
    if code != 200 or size != big_bytes:
        raise BenchError(f"curl /big: status {code}, {size} bytes (expected 200, {big_bytes})")
    return {"seconds": secs, "mbps": size / secs / 1e6}


def wait_idle(procs: list[Proc], timeout: float = 10.0) -> None:
    """Until the processes use (almost) no CPU for 0.3 s, or ``timeout``."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        c0 = cpu_of(procs)
        time.sleep(0.1)
        quiet = quiet + 1 if cpu_of(procs) - c0 < 0.005 else 0


def cpu_of(procs: list[Proc]) -> float:
    return sum(p.cpu_seconds() for p in procs)


def system_busy() -> float:
    """CPU-seconds all CPUs spent not idle (user+nice+system+irq+softirq) or stolen by the hypervisor (steal),
    from /proc/stat."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(x) for x in (f[1], f[2], f[3], f[6], f[7], f[8])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """user+system CPU of our reaped children (wrk, curl) so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(
    h: Harness, name: str, port: int, procs: list[Proc], args: argparse.Namespace, big_bytes: int, lua: Path
) -> dict[str, Any]:
    if args.warmup > 0:
        log(f"{name}: warm-up {args.warmup:g}s")
        run_wrk(h, port, args, args.warmup, None)
        h.check_alive(procs)
    log(f"{name}: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s")
    ours = [*procs, *([h.app] if h.app else [])]
    cpu0, sys0, kids0, t0 = cpu_of(procs), system_busy(), children_cpu(), time.monotonic()
    ours0 = cpu_of(ours)
    w = run_wrk(h, port, args, args.duration, lua)
    cpu1, sys1, kids1, t1 = cpu_of(procs), system_busy(), children_cpu(), time.monotonic()
    ours1 = cpu_of(ours)
    h.check_alive(procs)
    res: dict[str, Any] = {
        "rps": w["rps"],
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "requests": w["requests"],
        "errors": w["errors"],
        "wrk": {k: v for k, v in w.items() if k != "raw"},
        "wrk_output": w["raw"],
    }
    # CPU used during the wrk run by anything that is not ours (other work on this machine): a noise gauge.
    res["other_cpu_cores"] = max(0.0, ((sys1 - sys0) - (ours1 - ours0) - (kids1 - kids0)) / (t1 - t0))
    if procs and w["requests"]:
        res["proxy_cpu_s"] = cpu1 - cpu0
        res["proxy_cpu_us_per_req"] = (cpu1 - cpu0) / w["requests"] * 1e6
        res["proxy_cpu_util"] = (cpu1 - cpu0) / (t1 - t0)
    if args.rate > 0 and args.rate_duration > 0:
        paced = lua.with_name("paced.lua")
        if not paced.exists():
            paced.write_text(WRK_PACED)
        log(f"{name}: fixed rate {args.rate:,.0f} req/s for {args.rate_duration:g}s")
        run_wrk(h, port, args, 2.0, paced, rate=args.rate)  # settle at the pace first
        f = run_wrk(h, port, args, args.rate_duration, paced, rate=args.rate)
        h.check_alive(procs)
        res["rate_rps"] = f["rps"]
        res["rate_p50_ms"] = f["p50_us"] / 1000
        res["rate_p99_ms"] = f["p99_us"] / 1000
        res["rate_p999_ms"] = f["p999_us"] / 1000
        res["errors"] += f["errors"]
    if args.conn_duration > 0:
        log(f"{name}: wrk ... -d{args.conn_duration:g}s -H 'Connection: close' (new connection per request)")
        cpu0 = cpu_of(procs)
        c = run_wrk(h, port, args, args.conn_duration, lua, close=True)
        h.check_alive(procs)
        # Connections wrk opened before it stopped may still wait in the listener's accept queue: a proxy slower
        # at handshakes works through them after wrk has gone. That work belongs to this run (CPU per connection)
        # and must not overlap the transfers below (it made the first transfer look slow).
        wait_idle(procs)
        res["cps"] = c["rps"]
        res["cps_errors"] = c["errors"]
        res["cps_p99_ms"] = c["p99_us"] / 1000
        if procs and c["requests"]:
            res["proxy_cpu_us_per_conn"] = (cpu_of(procs) - cpu0) / c["requests"] * 1e6
    runs = []
    for i in range(args.big_runs):
        cpu0 = cpu_of(procs)
        t = run_transfer(h, port, big_bytes)
        t["proxy_cpu_s"] = cpu_of(procs) - cpu0
        runs.append(t)
        log(f"{name}: /big #{i + 1}: {t['mbps']:.1f} MB/s ({t['seconds']:.2f}s)")
        h.check_alive(procs)
    res["transfers"] = runs
    res["mbps"] = statistics.median(r["mbps"] for r in runs)
    if procs:
        res["proxy_cpu_s_per_100mb"] = statistics.median(r["proxy_cpu_s"] for r in runs) * 100e6 / big_bytes
    return res


# ---------------------------------------------------------------------------------------------- py-spy


def pyspy_bin() -> str | None:
    exe = VENV_BIN / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def profile_meshgw(
    h: Harness, pair: Pair, args: argparse.Namespace, lua: Path, out_dir: Path, big_bytes: int
) -> dict[str, Any]:
    """Extra, unmeasured runs with py-spy sampling one meshgw process at a time, summarised.

    Two loads per side: keep-alive wrk ("rps") and back-to-back GET /big ("bulk"). The load starts first and
    py-spy attaches once it is flowing, so the samples are the steady-state data path (the handshakes are
    what conn/s measures)."""
    import threading

    spy = pyspy_bin()
    if not spy:
        return {"error": "py-spy not installed (pip install py-spy into .venv)"}
    dur = max(5.0, args.duration)
    native = not args.profile_python
    result: dict[str, Any] = {"native": native, "seconds": dur}
    for kind in ("rps", "bulk"):
        for side in ("upstream", "inbound"):
            proc = pair.by_side[side]
            raw = out_dir / f"profile-meshgw-{side}-{kind}.txt"
            raw.unlink(missing_ok=True)
            argv = [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--duration",
                f"{int(dur)}",
                "--format",
                "raw",
                "--idle",
                "--rate",
                "100" if native else "250",
                "-o",
                str(raw),
            ]
            if native:
                argv.insert(2, "--native")
            log(
                f"meshgw: profiling the {side} side under {kind} load (py-spy{' --native' if native else ''}, "
                f"{dur:g}s, not counted)"
            )
            done: dict[str, Any] = {}

            def load(kind: str = kind, done: dict[str, Any] = done) -> None:
                try:
                    if kind == "rps":
                        done["rps"] = run_wrk(h, pair.front_port, args, dur + 4, lua)["rps"]
                    else:
                        t0 = time.monotonic()
                        done["mbps"] = bulk_for(h, pair.front_port, big_bytes, dur + 3) / (time.monotonic() - t0)
                except BenchError as e:
                    done["error"] = str(e)

            th = threading.Thread(target=load, daemon=True)
            th.start()
            time.sleep(2.0)  # connections and handshakes done, data flowing
            cpu0, t0 = proc.cpu_seconds(), time.monotonic()
            r = subprocess.run(h.pin(argv, h.load_cpus), capture_output=True, text=True, timeout=dur + 60)
            util = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            th.join(dur + 120)
            key = f"{side}_{kind}"
            if not raw.exists() or raw.stat().st_size == 0:
                result[key] = {"error": f"py-spy wrote nothing: {r.stdout[-300:]}{r.stderr[-300:]}"}
                continue
            result[key] = summarise_collapsed(raw)
            result[key].update(file=str(raw), cpu_util=util, load=done)
    return result


def bulk_for(h: Harness, port: int, big_bytes: int, seconds: float) -> float:
    """Back-to-back GET /big transfers for about `seconds`; returns MB moved."""
    end = time.monotonic() + seconds
    moved = 0
    while time.monotonic() < end:
        run_transfer(h, port, big_bytes)
        moved += big_bytes
    return moved / 1e6


def _strace_summary(path: Path) -> dict[str, int]:
    calls: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) in (5, 6) and f[-1] != "total" and f[3].isdigit():
                calls[f[-1]] = int(f[3])
    except OSError:
        pass
    return calls


def count_syscalls(h: Harness, pair: Pair, args: argparse.Namespace, lua: Path, big_bytes: int) -> dict[str, Any]:
    """Extra, unmeasured runs with `strace -c -f` attached to both proxy processes: system calls per request
    (keep-alive wrk, 4 s) and per MB (back-to-back /big transfers). ptrace slows the proxies a lot; the counts
    per unit of work are what matter."""
    out: dict[str, Any] = {}
    loads: dict[str, Callable[[], float]] = {
        "per_request": lambda: float(run_wrk(h, pair.front_port, args, 4.0, lua)["requests"]),
        "per_mb": lambda: bulk_for(h, pair.front_port, big_bytes, 4.0),
    }
    for unit, load in loads.items():
        tracers = {}
        for side, proc in pair.by_side.items():
            outf = h.work / f"strace-{unit}-{side}.txt"
            tp = h.spawn(
                f"strace-{side}", ["strace", "-c", "-f", "-o", str(outf), "-p", str(proc.pid)], "tool", h.load_cpus
            )
            tracers[side] = (tp, outf)
        time.sleep(1.0)  # attached
        amount = load()
        time.sleep(0.3)
        for side, (tp, outf) in tracers.items():
            if tp.alive():
                os.kill(tp.pid, signal.SIGINT)  # strace prints its summary on detach
                try:
                    tp.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            h.stop(tp)
            calls = _strace_summary(outf)
            if not calls or not amount:
                out.setdefault(side, {})[unit] = {"error": f"no strace summary ({tp.tail(3)})"}
                continue
            by = {k: round(v / amount, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
            out.setdefault(side, {})[unit] = {"total": round(sum(calls.values()) / amount, 2), "by_call": by}
    return out


def _category(leaf: str) -> str:
    name, _, where = leaf.partition(" (")
    where = where.rstrip(")")
    if "epoll" in name or name.startswith(("select (selectors", "poll (selectors")):
        return "idle: waiting in epoll"
    if "libc.so" in where and name in ("write", "writev", "send", "sendto", "sendmsg", "__send", "__libc_write"):
        return "kernel: socket write (incl. loopback TCP delivery)"
    if "libc.so" in where and name in ("read", "readv", "recv", "recvfrom", "recvmsg", "__libc_read"):
        return "kernel: socket read"
    if "libcrypto" in where or "libssl" in where or name.startswith(("EVP_", "SSL_", "OPENSSL_", "aes", "gcm")):
        return "TLS: libssl/libcrypto"
    if "libc.so" in where and name in (
        "malloc",
        "free",
        "realloc",
        "calloc",
        "_int_malloc",
        "_int_free",
        "malloc_consolidate",
        "cfree",
    ):
        return "malloc/free"
    if "libc.so" in where:
        return "libc: other (syscalls, locks, memcpy)"
    if where.endswith(".py") or ".py:" in where:
        return "Python code (own time of .py frames)"
    if where.startswith(("loop.c", "stream.c", "core.c", "linux.c", "uv", "handles.c")) or "uvloop" in where:
        return "uvloop/libuv (Cython + C)"
    if (
        "libpython" in where
        or where.startswith(("ceval", "object.h", "_asyncio", "Objects/", "Python/"))
        or where.endswith((".h", ".c"))
    ):
        return "CPython runtime (ceval, objects, refcounts, _ssl glue)"
    return "other"


def summarise_collapsed(path: Path, top: int = 20) -> dict[str, Any]:
    """Where the busy (non-idle) samples of py-spy's collapsed ('raw') output went.

    Idle samples (the event loop's epoll wait) are counted apart; categories, own-time frames and
    inclusive-time frames are percentages of the busy samples only.
    """
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        cat = _category(frames[-1])
        if cat.startswith("idle"):
            idle += count
            continue
        cats[cat] += count
        self_c[frames[-1]] += count
        # Inclusive time per Python function (line numbers dropped, so each function counts once per sample).
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames if ".py:" in f}:
            incl_c[f] += count
    busy = total - idle

    def pct(items: list[tuple[str, int]]) -> list[list[Any]]:
        return [[f, round(100 * n / busy, 1)] for f, n in items] if busy else []

    # Inclusive: Python functions that explain the busy time, without the ancestors every sample shares.
    interesting = [(f, n) for f, n in incl_c.most_common() if n < 0.9 * busy]
    return {
        "samples": total,
        "idle_pct": round(100 * idle / total, 1) if total else None,
        "busy_samples": busy,
        "categories": pct(cats.most_common()),
        "self_top": pct(self_c.most_common(top)),
        "inclusive_top": pct(interesting[:top]),
    }


# ---------------------------------------------------------------------------------------------- report


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for subject in MESHGW_VARIANTS:
        if subject in results:
            rows.extend(_ratio_rows(results, subject))
    return rows


def _ratio_rows(results: dict[str, dict[str, Any]], subject: str) -> list[dict[str, Any]]:
    rows = []
    m = results.get(subject, {})
    for ref in ("haproxy", "envoy"):
        r = results.get(ref, {})
        if "rps" not in m or "rps" not in r:
            rows.append(
                {
                    "subject": subject,
                    "vs": ref,
                    "available": False,
                    "why": "; ".join(x.get("error", "") for x in (m, r) if x.get("error")) or "not run",
                }
            )
            continue
        row = {
            "subject": subject,
            "vs": ref,
            "available": True,
            "rps": m["rps"] / r["rps"],
            "mbps": m["mbps"] / r["mbps"],
            "p99": m["p99_ms"] / r["p99_ms"],
        }
        if m.get("cps") and r.get("cps"):
            row["cps"] = m["cps"] / r["cps"]
        if m.get("rate_p99_ms") and r.get("rate_p99_ms"):
            row["rate_p99"] = m["rate_p99_ms"] / r["rate_p99_ms"]
        if m.get("proxy_cpu_us_per_req") and r.get("proxy_cpu_us_per_req"):
            row["cpu_per_req"] = m["proxy_cpu_us_per_req"] / r["proxy_cpu_us_per_req"]
        row["goals"] = {
            k: {"goal": g, "ok": (row[k] <= g) if k in CEILINGS else (row[k] >= g)}
            for k, g in GOALS.get(ref, {}).items()
            if k in row
        }
        rows.append(row)
    return rows


def ratio_figure(row: dict[str, Any], key: str, label: str, unit: str = "") -> str:
    """One ratio of a row, with its goal and verdict when the issue sets one against this peer."""
    text = f"{label} {row[key]:.2f}{unit}"
    goal = row.get("goals", {}).get(key)
    if goal:
        sign = "<=" if key in CEILINGS else ">="
        text += f" (goal {sign} {goal['goal']:.1f}: {'PASS' if goal['ok'] else 'FAIL'})"
    return text


def print_report(out: dict[str, Any]) -> None:
    s = out["settings"]
    results = out["results"]
    pin = (
        f"wrk+curl+nginx pinned to CPU {s['load_cpus']}, both proxy processes to CPU {s['proxy_cpus']}"
        if s["load_cpus"]
        else "no CPU pinning"
    )
    print()
    print(f"L4 mTLS proxy-pair benchmark: {s['cpus']} CPUs, {pin}")
    print(
        f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']:g}s --latency, keep-alive GET /small "
        f"({s['small_body_bytes']} B body); MB/s = GET /big ({s['big_bytes'] / 1e6:g} MB) with curl, "
        f"median of {s['big_runs'] * s['rounds']}" + (f"; medians of {s['rounds']} rounds" if s["rounds"] > 1 else "")
    )
    print()
    hdr = (
        f"{'variant':<18}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'MB/s':>7}{'conn/s':>8}"
        f"{'CPU us/req':>11}{'CPU s/100MB':>12}{'CPU us/conn':>12}{'errs':>5}{'other':>6}  mTLS / authz / TLS"
    )
    print(hdr)
    print("-" * (len(hdr) + 22))
    for v in out["variants"]:
        r = results.get(v, {})
        if "error" in r:
            print(f"{LABEL[v]:<18}FAILED: {r['error'].splitlines()[0][:110]}")
            continue
        tls = r.get("tls") or {}
        chk = r.get("checks") or {}
        sec = ""
        if chk:
            sec = (
                f"{'required' if chk.get('mtls_required') else 'NOT REQUIRED'} / "
                f"{'denies intruder' if chk.get('other_service_denied') else 'none'} / "
                f"{tls.get('version', '?')} {tls.get('cipher', '')}"
            )
        print(
            f"{LABEL[v]:<18}{fmt(r.get('rps'), ',.0f'):>9}{fmt(r.get('p50_ms'), '.2f'):>8}"
            f"{fmt(r.get('p99_ms'), '.2f'):>8}{fmt(r.get('mbps'), '.0f'):>7}{fmt(r.get('cps'), ',.0f'):>8}"
            f"{fmt(r.get('proxy_cpu_us_per_req'), '.1f'):>11}{fmt(r.get('proxy_cpu_s_per_100mb'), '.3f'):>12}"
            f"{fmt(r.get('proxy_cpu_us_per_conn'), ',.0f'):>12}"
            f"{r.get('errors', 0):>5}{fmt(r.get('other_cpu_cores'), '.2f'):>6}  {sec}"
        )
    print()
    print("conn/s: wrk with 'Connection: close', so each request is a new connection (a new mTLS handshake).")
    print("CPU us/req, s/100MB, us/conn: user+system CPU of the two proxy processes together (lower is better).")
    print(
        "other: CPU cores used by processes that are not part of the bench (or stolen by the hypervisor) "
        "during the wrk run: noise."
    )
    vers = [
        f"{LABEL[v].split()[0]} {results[v]['info']['version']}"
        for v in out["variants"]
        if (results.get(v) or {}).get("info", {}).get("version")
    ]
    if vers:
        print("versions: " + "; ".join(vers))
    dp = (results.get("meshgw") or {}).get("info", {}).get("data_path")
    if dp:
        print(f"meshgw data path: {dp}")
    noisy = [LABEL[v] for v in out["variants"] if (results.get(v) or {}).get("other_cpu_cores", 0) > NOISY]
    if noisy:
        print(f"WARNING: other load on the machine during {', '.join(noisy)}: numbers are less trustworthy.")
    print()
    print("meshgw ratios (req/s, MB/s, conn/s: higher is better; p99 and CPU/req: lower is better)")
    if s.get("rate"):
        print(f"fixed rate: {s['rate']:,.0f} req/s paced over the same {s.get('connections', 32)} connections")
        for v, r in results.items():
            if r.get("rate_p99_ms"):
                print(
                    f"  {LABEL[v]:<18} {r['rate_rps']:,.0f} req/s  p50 {r['rate_p50_ms']:.3f} ms"
                    f"  p99 {r['rate_p99_ms']:.3f} ms  p99.9 {r['rate_p999_ms']:.3f} ms"
                )
    for row in out["ratios"]:
        name = {"haproxy": "HAProxy", "envoy": "Envoy"}[row["vs"]]
        subject = row.get("subject", "meshgw")
        if not row["available"]:
            print(f"  {subject} / {name:<8} n/a ({row['why'].splitlines()[0][:100]})")
            continue
        figs = [
            ratio_figure(row, "rps", "req/s"),
            ratio_figure(row, "mbps", "MB/s"),
            ratio_figure(row, "p99", "p99", "x"),
        ]
        figs += [f"CPU/req {row['cpu_per_req']:.2f}x"] if "cpu_per_req" in row else []
        figs += [ratio_figure(row, "cps", "conn/s")] if "cps" in row else []
        figs += [f"p99 at the fixed rate {row['rate_p99']:.2f}x"] if "rate_p99" in row else []
        print(f"  {subject} / {name:<8} " + "   ".join(figs))
    m_rounds = (results.get("meshgw") or {}).get("rounds") or []
    if len(m_rounds) > 1:
        print()
        print("per round (same minute, so host drift cancels; 'other' = the most other load among the variants):")
        for i, m in enumerate(m_rounds):
            parts = []
            worst = m.get("other_cpu_cores") or 0.0
            for ref in ("haproxy", "envoy"):
                rr = (results.get(ref) or {}).get("rounds") or []
                if i < len(rr) and rr[i].get("rps") and rr[i].get("mbps"):
                    r = rr[i]
                    worst = max(worst, r.get("other_cpu_cores") or 0.0)
                    cpu = ""
                    if m.get("proxy_cpu_us_per_req") and r.get("proxy_cpu_us_per_req"):
                        cpu = f" CPU/req {m['proxy_cpu_us_per_req'] / r['proxy_cpu_us_per_req']:.2f}x"
                    parts.append(f"/{ref}: req/s {m['rps'] / r['rps']:.2f} MB/s {m['mbps'] / r['mbps']:.2f}{cpu}")
            print(
                f"  round {i + 1}: meshgw {m['rps']:,.0f} req/s {m['mbps']:.0f} MB/s  "
                + "  ".join(parts)
                + f"  (other {worst:.2f})"
            )
    sc_rows = [(v, results[v]["syscalls"]) for v in out["variants"] if (results.get(v) or {}).get("syscalls")]
    if sc_rows:
        for unit, title in (("per_request", "per request (keep-alive wrk)"), ("per_mb", "per MB (GET /big)")):
            print()
            print(f"system calls {title}, strace -c in a separate run; top calls per side:")
            for v, sc in sc_rows:
                for side in ("upstream", "inbound"):
                    x = (sc.get(side) or {}).get(unit) or {}
                    if "error" in x or not x:
                        print(f"  {LABEL[v]:<14} {side:<8} {x.get('error', 'n/a')[:90]}")
                        continue
                    top = ", ".join(f"{k} {n:g}" for k, n in list(x["by_call"].items())[:5])
                    print(f"  {LABEL[v]:<14} {side:<8} {x['total']:6.2f}  ({top})")
    prof = results.get("meshgw", {}).get("profile")
    if prof:
        print()
        print(
            f"py-spy{' --native' if prof.get('native') else ''} on one meshgw process at a time, "
            f"{prof.get('seconds', 0):g}s under keep-alive wrk (rps) or back-to-back GET /big (bulk), "
            "separate unmeasured runs; shares are of busy (non-epoll) samples"
        )
        for kind in ("rps", "bulk"):
            for side in ("upstream", "inbound"):
                p = prof.get(f"{side}_{kind}") or {}
                if "error" in p:
                    print(f"  {side}/{kind}: {p['error'].splitlines()[0]}")
                    continue
                if not p:
                    continue
                ld = p.get("load", {})
                rate = f"{ld['rps']:,.0f} req/s" if "rps" in ld else f"{ld['mbps']:,.0f} MB/s" if "mbps" in ld else "?"
                print(
                    f"  {side} side, {kind}: {p['busy_samples']}/{p['samples']} samples busy, CPU "
                    f"{p['cpu_util']:.0%} of a core at {rate} while sampled  [{p['file']}]"
                )
                print("    " + ", ".join(f"{c} {pc:g}%" for c, pc in p["categories"][:7]))
                print("    own time: " + ", ".join(f"{f} {pc:g}%" for f, pc in p["self_top"][:5]))
                print("    Python, inclusive: " + ", ".join(f"{f} {pc:g}%" for f, pc in p["inclusive_top"][:5]))
    print()
    print(f"results: {out.get('json_path', '-')}")


# ---------------------------------------------------------------------------------------------- main


STARTERS: dict[str, Callable[[Harness, Certs, int, float], Pair]] = {
    "haproxy": start_haproxy,
    "meshgw": start_meshgw,
    "envoy": start_envoy,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)"
    )
    ap.add_argument("--duration", type=float, default=10.0, help="wrk seconds per variant (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk seconds first (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument(
        "--conn-duration",
        type=float,
        default=5.0,
        help="seconds of wrk with 'Connection: close' (new connection + handshake per request); 0: skip",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=15000.0,
        help="fixed rate in req/s for the latency run (default 15,000: under every pair's saturation here); 0: skip",
    )
    ap.add_argument("--rate-duration", type=float, default=5.0, help="seconds of the fixed-rate run (default 5)")
    ap.add_argument("--big-mb", type=float, default=100.0, help="size of the bulk transfer in MB (10^6 bytes)")
    ap.add_argument("--big-runs", type=int, default=3, help="bulk transfers per variant; the median counts")
    ap.add_argument("--load-cpus", default="0", help="CPU list for wrk, curl and nginx (default 0)")
    ap.add_argument("--proxy-cpus", default="1", help="CPU list for both proxy processes (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for a proxy to serve")
    ap.add_argument("--profile", action="store_true", help="py-spy both meshgw processes in an extra wrk run")
    ap.add_argument(
        "--profile-python",
        action="store_true",
        help="py-spy without --native (Python frames only; C time lands in the caller)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole variant sequence N times, interleaved; medians are reported",
    )
    ap.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help=f"re-measure a variant up to N times when other processes used > {NOISY} cores meanwhile; "
        "the quietest attempt counts (default 2; 0: never)",
    )
    ap.add_argument(
        "--syscalls",
        action="store_true",
        help="count system calls per request of each proxy with strace -c (extra, unmeasured run)",
    )
    ap.add_argument("--meshgw-log-level", default="warning", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--out", default=None, help="JSON result path (default bench/results/l4-<time>.json)")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    return args


def run_variant(
    h: Harness,
    v: str,
    certs: Certs,
    app_port: int,
    args: argparse.Namespace,
    big_bytes: int,
    lua: Path,
    last_round: bool,
) -> dict[str, Any]:
    """Start one pair (none for direct), check it end to end, measure it, stop it. Raises BenchError."""
    if v == "direct":
        return measure(h, v, app_port, [], args, big_bytes, lua)
    pair: Pair | None = None
    try:
        log(f"{v}: starting pair")
        t0 = time.monotonic()
        pair = STARTERS[v](h, certs, app_port, args.ready_timeout)
        h.wait_http(pair.front_port, "/small", pair.procs, args.ready_timeout, f"{v} end-to-end", SMALL_BODY)
        first_ok = time.monotonic() - t0
        log(f"{v}: serving end-to-end {first_ok:.1f}s after start")
        checks: dict[str, Any] = {}
        if pair.back_port:
            checks["allowed_client"] = tls_probe(pair.back_port, certs, (certs.client_crt, certs.client_key))
            checks["no_client_cert"] = tls_probe(pair.back_port, certs, None)
            checks["intruder_client"] = tls_probe(pair.back_port, certs, (certs.other_crt, certs.other_key))
            if checks["no_client_cert"].get("ok"):
                raise BenchError(f"{v}: the inbound side served a client without a certificate (no mTLS)")
            if not checks["allowed_client"].get("ok"):
                log(f"{v}: warning: direct TLS probe of the inbound side failed: {checks['allowed_client']}")
        res = measure(h, v, pair.front_port, pair.procs, args, big_bytes, lua)
        res["tls"] = checks.get("allowed_client", {})
        res["checks"] = {
            "mtls_required": not checks.get("no_client_cert", {}).get("ok", False),
            # HAProxy in this bench does no identity authorization; Envoy (RBAC) and meshgw (intentions) do.
            "other_service_denied": not checks.get("intruder_client", {}).get("ok", False),
            "probes": checks,
        }
        res["info"] = pair.info
        res["first_ok_after_s"] = first_ok
        if args.syscalls and last_round:
            log(f"{v}: counting system calls (strace -c, extra run, not counted)")
            res["syscalls"] = count_syscalls(h, pair, args, lua, big_bytes)
        if args.profile and v == "meshgw" and last_round:
            res["profile"] = profile_meshgw(h, pair, args, lua, RESULTS, big_bytes)
        return res
    except BenchError as e:
        if pair is None:
            tails = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in h.procs if p.role == "proxy")
            raise BenchError(f"{e}\n{tails}") from None
        raise
    finally:
        if pair is not None:
            for p in pair.procs:
                if not p.alive():
                    log(f"{p.name} had exited ({p.popen.returncode if p.popen else '?'}); log tail:\n{p.tail()}")
        for p in [p for p in h.procs if p.role in ("proxy", "tool")]:
            h.stop(p)


SCALARS = (
    "rps",
    "rate_rps",
    "rate_p50_ms",
    "rate_p99_ms",
    "rate_p999_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "proxy_cpu_us_per_req",
    "proxy_cpu_util",
    "other_cpu_cores",
    "cps",
    "cps_p99_ms",
    "proxy_cpu_us_per_conn",
)


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each scalar; MB/s is the median of all bulk transfers of all rounds."""
    agg: dict[str, Any] = {}
    for k in SCALARS:
        vals = [r[k] for r in rounds if r.get(k) is not None]
        if vals:
            agg[k] = statistics.median(vals)
    agg["requests"] = sum(r["requests"] for r in rounds)
    agg["errors"] = sum(r["errors"] for r in rounds) + sum(r.get("cps_errors", 0) for r in rounds)
    transfers = [t for r in rounds for t in r["transfers"]]
    agg["mbps"] = statistics.median(t["mbps"] for t in transfers)
    if any("proxy_cpu_s_per_100mb" in r for r in rounds):
        agg["proxy_cpu_s_per_100mb"] = statistics.median(
            r["proxy_cpu_s_per_100mb"] for r in rounds if "proxy_cpu_s_per_100mb" in r
        )
    last = rounds[-1]
    for k in ("tls", "checks", "info", "profile", "syscalls", "first_ok_after_s"):
        if k in last:
            agg[k] = last[k]
    agg["rounds"] = [
        {k: r.get(k) for k in (*SCALARS, "mbps", "requests", "errors", "transfers", "wrk", "info")} for r in rounds
    ]
    return agg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    ncpu = os.cpu_count() or 1
    if args.no_pin or ncpu < 2 or not shutil.which("taskset"):
        load_cpus = proxy_cpus = None
    else:
        load_cpus, proxy_cpus = args.load_cpus, args.proxy_cpus
    for tool in ("wrk", "curl", "openssl"):
        if not shutil.which(tool):
            log(f"{tool} not found: run bench/run.sh (it installs what is missing)")
            return 2
    if args.rounds < 1 or args.big_runs < 1 or args.duration <= 0:
        log("--rounds, --big-runs and --duration must be positive")
        return 2
    if args.syscalls and not shutil.which("strace"):
        log("--syscalls needs strace (bench/run.sh --syscalls installs it)")
        return 2
    if args.profile and not pyspy_bin():
        log("--profile needs py-spy: .venv/bin/pip install py-spy (bench/run.sh --profile does it)")
        return 2
    big_bytes = int(args.big_mb * 1e6)
    work = Path(tempfile.mkdtemp(prefix="meshgw-l4-bench-"))
    h = Harness(work, load_cpus, proxy_cpus)
    h.meshgw_log_level = args.meshgw_log_level

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(h.stop_all)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {
        "benchmark": "l4-mtls-proxy-pair",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "variants": variants,
        "settings": {
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
            "warmup": args.warmup,
            "conn_duration": args.conn_duration,
            "rate": args.rate,
            "rate_duration": args.rate_duration,
            "rounds": args.rounds,
            "big_bytes": big_bytes,
            "big_runs": args.big_runs,
            "load_cpus": load_cpus,
            "proxy_cpus": proxy_cpus,
            "cpus": ncpu,
            "small_body_bytes": len(SMALL_BODY),
            "sni": SNI,
        },
        "machine": {
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpus": ncpu,
            "cpu_model": cpu_model(),
            "loadavg_at_start": os.getloadavg(),
        },
        "results": {},
    }
    results: dict[str, dict[str, Any]] = out["results"]
    per_round: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    failed: dict[str, str] = {}
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    rc = 0
    try:
        log(f"work dir {work}")
        certs = make_certs(work)
        h.app, app_port = start_app(h, big_bytes)
        for rnd in range(args.rounds):
            for v in variants:
                if v in failed:
                    continue
                if args.rounds > 1:
                    log(f"round {rnd + 1}/{args.rounds}: {v}")
                try:
                    res = run_variant(h, v, certs, app_port, args, big_bytes, lua, rnd == args.rounds - 1)
                    for attempt in range(args.retry_noisy):
                        if res["other_cpu_cores"] <= NOISY:
                            break
                        log(
                            f"{v}: {res['other_cpu_cores']:.2f} cores of other load during the run; measuring "
                            f"again ({attempt + 1}/{args.retry_noisy})"
                        )
                        time.sleep(2.0)
                        again = run_variant(h, v, certs, app_port, args, big_bytes, lua, rnd == args.rounds - 1)
                        if again["other_cpu_cores"] < res["other_cpu_cores"]:
                            res = again
                    per_round[v].append(res)
                    log(
                        f"{v}: {res['rps']:,.0f} req/s  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                        f"{res['mbps']:.0f} MB/s  (other load on the machine: {res['other_cpu_cores']:.2f} cores)"
                    )
                except (BenchError, subprocess.SubprocessError, OSError) as e:
                    rc = 1
                    failed[v] = str(e)
                    log(f"{v}: FAILED: {e}")
                h.check_alive([h.app])
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        rc = 130
    except (BenchError, subprocess.SubprocessError, OSError) as e:
        log(f"FAILED: {e}")
        rc = 1
    finally:
        h.stop_all()
        for v in variants:
            if per_round[v]:
                results[v] = aggregate(per_round[v])
                if v in failed:
                    results[v]["error_in_later_round"] = failed[v]
            elif v in failed:
                results[v] = {"error": failed[v]}
        out["ratios"] = ratio_rows(results)
        out["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        path = Path(args.out) if args.out else RESULTS / f"l4-{stamp}.json"
        out["json_path"] = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        if path.resolve() != (RESULTS / "latest.json").resolve():
            shutil.copyfile(path, RESULTS / "latest.json")
        if results:
            print_report(out)
        if args.keep:
            log(f"kept work dir {work} (configs, certificates, logs)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
