#!/usr/bin/env python3
"""HTTP/2 and gRPC mTLS proxy-pair benchmark: meshgw vs HAProxy (``proto h2``) vs Envoy (Consul's http2/grpc config).

The topology of bench/http_bench.py, with HTTP/2 on every hop:

    h2load (h2c, prior knowledge) ──► upstream side (plaintext h2c listener) ──mTLS h2──► inbound side ──h2c──► nginx

Two loads, each through its own pair of every kind (a pair is configured for one protocol, as Consul does):

* ``http2``: ``GET /small`` (128 B body);
* ``grpc``: unary ``POST /demo.Echo/Unary`` with a 5-byte-framed request message, ``content-type: application/grpc``,
  ``te: trailers``; nginx answers ``content-type: application/grpc``, a framed message and the trailer
  ``grpc-status: 0``.

Pairs (one process per side, one worker thread each, both sides pinned to one CPU, h2load and nginx to the other):

* meshgw: ``protocol: http2`` / ``protocol: grpc`` on the service and the upstream;
* Envoy ``--concurrency 1``: tests/envoy_consul.py ``h2_sidecar_bootstrap("http2"|"grpc", ...)`` (HCM with
  ``http2_protocol_options``, gRPC filters, ALPN h2 on the public listener, explicit HTTP/2 clusters);
* HAProxy 2.6, ``nbthread 1``, ``mode http``: ``bind ... proto h2`` on the plaintext side, ``alpn h2`` on the mTLS
  server line, ``alpn h2,http/1.1`` on the mTLS bind, ``proto h2`` to the app; ``option forwardfor`` and a
  unique-id header (x-request-id) as in http_bench.py.

Before anything is measured, every pair serves one real request of its load end to end (h2c client, the app
must report ``HTTP/2.0`` in ``x-app-protocol``; gRPC: ``grpc-status: 0`` in the trailers and the framed message),
and its inbound side must select ALPN ``h2`` for a client offering ``h2,http/1.1`` with ``web``'s leaf.

Per pair and load: h2load ``-t1 -c8 -m16`` (same flags for every pair) for ``--warmup`` seconds, unmeasured, then
``-D --duration``; req/s from h2load, p50/p99 from its ``--log-file`` (per-request µs), errors = non-2xx + failed
+ errored + timed-out requests, and the CPU the two proxy processes used per request. Goal (issue #14): meshgw
req/s >= 1.0 x the faster peer's and p99 <= the faster peer's, for both loads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4_bench as l4  # the L4 bench's harness: processes, pinning, certificates, HAProxy pair, Envoy helpers

VARIANTS = ("direct", "haproxy", "envoy", "meshgw")
PEERS = ("haproxy", "envoy")
LOADS = ("http2", "grpc")
LABEL = {
    "direct": "direct (no proxy)",
    "haproxy": "HAProxy pair",
    "envoy": "Envoy pair",
    "meshgw": "meshgw pair",
}
LOAD_LABEL = {"http2": "HTTP/2 (GET /small)", "grpc": "gRPC (unary /demo.Echo/Unary)"}
GOALS = {"rps": 1.0, "p99": 1.0}  # against the faster peer
NOISY = l4.NOISY

SMALL_PATH = "/small"
GRPC_PATH = "/demo.Echo/Unary"
APP_PROTO_HEADER = "x-app-protocol"  # nginx's $server_protocol: what the app itself was spoken to with


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: compressed flag 0, 4-byte big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def pb_string_field(value: bytes) -> bytes:
    """A protobuf message with field 1 (a string) set: tag 0x0a, length, bytes (value shorter than 128 bytes)."""
    return b"\x0a" + bytes([len(value)]) + value


# A small request and a small answer, as a trivial Echo service would exchange.
GRPC_REQUEST = grpc_frame(pb_string_field(b"meshgw-bench request"))
GRPC_RESPONSE = grpc_frame(pb_string_field(b"meshgw-bench grpc response"))


# ---------------------------------------------------------------------------------------------- a small h2c client


def h2_request(
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 3.0,
) -> dict[str, Any]:
    """One request over a fresh h2c prior-knowledge connection; returns status, headers, body, trailers."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    out: dict[str, Any] = {"status": None, "headers": {}, "body": b"", "trailers": {}, "ended": False}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        req = [(":method", method), (":scheme", "http"), (":authority", "bench"), (":path", path), *(headers or [])]
        conn.send_headers(sid, req, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + timeout
        while not out["ended"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer in {timeout:g}s")
            data = s.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the stream ended")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    hd = dict(ev.headers)
                    out["status"] = int(hd.pop(":status"))
                    out["headers"] = hd
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    out["trailers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    out["ended"] = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise ConnectionError(f"stream reset (error code {ev.error_code})")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise ConnectionError(f"GOAWAY (error code {ev.error_code})")
            pending = conn.data_to_send()
            if pending:
                s.sendall(pending)
    return out


def request_for(load: str) -> tuple[str, str, list[tuple[str, str]], bytes]:
    if load == "grpc":
        return "POST", GRPC_PATH, [("content-type", "application/grpc"), ("te", "trailers")], GRPC_REQUEST
    return "GET", SMALL_PATH, [], b""


def check_answer(load: str, r: dict[str, Any]) -> str | None:
    """None when the answer is what the app sends for this load over HTTP/2; else what is wrong."""
    if r["status"] != 200:
        return f"status {r['status']}"
    app_proto = r["headers"].get(APP_PROTO_HEADER)
    if app_proto != "HTTP/2.0":
        return f"the app saw {app_proto!r}, not HTTP/2.0"
    if load == "http2":
        return None if r["body"] == l4.SMALL_BODY else f"body {r['body'][:40]!r}... ({len(r['body'])} bytes)"
    if not r["headers"].get("content-type", "").startswith("application/grpc"):
        return f"content-type {r['headers'].get('content-type')!r}"
    if r["body"] != GRPC_RESPONSE:
        return f"body {r['body'][:40]!r} is not the framed message"
    if r["trailers"].get("grpc-status") != "0":
        return f"trailers {r['trailers']} (expected grpc-status 0)"
    return None


def probe(port: int, load: str, timeout: float = 3.0) -> dict[str, Any]:
    method, path, headers, body = request_for(load)
    try:
        r = h2_request(port, method, path, headers, body, timeout)
    except (OSError, ConnectionError, TimeoutError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # h2's protocol errors: the peer spoke something that is not HTTP/2
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    problem = check_answer(load, r)
    res: dict[str, Any] = {
        "ok": problem is None,
        "status": r["status"],
        "app_protocol": r["headers"].get(APP_PROTO_HEADER),
        "grpc_status": r["trailers"].get("grpc-status"),
    }
    if problem:
        res["error"] = problem
    return res


def grpcio_call(port: int, timeout: float = 5.0) -> dict[str, Any]:
    """The same unary call with a real gRPC client (grpcio, plaintext channel = h2c prior knowledge): it must get
    the answer's message with status OK, i.e. the answer is well-formed gRPC, not only well-formed HTTP/2."""
    try:
        import grpc
    except ImportError:
        return {"ok": None, "error": "grpcio not installed"}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(GRPC_PATH, request_serializer=None, response_deserializer=None)
        try:
            msg, state = call.with_call(GRPC_REQUEST[5:], timeout=timeout)
        except grpc.RpcError as e:
            return {"ok": False, "error": f"grpcio: {e.code()} {e.details()}"}
    ok = msg == GRPC_RESPONSE[5:] and state.code() == grpc.StatusCode.OK
    return {"ok": ok, "code": state.code().name, **({} if ok else {"error": f"grpcio got {msg!r}"})}


def wait_probe(h: l4.Harness, port: int, load: str, procs: list[l4.Proc], timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        h.check_alive(procs)
        r = probe(port, load)
        if r["ok"] and load == "grpc":
            g = grpcio_call(port)
            r["grpcio"] = g.get("code", g.get("error"))
            if g["ok"] is False:
                r.update(ok=False, error=g["error"])
        if r["ok"]:
            return r
        if time.monotonic() > deadline:
            raise l4.BenchError(f"{what}: {load} request through 127.0.0.1:{port} not OK after {timeout:.0f}s: {r}")
        time.sleep(0.1)


def alpn_probe(port: int, certs: l4.Certs) -> dict[str, Any]:
    """TLS to the inbound side with web's leaf, offering h2 and http/1.1: what it selects (must be h2)."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_crt))
    ctx.check_hostname = False  # Connect identities are URI SANs
    ctx.load_cert_chain(str(certs.client_crt), str(certs.client_key))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=l4.SNI) as s,
        ):
            return {"alpn": s.selected_alpn_protocol(), "version": s.version(), "cipher": s.cipher()[0]}
    except (OSError, ssl.SSLError) as e:
        return {"alpn": None, "error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------- app (nginx, h2c)


def start_app(h: l4.Harness) -> tuple[l4.Proc, int]:
    """nginx with one h2c (prior knowledge) listener: GET /small, and the gRPC unary answer.

    nginx cannot put NUL bytes in a ``return`` body, so the framed gRPC answer is a file; the static module
    answers POST with 405, which ``error_page 405 =200`` turns into an internal GET of the file (status 200). The
    file is served from the open-file cache; ``add_trailer`` sends ``grpc-status: 0`` after the body."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise l4.BenchError("nginx not found (bench/run.sh installs nginx-light)")
    d = h.work / "app-h2"
    (d / "www").mkdir(parents=True, exist_ok=True)
    (d / "tmp").mkdir(exist_ok=True)
    unary = d / "www" / "unary"
    unary.write_bytes(GRPC_RESPONSE)
    port = h.port()
    small = l4.SMALL_BODY.decode().rstrip("\n")
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
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 1024;
    client_body_temp_path {d}/tmp/body;
    default_type application/octet-stream;
    open_file_cache max=16 inactive=300s;
    open_file_cache_valid 300s;
    etag off;
    max_ranges 0;
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        root {d}/www;
        add_header {APP_PROTO_HEADER} $server_protocol always;
        location = {SMALL_PATH} {{ return 200 "{small}\\n"; }}
        location = {GRPC_PATH} {{
            alias {unary};
            error_page 405 =200 /grpc-unary;
        }}
        location = /grpc-unary {{
            internal;
            alias {unary};
            types {{ }}
            default_type application/grpc;
            add_header {APP_PROTO_HEADER} $server_protocol always;
            add_header Last-Modified "";
            add_trailer grpc-status 0 always;
        }}
    }}
}}
""")
    p = h.spawn("nginx-h2", [nginx, "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)], "app", h.load_cpus)
    h.wait_port(port, [p], 10, "nginx")
    for load in LOADS:
        wait_probe(h, port, load, [p], 10, "nginx (h2c)")
    return p, port


# ---------------------------------------------------------------------------------------------- pairs


HAPROXY_REUSE: str | None = None  # --haproxy-http-reuse: None keeps HAProxy's default (safe)


def start_haproxy(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float, load: str) -> l4.Pair:
    # With its default `http-reuse safe`, HAProxy 2.6 sends each client stream's first request on a connection of
    # its own, so under h2 load it opens about one mTLS connection per concurrent stream (see the report's conns).
    reuse = f"    http-reuse {HAPROXY_REUSE}\n" if HAPROXY_REUSE else ""
    return l4.haproxy_pair(
        h,
        certs,
        app_port,
        timeout,
        label=f"haproxy-{load}",
        defaults="    mode http\n    option http-keep-alive\n    timeout http-keep-alive 300s\n" + reuse,
        front_extra="    option forwardfor\n"
        "    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n"
        "    unique-id-header x-request-id\n",
        back_extra="    option forwardfor\n",
        front_bind=" proto h2",
        mesh_server=" alpn h2",
        inbound_bind=" alpn h2,http/1.1",
        app_server=" proto h2",
        info={"mode": "http, proto h2 / alpn h2", "http-reuse": HAPROXY_REUSE or "safe (default)"},
    )


def start_meshgw(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float, load: str) -> l4.Pair:
    mg = l4.meshgw_bin()
    front, back = h.port(), h.port()
    admin_up, admin_in, web_dummy = h.port(), h.port(), h.port()
    base = h.work / f"meshgw-{load}"
    for side in ("web", "api"):
        d = base / side
        d.mkdir(parents=True, exist_ok=True)
        l4.write_yaml(
            d / "catalog.yaml",
            {"services": {l4.SERVER_SVC: [{"address": "127.0.0.1", "port": back, "datacenter": l4.DC}]}},
        )
        l4.write_yaml(
            d / "intentions.yaml",
            {
                "Kind": "service-intentions",
                "Name": l4.SERVER_SVC,
                "Sources": [{"Name": l4.CLIENT_SVC, "Action": "allow"}],
            },
        )
    common = {
        "datacenter": l4.DC,
        "log_level": h.meshgw_log_level,
        "drain_timeout": "1s",
        "control_plane": {"type": "local", "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"}},
        "certificates": {"type": "builtin", "builtin": {"dir": str(certs.ca_dir), "leaf_ttl": "24h"}},
    }
    web_cfg = base / "web" / "meshgw.yaml"
    api_cfg = base / "api" / "meshgw.yaml"
    l4.write_yaml(
        web_cfg,
        {
            **common,
            "service": {"name": l4.CLIENT_SVC, "address": "127.0.0.1", "port": web_dummy, "protocol": load},
            "upstreams": [{"service": l4.SERVER_SVC, "bind": f"127.0.0.1:{front}", "protocol": load}],
            "admin": {"bind": f"127.0.0.1:{admin_up}"},
        },
    )
    l4.write_yaml(
        api_cfg,
        {
            **common,
            "service": {"name": l4.SERVER_SVC, "address": "127.0.0.1", "port": app_port, "protocol": load},
            "inbound": {"bind": f"127.0.0.1:{back}"},
            "admin": {"bind": f"127.0.0.1:{admin_in}"},
        },
    )
    for cfg in (web_cfg, api_cfg):
        r = subprocess.run([mg, "validate", "-c", str(cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            raise l4.BenchError(f"meshgw validate {cfg} failed:\n{r.stdout}{r.stderr}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pb = h.spawn(f"meshgw-{load}-inbound", [mg, "run", "-c", str(api_cfg)], "proxy", h.proxy_cpus, api_cfg.parent, env)
    pf = h.spawn(f"meshgw-{load}-upstream", [mg, "run", "-c", str(web_cfg)], "proxy", h.proxy_cpus, web_cfg.parent, env)
    procs = [pb, pf]
    h.wait_http(admin_in, "/ready", procs, timeout, "meshgw inbound side /ready")
    h.wait_http(admin_up, "/ready", procs, timeout, "meshgw upstream side /ready")
    h.wait_port(front, procs, timeout, "meshgw upstream listener")
    info = {"version": l4.meshgw_version(), "protocol": load}
    return l4.Pair(front, back, procs, info, {"upstream": pf, "inbound": pb})


def start_envoy(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float, load: str) -> l4.Pair:
    ec = l4.load_envoy_helpers()
    d = h.work / f"envoy-{load}"
    d.mkdir(exist_ok=True)
    front, back = h.port(), h.port()
    common = dict(datacenter=l4.DC, trust_domain=l4.TRUST_DOMAIN, ca_file=certs.ca_crt, concurrency=1)
    api_boot = ec.h2_sidecar_bootstrap(
        load,
        admin_port=0,
        service_name=l4.SERVER_SVC,
        cert_file=certs.server_crt,
        key_file=certs.server_key,
        inbound_port=back,
        local_app_port=app_port,
        allowed_sources=[l4.CLIENT_SVC],
        default_allow=False,
        **common,
    )
    web_boot = ec.h2_sidecar_bootstrap(
        load,
        admin_port=0,
        service_name=l4.CLIENT_SVC,
        cert_file=certs.client_crt,
        key_file=certs.client_key,
        inbound_port=None,
        local_app_port=None,
        upstreams=[{"service": l4.SERVER_SVC, "local_port": front, "endpoints": [("127.0.0.1", back)]}],
        **common,
    )
    pair = l4.Pair(front, back)
    for side, name, boot in (
        ("inbound", f"envoy-{load}-inbound", api_boot),
        ("upstream", f"envoy-{load}-upstream", web_boot),
    ):
        path = ec.write_bootstrap(boot, d / f"{name}.json")
        ep = ec.EnvoyProcess(path, workdir=d, concurrency=1, log_level="warning", name=name)
        proc = l4.Proc(name, None, ep.log_path, "proxy", stopper=ep.stop)  # type: ignore[arg-type]
        h.procs.append(proc)
        try:
            ep.start(timeout=timeout)
        except ec.EnvoyError as e:
            raise l4.BenchError(str(e)) from None
        finally:
            proc.popen = ep.proc  # type: ignore[assignment]
        if h.proxy_cpus:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", h.proxy_cpus, str(ep.proc.pid)], check=True, stdout=subprocess.DEVNULL
            )
        pair.procs.append(proc)
        pair.by_side[side] = proc
    h.wait_port(front, pair.procs, timeout, "envoy upstream listener")
    v = subprocess.run([ec.envoy_binary(), "--version"], capture_output=True, text=True).stdout.split()
    parts = v[-1].split("/") if v else []
    ver = f"{parts[1]} {parts[-1]}" if len(parts) >= 5 else (v[-1] if v else "?")
    pair.info = {"version": ver, "bootstrap": f'tests/envoy_consul.py h2_sidecar_bootstrap("{load}")'}
    return pair


STARTERS = {"haproxy": start_haproxy, "envoy": start_envoy, "meshgw": start_meshgw}


# ---------------------------------------------------------------------------------------------- load (h2load)


def h2load_argv(args: argparse.Namespace, port: int, load: str, seconds: float, log_file: Path | None) -> list[str]:
    argv = [
        "h2load",
        f"-t{args.threads}",
        f"-c{args.clients}",
        f"-m{args.streams}",
        f"-w{args.window_bits}",
        f"-W{args.conn_window_bits}",
        f"-D{round(seconds * 1000)}ms",  # h2load takes whole numbers with a unit
    ]
    if log_file:
        argv.append(f"--log-file={log_file}")
    path = SMALL_PATH
    if load == "grpc":
        argv += ["-d", str(args.grpc_body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        path = GRPC_PATH
    return [*argv, f"http://127.0.0.1:{port}{path}"]  # http:// → h2c with prior knowledge


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_h2load(
    h: l4.Harness, port: int, load: str, args: argparse.Namespace, seconds: float, log_file: Path | None
) -> dict[str, Any]:
    argv = h.pin(h2load_argv(args, port, load, seconds, log_file), h.load_cpus)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    fin, req, st = _FINISHED.search(r.stdout), _REQUESTS.search(r.stdout), _STATUS.search(r.stdout)
    if r.returncode != 0 or not (fin and req and st):
        raise l4.BenchError(f"h2load failed ({r.returncode}): {' '.join(argv)}\n{r.stdout[-1500:]}{r.stderr[-800:]}")
    total, _started, done, _ok, failed, errored, timeout = (int(x) for x in req.groups())
    s2, s3, s4, s5 = (int(x) for x in st.groups())
    return {
        "rps": float(fin.group(3)),
        "requests": done,
        "errors": failed + errored + timeout + s3 + s4 + s5,
        "status": {"2xx": s2, "3xx": s3, "4xx": s4, "5xx": s5},
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "total": total,
        "output": r.stdout,
    }


def percentiles(log_file: Path) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max of h2load's per-request log: start µs, status, µs to the end of the response."""
    lat: list[int] = []
    bad = 0
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            status, us = int(parts[1]), int(parts[2])
            if not 200 <= status < 300:
                bad += 1
            lat.append(us)
    if not lat:
        return {"logged": 0, "logged_non_2xx": bad}
    lat.sort()
    n = len(lat)

    def q(p: float) -> float:
        return lat[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))] / 1000  # nearest rank, in ms

    return {
        "logged": n,
        "logged_non_2xx": bad,
        "p50_ms": q(50),
        "p90_ms": q(90),
        "p99_ms": q(99),
        "p999_ms": q(99.9),
        "max_ms": lat[-1] / 1000,
        "mean_ms": sum(lat) / n / 1000,
    }


def snapshot(procs: list[l4.Proc], ours: list[l4.Proc]) -> tuple[float, float, float, float, float]:
    """CPU seconds of the proxies, of the whole machine, of our reaped children, of all our processes; the time."""
    return l4.cpu_of(procs), l4.system_busy(), l4.children_cpu(), l4.cpu_of(ours), time.monotonic()


def user_system(procs: list[l4.Proc]) -> tuple[float, float]:
    """user and system CPU seconds of the processes (all threads), from /proc/PID/stat."""
    user = system = 0.0
    for p in procs:
        try:
            raw = Path(f"/proc/{p.pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, system


def count_conns(dport: int, procs: list[l4.Proc]) -> int:
    """Established TCP connections to 127.0.0.1:dport owned by these processes (ss -p)."""
    r = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{dport} )"], capture_output=True, text=True, timeout=10
    )
    pids = {f"pid={p.pid}," for p in procs}
    return sum(1 for line in r.stdout.splitlines() if any(pid in line for pid in pids))


def measure(
    h: l4.Harness,
    variant: str,
    load: str,
    port: int,
    procs: list[l4.Proc],
    args: argparse.Namespace,
    hops: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One measured h2load run (after a warm-up run). ``hops``: the inbound side's port and the app's port, whose
    connections from this pair are counted half-way through the run (how much each proxy multiplexes)."""
    name = f"{variant}/{load}"
    if args.warmup > 0:
        run_h2load(h, port, load, args, args.warmup, None)
        h.check_alive(procs)
    log(f"{name}: h2load -t{args.threads} -c{args.clients} -m{args.streams} -D{args.duration:g}")
    log_file = h.work / f"h2load-{variant}-{load}.log"
    log_file.unlink(missing_ok=True)
    ours = [*procs, *([h.app] if h.app else [])]
    conns: dict[str, int] = {}

    def sample() -> None:
        for hop, dport in (hops or {}).items():
            conns[hop] = count_conns(dport, procs)

    timer = threading.Timer(args.duration / 2, sample)
    each0 = [p.cpu_seconds() for p in procs]
    us0 = user_system(procs)
    cpu0, sys0, kids0, ours0, t0 = snapshot(procs, ours)
    timer.start()
    try:
        w = run_h2load(h, port, load, args, args.duration, log_file)
    finally:
        timer.cancel()
    cpu1, sys1, kids1, ours1, t1 = snapshot(procs, ours)
    us1 = user_system(procs)
    each1 = [p.cpu_seconds() for p in procs]
    timer.join()
    h.check_alive(procs)
    lat = percentiles(log_file)
    log_file.unlink(missing_ok=True)
    res: dict[str, Any] = {
        "rps": w["rps"],
        "requests": w["requests"],
        "errors": max(w["errors"], lat["logged_non_2xx"]),
        "status": w["status"],
        **{k: v for k, v in lat.items() if k != "logged_non_2xx"},
        "other_cpu_cores": max(0.0, ((sys1 - sys0) - (ours1 - ours0) - (kids1 - kids0)) / (t1 - t0)),
        "loadavg_1m": os.getloadavg()[0],
        **{f"{hop}_conns": n for hop, n in conns.items()},
    }
    if procs and w["requests"]:
        res["proxy_cpu_us_per_req"] = (cpu1 - cpu0) / w["requests"] * 1e6
        res["proxy_cpu_util"] = (cpu1 - cpu0) / (t1 - t0)
        res["proxy_user_us_per_req"] = (us1[0] - us0[0]) / w["requests"] * 1e6
        res["proxy_sys_us_per_req"] = (us1[1] - us0[1]) / w["requests"] * 1e6
        res["cpu_us_per_req_by_process"] = {
            p.name: (b - a) / w["requests"] * 1e6 for p, a, b in zip(procs, each0, each1, strict=True)
        }
    log(
        f"{name}: {res['rps']:,.0f} req/s, p50 {res.get('p50_ms', 0):.2f} ms, p99 {res.get('p99_ms', 0):.2f} ms, "
        f"errors {res['errors']}, other {res['other_cpu_cores']:.2f}"
    )
    return res


def perf_profile(h: l4.Harness, pair: l4.Pair, load: str, args: argparse.Namespace) -> dict[str, Any]:
    """``perf record`` on both meshgw processes under this load (an extra, unmeasured h2load run); the shares of
    samples by object and by symbol. Raw data: bench/results/perf-meshgw-<load>.data (``perf report -i``)."""
    perf = shutil.which("perf")
    if not perf:
        return {"error": "perf not installed (Debian: linux-perf; bench/run.sh --h2 --perf installs it)"}
    dur = max(5.0, args.duration)
    data = l4.RESULTS / f"perf-meshgw-{load}.data"
    data.unlink(missing_ok=True)
    done: dict[str, Any] = {}

    def drive() -> None:
        try:
            done["rps"] = run_h2load(h, pair.front_port, load, args, dur + 4, None)["rps"]
        except l4.BenchError as e:
            done["error"] = str(e)

    th = threading.Thread(target=drive, daemon=True)
    th.start()
    time.sleep(2.0)
    log(f"meshgw/{load}: perf record on both processes for {dur:g}s (not counted)")
    pids = ",".join(str(p.pid) for p in pair.procs)
    # DWARF call graphs: the release build keeps no frame pointers, so `-g` gave callers as 0xffff... (the
    # per-stream futures inline into tokio's poll; the callers are what tells hyper's work from h2's and ours).
    graph = ["--call-graph", "dwarf,16384"]
    argv = [perf, "record", "-F", "999", *graph, "-o", str(data), "-p", pids, "--", "sleep", f"{dur:g}"]
    r = subprocess.run(h.pin(argv, h.load_cpus), capture_output=True, text=True, timeout=dur + 60)
    th.join(dur + 60)
    if not data.exists():
        return {"error": f"perf wrote nothing: {r.stderr[-300:]}"}
    out: dict[str, Any] = {"file": str(data), "load": done}
    for key, sort in (("by_object", "dso"), ("by_symbol", "sym")):
        rep = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "-q", "--no-children", "-g", "none", "--sort", sort],
            capture_output=True,
            text=True,
            timeout=120,
        )
        rows = []
        for line in rep.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(?:\[.\]\s+)?(.*\S)", line)
            if m:
                rows.append((m.group(2)[:100], float(m.group(1))))
        out[key] = rows[:15]
    return out


def log(msg: str) -> None:
    l4.log(msg)


# ---------------------------------------------------------------------------------------------- report


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratios(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """meshgw against each peer and against the faster peer (by req/s), for one load."""
    m = res.get("meshgw", {})
    out: dict[str, Any] = {}
    if "rps" not in m:
        return out
    for ref in PEERS:
        r = res.get(ref, {})
        if "rps" not in r:
            continue
        row = {"rps": m["rps"] / r["rps"]}
        if m.get("p99_ms") and r.get("p99_ms"):
            row["p99"] = m["p99_ms"] / r["p99_ms"]
            row["p50"] = m["p50_ms"] / r["p50_ms"]
        if m.get("proxy_cpu_us_per_req") and r.get("proxy_cpu_us_per_req"):
            row["cpu_per_req"] = m["proxy_cpu_us_per_req"] / r["proxy_cpu_us_per_req"]
        out[ref] = row
    peers = [p for p in PEERS if "rps" in res.get(p, {})]
    if peers:
        best = max(peers, key=lambda p: res[p]["rps"])
        row = {"peer": best, **out[best]}
        row["rps_ok"] = row["rps"] >= GOALS["rps"]
        row["p99_ok"] = row.get("p99", 99.0) <= GOALS["p99"]
        out["faster_peer"] = row
    return out


def print_report(out: dict[str, Any]) -> None:
    s = out["settings"]
    pin = (
        f"h2load+nginx on CPU {s['load_cpus']}, both proxy processes on CPU {s['proxy_cpus']}"
        if s["load_cpus"]
        else "no pinning"
    )
    print()
    print(f"HTTP/2 + gRPC mTLS proxy-pair benchmark: {s['cpus']} CPUs, {pin}")
    print(
        f"h2load -t{s['threads']} -c{s['clients']} -m{s['streams']} -w{s['window_bits']} -W{s['conn_window_bits']} "
        f"-D{s['duration']:g} (h2c prior knowledge) after {s['warmup']:g}s of warm-up"
        + (f"; medians of {s['rounds']} rounds" if s["rounds"] > 1 else "")
    )
    if out.get("error"):
        print(f"FAILED: {out['error']}")
    la = out.get("loadavg", {})
    if la:
        print(f"load average (1 min): {la.get('start', 0):.2f} at the start, {la.get('end', 0):.2f} at the end")
    for load in out["loads"]:
        res = out["results"][load]
        print()
        print(LOAD_LABEL[load])
        hdr = (
            f"{'variant':<18}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}{'CPU us/req':>11}{'usr/sys':>12}"
            f"{'errs':>6}{'other':>7}  check"
        )
        print(hdr)
        print("-" * len(hdr))
        for v in out["variants"]:
            r = res.get(v, {})
            if "error" in r:
                print(f"{LABEL[v]:<18}FAILED: {r['error'].splitlines()[0][:110]}")
                continue
            if "rps" not in r:
                continue
            usr_sys = (
                f"{r['proxy_user_us_per_req']:.1f}/{r['proxy_sys_us_per_req']:.1f}"
                if "proxy_user_us_per_req" in r
                else "-"
            )
            chk = r.get("check", {})
            ck = f"app {chk.get('app_protocol', '?')}"
            if load == "grpc":
                ck += f", grpc-status {chk.get('grpc_status')}, grpcio {chk.get('grpcio')}"
            if chk.get("mesh_alpn"):
                ck += f", mesh ALPN {chk['mesh_alpn']}"
            if "mesh_conns" in r:
                ck += f"; conns mesh {r['mesh_conns']:g}, app {r['app_conns']:g}"
            print(
                f"{LABEL[v]:<18}{fmt(r.get('rps'), ',.0f'):>9}{fmt(r.get('p50_ms'), '.2f'):>8}"
                f"{fmt(r.get('p99_ms'), '.2f'):>8}{fmt(r.get('p999_ms'), '.2f'):>8}"
                f"{fmt(r.get('proxy_cpu_us_per_req'), '.1f'):>11}{usr_sys:>12}{r.get('errors', 0):>6}"
                f"{fmt(r.get('other_cpu_cores'), '.2f'):>7}  {ck}"
            )
            if (r.get("other_cpu_cores") or 0) > NOISY:
                print(f"{'':<18}warning: other processes used {r['other_cpu_cores']:.2f} cores during this run")
        rat = out["ratios"].get(load, {})
        for ref in PEERS:
            row = rat.get(ref)
            if not row:
                continue
            p99 = f"p99 {row['p99']:.2f}x" if "p99" in row else ""
            cpu = f"CPU/req {row['cpu_per_req']:.2f}x" if "cpu_per_req" in row else ""
            print(f"  meshgw / {LABEL[ref].split()[0]:<8} req/s {row['rps']:.2f}   {p99:<12} {cpu}")
        fp = rat.get("faster_peer")
        if fp:
            print(
                f"  meshgw vs the faster peer ({LABEL[fp['peer']].split()[0]}): "
                f"req/s {fp['rps']:.2f} (goal >= {GOALS['rps']:.1f}: {'PASS' if fp['rps_ok'] else 'FAIL'})   "
                + (
                    f"p99 {fp['p99']:.2f}x (goal <= {GOALS['p99']:.1f}: {'PASS' if fp['p99_ok'] else 'FAIL'})"
                    if "p99" in fp
                    else ""
                )
            )
    for load in out["loads"]:
        prof = out["results"][load].get("meshgw", {}).get("perf")
        if not prof:
            continue
        print()
        if "error" in prof:
            print(f"perf, meshgw {load}: {prof['error']}")
            continue
        rate = prof.get("load", {}).get("rps")
        print(
            f"where meshgw's time goes, {load} load (perf, both processes, share of samples"
            + (f", {rate:,.0f} req/s while sampled)" if rate else ")")
        )
        print("  " + ", ".join(f"{o} {pc:g}%" for o, pc in prof["by_object"][:6]))
        print("  " + ", ".join(f"{o} {pc:g}%" for o, pc in prof["by_symbol"][:10]))
        print(f"  [{prof['file']}]")
    vers = []
    for v in out["variants"]:
        for load in out["loads"]:
            info = out["results"][load].get(v, {}).get("info")
            if info and info.get("version"):
                vers.append(f"{LABEL[v].split()[0]} {info['version']}")
                break
    if vers:
        print()
        print("versions: " + "; ".join(vers))
    print(f"results: {out.get('json_path', '-')}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--loads", default=",".join(LOADS), help=f"subset of {','.join(LOADS)}")
    ap.add_argument("--duration", type=float, default=10.0, help="h2load -D seconds, measured (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured h2load seconds first (default 2)")
    ap.add_argument("--clients", type=int, default=8, help="h2load -c: connections (default 8)")
    ap.add_argument("--streams", type=int, default=16, help="h2load -m: concurrent streams per connection (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="h2load -t (default 1)")
    ap.add_argument("--window-bits", type=int, default=30, help="h2load -w: stream window 2**N-1 (default 30)")
    ap.add_argument("--conn-window-bits", type=int, default=30, help="h2load -W: connection window (default 30)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the measurements N times, interleaved; medians")
    ap.add_argument("--load-cpus", default="0", help="CPU list for h2load and nginx (default 0)")
    ap.add_argument("--proxy-cpus", default="1", help="CPU list for both proxy processes (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--ready-timeout", type=float, default=30.0)
    ap.add_argument(
        "--haproxy-http-reuse",
        choices=("never", "safe", "aggressive", "always"),
        default=None,
        help="HAProxy's http-reuse on both sides (default: HAProxy's own default, safe)",
    )
    ap.add_argument("--perf", action="store_true", help="perf record both meshgw processes (extra, unmeasured runs)")
    ap.add_argument("--meshgw-log-level", default="warning", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=None, help="JSON result path (default bench/results/h2-<time>.json)")
    args = ap.parse_args(argv)
    for opt, allowed in (("variants", VARIANTS), ("loads", LOADS)):
        bad = [v for v in getattr(args, opt).split(",") if v not in allowed]
        if bad:
            ap.error(f"unknown {opt} {bad}; choose from {allowed}")
    return args


def main(argv: list[str] | None = None) -> int:
    global HAPROXY_REUSE
    args = parse_args(argv)
    HAPROXY_REUSE = args.haproxy_http_reuse
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    loads = [x for x in LOADS if x in args.loads.split(",")]
    for tool in ("h2load", "taskset"):
        if not shutil.which(tool) and not (tool == "taskset" and args.no_pin):
            print(f"{tool} not found: run bench/run.sh --h2 (it installs nghttp2-client)", file=sys.stderr)
            return 2
    try:
        import h2  # noqa: F401
    except ImportError:
        print("the h2 package is missing: run with the venv's Python (bench/run.sh --h2)", file=sys.stderr)
        return 2
    load_cpus = None if args.no_pin else args.load_cpus
    proxy_cpus = None if args.no_pin else args.proxy_cpus
    work = Path(tempfile.mkdtemp(prefix="meshgw-h2-bench-"))
    h = l4.Harness(work, load_cpus, proxy_cpus)
    h.meshgw_log_level = args.meshgw_log_level
    l4.RESULTS.mkdir(parents=True, exist_ok=True)
    args.grpc_body = work / "grpc-request.bin"
    args.grpc_body.write_bytes(GRPC_REQUEST)
    results: dict[str, dict[str, dict[str, Any]]] = {x: {v: {} for v in variants} for x in loads}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {x: {v: [] for v in variants} for x in loads}
    loadavg = {"start": os.getloadavg()[0]}
    failed = False
    fatal = ""
    try:
        certs = l4.make_certs(work)
        h.app, app_port = start_app(h)
        ports: dict[tuple[str, str], int] = {}
        meshgw_pairs: dict[str, l4.Pair] = {}
        procs: dict[tuple[str, str], list[l4.Proc]] = {}
        hops: dict[tuple[str, str], dict[str, int]] = {}
        # Every pair up and checked (one real request of its load, end to end, HTTP/2 at the app) before any load.
        for load in loads:
            for v in variants:
                if v == "direct":
                    chk = wait_probe(h, app_port, load, [h.app], 5, "nginx (h2c)")
                    results[load][v]["check"] = chk
                    ports[(load, v)], procs[(load, v)] = app_port, []
                    continue
                try:
                    log(f"{v}/{load}: starting pair")
                    pair = STARTERS[v](h, certs, app_port, args.ready_timeout, load)
                    chk = wait_probe(h, pair.front_port, load, pair.procs, args.ready_timeout, f"{v}/{load} end to end")
                    tls = alpn_probe(pair.back_port or 0, certs)
                    if tls.get("alpn") != "h2":
                        raise l4.BenchError(f"{v}/{load}: the inbound side selected ALPN {tls} for h2,http/1.1")
                    chk["mesh_alpn"] = tls["alpn"]
                    chk["mesh_tls"] = f"{tls.get('version')} {tls.get('cipher')}"
                    log(f"{v}/{load}: OK ({chk})")
                    results[load][v].update(check=chk, info=pair.info)
                    ports[(load, v)], procs[(load, v)] = pair.front_port, pair.procs
                    hops[(load, v)] = {"mesh": pair.back_port or 0, "app": app_port}
                    if v == "meshgw":
                        meshgw_pairs[load] = pair
                except l4.BenchError as e:
                    results[load][v]["error"] = str(e)
                    failed = True
                    log(f"{v}/{load}: FAILED: {e}")
        for _ in range(args.rounds):
            for load in loads:
                for v in variants:
                    if (load, v) in ports:
                        rounds[load][v].append(
                            measure(h, v, load, ports[(load, v)], procs[(load, v)], args, hops.get((load, v)))
                        )
        for load in loads:
            for v in variants:
                rs = rounds[load][v]
                if not rs:
                    continue
                for k in (
                    "rps",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "p999_ms",
                    "max_ms",
                    "proxy_cpu_us_per_req",
                    "proxy_cpu_util",
                    "proxy_user_us_per_req",
                    "proxy_sys_us_per_req",
                    "mesh_conns",
                    "app_conns",
                    "other_cpu_cores",
                ):
                    vals = [r[k] for r in rs if r.get(k) is not None]
                    if vals:
                        results[load][v][k] = statistics.median(vals)
                results[load][v]["requests"] = sum(r["requests"] for r in rs)
                results[load][v]["errors"] = sum(r["errors"] for r in rs)
                if results[load][v]["errors"]:
                    failed = True
        if args.perf:
            for load, pair in meshgw_pairs.items():
                results[load]["meshgw"]["perf"] = perf_profile(h, pair, load, args)
    except l4.BenchError as e:
        log(f"FAILED: {e}")
        fatal = str(e)
        failed = True
    finally:
        h.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    loadavg["end"] = os.getloadavg()[0]
    out: dict[str, Any] = {
        "bench": "h2",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": variants,
        "loads": loads,
        "loadavg": loadavg,
        "error": fatal,
        "settings": {
            "cpus": os.cpu_count(),
            "load_cpus": load_cpus,
            "proxy_cpus": proxy_cpus,
            "threads": args.threads,
            "clients": args.clients,
            "streams": args.streams,
            "window_bits": args.window_bits,
            "conn_window_bits": args.conn_window_bits,
            "duration": args.duration,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "haproxy_http_reuse": args.haproxy_http_reuse or "safe (default)",
            "h2load": " ".join(h2load_argv(args, 0, "grpc", args.duration, None)[:-1]),
        },
        "results": results,
        "rounds": rounds,
    }
    out["ratios"] = {load: ratios(results[load]) for load in loads}
    path = Path(args.out) if args.out else l4.RESULTS / f"h2-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    (l4.RESULTS / "h2-latest.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    out["json_path"] = str(path)
    print_report(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
