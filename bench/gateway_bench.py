"""Mesh gateway benchmark: the same SNI-routing hop through meshgw, HAProxy and Envoy, in one run.

    wrk ──► web's sidecar (meshgw) ──mTLS──► [gateway] ──same bytes──► api's sidecar (meshgw) ──► nginx

The sidecars are the same meshgw pair in every variant; only the gateway in the middle changes:
  direct    no gateway (web's sidecar dials api's sidecar): the baseline
  meshgw    `meshgw run` in mode mesh-gateway (reads the ClientHello's SNI, relays the bytes)
  haproxy   HAProxy 1 thread, mode tcp, `req.ssl_sni` routing after `req_ssl_hello_type 1` (no decryption)
  envoy     Envoy --concurrency 1, tls_inspector + a filter chain per SNI + tcp_proxy (what Consul's mesh
            gateways are)

The sidecars' own work dominates the end-to-end rate, so besides req/s, p99 and MB/s the bench reports
what the gateway process alone spent: CPU µs per request and CPU seconds per 100 MB. Ratios compare
meshgw's gateway with HAProxy's and Envoy's. Run through bench/run.sh's set-up first (Debian packages,
.venv): `bench/run.sh --variants direct` once, then `.venv/bin/python bench/gateway_bench.py --rounds 3`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4_bench as lb

VARIANTS = ("direct", "meshgw", "haproxy", "envoy")
LOCAL_CP = {"type": "local", "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"}}


def sidecar(h: lb.Harness, certs: lb.Certs, side: str, app_port: int, dial: int, timeout: float) -> tuple[int, lb.Proc]:
    """One meshgw sidecar, as in bench/l4_bench.py: ``api`` (inbound to the app; returns its inbound port) or
    ``web`` (upstream to api, whose catalog entry is ``dial``: api's sidecar or a gateway; returns that port)."""
    port, admin = h.port(), h.port()
    d = h.work / "sidecars" / side
    d.mkdir(parents=True, exist_ok=True)
    catalog = {lb.SERVER_SVC: [{"address": "127.0.0.1", "port": dial, "datacenter": lb.DC}]} if side == "web" else {}
    lb.write_yaml(d / "catalog.yaml", {"services": catalog})
    lb.write_yaml(
        d / "intentions.yaml",
        {"Kind": "service-intentions", "Name": lb.SERVER_SVC, "Sources": [{"Name": lb.CLIENT_SVC, "Action": "allow"}]},
    )
    if side == "api":
        own = {"service": {"name": lb.SERVER_SVC, "port": app_port}, "inbound": {"bind": f"127.0.0.1:{port}"}}
    else:
        own = {
            "service": {"name": lb.CLIENT_SVC, "port": h.port()},
            "upstreams": [{"service": lb.SERVER_SVC, "bind": f"127.0.0.1:{port}"}],
        }
    lb.write_yaml(
        d / "meshgw.yaml",
        {
            "datacenter": lb.DC,
            "log_level": h.meshgw_log_level,
            "drain_timeout": "1s",
            "control_plane": LOCAL_CP,
            "certificates": {"type": "builtin", "builtin": {"dir": str(certs.ca_dir), "leaf_ttl": "24h"}},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            **own,
        },
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Role "app": the sidecars are the same in every variant; only the gateway's CPU is the proxy's.
    p = h.spawn(f"sidecar-{side}", [lb.meshgw_bin(), "run", "-c", "meshgw.yaml"], "app", h.proxy_cpus, d, env)
    h.wait_http(admin, "/ready", [p], timeout, f"{side} sidecar /ready")
    h.wait_port(port, [p], timeout, f"{side} sidecar listener")
    return port, p


def start_gateway(h: lb.Harness, variant: str, back: int, timeout: float) -> tuple[int, list[lb.Proc], str]:
    """The gateway under test, routing SNI api.default.dc1.internal.bench.consul to api's sidecar."""
    gw = h.port()
    d = h.work / variant
    d.mkdir(parents=True, exist_ok=True)
    if variant == "meshgw":
        admin = h.port()
        lb.write_yaml(
            d / "catalog.yaml",
            {"services": {lb.SERVER_SVC: [{"address": "127.0.0.1", "port": back, "datacenter": lb.DC}]}},
        )
        lb.write_yaml(d / "intentions.yaml", [])
        lb.write_yaml(
            d / "meshgw.yaml",
            {
                "datacenter": lb.DC,
                "mode": "mesh-gateway",
                "log_level": h.meshgw_log_level,
                "drain_timeout": "1s",
                "service": {"name": "mesh-gateway"},
                "gateway": {"bind": f"127.0.0.1:{gw}"},
                "control_plane": {
                    "type": "local",
                    "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"},
                },
                "certificates": {"type": "builtin", "builtin": {"dir": str(h.work / "ca"), "leaf_ttl": "24h"}},
                "admin": {"bind": f"127.0.0.1:{admin}"},
            },
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = h.spawn("gateway-meshgw", [lb.meshgw_bin(), "run", "-c", "meshgw.yaml"], "proxy", h.proxy_cpus, d, env)
        h.wait_http(admin, "/ready", [p], timeout, "meshgw gateway /ready")
        procs = [p]
        version = (
            "meshgw "
            + subprocess.run(
                ["git", "-C", str(lb.REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        )
    elif variant == "haproxy":
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        cfg = d / "haproxy.cfg"
        cfg.write_text(
            f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend gw
    bind 127.0.0.1:{gw}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend api if {{ req.ssl_sni -i {lb.SNI} }}
backend api
    server api 127.0.0.1:{back}
"""
        )
        p = h.spawn("gateway-haproxy", [haproxy, "-db", "-f", str(cfg)], "proxy", h.proxy_cpus)
        procs = [p]
        version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    elif variant == "envoy":
        ec = lb.load_envoy_helpers()
        admin = h.port()
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [
                    {
                        "name": "mesh_gateway",
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": gw}},
                        "listener_filters": [
                            {
                                "name": "envoy.filters.listener.tls_inspector",
                                "typed_config": {
                                    "@type": "type.googleapis.com/"
                                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                                },
                            }
                        ],
                        "filter_chains": [
                            {
                                "filter_chain_match": {"server_names": [lb.SNI]},
                                "filters": [
                                    {
                                        "name": "envoy.filters.network.tcp_proxy",
                                        "typed_config": {
                                            "@type": "type.googleapis.com/"
                                            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                            "stat_prefix": "mesh_gateway",
                                            "cluster": "api",
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ],
                "clusters": [
                    {
                        "name": "api",
                        "type": "STATIC",
                        "connect_timeout": "5s",
                        "load_assignment": {
                            "cluster_name": "api",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {"address": "127.0.0.1", "port_value": back}
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ],
            },
        }
        path = d / "envoy.json"
        path.write_text(json.dumps(boot))
        ep = ec.EnvoyProcess(path, workdir=d, concurrency=1, log_level="warning", name="gateway-envoy")
        proc = lb.Proc("gateway-envoy", None, ep.log_path, "proxy", stopper=ep.stop)  # type: ignore[arg-type]
        h.procs.append(proc)
        try:
            ep.start(timeout=timeout)
        except ec.EnvoyError as e:
            raise lb.BenchError(str(e)) from None
        finally:
            proc.popen = ep.proc  # type: ignore[assignment]
        if h.proxy_cpus:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", h.proxy_cpus, str(ep.proc.pid)], check=True, stdout=subprocess.DEVNULL
            )
        procs = [proc]
        out = subprocess.run([ec.envoy_binary(), "--version"], capture_output=True, text=True).stdout.split()
        parts = out[-1].split("/") if out else []  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
        version = f"envoy {parts[1]} {parts[-1]}" if len(parts) >= 5 else "envoy"
    else:
        raise lb.BenchError(f"unknown gateway {variant}")
    h.wait_port(gw, procs, timeout, f"{variant} gateway")
    return gw, procs, version


def run_variant(
    h: lb.Harness, variant: str, args: argparse.Namespace, certs: lb.Certs, app_port: int, lua: Path
) -> dict[str, Any]:
    started = len(h.procs)
    try:
        back, _ = sidecar(h, certs, "api", app_port, 0, args.ready_timeout)
        gw_procs: list[lb.Proc] = []
        version = "-"
        dial = back
        if variant != "direct":
            dial, gw_procs, version = start_gateway(h, variant, back, args.ready_timeout)
        front, _ = sidecar(h, certs, "web", app_port, dial, args.ready_timeout)
        h.wait_http(front, "/small", h.procs, args.ready_timeout, f"{variant}: GET /small end to end", lb.SMALL_BODY)
        res = lb.measure(h, variant, front, gw_procs, args, args.big_bytes, lua)
        res["version"] = version
        return res
    finally:
        for p in list(h.procs[started:]):
            h.stop(p, timeout=3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the variants N times, interleaved; medians")
    ap.add_argument("--duration", type=float, default=10.0, help="wrk seconds per variant")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk seconds first")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--big-mb", type=float, default=100.0, help="bulk transfer size in MB")
    ap.add_argument("--big-runs", type=int, default=3)
    ap.add_argument("--ready-timeout", type=float, default=30.0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    args.conn_duration = 0.0  # new-connection rate is the sidecars' handshakes, not the gateway's work
    args.big_bytes = int(args.big_mb * 1e6)
    for v in args.variants.split(","):
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r} (choose from {VARIANTS})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="meshgw-gateway-bench-"))
    # Unpinned: five processes on two cores; the gateway's own CPU per request is the figure to compare.
    h = lb.Harness(work, None, None)
    h.meshgw_log_level = "warning"
    lua = work / "report.lua"
    lua.write_text(lb.WRK_LUA)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        certs = lb.make_certs(work)
        h.app, app_port = lb.start_app(h, args.big_bytes)
        for r in range(args.rounds):
            for v in args.variants.split(","):
                lb.log(f"round {r + 1}/{args.rounds}: {v}")
                results.setdefault(v, []).append(run_variant(h, v, args, certs, app_port, lua))
    except lb.BenchError as e:
        print(f"gateway bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        h.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    lb.RESULTS.mkdir(exist_ok=True)
    out = lb.RESULTS / f"gateway-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps({"args": {k: v for k, v in vars(args).items()}, "results": results}, indent=1, default=str)
    )
    print(f"results: {out}")
    return 0


def _median(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    print()
    print(
        f"{'gateway':<9} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'MB/s':>7} {'gw CPU us/req':>14} "
        f"{'gw CPU s/100MB':>15}  version"
    )
    rows = {}
    for v, runs in results.items():
        row = {
            k: _median(runs, k)
            for k in ("rps", "p50_ms", "p99_ms", "mbps", "proxy_cpu_us_per_req", "proxy_cpu_s_per_100mb")
        }
        rows[v] = row
        print(
            f"{v:<9} {row['rps']:>9,.0f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['mbps']:>7.0f} "
            f"{row['proxy_cpu_us_per_req']:>14.1f} {row['proxy_cpu_s_per_100mb']:>15.2f}  {runs[-1]['version']}"
        )
    m = rows.get("meshgw")
    if m is None:
        return
    print()
    for peer in ("haproxy", "envoy"):
        p = rows.get(peer)
        if p is None:
            continue
        print(
            f"meshgw/{peer}: req/s {_ratio(m['rps'], p['rps'])}, MB/s {_ratio(m['mbps'], p['mbps'])}, "
            f"gateway CPU per request {_ratio(m['proxy_cpu_us_per_req'], p['proxy_cpu_us_per_req'])}, "
            f"per 100 MB {_ratio(m['proxy_cpu_s_per_100mb'], p['proxy_cpu_s_per_100mb'])} (lower CPU is better)"
        )
    d = rows.get("direct")
    if d is not None:
        print(f"end to end with meshgw's gateway vs without one: req/s {m['rps'] / d['rps']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
