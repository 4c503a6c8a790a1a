"""End to end: real meshgw processes, real mTLS, real apps on loopback."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import threading
import time

import pytest
import yaml
from mesh import Mesh, echo_app, echo_roundtrip, free_port, wait_for

from connect.ca import BuiltinCA
from gateway import dataplane

pytestmark = pytest.mark.slow


def refused(port: int, payload: bytes = b"ping") -> bool:
    """True when the mesh refuses: the connection is closed (or reset) without an answer."""
    try:
        return echo_roundtrip(port, payload, timeout=5) == b""
    except (ConnectionError, OSError):
        return True


def test_allowed_call_end_to_end(mesh: Mesh) -> None:
    with echo_app() as app:
        api = mesh.sidecar("api", app.port)
        up = free_port()
        web = mesh.sidecar("web", upstreams={"api": up})
        mesh.allow("web", "api")
        wait_for(lambda: not refused(up), 5, "web -> api allowed")
        payload = os.urandom(1 << 20)  # 1 MiB each way: exercises flow control, not just one record
        assert echo_roundtrip(up, payload, timeout=10) == payload
        assert api.metric("meshgw_connections_accepted_total", listener="inbound") >= 1
        assert web.metric("meshgw_connections_accepted_total", listener="upstream:api") >= 1
        wait_for(lambda: api.metric("meshgw_bytes_received_total", listener="inbound") >= len(payload), 5, "bytes")
        status, cfg = api.admin("/config")
        assert status == 200 and "PRIVATE KEY" not in cfg and "spiffe://test.consul" in cfg
        # A real sidecar process relays on the native data path when the install built it (tests/test_relay.py
        # checks that it did).
        assert json.loads(cfg)["data_path"] == dataplane.describe()


def test_denied_by_intention_closes_before_the_app(mesh: Mesh) -> None:
    with echo_app() as app:
        api = mesh.sidecar("api", app.port)
        up = free_port()
        mesh.sidecar("intruder", upstreams={"api": up})
        mesh.allow("web", "api")  # someone else is allowed; intruder falls to the default (deny)
        assert refused(up)
        wait_for(lambda: api.metric("meshgw_connections_denied_total", reason="intention") >= 1, 5, "deny counted")
        assert app.connections == 0


def test_explicit_deny_beats_wildcard_allow(mesh: Mesh) -> None:
    with echo_app() as app:
        up_web, up_bad = free_port(), free_port()
        mesh.intentions = [
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [{"Name": "*", "Action": "allow"}, {"Name": "bad", "Action": "deny"}],
            }
        ]
        mesh.write_intentions()
        mesh.sidecar("api", app.port)
        mesh.sidecar("web", upstreams={"api": up_web})
        mesh.sidecar("bad", upstreams={"api": up_bad})
        assert echo_roundtrip(up_web, b"x") == b"x"
        assert refused(up_bad)


def _tls_attempt(mesh: Mesh, port: int, ctx: ssl.SSLContext) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="api.default.dc1.internal.test.consul") as s:
                s.sendall(b"hello")
                return s.recv(100)
    except (ssl.SSLError, ConnectionError, OSError):
        return b""


@pytest.mark.parametrize("case", ["no_client_cert", "untrusted_cert", "cert_expired", "foreign_trust_domain"])
def test_inbound_rejects_bad_client_certificates(mesh: Mesh, case: str) -> None:
    with echo_app() as app:
        mesh.allow("*", "api")
        api = mesh.sidecar("api", app.port)
        port = mesh.inbound_port("api")
        good = mesh.client_context(mesh.leaf_files("web"))
        assert _tls_attempt(mesh, port, good) == b"hello"  # the control: a good client passes
        if case == "no_client_cert":
            ctx = mesh.client_context(None)
        elif case == "untrusted_cert":
            other = BuiltinCA.init(mesh.root / "other-ca", "test.consul")
            ctx = mesh.client_context(mesh.leaf_files("web", ca=other))
        elif case == "cert_expired":
            past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
            ctx = mesh.client_context(mesh.leaf_files("web", ttl=600, not_before=past))
        else:
            uri = "spiffe://elsewhere.consul/ns/default/dc/dc1/svc/web"
            ctx = mesh.client_context(mesh.leaf_files("web", uri=uri))
        before = app.connections
        assert _tls_attempt(mesh, port, ctx) == b""
        wait_for(lambda: api.metric("meshgw_connections_denied_total", reason=case) >= 1, 5, f"{case} counted")
        assert app.connections == before


def test_no_healthy_upstream_closes_promptly_and_counts(mesh: Mesh) -> None:
    up = free_port()
    web = mesh.sidecar("web", upstreams={"api": up})
    mesh.register("api", free_port(), health="critical")
    t0 = time.monotonic()
    assert refused(up)
    assert time.monotonic() - t0 < 5
    wait_for(
        lambda: web.metric("meshgw_upstream_connect_errors_total", reason="no_healthy_endpoints") >= 1, 5, "counted"
    )


def test_critical_instance_leaves_the_balancer(mesh: Mesh) -> None:
    with echo_app(b"A:") as a, echo_app(b"B:") as b:
        mesh.allow("web", "api")
        mesh.sidecar("api", a.port)
        # A second api instance: same service name, its own inbound port and app.
        second = mesh.sidecar("api", b.port, start=False)
        second.cfg_path = mesh.root / "api-2.yaml"
        cfg = yaml.safe_load((mesh.root / "api.yaml").read_text())
        cfg["service"]["port"] = b.port
        port2 = free_port()
        cfg["inbound"]["bind"] = f"127.0.0.1:{port2}"
        cfg["admin"]["bind"] = f"127.0.0.1:{second.admin_port}"
        second.cfg_path.write_text(yaml.safe_dump(cfg))
        second.start()
        mesh.catalog["api"] = mesh.catalog["api"][:1]
        mesh.register("api", port2)
        mesh.allow("web", "api")
        up = free_port()
        mesh.sidecar("web", upstreams={"api": up})
        seen = {echo_roundtrip(up, b"x")[:2] for _ in range(6)}
        assert seen == {b"A:", b"B:"}
        mesh.catalog["api"][1]["health"] = "critical"
        mesh.write_catalog()
        wait_for(lambda: {echo_roundtrip(up, b"x")[:2] for _ in range(4)} == {b"A:"}, 5, "B ejected")


def test_intentions_edit_applies_to_new_connections(mesh: Mesh) -> None:
    with echo_app() as app:
        api = mesh.sidecar("api", app.port)
        up = free_port()
        mesh.sidecar("web", upstreams={"api": up})
        mesh.allow("web", "api")
        wait_for(lambda: not refused(up), 5, "allowed")
        # An open connection keeps working across the change; new ones follow the new rule.
        long_lived = socket.create_connection(("127.0.0.1", up), timeout=5)
        long_lived.sendall(b"1")
        assert long_lived.recv(10) == b"1"
        mesh.allow("web", "api", action="deny")
        wait_for(lambda: refused(up), 3, "deny applied within 2s")
        long_lived.sendall(b"2")
        assert long_lived.recv(10) == b"2"
        long_lived.close()
        # A broken edit: one log line naming the file, and the last good rules keep serving.
        (mesh.root / "intentions.yaml").write_text(
            "Kind: service-intentions\nName: api\nSources: [{Name: web, Action: alow}]\n"
        )
        wait_for(lambda: "intentions.yaml" in api.log_text() and "keeping the last good" in api.log_text(), 5, "log")
        assert refused(up)
        mesh.allow("web", "api")
        wait_for(lambda: not refused(up), 3, "good edit applied again")


def test_sigterm_drains_open_connections(mesh: Mesh) -> None:
    with echo_app() as app:
        mesh.allow("web", "api")
        mesh.sidecar("api", app.port)
        up = free_port()
        web = mesh.sidecar("web", upstreams={"api": up})
        conn = socket.create_connection(("127.0.0.1", up), timeout=5)
        conn.sendall(b"before")
        assert conn.recv(100) == b"before"
        web.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in web.log_text(), 5, "drain started")
        # New connections are refused, the open one keeps flowing.
        wait_for(lambda: refused(up), 5, "listener closed")
        conn.sendall(b"during")
        assert conn.recv(100) == b"during"
        assert web.proc is not None and web.proc.poll() is None
        conn.close()
        assert web.proc.wait(10) == 0


def test_leaf_rotation_under_traffic_drops_nothing(mesh: Mesh) -> None:
    with echo_app() as app:
        short = {"certificates": {"builtin": {"leaf_ttl": "3s"}}}
        mesh.allow("web", "api")
        api = mesh.sidecar("api", app.port, **short)
        up = free_port()
        web = mesh.sidecar("web", upstreams={"api": up}, **short)
        failures: list[str] = []
        done = threading.Event()
        count = [0, 0]

        def new_connections() -> None:
            while not done.is_set():
                try:
                    if echo_roundtrip(up, b"n" * 100) != b"n" * 100:
                        failures.append("short answer")
                    count[0] += 1
                except OSError as e:
                    failures.append(repr(e))

        def long_connection() -> None:
            with socket.create_connection(("127.0.0.1", up), timeout=5) as s:
                while not done.is_set():
                    s.sendall(b"long")
                    got = b""
                    while len(got) < 4:
                        chunk = s.recv(4 - len(got))
                        if not chunk:
                            failures.append("long-lived connection closed")
                            return
                        got += chunk
                    count[1] += 1

        threads = [threading.Thread(target=new_connections), threading.Thread(target=long_connection)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: api.metric("meshgw_leaf_cert_rotations_total") >= 4, 20, "api rotated 3 times")
            wait_for(lambda: web.metric("meshgw_leaf_cert_rotations_total") >= 4, 20, "web rotated 3 times")
        finally:
            done.set()
            for t in threads:
                t.join(10)
        assert failures == []
        assert count[0] > 10 and count[1] > 10


def test_sighup_reload_applies_good_config_and_rejects_bad(mesh: Mesh) -> None:
    with echo_app() as app:
        mesh.allow("web", "api")
        mesh.sidecar("api", app.port)
        up1, up2 = free_port(), free_port()
        web = mesh.sidecar("web", upstreams={"api": up1})
        assert echo_roundtrip(up1, b"a") == b"a"
        cfg = yaml.safe_load(web.cfg_path.read_text())
        cfg["upstreams"].append({"service": "api", "bind": f"127.0.0.1:{up2}", "datacenter": "dc1"})
        cfg["upstreams"][0]["bind"] = f"127.0.0.1:{up1}"
        web.cfg_path.write_text(yaml.safe_dump(cfg))
        web.signal(signal.SIGHUP)
        # two upstream listeners for the same service and datacenter are allowed (different binds)
        wait_for(lambda: "reloaded" in web.log_text(), 5, "reload applied")
        assert echo_roundtrip(up2, b"b") == b"b"
        good = web.cfg_path.read_text()
        web.cfg_path.write_text(good.replace("upstreams:", "upstreams: 7\nbogus:"))
        web.signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in web.log_text(), 5, "reload rejected")
        assert echo_roundtrip(up1, b"c") == b"c" and echo_roundtrip(up2, b"d") == b"d"


def test_not_ready_without_a_valid_leaf_fails_closed(mesh: Mesh) -> None:
    """A CA that cannot issue (key removed) and a leaf that expires: /ready 503 and no plaintext."""
    with echo_app() as app:
        api = mesh.sidecar("api", app.port, **{"certificates": {"builtin": {"leaf_ttl": "3s"}}})
        mesh.allow("web", "api")
        os.remove(mesh.root / "ca" / "ca.key")
        wait_for(lambda: api.admin("/ready")[0] == 503, 10, "/ready 503 after the leaf expired")
        ctx = mesh.client_context(mesh.leaf_files("web"))
        assert _tls_attempt(mesh, mesh.inbound_port("api"), ctx) == b""
        wait_for(lambda: api.metric("meshgw_connections_denied_total", reason="not_ready") >= 1, 5, "counted")
        assert app.connections == 0
