"""Process lifecycle: start providers, listeners and admin; SIGHUP reload; SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connect.local import LocalControlPlane
from gateway import core_metrics, corespec, dataplane, metrics, sdnotify
from gateway.admin import Admin
from gateway.config import Config, ConfigError, load_config
from gateway.config.protocol import ProtocolFacts
from gateway.config.reader import is_http_like
from gateway.console.errors import RecentErrors
from gateway.console.ops import Maintenance
from gateway.console.source import ConsoleSource, ListenerInfo
from gateway.preflight import check_files
from gateway.snapshot import SnapshotBuilder, upstream_key

if TYPE_CHECKING:
    from gateway.render import TemplateRunner

# Providers and renderers are imported when the config uses them (Consul and aiohttp, Vault and hvac, templates
# and jinja2): each is megabytes of every sidecar's resident memory otherwise (issue #13, bench/rss_bench.py).

log = logging.getLogger("meshgw")


class StartupError(Exception):
    """Start-up failed for a reason the operator can fix (one line)."""


def consul_supplied(cfg: Config) -> str | None:
    """The config field a gateway's Consul entry fills when the file leaves it empty: an ingress gateway's listeners
    (as upstreams) from its ingress-gateway entry, a terminating gateway's linked services from its
    terminating-gateway entry. None: the file says it all."""
    if cfg.control_plane.type != "consul":
        return None
    if cfg.mode == "ingress-gateway" and not cfg.upstreams:
        return "upstreams"
    if cfg.mode == "terminating-gateway" and not cfg.linked_services:
        return "linked_services"
    consul = cfg.control_plane.consul
    if cfg.mode == "sidecar" and consul is not None and consul.sidecar_for and not cfg.upstreams:
        return "upstreams"  # from its connect-proxy registration (`consul connect envoy -sidecar-for`)
    return None


def _needs_new_certs(old: Config, new: Config) -> bool:
    return (
        new.certificates != old.certificates
        or new.service.name != old.service.name
        or new.datacenter != old.datacenter
        or [ls.name for ls in new.linked_services] != [ls.name for ls in old.linked_services]
    )


def _listener_specs(cfg: Config, exposed_checks: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Everything that, when changed, needs a new listener (not just a new snapshot). ``exposed_checks``: the
    paths the Consul agent exposed for the app's checks (each port a listener, its paths in the snapshot)."""
    specs: dict[tuple[Any, ...], Any] = {}
    if cfg.inbound is not None:
        specs[("inbound", cfg.inbound, cfg.service.address, cfg.service.port)] = None
    if cfg.gateway is not None:
        specs[(cfg.mode, cfg.gateway, cfg.datacenter)] = None
    ingress_http: dict[Any, list[Any]] = {}
    for u in cfg.upstreams:
        if cfg.mode == "ingress-gateway" and is_http_like(u.protocol):
            ingress_http.setdefault(u.bind, []).append(u)  # one listener, its services told apart by Host
            continue
        # The snapshot key is part of it: an upstream that gains a twin (same service and datacenter) gets a new key.
        specs[("upstream", u, cfg.datacenter, upstream_key(u, cfg))] = u
    for ups in ingress_http.values():
        specs[("ingress-http", tuple(ups), cfg.datacenter, tuple(upstream_key(u, cfg) for u in ups))] = ups
    if cfg.expose or exposed_checks:
        from gateway.corespec import expose

        for port in expose.by_port(cfg, exposed_checks):
            specs[("expose", expose.bind_host(cfg), port)] = None
    return specs


class Providers:
    """Several certificate providers started and stopped as one."""

    def __init__(self, providers: list[Any]):
        self.providers = providers

    async def start(self) -> None:
        for p in self.providers:
            await p.start()

    async def stop(self) -> None:
        for p in self.providers:
            await p.stop()


class NoCertProvider:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Sidecar:
    def __init__(self, config: Config):
        self.config = config
        self.builder = SnapshotBuilder(config)
        self.holder = self.builder.holder
        self.templates: TemplateRunner | None = None
        # Decided by the file, before Consul's listeners fill the running config's upstreams.
        self._consul_field = consul_supplied(config)
        self.control_plane = self._make_control_plane(config)
        self.certs = self._make_certs(config)
        self.listeners: dict[tuple[Any, ...], Any] = {}
        # The Rust core serves every listener (gateway/dataplane.py); its stats are exported at scrape time.
        self.plane = dataplane.CoreDataPlane(self.holder, config)
        core_metrics.install(self.plane.core)
        # The console and operator endpoints (issue #16): what they read, and the maintenance state they set.
        self.maintenance = Maintenance()
        self.recent_errors = RecentErrors()
        logging.getLogger("meshgw").addHandler(self.recent_errors)
        self.console = ConsoleSource(
            config=lambda: self.config,
            holder=self.holder,
            core=self.plane.core,
            listeners=self._listener_infos,
            not_ready=self._not_ready,
            drain_listeners=self.drain_listeners,
            maintenance=self.maintenance,
            errors=self.recent_errors,
        )
        self.admin = self._make_admin(config)
        self.draining = False
        self._background: set[asyncio.Task[Any]] = set()
        self._listeners_lock = asyncio.Lock()
        self._from_consul: dict[str, Any] = {}  # the last value Consul supplied, per config field
        self._protocol_facts: ProtocolFacts | None = None  # what Consul last said about protocols
        self._exposed_checks: tuple[Any, ...] = ()  # the agent's exposed checks the listeners were made for
        self._serving = False  # listeners started: from then on exposed checks resync them
        self.holder.observers.append(self._on_snapshot)

    # ------------------------------------------------------------------ construction

    def _make_control_plane(self, cfg: Config) -> Any:
        """Catalog, intentions (and, with certificates.type consul, the leaf): async start()/stop()."""
        if cfg.control_plane.type == "consul":
            from connect.consul import ConsulControlPlane

            return ConsulControlPlane(
                cfg,
                self.builder,
                provide_certs=cfg.certificates.type == "consul",
                ready=self._ready,
                on_entry=self._on_consul_entry(self._consul_field) if self._consul_field else None,
                on_protocols=lambda facts: self._bg(self._set_protocol_facts(facts)),
            )
        return LocalControlPlane(
            cfg.control_plane.local, cfg.datacenter, self.builder.set_catalog, self.builder.set_intentions
        )

    def _on_consul_entry(self, field: str) -> Callable[[tuple[Any, ...]], None]:
        return lambda value: self._bg(self._set_from_consul(field, value))

    def _resolved(self, cfg: Config) -> Config:
        """``cfg`` with the protocols it leaves unset resolved from what Consul last said (gateway/config/protocol.py);
        without Consul, the loader has resolved them from the file's config entries."""
        if self._protocol_facts is None:
            return cfg
        new, warnings = self._protocol_facts.resolve(cfg)
        for line in warnings:
            log.warning("consul %s", line)
        return new

    async def _set_protocol_facts(self, facts: ProtocolFacts) -> None:
        """Consul's service-defaults, proxy-defaults, a discovery chain or the registration changed: the protocols
        are resolved again, and listeners whose protocol changed are served with the new one."""
        async with self._listeners_lock:
            self._protocol_facts = facts
            old = self.config
            new = self._resolved(old)
            if new == old:
                return
            if new.service.protocol != old.service.protocol:
                log.info("protocol of %s: %s (was %s)", new.service.name, new.service.protocol, old.service.protocol)
            for u, was in zip(new.upstreams, old.upstreams, strict=True):
                if u.protocol != was.protocol:
                    log.info("protocol of upstream %s: %s (was %s)", u.service, u.protocol, was.protocol)
            self.config = new
            self.plane.set_config(new)
            self.builder.reconfigure(new)
            await self._sync_listeners(new, strict=False)

    async def _set_from_consul(self, field: str, value: tuple[Any, ...]) -> None:
        """A gateway's Consul entry changed ``field`` (consul_supplied): a new config for the snapshot, the leaves
        and the listeners, kept across SIGHUP reloads (the file has none)."""
        async with self._listeners_lock:
            old = self.config
            if self._from_consul.get(field) == value:
                return
            self._from_consul[field] = value
            new = self._resolved(dataclasses.replace(old, **{field: value}))
            if _needs_new_certs(old, new):
                certs = self._make_certs(new)
                await certs.start()
                await self.certs.stop()
                self.certs = certs
            self.config = new
            self.plane.set_config(new)
            self.builder.reconfigure(new)
            await self._sync_listeners(new, strict=False)

    def _make_admin(self, cfg: Config) -> Admin:
        return Admin(
            cfg.admin.bind,
            self.holder,
            self._config_json,
            self._not_ready,
            console=self.console,
            allow_remote_maintenance=cfg.admin.allow_remote_maintenance,
        )

    def _listener_infos(self) -> list[ListenerInfo]:
        out = []
        for key, listener in self.listeners.items():
            kind = key[0]
            if kind == "inbound":
                protocol = self.config.service.protocol
            elif kind == "upstream":
                protocol = key[1].protocol
            elif kind == "ingress-http":
                kind, protocol = "ingress", "http"
            elif kind == "expose":  # Consul's Expose paths and checks, served plaintext by the core
                protocol = "http"
            else:
                protocol = "tcp"
            out.append(ListenerInfo(listener.name, kind, str(listener.bind), protocol))
        return out

    def drain_listeners(self, inbound_only: bool) -> list[str]:
        """POST /drain_listeners (Envoy's): stop accepting; open connections go on, /ready answers 503. The
        listeners stay stopped until the process restarts, as Envoy's do."""
        stopped = []
        for key, listener in self.listeners.items():
            if inbound_only and key[0] not in ("inbound", "mesh-gateway", "terminating-gateway"):
                continue
            if listener.name not in self.maintenance.drained:
                listener.stop_accepting()
                self.maintenance.drained.append(listener.name)
                stopped.append(listener.name)
        return stopped

    def _not_ready(self) -> str | None:
        if self.draining:
            return "draining"
        maintenance = self.maintenance.not_ready()
        if maintenance is not None:
            return maintenance
        waiting = getattr(self.control_plane, "waiting_for", None)
        return waiting() if waiting is not None else None

    def _ready(self) -> tuple[bool, str]:
        reason = self._not_ready()
        return (False, reason) if reason else self.holder.current.ready()

    def _make_certs(self, cfg: Config) -> Any:
        """The leaf-certificate provider: async start()/stop(), hands (trust domain, leaf, roots) to the builder. A
        terminating gateway also gets one leaf per linked service (Consul's watches them in its control plane)."""
        own = self._make_provider(cfg, cfg.service.name, self.builder.set_tls)
        if not cfg.linked_services or cfg.certificates.type == "consul":
            return own
        linked = [
            self._make_provider(cfg, ls.name, functools.partial(self.builder.set_linked_tls, ls.name))
            for ls in cfg.linked_services
        ]
        return Providers([own, *linked])

    def _make_provider(self, cfg: Config, service: str, on_tls: Any) -> Any:
        if cfg.certificates.type == "vault":
            from connect.vault import VaultCertProvider

            assert cfg.certificates.vault is not None
            # With Consul as control plane its roots are trusted too, so a move between CAs keeps working.
            return VaultCertProvider(
                cfg.certificates.vault,
                service,
                cfg.datacenter,
                on_tls,
                extra_roots_pem=lambda: self.builder.extra_roots,
            )
        if cfg.certificates.type == "consul":
            return NoCertProvider()  # the Consul control plane watches the leaf itself
        assert cfg.certificates.builtin is not None
        from connect.builtin_certs import BuiltinCertProvider

        return BuiltinCertProvider(cfg.certificates.builtin, service, cfg.datacenter, on_tls)

    def _make_listener(self, key: tuple[Any, ...], cfg: Config) -> dataplane.CoreListener:
        spec = corespec.listener_spec(cfg, self.holder.current, key)
        return dataplane.CoreListener(self.plane, key, spec["name"], spec["bind"])

    def _config_json(self) -> dict[str, Any]:
        return self.config.to_public_dict()

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        await self.certs.start()
        await self.control_plane.start()
        self.templates = await self._new_templates(self.config)
        async with self._listeners_lock:  # Consul may have changed the config (protocols, listeners) meanwhile
            self._exposed_checks = self.holder.current.exposed_checks
            for key in _listener_specs(self.config, self._exposed_checks):
                if key not in self.listeners:
                    await self._start_listener(key, self.config)
            self._serving = True
        try:
            await self.admin.start()
        except OSError as e:
            raise StartupError(
                f"{self.config.path}: admin.bind: cannot listen on {self.config.admin.bind}: {e.strerror or e}"
            ) from None
        log.info(
            "meshgw ready: service %s in %s, admin on %s:%s, %s",
            self.config.service.name,
            self.config.datacenter,
            self.config.admin.bind.host,
            self.admin.port,
            dataplane.describe(),
        )

    async def _start_listener(self, key: tuple[Any, ...], cfg: Config) -> None:
        listener = self._make_listener(key, cfg)
        try:
            await listener.start()
        except OSError as e:
            if key[0] == "expose":
                at = [n for n, p in enumerate(cfg.expose) if p.listener_port == key[2]]
                where = f"expose.paths[{at[0]}].listener_port" if at else "expose.checks"
            elif key[0] in ("inbound", "mesh-gateway", "terminating-gateway"):
                where = "inbound.bind" if key[0] == "inbound" else "gateway.bind"
            else:
                first = key[1][0] if key[0] == "ingress-http" else key[1]
                if cfg.mode == "ingress-gateway":  # an http listener with several services made several upstreams
                    where = f"listeners[{list(dict.fromkeys(u.bind for u in cfg.upstreams)).index(first.bind)}].bind"
                else:
                    where = f"upstreams[{cfg.upstreams.index(first)}].bind"
            raise StartupError(f"{cfg.path}: {where}: cannot listen on {listener.bind}: {e.strerror or e}") from None
        self.listeners[key] = listener

    async def shutdown(self) -> None:
        """Stop accepting, let open connections finish up to drain_timeout, then stop everything."""
        self.draining = True
        for listener in self.listeners.values():
            listener.stop_accepting()
        open_now = self.plane.core.open_connections()
        log.info("draining %d open connection(s) for up to %.0fs", open_now, self.config.drain_timeout)
        results = [await self.plane.drain(self.config.drain_timeout)]
        await self.plane.close()
        if sum(results):
            log.warning("drain timeout: closed %d connection(s) still open", sum(results))
        await self._stop_templates(self.templates)
        await self.certs.stop()
        await self.control_plane.stop()
        for t in list(self._background):
            t.cancel()
        await self.admin.stop()
        logging.getLogger("meshgw").removeHandler(self.recent_errors)
        log.info("stopped")

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Re-read the config file; a bad file is rejected and the running config keeps serving."""
        path = self.config.path
        try:
            new = load_config(path)
            check_files(new)
        except ConfigError as e:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            for line in e.problems:
                log.error("reload rejected: %s", line)
            return False
        was_field = self._consul_field
        self._consul_field = consul_supplied(new)
        if self._consul_field in self._from_consul:  # the file has none: Consul's stay
            new = dataclasses.replace(new, **{self._consul_field: self._from_consul[self._consul_field]})
        if new.control_plane.type == "consul":
            new = self._resolved(new)  # what Consul said last (a new control plane says it again)
        old = self.config
        try:
            await self._apply(old, new)
        except (ConfigError, StartupError) as e:
            self._consul_field = was_field
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            log.error("reload rejected: %s", e)
            return False
        if new.control_plane.type != "consul":
            self._protocol_facts = None
        metrics.CONFIG_RELOADS.labels("applied").inc()
        log.info("reloaded %s", path)
        return True

    async def _apply(self, old: Config, new: Config) -> None:
        if _needs_new_certs(old, new):
            certs = self._make_certs(new)
            await certs.start()
            await self.certs.stop()
            self.certs = certs
        if (
            new.control_plane != old.control_plane
            or new.datacenter != old.datacenter
            or new.service != old.service
            or new.upstreams != old.upstreams
            or new.inbound != old.inbound
            or new.certificates.type != old.certificates.type
        ):
            cp = self._make_control_plane(new)
            if new.control_plane.type == "consul" or old.control_plane.type == "consul":
                # Same service IDs in Consul: the old one deregisters before the new one registers.
                await self.control_plane.stop()
                self.control_plane = cp
                await cp.start()
            else:
                await cp.start()  # a broken file raises here and the running control plane stays
                await self.control_plane.stop()
                self.control_plane = cp
        if new != old:  # a runner renders from its config (meshgw.*, its control plane): a new one
            templates = await self._new_templates(new)  # a broken catalog raises here; the running one stays
            await self._stop_templates(self.templates)
            self.templates = templates
        elif self.templates is not None:
            self.templates.rerender_all()  # SIGHUP: the template files themselves may have changed
        self.config = new
        self.plane.set_config(new)
        self.builder.reconfigure(new)

        async with self._listeners_lock:
            await self._sync_listeners(new)
        if new.admin != old.admin:
            await self.admin.stop()
            self.admin = self._make_admin(new)
            await self.admin.start()

    def _on_snapshot(self, snap: Any) -> None:
        """The agent exposed or withdrew a check's port (Expose.Checks): listeners follow, in the background (a port
        that cannot be bound is logged; the others serve)."""
        if not self._serving or self.draining or snap.exposed_checks == self._exposed_checks:
            return
        self._exposed_checks = snap.exposed_checks

        async def resync() -> None:
            async with self._listeners_lock:
                await self._sync_listeners(self.config, strict=False)

        with contextlib.suppress(RuntimeError):  # no running loop: start() picks them up
            self._bg(resync())

    async def _sync_listeners(self, new: Config, strict: bool = True) -> None:
        """Stop the listeners ``new`` no longer has (they drain), start the ones it adds. ``strict``: a port that
        cannot be bound fails the change (a reload is rejected); otherwise it is logged and the others serve."""
        want = _listener_specs(new, self.holder.current.exposed_checks)
        for key in [k for k in self.listeners if k not in want]:
            listener = self.listeners.pop(key)
            listener.stop_accepting()
            self._bg(listener.drain(new.drain_timeout))
        for key in want:
            if key not in self.listeners:
                try:
                    await self._start_listener(key, new)
                except StartupError as e:
                    if strict:
                        raise
                    log.error("%s", e)

    async def _new_templates(self, cfg: Config) -> TemplateRunner | None:
        if not cfg.templates:
            return None
        from gateway.render import TemplateRunner

        runner = TemplateRunner(cfg, own_certs=False)
        await runner.start()
        self.builder.tls_listeners.append(runner.set_tls)
        if self.builder.tls_inputs is not None:
            runner.set_tls(*self.builder.tls_inputs)
        return runner

    async def _stop_templates(self, runner: TemplateRunner | None) -> None:
        if runner is not None:
            self.builder.tls_listeners.remove(runner.set_tls)
            await runner.stop()

    def _bg(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)


# ---------------------------------------------------------------------- entry point


def setup_logging(level: str, json_lines: bool = False) -> None:
    from gateway.logs import setup_logging as setup

    setup(level, json_lines)


async def serve(cfg: Config) -> int:
    sidecar = Sidecar(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before start: a SIGTERM that arrives once the first listener serves (start is not over yet) still drains
    # and exits 0 instead of killing the process.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await sidecar.start()
    except ConfigError as e:
        for line in e.problems:
            print(f"meshgw: {line}", file=sys.stderr)
        await sidecar.shutdown()
        return 2
    except StartupError as e:
        print(f"meshgw: {e}", file=sys.stderr)
        await sidecar.shutdown()
        return 1
    # What start-up built lives as long as the process: keep the collector from walking it again and
    # again, and let it run less often (the relay itself allocates almost no container objects).
    gc.collect()
    _release_heap()
    gc.freeze()
    gc.set_threshold(7000, 20, 50)
    reloading: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        sdnotify.reloading()
        t = loop.create_task(sidecar.reload())
        reloading.add(t)
        t.add_done_callback(reloading.discard)
        # READY=1 again whatever the outcome: a rejected reload keeps the running config serving.
        t.add_done_callback(lambda _: sdnotify.ready(f"serving {sidecar.config.service.name}"))

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    sdnotify.ready(f"serving {cfg.service.name}")
    await stop.wait()
    log.info("signal received: shutting down")
    sdnotify.stopping()
    await sidecar.shutdown()
    return 0


def _release_heap() -> None:
    """Start-up's garbage (config parsing, the first snapshots) goes back to the system: glibc keeps freed heap
    pages otherwise, about 1.3 MB of an idle sidecar's resident memory (issue #13). Not glibc: nothing to do."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def event_loop_runner() -> Any:
    """asyncio's own loop: since the Rust core carries every data-plane byte, the loop only runs the control plane
    (watches, leaf renewals, the admin port), and uvloop with libuv's thread pool was about 1.5 MB of resident
    memory per sidecar for no measurable gain there (issue #13, bench/rss_bench.py)."""
    return asyncio.run


def run(path: Path) -> int:
    try:
        cfg = load_config(path)
        check_files(cfg)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_json)
    from gateway.version import VERSION

    log.info("meshgw v%s starting with %s", VERSION, path)
    return int(event_loop_runner()(serve(cfg)))
