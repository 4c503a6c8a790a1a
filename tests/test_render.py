"""The template renderer (gateway/render.py, gateway/render_state.py) and the templates shipped in templates/.

Real files, real commands and real ``meshgw render`` processes. Nothing waits by sleeping: tests wait on a
condition with a deadline, and quiescence is driven by an injected clock so that "quick changes" are quick by
construction rather than by luck.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connect.ca import BuiltinCA
from connect.intentions import parse_entries
from gateway.config import ConfigError, TemplateConfig, TemplateWait, load_config
from gateway.render import TemplateRunner, atomic_write, run_command, write_if_changed
from gateway.render_state import LocalSource, NomadEnv, TemplateDataError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"

CATALOG = {
    "services": {
        "api": [
            {"address": "10.0.0.5", "port": 21000, "tags": ["v2", "http"], "meta": {"version": "2"}, "node": "n1"},
            {"address": "10.0.0.6", "port": 21000, "health": "warning", "node": "n2"},
            {"address": "10.0.0.7", "port": 21000, "health": "critical", "node": "n3"},
        ],
        "db": [{"address": "10.0.0.9", "port": 5432, "tags": ["sql"]}],
    }
}
INTENTIONS = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}]}


# --------------------------------------------------------------------------- helpers


def write_yaml(path: Path, data: Any) -> None:
    # Atomic, so the source's poller never reads half a file.
    atomic_write(path, yaml.safe_dump(data).encode(), 0o644)


def make_config(tmp: Path, templates: list[dict[str, Any]] | dict[str, Any], extra: str = "", env: Any = None) -> Any:
    write_yaml(tmp / "catalog.yaml", CATALOG)
    write_yaml(tmp / "intentions.yaml", INTENTIONS)
    body = textwrap.dedent(
        """
        datacenter: dc1
        service: {name: web, port: 8080}
        inbound: {bind: 127.0.0.1:21000}
        upstreams:
          - {service: api, bind: 127.0.0.1:9191}
        control_plane:
          local: {catalog: catalog.yaml, intentions: intentions.yaml, poll_interval: 50ms}
        certificates:
          builtin: {dir: ca, create: true}
        """
    )
    (tmp / "web.yaml").write_text(body + extra + yaml.safe_dump({"templates": templates}))
    return load_config(tmp / "web.yaml", env={} if env is None else env)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval of the condition, not a synchronisation point


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def meshgw(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "VAULT_", "NOMAD_"))}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=e
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- config


def test_templates_config_list_and_mapping_forms(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        [
            {
                "source": "a.j2",
                "destination": "out/a",
                "perms": "0640",
                "command": ["systemctl", "reload", "haproxy"],
                "command_timeout": "5s",
                "wait": "2s",
                "backup": True,
                "error_on_missing_key": True,
            }
        ],
    )
    (t,) = cfg.templates
    assert t.source == tmp_path / "a.j2" and t.destination == tmp_path / "out/a"
    assert t.perms == 0o640 and t.command == ("systemctl", "reload", "haproxy") and t.command_timeout == 5.0
    assert t.wait == TemplateWait(2.0, 8.0)  # a missing max is 4 x min (CT:config/wait.go)
    assert t.backup and t.error_on_missing_key and cfg.template_certs is None

    cfg = make_config(
        tmp_path,
        {"certs_dir": "certs", "wait": {"min": "1s", "max": "3s"}, "files": [{"source": "a", "destination": "b"}]},
    )
    assert cfg.templates[0].wait == TemplateWait(1.0, 3.0) and cfg.templates[0].perms is None
    assert cfg.template_certs is not None and cfg.template_certs.dir == tmp_path / "certs"
    assert not cfg.template_certs.write_key

    # Under systemd (RuntimeDirectory=) or Nomad the certificate files have a home without a setting.
    cfg = make_config(tmp_path, [], env={"RUNTIME_DIRECTORY": "/run/meshgw"})
    assert cfg.template_certs is not None and cfg.template_certs.dir == Path("/run/meshgw/certs")
    cfg = make_config(tmp_path, [], env={"NOMAD_SECRETS_DIR": "/alloc/web/secrets"})
    assert cfg.template_certs is not None and cfg.template_certs.dir == Path("/alloc/web/secrets/meshgw")


def test_templates_config_errors_are_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(
        textwrap.dedent(
            """
            service: {name: web, port: 8080}
            inbound: {bind: 127.0.0.1:21000}
            certificates: {builtin: {dir: ca}}
            templates:
              - {source: a.j2, destination: out, perms: 0640, wait: {min: 5s, max: 1s}, comand: x}
              - {source: b.j2, destination: out, command: []}
              - {destination: c}
            """
        )
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "web.yaml", env={})
    text = "\n".join(e.value.problems)
    f = str(tmp_path / "web.yaml")
    assert f"{f}: templates[0].perms: 416 is not a mode (expected a quoted octal string" in text
    assert f"{f}: templates[0].wait: max (1s) is shorter than min (5s)" in text
    assert f"{f}: templates[0].comand: unknown key" in text
    assert f"{f}: templates[1].command: [] is not a command" in text
    assert f"{f}: templates[1].destination: {tmp_path / 'out'} is already written by templates[0]" in text
    assert f"{f}: templates[2].source: is required" in text
    assert all("\n" not in p for p in e.value.problems)


# --------------------------------------------------------------------------- the state API


def test_state_api_from_local_files(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(
        textwrap.dedent(
            """\
            dc={{ datacenter }} me={{ meshgw.service.name }}:{{ meshgw.service.port }}
            {% for i in service("api") %}
            passing {{ i.address }}:{{ i.port }} node={{ i.node }} tags={{ i.tags|join(",") }} v={{ i.meta.version }}
            {% endfor %}
            {% for i in service("api", health="passing,warning") %}
            healthy {{ i.address }} {{ i.health }}
            {% endfor %}
            any={{ service("api", health="any")|length }} tagged={{ service("api", tag="v2")|length }}
            sql={{ services(tag="sql")|map(attribute="name")|join(",") }} all={{ services()|length }}
            mesh={{ connect("api")|length }} none={{ service("nope")|length }} dc2={{ service("api", dc="dc2")|length }}
            intentions={{ intentions("api")|tojson }}
            upstream={{ meshgw.upstreams[0].service }}@{{ meshgw.upstreams[0].port }}
            env={{ env("HOME_X", "d") }}/{{ env.HOME_X }}
            """
        )
    )
    cfg = make_config(tmp_path, [{"source": "t.j2", "destination": "out.txt"}])
    assert run(TemplateRunner(cfg, environ={"HOME_X": "h"}).render_once()) == 0
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert out[0] == "dc=dc1 me=web:8080"
    assert out[1] == "passing 10.0.0.5:21000 node=n1 tags=v2,http v=2"
    assert out[2:4] == ["healthy 10.0.0.5 passing", "healthy 10.0.0.6 warning"]
    assert out[4] == "any=3 tagged=1"
    assert out[5] == "sql=db all=2"
    assert out[6] == "mesh=1 none=0 dc2=0"
    entries = json.loads(out[7].split("=", 1)[1])
    assert [e["Name"] for e in entries] == ["api"] and entries[0]["Sources"][0]["Name"] == "web"
    assert out[8:] == ["upstream=api@9191", "env=h/h"]


def test_certificate_files_and_certs_api(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ certs.leaf_file }} {{ certs.roots_file }} {{ certs.spiffe_id }}\n")
    cfg = make_config(tmp_path, {"certs_dir": "certs", "files": [{"source": "t.j2", "destination": "out.txt"}]})
    assert run(TemplateRunner(cfg).render_once()) == 0
    leaf, roots, spiffe = (tmp_path / "out.txt").read_text().split()
    assert Path(leaf).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert Path(roots).read_text() == BuiltinCA.load(tmp_path / "ca").roots_pem().decode()
    assert spiffe.endswith("/ns/default/dc/dc1/svc/web")
    assert not (tmp_path / "certs" / "leaf.key").exists()  # never the key unless the config says so

    # The key is written only with write_key, 0600 from its first byte.
    (tmp_path / "t.j2").write_text("{{ certs.key_file }}\n")
    cfg = make_config(
        tmp_path, {"certs_dir": "certs", "write_key": True, "files": [{"source": "t.j2", "destination": "out.txt"}]}
    )
    assert run(TemplateRunner(cfg).render_once()) == 0
    key = Path((tmp_path / "out.txt").read_text().strip())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()


def test_certs_without_a_directory_is_a_template_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "t.j2").write_text("first line\n{{ certs.leaf_file }}\n")
    cfg = make_config(tmp_path, [{"source": "t.j2", "destination": "out.txt"}])
    with caplog.at_level(logging.ERROR, "meshgw.render"):
        assert run(TemplateRunner(cfg).render_once()) == 1
    assert f"{tmp_path / 't.j2'}: line 2: certs.leaf_file: meshgw writes no certificate files" in caplog.text
    assert not (tmp_path / "out.txt").exists()


def test_nomad_runtime_variables() -> None:
    env = {
        "NOMAD_ALLOC_ID": "a1",
        "NOMAD_PORT_mesh": "21000",
        "NOMAD_HOST_PORT_mesh": "31234",
        "NOMAD_UPSTREAM_ADDR_payments_v2": "127.0.0.1:9191",
        "NOMAD_META_trust_domain": "td.consul",
    }
    n = NomadEnv(env)
    assert n.present and n.alloc_id == "a1" and n.port("mesh") == 21000 and n.host_port("mesh") == 31234
    assert n.upstream_addr("payments-v2") == "127.0.0.1:9191"  # '-' is cleaned to '_' as Nomad does
    assert n.meta("trust_domain") == "td.consul" and n.meta("other", "x") == "x"
    with pytest.raises(TemplateDataError, match="NOMAD_PORT_http is not set"):
        n.port("http")
    assert not NomadEnv({}).present


# --------------------------------------------------------------------------- writes


def test_no_write_and_no_command_when_output_unchanged(tmp_path: Path) -> None:
    """A real `meshgw render --once` process: first run writes and runs the command, second run does neither."""
    (tmp_path / "t.j2").write_text("{% for i in service('api') %}{{ i.address }}\n{% endfor %}")
    make_config(tmp_path, [{"source": "t.j2", "destination": "out/api.txt", "command": "echo ran >> cmd.log"}])
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "out" / "api.txt"
    assert dest.read_text() == "10.0.0.5\n" and lines(tmp_path / "cmd.log") == ["ran"]
    before = dest.stat()
    assert stat.S_IMODE(before.st_mode) == 0o644  # a new file without perms: 0644 (CT)

    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert lines(tmp_path / "cmd.log") == ["ran"]
    assert "wrote" not in r.stderr

    # --dry-run prints and writes nothing, runs nothing.
    catalog = json.loads(json.dumps(CATALOG))
    catalog["services"]["api"][0]["address"] = "10.0.0.50"
    write_yaml(tmp_path / "catalog.yaml", catalog)
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"> {dest}\n10.0.0.50\n"
    assert dest.read_text() == "10.0.0.5\n" and lines(tmp_path / "cmd.log") == ["ran"]


def test_perms_backup_and_kept_mode(tmp_path: Path) -> None:
    dest = tmp_path / "d" / "f.conf"
    cfg = TemplateConfig(source=tmp_path / "x", destination=dest, perms=0o640, backup=True)
    assert write_if_changed(cfg, b"one\n") == "written"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640 and not dest.with_name("f.conf.bak").exists()
    assert write_if_changed(cfg, b"two\n") == "written"
    assert dest.read_text() == "two\n" and dest.with_name("f.conf.bak").read_text() == "one\n"
    os.chmod(dest, 0o600)
    assert write_if_changed(cfg, b"two\n") == "perms" and stat.S_IMODE(dest.stat().st_mode) == 0o640
    # Without perms, a rewrite keeps the mode the operator gave the file.
    keep = TemplateConfig(source=tmp_path / "x", destination=dest)
    os.chmod(dest, 0o604)
    assert write_if_changed(keep, b"three\n") == "written" and stat.S_IMODE(dest.stat().st_mode) == 0o604
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


READER = r"""
import os, sys
path, stop = sys.argv[1], sys.argv[2]
reads = torn = 0
versions = set()
while not os.path.exists(stop):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        torn += 1
        continue
    reads += 1
    body = data.split(b"\n")
    header = body[0]
    # A whole version is its header line repeated on every line, and exactly 20000 of them.
    if len(body) != 20001 or body[-1] != b"" or any(line != header for line in body[:-1]):
        torn += 1
    else:
        versions.add(header)
print(reads, torn, len(versions))
"""


def test_atomic_replacement_seen_whole_by_a_concurrent_reader(tmp_path: Path) -> None:
    dest = tmp_path / "big.conf"
    atomic_write(dest, b"v0\n" * 20000, 0o644)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(dest), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        for n in range(1, 150):
            atomic_write(dest, f"v{n}\n".encode() * 20000, 0o644)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    reads, torn, versions = map(int, out.split())
    assert torn == 0, f"{torn} of {reads} reads saw a partial or missing file"
    assert reads > 0 and versions >= 1


# --------------------------------------------------------------------------- commands


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def main() -> Any:
        return await run_command(f"sleep 60 & echo $! > {pidfile}; wait", 0.5, os.environ)

    result = run(main())
    assert not result.ok and result.detail == "timed out after 0.5s (killed)"
    pid = int(pidfile.read_text())

    async def gone() -> None:
        await until(lambda: not _alive(pid), 10, "the command's child to be killed")

    run(gone())


def test_command_runs_without_blocking_the_event_loop(tmp_path: Path) -> None:
    started, flag = tmp_path / "started", tmp_path / "flag"

    async def main() -> Any:
        # The command waits for a file that only this coroutine makes, after seeing the command run: if running
        # the command blocked the loop, neither could happen and the command would time out instead.
        script = f"touch {started}; while [ ! -e {flag} ]; do sleep 0.01; done"
        task = asyncio.create_task(run_command(script, 30, os.environ))
        await until(started.exists, 20, "the command to start")
        flag.touch()
        return await task

    result = run(main())
    assert result.ok, result.detail


def test_command_failure_is_reported_with_its_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Any:
        return (
            await run_command("echo boom >&2; exit 3", 5, os.environ),
            await run_command(("/nonexistent/cmd",), 5, os.environ),
        )

    failed, missing = run(main())
    assert not failed.ok and failed.detail == "exit 3: boom"
    assert not missing.ok and missing.detail.startswith("cannot start: ")

    (tmp_path / "t.j2").write_text("x\n")
    cfg = make_config(tmp_path, [{"source": "t.j2", "destination": "out.txt", "command": ["false"]}])
    with caplog.at_level(logging.ERROR, "meshgw.render"):
        assert run(TemplateRunner(cfg).render_once()) == 1
    assert "command `false` failed: exit 1" in caplog.text


# --------------------------------------------------------------------------- quiescence


class Rig:
    """A runner on real files (catalog + template + destination + command log) with an injected clock."""

    def __init__(self, tmp: Path, wait: dict[str, str] | None, template: str = "{{ service('api')|length }}\n"):
        self.tmp = tmp
        (tmp / "t.j2").write_text(template)
        spec: dict[str, Any] = {"source": "t.j2", "destination": "out.txt", "command": "echo ran >> cmd.log"}
        if wait:
            spec["wait"] = wait
        self.cfg = make_config(tmp, [spec])
        self.clock = Clock()
        self.source = LocalSource(self.cfg, poll=False)  # the test applies file changes itself, one by one
        self.runner = TemplateRunner(self.cfg, source=self.source, clock=self.clock)
        self.tf = self.runner.templates[0]
        self.n = 1

    def change(self, at: float) -> None:
        """Set the clock, then make a real catalog change with `self.n` api instances and let the source see it."""
        self.clock.t = at
        self.n += 1
        catalog = {"services": {"api": [{"address": f"10.1.0.{i}", "port": 21000} for i in range(self.n)]}}
        write_yaml(self.tmp / "catalog.yaml", catalog)
        for f in self.source.files:
            f.poll()

    async def settle(self) -> None:
        """Wait until the scheduler has looked at the current state and gone back to waiting."""
        seen = self.runner.iterations
        self.runner.poke()
        await until(lambda: self.runner.iterations > seen, 10, "the scheduler to settle")

    @property
    def commands(self) -> int:
        return len(lines(self.tmp / "cmd.log"))

    def output(self) -> str:
        return (self.tmp / "out.txt").read_text()


def test_quiescence_several_quick_changes_one_write_one_command(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"min": "1s", "max": "5s"})

    async def main() -> None:
        await rig.runner.start()
        try:
            await until(lambda: rig.tf.writes == 1 and rig.commands == 1, what="the first render")  # not delayed
            t0 = rig.clock.t + 10
            for dt in (0.0, 0.5, 0.9, 1.3):  # each change comes before the last one's min (1s) has passed
                rig.change(t0 + dt)
                await rig.settle()
                assert rig.tf.writes == 1 and rig.commands == 1
            assert rig.tf.due == t0 + 1.3 + 1.0
            rig.clock.t = t0 + 2.3
            await rig.settle()
            await until(lambda: rig.tf.writes == 2 and rig.commands == 2, what="the settled render")
            await rig.settle()
            assert rig.output() == "5\n" and rig.tf.writes == 2 and rig.commands == 2  # the last state, once

            # A change that does not change the output: no write, no command.
            t1 = rig.clock.t + 10
            rig.clock.t = t1
            write_yaml(
                tmp_path / "catalog.yaml",
                {"services": {"api": [{"address": f"10.2.0.{i}", "port": 1} for i in range(5)]}},
            )
            for f in rig.source.files:
                f.poll()
            rig.clock.t = t1 + 1
            await rig.settle()
            await until(lambda: rig.tf.due is None, what="the render of unchanged output")
            await rig.settle()
            assert rig.tf.writes == 2 and rig.commands == 2
        finally:
            await rig.runner.stop()

    run(main())


def test_quiescence_max_bounds_the_delay(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"min": "1s", "max": "3s"})

    async def main() -> None:
        await rig.runner.start()
        try:
            await until(lambda: rig.tf.writes == 1, what="the first render")
            t0 = rig.clock.t + 10
            for dt in (0.0, 0.9, 1.8, 2.7):  # never quiet for 1s: only max (3s after the first) ends the wait
                rig.change(t0 + dt)
                await rig.settle()
                assert rig.tf.writes == 1
            assert rig.tf.due == t0 + 3.0  # min would say t0 + 3.7; the deadline wins
            rig.clock.t = t0 + 3.0
            await rig.settle()
            await until(lambda: rig.tf.writes == 2 and rig.commands == 2, what="the render at the deadline")
            assert rig.output() == "5\n"
        finally:
            await rig.runner.stop()

    run(main())


def test_without_wait_every_change_renders(tmp_path: Path) -> None:
    rig = Rig(tmp_path, None)

    async def main() -> None:
        await rig.runner.start()
        try:
            await until(lambda: rig.tf.writes == 1, what="the first render")
            rig.change(rig.clock.t)
            await until(lambda: rig.tf.writes == 2 and rig.commands == 2, what="the second render")
            assert rig.output() == "2\n"
        finally:
            await rig.runner.stop()

    run(main())


# --------------------------------------------------------------------------- errors


def test_bad_template_keeps_the_last_good_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(tmp_path, None)
    src = tmp_path / "t.j2"

    def errors_above(n: int) -> Callable[[], bool]:
        return lambda: rig.tf.errors > n

    async def main() -> None:
        await rig.runner.start()
        try:
            await until(lambda: rig.tf.writes == 1, what="the first render")
            good = rig.output()
            # A syntax error, then a runtime error, then a sandbox violation: each logged once, file untouched.
            cases = [
                ("ok\n{% for x in %}\n", "line 2: syntax error: "),
                ("a\nb\n{{ service('api', health='bogus') }}\n", "line 3: health='bogus': expected passing, any"),
                ("{{ ''.__class__.__mro__ }}\n", "line 1: access to attribute '__class__' of 'str' object is unsafe"),
            ]
            for text, expected in cases:
                caplog.clear()
                src.write_text(text)
                more_errors = errors_above(rig.tf.errors)
                rig.runner.rerender_all()
                await until(more_errors, what="the template error")
                assert f"{src}: {expected}" in caplog.text
                assert f"(keeping the last good {tmp_path / 'out.txt'})" in caplog.text
                assert rig.output() == good and rig.commands == 1
            # Fixed again: rendered, and the log says so.
            src.write_text("fixed {{ service('api')|length }}\n")
            rig.runner.rerender_all()
            await until(lambda: rig.tf.writes == 2, what="the fixed render")
            assert rig.output() == "fixed 1\n" and "good again" in caplog.text
        finally:
            await rig.runner.stop()

    with caplog.at_level(logging.INFO, "meshgw.render"):
        run(main())


def test_missing_key_with_and_without_error_on_missing_key(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("a=[{{ meshgw.service.nope }}] b=[{{ env.NOT_SET_X }}] c=[{{ nothing.at.all }}]\n")
    make_config(
        tmp_path,
        [
            {"source": "t.j2", "destination": "lenient.txt"},
            {"source": "t.j2", "destination": "strict.txt", "error_on_missing_key": True},
        ],
    )
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", cwd=tmp_path)
    assert r.returncode == 1
    assert (tmp_path / "lenient.txt").read_text() == "a=[] b=[] c=[]\n"
    assert not (tmp_path / "strict.txt").exists()
    err = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(err) == 1, r.stderr
    assert f"{tmp_path / 't.j2'}: line 1: " in err[0] and "has no attribute 'nope'" in err[0]
    assert f"keeping the last good {tmp_path / 'strict.txt'}" in err[0]


def test_render_command_keeps_rendering_until_sigterm(tmp_path: Path) -> None:
    """`meshgw render` without --once: a real process follows the catalog, re-reads templates on SIGHUP."""
    from mesh import wait_for

    (tmp_path / "t.j2").write_text("{% for i in service('api') %}{{ i.address }}\n{% endfor %}")
    make_config(tmp_path, [{"source": "t.j2", "destination": "out.txt"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "VAULT_", "NOMAD_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "render", "-c", str(tmp_path / "web.yaml")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = tmp_path / "out.txt"
    try:
        wait_for(lambda: out.exists() and out.read_text() == "10.0.0.5\n", 20, "the first render")
        catalog = json.loads(json.dumps(CATALOG))
        catalog["services"]["api"][1]["health"] = "passing"
        write_yaml(tmp_path / "catalog.yaml", catalog)
        wait_for(lambda: out.read_text() == "10.0.0.5\n10.0.0.6\n", 20, "the render after the catalog changed")
        (tmp_path / "t.j2").write_text("n={{ service('api')|length }}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: out.read_text() == "n=2\n", 20, "the render after SIGHUP")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=20)
    assert "ERROR" not in err, err


def test_render_cli_usage_errors(tmp_path: Path) -> None:
    make_config(tmp_path, [])
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", cwd=tmp_path)
    assert r.returncode == 2 and "templates: none configured" in r.stderr
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", "--template", "nodest", cwd=tmp_path)
    assert r.returncode == 2 and "expected SOURCE:DESTINATION" in r.stderr
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", "--template", "missing.j2:out", cwd=tmp_path)
    assert r.returncode == 1 and f"{tmp_path / 'missing.j2'}: cannot read the template" in r.stderr


# --------------------------------------------------------------------------- Consul as the source


CONSUL_TEMPLATE = """\
{% for i in service("api") %}{{ i.id }} {{ i.address }}:{{ i.port }} {{ i.tags|join(",") }}
{% endfor %}services={{ services()|map(attribute="name")|join(",") }}
intentions={{ intentions("api")[0].Sources[0].Name }}
spiffe={{ certs.spiffe_id }} roots={{ certs.roots_file }}
"""


def consul_config(tmp: Path, address: str, certs: str = "consul") -> Any:
    (tmp / "t.j2").write_text(CONSUL_TEMPLATE)
    (tmp / "web.yaml").write_text(
        textwrap.dedent(
            f"""
            service: {{name: web, port: 8080}}
            inbound: {{bind: 127.0.0.1:21000}}
            control_plane:
              type: consul
              consul: {{address: "{address}", register: false, wait: 5s}}
            certificates: {{type: {certs}, builtin: {{dir: ca}}}}
            templates:
              certs_dir: certs
              files:
                - {{source: t.j2, destination: out.txt}}
            """
        )
    )
    return load_config(tmp / "web.yaml", env={})


async def register_api(c: Any, d: Any, sid: str, address: str, status: str = "passing") -> None:
    import consul

    await c.agent.service.register("api", service_id=sid, address=address, port=8080, tags=["v1"],
                                   check=consul.Check.ttl("60s"))  # fmt: skip
    d.set_check_status(sid, status)


def test_consul_source_once_and_watching(tmp_path: Path) -> None:
    """Against the Consul API double: one-shot reads for --once, blocking queries after, and the agent's leaf."""
    import aiohttp
    import consul.aio
    from doubles.consul import ConsulDouble

    async def main() -> None:
        async with ConsulDouble() as d:
            c = consul.aio.Consul(host="127.0.0.1", port=d.port)
            try:
                await register_api(c, d, "api-1", "10.0.0.5")
                entry = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}]}
                async with aiohttp.ClientSession() as http:
                    async with http.put(f"{d.url}/v1/config", json=entry) as resp:
                        assert resp.status == 200, await resp.text()
                cfg = consul_config(tmp_path, d.address)
                assert await TemplateRunner(cfg).render_once(10) == 0
                out = (tmp_path / "out.txt").read_text().splitlines()
                assert out[0] == "api-1 10.0.0.5:8080 v1"
                assert "api" in out[1].removeprefix("services=").split(",")
                assert out[2] == "intentions=web"
                spiffe, roots = out[3].split()
                assert spiffe == f"spiffe=spiffe://{d.trust_domain}/ns/default/dc/dc1/svc/web"
                roots_pem = Path(roots.removeprefix("roots=")).read_text()
                assert roots_pem.strip() == (await c.agent.connect.ca.roots())["Roots"][0]["RootCert"].strip()

                runner = TemplateRunner(cfg)
                await runner.start()
                try:
                    tf = runner.templates[0]
                    await until(lambda: tf.used is not None, what="the first render from the watches")
                    await register_api(c, d, "api-2", "10.0.0.6")
                    await until(lambda: tf.writes == 1, what="the render after the blocking query returned")
                    assert (tmp_path / "out.txt").read_text().splitlines()[:2] == [
                        "api-1 10.0.0.5:8080 v1",
                        "api-2 10.0.0.6:8080 v1",
                    ]
                    d.set_check_status("api-1", "critical")  # it leaves the passing set
                    await until(lambda: tf.writes == 2, what="the render after api-1 went critical")
                    assert (tmp_path / "out.txt").read_text().splitlines()[0] == "api-2 10.0.0.6:8080 v1"
                finally:
                    await runner.stop()
            finally:
                await c.http.close()

    run(main())


def test_consul_unreachable_once_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    consul_config(tmp_path, f"127.0.0.1:{port}", certs="builtin")
    r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", cwd=tmp_path)
    assert r.returncode == 1
    problems = [line for line in r.stderr.splitlines() if not line[:4].isdigit()]  # log lines start with a date
    assert len(problems) == 1 and problems[0].startswith("meshgw: cannot read the mesh state: GET /v1/"), r.stderr


# --------------------------------------------------------------------------- the shipped templates


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """Render one file of templates/ with `meshgw render --once --template` against a small mesh."""
    make_config(tmp_path, {"certs_dir": "certs", "files": []})

    def render(name: str, extra_config: str = "") -> str:
        if extra_config:
            text = (tmp_path / "web.yaml").read_text()
            (tmp_path / "web.yaml").write_text(extra_config + text)
        out = tmp_path / "out" / name.removesuffix(".j2")
        spec = f"{TEMPLATES / name}:{out}"
        r = meshgw("render", "-c", str(tmp_path / "web.yaml"), "--once", "--template", spec, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return out.read_text()

    yield render


def test_shipped_consul_service_definition(shipped: Callable[[str], str]) -> None:
    doc = json.loads(shipped("consul-service.json.j2"))
    svc = doc["service"]
    assert svc["name"] == "web" and svc["port"] == 8080
    sidecar = svc["connect"]["sidecar_service"]
    assert sidecar["port"] == 21000
    (up,) = sidecar["proxy"]["upstreams"]
    assert up == {"destination_name": "api", "local_bind_address": "127.0.0.1", "local_bind_port": 9191}
    assert sidecar["proxy"]["local_service_port"] == 8080


def test_shipped_consul_service_definition_leaves_an_unset_protocol_to_consul(
    shipped: Callable[[str], str], tmp_path: Path
) -> None:
    # A protocol meshgw.yaml leaves out is Consul's to resolve (service-defaults, proxy-defaults): a registration
    # that wrote one would win over them (http2-grpc.md §1.2).
    proxy = json.loads(shipped("consul-service.json.j2"))["service"]["connect"]["sidecar_service"]["proxy"]
    assert "config" not in proxy
    cfg = tmp_path / "web.yaml"
    explicit = "service: {name: web, port: 8080, protocol: grpc}"
    cfg.write_text(cfg.read_text().replace("service: {name: web, port: 8080}", explicit))
    proxy = json.loads(shipped("consul-service.json.j2"))["service"]["connect"]["sidecar_service"]["proxy"]
    assert proxy["config"] == {"protocol": "grpc"}


def test_shipped_service_intentions(shipped: Callable[[str], str]) -> None:
    entries = json.loads(shipped("service-intentions.json.j2"))
    parsed = parse_entries(entries, "rendered")  # Consul's own validation rules (connect/intentions.py)
    (api,) = parsed
    assert api.name == "api"
    assert {s.name: s.action for s in api.sources} == {"web": "allow"}  # kept once, not duplicated


def test_shipped_systemd_unit(shipped: Callable[[str], str], tmp_path: Path) -> None:
    unit = shipped("meshgw.service.j2")
    ini = configparser.ConfigParser(strict=False, interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read_string(unit)
    svc = ini["Service"]
    assert svc["User"] == "meshgw" and svc["ProtectSystem"] == "strict" and svc["PrivateTmp"] == "yes"
    assert svc["ExecStart"].endswith(f"run -c {tmp_path / 'web.yaml'}")
    assert svc["CapabilityBoundingSet"] == "" and "AmbientCapabilities" not in svc  # all ports >= 1024
    assert str(tmp_path / "ca") in svc["ReadWritePaths"] and str(tmp_path / "certs") in svc["ReadWritePaths"]
    if shutil.which("systemd-analyze"):
        unit_file = tmp_path / "meshgw-web.service"
        unit_file.write_text(unit)
        r = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Unknown key" not in r.stderr and "Unknown section" not in r.stderr, r.stderr


def test_shipped_systemd_unit_gets_the_capability_for_a_low_port(shipped: Callable[..., str]) -> None:
    unit = shipped("meshgw.service.j2", "admin: {bind: '127.0.0.1:443'}\n")
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit


def test_shipped_haproxy_backends(shipped: Callable[[str], str], tmp_path: Path) -> None:
    cfg = shipped("haproxy.cfg.j2")
    servers = [line.split() for line in cfg.splitlines() if line.strip().startswith("server ")]
    # Services tagged http only (api, not db); passing and warning instances (critical ones leave the set).
    assert {(s[1], s[2]) for s in servers} == {
        ("n1_api-10.0.0.5-21000", "10.0.0.5:21000"),
        ("n2_api-10.0.0.6-21000", "10.0.0.6:21000"),
    }
    assert "backend be_api" in cfg and "be_db" not in cfg
    if shutil.which("haproxy"):
        path = tmp_path / "haproxy.cfg"
        path.write_text(cfg)
        r = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_nginx_upstreams(shipped: Callable[[str], str], tmp_path: Path) -> None:
    conf = shipped("nginx-upstreams.conf.j2")
    assert "upstream api {" in conf and "server 10.0.0.5:21000" in conf and "10.0.0.7" not in conf
    if shutil.which("nginx"):
        main = tmp_path / "nginx.conf"
        main.write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n"
            f"  include {tmp_path / 'out' / 'nginx-upstreams.conf'};\n}}\n"
        )
        r = subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
