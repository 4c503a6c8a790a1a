"""Config validation, the CLI's one-line errors, the built-in CA and the local control-plane files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from connect.ca import BuiltinCA
from connect.local import SourceError, read_catalog, read_intentions
from connect.spiffe import parse_service_uri, service_uri, upstream_sni
from gateway.config import ConfigError, load_config, parse_address, parse_duration

GOOD = """
datacenter: dc1
service: {name: web, port: 8080}
inbound: {bind: 127.0.0.1:21000}
upstreams:
  - {service: api, bind: 127.0.0.1:9191}
control_plane:
  type: local
  local: {catalog: catalog.yaml, intentions: intentions.yaml}
certificates:
  type: builtin
  builtin: {dir: ca, create: true}  # issue #15: a missing CA is created only when asked
"""


def meshgw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "catalog.yaml").write_text("services: {api: [{address: 127.0.0.1, port: 21001}]}\n")
    (tmp_path / "intentions.yaml").write_text(
        "Kind: service-intentions\nName: web\nSources: [{Name: api, Action: allow}]\n"
    )
    return tmp_path


def test_good_config_loads_into_the_typed_model(workdir: Path) -> None:
    (workdir / "m.yaml").write_text(GOOD)
    cfg = load_config(workdir / "m.yaml")
    assert cfg.service.name == "web" and cfg.service.id == "web"
    assert cfg.upstreams[0].bind.port == 9191 and cfg.upstreams[0].protocol == "tcp"
    assert cfg.control_plane.local.catalog == workdir / "catalog.yaml"  # relative to the config file
    assert cfg.control_plane.default_intention_policy == "deny"
    assert cfg.certificates.builtin is not None and cfg.certificates.builtin.leaf_ttl == 72 * 3600
    assert str(cfg.admin.bind) == "127.0.0.1:19000"
    r = meshgw("validate", "-c", str(workdir / "m.yaml"))
    assert r.returncode == 0, r.stderr


S = "service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\n"
BAD = [
    ("service: {name: web, port: 8080}\ninbound: {bind: nowhere}\n", "inbound.bind", "host:port"),
    ("service: {name: web, port: 99999}\ninbound: {bind: 127.0.0.1:1}\n", "service.port", "1-65535"),
    ("service: {name: 'we b', port: 80}\ninbound: {bind: 127.0.0.1:1}\n", "service.name", "service name"),
    ("service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\nmode: gateway\n", "mode", "sidecar"),
    ("service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\ncolor: red\n", "color", "unknown key"),
    ("service: {name: web, port: 80}\n", "inbound", "inbound listener or at least one upstream"),
    ("inbound: {bind: 127.0.0.1:1}\n", "service", "is required"),
    ("service: {name: web, port: 80}\nupstreams: [{service: api}]\n", "upstreams[0].bind", "is required"),
    (
        "service: {name: web, port: 80}\n"
        "upstreams: [{service: a, bind: '127.0.0.1:5'}, {service: b, bind: '127.0.0.1:5'}]\n",
        "upstreams[1].bind",
        "already used",
    ),
    (
        "service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\ndrain_timeout: soon\n",
        "drain_timeout",
        "duration",
    ),
    (
        "service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\ncontrol_plane: {type: zookeeper}\n",
        "control_plane.type",
        "local",
    ),
    (
        S + "control_plane: {default_intention_policy: maybe}\n",
        "control_plane.default_intention_policy",
        "allow, deny",
    ),
    (
        "service: {name: web, port: 80}\ninbound: {bind: 127.0.0.1:1}\ncertificates: {type: builtin}\n",
        "certificates.builtin.dir",
        "required",
    ),
    ("mode: mesh-gateway\nservice: {name: mesh-gateway}\n", "gateway.bind", "is required"),
    (
        "mode: mesh-gateway\nservice: {name: m}\ngateway: {bind: 0.0.0.0:8443}\ninbound: {bind: 127.0.0.1:1}\n",
        "inbound",
        "no inbound listener",
    ),
    (S + "gateway: {bind: 0.0.0.0:8443}\n", "gateway", "only a mesh or terminating gateway"),
    (S + "mesh_gateway: {mode: sideways}\n", "mesh_gateway.mode", "none, local, remote"),
    (
        "service: {name: web, port: 80}\nupstreams: [{service: a, bind: '127.0.0.1:5', mesh_gateway: up}]\n",
        "upstreams[0].mesh_gateway",
        "none, local, remote",
    ),
    ("mode: ingress-gateway\nservice: {name: ig}\n", "listeners", "is required"),
    (
        "mode: ingress-gateway\nservice: {name: ig}\nlisteners: [{bind: '0.0.0.0:8080', services: [a, b]}]\n",
        "listeners[0].services",
        "a tcp listener reaches exactly one",
    ),
    (
        "mode: ingress-gateway\nservice: {name: ig}\n"
        "listeners: [{bind: '0.0.0.0:8080', protocol: udp, services: [a]}]\n",
        "listeners[0].protocol",
        "tcp, http",
    ),
    (S + "listeners: [{bind: '0.0.0.0:8080', services: [a]}]\n", "listeners", "only an ingress gateway"),
    ("mode: terminating-gateway\nservice: {name: t}\ngateway: {bind: 0.0.0.0:8444}\n", "services", "linked services"),
    (
        "mode: terminating-gateway\nservice: {name: t}\ngateway: {bind: 0.0.0.0:8444}\n"
        "services: [{name: db, address: '10.0.0.9:5432', cert_file: c.pem}]\n",
        "services[0].cert_file",
        "go together",
    ),
    (
        "mode: terminating-gateway\nservice: {name: t}\ngateway: {bind: 0.0.0.0:8444}\n"
        "services: [{name: db, ca_file: /nonexistent/ca.pem}]\ncertificates: {builtin: {dir: ca}}\n",
        "services[0]",
        "cannot load the TLS files for db",
    ),
    (S + "services: [{name: db}]\n", "services", "only a terminating gateway"),
    ("service: [web]\n", "service", "mapping"),
    ("service: {name: web\n", "line", "invalid YAML"),
    ("", "file is empty", "service"),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD, ids=[b[1] for b in BAD])
def test_bad_config_gives_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = meshgw("validate", "-c", str(path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if key in ln]
    assert lines, r.stderr
    assert all(ln.startswith(f"{path}: ") for ln in r.stderr.splitlines()), r.stderr
    assert expected in lines[0], r.stderr


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("service: {name: web, port: 0}\ninbound: {bind: x}\nadmin: {bind: 1}\n")
    r = meshgw("validate", "-c", str(path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 4, r.stderr  # port, bind, certificates, admin


@pytest.mark.parametrize(
    ("catalog", "intentions", "needle"),
    [
        ("services: {api: [{address: 127.0.0.1, port: 1, health: sick}]}", None, "services.api[0].health"),
        ("services: {api: [{address: 127.0.0.1}]}", None, "services.api[0].port"),
        (None, "Kind: service-intentions\nName: web\nSources: [{Name: api, Action: alow}]", "Sources[0].Action"),
        (None, "Kind: service-intentions\nName: web\nSources: [{Name: 'api*', Action: allow}]", "Sources[0].Name"),
        (None, "Kind: service-intentions\nName: [web", "invalid YAML"),
    ],
)
def test_bad_control_plane_files_fail_validate(
    workdir: Path, catalog: str | None, intentions: str | None, needle: str
) -> None:
    if catalog is not None:
        (workdir / "catalog.yaml").write_text(catalog)
    if intentions is not None:
        (workdir / "intentions.yaml").write_text(intentions)
    (workdir / "m.yaml").write_text(GOOD)
    r = meshgw("validate", "-c", str(workdir / "m.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr and ("catalog.yaml" in r.stderr or "intentions.yaml" in r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("service: {name: web, port: 80}\ninbound: {bind: nowhere}\n")
    r = meshgw("run", "-c", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "inbound.bind" in r.stderr


def test_run_with_port_in_use_is_one_line(workdir: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        (workdir / "m.yaml").write_text(
            GOOD.replace("127.0.0.1:21000", f"127.0.0.1:{port}") + "admin: {bind: 127.0.0.1:0}\n"
        )
        r = meshgw("run", "-c", str(workdir / "m.yaml"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "inbound.bind: cannot listen on" in r.stderr, r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = meshgw("validate", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read file" in r.stderr and "Traceback" not in r.stderr


def test_durations_and_addresses() -> None:
    assert parse_duration("72h") == 72 * 3600
    assert parse_duration("500ms") == 0.5
    assert parse_duration(0) == 0.0
    with pytest.raises(ValueError, match="has no unit"):
        parse_duration(3)  # issue #15: a bare number is refused (was taken as seconds)
    assert parse_address("[::1]:80").host == "::1"
    with pytest.raises(ValueError):
        parse_duration("-1s")
    with pytest.raises(ValueError):
        parse_address("127.0.0.1")


# ------------------------------------------------------------------ built-in CA and its CLI


def test_ca_init_and_issue(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    r = meshgw("ca", "init", "--dir", str(d), "--trust-domain", "Example.Consul")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    r = meshgw(
        "ca", "issue", "--dir", str(d), "--service", "web", "--dc", "dc2", "--ttl", "1h", "--out", str(tmp_path / "web")
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "web.key").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "web.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.consul/ns/default/dc/dc2/svc/web"
    ]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3600 <= life.total_seconds() <= 3600 + 120  # 1h plus Consul-style backdating
    root = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(root)
    assert isinstance(root.public_key(), type(cert.public_key()))  # both ECDSA P-256
    # a second init refuses to overwrite the root
    r = meshgw("ca", "init", "--dir", str(d))
    assert r.returncode == 2 and "already exists" in r.stderr


def test_ca_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = meshgw("ca", "issue", "--dir", str(tmp_path / "none"), "--service", "web", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "meshgw ca init" in r.stderr and "Traceback" not in r.stderr
    BuiltinCA.init(tmp_path / "ca", "t.consul")
    r = meshgw(
        "ca", "issue", "--dir", str(tmp_path / "ca"), "--service", "web", "--ttl", "soon", "--out", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "duration" in r.stderr


def test_ca_directory_shared_by_concurrent_starters(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        cas = list(pool.map(lambda _: BuiltinCA.init(tmp_path / "ca", "t.consul", exist_ok=True), range(4)))
    assert len({ca.cert_pem for ca in cas}) == 1


# ------------------------------------------------------------------ SPIFFE and SNI (consul.md §5)


def test_spiffe_and_sni_formats() -> None:
    td = "11111111-2222-3333-4444-555555555555.consul"
    assert upstream_sni("db", "dc1", td) == f"db.default.dc1.internal.{td}"
    uri = service_uri(td, "dc1", "web")
    assert uri == f"spiffe://{td}/ns/default/dc/dc1/svc/web"
    sid = parse_service_uri(uri)
    assert sid is not None and (sid.service, sid.datacenter, sid.namespace) == ("web", "dc1", "default")
    part = parse_service_uri(f"spiffe://{td}/ap/finance/ns/default/dc/dc1/svc/web")
    assert part is not None and part.partition == "finance"
    assert parse_service_uri(f"spiffe://{td}/agent/client/dc/dc1/id/x") is None
    assert parse_service_uri("https://example.com/ns/default/dc/dc1/svc/web") is None
    upper = parse_service_uri("spiffe://EXAMPLE.consul/ns/default/dc/dc1/svc/web")
    assert upper is not None and upper.trust_domain == "example.consul"


# ------------------------------------------------------------------ local control-plane files


def test_catalog_file(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(
        '{"services": {"api": [{"address": "10.0.0.1", "port": 21000, "health": "warning", "datacenter": "dc2"}]}}'
    )
    cat = read_catalog(p, "dc1")
    assert cat["api"][0].health == "warning" and cat["api"][0].datacenter == "dc2"
    p.write_text('{"services": {"api": [{"address": "10.0.0.1", "port": 21000,}]}}')
    with pytest.raises(SourceError, match=r"c\.json: line 1 column \d+: invalid JSON"):
        read_catalog(p, "dc1")


def test_intentions_file_takes_one_entry_or_a_list(tmp_path: Path) -> None:
    p = tmp_path / "i.yaml"
    p.write_text("Kind: service-intentions\nName: api\nSources: [{Name: web, Action: allow}]\n")
    assert len(read_intentions(p)) == 1
    p.write_text(
        "- {Kind: service-intentions, Name: api, Sources: [{Name: web, Action: allow}]}\n"
        "- {Kind: service-intentions, Name: db, Sources: [{Name: api, Action: allow}]}\n"
    )
    assert [e.name for e in read_intentions(p)] == ["api", "db"]


def test_config_error_type_carries_every_line() -> None:
    e = ConfigError(["a: b: c", "d: e: f"])
    assert e.problems == ["a: b: c", "d: e: f"] and str(e) == "a: b: c\nd: e: f"


@pytest.mark.slow
def test_demo_runs_and_exits_by_itself(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "0.5", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 answered 200" in r.stdout
    assert "3 refused" in r.stdout
    assert 'reason="intention"} = 3' in r.stdout


def test_demo_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    from gateway.demo import Demo

    ports = list(Demo(Path("unused")).ports.values())
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < 20000 for p in ports)


@pytest.mark.slow
def test_demo_says_why_a_sidecar_exited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import socket

    from gateway.demo import Demo

    demo = Demo(tmp_path)
    with socket.socket() as squatter:  # something else holds web's upstream port
        squatter.bind(("127.0.0.1", demo.ports["web_up"]))
        squatter.listen()
        assert asyncio.run(demo.run(0.1)) == 1
    err = capsys.readouterr().err
    assert "the web sidecar exited; see" in err
    assert f"127.0.0.1:{demo.ports['web_up']}" in err  # the sidecar's own one-line reason, shown with it
