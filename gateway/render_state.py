"""The live mesh state that templates see, and where it comes from.

Templates read state through ``TemplateAPI`` (documented in templates/README.md): healthy instances of a
service, services by tag, intentions, this sidecar's certificate and CA-roots files, the datacenter, the
environment and Nomad's runtime variables. Every read is a *dependency* named by a hashable key, as in
consul-template's ``dependency/`` package: the renderer records the keys and values a template read, and
re-renders it only when one of those values changes (vault-nomad.md §5.2, CT:watch/view.go "identical data
causes no render").

Two sources feed the keys: the local control-plane files (catalog + intentions, the same files as
``control_plane.local``), or the Consul agent (``ConsulAPI`` one-shot reads for ``meshgw render --once``,
``blocking_watch`` loops otherwise). A key the source has not loaded yet is *missing*: the render that read it
is discarded and the key is fetched or watched, so a template is never written from half the data
(consul-template does the same with its "missing dependencies").
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from connect import consul_queries as queries
from connect.intentions import IntentionError, ServiceIntentions, parse_entries
from connect.leaf import Leaf
from connect.local import SourceError, WatchedFile, load_structured, parse_catalog, read_intentions
from connect.watch import WatchError, WatchHealth, blocking_watch
from gateway.config import Config, ConfigError, TemplateCertsConfig

log = logging.getLogger("meshgw.render")

DepKey = tuple[str, ...]
CERTS: DepKey = ("certs",)
INTENTIONS: DepKey = ("intentions",)
HEALTH_ORDER = queries.HEALTH_ORDER
# Keys a catalog instance may carry for templates besides the ones the sidecar's own parser knows.
INSTANCE_EXTRAS = ("id", "node", "tags", "meta")


class TemplateDataError(Exception):
    """A template asked for something that cannot exist (always an error, whatever error_on_missing_key says)."""


class Missing(Exception):
    """A dependency the source has not loaded yet."""

    def __init__(self, key: DepKey):
        super().__init__(describe(key))
        self.key = key


def describe(key: DepKey) -> str:
    kind = key[0]
    if kind in ("service", "connect"):
        return f"{kind}({key[1]!r}) in {key[2]}"
    if kind == "services":
        return f"services() in {key[1]}"
    if kind == "certs":
        return "certs (the leaf certificate and CA roots)"
    return kind


# --------------------------------------------------------------------------- values templates get


@dataclass(frozen=True)
class Instance:
    """One instance of a service: ``port`` is its own port (``service()``) or its mesh port (``connect()``)."""

    name: str
    id: str
    address: str
    port: int
    datacenter: str
    node: str = ""
    health: str = "passing"
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    weight: int = 1


@dataclass(frozen=True)
class ServiceSummary:
    name: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertInfo:
    """What templates know about this sidecar's TLS material: public facts and file paths, never the key itself."""

    trust_domain: str
    spiffe_id: str
    serial: str
    not_before: float
    not_after: float
    leaf_pem: str
    roots_pem: str
    dir: Path | None
    key_written: bool

    def _path(self, name: str, what: str) -> str:
        if self.dir is None:
            raise TemplateDataError(
                f"certs.{what}: meshgw writes no certificate files (set templates.certs_dir in the config)"
            )
        return str(self.dir / name)

    @property
    def leaf_file(self) -> str:
        return self._path("leaf.pem", "leaf_file")

    @property
    def roots_file(self) -> str:
        return self._path("roots.pem", "roots_file")

    @property
    def key_file(self) -> str:
        if not self.key_written:
            raise TemplateDataError("certs.key_file: the private key is not written (set templates.write_key: true)")
        return self._path("leaf.key", "key_file")

    @property
    def not_after_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after))


def _pending_certs() -> CertInfo:
    # What a template sees while the leaf is not there yet: the render is discarded anyway (see Missing).
    return CertInfo("", "", "", 0.0, 0.0, "", "", Path("/nonexistent"), True)


# --------------------------------------------------------------------------- certificate files


def write_file(path: Path, data: bytes, mode: int, fsync: bool) -> None:
    """Atomic replace with ``mode`` from the first byte (a key file is never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CertFileWriter:
    """Writes the current leaf (``leaf.pem``, chain included) and CA roots (``roots.pem``) into a directory, and
    ``leaf.key`` only when the config says so. Fed like ``SnapshotBuilder.set_tls``."""

    def __init__(self, cfg: TemplateCertsConfig | None):
        self.cfg = cfg
        self.info: CertInfo | None = None

    def set_tls(self, trust_domain: str, leaf: Leaf, roots_pem: bytes) -> CertInfo:
        cfg = self.cfg
        if cfg is not None:
            cfg.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            # Order matters for a reader that reloads on the leaf's change: key first, then leaf, roots last
            # (a new leaf may need a new root: the roots file gets both during a CA rotation anyway).
            if cfg.write_key:
                write_file(cfg.dir / "leaf.key", leaf.key_pem, 0o600, fsync=False)
            write_file(cfg.dir / "leaf.pem", leaf.cert_pem, 0o644, fsync=False)
            write_file(cfg.dir / "roots.pem", roots_pem, 0o644, fsync=False)
        self.info = CertInfo(
            trust_domain=trust_domain,
            spiffe_id=leaf.spiffe_id,
            serial=leaf.serial,
            not_before=leaf.not_before,
            not_after=leaf.not_after,
            leaf_pem=leaf.cert_pem.decode(),
            roots_pem=roots_pem.decode(),
            dir=Path(os.path.abspath(cfg.dir)) if cfg is not None else None,  # other processes read these paths
            key_written=bool(cfg and cfg.write_key),
        )
        return self.info


# --------------------------------------------------------------------------- the environment


class Env(Mapping[str, str]):
    """``env("NAME", "default")`` like consul-template's ``env`` (a missing variable is ""), or ``env.NAME`` /
    ``env["NAME"]``, which follow the template's missing-key rule."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = dict(environ)

    def __call__(self, name: str, default: str = "") -> str:
        return self._environ.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self._environ[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


class NomadEnv:
    """Nomad's runtime variables (vault-nomad.md §4.4, N:client/taskenv/env.go) under short names.

    ``present`` is false outside Nomad; then every other read is an error naming the variable, so a job
    template cannot silently render an empty port."""

    def __init__(self, environ: Mapping[str, str]):
        self._env = environ

    @property
    def present(self) -> bool:
        return bool(self._env.get("NOMAD_ALLOC_ID"))

    def var(self, name: str) -> str:
        value = self._env.get(name)
        if value is None or value == "":
            raise TemplateDataError(f"{name} is not set (is this running in a Nomad task with that port or name?)")
        return value

    @staticmethod
    def _clean(name: str) -> str:
        # Nomad cleans names for variables: '-' and other non-identifier characters become '_' (helper.CleanEnvVar).
        return "".join(c if c.isalnum() or c == "_" else "_" for c in name)

    # Allocation and task
    alloc_id = property(lambda self: self.var("NOMAD_ALLOC_ID"))
    short_alloc_id = property(lambda self: self.var("NOMAD_SHORT_ALLOC_ID"))
    alloc_name = property(lambda self: self.var("NOMAD_ALLOC_NAME"))
    alloc_index = property(lambda self: self.var("NOMAD_ALLOC_INDEX"))
    job_id = property(lambda self: self.var("NOMAD_JOB_ID"))
    job_name = property(lambda self: self.var("NOMAD_JOB_NAME"))
    group = property(lambda self: self.var("NOMAD_GROUP_NAME"))
    task = property(lambda self: self.var("NOMAD_TASK_NAME"))
    dc = property(lambda self: self.var("NOMAD_DC"))
    region = property(lambda self: self.var("NOMAD_REGION"))
    namespace = property(lambda self: self.var("NOMAD_NAMESPACE"))
    alloc_dir = property(lambda self: self.var("NOMAD_ALLOC_DIR"))
    task_dir = property(lambda self: self.var("NOMAD_TASK_DIR"))
    secrets_dir = property(lambda self: self.var("NOMAD_SECRETS_DIR"))

    # Ports: NOMAD_PORT_<label> is the port inside the namespace ("to"), the host_* forms the host's.
    def port(self, label: str) -> int:
        return int(self.var(f"NOMAD_PORT_{self._clean(label)}"))

    def host_port(self, label: str) -> int:
        return int(self.var(f"NOMAD_HOST_PORT_{self._clean(label)}"))

    def ip(self, label: str) -> str:
        return self.var(f"NOMAD_IP_{self._clean(label)}")

    def addr(self, label: str) -> str:
        return self.var(f"NOMAD_ADDR_{self._clean(label)}")

    def upstream_addr(self, name: str) -> str:
        return self.var(f"NOMAD_UPSTREAM_ADDR_{self._clean(name)}")

    def upstream_port(self, name: str) -> int:
        return int(self.var(f"NOMAD_UPSTREAM_PORT_{self._clean(name)}"))

    def meta(self, key: str, default: str | None = None) -> str:
        value = self._env.get(f"NOMAD_META_{key}")
        if value is None:
            if default is None:
                raise TemplateDataError(f"NOMAD_META_{key} is not set (no meta key {key!r} in the job)")
            return default
        return value


# --------------------------------------------------------------------------- sources


def _instances_sorted(items: Iterable[Instance]) -> tuple[Instance, ...]:
    # Consul does not keep an order (consul.md §4.1): sorting makes a reordered answer no change.
    return tuple(sorted(items, key=lambda i: (i.node, i.id, i.address, i.port)))


def parse_catalog_for_templates(data: Any, path: Path, default_dc: str) -> dict[str, tuple[Instance, ...]]:
    """The local catalog file with what templates may also want per instance (id, node, tags, meta).

    Validation of everything else is ``connect.local.parse_catalog``'s, on a copy without those keys, so the
    two readers of the file cannot disagree about what is valid."""
    if not isinstance(data, Mapping) or not isinstance(data.get("services"), Mapping):
        parse_catalog(data, path, default_dc)  # raises the sidecar's own message for a malformed file
        return {}
    stripped: dict[str, Any] = {}
    extras: dict[str, list[dict[str, Any]]] = {}
    for name, instances in data["services"].items():
        if not isinstance(instances, list):
            stripped[name] = instances
            continue
        stripped[name] = []
        extras[name] = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, Mapping):
                stripped[name].append(inst)
                extras[name].append({})
                continue
            ex = {k: inst[k] for k in INSTANCE_EXTRAS if k in inst}
            where = f"{path}: services.{name}[{i}]"
            if "tags" in ex and (
                not isinstance(ex["tags"], list) or not all(isinstance(t, str) and t for t in ex["tags"])
            ):
                raise SourceError(f"{where}.tags: expected a list of strings")
            if "meta" in ex and (
                not isinstance(ex["meta"], Mapping)
                or not all(isinstance(v, str | int | float) for v in ex["meta"].values())
            ):
                raise SourceError(f"{where}.meta: expected a mapping of strings")
            for k in ("id", "node"):
                if k in ex and (not isinstance(ex[k], str) or not ex[k]):
                    raise SourceError(f"{where}.{k}: expected a non-empty string")
            extras[name].append(ex)
            stripped[name].append({k: v for k, v in inst.items() if k not in INSTANCE_EXTRAS})
    endpoints = parse_catalog({"services": stripped}, path, default_dc)
    out: dict[str, tuple[Instance, ...]] = {}
    for name, eps in endpoints.items():
        insts = []
        for ep, ex in zip(eps, extras.get(name, []), strict=False):
            insts.append(
                Instance(
                    name=name,
                    id=str(ex.get("id") or f"{name}-{ep.address}-{ep.port}"),
                    address=ep.address,
                    port=ep.port,
                    datacenter=ep.datacenter,
                    node=str(ex.get("node") or ""),
                    health=ep.health,
                    tags=tuple(ex.get("tags") or ()),
                    meta=MappingProxyType({str(k): str(v) for k, v in (ex.get("meta") or {}).items()}),
                    weight=ep.weight,
                )
            )
        out[name] = _instances_sorted(insts)
    return out


class StateSource(abc.ABC):
    """Where dependency values come from. ``lookup`` raises Missing for a key not loaded yet."""

    @abc.abstractmethod
    def lookup(self, key: DepKey) -> Any: ...

    async def start(self, on_change: Callable[[], None]) -> None:
        """Load what can be loaded now and keep it current; call ``on_change`` after a change."""
        return None  # default: nothing to do

    async def stop(self) -> None:
        return None

    def want(self, keys: Iterable[DepKey]) -> None:
        """A render needed these keys: keep them current from now on."""
        return None  # default: nothing to do

    async def fetch(self, keys: Iterable[DepKey]) -> None:
        """One read of these keys now (``--once``); raises WatchError or SourceError."""
        return None  # default: nothing to do


class LocalSource(StateSource):
    """The local control-plane files. Everything is loaded up front, so only certs can be missing."""

    def __init__(self, config: Config, poll: bool = True):
        self.config = config
        self.poll = poll
        self.catalog: dict[str, tuple[Instance, ...]] = {}
        self.intentions: tuple[ServiceIntentions, ...] = ()
        self.files: list[WatchedFile[Any]] = []
        self._on_change: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        local = config.control_plane.local
        if local.catalog is not None:
            self.files.append(
                WatchedFile(
                    local.catalog,
                    lambda p: parse_catalog_for_templates(load_structured(p, _read(p)), p, config.datacenter),
                    self._set_catalog,
                    "catalog",
                    keeper="templates keep the last good data",
                    applied="templates render again",
                )
            )
        if local.intentions is not None:
            self.files.append(
                WatchedFile(
                    local.intentions,
                    read_intentions,
                    self._set_intentions,
                    "intentions",
                    keeper="templates keep the last good data",
                    applied="templates render again",
                )
            )

    def _set_catalog(self, catalog: dict[str, tuple[Instance, ...]]) -> None:
        self.catalog = catalog
        self._on_change()

    def _set_intentions(self, entries: tuple[ServiceIntentions, ...]) -> None:
        self.intentions = entries
        self._on_change()

    def lookup(self, key: DepKey) -> Any:
        kind = key[0]
        if kind in ("service", "connect"):
            # The local catalog lists mesh instances: the same set answers service() and connect().
            return tuple(i for i in self.catalog.get(key[1], ()) if i.datacenter == key[2])
        if kind == "services":
            return _summaries(self.catalog, key[1])
        if key == INTENTIONS:
            return self.intentions
        raise Missing(key)

    async def start(self, on_change: Callable[[], None]) -> None:
        problems = []
        for f in self.files:
            try:
                f.load_initial()
            except SourceError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError(problems)
        self._on_change = on_change
        if self.poll:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="render-local-files")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.control_plane.local.poll_interval)
            for f in self.files:
                f.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _summaries(catalog: Mapping[str, tuple[Instance, ...]], dc: str) -> tuple[ServiceSummary, ...]:
    out = []
    for name in sorted(catalog):
        insts = [i for i in catalog[name] if i.datacenter == dc]
        if insts:
            out.append(ServiceSummary(name, tuple(sorted({t for i in insts for t in i.tags}))))
    return tuple(out)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None


def instances_from_health(entries: Any, datacenter: str, connect: bool, wan: bool = False) -> tuple[Instance, ...]:
    """``/v1/health/service|connect/<name>`` (CheckServiceNode list) → instances with their aggregated health,
    decoded by connect.consul_queries as the sidecar's endpoints are (C:api/health.go AggregatedStatus)."""
    return _instances_sorted(
        [
            Instance(
                name=i.name,
                id=i.id,
                address=i.address,
                port=i.port,
                datacenter=i.node_datacenter or datacenter,
                node=i.node,
                health=i.health,
                tags=i.tags,
                meta=MappingProxyType(dict(i.meta)),
                weight=max(1, i.weight),
            )
            for i in queries.parse_health(entries, wan=wan, connect=connect)
        ]
    )


class ConsulSource(StateSource):
    """The Consul agent's HTTP API: a blocking watch per key once a template has read it (CT:watch/view.go)."""

    def __init__(self, config: Config):
        from connect.consul import ConsulAPI

        assert config.control_plane.consul is not None
        self.config = config
        self.api = ConsulAPI(config.control_plane.consul)
        self.health = WatchHealth()
        self.data: dict[DepKey, Any] = {}
        self.tasks: dict[DepKey, asyncio.Task[None]] = {}
        self._on_change: Callable[[], None] = lambda: None
        self._opened = False

    def lookup(self, key: DepKey) -> Any:
        if key in self.data:
            return self.data[key]
        raise Missing(key)

    async def _open(self) -> None:
        if not self._opened:
            await self.api.open()
            self._opened = True

    async def start(self, on_change: Callable[[], None]) -> None:
        await self._open()
        self._on_change = on_change

    async def stop(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        if self._opened:
            await self.api.close()
            self._opened = False

    def _query(self, key: DepKey) -> tuple[queries.Query, Callable[[Any], Any]]:
        """(query, decode) for a key: the same queries as the sidecar's (connect.consul_queries)."""
        kind = key[0]
        local_dc = self.config.datacenter
        if kind in ("service", "connect"):
            name, dc = key[1], key[2]
            return (
                queries.health(kind, name, dc, local_dc),
                lambda body: instances_from_health(body, dc, kind == "connect", wan=dc != local_dc),
            )
        if kind == "services":
            return (
                queries.catalog_services(key[1], local_dc),
                lambda body: tuple(
                    ServiceSummary(str(n), tuple(sorted(str(t) for t in (tags or ()))))
                    for n, tags in sorted((body or {}).items())
                ),
            )
        if key == INTENTIONS:
            return (
                queries.intentions(),
                lambda body: parse_entries(body or [], "consul /v1/config/service-intentions", from_server=True),
            )
        raise ValueError(f"no Consul query for {key}")

    def _store(self, key: DepKey, value: Any) -> None:
        if self.data.get(key, Missing) != value:
            self.data[key] = value
            self._on_change()

    def want(self, keys: Iterable[DepKey]) -> None:
        loop = asyncio.get_running_loop()
        for key in keys:
            if key == CERTS or key in self.tasks:
                continue
            self.tasks[key] = loop.create_task(self._watch(key), name=f"render-watch-{'-'.join(key)}")

    async def _watch(self, key: DepKey) -> None:
        q, decode = self._query(key)
        path = q.path

        async def fetch(index: int) -> tuple[int, Any]:
            return await q.fetch(self.api, index)

        def on_data(body: Any) -> None:
            try:
                value = decode(body)
            except (IntentionError, ValueError, TypeError, AttributeError) as e:
                log.error("consul %s: unusable answer (%s): keeping the last good data", path, e)
                return
            self._store(key, value)

        await blocking_watch(f"render {path}", fetch, on_data, self.health)

    async def fetch(self, keys: Iterable[DepKey]) -> None:
        await self._open()

        async def one(key: DepKey) -> None:
            q, decode = self._query(key)
            path = q.path
            _, body = await self.api.request("GET", path, q.params)
            try:
                self.data[key] = decode(body)
            except (IntentionError, ValueError, TypeError, AttributeError) as e:
                raise WatchError(f"GET {path}: unusable answer: {e}") from None

        await asyncio.gather(*(one(k) for k in keys if k != CERTS))


class ConsulCertWatch:
    """The leaf and roots from the Consul agent (certificates.type: consul) for ``meshgw render``, when no
    sidecar is there to hand them over (vault-nomad.md §3: a custom proxy takes its leaf from the agent)."""

    def __init__(self, config: Config, on_tls: Callable[[str, Leaf, bytes], None]):
        from connect.consul import ConsulAPI

        assert config.control_plane.consul is not None
        self.config = config
        self.api = ConsulAPI(config.control_plane.consul)
        self.on_tls = on_tls
        self.health = WatchHealth()
        self.tasks: list[asyncio.Task[None]] = []
        self._leaf: Leaf | None = None
        self._roots: tuple[str, bytes] | None = None

    async def start(self) -> None:
        from connect.consul import leaf_from_consul, roots_pem_from_consul

        await self.api.open()
        loop = asyncio.get_running_loop()

        def on_leaf(body: Any) -> None:
            try:
                self._leaf = leaf_from_consul(body or {})
            except (KeyError, ValueError) as e:
                log.error("consul leaf certificate unusable (%s)", e)
                return
            self._publish()

        def on_roots(body: Any) -> None:
            body = body or {}
            td, pem = str(body.get("TrustDomain") or "").lower(), roots_pem_from_consul(body)
            if td and pem:
                self._roots = (td, pem)
                self._publish()

        for q, cb in ((queries.leaf(self.config.service.name), on_leaf), (queries.roots(), on_roots)):

            async def fetch(index: int, q: queries.Query = q) -> tuple[int, Any]:
                return await q.fetch(self.api, index)

            self.tasks.append(loop.create_task(blocking_watch(f"render {q.path}", fetch, cb, self.health)))

    def _publish(self) -> None:
        if self._leaf is not None and self._roots is not None:
            self.on_tls(self._roots[0], self._leaf, self._roots[1])

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.api.close()


def make_source(config: Config, poll: bool = True) -> StateSource:
    if config.control_plane.type == "consul":
        return ConsulSource(config)
    return LocalSource(config, poll=poll)


# --------------------------------------------------------------------------- what a template reads


@dataclass
class Reads:
    """The dependencies one render read, with the values it saw, and those that were missing."""

    values: dict[DepKey, Any] = field(default_factory=dict)
    missing: set[DepKey] = field(default_factory=set)


class MeshState:
    """Answers dependency keys from the source, plus the certificate facts handed in by ``set_tls``."""

    def __init__(self, source: StateSource):
        self.source = source
        self.certs: CertInfo | None = None

    def peek(self, key: DepKey) -> Any:
        """The current value, or the Missing class itself when there is none (for change detection)."""
        try:
            return self.get(key)
        except Missing:
            return Missing

    def get(self, key: DepKey) -> Any:
        if key == CERTS:
            if self.certs is None:
                raise Missing(key)
            return self.certs
        return self.source.lookup(key)


_HEALTH_FILTERS = {"passing": ("passing",), "any": ("passing", "warning", "critical")}


def _health_filter(health: str) -> tuple[str, ...]:
    if health in _HEALTH_FILTERS:
        return _HEALTH_FILTERS[health]
    states = tuple(s.strip() for s in health.split(","))
    bad = [s for s in states if s not in HEALTH_ORDER]
    if bad:
        raise TemplateDataError(f"health={health!r}: expected passing, any, or a list such as 'passing,warning'")
    return states


class TemplateAPI:
    """The names a template sees (templates/README.md documents them; keep the two in step)."""

    def __init__(self, config: Config, state: MeshState, environ: Mapping[str, str]):
        self._config = config
        self._state = state
        self._reads = Reads()
        self.env = Env(environ)
        self.nomad = NomadEnv(environ)

    def globals(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "connect": self.connect,
            "services": self.services,
            "intentions": self.intentions,
            "certs": _CertsProxy(self),
            "datacenter": self._config.datacenter,
            "meshgw": _meshgw_facts(self._config),
            "env": self.env,
            "nomad": self.nomad,
        }

    def begin(self) -> Reads:
        self._reads = Reads()
        return self._reads

    def _get(self, key: DepKey, empty: Any) -> Any:
        try:
            value = self._state.get(key)
        except Missing:
            self._reads.missing.add(key)
            return empty
        self._reads.values[key] = value
        return value

    def _dc(self, dc: str | None) -> str:
        return dc or self._config.datacenter

    def service(self, name: str, tag: str | None = None, dc: str | None = None, health: str = "passing") -> list[Any]:
        """Instances of ``name`` (passing only by default, as consul-template's ``service``), optionally with a tag."""
        states = _health_filter(health)
        insts = self._get(("service", str(name), self._dc(dc)), ())
        return [i for i in insts if i.health in states and (tag is None or tag in i.tags)]

    def connect(self, name: str, dc: str | None = None, health: str = "passing") -> list[Any]:
        """Mesh-capable instances of ``name`` (its sidecars' addresses and mesh ports)."""
        states = _health_filter(health)
        return [i for i in self._get(("connect", str(name), self._dc(dc)), ()) if i.health in states]

    def services(self, tag: str | None = None, dc: str | None = None) -> list[Any]:
        """Every service in the catalog (name, tags), or those with ``tag``."""
        return [s for s in self._get(("services", self._dc(dc)), ()) if tag is None or tag in s.tags]

    def intentions(self, destination: str | None = None) -> list[dict[str, Any]]:
        """``service-intentions`` entries in Consul's JSON shape, all of them or the one for ``destination``."""
        entries = self._get(INTENTIONS, ())
        return [e.to_json() for e in entries if destination is None or e.name == destination]

    def certs(self) -> CertInfo:
        return self._get(CERTS, _pending_certs())  # type: ignore[no-any-return]


class _CertsProxy:
    """``certs.leaf_file`` and friends: reading any attribute is the dependency on the certificate."""

    def __init__(self, api: TemplateAPI):
        self._api = api

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._api.certs(), name)


def _meshgw_facts(cfg: Config) -> Mapping[str, Any]:
    """This sidecar's own settings, as plain values (never a token or a key path)."""
    import shutil
    import sys

    # The meshgw of this very installation (the venv it runs from), else the one on PATH.
    sibling = Path(sys.executable).with_name("meshgw")
    exe = str(sibling) if sibling.exists() else (shutil.which("meshgw") or "meshgw")
    ports = [u.bind.port for u in cfg.upstreams] + [cfg.admin.bind.port]
    if cfg.inbound is not None:
        ports.append(cfg.inbound.bind.port)
    writable = sorted({str(t.destination.parent) for t in cfg.templates})
    if cfg.template_certs is not None:
        writable.append(str(cfg.template_certs.dir))
    if cfg.certificates.builtin is not None:
        writable.append(str(cfg.certificates.builtin.dir))
    vault = cfg.certificates.vault
    if vault is not None and vault.write_key_to is not None:
        writable.append(str(vault.write_key_to.parent))
    if cfg.access_log.enabled and cfg.access_log.type == "file" and cfg.access_log.path is not None:
        writable.append(str(cfg.access_log.path.parent))
    return MappingProxyType(
        {
            "config_file": str(cfg.path.resolve()),
            "executable": exe,
            "datacenter": cfg.datacenter,
            "mode": cfg.mode,
            "service": MappingProxyType(
                {
                    "name": cfg.service.name,
                    "id": cfg.service.id,
                    "address": cfg.service.address,
                    "port": cfg.service.port,
                    "protocol": cfg.service.protocol,
                    # False: Consul's entries resolved it; a registration then leaves it to them (README "Protocols").
                    "protocol_explicit": cfg.service.protocol_explicit,
                }
            ),
            "inbound": None
            if cfg.inbound is None
            else MappingProxyType({"address": cfg.inbound.bind.host, "port": cfg.inbound.bind.port}),
            "upstreams": tuple(
                MappingProxyType(
                    {
                        "service": u.service,
                        "datacenter": u.datacenter or cfg.datacenter,
                        "address": u.bind.host,
                        "port": u.bind.port,
                        "protocol": u.protocol,
                        "protocol_explicit": u.protocol_explicit,
                    }
                )
                for u in cfg.upstreams
            ),
            "admin": MappingProxyType({"address": cfg.admin.bind.host, "port": cfg.admin.bind.port}),
            "drain_timeout": cfg.drain_timeout,
            "linked_services": tuple(ls.name for ls in cfg.linked_services),
            "registers": bool(cfg.control_plane.consul is not None and cfg.control_plane.consul.register),
            "control_plane": cfg.control_plane.type,
            "certificates": cfg.certificates.type,
            # For a systemd unit: binding a port below 1024 is the only capability meshgw ever needs.
            "privileged_ports": tuple(sorted(p for p in set(ports) if 0 < p < 1024)),
            "writable_dirs": tuple(dict.fromkeys(os.path.abspath(d) for d in writable)),  # systemd wants absolute
        }
    )
