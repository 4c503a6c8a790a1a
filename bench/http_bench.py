#!/usr/bin/env python3
"""L7 (HTTP) mTLS proxy-pair benchmark: meshgw vs HAProxy (mode http) vs Envoy (HTTP connection managers).

The same topology as bench/l4_bench.py, with every proxy speaking HTTP on both sides:

    wrk ──► upstream side (plain HTTP listener) ──mTLS──► inbound side ──► nginx (GET /small, 128 B)

* meshgw: ``protocol: http`` on the service and the upstream (L7 intentions per request, x-request-id,
  traceparent, X-Forwarded-For, pooled keep-alive mTLS connections, round robin, retries/breakers/outlier
  detection armed with their defaults).
* HAProxy 2.6, ``mode http`` on both sides, one thread each, ``option forwardfor`` and a unique-id header
  (x-request-id) so it does comparable per-request header work; mTLS as in the L4 bench.
* Envoy with the bootstraps of tests/envoy_consul.py ``http_sidecar_bootstrap``: what Consul serves for
  ``protocol = "http"`` (HCM, HTTP RBAC filter on the public listener, router, websocket upgrades).

Every pair is two processes, one per side, pinned with both sides on one CPU (wrk and nginx on the other),
as in the L4 bench (see bench/README.md). Two numbers per variant, in one run:

1. requests/s at saturation: ``wrk -t1 -c32 -d10s`` keep-alive (plus proxy CPU per request);
2. latency at a fixed rate all pairs can hold: wrk with a Lua ``delay()`` that paces each connection so the
   total is ``--rate`` requests/s (default: half the slowest pair's saturation rate), p50 and p99.

Goals (issue #13, "Speed"): meshgw req/s >= 1.0 x HAProxy's http-mode pair, meshgw p99 at the fixed rate <= 1.5 x
HAProxy's; Envoy's ratios are printed beside them. ``--profile`` samples both meshgw processes with py-spy under the
saturation load and prints where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4_bench as l4  # the L4 bench's harness: processes, pinning, certificates, nginx, py-spy summary

VARIANTS = ("direct", "haproxy", "envoy", "meshgw")
LABEL = {
    "direct": "direct (no proxy)",
    "haproxy": "HAProxy pair",
    "envoy": "Envoy pair",
    "meshgw": "meshgw pair",
}
GOALS = {"rps": 1.0, "p99": 1.5}  # issue #13, against the HAProxy pair
PATH = "/small"

WRK_DONE = l4.WRK_LUA
WRK_PACED = l4.WRK_PACED


# ---------------------------------------------------------------------------------------------- pairs


def start_haproxy(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float) -> l4.Pair:
    return l4.haproxy_pair(
        h,
        certs,
        app_port,
        timeout,
        label="haproxy-http",
        defaults="    mode http\n    option http-keep-alive\n    timeout http-keep-alive 300s\n",
        front_extra="    option forwardfor\n"
        "    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n"
        "    unique-id-header x-request-id\n",
        back_extra="    option forwardfor\n",
        info={"mode": "http"},
    )


def start_meshgw(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float, variant: str = "meshgw") -> l4.Pair:
    mg = l4.meshgw_bin()
    front, back = h.port(), h.port()
    admin_up, admin_in, web_dummy = h.port(), h.port(), h.port()
    for side in ("web", "api"):
        d = h.work / f"{variant}-http" / side
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
    web_cfg = h.work / "meshgw-http" / "web" / "meshgw.yaml"
    api_cfg = h.work / "meshgw-http" / "api" / "meshgw.yaml"
    l4.write_yaml(
        web_cfg,
        {
            **common,
            "service": {"name": l4.CLIENT_SVC, "address": "127.0.0.1", "port": web_dummy, "protocol": "http"},
            "upstreams": [{"service": l4.SERVER_SVC, "bind": f"127.0.0.1:{front}", "protocol": "http"}],
            "admin": {"bind": f"127.0.0.1:{admin_up}"},
        },
    )
    l4.write_yaml(
        api_cfg,
        {
            **common,
            "service": {"name": l4.SERVER_SVC, "address": "127.0.0.1", "port": app_port, "protocol": "http"},
            "inbound": {"bind": f"127.0.0.1:{back}"},
            "admin": {"bind": f"127.0.0.1:{admin_in}"},
        },
    )
    for cfg in (web_cfg, api_cfg):
        r = subprocess.run([mg, "validate", "-c", str(cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            raise l4.BenchError(f"meshgw validate {cfg} failed:\n{r.stdout}{r.stderr}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pb = h.spawn("meshgw-http-inbound", [mg, "run", "-c", str(api_cfg)], "proxy", h.proxy_cpus, api_cfg.parent, env)
    pf = h.spawn("meshgw-http-upstream", [mg, "run", "-c", str(web_cfg)], "proxy", h.proxy_cpus, web_cfg.parent, env)
    procs = [pb, pf]
    h.wait_http(admin_in, "/ready", procs, timeout, "meshgw inbound side /ready")
    h.wait_http(admin_up, "/ready", procs, timeout, "meshgw upstream side /ready")
    h.wait_port(front, procs, timeout, "meshgw upstream listener")
    info = {"version": l4.meshgw_version(), "python": platform.python_version()}
    return l4.Pair(front, back, procs, info, {"upstream": pf, "inbound": pb})


def start_envoy(h: l4.Harness, certs: l4.Certs, app_port: int, timeout: float) -> l4.Pair:
    ec = l4.load_envoy_helpers()
    d = h.work / "envoy-http"
    d.mkdir(exist_ok=True)
    front, back = h.port(), h.port()
    common = dict(datacenter=l4.DC, trust_domain=l4.TRUST_DOMAIN, ca_file=certs.ca_crt, concurrency=1)
    api_boot = ec.http_sidecar_bootstrap(
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
    web_boot = ec.http_sidecar_bootstrap(
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
        ("inbound", "envoy-http-inbound", api_boot),
        ("upstream", "envoy-http-upstream", web_boot),
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
    pair.info = {"version": ver, "bootstrap": "tests/envoy_consul.py http_sidecar_bootstrap"}
    return pair


STARTERS = {
    "haproxy": start_haproxy,
    "envoy": start_envoy,
    "meshgw": start_meshgw,
}


# ---------------------------------------------------------------------------------------------- load


def wrk(
    h: l4.Harness, port: int, args: argparse.Namespace, seconds: float, lua: Path | None, rate: float = 0.0
) -> dict[str, Any]:
    """wrk on PATH, paced to ``rate`` when given: the L4 bench's runner (one copy of the pacing and parsing)."""
    assert PATH == "/small", "l4.run_wrk asks for /small"
    return l4.run_wrk(h, port, args, seconds, lua, rate=rate)


def saturation(
    h: l4.Harness, name: str, port: int, procs: list[l4.Proc], args: argparse.Namespace, lua: Path
) -> dict[str, Any]:
    if args.warmup > 0:
        wrk(h, port, args, args.warmup, None)
    log(f"{name}: saturation, wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s")
    ours = [*procs, *([h.app] if h.app else [])]
    cpu0, sys0, kids0, ours0, t0 = (
        l4.cpu_of(procs),
        l4.system_busy(),
        l4.children_cpu(),
        l4.cpu_of(ours),
        time.monotonic(),
    )
    w = wrk(h, port, args, args.duration, lua)
    cpu1, sys1, kids1, ours1, t1 = (
        l4.cpu_of(procs),
        l4.system_busy(),
        l4.children_cpu(),
        l4.cpu_of(ours),
        time.monotonic(),
    )
    h.check_alive(procs)
    res = {
        "rps": w["rps"],
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "requests": w["requests"],
        "errors": w["errors"],
        "other_cpu_cores": max(0.0, ((sys1 - sys0) - (ours1 - ours0) - (kids1 - kids0)) / (t1 - t0)),
    }
    if procs and w["requests"]:
        res["proxy_cpu_us_per_req"] = (cpu1 - cpu0) / w["requests"] * 1e6
        res["proxy_cpu_util"] = (cpu1 - cpu0) / (t1 - t0)
    return res


def fixed_rate(
    h: l4.Harness, name: str, port: int, procs: list[l4.Proc], args: argparse.Namespace, lua: Path, rate: float
) -> dict[str, Any]:
    log(f"{name}: fixed rate {rate:,.0f} req/s for {args.rate_duration:g}s")
    wrk(h, port, args, 2.0, lua, rate)  # settle at the pace first
    w = wrk(h, port, args, args.rate_duration, lua, rate)
    h.check_alive(procs)
    return {
        "rate_target": rate,
        "rate_achieved": w["rps"],
        "rate_p50_ms": w["p50_us"] / 1000,
        "rate_p90_ms": w["p90_us"] / 1000,
        "rate_p99_ms": w["p99_us"] / 1000,
        "rate_p999_ms": w["p999_us"] / 1000,
        "rate_errors": w["errors"],
    }


def profile(h: l4.Harness, pair: l4.Pair, args: argparse.Namespace, lua: Path) -> dict[str, Any]:
    """py-spy (native frames, idle included) on each meshgw process under the saturation load; summarised with the
    L4 bench's categories. Extra, unmeasured runs."""
    spy = l4.pyspy_bin()
    if not spy:
        return {"error": "py-spy not installed (pip install py-spy into .venv)"}
    out: dict[str, Any] = {}
    dur = max(5.0, args.duration)
    for side in ("upstream", "inbound"):
        proc = pair.by_side[side]
        raw = l4.RESULTS / f"profile-meshgw-http-{side}.txt"
        raw.unlink(missing_ok=True)
        done: dict[str, Any] = {}

        def load(done: dict[str, Any] = done) -> None:
            try:
                done["rps"] = wrk(h, pair.front_port, args, dur + 4, lua)["rps"]
            except l4.BenchError as e:
                done["error"] = str(e)

        th = threading.Thread(target=load, daemon=True)
        th.start()
        time.sleep(2.0)
        log(f"meshgw: profiling the {side} side (py-spy --native, {dur:g}s, not counted)")
        cpu0, t0 = proc.cpu_seconds(), time.monotonic()
        argv = [spy, "record", "--native", "--pid", str(proc.pid), "--duration", f"{int(dur)}", "--format", "raw"]
        argv += ["--idle", "--rate", "100", "-o", str(raw)]
        r = subprocess.run(h.pin(argv, h.load_cpus), capture_output=True, text=True, timeout=dur + 60)
        util = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        th.join(dur + 60)
        if not raw.exists() or raw.stat().st_size == 0:
            out[side] = {"error": f"py-spy wrote nothing: {r.stdout[-300:]}{r.stderr[-300:]}"}
            continue
        out[side] = l4.summarise_collapsed(raw)
        out[side].update(file=str(raw), cpu_util=util, load=done)
    return out


def log(msg: str) -> None:
    l4.log(msg)


# ---------------------------------------------------------------------------------------------- report


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratios(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for subject in ("meshgw",):
        if subject in results:
            rows.extend(_ratios(results, subject))
    return rows


def _ratios(results: dict[str, dict[str, Any]], subject: str) -> list[dict[str, Any]]:
    rows = []
    m = results.get(subject, {})
    for ref in ("haproxy", "envoy"):
        r = results.get(ref, {})
        if "rps" not in m or "rps" not in r:
            rows.append({"subject": subject, "vs": ref, "available": False})
            continue
        row: dict[str, Any] = {"subject": subject, "vs": ref, "available": True, "rps": m["rps"] / r["rps"]}
        if m.get("rate_p99_ms") and r.get("rate_p99_ms"):
            row["p99"] = m["rate_p99_ms"] / r["rate_p99_ms"]
            row["p50"] = m["rate_p50_ms"] / r["rate_p50_ms"]
        if m.get("proxy_cpu_us_per_req") and r.get("proxy_cpu_us_per_req"):
            row["cpu_per_req"] = m["proxy_cpu_us_per_req"] / r["proxy_cpu_us_per_req"]
        row["rps_ok"] = row["rps"] >= GOALS["rps"]
        row["p99_ok"] = row.get("p99", 99) <= GOALS["p99"]
        rows.append(row)
    return rows


def print_report(out: dict[str, Any]) -> None:
    s = out["settings"]
    res = out["results"]
    print()
    pin = (
        f"wrk+nginx on CPU {s['load_cpus']}, both proxy processes on CPU {s['proxy_cpus']}"
        if s["load_cpus"]
        else "no pinning"
    )
    print(f"L7 (HTTP) mTLS proxy-pair benchmark: {s['cpus']} CPUs, {pin}")
    print(
        f"saturation: wrk -t{s['threads']} -c{s['connections']} -d{s['duration']:g}s keep-alive GET {PATH}; "
        f"fixed rate: {s['rate']:,.0f} req/s paced over the same connections for {s['rate_duration']:g}s"
        + (f"; medians of {s['rounds']} rounds" if s["rounds"] > 1 else "")
    )
    print()
    hdr = (
        f"{'variant':<18}{'req/s':>9}{'CPU us/req':>11}{'sat p99':>9}   {'rate':>7}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p99.9':>8}{'errs':>6}{'other':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for v in out["variants"]:
        r = res.get(v, {})
        if "error" in r:
            print(f"{LABEL[v]:<18}FAILED: {r['error'].splitlines()[0][:100]}")
            continue
        print(
            f"{LABEL[v]:<18}{fmt(r.get('rps'), ',.0f'):>9}{fmt(r.get('proxy_cpu_us_per_req'), '.1f'):>11}"
            f"{fmt(r.get('p99_ms'), '.2f'):>9}   {fmt(r.get('rate_achieved'), ',.0f'):>7}"
            f"{fmt(r.get('rate_p50_ms'), '.3f'):>8}{fmt(r.get('rate_p99_ms'), '.3f'):>8}"
            f"{fmt(r.get('rate_p999_ms'), '.3f'):>8}{r.get('errors', 0) + r.get('rate_errors', 0):>6}"
            f"{fmt(r.get('other_cpu_cores'), '.2f'):>7}"
        )
    vers = [f"{LABEL[v].split()[0]} {res[v]['info']['version']}" for v in out["variants"] if res.get(v, {}).get("info")]
    if vers:
        print("versions: " + "; ".join(vers))
    print()
    print(
        f"meshgw ratios (req/s: higher is better, goal >= {GOALS['rps']:g} x HAProxy; p99 at the fixed rate: lower is"
    )
    print(f"better, goal <= {GOALS['p99']:g} x HAProxy's; Envoy's beside them for information)")
    for row in out["ratios"]:
        if not row["available"]:
            print(f"  {row.get('subject', 'meshgw')} / {row['vs']}: not available")
            continue
        goal = row["vs"] == "haproxy"
        rps = f"req/s {row['rps']:.2f}" + (f" ({'PASS' if row['rps_ok'] else 'FAIL'})" if goal else "")
        p99 = (
            f"p99 {row['p99']:.2f}x" + (f" ({'PASS' if row['p99_ok'] else 'FAIL'})" if goal else "")
            if "p99" in row
            else ""
        )
        cpu = f"CPU/req {row['cpu_per_req']:.2f}x" if "cpu_per_req" in row else ""
        print(f"  {row.get('subject', 'meshgw')} / {row['vs']:<8} {rps:<22} {p99:<20} {cpu}")
    prof = res.get("meshgw", {}).get("profile")
    if prof:
        print()
        print("where meshgw's time goes (py-spy --native, share of busy samples):")
        for side in ("upstream", "inbound"):
            p = prof.get(side) or {}
            if "error" in p:
                print(f"  {side}: {p['error']}")
                continue
            if not p:
                continue
            rate = p.get("load", {}).get("rps")
            print(
                f"  {side} side: {p['busy_samples']}/{p['samples']} samples busy, CPU {p['cpu_util']:.0%} of a core"
                + (f" at {rate:,.0f} req/s while sampled" if rate else "")
                + f"  [{p['file']}]"
            )
            print("    " + ", ".join(f"{c} {pc:g}%" for c, pc in p["categories"][:8]))
            print("    own time: " + ", ".join(f"{f} {pc:g}%" for f, pc in p["self_top"][:6]))
            print("    Python, inclusive: " + ", ".join(f"{f} {pc:g}%" for f, pc in p["inclusive_top"][:8]))
    print()
    print(f"results: {out.get('json_path', '-')}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--duration", type=float, default=10.0, help="wrk seconds at saturation (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk seconds first (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--rate", type=float, default=0.0, help="fixed rate in req/s (default: half the slowest pair)")
    ap.add_argument("--rate-duration", type=float, default=10.0, help="wrk seconds at the fixed rate (default 10)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the measurements N times, interleaved; medians")
    ap.add_argument("--load-cpus", default="0", help="CPU list for wrk and nginx (default 0)")
    ap.add_argument("--proxy-cpus", default="1", help="CPU list for both proxy processes (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--ready-timeout", type=float, default=30.0)
    ap.add_argument("--profile", action="store_true", help="py-spy both meshgw processes (extra, unmeasured runs)")
    ap.add_argument("--meshgw-log-level", default="warning", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=None, help="JSON result path (default bench/results/http-<time>.json)")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool) and not (tool == "taskset" and args.no_pin):
            print(f"{tool} not found: run bench/run.sh once (it installs what the benches need)", file=sys.stderr)
            return 2
    load_cpus = None if args.no_pin else args.load_cpus
    proxy_cpus = None if args.no_pin else args.proxy_cpus
    work = Path(tempfile.mkdtemp(prefix="meshgw-http-bench-"))
    h = l4.Harness(work, load_cpus, proxy_cpus)
    h.meshgw_log_level = args.meshgw_log_level
    l4.RESULTS.mkdir(parents=True, exist_ok=True)
    lua_done = work / "done.lua"
    lua_done.write_text(WRK_DONE)
    lua_paced = work / "paced.lua"
    lua_paced.write_text(WRK_PACED)
    results: dict[str, dict[str, Any]] = {v: {} for v in variants}
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    pairs: dict[str, l4.Pair] = {}
    failed = False
    try:
        certs = l4.make_certs(work)
        h.app, app_port = l4.start_app(h, 1 << 20)
        for v in variants:
            if v == "direct":
                continue
            try:
                log(f"{v}: starting pair")
                pair = STARTERS[v](h, certs, app_port, args.ready_timeout)
                h.wait_http(pair.front_port, PATH, pair.procs, args.ready_timeout, f"{v} end-to-end", l4.SMALL_BODY)
                pairs[v] = pair
                results[v]["info"] = pair.info
            except l4.BenchError as e:
                results[v]["error"] = str(e)
                failed = True
                log(f"{v}: FAILED: {e}")
        ports = {
            v: (app_port if v == "direct" else pairs[v].front_port) for v in variants if v == "direct" or v in pairs
        }
        procs = {v: ([] if v == "direct" else pairs[v].procs) for v in ports}
        # 1. saturation, every variant, interleaved over rounds
        for _ in range(args.rounds):
            for v in ports:
                rounds[v].append(saturation(h, v, ports[v], procs[v], args, lua_done))
        for v in ports:
            for k in ("rps", "p50_ms", "p99_ms", "proxy_cpu_us_per_req", "proxy_cpu_util", "other_cpu_cores"):
                vals = [r[k] for r in rounds[v] if r.get(k) is not None]
                if vals:
                    results[v][k] = statistics.median(vals)
            results[v]["requests"] = sum(r["requests"] for r in rounds[v])
            results[v]["errors"] = sum(r["errors"] for r in rounds[v])
        # 2. the fixed rate: half of the slowest proxied pair, so every pair holds it without queueing
        proxied = [results[v]["rps"] for v in ports if v != "direct" and "rps" in results[v]]
        rate = args.rate or (round(0.5 * min(proxied), -2) if proxied else 1000.0)
        paced: dict[str, list[dict[str, Any]]] = {v: [] for v in ports}
        for _ in range(args.rounds):
            for v in ports:
                paced[v].append(fixed_rate(h, v, ports[v], procs[v], args, lua_paced, rate))
        for v in ports:
            for k in paced[v][0]:
                results[v][k] = statistics.median(p[k] for p in paced[v])
        # 3. where meshgw's time goes
        if args.profile and "meshgw" in pairs:
            results["meshgw"]["profile"] = profile(h, pairs["meshgw"], args, lua_done)
    except l4.BenchError as e:
        log(f"FAILED: {e}")
        failed = True
    finally:
        h.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    out: dict[str, Any] = {
        "bench": "http",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": variants,
        "settings": {
            "cpus": os.cpu_count(),
            "load_cpus": load_cpus,
            "proxy_cpus": proxy_cpus,
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
            "rate": locals().get("rate", args.rate) or 0.0,
            "rate_duration": args.rate_duration,
            "rounds": args.rounds,
            "path": PATH,
        },
        "results": results,
        "rounds": rounds,
    }
    out["ratios"] = ratios(results)
    path = Path(args.out) if args.out else l4.RESULTS / f"http-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    (l4.RESULTS / "http-latest.json").write_text(json.dumps(out, indent=2) + "\n")
    out["json_path"] = str(path)
    print_report(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
