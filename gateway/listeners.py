"""Inbound and upstream listeners: two different stacks, as in linkerd2-proxy.

Inbound: accept → mTLS handshake with the snapshot's server context → SPIFFE identity → intentions
→ connect to the local app → relay. Nothing reaches the app before the caller is authorized. With
``protocol: http`` the intentions are evaluated per request (L7) and requests go over pooled
keep-alive connections to the app.

Upstream: accept plaintext from the local app → pick a healthy endpoint → mTLS with Consul's SNI →
check the server's SPIFFE ID → relay. With ``protocol: http`` each request goes through the upstream's
compiled discovery chain (route → split → cluster), a load balancer, circuit breakers, retries and
outlier detection (``gateway.http.outbound``) over pooled mTLS connections.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway import metrics
from gateway.config import Address, Config, UpstreamConfig
from gateway.http import native_http
from gateway.http.flow import FlowSide, FlowTLSSide
from gateway.http.headers import render_request_head
from gateway.http.native_http import HttpConn, NativeExchange
from gateway.http.outbound import Call, ClusterRuntime, code_class
from gateway.http.pool import ConnectionPool
from gateway.http.proxy import ClientConnection, Exchange, ServerConnection
from gateway.http.stats import Observer, incrementer
from gateway.l4 import Relay, Side, TLSSide
from gateway.snapshot import Endpoint, Snapshot, SnapshotHolder, TLSState, UpstreamView, upstream_key
from gateway.tls import PeerIdentity, handshake_failure_reason, peer_identity

log = logging.getLogger("meshgw.listener")
HANDSHAKE_TIMEOUT = 10.0
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, ConnectionError)
MAX_CONNECT_ATTEMPTS = 3
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
TICK = 0.05  # request deadlines are checked this often


class DialError(Exception):
    def __init__(self, reason: str, detail: str, timeout: bool = False):
        super().__init__(detail)
        self.reason = reason
        self.timeout = timeout


class _Detached:
    """Owner of a side being dialled before anything else owns it: its loss concerns nobody yet."""

    def side_lost(self, side: Side) -> None:
        return None

    def close(self) -> None:
        return None


async def dial_endpoint(
    owner: object,
    tls: TLSState,
    view: Any,
    ep: Endpoint,
    timeout: float,
    side_cls: type[TLSSide] = TLSSide,
) -> TLSSide:
    """TCP + mTLS to one endpoint, with Consul's SNI, and the server's SPIFFE ID checked.

    ``view`` is anything with ``sni`` and ``expected_uri``: an UpstreamView or an HTTP cluster."""
    loop = asyncio.get_running_loop()
    side = side_cls(
        owner,  # type: ignore[arg-type]
        tls.client_ctx,
        server_side=False,
        server_hostname=view.sni,
        handshake_timeout=HANDSHAKE_TIMEOUT,
    )
    try:
        await asyncio.wait_for(loop.create_connection(lambda: side, ep.address, ep.port), timeout)
    except TimeoutError:
        raise DialError("connect_failed", f"cannot connect to {ep.address}:{ep.port}: timed out", True) from None
    except CONNECT_ERRORS as e:
        raise DialError(
            "connect_failed", f"cannot connect to {ep.address}:{ep.port}: {e or type(e).__name__}"
        ) from None
    try:
        await side.handshake
    except (ssl.SSLError, *CONNECT_ERRORS) as e:
        side.abort()
        raise DialError(
            "tls_failed", f"TLS with {ep.address}:{ep.port} failed: {getattr(e, 'reason', None) or e}"
        ) from None
    peer = peer_identity(side.peercert())
    if peer.uri != view.expected_uri:
        side.abort()
        raise DialError(
            "identity_mismatch", f"{ep.address}:{ep.port} presented {peer.uri}, expected {view.expected_uri}"
        )
    _nodelay(side.transport)  # type: ignore[arg-type]
    return side


async def connect_any(
    eps: tuple[Endpoint, ...],
    start: int,
    make_side: Callable[[Endpoint], Side],
    timeout: float,
    gone: Callable[[], bool],
    errors: Mapping[str, Any],
) -> tuple[Side | None, str]:
    """The gateways' dial: up to MAX_CONNECT_ATTEMPTS endpoints round robin from ``start``, a fresh side per
    attempt (a TLS side also finishes its handshake). Failures are counted in ``errors`` by reason. Returns the
    connected side, or None and the last failure (also None when ``gone()``: the caller left meanwhile)."""
    loop = asyncio.get_running_loop()
    last = "no endpoint"
    for i in range(min(MAX_CONNECT_ATTEMPTS, len(eps))):
        if gone():
            return None, "the caller left"
        ep = eps[(start + i) % len(eps)]
        side = make_side(ep)

        async def open_side(side: Side = side, ep: Endpoint = ep) -> None:
            await loop.create_connection(lambda: side, ep.address, ep.port)
            if isinstance(side, TLSSide):
                await side.handshake

        try:
            await asyncio.wait_for(open_side(), timeout)
        except ssl.SSLError as e:
            errors["tls_failed"].inc()
            side.abort()
            last = f"TLS with {ep.address}:{ep.port} failed: {getattr(e, 'reason', None) or e}"
            continue
        except CONNECT_ERRORS as e:
            errors["connect_failed"].inc()
            side.abort()
            last = f"cannot connect to {ep.address}:{ep.port}: {e or type(e).__name__}"
            continue
        _nodelay(side.transport)  # type: ignore[arg-type]
        return side, ""
    return None, last


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


_NO_DROP: frozenset[bytes] = frozenset()


class Listener(abc.ABC):
    """What both stacks share: the listening socket, the set of open relays, drain."""

    name = "listener"

    def __init__(self, bind: Address, holder: SnapshotHolder):
        self.bind = bind
        self.holder = holder
        self.server: asyncio.AbstractServer | None = None
        self.relays: set[Relay] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.m_accepted = metrics.CONNECTIONS_ACCEPTED.labels(self.name)
        self.m_active = metrics.CONNECTIONS_ACTIVE.labels(self.name)
        self.m_rx = metrics.BYTES_RECEIVED.labels(self.name)
        self.m_tx = metrics.BYTES_SENT.labels(self.name)
        self.m_status = {c: metrics.HTTP_RESPONSES.labels(self.name, c) for c in STATUS_CLASSES}
        self.m_latency = metrics.HTTP_DURATION.labels(self.name)
        self._status_inc = [incrementer(self.m_status[c]) for c in STATUS_CLASSES]
        self._latency = Observer(self.m_latency).observe
        self.m_timeouts = {k: metrics.HTTP_TIMEOUTS.labels(self.name, k) for k in metrics.TIMEOUT_KINDS}
        self.pool = ConnectionPool()
        self.request_timeout = 15.0
        self.idle_timeout = 3600.0
        self.http = False
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None

    def _on_response(self, ex: Exchange | None, status: int) -> None:
        self._status_inc[min(max(status // 100, 1), 5) - 1]()
        if ex is not None:
            self._latency(time.monotonic() - ex.started)

    def _native_finished(self, ex: NativeExchange, status: int) -> None:
        """An exchange of the native engine is over (gateway/http/native_http.py): what ``_on_response`` and
        ``on_done`` do for the Python proxy's."""
        if status:
            self._status_inc[min(max(status // 100, 1), 5) - 1]()
            self._latency((ex.head_time or time.monotonic()) - ex.started)
        self._done(ex)

    def _done(self, ex: Any) -> None:
        return None

    def _serve_native(
        self,
        side: Side,
        ip: str,
        on_request: Callable[[Any, bytes | None, bytes | None], Any],
        python_server: Callable[[Side], None],
        **attrs: Any,
    ) -> Any:
        """An accepted HTTP connection to the native engine, tracked and started; ``python_server`` serves it if
        the engine hands it back. None: the engine is off or cannot take it (the caller serves it in Python)."""
        if not native_http.enabled():
            return None
        native = native_http.serve(
            side,
            ip,
            on_request,
            lambda c, fd: native_http.fallback(self, c, fd, lambda s, _t: python_server(s)),
            self._closed,  # type: ignore[arg-type]
        )
        if native is not None:
            for k, v in attrs.items():
                setattr(native, k, v)
            self._track(native)
            native.start()
        return native

    def _request_timeout(self, ex: Exchange) -> None:
        ex.deadline = 0.0
        self.m_timeouts["request"].inc()
        ex.flags = "UT"
        ex.upstream_failed(504, "upstream request timeout")

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, self.bind.host, self.bind.port, backlog=1024, reuse_address=True
        )
        if self.http:
            self._sweeper = loop.create_task(self._sweep_loop())
            self._ticker = loop.call_later(TICK, self._tick)
        log.info("%s listening on %s", self.name, self.bind)

    @abc.abstractmethod
    def _protocol(self) -> asyncio.Protocol:
        """The accept protocol: each stack (inbound, upstream) supplies its own."""

    def _track(self, relay: Relay) -> None:
        if self.draining:
            drain = getattr(relay, "drain", None)
            if drain is not None:
                asyncio.get_running_loop().call_soon(drain)  # set up during shutdown: idle, so closed
        self.relays.add(relay)
        self._idle.clear()
        self.m_active.inc()

    def _closed(self, relay: Relay) -> None:
        if relay not in self.relays:
            return  # refused before it was tracked
        self.relays.discard(relay)
        self.m_active.dec()
        rx, tx = relay.counts()
        if rx:
            self.m_rx.inc(rx)
        if tx:
            self.m_tx.inc(tx)
        if not self.relays and not self.tasks:
            self._idle.set()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: connection setup failed: %r", self.name, task.exception())
        if not self.relays and not self.tasks:
            self._idle.set()

    # -- periodic work (HTTP): request deadlines, idle keep-alive connections, pools, outlier detection

    def _tick(self) -> None:
        """Request timeouts: one timer for the listener instead of one per request (a timer per request cost more
        than the rest of the request bookkeeping). Deadlines are met within TICK."""
        now = time.monotonic()
        for conn in list(self.relays):
            if type(conn) is HttpConn:
                deadline = conn.deadline
                if deadline and deadline <= now and conn.token is not None:
                    self._request_timeout(conn.token)
                continue
            queue = getattr(conn, "queue", None)
            if queue:
                ex = queue[0]
                if ex.deadline and ex.deadline <= now and ex.response_status is None:
                    self._request_timeout(ex)
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _sweep_period(self) -> float:
        return max(0.05, min(1.0, self.idle_timeout / 4))

    async def _sweep_loop(self) -> None:
        period = self._sweep_period()
        while True:
            await asyncio.sleep(period)
            try:
                self._sweep(time.monotonic())
            except Exception:  # a bug here must not stop the sweeps
                log.exception("%s: sweep failed", self.name)

    def _sweep(self, now: float) -> None:
        before = now - self.idle_timeout
        for conn in list(self.relays):
            if isinstance(conn, (ServerConnection, HttpConn)) and conn.idle() and conn.idle_since < before:
                self.m_timeouts["idle"].inc()
                conn.close()
        self.pool.close_idle(before)

    def _close_pools(self) -> None:
        self.pool.close()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, timeout: float) -> int:
        """Wait for open connections to finish; abort what is left after ``timeout``. Returns aborted count."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._close_pools()  # idle keep-alive connections to upstreams have nothing left to finish
        for conn in list(self.relays):
            drain = getattr(conn, "drain", None)
            if drain is not None:
                drain()  # HTTP: close idle keep-alive connections now, busy ones after their answer
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return 0
        except TimeoutError:
            left = len(self.relays)
            for t in list(self.tasks):
                t.cancel()
            for r in list(self.relays):
                r.abort()
            self._close_pools()
            return left
        finally:
            if self._ticker is not None:  # kept until now: requests finishing during the drain have deadlines too
                self._ticker.cancel()
                self._ticker = None


async def authenticated_peer(
    side: TLSSide, trust_domain: str, deny: Callable[[str, str], None]
) -> PeerIdentity | None:
    """The mTLS handshake of an accepted connection and the caller's SPIFFE service identity in our trust domain;
    None when refused (the connection aborted and ``deny(reason, detail)`` told)."""
    try:
        await side.handshake
    except (ssl.SSLError, *CONNECT_ERRORS) as e:
        side.abort()
        deny(handshake_failure_reason(e), f"TLS handshake failed: {getattr(e, 'reason', None) or e}")
        return None
    peer = peer_identity(side.peercert())
    if peer.service is None:
        side.abort()
        deny("no_spiffe_id", f"peer certificate has no service SPIFFE ID ({peer.uri})")
        return None
    if peer.service.trust_domain != trust_domain:
        side.abort()
        deny("foreign_trust_domain", f"{peer.uri} is not in trust domain {trust_domain}")
        return None
    return peer


class InboundListener(Listener):
    name = "inbound"

    def __init__(self, config: Config, holder: SnapshotHolder):
        assert config.inbound is not None
        super().__init__(config.inbound.bind, holder)
        self.app_host = config.service.address
        self.app_port = config.service.port
        self.app_label = f"{self.app_host}:{self.app_port}"
        self.http = config.service.protocol == "http"
        self.connect_timeout = config.inbound.connect_timeout
        self.request_timeout = config.inbound.request_timeout
        self.idle_timeout = config.inbound.idle_timeout
        self.m_denied = {r: metrics.CONNECTIONS_DENIED.labels(self.name, r) for r in metrics.DENY_REASONS}
        self.m_http_denied = metrics.HTTP_DENIED.labels(self.name, "intention")
        self.m_app_error = metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, "connect_failed")

    def _protocol(self) -> asyncio.Protocol:
        # The snapshot is read once per connection, here: the TLS context (leaf, roots) it was
        # accepted with stays with it even if a rotation happens during the handshake.
        snap = self.holder.current
        relay = Relay(on_close=self._closed)
        tls = snap.tls
        if tls is None or not tls.valid():
            # Fail closed: without a valid leaf there is no mTLS, and there is never plaintext.
            relay.down.on_made = lambda transport: self._refuse_not_ready(transport)
            return relay.down
        side = (FlowTLSSide if self.http else TLSSide)(
            relay, tls.server_ctx, server_side=True, handshake_timeout=HANDSHAKE_TIMEOUT
        )
        relay.down = side
        side.on_made = lambda transport: self._spawn(self._serve(relay, side, snap))
        return side

    def _refuse_not_ready(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
        self._deny("not_ready", "no valid leaf certificate")

    def _deny(self, reason: str, detail: str) -> None:
        self.m_denied[reason].inc()
        log.info("inbound: denied %s: %s", reason, detail)

    async def _serve(self, relay: Relay, side: TLSSide, snap: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        assert snap.tls is not None
        peer = await authenticated_peer(side, snap.tls.trust_domain, self._deny)
        if peer is None or peer.service is None:
            return
        if side.lost:
            return
        _nodelay(side.transport)  # type: ignore[arg-type]
        if self.http:
            # Intentions per request (L7): an L4 intention still decides every request of the caller.
            self._serve_http(side, peer.service.service, peer.service.namespace, snap)
            return
        decision = snap.intentions.authorize_l4(peer.service.service, peer.service.namespace)
        if not decision.allowed:
            side.abort()
            self._deny("intention", f"{peer.uri}: {decision.reason}")
            return
        self._track(relay)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: relay.up, self.app_host, self.app_port), self.connect_timeout
            )
        except CONNECT_ERRORS as e:
            self.m_app_error.inc()
            log.warning("inbound: cannot reach the local app at %s:%s: %s", self.app_host, self.app_port, e)
            relay.abort()
            return
        _nodelay(relay.up.transport)  # type: ignore[arg-type]
        self.m_accepted.inc()
        relay.start()

    # ------------------------------------------------------------------ HTTP

    def _serve_http(self, side: TLSSide, source: str, source_ns: str, snap: Snapshot) -> None:
        peer = side.transport.get_extra_info("peername") if side.transport else None
        ip = peer[0] if peer else ""
        self.m_accepted.inc()
        native = self._serve_native(
            side,
            ip,
            lambda c, method, url: self._native_request(c, method, url, source, source_ns),
            lambda s: self._http_server(s, ip, source, source_ns, snap),
            source=source,  # for access logs
        )
        if native is None:
            self._http_server(side, ip, source, source_ns, snap)

    def _http_server(self, side: Side, ip: str, source: str, source_ns: str, snap: Snapshot) -> None:
        conn = ServerConnection(
            side,
            handle=lambda ex: self._request(conn, ex, source, source_ns, snap),
            on_response=self._on_response,
            on_close=self._closed,  # type: ignore[arg-type]
            peer_ip=ip,
            on_done=self._done,
        )
        conn.source = source  # type: ignore[attr-defined]  # for access logs
        self._track(conn)  # type: ignore[arg-type]
        side.set_sink(conn.feed)

    def _native_request(self, conn: Any, method: bytes | None, url: bytes | None, source: str, source_ns: str) -> Any:
        """A request on a connection the native engine serves: the intention decides, the app gets it."""
        if method is None or url is None:
            self._on_response(None, 400)  # malformed: the engine answers 400
            return None
        ex = NativeExchange(conn, method, url, self)
        try:
            self._native_decide(conn, ex, method, url, source, source_ns)
        except Exception:
            log.exception("inbound: request handling failed")
            ex.upstream_failed(500, "internal error")  # answered: the accounting still runs
        return ex

    def _native_decide(
        self, conn: Any, ex: NativeExchange, method: bytes, url: bytes, source: str, source_ns: str
    ) -> None:
        snap = self.holder.current
        path = url.split(b"?", 1)[0].decode("latin-1")
        # The raw (name, value) list, fetched by the core's table only if some permission reads a header.
        decision = snap.intentions.authorize_http(source, method.decode("latin-1"), path, conn.headers, source_ns)
        if not decision.allowed:
            self.m_http_denied.inc()
            log.info("inbound: denied %s %s from %s: %s", method.decode("latin-1"), path, source, decision.reason)
            ex.flags = "RBAC"
            conn.respond(403, f"RBAC: access denied ({decision.reason})")
            return
        if snap.access_log is not None:
            ex.info = []
        conn.prepare(None, b"", None, b"", None, False, False)
        conn.arm_timeout(self.request_timeout)
        client = self.pool.take(None, True)
        if client is not None:
            ex.attach(client)
        else:
            self._spawn(self._open_app(ex, None))

    def _request(self, conn: ServerConnection, ex: Exchange, source: str, source_ns: str, snap: Snapshot) -> Any:
        # Per request (design.md): an intention change applies to the next request of a kept-alive connection too.
        snap = self.holder.current
        path = ex.url.split(b"?", 1)[0].decode("latin-1")
        # Raw bytes as received: the core joins repeated names with "," and matches bytes (l7-security.md §2.3).
        decision = snap.intentions.authorize_http(source, ex.method.decode("latin-1"), path, ex.headers, source_ns)
        if not decision.allowed:
            self.m_http_denied.inc()
            log.info("inbound: denied %s %s from %s: %s", ex.method.decode(), path, source, decision.reason)
            ex.flags = "RBAC"
            conn.local_response(ex, 403, f"RBAC: access denied ({decision.reason})")
            return None
        if snap.access_log is not None:
            ex.info = []
        head = render_request_head(
            ex.method, ex.url, ex.headers, ex.chunked, ex.upgrade, conn.peer_ip, b"", _NO_DROP, ex.info
        )
        ex.arm_timeout(self.request_timeout)
        client = self.pool.take(None)
        if client is not None:
            ex.attach(client, head)
            return None
        return self._open_app(ex, head)

    async def _open_app(self, ex: Exchange | NativeExchange, head: bytes | None) -> None:
        """A new connection to the local app for ``ex``: one of the native engine's for its exchanges."""
        loop = asyncio.get_running_loop()
        side = FlowSide(_Detached())  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: side, self.app_host, self.app_port), self.connect_timeout
            )
            _nodelay(side.transport)  # type: ignore[arg-type]
            client = await native_http.upstream(side, None) if ex.native else ClientConnection(side, None)
        except CONNECT_ERRORS as e:
            self.m_app_error.inc()
            if isinstance(e, TimeoutError):
                self.m_timeouts["connect"].inc()
            log.warning("inbound: cannot reach the local app at %s:%s: %s", self.app_host, self.app_port, e)
            ex.flags = "UF"
            ex.upstream_failed(503, "upstream connect error")
            return
        self.pool.add(client)
        if ex.native:
            client.start()
        if ex.server.closed or ex.response_status is not None:
            self.pool.release(client)  # the caller left (or timed out) meanwhile: keep it for the next one
            return
        ex.attach(client, head)

    def _done(self, ex: Exchange) -> None:
        alog = self.holder.current.access_log
        if alog is not None:
            alog.log(
                alog.record(
                    ex,
                    self.name,
                    cluster="local_app",
                    host=self.app_label,
                    source=getattr(ex.server, "source", ""),
                    flags=ex.flags or ("DC" if not ex.response_status else ""),
                )
            )


class UpstreamListener(Listener):
    def __init__(self, config: Config, upstream: UpstreamConfig, holder: SnapshotHolder, name: str = ""):
        self.name = name or f"upstream:{upstream.service}"
        super().__init__(upstream.bind, holder)
        self.key = upstream_key(upstream, config)
        self.upstream = upstream
        self.source = config.service.name
        self.http = upstream.protocol == "http"
        self.connect_timeout = upstream.connect_timeout
        self.request_timeout = upstream.request_timeout
        self.idle_timeout = upstream.idle_timeout
        self._rr = 0
        self.m_err = {r: metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, r) for r in metrics.UPSTREAM_ERRORS}
        self.clusters: dict[str, ClusterRuntime] = {}
        self._route_metrics: dict[str, tuple[dict[str, Any], Any]] = {}
        self.retries = upstream.retries
        self._snap: Snapshot | None = None
        self._tls: TLSState | None = None
        self._tls_window = (1.0, 0.0)
        self._chain: Any = None
        self._observe = False
        # Ingress HTTP listeners: (Host matcher, chain) per service, set per snapshot; None: one service, any Host.
        self._vhosts: list[tuple[Callable[[bytes], bool], Any]] | None = None

    def _protocol(self) -> asyncio.Protocol:
        if self.http:
            side = FlowSide(_Detached())  # type: ignore[arg-type]
            side.on_made = lambda transport: self._accepted_http(side, transport)
            return side
        relay = Relay(on_close=self._closed)
        # The relay's downstream side is the accept protocol itself: no hand-over, no extra object.
        relay.down.on_made = lambda transport: self._accepted(relay, transport)
        return relay.down

    def _accepted(self, relay: Relay, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self._track(relay)
        self._spawn(self._connect(relay))

    def _fail(self, relay: Relay, reason: str, detail: str) -> None:
        self.m_err[reason].inc()
        log.warning("%s: %s", self.name, detail)
        relay.abort()

    def _pick(self, snap: Snapshot) -> tuple[TLSState | None, UpstreamView, tuple[Endpoint, ...], int, str | None]:
        tls = snap.tls
        view = snap.upstreams[self.key]
        if tls is None or not tls.valid():
            return tls, view, (), 0, "not_ready"
        if not view.endpoints:
            return tls, view, (), 0, "no_healthy_endpoints"
        start = self._rr
        self._rr += 1
        return tls, view, view.endpoints, start, None

    async def _connect(self, relay: Relay) -> None:
        tls, view, eps, start, problem = self._pick(self.holder.current)
        if problem == "not_ready":
            return self._fail(relay, problem, "no valid leaf certificate: refusing (never plaintext)")
        if problem == "no_healthy_endpoints":
            return self._fail(relay, problem, f"no healthy instance of {view.service} in {view.datacenter}")
        assert tls is not None
        last = ""
        for i in range(min(MAX_CONNECT_ATTEMPTS, len(eps))):
            if relay.down.lost:
                return relay.close()
            ep = eps[(start + i) % len(eps)]
            try:
                # A fresh side per attempt: a rejected one must not close the relay.
                side = await dial_endpoint(_Detached(), tls, view, ep, self.connect_timeout)
            except DialError as e:
                self.m_err[e.reason].inc()
                last = str(e)
                continue
            side.relay = relay
            relay.up = side
            if side.lost:
                continue
            self.m_accepted.inc()
            relay.start()
            return
        log.warning("%s: giving up: %s", self.name, last)
        relay.abort()

    # ------------------------------------------------------------------ HTTP

    def _accepted_http(self, side: FlowSide, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        self.m_accepted.inc()
        if self._serve_native(side, ip, self._native_request, lambda s: self._http_server(s, ip)) is None:
            self._http_server(side, ip)

    def _http_server(self, side: Side, ip: str) -> None:
        conn = ServerConnection(
            side,
            handle=self._request,
            on_response=self._on_response,
            on_close=self._closed,  # type: ignore[arg-type]
            peer_ip=ip,
            on_done=self._done,
        )
        self._track(conn)  # type: ignore[arg-type]
        side.set_sink(conn.feed)

    def _native_request(self, conn: Any, method: bytes | None, url: bytes | None) -> Any:
        if method is None or url is None:
            self._on_response(None, 400)  # malformed: the engine answers 400
            return None
        ex = NativeExchange(conn, method, url, self)
        try:
            coro = self._request(ex)  # type: ignore[arg-type]
        except Exception:
            log.exception("%s: request handling failed", self.name)
            ex.upstream_failed(500, "internal error")  # answered: the accounting (and the call's counts) still runs
            return ex
        if coro is not None:
            self._spawn(coro)
        return ex

    def _runtime(self, cluster: Any) -> ClusterRuntime:
        """The cluster's runtime state, created on first use, its settings following the snapshot's cluster."""
        rt = self.clusters.get(cluster.name)
        if rt is None:
            rt = self.clusters[cluster.name] = ClusterRuntime(self.name, cluster.name, cluster.limits, cluster.outlier)
        rt.limits = cluster.limits
        rt.outlier = cluster.outlier
        rt.cluster = cluster
        return rt

    def _view(self, snap: Snapshot) -> None:
        """What requests need from a new snapshot, looked up once per snapshot rather than per request."""
        self._snap = snap
        tls = snap.tls
        self._tls = tls
        self._tls_window = (tls.leaf.not_before, tls.leaf.not_after) if tls is not None else (1.0, 0.0)
        self._chain = snap.upstreams[self.key].chain
        self._observe = not self._chain.simple

    def _request(self, ex: Exchange) -> Any:
        snap = self.holder.current
        if snap is not self._snap:
            self._view(snap)
        not_before, not_after = self._tls_window
        if not not_before <= time.time() < not_after:
            self.m_err["not_ready"].inc()
            ex.flags = "UH"
            ex.server.local_response(ex, 503, "no healthy upstream (not_ready)")
            return None
        if self._vhosts is None:
            chain = self._chain
        else:
            chain = self._chain_for_host(ex.headers)
            if chain is None:
                ex.flags = "NR"
                ex.server.local_response(ex, 404, "no service for this host")
                return None
        route = chain.route_for(ex.method, ex.url, ex.headers)
        split = route.pick()
        cluster = split.cluster
        rt = self.clusters.get(cluster.name)
        if rt is None or rt.cluster is not cluster:
            rt = self._runtime(cluster)
        if not cluster.endpoints:
            self.m_err["no_healthy_endpoints"].inc()
            ex.flags = "UH"
            ex.server.local_response(ex, 503, "no healthy upstream (no_healthy_endpoints)")
            return None
        if rt.active >= rt.limits.max_concurrent_requests:
            rt.m_trips["max_concurrent_requests"].inc()
            ex.flags = "UO"
            ex.server.local_response(ex, 503, "upstream overflow", b"x-meshgw-overloaded: max_concurrent_requests\r\n")
            return None
        call = Call(self, ex, route, split, cluster, rt, self._tls, route.retry or self.retries)
        ex.call = call
        call.observe = self._observe
        url = ex.url
        if route.prefix_rewrite is not None and url.startswith(route.match_prefix):
            url = route.prefix_rewrite + url[len(route.match_prefix) :]
        req = split.request
        resp = split.response
        if snap.access_log is not None:
            ex.info = []
        if ex.native:
            retry = call.retry
            ex.server.prepare(
                url if url is not ex.url else None,
                req.extra,
                req.drop or None,
                resp.extra,
                resp.drop or None,
                ex.replay,
                # Asked about each error answer only when a retry could follow one (statuses the policy names).
                retry is not None and retry.num_retries > 0 and bool(retry.retry_on_status_codes or retry.retry_on),
            )
        else:
            ex.head = render_request_head(
                ex.method, url, ex.headers, ex.chunked, ex.upgrade, ex.server.peer_ip, req.extra, req.drop, ex.info
            )
            if resp.extra or resp.drop:
                ex.resp_drop = resp.drop
                ex.resp_extra = resp.extra
        timeout = route.request_timeout or cluster.request_timeout or self.request_timeout
        ex.arm_timeout(timeout)
        return call.attempt()

    def _chain_for_host(self, headers: list[tuple[bytes, bytes]]) -> Any:
        host = b""
        for n, v in headers:
            if len(n) == 4 and n.lower() == b"host":
                host = _host_only(v.strip().lower())
                break
        for matches, chain in self._vhosts or ():
            if matches(host):
                return chain
        return None

    # -- called by Call

    def dial(self, call: Call, ep: Endpoint, key: tuple[str, int]) -> Any:
        return self._dial(call, ep, key)

    async def _dial(self, call: Call, ep: Endpoint, key: tuple[str, int]) -> None:
        try:
            side = await dial_endpoint(
                _Detached(), call.tls, call.cluster, ep, call.cluster.connect_timeout, FlowTLSSide
            )
            client = await native_http.upstream(side, key) if call.native else ClientConnection(side, key)
        except DialError as e:
            self.m_err[e.reason].inc()
            if e.timeout:
                self.m_timeouts["connect"].inc()
            log.warning("%s: %s", self.name, e)
            call.dialed(None, e.reason)
            return
        except OSError as e:
            self.m_err["connect_failed"].inc()
            log.warning("%s: %s", self.name, e)
            call.dialed(None, "connect_failed")
            return
        call.rt.pool.add(client)
        if call.native:
            client.start()
        call.dialed(client, "")

    def retry(self, call: Call) -> None:
        coro = call.attempt()
        if coro is not None:
            self._spawn(coro)

    def _done(self, ex: Exchange) -> None:
        call: Call | None = ex.call
        if call is not None:
            call.done()
            if call.observe:
                self._route_observe(call, ex)
        alog = self.holder.current.access_log
        if alog is not None:
            alog.log(
                alog.record(
                    ex,
                    self.name,
                    cluster=call.cluster.name if call else "",
                    host=call.upstream_host if call else "",
                    route=call.route.name if call else "",
                    retries=call.retries if call else 0,
                    source=self.source,
                    flags=ex.flags or ("DC" if not ex.response_status else ""),
                )
            )
        if call is not None:
            # Break the exchange <-> call cycle: both go with their last reference, not at the next GC pass.
            ex.call = None
            call.ex = None  # type: ignore[assignment]

    def _route_observe(self, call: Call, ex: Exchange) -> None:
        status = ex.response_status
        if not status:
            return
        elapsed = time.monotonic() - ex.started
        rt = call.rt
        cls = code_class(status)
        rt.m_class[cls].inc()
        rt.m_latency.observe(elapsed)
        rm = self._route_metrics.get(call.route.name)
        if rm is None:
            rm = self._route_metrics[call.route.name] = (
                {c: metrics.HTTP_ROUTE_RESPONSES.labels(self.name, call.route.name, c) for c in STATUS_CLASSES},
                metrics.HTTP_ROUTE_DURATION.labels(self.name, call.route.name),
            )
        rm[0][cls].inc()
        rm[1].observe(elapsed)

    def _sweep(self, now: float) -> None:
        super()._sweep(now)
        before = now - self.idle_timeout
        for rt in self.clusters.values():
            rt.sweep(now, before)

    def _sweep_period(self) -> float:
        interval = self.upstream.passive_health_check.interval
        return max(0.05, min(1.0, self.idle_timeout / 4, interval))

    def _close_pools(self) -> None:
        super()._close_pools()
        for rt in self.clusters.values():
            rt.close()


def _host_only(value: bytes) -> bytes:
    """A Host header without its port (``[v6]:port`` included)."""
    if value.startswith(b"["):
        return value.split(b"]", 1)[0] + b"]"
    host, sep, port = value.rpartition(b":")
    return host if sep and port.isdigit() else value


def host_matcher(pattern: str) -> Callable[[bytes], bool]:
    """Envoy's virtual-host domain forms, which Consul's ingress Hosts use: exact, ``*.suffix``, ``prefix.*``, ``*``."""
    p = pattern.lower().encode()
    if p == b"*":
        return lambda host: True
    if p.startswith(b"*."):
        suffix = p[1:]
        return lambda host: host.endswith(suffix) and len(host) > len(suffix)
    if p.endswith(b".*"):
        prefix = p[:-1]
        return lambda host: host.startswith(prefix) and len(host) > len(prefix)
    return lambda host: host == p


class IngressHTTPListener(UpstreamListener):
    """An ingress gateway's HTTP listener: each request goes to the service whose Host patterns match (Consul's
    ingress-gateway Hosts, consul.md §8.6); with one service and no hosts, every request goes to it."""

    def __init__(self, config: Config, upstreams: tuple[UpstreamConfig, ...], holder: SnapshotHolder):
        super().__init__(config, upstreams[0], holder, name=f"ingress:{upstreams[0].bind.port}")
        self.routes_by_host = [
            (upstream_key(u, config), [host_matcher(h) for h in u.hosts] or [host_matcher("*")]) for u in upstreams
        ]

    def _view(self, snap: Snapshot) -> None:
        super()._view(snap)
        vhosts: list[tuple[Callable[[bytes], bool], Any]] = []
        for key, matchers in self.routes_by_host:
            chain = snap.upstreams[key].chain
            vhosts.extend((m, chain) for m in matchers)
        self._vhosts = vhosts
        self._observe = True  # several services behind one listener: per-cluster metrics tell them apart
