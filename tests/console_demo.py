"""The demo's topology (gateway/demo.py: web calls api, an intruder is denied) with HTTP on the web => api hop,
for the console tests: real sidecars on loopback, a real HTTP app behind api."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import yaml
from http_app import HTTPApp, http_app
from mesh import Mesh, Sidecar, free_port

INTENTIONS = [
    {
        "Kind": "service-intentions",
        "Name": "api",
        "Sources": [
            {"Name": "web", "Action": "allow"},
            {
                "Name": "ops",
                "Permissions": [
                    {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                    {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"]}},
                ],
            },
            {"Name": "*", "Action": "deny"},
        ],
    }
]


@dataclass
class Demo:
    mesh: Mesh
    app: HTTPApp
    api: Sidecar
    web: Sidecar
    intruder: Sidecar
    web_up: int  # web's upstream listener for api (HTTP)
    intruder_up: int

    def admin_url(self, sc: Sidecar, path: str = "/") -> str:
        return f"http://127.0.0.1:{sc.admin_port}{path}"


def get(port: int, path: str = "/", n: int = 1) -> list[int]:
    """``n`` GETs on one keep-alive connection; the statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            out.append(r.status)
    finally:
        conn.close()
    return out


@contextmanager
def traffic(port: int) -> Iterator[list[int]]:
    """Requests in a background thread until the block ends (bounded: at most 20,000 and until it ends)."""
    stop = threading.Event()
    statuses: list[int] = []

    def run() -> None:
        while not stop.is_set() and len(statuses) < 20_000:
            try:
                statuses.extend(get(port, "/", 10))
            except OSError:
                stop.wait(0.05)
            stop.wait(0.02)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield statuses
    finally:
        stop.set()
        t.join(10)


def _http_upstream(sc: Sidecar) -> None:
    cfg = yaml.safe_load(sc.cfg_path.read_text())
    cfg["upstreams"][0]["protocol"] = "http"
    sc.cfg_path.write_text(yaml.safe_dump(cfg))


@contextmanager
def demo(mesh: Mesh) -> Iterator[Demo]:
    mesh.intentions = INTENTIONS
    mesh.write_intentions()
    with http_app("api") as app:
        api = mesh.sidecar("api", app.port, service={"protocol": "http"})
        web_up, intruder_up = free_port(), free_port()
        web = mesh.sidecar("web", upstreams={"api": web_up}, start=False)
        _http_upstream(web)
        web.start()
        intruder = mesh.sidecar("intruder", inbound=False, upstreams={"api": intruder_up})
        yield Demo(mesh, app, api, web, intruder, web_up, intruder_up)
