"""Two datacenters that share nothing but a WAN link: dc2 lives in its own network namespace.

dc1 is this namespace; dc2 is a namespace joined to it by a veth pair (10.77.x.1 here, 10.77.x.2 there).
api and its sidecar listen on dc2's loopback, which dc1 cannot reach at all: web's only way to api is
dc1's mesh gateway → the WAN → dc2's mesh gateway. Needs root and iproute2 (`ip netns`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mesh import Mesh, Sidecar, echo_roundtrip, free_port, refused, wait_for

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def dc2_netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, dc1's WAN address, dc2's WAN address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (apt-get install iproute2)")
    n = os.getpid() % 250 + 1
    ns, here, there = f"meshgw-dc2-{os.getpid()}", f"mgw{n}a", f"mgw{n}b"
    if _ip("netns", "add", ns).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        a, b = f"10.77.{n}.1", f"10.77.{n}.2"
        for cmd in (
            ["link", "add", here, "type", "veth", "peer", "name", there],
            ["link", "set", there, "netns", ns],
            ["addr", "add", f"{a}/30", "dev", here],
            ["link", "set", here, "up"],
            ["-n", ns, "addr", "add", f"{b}/30", "dev", there],
            ["-n", ns, "link", "set", there, "up"],
            ["-n", ns, "link", "set", "lo", "up"],
        ):
            r = _ip(*cmd)
            assert r.returncode == 0, f"ip {' '.join(cmd)}: {r.stderr}"
        yield ns, a, b
    finally:
        _ip("link", "del", here)
        _ip("netns", "del", ns)


def _in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def test_web_reaches_api_in_an_isolated_datacenter_only_through_gateways(
    tmp_path: Path, dc2_netns: tuple[str, str, str]
) -> None:
    ns, _, wan2 = dc2_netns
    mesh = Mesh(tmp_path)
    app_port, api_port, gw1_port, gw2_port = free_port(), free_port(), free_port(), free_port()
    # The app in dc2: an echo server on dc2's loopback.
    app = subprocess.Popen(
        [
            *_in_ns(ns),
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                sys.path.insert(0, {str(TESTS)!r})
                from mesh import EchoServer
                import socketserver
                EchoServer.allow_reuse_address = True
                srv = EchoServer(b"api@dc2:")
                print(srv.port, flush=True)
                time.sleep(3600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        app_port = int(app.stdout.readline())
        procs: list[Sidecar] = []

        def run(name: str, dc: str, in_dc2: bool, **cfg: object) -> Sidecar:
            # Set in the file after: the helper's own inbound/upstreams arguments mean something else.
            late = {k: cfg.pop(k) for k in ("inbound", "upstreams") if k in cfg}
            sc = mesh.sidecar(name, inbound=False, start=False, dc=dc, **cfg)
            data = yaml.safe_load(sc.cfg_path.read_text())
            data.update(late)
            if in_dc2:
                # Its admin port on dc2's WAN address, so that this namespace can see /ready and /metrics.
                data["admin"]["bind"] = f"{wan2}:{sc.admin_port}"
                sc.prefix = _in_ns(ns)
                sc.admin_host = wan2
            sc.cfg_path.write_text(yaml.safe_dump(data))
            procs.append(sc)
            return sc

        api = run(
            "api", "dc2", True, service={"name": "api", "port": app_port}, inbound={"bind": f"127.0.0.1:{api_port}"}
        )
        mesh.register("api", api_port, dc="dc2")
        gw2 = run(
            "mgw-dc2",
            "dc2",
            True,
            mode="mesh-gateway",
            service={"name": "mesh-gateway"},
            gateway={"bind": f"{wan2}:{gw2_port}"},
        )
        mesh.register("mesh-gateway", gw2_port, dc="dc2")
        mesh.catalog["mesh-gateway"][-1]["address"] = wan2
        gw1 = run(
            "mgw-dc1",
            "dc1",
            False,
            mode="mesh-gateway",
            service={"name": "mesh-gateway"},
            gateway={"bind": f"127.0.0.1:{gw1_port}"},
        )
        mesh.register("mesh-gateway", gw1_port, dc="dc1")
        via, direct = free_port(), free_port()
        web = run(
            "web",
            "dc1",
            False,
            service={"name": "web"},
            upstreams=[
                {"service": "api", "bind": f"127.0.0.1:{via}", "datacenter": "dc2", "mesh_gateway": "local"},
                {"service": "api", "bind": f"127.0.0.1:{direct}", "datacenter": "dc2", "mesh_gateway": "none"},
            ],
        )
        mesh.allow("web", "api")
        for sc in (api, gw2, gw1, web):
            sc.start()

        assert echo_roundtrip(via, b"over the wan") == b"api@dc2:over the wan"
        assert gw1.metric("meshgw_gateway_connections_routed_total", route="remote") == 1
        assert gw2.metric("meshgw_gateway_connections_routed_total", route="local") == 1
        # Dialled directly, api's sidecar (127.0.0.1 in dc2) is not reachable from dc1: refused, counted.
        assert refused(direct)
        wait_for(
            lambda: web.metric("meshgw_upstream_connect_errors_total", reason="connect_failed") >= 1, 5, "direct fails"
        )
        assert api.metric("meshgw_connections_accepted_total", listener="inbound") == 1
    finally:
        mesh.close()
        app.kill()
        app.wait()

