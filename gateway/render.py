"""Jinja templates rendered from live mesh state, consul-template style (vault-nomad.md §5).

The pipeline follows consul-template's renderer and runner (CT:renderer/renderer.go, CT:manager/runner.go):

- a template is rendered in a sandboxed Jinja environment (``ImmutableSandboxedEnvironment``: no attribute
  starting with ``_``, no mutation of the state it is handed) from the state API in gateway/render_state.py;
- the output is written only when its bytes differ from the destination file, atomically: a temporary file in
  the destination's directory, written, fsynced, chmodded, optionally hard-linked as ``<dest>.bak``, renamed
  over the destination, then the directory is fsynced (§5.2);
- the template's ``command`` runs only after a write that changed the file (``DidRender``), through ``sh -c`` for a
  string or directly for a list, in its own process group, killed when ``command_timeout`` (default 30s, §5.1)
  passes; identical commands of one pass run once, in configuration order (§5.2);
- quiescence: after the first render, a change arms a ``wait.min`` timer and a ``wait.max`` deadline; later
  changes re-arm the timer but never past the deadline (CT ``quiescence.tick``). The first render is not delayed;
- a template error (syntax, undefined name with ``error_on_missing_key``, sandbox violation, write failure)
  is one log line naming the template file, the line and the cause; the destination keeps its last good content.

``TemplateRunner`` runs inside ``meshgw run`` (fed TLS through ``set_tls``) or alone as ``meshgw render``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from connect.deadline import within
from connect.leaf import Leaf
from connect.local import SourceError
from connect.watch import WatchError
from gateway.config import Config, ConfigError, TemplateConfig
from gateway.render_state import (
    CERTS,
    CertFileWriter,
    ConsulCertWatch,
    DepKey,
    MeshState,
    Reads,
    StateSource,
    TemplateAPI,
    TemplateDataError,
    describe,
    make_source,
)

log = logging.getLogger("meshgw.render")

KILL_GRACE = 2.0  # after SIGTERM on a timed-out command's process group, before SIGKILL
OUTPUT_TAIL = 2000  # characters of a failed command's output kept for the log line
ONCE_ROUNDS = 20  # discovery rounds for --once: each round fetches what the last render found missing


class RenderError(Exception):
    """One line for the operator: which template, which line, what is wrong."""


# --------------------------------------------------------------------------- Jinja


def _plain(value: Any) -> Any:
    """State values (frozen dataclasses, read-only mappings, tuples) as JSON/YAML-able data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping | MappingProxyType):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _tojson(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; config files want plain JSON.
    return json.dumps(_plain(value), indent=indent, sort_keys=sort_keys)


def _toyaml(value: Any) -> str:
    return str(yaml.safe_dump(_plain(value), default_flow_style=False, sort_keys=False))


def _finalize(value: Any) -> Any:
    return "" if value is None else value  # None prints as nothing, not "None" (a port or path left empty)


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, where an unsafe access is always an error.

    Jinja answers one with an Undefined that only fails when printed under StrictUndefined; with the lenient
    undefined it would render as nothing and hide the attempt."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.sandbox.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )


def make_environment(source: Path, strict: bool) -> Sandbox:
    """One environment per template: includes resolve inside the template's own directory only."""
    env = Sandbox(
        loader=jinja2.FileSystemLoader(str(source.parent)),
        # error_on_missing_key: false renders a missing key as nothing (consul-template prints "<no value>");
        # ChainableUndefined lets a.b.c be empty too when a is missing. Calling an undefined name always fails.
        undefined=jinja2.StrictUndefined if strict else jinja2.ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
        auto_reload=True,
    )
    env.filters.update(tojson=_tojson, toyaml=_toyaml, shquote=lambda v: shlex.quote(str(v)))
    return env


def _template_position(exc: BaseException, searchpath: Path, default: Path) -> tuple[str, int | None]:
    """The innermost template frame in a Jinja-rewritten traceback: (file, line)."""
    where: tuple[str, int | None] = (str(default), None)
    prefix = str(searchpath.resolve()) + os.sep
    tb = exc.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if os.path.abspath(fname).startswith(prefix) or os.path.abspath(fname) == str(default):
            where = (fname, tb.tb_lineno)
        tb = tb.tb_next
    return where


def describe_error(exc: BaseException, source: Path) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"{exc.filename or source}: line {exc.lineno}: syntax error: {exc.message}"
    fname, line = _template_position(exc, source.parent, source)
    if isinstance(exc, jinja2.TemplateNotFound):
        if exc.name == source.name and line is None:
            return f"{source}: cannot read the template: no such file"
        cause = f"included template not found: {exc.name}"
    elif isinstance(exc, jinja2.UndefinedError | TemplateDataError | jinja2.sandbox.SecurityError):
        cause = str(exc)
    else:
        cause = f"{type(exc).__name__}: {exc}"
    at = f"line {line}: " if line is not None else ""
    return f"{fname}: {at}{cause}"


# --------------------------------------------------------------------------- files and commands


def atomic_write(dest: Path, data: bytes, mode: int, backup: bool = False) -> None:
    """Temp file in the same directory, fsync, chmod, optional ``<dest>.bak`` hard link, rename, fsync the directory.

    A reader opening ``dest`` at any moment sees the old bytes or the new ones, never a mix (rename is atomic
    on POSIX; CT:renderer/renderer.go AtomicWrite). The backup is replaced by a rename too, so unlike
    consul-template there is no moment without a ``.bak``."""
    directory = dest.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if backup and dest.exists():
            bak_tmp = directory / f".{dest.name}.bak.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                bak_tmp.unlink()
            try:
                os.link(dest, bak_tmp)
            except OSError:  # a filesystem without hard links: a copy does
                import shutil

                shutil.copy2(dest, bak_tmp)
            os.replace(bak_tmp, dest.with_name(dest.name + ".bak"))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a crash only once the directory is on disk
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(dfd)


def write_if_changed(cfg: TemplateConfig, data: bytes) -> str:
    """``written``, ``perms`` (same bytes, mode fixed) or ``unchanged``. Raises OSError."""
    dest = cfg.destination
    try:
        st: os.stat_result | None = os.stat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(data) and dest.read_bytes() == data:
        if cfg.perms is not None and stat.S_IMODE(st.st_mode) != cfg.perms:
            os.chmod(dest, cfg.perms)
            return "perms"
        return "unchanged"
    if not dest.parent.is_dir() and cfg.create_dest_dirs:
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Without perms the file keeps the mode it has, and a new file gets 0644 (CT:config/template.go).
    mode = cfg.perms if cfg.perms is not None else (stat.S_IMODE(st.st_mode) if st is not None else 0o644)
    atomic_write(dest, data, mode, cfg.backup)
    return "written"


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    detail: str  # "exit 0", "exit 3: <output tail>", "timed out after 5s (killed)", "cannot start: ..."


def command_text(cmd: str | tuple[str, ...]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


async def run_command(
    cmd: str | tuple[str, ...], timeout: float, env: Mapping[str, str], cwd: Path | None = None
) -> CommandResult:
    """Run without blocking the event loop; on timeout (or cancellation) the whole process group is killed."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    # Output goes to a temporary file, not a pipe: a daemon the command starts may keep a pipe open forever.
    with tempfile.TemporaryFile() as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            return CommandResult(False, f"cannot start: {e.strerror or e}")
        try:
            try:
                rc = await within(proc.wait(), timeout)
            except TimeoutError:
                await _kill_group(proc)
                return CommandResult(False, f"timed out after {timeout:g}s (killed)")
        except BaseException:
            await _kill_group(proc)
            raise
        out.seek(0)
        tail = out.read()[-OUTPUT_TAIL:].decode(errors="replace").strip()
    if rc == 0:
        return CommandResult(True, "exit 0")
    detail = f"exit {rc}" if rc > 0 else f"killed by signal {-rc}"
    last = tail.splitlines()[-1] if tail else ""
    return CommandResult(False, f"{detail}: {last}" if last else detail)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if grace is None:
            break
        try:
            await within(asyncio.shield(proc.wait()), grace)
            return
        except TimeoutError:
            continue
    with contextlib.suppress(TimeoutError):
        await within(proc.wait(), 5.0)


# --------------------------------------------------------------------------- one template


@dataclass
class Attempt:
    output: bytes | None
    reads: Reads
    error: str | None = None

    @property
    def missing(self) -> set[DepKey]:
        return self.reads.missing


@dataclass(eq=False)
class TemplateFile:
    cfg: TemplateConfig
    env: Sandbox
    # Values the last complete render read (None: no complete render yet, so any change is worth a try).
    used: dict[DepKey, Any] | None = None
    rendered: bool = False  # a complete render happened (quiescence applies from then on)
    due: float | None = None  # when to render next (None: not scheduled)
    deadline: float | None = None  # wait.max for the current burst of changes
    last_error: str | None = None
    last_dry: bytes | None = None
    writes: int = 0
    commands: int = 0
    errors: int = 0

    @classmethod
    def from_config(cls, cfg: TemplateConfig) -> TemplateFile:
        return cls(cfg, make_environment(cfg.source, cfg.error_on_missing_key))

    @property
    def name(self) -> str:
        return str(self.cfg.source)

    def render(self, api: TemplateAPI) -> Attempt:
        reads = api.begin()
        try:
            template = self.env.get_template(self.cfg.source.name)
            text = template.render(api.globals())
        except Exception as e:  # a template may fail in any way; the error is the template's, not meshgw's
            if reads.missing:
                # With data still missing, an error is expected (e.g. service("x")[0] on an empty list).
                return Attempt(None, reads)
            return Attempt(None, reads, describe_error(e, self.cfg.source))
        if reads.missing:
            return Attempt(None, reads)
        return Attempt(text.encode(), reads)


# --------------------------------------------------------------------------- the runner


class TemplateRunner:
    """Renders ``config.templates`` from live state until stopped (``start``/``stop``), or once (``render_once``).

    Inside ``meshgw run`` the sidecar hands every new leaf and roots to ``set_tls`` (``own_certs=False``);
    alone, the runner starts the configured certificate provider itself the first time a template reads
    ``certs``."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        own_certs: bool = True,
        dry_run: bool = False,
        out: IO[str] | None = None,
        source: StateSource | None = None,
        clock: Callable[[], float] | None = None,
        templates: tuple[TemplateConfig, ...] | None = None,
    ):
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.source = source if source is not None else make_source(config)
        self.state = MeshState(self.source)
        self.api = TemplateAPI(config, self.state, self.environ)
        self.cert_files = CertFileWriter(config.template_certs)
        self.templates = [TemplateFile.from_config(t) for t in (config.templates if templates is None else templates)]
        self.own_certs = own_certs
        self.dry_run = dry_run
        self.out = out if out is not None else sys.stdout
        self._clock = clock
        self._cert_provider: Any = None
        self._cert_error: str | None = None
        self._wake = asyncio.Event()
        self._certs_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.passes = 0  # render passes done
        self.iterations = 0  # scheduler wake-ups handled (tests wait on it instead of sleeping)
        self.command_env = self._command_env()

    def _command_env(self) -> dict[str, str]:
        env = dict(self.environ)
        consul = self.config.control_plane.consul
        if consul is not None:
            # consul-template exports the agent's address to commands (§5.1); tokens stay out of child processes.
            env.setdefault("CONSUL_HTTP_ADDR", consul.address)
        return env

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ inputs

    def set_tls(self, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> None:
        """A new leaf or new roots (same signature as ``SnapshotBuilder.set_tls``)."""
        try:
            self.state.certs = self.cert_files.set_tls(trust_domain, leaf, roots_pem)
        except OSError as e:
            log.error(
                "templates.certs_dir: cannot write %s: %s (templates keep the last certificate files)",
                self.cert_files.cfg.dir if self.cert_files.cfg else "?",
                e.strerror or e,
            )
            return
        self._certs_event.set()
        self._changed()

    def poke(self) -> None:
        """Look at the timers now (after a change of the injected clock)."""
        self._wake.set()

    def rerender_all(self) -> None:
        """Render every template now, even without a data change (SIGHUP: the template files may have changed)."""
        for tf in self.templates:
            if tf.env.cache is not None:
                tf.env.cache.clear()  # re-read the file even if its mtime did not move (coarse timestamps)
            tf.due = self.now() if self._started else None
            tf.deadline = None
        self._wake.set()

    def _changed(self) -> None:
        """Some state changed: arm each template whose data changed (consul-template's quiescence tick)."""
        if not self._started:
            return
        now = self.now()
        for tf in self.templates:
            if tf.used is not None and all(self.state.peek(k) == v for k, v in tf.used.items()):
                continue
            wait = tf.cfg.wait
            if not tf.rendered or wait is None:
                tf.due = now if tf.due is None else min(tf.due, now)
                continue
            if tf.deadline is None:
                tf.deadline = now + wait.max
            tf.due = min(now + wait.min, tf.deadline)
        self._wake.set()

    # ------------------------------------------------------------------ continuous mode

    async def start(self) -> None:
        """Load the state source (a broken local file is a ConfigError) and start rendering in the background."""
        await self.source.start(self._changed)
        self._started = True
        for tf in self.templates:
            tf.due = self.now()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="templates")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._started = False
        if self._cert_provider is not None:
            await self._cert_provider.stop()
            self._cert_provider = None
        await self.source.stop()

    async def _run(self) -> None:
        while True:
            now = self.now()
            due = [tf for tf in self.templates if tf.due is not None and tf.due <= now]
            if due:
                try:
                    await self._pass(due)
                except Exception:  # never let one bad pass end the renderer of a running sidecar
                    log.exception("template pass failed")
                self.passes += 1
                continue
            self.iterations += 1
            nxt = min((tf.due for tf in self.templates if tf.due is not None), default=None)
            self._wake.clear()
            timeout = None if nxt is None else max(0.0, nxt - self.now())
            # Not a sleep for synchronisation: the scheduler waits for a change or for the next timer, whichever first.
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), timeout)

    async def _pass(self, due: list[TemplateFile]) -> None:
        commands: list[tuple[TemplateFile, str | tuple[str, ...]]] = []
        for tf in due:
            tf.due = None
            tf.deadline = None
            attempt = tf.render(self.api)
            if attempt.missing:
                tf.used = None
                await self._want(attempt.missing)
                continue
            tf.used = dict(attempt.reads.values)
            tf.rendered = True
            if attempt.error is not None:
                self._report(tf, attempt.error)
                continue
            assert attempt.output is not None
            if await self._deliver(tf, attempt.output) and tf.cfg.command is not None:
                if all(c != tf.cfg.command for _, c in commands):  # identical commands run once per pass (§5.2)
                    commands.append((tf, tf.cfg.command))
        for tf, cmd in commands:
            await self._run_command(tf, cmd)

    async def _want(self, keys: set[DepKey]) -> None:
        self.source.want(keys)
        if CERTS in keys:
            await self._start_certs()

    async def _start_certs(self) -> None:
        if not self.own_certs or self._cert_provider is not None or self._cert_error is not None:
            return
        try:
            provider = self._make_cert_provider()
            await provider.start()
        except ConfigError as e:
            self._cert_error = "; ".join(e.problems)
            log.error("certificates for templates: %s", self._cert_error)
            return
        self._cert_provider = provider

    def _make_cert_provider(self) -> Any:
        cfg = self.config
        certs = cfg.certificates
        if certs.type == "builtin":
            from connect.builtin_certs import BuiltinCertProvider

            assert certs.builtin is not None
            return BuiltinCertProvider(certs.builtin, cfg.service.name, cfg.datacenter, self.set_tls)
        if certs.type == "vault":
            from connect.vault import VaultCertProvider

            assert certs.vault is not None
            return VaultCertProvider(certs.vault, cfg.service.name, cfg.datacenter, self.set_tls)
        return ConsulCertWatch(cfg, self.set_tls)

    async def _deliver(self, tf: TemplateFile, output: bytes) -> bool:
        """Write (or print, for a dry run) when the bytes changed. True when the command should run."""
        if self.dry_run:
            if output != tf.last_dry:
                tf.last_dry = output
                self.out.write(f"> {tf.cfg.destination}\n{output.decode(errors='replace')}")
                if not output.endswith(b"\n"):
                    self.out.write("\n")
                self.out.flush()
            self._clear_error(tf)
            return False
        try:
            what = await asyncio.to_thread(write_if_changed, tf.cfg, output)
        except OSError as e:
            self._report(tf, f"{tf.cfg.destination}: cannot write: {e.strerror or e}")
            return False
        self._clear_error(tf)
        if what == "written":
            tf.writes += 1
            log.info("template %s: wrote %s (%d bytes)", tf.name, tf.cfg.destination, len(output))
            return True
        if what == "perms":
            log.info("template %s: %s unchanged, mode set to %04o", tf.name, tf.cfg.destination, tf.cfg.perms or 0)
        return False

    async def _run_command(self, tf: TemplateFile, cmd: str | tuple[str, ...]) -> bool:
        tf.commands += 1
        # Relative paths in a command mean the same as in the config: relative to the config file.
        result = await run_command(cmd, tf.cfg.command_timeout, self.command_env, cwd=self.config.path.parent)
        if result.ok:
            log.info("template %s: command `%s` done", tf.name, command_text(cmd))
        else:
            log.error("template %s: command `%s` failed: %s", tf.name, command_text(cmd), result.detail)
        return result.ok

    def _report(self, tf: TemplateFile, error: str) -> None:
        tf.errors += 1
        if error != tf.last_error:  # once per distinct problem, not on every change
            log.error("%s (keeping the last good %s)", error, tf.cfg.destination)
            tf.last_error = error

    def _clear_error(self, tf: TemplateFile) -> None:
        if tf.last_error is not None:
            log.info("template %s: good again", tf.name)
            tf.last_error = None

    # ------------------------------------------------------------------ once

    async def render_once(self, timeout: float = 60.0) -> int:
        """Every template once: 0 when all rendered (and their commands succeeded), 1 otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.source.start(lambda: None)
        try:
            attempts = await self._discover(deadline)
            status = 0
            commands: list[tuple[TemplateFile, str | tuple[str, ...]]] = []
            for tf, attempt in zip(self.templates, attempts, strict=True):
                if attempt.missing:
                    what = ", ".join(sorted(describe(k) for k in attempt.missing))
                    why = f": {self._cert_error}" if CERTS in attempt.missing and self._cert_error else ""
                    log.error("%s: no data for %s%s (nothing written)", tf.name, what, why)
                    status = 1
                elif attempt.error is not None:
                    self._report(tf, attempt.error)
                    status = 1
                else:
                    assert attempt.output is not None
                    if await self._deliver(tf, attempt.output) and tf.cfg.command is not None:
                        if all(c != tf.cfg.command for _, c in commands):
                            commands.append((tf, tf.cfg.command))
                    if tf.last_error is not None:
                        status = 1
            for tf, cmd in commands:
                if not await self._run_command(tf, cmd):
                    status = 1
            return status
        finally:
            if self._cert_provider is not None:
                await self._cert_provider.stop()
                self._cert_provider = None
            await self.source.stop()

    async def _discover(self, deadline: float) -> list[Attempt]:
        """Render, fetch what was missing, render again, until nothing is missing (or the deadline passes)."""
        loop = asyncio.get_running_loop()
        attempts = [tf.render(self.api) for tf in self.templates]
        for _ in range(ONCE_ROUNDS):
            missing: set[DepKey] = set().union(*(a.missing for a in attempts))
            if not missing or loop.time() >= deadline:
                break
            progressed = False
            try:
                if CERTS in missing:
                    await self._start_certs()
                    if self._cert_provider is not None:  # else it failed to start: reported per template
                        await within(self._certs_event.wait(), max(0.0, deadline - loop.time()))
                        progressed = True
                others = missing - {CERTS}
                if others:
                    await within(self.source.fetch(others), max(0.0, deadline - loop.time()))
                    progressed = True
            except TimeoutError:
                break
            except (WatchError, SourceError) as e:
                raise RenderError(f"cannot read the mesh state: {e}") from None
            if not progressed:
                break
            attempts = [tf.render(self.api) for tf in self.templates]
        return attempts


# --------------------------------------------------------------------------- meshgw render


SHIPPED_TEMPLATES = Path(__file__).resolve().parent / "share" / "templates"


def parse_template_arg(value: str, base: Path) -> TemplateConfig:
    """``--template SRC:DEST`` (consul-template's ``-template "in:out"``), relative to the working directory."""
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst:
        raise ValueError(f"--template {value!r}: expected SOURCE:DESTINATION")
    source = (base / src).absolute()
    if not source.exists() and "/" not in src and (SHIPPED_TEMPLATES / src).is_file():
        # A bare name of a template meshgw ships (package data: a wheel install has them too).
        source = SHIPPED_TEMPLATES / src
    return TemplateConfig(source=source, destination=(base / dst).absolute())


def run_render(
    config: Config, once: bool, dry_run: bool, extra: tuple[TemplateConfig, ...] = (), timeout: float = 60.0
) -> int:
    """The ``meshgw render`` command: 0 ok, 1 a template or command failed, 2 nothing to render / bad setup."""
    templates = extra if extra else config.templates
    if not templates:
        print(
            f"meshgw: {config.path}: templates: none configured (expected a list, or --template SRC:DEST)",
            file=sys.stderr,
        )
        return 2
    from gateway.app import event_loop_runner

    async def main() -> int:
        runner = TemplateRunner(config, dry_run=dry_run, templates=templates, source=make_source(config, poll=not once))
        if once:
            return await runner.render_once(timeout)
        await runner.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, runner.rerender_all)
        await stop.wait()
        await runner.stop()
        return 0

    try:
        return int(event_loop_runner()(main()))
    except ConfigError as e:
        for line in e.problems:
            print(f"meshgw: {line}", file=sys.stderr)
        return 2
    except RenderError as e:
        print(f"meshgw: {e}", file=sys.stderr)
        return 1
