"""Inbound and upstream listeners: two different stacks, as in linkerd2-proxy.

Inbound: accept → mTLS handshake with the snapshot's server context → SPIFFE identity → intentions
→ connect to the local app → relay. Nothing reaches the app before the caller is authorized.

Upstream: accept plaintext from the local app → pick a healthy endpoint → mTLS with Consul's SNI →
check the server's SPIFFE ID → relay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from gateway import metrics
from gateway.config import Address, Config, UpstreamConfig
from gateway.l4 import Relay, TLSSide
from gateway.snapshot import Snapshot, SnapshotHolder, upstream_key
from gateway.tls import handshake_failure_reason, peer_identity

log = logging.getLogger("meshgw.listener")
HANDSHAKE_TIMEOUT = 10.0
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, ConnectionError)
MAX_CONNECT_ATTEMPTS = 3


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Listener:
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

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, self.bind.host, self.bind.port, backlog=1024, reuse_address=True
        )
        log.info("%s listening on %s", self.name, self.bind)

    def _protocol(self) -> asyncio.Protocol:
        raise NotImplementedError  # abstract: each stack supplies its accept protocol

    def _track(self, relay: Relay) -> None:
        self.relays.add(relay)
        self._idle.clear()
        self.m_active.inc()

    def _closed(self, relay: Relay) -> None:
        if relay not in self.relays:
            return  # refused before it was tracked
        self.relays.discard(relay)
        self.m_active.dec()
        if relay.started:
            self.m_rx.inc(relay.down.nbytes)
            self.m_tx.inc(relay.up.nbytes)
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

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, timeout: float) -> int:
        """Wait for open connections to finish; abort what is left after ``timeout``. Returns aborted count."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return 0
        except TimeoutError:
            left = len(self.relays)
            for t in list(self.tasks):
                t.cancel()
            for r in list(self.relays):
                r.abort()
            return left


class InboundListener(Listener):
    name = "inbound"

    def __init__(self, config: Config, holder: SnapshotHolder):
        assert config.inbound is not None
        super().__init__(config.inbound.bind, holder)
        self.app_host = config.service.address
        self.app_port = config.service.port
        self.connect_timeout = config.inbound.connect_timeout
        self.m_denied = {r: metrics.CONNECTIONS_DENIED.labels(self.name, r) for r in metrics.DENY_REASONS}
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
        side = TLSSide(relay, tls.server_ctx, server_side=True, handshake_timeout=HANDSHAKE_TIMEOUT)
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
        try:
            await side.handshake
        except (ssl.SSLError, *CONNECT_ERRORS) as e:
            side.abort()
            self._deny(handshake_failure_reason(e), f"TLS handshake failed: {getattr(e, 'reason', None) or e}")
            return
        assert snap.tls is not None
        peer = peer_identity(side.peercert())
        if peer.service is None:
            side.abort()
            self._deny("no_spiffe_id", f"peer certificate has no service SPIFFE ID ({peer.uri})")
            return
        if peer.service.trust_domain != snap.tls.trust_domain:
            side.abort()
            self._deny("foreign_trust_domain", f"{peer.uri} is not in trust domain {snap.tls.trust_domain}")
            return
        decision = snap.intentions.authorize_l4(peer.service.service, peer.service.namespace)
        if not decision.allowed:
            side.abort()
            self._deny("intention", f"{peer.uri}: {decision.reason}")
            return
        if side.lost:
            return
        _nodelay(side.transport)  # type: ignore[arg-type]
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


class UpstreamListener(Listener):
    def __init__(self, config: Config, upstream: UpstreamConfig, holder: SnapshotHolder):
        self.name = f"upstream:{upstream.service}"
        super().__init__(upstream.bind, holder)
        self.key = upstream_key(upstream, config.datacenter)
        self.connect_timeout = upstream.connect_timeout
        self._rr = 0
        self.m_err = {r: metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, r) for r in metrics.UPSTREAM_ERRORS}

    def _protocol(self) -> asyncio.Protocol:
        relay = Relay(on_close=self._closed)
        self._track(relay)
        # The relay's downstream side is the accept protocol itself: no hand-over, no extra object.
        relay.down.on_made = lambda transport: self._accepted(relay, transport)
        return relay.down

    def _accepted(self, relay: Relay, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self._spawn(self._connect(relay))

    def _fail(self, relay: Relay, reason: str, detail: str) -> None:
        self.m_err[reason].inc()
        log.warning("%s: %s", self.name, detail)
        relay.abort()

    async def _connect(self, relay: Relay) -> None:
        loop = asyncio.get_running_loop()
        snap = self.holder.current
        tls = snap.tls
        if tls is None or not tls.valid():
            return self._fail(relay, "not_ready", "no valid leaf certificate: refusing (never plaintext)")
        view = snap.upstreams[self.key]
        eps = view.endpoints
        if not eps:
            return self._fail(
                relay, "no_healthy_endpoints", f"no healthy instance of {view.service} in {view.datacenter}"
            )
        start = self._rr
        self._rr += 1
        last = ""
        for i in range(min(MAX_CONNECT_ATTEMPTS, len(eps))):
            ep = eps[(start + i) % len(eps)]
            if relay.down.lost:
                return relay.close()
            # A fresh side per attempt: a rejected one must not close the relay.
            side = TLSSide(
                relay, tls.client_ctx, server_side=False, server_hostname=view.sni, handshake_timeout=HANDSHAKE_TIMEOUT
            )
            relay.up = side
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda s=side: s, ep.address, ep.port),  # type: ignore[misc]
                    self.connect_timeout,
                )
            except CONNECT_ERRORS as e:
                self.m_err["connect_failed"].inc()
                last = f"cannot connect to {ep.address}:{ep.port}: {e or type(e).__name__}"
                continue
            try:
                await side.handshake
            except (ssl.SSLError, *CONNECT_ERRORS) as e:
                side.abort()
                self.m_err["tls_failed"].inc()
                last = f"TLS with {ep.address}:{ep.port} failed: {getattr(e, 'reason', None) or e}"
                continue
            peer = peer_identity(side.peercert())
            if peer.uri != view.expected_uri:
                side.abort()
                self.m_err["identity_mismatch"].inc()
                last = f"{ep.address}:{ep.port} presented {peer.uri}, expected {view.expected_uri}"
                continue
            _nodelay(side.transport)  # type: ignore[arg-type]
            self.m_accepted.inc()
            relay.start()
            return
        log.warning("%s: giving up: %s", self.name, last)
        relay.abort()
