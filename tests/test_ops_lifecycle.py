"""Lifecycle on VMs (issue #15): systemd Type=notify with readiness, reload and stop notifications from a real
`meshgw run`, units that do not restart-loop on a config error, writable paths for access logs and templates,
and the shipped templates found by name (package data)."""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mesh import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_run_notifies_systemd_ready_reloading_stopping(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text("[]\n")
    admin = free_port()
    (tmp_path / "m.yaml").write_text(
        f"""
service: {{name: web, port: {free_port()}}}
inbound: {{bind: 127.0.0.1:{free_port()}}}
control_plane: {{type: local, local: {{catalog: catalog.yaml, intentions: intentions.yaml}}}}
certificates: {{builtin: {{dir: ca, create: true, leaf_ttl: 1h}}}}
admin: {{bind: 127.0.0.1:{admin}}}
drain_timeout: 1s
log_json: true
"""
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp_path / "m.yaml")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        msg = notify.recv(4096).decode()
        assert msg.splitlines()[0] == "READY=1" and "STATUS=serving web" in msg, msg
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config", timeout=10) as resp:
            from gateway.version import VERSION

            assert json.load(resp)["version"] == VERSION
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as resp:
            assert f'version="{VERSION}"' in resp.read().decode()
        proc.send_signal(signal.SIGHUP)
        msg = notify.recv(4096).decode().splitlines()
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=") and int(msg[1].split("=")[1]) > 0
        assert notify.recv(4096).decode().startswith("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    assert proc.stderr is not None
    lines = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith("{")]
    assert any(x["@message"].startswith("meshgw v") and "starting" in x["@message"] for x in lines), lines[:3]
    assert all({"@timestamp", "@level", "@module", "@message"} <= set(x) for x in lines)


def test_config_error_exits_2_and_units_do_not_restart_on_it(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("service: {name: web, port: 8080}\ndrain_timeout: 15\n")
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp_path / "m.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "drain_timeout: 15 has no unit" in r.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "packaging" / "meshgw@.service").read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["RestartPreventExitStatus"] == "2" and svc["Restart"] == "on-failure"
    assert svc["LogsDirectory"] == "meshgw"
    assert "ExecStartPre" not in svc  # its exit 2 would not be covered by RestartPreventExitStatus


def test_rendered_unit_lists_access_log_and_template_dirs_and_templates_resolve_by_name(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text("[]\n")
    (tmp_path / "t.j2").write_text("x\n")
    (tmp_path / "m.yaml").write_text(
        f"""
service: {{name: web, port: 8080}}
inbound: {{bind: 127.0.0.1:21000}}
control_plane: {{type: local, local: {{catalog: catalog.yaml, intentions: intentions.yaml}}}}
certificates: {{builtin: {{dir: ca, create: true}}}}
access_log: {{enabled: true, type: file, path: {tmp_path}/logs/access.log}}
templates: [{{source: t.j2, destination: {tmp_path}/haproxy/haproxy.cfg}}]
"""
    )
    out = tmp_path / "meshgw-web.service"
    # A bare name is one of the templates meshgw ships as package data (no checkout needed).
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "render",
            "-c",
            str(tmp_path / "m.yaml"),
            "--once",
            "--template",
            f"meshgw.service.j2:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(out.read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["RestartPreventExitStatus"] == "2" and svc["LogsDirectory"] == "meshgw"
    rw = svc["ReadWritePaths"].split()
    assert f"-{tmp_path}/logs" in rw and f"-{tmp_path}/haproxy" in rw and f"-{tmp_path}/ca" in rw, rw


def _render(tmp_path: Path, config: str, template: str) -> str:
    (tmp_path / "m.yaml").write_text(config)
    out = tmp_path / "out.txt"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "render",
            "-c",
            str(tmp_path / "m.yaml"),
            "--once",
            "--template",
            f"{template}:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return out.read_text()


def test_consul_acl_policy_template(tmp_path: Path) -> None:
    import hcl2

    consul = "control_plane: {type: consul, consul: {address: '127.0.0.1:1', register: true}}\n"
    text = _render(
        tmp_path,
        "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
        + consul
        + "certificates: {type: consul}\n",
        "consul-acl-policy.hcl.j2",
    )
    opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    doc = hcl2.loads(text, serialization_options=opts)
    services = {k: v for b in doc["service"] for k, v in b.items()}
    assert services["web"] == {"policy": "write", "intentions": "read"}
    assert services["web-sidecar-proxy"]["policy"] == "write"
    assert doc["service_prefix"][0][""]["policy"] == "read" and doc["node_prefix"][0][""]["policy"] == "read"
    assert doc["agent_prefix"][0][""]["policy"] == "read"
    text = _render(
        tmp_path,
        "mode: terminating-gateway\nservice: {name: tgw}\ngateway: {bind: 0.0.0.0:8444}\n"
        "services: [{name: db, address: '10.0.0.9:5432'}]\n"
        + consul.replace("register: true", "register: false")
        + "certificates: {type: consul}\n",
        "consul-acl-policy.hcl.j2",
    )
    services = {k: v for b in hcl2.loads(text, serialization_options=opts)["service"] for k, v in b.items()}
    assert set(services) == {"tgw", "db"} and services["db"]["policy"] == "write"


def test_consul_expose_paths_are_served_plaintext(tmp_path: Path) -> None:
    from http_app import http_app

    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text("[]\n")
    expose_port, admin = free_port(), free_port()
    with http_app("web") as app:
        (tmp_path / "m.yaml").write_text(
            f"""
service: {{name: web, port: {app.port}}}
inbound: {{bind: 127.0.0.1:{free_port()}}}
control_plane: {{type: local, local: {{catalog: catalog.yaml, intentions: intentions.yaml}}}}
certificates: {{builtin: {{dir: ca, create: true, leaf_ttl: 1h}}}}
admin: {{bind: 127.0.0.1:{admin}}}
expose: {{paths: [{{listener_port: {expose_port}, path: /health, local_path_port: {app.port}}}]}}
drain_timeout: 1s
"""
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp_path / "m.yaml")],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def get(path: str) -> tuple[int, str] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{expose_port}{path}", timeout=5) as r:
                        return r.status, r.read().decode()
                except urllib.error.HTTPError as e:
                    return e.code, e.read().decode()
                except OSError:
                    return None

            from mesh import wait_for

            status, body = wait_for(lambda: get("/health?full=1"), 30, "expose listener")
            assert status == 200 and json.loads(body)["path"] == "/health?full=1"  # the app answered, plaintext
            assert get("/admin")[0] == 404  # type: ignore[index]  # only the exposed path
            assert [r["path"] for r in app.requests] == ["/health?full=1"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_expose_paths_are_registered_and_validated(tmp_path: Path) -> None:
    from connect.consul import ConsulControlPlane
    from gateway.config import load_config
    from gateway.snapshot import SnapshotBuilder

    base = (
        "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
        "control_plane: {type: consul, consul: {address: '127.0.0.1:1'}}\ncertificates: {type: consul}\n"
    )
    (tmp_path / "m.yaml").write_text(
        base + "expose: {paths: [{listener_port: 21500, path: /health, local_path_port: 8080}]}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", env={})
    cp = ConsulControlPlane(cfg, SnapshotBuilder(cfg), provide_certs=True, ready=lambda: (True, ""))
    assert cp.sidecar_registration()["Proxy"]["Expose"] == {
        "Paths": [{"ListenerPort": 21500, "Path": "/health", "LocalPathPort": 8080, "Protocol": "http"}]
    }
    # A gRPC check's path: Consul's http2 (h2c to the app), registered as such.
    (tmp_path / "m.yaml").write_text(
        base + "expose: {paths: [{listener_port: 21501, path: /grpc.health.v1.Health/Check, local_path_port: 8080,"
        " protocol: http2}]}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", env={})
    cp = ConsulControlPlane(cfg, SnapshotBuilder(cfg), provide_certs=True, ready=lambda: (True, ""))
    assert cp.sidecar_registration()["Proxy"]["Expose"]["Paths"][0]["Protocol"] == "http2"
    (tmp_path / "m.yaml").write_text(
        base + "expose: {paths: [{listener_port: 21000, path: health, local_path_port: 8080, protocol: http3}]}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", "-c", str(tmp_path / "m.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    for needle in (
        "expose.paths[0].path: 'health' is not a path",
        "expose.paths[0].protocol: 'http3' is not allowed (expected one of: http, http2)",
        "expose.paths[0].listener_port: 21000 is already a listener",
    ):
        assert needle in r.stderr, r.stderr


def test_expose_checks_is_registered_and_needs_consul(tmp_path: Path) -> None:
    from connect.consul import ConsulControlPlane, exposed_check_paths
    from gateway.config import ExposePathConfig, load_config
    from gateway.snapshot import SnapshotBuilder

    base = "service: {name: web, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\nexpose: {checks: true}\n"
    (tmp_path / "m.yaml").write_text(
        base + "control_plane: {type: consul, consul: {address: '127.0.0.1:1'}}\ncertificates: {type: consul}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", env={})
    cp = ConsulControlPlane(cfg, SnapshotBuilder(cfg), provide_certs=True, ready=lambda: (True, ""))
    assert cp.sidecar_registration()["Proxy"]["Expose"] == {"Checks": True, "Paths": []}
    # What the agent's /v1/agent/checks says of the app's checks once it exposed them (C:api/health.go).
    checks = {
        "h": {"ServiceID": "web", "ExposedPort": 21500, "Definition": {"HTTP": "http://127.0.0.1:8080/health?x=1"}},
        "g": {"ServiceID": "web", "ExposedPort": 21501, "Definition": {"GRPC": "127.0.0.1:9090/web"}},
        "other": {"ServiceID": "db", "ExposedPort": 21502, "Definition": {"HTTP": "http://127.0.0.1:5432/"}},
        "tcp": {"ServiceID": "web", "ExposedPort": 0, "Definition": {"TCP": "127.0.0.1:8080"}},
        "no-port": {"ServiceID": "web", "ExposedPort": 21503, "Definition": {"HTTP": "http://localhost/x"}},
    }
    assert exposed_check_paths(checks, "web") == (
        ExposePathConfig(21501, "/grpc.health.v1.Health/Check", 9090, "http2", from_check=True),
        ExposePathConfig(21500, "/health", 8080, "http", from_check=True),
    )
    (tmp_path / "m.yaml").write_text(base + "certificates: {builtin: {dir: ca, create: true}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", "-c", str(tmp_path / "m.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert (
        f"{tmp_path / 'm.yaml'}: expose.checks: the checks exposed are the Consul agent's "
        "(expected control_plane.type consul)"
    ) in r.stderr


def test_a_sidecar_loads_only_what_its_config_uses(tmp_path: Path) -> None:
    """Issue #13: the built-in CA issues in a child process, the admin port is served without aiohttp, templates
    and their Jinja are loaded only when configured, so a plain sidecar's process never maps these libraries."""
    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text("[]\n")
    admin = free_port()
    (tmp_path / "m.yaml").write_text(
        f"""
service: {{name: web, port: {free_port()}}}
inbound: {{bind: 127.0.0.1:{free_port()}}}
control_plane: {{type: local, local: {{catalog: catalog.yaml, intentions: intentions.yaml}}}}
certificates: {{builtin: {{dir: ca, create: true, leaf_ttl: 1h}}}}
admin: {{bind: 127.0.0.1:{admin}}}
drain_timeout: 1s
"""
    )
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp_path / "m.yaml")])
    try:
        from mesh import wait_for

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 30, "sidecar ready")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        for lib in ("cryptography", "aiohttp", "multidict", "yarl", "markupsafe", "uvloop"):
            assert f"/{lib}/" not in maps, f"{lib} is loaded"
        assert "_core.abi3.so" in maps  # the check looks at the right process
        # The console's JSON endpoints do without Jinja2; its page brings it (and the X.509 library) only then.
        for path in ("/clusters", "/listeners", "/server_info"):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
                assert r.status == 200, path
        assert "/markupsafe/" not in Path(f"/proc/{proc.pid}/maps").read_text(), "a JSON endpoint loaded jinja2"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=10) as r:
            assert r.status == 200 and b'<svg class="topology"' in r.read()
        assert "/markupsafe/" in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
