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
from gateway.l4 import Relay, Side
from gateway.snapshot import SnapshotHolder, upstream_key
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
        raise NotImplementedError  # each stack supplies its accept protocol

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

    # uvloop starts reading an accepted socket right after connection_made, even when the protocol
    # paused it, so a later start_tls() would miss the ClientHello. Accepting the socket ourselves and
    # handing it to connect_accepted_socket(ssl=...) avoids that, and gives the handshake's exception
    # to us (create_server(ssl=...) would swallow it), so refusals are counted by reason.
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.bind.host, self.bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.accept_task = loop.create_task(self._accept_loop(), name=f"{self.name}-accept")
        log.info("%s listening on %s", self.name, self.bind)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                # EMFILE and friends: back off instead of spinning; the backlog holds the callers.
                log.error("%s: accept failed: %s", self.name, e)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._serve(conn))

    def stop_accepting(self) -> None:
        task = getattr(self, "accept_task", None)
        if task is not None:
            task.cancel()
            self.accept_task = None
        sock = getattr(self, "sock", None)
        if sock is not None and sock.fileno() >= 0:
            sock.close()

    def _deny(self, reason: str, detail: str) -> None:
        self.m_denied[reason].inc()
        log.info("inbound: denied %s: %s", reason, detail)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        snap = self.holder.current
        tls = snap.tls
        if tls is None or not tls.valid():
            # Fail closed: without a valid leaf there is no mTLS, and there is never plaintext.
            conn.close()
            self._deny("not_ready", "no valid leaf certificate")
            return
        relay = Relay(down_tls=True, up_tls=False, on_close=self._closed)
        try:
            tls_transport, _ = await loop.connect_accepted_socket(
                lambda: relay.down, conn, ssl=tls.server_ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, *CONNECT_ERRORS) as e:
            conn.close()
            self._deny(handshake_failure_reason(e), f"TLS handshake failed: {getattr(e, 'reason', None) or e}")
            return
        peer = peer_identity(tls_transport.get_extra_info("ssl_object"))
        if peer.service is None:
            tls_transport.abort()
            self._deny("no_spiffe_id", f"peer certificate has no service SPIFFE ID ({peer.uri})")
            return
        if peer.service.trust_domain != tls.trust_domain:
            tls_transport.abort()
            self._deny("foreign_trust_domain", f"{peer.uri} is not in trust domain {tls.trust_domain}")
            return
        decision = snap.intentions.authorize_l4(peer.service.service, peer.service.namespace)
        if not decision.allowed:
            tls_transport.abort()
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


class UpstreamListener(Listener):
    def __init__(self, config: Config, upstream: UpstreamConfig, holder: SnapshotHolder):
        self.name = f"upstream:{upstream.service}"
        super().__init__(upstream.bind, holder)
        self.key = upstream_key(upstream, config.datacenter)
        self.connect_timeout = upstream.connect_timeout
        self._rr = 0
        self.m_err = {r: metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, r) for r in metrics.UPSTREAM_ERRORS}

    def _protocol(self) -> asyncio.Protocol:
        relay = Relay(down_tls=False, up_tls=True, on_close=self._closed)
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
            relay.up = Side(relay, tls=True)  # a fresh side per attempt: a rejected one must not close the relay
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: relay.up,
                        ep.address,
                        ep.port,
                        ssl=tls.client_ctx,
                        server_hostname=view.sni,
                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                    ),
                    self.connect_timeout,
                )
            except ssl.SSLError as e:
                self.m_err["tls_failed"].inc()
                last = f"TLS with {ep.address}:{ep.port} failed: {e.reason or e}"
                continue
            except CONNECT_ERRORS as e:
                self.m_err["connect_failed"].inc()
                last = f"cannot connect to {ep.address}:{ep.port}: {e or type(e).__name__}"
                continue
            peer = peer_identity(transport.get_extra_info("ssl_object"))
            if peer.uri != view.expected_uri:
                self.m_err["identity_mismatch"].inc()
                last = f"{ep.address}:{ep.port} presented {peer.uri}, expected {view.expected_uri}"
                transport.abort()
                continue
            _nodelay(transport)
            self.m_accepted.inc()
            relay.start()
            return
        log.warning("%s: giving up: %s", self.name, last)
        relay.abort()
