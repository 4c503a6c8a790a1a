#!/usr/bin/env python3
"""Resident memory of a meshgw pair (issue #13, Speed): each sidecar's ``VmRSS`` idle, then with N idle
keep-alive client connections through the pair, for the L4 (``protocol: tcp``) and the HTTP pair.

Same topology and configs as bench/l4_bench.py and bench/http_bench.py (nginx app, a web sidecar with an upstream,
an api sidecar with the inbound listener, built-in CA, local control plane). RSS is not a timing: a busy machine
does not change it, so this runs without pinning or the quiet-machine checks of the timing benches.

- idle: after both sidecars are ready, 20 requests through the pair (so every lazy path a request takes has
  run: first leaf use, first pool connection), then 2 s idle; ``VmRSS`` from /proc/PID/status.
- with N connections: N client connections to the upstream listener, each sends one keep-alive ``GET /small``
  and reads the answer, then stays open and idle; once all have their answer, 2 s idle, then ``VmRSS``.

    .venv/bin/python bench/rss_bench.py [--conns 1000] [--variants tcp,http] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_bench
import l4_bench as l4

REQUEST = b"GET /small HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\n\r\n"


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise l4.BenchError(f"no VmRSS for pid {pid}")


def rss(pair: l4.Pair) -> dict[str, float]:
    return {side: round(vm_rss_mb(p.pid), 1) for side, p in pair.by_side.items()}


def _answered(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def open_idle(port: int, n: int, timeout: float = 60.0) -> list[socket.socket]:
    """N connections, each with one answered keep-alive request, left open."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(REQUEST)
        s.setblocking(False)
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise l4.BenchError(f"{len(pending)} of {n} connections got no answer in {timeout:.0f}s")
        for key, _ in sel.select(1.0):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            chunk = s.recv(65536)
            if not chunk:
                raise l4.BenchError("a connection was closed before its answer")
            pending[s] += chunk
            if _answered(pending[s]):
                del pending[s]
                sel.unregister(s)
    sel.close()
    return socks


def measure(variant: str, work: Path, conns: int) -> dict[str, Any]:
    h = l4.Harness(work / variant, None, None)
    h.work.mkdir(parents=True, exist_ok=True)
    try:
        certs = l4.make_certs(h.work)
        _, app_port = l4.start_app(h, 1 << 20)
        start = http_bench.start_meshgw if variant == "http" else l4.start_meshgw
        pair = start(h, certs, app_port, 60.0)
        for _ in range(20):
            status, body = l4.http_get(pair.front_port, "/small")
            if status != 200 or body != l4.SMALL_BODY:
                raise l4.BenchError(f"{variant}: GET /small through the pair: {status} {body[:80]!r}")
        time.sleep(2.0)
        idle = rss(pair)
        socks = open_idle(pair.front_port, conns)
        try:
            time.sleep(2.0)
            loaded = rss(pair)
        finally:
            for s in socks:
                s.close()
        return {"idle": idle, f"with_{conns}_connections": loaded, "info": pair.info}
    finally:
        h.stop_all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--variants", default="tcp,http")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.conns + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the sidecars inherit it
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meshgw-rss-") as tmp:
        for variant in args.variants.split(","):
            l4.log(f"{variant}: starting the pair")
            out[variant] = measure(variant, Path(tmp), args.conns)
    print()
    print(f"VmRSS per sidecar, MB (idle; with {args.conns} idle keep-alive client connections through the pair)")
    print(f"{'pair':<6} {'side':<9} {'idle':>8} {'loaded':>8}")
    for variant, r in out.items():
        for side in ("upstream", "inbound"):
            loaded = r[f"with_{args.conns}_connections"][side]
            print(f"{variant:<6} {side:<9} {r['idle'][side]:>8.1f} {loaded:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
