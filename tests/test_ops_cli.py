"""Operator-facing behaviour from issue #15, through the public CLI: `intention check` exit codes and Consul's
HTTP flags, Consul's environment (unix sockets, CAPATH, server name, Nomad's workload-identity token)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from doubles.consul import ConsulDoubleThread

LOCAL_CA = "builtin: {dir: ca, create: true}"
LOCAL = """
datacenter: dc1
service: {name: web, port: 8080}
inbound: {bind: 127.0.0.1:21000}
control_plane:
  type: local
  local: {catalog: catalog.yaml, intentions: intentions.yaml}
certificates:
  type: builtin
  builtin: {dir: ca}
"""


def meshgw(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "VAULT_", "NOMAD_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def local(tmp_path: Path) -> Path:
    (tmp_path / "catalog.yaml").write_text("services: {api: [{address: 127.0.0.1, port: 21001}]}\n")
    (tmp_path / "intentions.yaml").write_text(
        "Kind: service-intentions\nName: api\nSources: [{Name: web, Action: allow}, {Name: '*', Action: deny}]\n"
    )
    (tmp_path / "m.yaml").write_text(LOCAL)
    return tmp_path / "m.yaml"


@pytest.fixture
def consul() -> Iterator[ConsulDoubleThread]:
    with ConsulDoubleThread(acl_token="s3cret") as c:
        yield c


# --------------------------------------------------------------------------- intention check exit codes


def test_intention_check_exits_like_consul(local: Path) -> None:
    # C:command/intention/check/check.go: 0 allowed, 1 denied, 2 on any error (usage errors included).
    r = meshgw("intention", "check", "-c", str(local), "web", "api")
    assert r.returncode == 0 and r.stdout.startswith("Allowed"), (r.stdout, r.stderr)
    r = meshgw("intention", "check", "-c", str(local), "db", "api")
    assert r.returncode == 1 and r.stdout.startswith("Denied"), (r.stdout, r.stderr)
    r = meshgw("intention", "check", "-c", str(local), "web")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    r = meshgw("intention", "check", "-c", str(local), "web", "api", "extra")
    assert r.returncode == 2 and "unrecognized arguments: extra" in r.stderr, r.stderr
    r = meshgw("intention", "check", "-c", str(local), "--bogus", "web", "api")
    assert r.returncode == 2, r.stderr
    r = meshgw("intention", "check", "-c", str(local.with_name("missing.yaml")), "web", "api")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    r = meshgw("intention", "check", "-http-addr", "127.0.0.1:1", "web", "api")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    # The other `consul intention` commands exit 1 on any error, flag parsing included.
    r = meshgw("intention", "create", "-bogus", "web", "api")
    assert r.returncode == 1, r.stderr
    r = meshgw("intention", "get", "-c", str(local), "web", "api", "extra")
    assert r.returncode == 1, r.stderr


def test_intention_flags_operators_script_with(tmp_path: Path, consul: ConsulDoubleThread) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    sock = str(tmp_path / "consul.sock")
    consul.listen_unix(sock)
    r = meshgw("intention", "create", "-http-addr", consul.address, "-token-file", str(token), "web", "api")
    assert r.returncode == 0, r.stderr
    r = meshgw(
        "intention",
        "check",
        "-http-addr",
        f"unix://{sock}",
        "-token-file",
        str(token),
        "-namespace",
        "default",
        "web",
        "api",
    )
    assert r.returncode == 0 and "Allowed" in r.stdout, (r.stdout, r.stderr)
    assert any(q.get("ns") == "default" for _, _, q, _ in consul.requests)
    # Without the token the double answers 403: an error, exit 2 in one line.
    r = meshgw("intention", "check", "-http-addr", consul.address, "web", "api")
    assert r.returncode == 2 and "403" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # TLS flags are read (a missing CA directory is a one-line error, not ignored).
    r = meshgw(
        "intention",
        "check",
        "-http-addr",
        "https://127.0.0.1:1",
        "-ca-path",
        str(tmp_path / "nope"),
        "-client-cert",
        str(tmp_path / "c.pem"),
        "-client-key",
        str(tmp_path / "k.pem"),
        "-tls-server-name",
        "consul.example:8501",
        "web",
        "api",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- Consul's environment


def test_consul_env_unix_socket_and_nomad_workload_identity_token(tmp_path: Path, consul: ConsulDoubleThread) -> None:
    sock = str(tmp_path / "consul.sock")
    consul.listen_unix(sock)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "consul_token").write_text("s3cret\n")
    # Nomad bridge mode: CONSUL_HTTP_ADDR=unix://…; Nomad 1.7+ WI: secrets/consul_token (and CONSUL_TOKEN).
    env = {"CONSUL_HTTP_ADDR": f"unix://{sock}", "NOMAD_SECRETS_DIR": str(secrets), "CONSUL_TOKEN": "stale"}
    r = meshgw("intention", "create", "-deny", "web", "api", env=env)
    assert r.returncode == 0, r.stderr
    r = meshgw("intention", "check", "web", "api", env={"CONSUL_HTTP_ADDR": consul.address, "CONSUL_TOKEN": "s3cret"})
    assert r.returncode == 1 and "Denied" in r.stdout, (r.stdout, r.stderr)
    r = meshgw("intention", "check", "web", "api", env={"CONSUL_HTTP_ADDR": "ftp://x:1"})
    assert r.returncode == 2 and "unknown protocol scheme 'ftp'" in r.stderr, r.stderr


def test_consul_tls_env_capath_and_server_name_are_read(tmp_path: Path) -> None:
    from gateway.config import load_config

    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    cfg_text = LOCAL.replace("type: local\n", "type: consul\n").replace(
        "  local: {catalog: catalog.yaml, intentions: intentions.yaml}\n", ""
    )
    (tmp_path / "m.yaml").write_text(cfg_text)
    (tmp_path / "cas").mkdir()
    cfg = load_config(
        tmp_path / "m.yaml",
        env={
            "CONSUL_HTTP_ADDR": "https://10.0.0.1:8501",
            "CONSUL_CAPATH": str(tmp_path / "cas"),
            "CONSUL_TLS_SERVER_NAME": "server.dc1.consul:8501",
        },
    )
    c = cfg.control_plane.consul
    assert c is not None and c.ca_path == tmp_path / "cas" and c.tls_server_name == "server.dc1.consul"


# --------------------------------------------------------------------------- durations, log levels, JSON logs


def test_go_durations_accepted_and_bare_numbers_refused(local: Path) -> None:
    text = (
        LOCAL.replace("  local: {", "  local: {poll_interval: 1.5s, ").replace(
            "builtin: {dir: ca}", "builtin: {dir: ca, leaf_ttl: 71h59m60s, create: true}"
        )
        + "drain_timeout: 1m30s\n"
    )
    local.write_text(text)
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 0, r.stderr
    from gateway.config import load_config

    cfg = load_config(local)
    assert cfg.drain_timeout == 90 and cfg.control_plane.local.poll_interval == 1.5
    assert cfg.certificates.builtin is not None and cfg.certificates.builtin.leaf_ttl == 72 * 3600
    local.write_text(text.replace("drain_timeout: 1m30s", "drain_timeout: 500"))
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{local}: drain_timeout: 500 has no unit (expected a duration such as 500ms, 30s, 1m30s or 72h)" in r.stderr
    local.write_text(text.replace("drain_timeout: 1m30s", "drain_timeout: '15'"))
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "drain_timeout: '15' has no unit" in r.stderr, r.stderr
    local.write_text(text.replace("drain_timeout: 1m30s", "drain_timeout: 1m30"))
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "drain_timeout: '1m30' is not a duration" in r.stderr, r.stderr


def test_hashicorp_log_levels_and_json_logs(local: Path) -> None:
    from gateway.config import load_config

    for level in ("warn", "WARN", "trace", "warning", "error"):
        local.write_text(LOCAL + f"log_level: {level}\n")
        assert load_config(local).log_level == level.lower()
    local.write_text(LOCAL + "log_level: loud\n")
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "log_level: 'loud' is not a log level (expected one of: trace, debug, info, warn" in (
        r.stderr
    ), r.stderr
    local.write_text(LOCAL + "log_json: yes please\n")
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "log_json:" in r.stderr, r.stderr


def test_json_log_lines_have_hclog_keys() -> None:
    import json
    import logging

    from gateway.logs import JSONFormatter

    rec = logging.LogRecord("meshgw.consul", logging.WARNING, __file__, 1, "consul %s", ("down",), None)
    line = json.loads(JSONFormatter().format(rec))
    assert line["@level"] == "warn" and line["@module"] == "meshgw.consul" and line["@message"] == "consul down"
    assert line["@timestamp"].endswith("Z")


# --------------------------------------------------------------------------- version


def test_version_flag_and_build_info() -> None:
    from gateway.version import VERSION

    for flag in ("--version", "-version"):
        r = meshgw(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"meshgw v{VERSION}", (r.stdout, r.stderr)
    assert VERSION != "0.0.0+unknown"  # installed: the wheel's metadata answers
    from prometheus_client import generate_latest

    from gateway import metrics

    text = generate_latest(metrics.REGISTRY).decode()
    assert 'meshgw_build_info{python_version="' in text and f'version="{VERSION}"' in text
    assert "process_resident_memory_bytes" in text and "process_start_time_seconds" in text
    assert "_created" not in text


# --------------------------------------------------------------------------- CA directory safety, validate files


def test_missing_ca_dir_is_refused_unless_creation_is_asked(local: Path) -> None:
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    ca = local.parent / "ca"
    assert f"certificates.builtin.dir: {ca}: no CA there (expected ca.crt and ca.key: run `meshgw ca init" in r.stderr
    r = meshgw("run", "-c", str(local))
    assert r.returncode == 2 and "no CA there" in r.stderr and not ca.exists(), r.stderr
    local.write_text(LOCAL.replace("builtin: {dir: ca}", "builtin: {dir: ca, create: true}"))
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 0, r.stderr
    local.write_text(LOCAL)
    assert meshgw("ca", "init", "--dir", str(ca)).returncode == 0
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 0, r.stderr


def test_validate_checks_every_file_the_config_names(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        LOCAL.replace(
            "control_plane:\n  type: local\n  local: {catalog: catalog.yaml, intentions: intentions.yaml}\n",
            "control_plane:\n  type: consul\n  consul: {token_file: no-token, ca_file: no-ca.pem, ca_path: nodir}\n",
        ).replace(
            "certificates:\n  type: builtin\n  builtin: {dir: ca}\n",
            "certificates:\n  type: consul\n",
        )
    )
    r = meshgw("validate", "-c", str(tmp_path / "m.yaml"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert any("control_plane.consul.token_file:" in x and "No such file or directory" in x for x in lines), lines
    assert any("control_plane.consul.ca_file:" in x for x in lines), lines
    assert any("control_plane.consul.ca_path:" in x and "not a directory" in x for x in lines), lines
    assert "Traceback" not in r.stderr


def test_vault_env_capath_client_cert_skip_verify_agent_addr(tmp_path: Path) -> None:
    from connect.vault import VaultAPI
    from gateway.config import load_config

    (tmp_path / "m.yaml").write_text(
        LOCAL.replace(
            "certificates:\n  type: builtin\n  builtin: {dir: ca}\n",
            "certificates:\n  type: vault\n  vault: {role: r, trust_domain: example.consul}\n",
        )
    )
    env = {
        "VAULT_ADDR": "https://vault:8200",
        "VAULT_AGENT_ADDR": "http://127.0.0.1:8100",
        "VAULT_TOKEN": "t",
        "VAULT_CAPATH": str(tmp_path),
        "VAULT_CLIENT_CERT": "c.pem",
        "VAULT_CLIENT_KEY": "k.pem",
        "VAULT_SKIP_VERIFY": "true",
    }
    v = load_config(tmp_path / "m.yaml", env=env).certificates.vault
    assert v is not None and v.address == "http://127.0.0.1:8100"
    assert v.ca_path == tmp_path and v.cert_file == tmp_path / "c.pem" and v.key_file == tmp_path / "k.pem"
    assert v.verify is False
    api = VaultAPI(v)
    assert api.client.adapter._kwargs.get("verify") is False
    v2 = load_config(tmp_path / "m.yaml", env={**env, "VAULT_SKIP_VERIFY": "false"}).certificates.vault
    assert v2 is not None and VaultAPI(v2)._verify() == str(tmp_path)
    assert VaultAPI(v2).client.adapter._kwargs.get("cert") == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


# --------------------------------------------------------------------------- HCL files

HCL_INTENTIONS = """
Kind = "service-intentions"
Name = "api"
Meta { owner = "team-a" }
Sources = [
  {
    Name   = "web"
    Action = "allow"
  },
  {
    Name = "admin"
    Permissions = [
      {
        Action = "allow"
        HTTP = { PathPrefix = "/admin", Methods = ["GET"] }
      }
    ]
  },
  {
    Name   = "*"
    Action = "deny"
  },
]
"""


def test_hcl_intention_files(local: Path) -> None:
    hcl = local.parent / "intentions.hcl"
    hcl.write_text(HCL_INTENTIONS)
    local.write_text(LOCAL.replace("intentions.yaml", "intentions.hcl").replace("builtin: {dir: ca}", LOCAL_CA))
    assert meshgw("validate", "-c", str(local)).returncode == 0
    r = meshgw("intention", "check", "-c", str(local), "web", "api")
    assert r.returncode == 0, (r.stdout, r.stderr)
    r = meshgw("intention", "check", "-c", str(local), "admin", "api", "--method", "GET", "--path", "/admin/x")
    assert r.returncode == 0 and "permission[0]" in r.stdout, (r.stdout, r.stderr)
    r = meshgw("intention", "check", "-c", str(local), "db", "api")
    assert r.returncode == 1, (r.stdout, r.stderr)
    hcl.write_text('Kind = "service-intentions"\nName = \n')
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{hcl}: line 2 column" in r.stderr and "invalid HCL" in r.stderr and "YAML" not in r.stderr, r.stderr
    # `intention create -file` takes an HCL entry too (into the YAML intentions file of the local control plane).
    local.write_text(LOCAL)
    entry = local.parent / "db.hcl"
    entry.write_text('Kind = "service-intentions"\nName = "db"\nSources = [{ Name = "web", Action = "allow" }]\n')
    r = meshgw("intention", "create", "-c", str(local), "-file", str(entry))
    assert r.returncode == 0, r.stderr
    assert meshgw("intention", "check", "-c", str(local), "web", "db").returncode == 0


def test_hcl_config_entry_files_in_meshgw_yaml(local: Path) -> None:
    (local.parent / "router.hcl").write_text(
        'Kind = "service-router"\nName = "api"\n'
        'Routes = [{ Match = { HTTP = { PathPrefix = "/v2" } }, Destination = { Service = "api-v2" } }]\n'
    )
    (local.parent / "resolver.json").write_text(
        '{"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "1m30s"}'
    )
    local.write_text(LOCAL.replace("builtin: {dir: ca}", LOCAL_CA) + "config_entries: [router.hcl, resolver.json]\n")
    from gateway.config import load_config

    entries = load_config(local).config_entries
    assert [e.kind for e in entries] == ["service-router", "service-resolver"]
    local.write_text(LOCAL + "config_entries: [missing.hcl]\n")
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "config_entries[0]:" in r.stderr and "cannot read" in r.stderr, r.stderr


# --------------------------------------------------------------------------- Consul semantics


def test_agent_default_allow_follows_consul() -> None:
    from connect.consul import agent_default_allow

    assert agent_default_allow({"DebugConfig": {"ACLsEnabled": False}}) is True
    on = {"ACLsEnabled": True, "ACLResolverSettings": {"ACLDefaultPolicy": "deny"}}
    assert agent_default_allow({"DebugConfig": on}) is False
    assert agent_default_allow({"DebugConfig": {**on, "ACLResolverSettings": {"ACLDefaultPolicy": "allow"}}}) is True
    assert agent_default_allow({"DebugConfig": {"ACLsEnabled": True, "ACLDefaultPolicy": "deny"}}) is False  # older
    assert agent_default_allow({"DebugConfig": {"ACLsEnabled": False, "DefaultIntentionPolicy": "deny"}}) is False


def test_intention_default_comes_from_the_agent_unless_the_config_sets_it(tmp_path: Path) -> None:
    with ConsulDoubleThread() as open_consul:  # ACLs off: Consul allows when nothing matches
        env = {"CONSUL_HTTP_ADDR": open_consul.address}
        r = meshgw("intention", "check", "web", "api", env=env)
        assert r.returncode == 0 and "Allowed" in r.stdout, (r.stdout, r.stderr)
        cfg = tmp_path / "m.yaml"
        consul_cfg = LOCAL.replace(
            "  type: local\n  local: {catalog: catalog.yaml, intentions: intentions.yaml}\n",
            f"  type: consul\n  consul: {{address: '{open_consul.address}'}}\n",
        )
        cfg.write_text(consul_cfg)
        assert meshgw("intention", "check", "-c", str(cfg), "web", "api").returncode == 0
        cfg.write_text(consul_cfg.replace("  type: consul\n", "  type: consul\n  default_intention_policy: deny\n"))
        assert meshgw("intention", "check", "-c", str(cfg), "web", "api").returncode == 1
    with ConsulDoubleThread(acl_token="t", default_allow=False) as closed:  # ACLs on, default_policy deny
        r = meshgw("intention", "check", "-token", "t", "web", "api", env={"CONSUL_HTTP_ADDR": closed.address})
        assert r.returncode == 1 and "Denied" in r.stdout, (r.stdout, r.stderr)


def test_sidecar_snapshot_takes_the_agent_default(tmp_path: Path) -> None:
    import asyncio

    from connect.consul import ConsulControlPlane
    from gateway.config import load_config
    from gateway.snapshot import SnapshotBuilder

    with ConsulDoubleThread(acl_token="t", default_allow=True) as consul:
        cfg_path = tmp_path / "m.yaml"
        cfg_path.write_text(
            "service: {name: api, port: 8080}\ninbound: {bind: 127.0.0.1:21000}\n"
            f"control_plane: {{type: consul, consul: {{address: '{consul.address}', token: t, register: false}}}}\n"
            "certificates: {type: consul}\n"
        )
        cfg = load_config(cfg_path, env={})
        assert cfg.control_plane.default_intention_policy is None

        async def main() -> bool:
            builder = SnapshotBuilder(cfg)
            assert builder.default_allow() is False  # fail closed until Consul answered
            cp = ConsulControlPlane(cfg, builder, provide_certs=True, ready=lambda: (True, ""))
            await cp.start()
            try:
                for _ in range(200):
                    if "agent/self" in cp.health.answered:
                        break
                    await asyncio.sleep(0.05)
                return builder.default_allow() and builder.holder.current.intentions.default_allow
            finally:
                await cp.stop()

        assert asyncio.run(main()) is True


def test_warning_instances_are_kept_weighted_like_consul(tmp_path: Path) -> None:
    import asyncio

    import consul as pyconsul

    from connect.consul import ConsulControlPlane
    from gateway.config import load_config
    from gateway.snapshot import SnapshotBuilder

    with ConsulDoubleThread() as d:
        c = pyconsul.Consul(host="127.0.0.1", port=d.port)
        for n, weights in enumerate(({"passing": 5, "warning": 2}, {"passing": 5, "warning": 2}, None, None)):
            c.agent.service.register(
                "api-sidecar-proxy",
                service_id=f"api-{n}-sidecar-proxy",
                address="127.0.0.1",
                port=21000 + n,
                kind="connect-proxy",
                proxy={"DestinationServiceName": "api", "LocalServicePort": 8080},
                check=pyconsul.Check.ttl("60s"),
                weights=weights,
            )
        d.set_check_status("api-0-sidecar-proxy", "passing")
        d.set_check_status("api-1-sidecar-proxy", "warning")  # kept, weight Warning=2
        d.set_check_status("api-2-sidecar-proxy", "critical")  # dropped
        d.set_check_status("api-3-sidecar-proxy", "warning")  # kept, default weight 1
        (tmp_path / "m.yaml").write_text(
            "service: {name: web, port: 8080}\nupstreams: [{service: api, bind: 127.0.0.1:9191}]\n"
            f"control_plane: {{type: consul, consul: {{address: '{d.address}', register: false}}}}\n"
            "certificates: {type: consul}\n"
        )
        cfg = load_config(tmp_path / "m.yaml", env={})

        async def main() -> dict[int, tuple[str, int]]:
            builder = SnapshotBuilder(cfg)
            cp = ConsulControlPlane(cfg, builder, provide_certs=True, ready=lambda: (True, ""))
            await cp.start()
            try:
                for _ in range(200):
                    (view,) = builder.holder.current.upstreams.values()
                    if view.endpoints:
                        break
                    await asyncio.sleep(0.05)
                return {ep.port: (ep.health, ep.weight) for ep in view.endpoints}
            finally:
                await cp.stop()

        assert asyncio.run(main()) == {21000: ("passing", 5), 21001: ("warning", 2), 21003: ("warning", 1)}


def test_sidecar_takes_its_upstreams_from_its_consul_registration(tmp_path: Path) -> None:
    import json
    import signal
    import socket
    import urllib.request

    import consul as pyconsul
    from mesh import free_port, wait_for

    with ConsulDoubleThread() as d:
        c = pyconsul.Consul(host="127.0.0.1", port=d.port)
        up_port, admin = free_port(), free_port()
        # What Nomad (or a service definition) registers: the sidecar with its upstreams.
        c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=8080)
        c.agent.service.register(
            "web-sidecar-proxy",
            service_id="web-1-sidecar-proxy",
            port=21000,
            kind="connect-proxy",
            proxy={
                "DestinationServiceName": "web",
                "DestinationServiceID": "web-1",
                "LocalServicePort": 8080,
                "Upstreams": [{"DestinationName": "api", "LocalBindPort": up_port}],
            },
        )
        (tmp_path / "web.yaml").write_text(
            "service: {name: web, port: 8080}\n"
            "control_plane: {type: consul, consul: "
            f"{{address: '{d.address}', register: false, sidecar_for: web-1}}}}\n"
            f"certificates: {{type: consul}}\nadmin: {{bind: '127.0.0.1:{admin}'}}\ndrain_timeout: 1s\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        assert meshgw("validate", "-c", str(tmp_path / "web.yaml"), env=env).returncode == 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp_path / "web.yaml")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def upstreams() -> list[dict[str, object]] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config", timeout=5) as r:
                        return json.load(r)["config"]["upstreams"] or None
                except OSError:
                    return None

            ups = wait_for(upstreams, 30, "upstreams from the registration")
            assert [(u["service"], u["bind"]) for u in ups] == [("api", f"127.0.0.1:{up_port}")]

            def listening() -> bool:
                try:
                    with socket.create_connection(("127.0.0.1", up_port), timeout=5):
                        return True
                except OSError:
                    return False

            wait_for(listening, 15, "the upstream listener opens")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_sidecar_for_is_a_sidecar_setting_without_yaml_upstreams(local: Path) -> None:
    text = LOCAL.replace(
        "  type: local\n  local: {catalog: catalog.yaml, intentions: intentions.yaml}\n",
        "  type: consul\n  consul: {sidecar_for: web}\n",
    ).replace("builtin: {dir: ca}", LOCAL_CA)
    local.write_text(text + "upstreams: [{service: api, bind: 127.0.0.1:9191}]\n")
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and "control_plane.consul.sidecar_for: upstreams come from the registration" in r.stderr


def test_each_consul_query_is_defined_once_for_sidecar_and_templates() -> None:
    import re

    from connect.consul import endpoints_from_health
    from gateway.render_state import instances_from_health

    root = Path(__file__).resolve().parents[1]
    for rel in ("connect/consul.py", "gateway/render_state.py"):
        code = "\n".join(
            line for line in (root / rel).read_text().splitlines() if not line.lstrip().startswith(("#", '"""'))
        )
        hits = re.findall(r'"/v1/(?:health|config|catalog/services|agent/connect)[^"]*"', code)
        assert not hits, f"{rel} spells Consul queries itself (use connect/consul_queries.py): {hits}"
    entries = [
        {
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
            "Service": {"ID": "a", "Service": "api", "Address": "10.0.0.5", "Port": 21000,
                        "Weights": {"Passing": 3, "Warning": 1}},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}],
        },
        {
            "Node": {"Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1"},
            "Service": {"ID": "b", "Service": "api", "Port": 21000},
            "Checks": [{"Status": "critical"}],
        },
    ]  # fmt: skip
    eps = {(e.address, e.port): (e.health, e.weight) for e in endpoints_from_health(entries, "dc1", "dc1")}
    ins = {(i.address, i.port): (i.health, i.weight) for i in instances_from_health(entries, "dc1", connect=False)}
    assert eps == ins == {("10.0.0.5", 21000): ("warning", 1), ("10.0.0.2", 21000): ("critical", 1)}


def test_validate_names_a_missing_template_source(local: Path) -> None:
    local.write_text(
        LOCAL.replace("builtin: {dir: ca}", LOCAL_CA) + "templates: [{source: nope.j2, destination: out.txt}]\n"
    )
    r = meshgw("validate", "-c", str(local))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{local}: templates: source: {local.parent / 'nope.j2'}: No such file or directory" in r.stderr
