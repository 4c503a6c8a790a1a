"""Protocols http2 and grpc (issue #14, Python side): accepted wherever http is, resolved as Consul resolves them
(http2-grpc.md §1.2, §1.3), and `meshgw intention check` for gRPC paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from gateway.config.protocol import ProtocolFacts
from gateway.http.entries import parse_entries

pytestmark = pytest.mark.timeout(120)


def meshgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60)


def sidecar(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "service": {"name": "billing", "port": 9000},
        "inbound": {"bind": "127.0.0.1:21000"},
        "certificates": {"type": "builtin", "builtin": {"dir": "ca", "create": True}},
    }
    cfg.update(extra)
    return cfg


def validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ca").mkdir(exist_ok=True)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return meshgw("validate", "-c", str(path))


# ---------------------------------------------------------------------- 1. accepted wherever http is


def test_validate_takes_http2_and_grpc_for_services_upstreams_and_ingress_listeners(tmp_path: Path) -> None:
    cfg = sidecar(upstreams=[{"service": "ledger", "bind": "127.0.0.1:9191", "protocol": "http2"}])
    cfg["service"]["protocol"] = "GRPC"  # Consul lower-cases protocols; so does meshgw
    r = validate(tmp_path, cfg)
    assert r.returncode == 0, r.stderr
    ingress = {
        "mode": "ingress-gateway",
        "service": {"name": "edge"},
        "certificates": {"type": "builtin", "builtin": {"dir": "ca", "create": True}},
        # An HTTP-like listener tells several services apart by Host; a tcp one reaches exactly one.
        "listeners": [{"bind": "0.0.0.0:8080", "protocol": "grpc", "services": ["billing", "ledger"]}],
    }
    r = validate(tmp_path, ingress)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("where", "key"),
    [("service", "service.protocol"), ("upstream", "upstreams[0].protocol"), ("listener", "listeners[0].protocol")],
)
def test_an_unknown_protocol_in_the_yaml_is_one_line_naming_the_key(tmp_path: Path, where: str, key: str) -> None:
    if where == "listener":
        cfg: dict[str, Any] = {
            "mode": "ingress-gateway",
            "service": {"name": "edge"},
            "certificates": {"type": "builtin", "builtin": {"dir": "ca", "create": True}},
            "listeners": [{"bind": "0.0.0.0:8080", "protocol": "h3", "services": ["billing"]}],
        }
    else:
        cfg = sidecar(upstreams=[{"service": "ledger", "bind": "127.0.0.1:9191"}])
        (cfg["service"] if where == "service" else cfg["upstreams"][0])["protocol"] = "h3"
    r = validate(tmp_path, cfg)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"m.yaml: {key}: 'h3' is not allowed (expected one of: tcp, http, http2, grpc)" in r.stderr


# ---------------------------------------------------------------------- 2. resolved as Consul does


def entries(*raw: dict[str, Any]) -> tuple[Any, ...]:
    return parse_entries(list(raw), "test")


def load(tmp_path: Path, cfg: dict[str, Any]) -> Any:
    return parse_config(cfg, tmp_path / "m.yaml", env={})


def test_own_protocol_yaml_then_registration_then_service_defaults_then_proxy_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, sidecar())
    assert (cfg.service.protocol, cfg.service.protocol_explicit) == ("tcp", False)
    pd = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "HTTP"}}
    sd = {"Kind": "service-defaults", "Name": "billing", "Protocol": "grpc"}
    assert ProtocolFacts(entries(pd)).resolve(cfg)[0].service.protocol == "http"
    assert ProtocolFacts(entries(pd, sd)).resolve(cfg)[0].service.protocol == "grpc"
    # An entry without Protocol does not mask proxy-defaults for the proxy itself (resolve.go: "if non-empty").
    empty_sd = {"Kind": "service-defaults", "Name": "billing"}
    assert ProtocolFacts(entries(pd, empty_sd)).resolve(cfg)[0].service.protocol == "http"
    assert ProtocolFacts(entries(pd, sd), registration="HTTP2").resolve(cfg)[0].service.protocol == "http2"
    explicit = load(tmp_path, sidecar(service={"name": "billing", "port": 9000, "protocol": "tcp"}))
    assert ProtocolFacts(entries(pd, sd), registration="http2").resolve(explicit)[0].service.protocol == "tcp"
    # The local control plane: the same resolution from the file's own config entries, at load.
    local = load(tmp_path, sidecar(config_entries=[pd, sd]))
    assert local.service.protocol == "grpc"


def test_upstream_protocol_yaml_then_callers_upstream_config_then_discovery_chain(tmp_path: Path) -> None:
    ups = [{"service": "ledger", "bind": "127.0.0.1:9191"}, {"service": "audit", "bind": "127.0.0.1:9192"}]
    cfg = load(tmp_path, sidecar(upstreams=ups))
    chains = {("ledger", "dc1"): "grpc", ("audit", "dc1"): "http2"}
    facts = ProtocolFacts((), tuple(chains.items()))
    assert [u.protocol for u in facts.resolve(cfg)[0].upstreams] == ["grpc", "http2"]
    callers = {
        "Kind": "service-defaults",
        "Name": "billing",
        "UpstreamConfig": {"Defaults": {"Protocol": "http"}, "Overrides": [{"Name": "audit", "Protocol": "GRPC"}]},
    }
    facts = ProtocolFacts(entries(callers), tuple(chains.items()))
    assert [u.protocol for u in facts.resolve(cfg)[0].upstreams] == ["http", "grpc"]
    ups[0]["protocol"] = "tcp"
    explicit = load(tmp_path, sidecar(upstreams=ups))
    assert [u.protocol for u in facts.resolve(explicit)[0].upstreams] == ["tcp", "grpc"]
    # Without Consul's chain the chain is compiled from the entries: the target's service-defaults, even empty
    # (hashicorp/consul#11457), else proxy-defaults.
    local = load(
        tmp_path,
        sidecar(
            upstreams=[{"service": "ledger", "bind": "127.0.0.1:9191"}, {"service": "audit", "bind": "127.0.0.1:9192"}],
            config_entries=[
                {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http2"}},
                {"Kind": "service-defaults", "Name": "ledger"},
            ],
        ),
    )
    assert [u.protocol for u in local.upstreams] == ["tcp", "http2"]


def test_an_unknown_protocol_from_config_entries_is_served_as_tcp_with_one_warning(tmp_path: Path) -> None:
    cfg = sidecar(config_entries=[{"Kind": "service-defaults", "Name": "billing", "Protocol": "thrift"}])
    r = validate(tmp_path, cfg)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "thrift" in line]
    assert lines == [
        f"{tmp_path / 'm.yaml'}: config_entries: service-defaults/billing: protocol 'thrift' is unknown "
        "(expected one of: tcp, http, http2, grpc): served as tcp"
    ], r.stderr
    assert load(tmp_path, cfg).service.protocol == "tcp"


# ---------------------------------------------------------------------- 3. the check a gRPC service asks for


@pytest.mark.parametrize(
    ("check", "consul", "needle"),
    [
        ({"type": "grpc"}, False, "service.check: is registered with the app service"),
        ({"type": "http"}, True, "service.check.type: 'http' is not allowed (expected one of: tcp, grpc)"),
        ({"type": "tcp", "grpc_service": "x"}, True, "service.check.grpc_service: only goes with type: grpc"),
        ({"type": "grpc", "grpc_service": "a/b"}, True, "service.check.grpc_service: 'a/b' is not a gRPC service"),
    ],
)
def test_bad_service_check_is_one_line(tmp_path: Path, check: dict[str, Any], consul: bool, needle: str) -> None:
    cfg = sidecar()
    cfg["service"]["check"] = check
    if consul:
        cfg["control_plane"] = {"type": "consul", "consul": {"register_service": True}}
        cfg["certificates"] = {"type": "consul"}
    r = validate(tmp_path, cfg)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


# ---------------------------------------------------------------------- 4. intention check on gRPC paths

GRPC_INTENTIONS = """
- Kind: service-intentions
  Name: billing
  Sources:
    - Name: web
      Permissions:
        - Action: deny
          HTTP: {PathExact: /billing.v1.Billing/IssueRefund}
        - Action: allow
          HTTP: {PathPrefix: /billing.v1.Billing/, Methods: [POST]}
"""


def intention_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text(GRPC_INTENTIONS)
    local = {"catalog": "catalog.yaml", "intentions": "intentions.yaml"}
    cfg = sidecar(control_plane={"type": "local", "local": local})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    return meshgw("intention", "check", "-c", str(tmp_path / "m.yaml"), "web", "billing", *args)


@pytest.mark.parametrize(
    ("path", "code", "out"),
    [
        ("/billing.v1.Billing/GetInvoice", 0, "Allowed: web => billing: intention web => billing permission[1]"),
        ("/billing.v1.Billing/IssueRefund", 1, "Denied: web => billing: intention web => billing permission[0]"),
        ("/ledger.v1.Ledger/Post", 1, "Denied: web => billing: intention web => billing: no permission matched"),
    ],
)
def test_intention_check_takes_grpc_calls(tmp_path: Path, path: str, code: int, out: str) -> None:
    r = intention_check(tmp_path, "--grpc", "--path", path)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert out in r.stdout, r.stdout


def test_intention_check_grpc_path_must_name_a_method(tmp_path: Path) -> None:
    r = intention_check(tmp_path, "--grpc", "--path", "/billing")
    assert r.returncode == 2
    assert r.stderr.strip().endswith("--path '/billing': a gRPC call's path is /package.Service/Method"), r.stderr
