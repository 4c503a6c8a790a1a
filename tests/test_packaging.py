"""What ships around meshgw: Nomad jobs, the systemd unit, the Vagrant lab and its provisioning scripts.

Nomad jobs are parsed with python-hcl2 (structure only: it is more lenient than Go HCL2, vault-nomad.md §4.5)
and checked against the config meshgw expects: the meshgw.yaml each job's `template` block renders (Nomad's
Go-template ``env`` calls filled in from the job's own ports and meta) goes through meshgw's real config
parser, and its ports, service names and upstreams must agree with the group's network and Connect blocks.
Tools that may be missing (systemd-analyze, ruby, shellcheck) skip with the reason; bash is always there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
NOMAD_JOBS = sorted((ROOT / "nomad").glob("*.nomad.hcl"))
LAB_SCRIPTS = sorted((ROOT / "scripts" / "lab").glob("*.sh"))
SHELL_SCRIPTS = [*LAB_SCRIPTS, ROOT / "packaging" / "install.sh"]
TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


# --------------------------------------------------------------------------- HCL helpers


def load_hcl(text: str) -> dict[str, Any]:
    opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False)
    return hcl2.loads(text, serialization_options=opts)  # type: ignore[no-any-return]


def labelled(blocks: list[dict[str, Any]] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """`group "x" {...}` blocks come as [{"x": {...}}, ...]."""
    for block in blocks or []:
        yield from block.items()


def one(blocks: list[dict[str, Any]] | None, what: str) -> dict[str, Any]:
    assert blocks and len(blocks) == 1, f"expected exactly one {what} block, got {blocks!r}"
    return blocks[0]


class Job:
    def __init__(self, path: Path, text: str | None = None, overrides: dict[str, Any] | None = None):
        self.path = path
        self.doc = load_hcl(text if text is not None else path.read_text())
        self.vars: dict[str, Any] = {}
        for name, spec in labelled(self.doc.get("variable")):
            if "default" in spec:
                self.vars[name] = spec["default"]
        self.vars["trust_domain"] = TRUST_DOMAIN
        self.vars.update(overrides or {})
        ((self.name, self.body),) = one(self.doc["job"], "job").items()

    def value(self, v: Any) -> Any:
        """Resolve `var.x` references (python-hcl2 leaves them as "${var.x}")."""
        if isinstance(v, str):
            m = re.fullmatch(r"\$\{var\.(\w+)\}", v)
            if m:
                return self.vars[m.group(1)]
            return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(self.vars[m.group(1)]), v)
        return v

    @property
    def meta(self) -> dict[str, str]:
        return {k: str(self.value(v)) for k, v in one(self.body.get("meta"), "meta").items()}

    def groups(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return labelled(self.body.get("group"))


def ports(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    network = one(group.get("network"), "network")  # Connect needs exactly one network (vault-nomad.md §4.2)
    return dict(labelled(network.get("port")))


def nomad_env(job: Job, group: dict[str, Any]) -> dict[str, str]:
    """What Nomad's task environment would hold for this group (vault-nomad.md §4.4), as far as jobs read it."""
    env = {"NOMAD_DC": "dc1", "NOMAD_ALLOC_ID": "0f6a2c1e", "VAULT_TOKEN": "s.lab"}
    for label, spec in ports(group).items():
        inside = spec.get("to") or spec.get("static") or 31000
        env[f"NOMAD_PORT_{label}"] = str(inside)
        env[f"NOMAD_HOST_PORT_{label}"] = str(spec.get("static") or 31000)
        env[f"NOMAD_IP_{label}"] = "192.168.56.11"
    for k, v in job.meta.items():
        env[f"NOMAD_META_{k}"] = v
    return env


GO_ENV = re.compile(r'\{\{\s*env\s+"([^"]+)"\s*\}\}')


def render_nomad_template(job: Job, data: str, env: dict[str, str]) -> str:
    # python-hcl2 keeps heredoc quotes escaped; HCL interpolation (${var.x}) happens before Nomad's Go template.
    data = job.value(data.replace('\\"', '"'))
    out = GO_ENV.sub(lambda m: env[m.group(1)], data)
    assert "{{" not in out, f"unhandled Go template in {job.path.name}: {out}"
    return out


def meshgw_task(group: dict[str, Any], kind_prefix: str) -> tuple[str, dict[str, Any]]:
    tasks = [(n, t) for n, t in labelled(group.get("task")) if str(t.get("kind", "")).startswith(kind_prefix)]
    assert len(tasks) == 1, f"expected one task of kind {kind_prefix}<service>, got {[n for n, _ in tasks]}"
    return tasks[0]


def task_config_yaml(job: Job, group: dict[str, Any], task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The meshgw.yaml the task's template block renders, and the task's `meshgw run -c` path agrees with it."""
    config = one(task.get("config"), "config")
    args = [job.value(a) for a in config["args"]]
    assert args[:2] == ["run", "-c"], args
    templates = {t["destination"]: t for t in task.get("template", [])}
    assert args[2] in templates, f"meshgw reads {args[2]}, but templates write {sorted(templates)}"
    tpl = templates[args[2]]
    assert tpl.get("change_mode") == "signal" and tpl.get("change_signal") == "SIGHUP"  # SIGHUP: meshgw reloads
    text = render_nomad_template(job, tpl["data"], nomad_env(job, group))
    return text, yaml.safe_load(text)


def check_vault_access(task: dict[str, Any]) -> None:
    vault = one(task.get("vault"), "vault")
    assert vault.get("role"), "Nomad 1.10+ logs in with a role, not policies (vault-nomad.md §0.10)"
    assert "policies" not in vault
    # Issue #15 adds the consul_default identity, so the task has two identity blocks now.
    identities = {i["name"]: i for i in task.get("identity", [])}
    assert "vault.io" in identities["vault_default"]["aud"]
    env = one(task.get("env"), "env")
    assert "VAULT_ADDR" in env and env["CONSUL_HTTP_ADDR"].startswith("${attr.unique.network.ip-address}")


def check_sidecar_groups(job: Job) -> int:
    """Every Connect group: meshgw's config parsed by meshgw agrees with the group's ports and upstreams."""
    checked = 0
    for gname, group in job.groups():
        assert gname == gname.lower(), "Nomad wants lower-case group names"
        network = one(group.get("network"), "network")
        service = one(group.get("service"), "service")
        connect = one(service.get("connect"), "connect")
        if "sidecar_service" not in connect:
            continue
        svc = service["name"]
        assert network["mode"] == "bridge", "a Connect sidecar group needs bridge networking (§4.2)"
        sidecar = one(connect["sidecar_service"], "sidecar_service")
        proxy = one(sidecar.get("proxy"), "proxy")
        _, task = meshgw_task(group, "connect-proxy:")
        assert task["kind"] == f"connect-proxy:{svc}", "the kind names the service, or Nomad injects Envoy"
        assert one(task.get("lifecycle"), "lifecycle") == {"hook": "prestart", "sidecar": True}
        check_vault_access(task)

        text, _ = task_config_yaml(job, group, task)
        cfg = parse_config(yaml.safe_load(text), job.path, env={"VAULT_TOKEN": "s.lab"})
        assert cfg.mode == "sidecar" and cfg.service.name == svc
        assert cfg.service.port == proxy["local_service_port"] == int(service["port"])
        label = sidecar["port"]
        assert label in ports(group), f"sidecar_service.port names {label!r}, not a port of the group"
        assert cfg.inbound is not None and cfg.inbound.bind.port == ports(group)[label]["to"]
        ups = {(u["destination_name"], u["local_bind_port"]) for u in proxy.get("upstreams", [])}
        assert {(u.service, u.bind.port) for u in cfg.upstreams} == ups
        assert all(u.bind.host == "127.0.0.1" for u in cfg.upstreams)
        # Nomad registers the service and its sidecar in Consul: meshgw must not do it a second time.
        assert cfg.control_plane.type == "consul" and cfg.control_plane.consul is not None
        assert not cfg.control_plane.consul.register
        assert cfg.certificates.type == "vault" and cfg.certificates.vault is not None
        assert cfg.certificates.vault.trust_domain == TRUST_DOMAIN
        assert cfg.certificates.vault.mount == job.vars["pki_mount"]
        assert cfg.certificates.vault.role == job.vars["pki_role"]
        checked += 1
    return checked


# --------------------------------------------------------------------------- Nomad jobs


def test_every_nomad_job_parses() -> None:
    assert {p.name for p in NOMAD_JOBS} >= {
        "mesh-demo.nomad.hcl",
        "mesh-gateway.nomad.hcl",
        "ingress-gateway.nomad.hcl",
    }
    for path in NOMAD_JOBS:
        job = Job(path)
        assert job.body["type"] in ("service", "system", "batch", "sysbatch")
        assert job.value(job.body["datacenters"]) == ["dc1"]
        for _, group in job.groups():
            for _, task in labelled(group.get("task")):
                assert task["driver"] in ("exec", "raw_exec", "docker")
                assert one(task.get("resources"), "resources")["memory"] > 0


def test_jobs_fetch_meshgw_by_artifact_give_it_a_consul_identity_and_time_to_drain() -> None:
    from gateway.config import parse_duration

    checked = 0
    for path in NOMAD_JOBS:
        job = Job(path)
        assert "/usr/local/meshgw" not in path.read_text(), f"{path.name}: meshgw must not be preinstalled"
        for _, group in job.groups():
            tasks = dict(labelled(group.get("task")))
            mesh = [(n, t) for n, t in tasks.items() if str(t.get("kind", "")).startswith("connect-")]
            if not mesh:
                continue
            ((_, task),) = mesh
            installers = [t for t in tasks.values() if t.get("artifact")]
            assert len(installers) == 1, f"{path.name}: expected one task fetching meshgw by artifact"
            inst = installers[0]
            artifact = one(inst["artifact"], "artifact")
            assert artifact["source"] == "${var.meshgw_wheel}" and str(job.vars["meshgw_wheel"]).startswith("http")
            assert one(inst.get("lifecycle"), "lifecycle") == {"hook": "prestart", "sidecar": False}
            script = one(inst.get("config"), "config")["args"][-1]
            assert "pip" in script and "local/wheels" in script and "NOMAD_ALLOC_DIR/meshgw" in script
            config = one(task.get("config"), "config")
            assert config["command"] == "${NOMAD_ALLOC_DIR}/meshgw/bin/meshgw"
            identities = {i["name"]: i for i in task.get("identity", [])}
            assert "consul.io" in identities["consul_default"]["aud"], f"{path.name}: no consul_default identity"
            _, cfg_yaml = task_config_yaml(job, group, task)
            cfg = parse_config(cfg_yaml, job.path, env={"VAULT_TOKEN": "s.lab"})
            kill = parse_duration(task["kill_timeout"])
            assert kill > cfg.drain_timeout, f"{path.name}: kill_timeout {kill}s must exceed drain {cfg.drain_timeout}s"
            checked += 1
    assert checked >= 4  # api, web, the mesh gateway, the ingress gateway


def test_service_job_sidecars_agree_with_meshgw_config() -> None:
    job = Job(ROOT / "nomad" / "mesh-demo.nomad.hcl")
    assert check_sidecar_groups(job) == 2  # api and web
    groups = dict(job.groups())
    # web reaches api through the upstream Nomad exports for it.
    app = dict(labelled(groups["web"]["task"]))["app"]
    assert "NOMAD_UPSTREAM_ADDR_api" in " ".join(one(app["config"], "config")["args"])


def test_mesh_gateway_job() -> None:
    path = ROOT / "nomad" / "mesh-gateway.nomad.hcl"
    job = Job(path)
    assert job.body["type"] == "system"
    ((_, group),) = job.groups()
    service = one(group["service"], "service")
    gateway = one(one(service["connect"], "connect")["gateway"], "gateway")
    assert set(gateway) == {"mesh"}  # exactly one of ingress, terminating, mesh (§4.1)
    assert service["port"] in ports(group) and ports(group)[service["port"]]["static"] == 8443
    _, task = meshgw_task(group, "connect-mesh:")
    assert task["kind"] == f"connect-mesh:{service['name']}"
    check_vault_access(task)
    _, config = task_config_yaml(job, group, task)
    assert config["mode"] == "mesh-gateway" and config["service"]["name"] == service["name"]
    assert config["gateway"]["bind"] == "0.0.0.0:8443"
    cfg = parse_config(config, path, env={"VAULT_TOKEN": "s.lab"})
    assert cfg.mode == "mesh-gateway" and cfg.gateway is not None and cfg.gateway.bind.port == 8443
    assert cfg.control_plane.type == "consul" and cfg.service.name == "mesh-gateway"


def test_ingress_gateway_job() -> None:
    path = ROOT / "nomad" / "ingress-gateway.nomad.hcl"
    job = Job(path)
    ((_, group),) = job.groups()
    service = one(group["service"], "service")
    ingress = one(one(one(service["connect"], "connect")["gateway"], "gateway")["ingress"], "ingress")
    listeners = {(li["port"], li["protocol"], tuple(s["name"] for s in li["service"])) for li in ingress["listener"]}
    _, task = meshgw_task(group, "connect-ingress:")
    assert task["kind"] == f"connect-ingress:{service['name']}"
    check_vault_access(task)
    _, config = task_config_yaml(job, group, task)
    assert config["mode"] == "ingress-gateway"
    cfg = parse_config(config, path, env={"VAULT_TOKEN": "s.lab"})
    assert [(u.service, u.protocol) for u in cfg.upstreams] == [(s, p) for _, p, (s,) in sorted(listeners)]
    mine = {(int(li["bind"].rsplit(":", 1)[1]), li["protocol"], tuple(li["services"])) for li in config["listeners"]}
    assert mine == listeners
    # Every listener port is a port of the group, reachable from outside (static).
    assert {p for p, _, _ in listeners} <= {spec["to"] for spec in ports(group).values() if spec.get("static")}


def test_nomad_job_template_renders_a_job_that_agrees_with_the_config(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(
        textwrap.dedent(
            """
            datacenter: dc1
            service: {name: web, port: 8080, protocol: http}
            inbound: {bind: 0.0.0.0:21500}
            upstreams:
              - {service: api, bind: 127.0.0.1:9191}
              - {service: billing, bind: 127.0.0.1:9292, datacenter: dc2}
            certificates: {builtin: {dir: ca}}
            drain_timeout: 7s
            """
        )
    )
    out = tmp_path / "web.nomad.hcl"
    template = ROOT / "templates" / "nomad-service.nomad.hcl.j2"
    cli = [sys.executable, "-m", "gateway.cli", "render", "-c", str(tmp_path / "web.yaml"), "--once"]
    r = subprocess.run(
        [*cli, "--template", f"{template}:{out}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    job = Job(out)
    assert job.name == "web"
    assert check_sidecar_groups(job) == 1
    ((_, group),) = job.groups()
    proxy = one(one(one(one(group["service"], "s")["connect"], "c")["sidecar_service"], "ss")["proxy"], "p")
    billing = [u for u in proxy["upstreams"] if u["destination_name"] == "billing"]
    assert billing and billing[0]["datacenter"] == "dc2"


# --------------------------------------------------------------------------- systemd


UNIT = ROOT / "packaging" / "meshgw@.service"


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_is_hardened() -> None:
    svc = unit_sections(UNIT.read_text())["Service"]
    # The same directive may appear more than once in a unit; the last one counts for these.
    last = {k: v[-1] for k, v in svc.items()}
    assert last["User"] == "meshgw" and last["Group"] == "meshgw"
    assert last["CapabilityBoundingSet"] == "" and last["AmbientCapabilities"] == ""
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
    }.items():
        assert last[key] == value, key
    assert last["ExecStart"] == "/usr/local/meshgw/bin/meshgw run -c /etc/meshgw/%i.yaml"
    assert last["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads the config
    low = unit_sections((ROOT / "packaging" / "low-port.conf").read_text())["Service"]
    assert low == {
        "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
    }


def systemd_verify(path: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for bad in ("Unknown key", "Unknown section", "Invalid", "Failed to parse", "ignoring"):
        assert bad not in r.stderr, r.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # systemd-analyze checks that ExecStart exists: point the unit at this venv's meshgw for the check.
    meshgw = Path(sys.executable).with_name("meshgw")
    assert meshgw.exists()
    text = UNIT.read_text().replace("/usr/local/meshgw/bin/meshgw", str(meshgw))
    unit = tmp_path / "meshgw@web.service"
    unit.write_text(text)
    systemd_verify(unit)
    # With the low-port drop-in (a repeated [Service] section is what a drop-in amounts to).
    unit.write_text(text + "\n" + (ROOT / "packaging" / "low-port.conf").read_text())
    systemd_verify(unit)


def test_sysusers_entry() -> None:
    fields = (ROOT / "packaging" / "meshgw.sysusers").read_text().splitlines()[-1].split()
    assert fields[:3] == ["u", "meshgw", "-"] and fields[-1] == "/usr/sbin/nologin"


# --------------------------------------------------------------------------- shell and the Vagrant lab


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed here")
def test_shell_scripts_pass_shellcheck() -> None:
    r = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not shutil.which("ruby"), reason="ruby is not installed here")
def test_vagrantfile_ruby_syntax() -> None:
    r = subprocess.run(["ruby", "-c", str(ROOT / "Vagrantfile")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stdout + r.stderr


def test_lab_wiring() -> None:
    """The Vagrantfile provisions with scripts that exist, and those name files that exist."""
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    paths = re.findall(r'path:\s*"([^"]+)"', vagrantfile)
    assert set(paths) == {f"scripts/lab/{n}.sh" for n in ("common", "server", "client", "jobs")}
    for p in paths:
        assert (ROOT / p).is_file(), p
    assert vagrantfile.count('"192.168.56.') == 3  # one server, two clients
    lab = "\n".join(p.read_text() for p in LAB_SCRIPTS)
    for ref in re.findall(r"\$SRC/([\w./-]+)", lab):
        assert (ROOT / ref).exists(), f"scripts/lab refers to missing {ref}"
    # Vault as Consul's CA, and meshgw's role under Consul's intermediate (scripts/vault-dev-setup.sh).
    assert 'ca_provider = "vault"' in lab and "MESHGW_PKI_MOUNT=connect_inter" in lab
    assert "vault-dev-setup.sh" in lab


def test_readme_documents_vms_and_nomad() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on VMs and under Nomad", 1)
    assert len(section) == 2, "README.md has no 'Running on VMs and under Nomad' section"
    for needle in ("packaging/install.sh", "meshgw@", "nomad job run", "vagrant up", "meshgw render"):
        assert needle in section[1], needle


@pytest.mark.slow
def test_wheel_is_self_contained_and_runs_the_demo_on_the_core(tmp_path: Path) -> None:
    """`pip wheel .` gives one wheel carrying the Rust core; installed into a clean venv with no compiler on PATH
    (binary only, so nothing can be built there), `meshgw demo` runs with the core as its data plane."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "gateway" / "core" / "target"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        env=env,
        timeout=900,
    )
    (wheel,) = wheels.glob("meshgw-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert any(n.startswith("gateway/_core") and n.endswith(".so") for n in names)
        assert any(n.startswith("gateway/share/") for n in names), "the dashboard, alerts and templates ship"
        assert not any(n.startswith("gateway/core/") for n in names), "the crate's tree stays out of the wheel"
        for asset in ("templates/console.html.j2", "templates/topology.html.j2", "static/console.js"):
            assert f"gateway/console/{asset}" in names, f"the console's {asset} ships (no build step, no CDN)"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    bare = {"PATH": str(venv / "bin") + ":/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:", str(wheel)],
        check=True,
        env=bare,
        timeout=600,
    )
    out = subprocess.run(
        [str(venv / "bin" / "meshgw"), "demo", "--duration", "5"],
        capture_output=True,
        text=True,
        env=bare,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "10 answered 200" in out.stdout and "3 refused" in out.stdout, out.stdout[-3000:]
    # The installed package finds the console's templates and assets (package data, not the source tree).
    probe = (
        "from importlib import resources; import jinja2; "
        "loader = jinja2.PackageLoader('gateway.console', 'templates'); "
        "assert loader.get_source(jinja2.Environment(), 'console.html.j2')[0]; "
        "assert resources.files('gateway.console').joinpath('static', 'console.js').read_bytes()"
    )
    subprocess.run([str(py), "-c", probe], check=True, env=bare, cwd=tmp_path, timeout=60)
