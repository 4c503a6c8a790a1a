"""``mode: terminating-gateway``: mesh callers reach services outside the mesh through it.

Accept → mTLS handshake in which the gateway presents the leaf of the service the caller named by SNI
(``<svc>.default.<dc>.internal.<td>``, consul.md §5.2, §8.7) → the caller's SPIFFE ID, checked against
the trust domain and that service's intentions → connect to the service (plaintext, or TLS the gateway
originates with the service's CA, client certificate and SNI) → relay. As with Consul's terminating
gateways, the callers' sidecars see the linked service's own identity, and intentions name the service,
not the gateway.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import metrics
from gateway.config import Config
from gateway.l4 import Relay, Side, TLSSide
from gateway.listeners import HANDSHAKE_TIMEOUT, Listener, _nodelay, authenticated_peer, connect_any
from gateway.snapshot import Endpoint, LinkedView, Snapshot, SnapshotHolder

log = logging.getLogger("meshgw.gateway")


class TerminatingGatewayListener(Listener):
    name = "terminating-gateway"

    def __init__(self, config: Config, holder: SnapshotHolder):
        assert config.gateway is not None
        super().__init__(config.gateway.bind, holder)
        self.connect_timeout = 5.0
        self._rr = 0
        self.m_denied = {r: metrics.CONNECTIONS_DENIED.labels(self.name, r) for r in metrics.DENY_REASONS}
        self.m_err = {r: metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, r) for r in metrics.UPSTREAM_ERRORS}

    def _protocol(self) -> asyncio.Protocol:
        snap = self.holder.current
        relay = Relay(on_close=self._closed)
        routes = snap.terminating
        if routes is None or snap.tls is None or not snap.tls.valid():
            relay.down.on_made = lambda transport: self._refuse(transport, "not_ready", "no valid leaf or roots")
            return relay.down
        side = TLSSide(relay, routes.dispatch_ctx, server_side=True, handshake_timeout=HANDSHAKE_TIMEOUT)
        relay.down = side
        side.on_made = lambda transport: self._spawn(self._serve(relay, side, snap))
        return side

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, detail: str) -> None:
        transport.abort()  # type: ignore[attr-defined]
        self._deny(reason, detail)

    def _deny(self, reason: str, detail: str) -> None:
        self.m_denied[reason].inc()
        log.info("terminating gateway: denied %s: %s", reason, detail)

    async def _serve(self, relay: Relay, side: TLSSide, snap: Snapshot) -> None:
        routes, tls = snap.terminating, snap.tls
        assert routes is not None and tls is not None
        # An SNI naming no linked service fails in the handshake (unrecognized_name): a TLS error.
        peer = await authenticated_peer(side, tls.trust_domain, self._deny)
        if peer is None or peer.service is None:
            return
        view = routes.by_ctx.get(id(side.sslobj.context))
        if view is None:  # cannot happen once the handshake passed the SNI callback; refuse all the same
            side.abort()
            return self._deny("tls_error", "no linked service for this connection")
        decision = view.intentions.authorize_l4(peer.service.service, peer.service.namespace)
        if not decision.allowed:
            side.abort()
            return self._deny("intention", f"{peer.uri} -> {view.service}: {decision.reason}")
        if side.lost:
            return
        _nodelay(side.transport)  # type: ignore[arg-type]
        self._track(relay)
        await self._connect(relay, view)

    async def _connect(self, relay: Relay, view: LinkedView) -> None:
        if view.tls_required and view.origination is None:
            self.m_err["tls_failed"].inc()
            log.warning("terminating gateway: %s: its TLS files are unusable: refusing (never plaintext)", view.service)
            return relay.abort()
        eps = view.endpoints
        if not eps:
            self.m_err["no_healthy_endpoints"].inc()
            log.warning("terminating gateway: no healthy instance of %s", view.service)
            return relay.abort()
        start = self._rr
        self._rr += 1

        def make_side(ep: Endpoint) -> Side:
            if view.origination is None:
                return Side(relay)
            return TLSSide(
                relay,
                view.origination,
                server_side=False,
                server_hostname=view.origination_sni or ep.address,
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )

        side, why = await connect_any(
            eps, start, make_side, self.connect_timeout, lambda: relay.down.lost, self.m_err
        )
        if side is None:
            log.warning("terminating gateway: giving up on %s: %s", view.service, why)
            return relay.abort()
        relay.up = side
        self.m_accepted.inc()
        relay.start()
