"""The admin port's console and operator endpoints against real sidecars (the demo's topology, HTTP on the
web => api hop): each JSON endpoint, live traffic on the right edge, the intention check answering as
`meshgw intention check` does, one-line errors, POST-only maintenance, and no key material or token anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from console_demo import Demo, demo, get
from mesh import Mesh, free_port, refused, wait_for

pytestmark = pytest.mark.slow

TOKEN = "console-test-token-7f1e"  # in the sidecars' environment; must never come back from the admin port


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def fetch_json(url: str) -> Any:
    status, _, body = fetch(url)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    mesh = Mesh(tmp_path_factory.mktemp("console"))
    saved = {k: os.environ.get(k) for k in ("CONSUL_HTTP_TOKEN", "VAULT_TOKEN")}
    os.environ.update(CONSUL_HTTP_TOKEN=TOKEN, VAULT_TOKEN=TOKEN)
    try:
        with demo(mesh) as dm:
            yield dm
    finally:
        mesh.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_json_endpoints_describe_the_running_proxy(d: Demo) -> None:
    clusters = fetch_json(d.admin_url(d.web, "/clusters"))["clusters"]
    (api,) = [c for c in clusters if c["service"] == "api"]
    assert api["listener"] == "upstream:api" and api["protocol"] == "http"
    (ep,) = api["endpoints"]
    assert ep["port"] == d.mesh.inbound_port("api")
    assert ep["health"] == "passing" and ep["ejected"] is False and ep["in_rotation"] is True
    assert isinstance(ep["active_requests"], int)

    listeners = {ln["name"]: ln for ln in fetch_json(d.admin_url(d.web, "/listeners"))["listeners"]}
    assert listeners["upstream:api"]["port"] == d.web_up and listeners["upstream:api"]["accepting"]
    assert listeners["inbound"]["protocol"] == "tcp"

    certs = fetch_json(d.admin_url(d.web, "/certs"))
    assert certs["leaf"]["spiffe_id"].endswith("/dc/dc1/svc/web")
    assert certs["leaf"]["valid"] and certs["leaf"]["expires_in_seconds"] > certs["leaf"]["rotation_in_seconds"] > 0
    assert certs["source"] == "built-in CA" and certs["roots"] and certs["roots"][0]["is_ca"]
    assert certs["leaf"]["issuer"] == certs["roots"][0]["subject"]

    dump = fetch_json(d.admin_url(d.web, "/config_dump"))
    assert dump["config"]["service"]["name"] == "web"
    assert "api.dc1" in dump["snapshot"]["upstreams"]

    info = fetch_json(d.admin_url(d.web, "/server_info"))
    assert info["ready"] is True and info["snapshot"]["version"] >= 1 and info["control_plane"]["type"] == "local"


def test_request_rate_appears_on_the_upstream_edge_after_traffic(d: Demo) -> None:
    url = d.admin_url(d.web, "/console/api/topology")
    fetch_json(url)  # a first sample

    def edge_rates() -> dict[str, Any] | None:
        assert all(s == 200 for s in get(d.web_up, "/", 20))
        edges = {e["id"]: e for e in fetch_json(url)["edges"]}
        rate = edges["upstream:api"]["traffic"]["rate"]
        return edges if rate else None

    edges = wait_for(edge_rates, 20, "a request rate on the web => api edge")
    up = edges["upstream:api"]
    assert up["source"] == "self" and up["target"] == "cluster:upstream:api/api"
    assert up["traffic"]["unit"] == "req/s" and up["traffic"]["error_rate"] == 0
    assert up["traffic"]["p99_ms"] is not None
    assert not edges["inbound"]["traffic"]["rate"], "nothing called web: its inbound edge stays idle"
    nodes = {n["id"]: n for n in fetch_json(url)["nodes"]}
    assert nodes["self"]["label"].startswith("web")
    assert any("passing" in line for line in nodes["cluster:upstream:api/api"]["lines"])


def cli_check(cfg: Path, src: str, dst: str, *extra: str) -> tuple[bool, str]:
    p = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "intention", "check", "-c", str(cfg), src, dst, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode in (0, 1), p.stderr
    return p.returncode == 0, p.stdout.strip().split(": ", 2)[2]


@pytest.mark.parametrize(
    ("src", "method", "path"),
    [("web", "", ""), ("intruder", "", ""), ("ops", "", ""), ("ops", "GET", "/status"), ("ops", "GET", "/admin/x")],
)
def test_intention_check_answers_as_the_cli_does(d: Demo, src: str, method: str, path: str) -> None:
    q = {"source": src, "destination": "api", "method": method, "path": path, "format": "json"}
    answer = fetch_json(d.admin_url(d.web, "/console/check?" + urlencode(q)))
    extra = [*(["--method", method] if method else []), *(["--path", path] if path else [])]
    allowed, reason = cli_check(d.web.cfg_path, src, "api", *extra)
    assert answer["allowed"] is allowed
    assert answer["reason"] == reason
    if src in ("web", "intruder"):
        assert answer["rule"]["source"] == ("web" if src == "web" else "*")


def test_bad_input_gets_one_line(d: Demo) -> None:
    status, headers, body = fetch(d.admin_url(d.web, "/console/check?format=json&source="))
    assert status == 400 and json.loads(body)["error"].startswith("source: required")
    status, headers, body = fetch(d.admin_url(d.web, "/console/check?format=json&source=web&path=nope"))
    assert status == 400 and "path" in json.loads(body)["error"]
    status, headers, body = fetch(d.admin_url(d.web, "/drain_listeners"))
    assert status == 405 and "POST" in headers.get("Allow", "")
    status, _, body = fetch(d.admin_url(d.web, "/no/such/page"))
    assert status == 404 and len(body.strip().splitlines()) <= 3 and "Traceback" not in body
    status, _, body = fetch(d.admin_url(d.web, "/console/static/../../app.py"))
    assert status == 404


def test_no_response_carries_key_material_or_a_token(d: Demo) -> None:
    ca_key = (d.mesh.root / "ca" / "ca.key").read_text().splitlines()[1]
    paths = [
        "/",
        "/console/topology",
        "/console/health",
        "/console/listeners",
        "/console/api/topology",
        "/console/check?source=web&destination=api",
        "/console/check?format=json&source=ops&destination=api&method=GET&path=/",
        "/clusters",
        "/listeners",
        "/certs",
        "/config_dump",
        "/server_info",
        "/config",
        "/metrics",
        "/ready",
        "/health",
        "/console/static/console.js",
        "/console/static/console.css",
    ]
    for sc in (d.web, d.api, d.intruder):
        for path in paths:
            status, headers, body = fetch(d.admin_url(sc, path))
            assert status == 200, (sc.name, path, body)
            for secret in ("PRIVATE KEY", ca_key, TOKEN):
                assert secret not in body, (sc.name, path, secret)
            if path == "/":
                assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_maintenance_endpoints_are_post_only_and_drain(mesh: Mesh) -> None:
    from mesh import echo_app

    with echo_app() as app:
        sc = mesh.sidecar("solo", app.port)
        base = f"http://127.0.0.1:{sc.admin_port}"
        assert fetch(base + "/healthcheck/fail")[0] == 405
        status, _, body = fetch(base + "/healthcheck/fail", "POST", {"Origin": "http://evil.example"})
        assert status == 403 and "cross-site" in body
        assert sc.admin("/ready")[0] == 200

        assert fetch(base + "/healthcheck/fail", "POST")[0] == 200
        status, text = sc.admin("/ready")
        assert status == 503 and "healthcheck/fail" in text
        assert fetch(base + "/healthcheck/ok", "POST")[0] == 200
        assert sc.admin("/ready")[0] == 200

        port = mesh.inbound_port("solo")
        status, _, body = fetch(base + "/drain_listeners?inboundonly", "POST")
        assert status == 200 and json.loads(body)["drained"] == ["inbound"]
        assert sc.admin("/ready")[0] == 503
        listeners = {ln["name"]: ln for ln in fetch_json(base + "/listeners")["listeners"]}
        assert listeners["inbound"]["accepting"] is False
        wait_for(lambda: refused(port, timeout=2), 10, "the drained inbound listener to refuse")
        info = fetch_json(base + "/server_info")
        assert info["maintenance"]["drained_listeners"] == ["inbound"]
        assert any("drained" in e["message"] for e in info["last_errors"])


def test_clusters_show_an_ejected_endpoint_beside_a_warning_one(mesh: Mesh) -> None:
    import yaml
    from http_app import http_app, mesh_server_context

    cert, key = mesh.leaf_files("api")
    ctx = mesh_server_context(cert, key, mesh.root / "ca" / "ca.crt")
    with http_app("api-0", ctx) as bad, http_app("api-1", ctx) as good:
        bad.fail_status = 500
        mesh.catalog["api"] = [
            {"address": "127.0.0.1", "port": bad.port, "datacenter": "dc1"},
            {"address": "127.0.0.1", "port": good.port, "datacenter": "dc1", "health": "warning"},
        ]
        mesh.write_catalog()
        mesh.allow("web", "api")
        up = free_port()
        sc = mesh.sidecar("web", inbound=False, upstreams={"api": up}, start=False)
        cfg = yaml.safe_load(sc.cfg_path.read_text())
        phc = {"max_failures": 2, "base_ejection_time": "60s", "max_ejection_percent": 50}
        cfg["upstreams"][0].update(protocol="http", passive_health_check=phc, retries={"num_retries": 0})
        sc.cfg_path.write_text(yaml.safe_dump(cfg))
        sc.start()
        base = f"http://127.0.0.1:{sc.admin_port}"

        def endpoints() -> dict[int, Any] | None:
            get(up, "/", 4)
            (api,) = fetch_json(base + "/clusters")["clusters"]
            eps = {e["port"]: e for e in api["endpoints"]}
            return eps if len(eps) == 2 and eps[bad.port]["ejected"] else None

        eps = wait_for(endpoints, 15, "api-0 ejected after consecutive 500s")
        assert eps[bad.port]["ejected_for_seconds"] > 0 and eps[bad.port]["in_rotation"] is False
        assert eps[good.port]["health"] == "warning" and eps[good.port]["in_rotation"] is True
        assert not eps[good.port]["ejected"]
        nodes = {n["id"]: n for n in fetch_json(base + "/console/api/topology")["nodes"]}
        lines = nodes["cluster:upstream:api/api"]["lines"]
        assert any(f":{bad.port}" in ln and "ejected" in ln for ln in lines)
        assert any(f":{good.port}" in ln and "warning" in ln for ln in lines)


def test_clusters_count_requests_in_flight_per_endpoint(d: Demo) -> None:
    import threading

    url = d.admin_url(d.web, "/clusters")
    statuses: list[int] = []
    t = threading.Thread(target=lambda: statuses.extend(get(d.web_up, "/hold")), daemon=True)
    t.start()
    try:

        def in_flight() -> dict[str, Any] | None:
            (api,) = [c for c in fetch_json(url)["clusters"] if c["service"] == "api"]
            return api if api["endpoints"][0]["active_requests"] == 1 else None

        api = wait_for(in_flight, 15, "the held request counted on api's endpoint")
        assert api["active_requests"] == 1
    finally:
        d.app.hold.set()
        t.join(15)
        d.app.hold.clear()
    assert statuses == [200]
    wait_for(lambda: fetch_json(url)["clusters"][0]["endpoints"][0]["active_requests"] == 0, 10, "no request left")
