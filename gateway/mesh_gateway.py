"""``mode: mesh-gateway``: route mTLS connections between datacenters by SNI, without decrypting them.

Accept → read the TLS ClientHello (bytes only) → its SNI names the target (consul.md §5.2): a service of
this datacenter goes to one of its healthy sidecars, anything in another datacenter to that
datacenter's mesh gateways → relay every byte, the ClientHello included, unchanged. The two sidecars
keep their end-to-end mTLS session and the callee's sidecar still checks the caller's identity and
intentions: a gateway authorizes nobody and never sees plaintext. Consul's Envoy mesh gateways do the
same with a tls_inspector and an SNI filter chain per cluster.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import metrics
from gateway.config import Config
from gateway.l4 import Relay, Side
from gateway.listeners import Listener, _nodelay, connect_any
from gateway.snapshot import Endpoint, SnapshotHolder
from gateway.sni import MAX_HELLO, NotTLS, client_hello_sni, parse_mesh_sni

log = logging.getLogger("meshgw.gateway")


class _Hello:
    """Collects the first bytes of one connection until its ClientHello is complete."""

    __slots__ = ("buf", "done", "listener", "relay", "timer")

    def __init__(self, listener: MeshGatewayListener, relay: Relay, timeout: float):
        self.listener = listener
        self.relay = relay
        self.buf = b""
        self.done = False
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(timeout, self.expire)

    def feed(self, data: bytes) -> None:
        if self.done:
            self.relay.down._hold(data)  # more bytes while the upstream connects: held, then flushed in order
            return
        self.buf += data
        try:
            complete, sni = client_hello_sni(self.buf)
        except NotTLS as e:
            return self.refuse("not_tls", str(e))
        if not complete:
            if len(self.buf) > MAX_HELLO:
                self.refuse("not_tls", f"no complete ClientHello in {len(self.buf)} bytes")
            return
        self.done = True
        self._stop_timer()
        if sni is None:
            return self.refuse("no_sni", "ClientHello without a server name")
        self.listener.route(self.relay, sni, self.buf)

    def expire(self) -> None:
        self.timer = None
        if not self.done:
            self.done = True
            self.refuse("handshake_timeout", "no complete ClientHello in time")

    def refuse(self, reason: str, detail: str) -> None:
        self.done = True
        self._stop_timer()
        self.listener.deny(self.relay, reason, detail)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class MeshGatewayListener(Listener):
    name = "mesh-gateway"

    def __init__(self, config: Config, holder: SnapshotHolder):
        assert config.gateway is not None
        super().__init__(config.gateway.bind, holder)
        self.datacenter = config.datacenter
        self.handshake_timeout = config.gateway.handshake_timeout
        self.connect_timeout = 5.0
        self._rr = 0
        self.m_denied = {r: metrics.CONNECTIONS_DENIED.labels(self.name, r) for r in metrics.DENY_REASONS}
        self.m_routed = {r: metrics.GATEWAY_ROUTED.labels(self.name, r) for r in ("local", "remote")}
        self.m_err = {r: metrics.UPSTREAM_CONNECT_ERRORS.labels(self.name, r) for r in metrics.UPSTREAM_ERRORS}

    def _protocol(self) -> asyncio.Protocol:
        relay = Relay(on_close=self._closed)
        relay.down.on_made = lambda transport: self._accepted(relay, transport)
        return relay.down

    def _accepted(self, relay: Relay, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self._track(relay)
        relay.down.write = _Hello(self, relay, self.handshake_timeout).feed

    def deny(self, relay: Relay, reason: str, detail: str) -> None:
        self.m_denied[reason].inc()
        log.info("mesh gateway: refused %s: %s", reason, detail)
        relay.abort()

    def route(self, relay: Relay, sni: str, hello: bytes) -> None:
        snap = self.holder.current
        routes = snap.gateway
        tls = snap.tls
        if routes is None or tls is None:
            # Without the CA roots the trust domain is unknown, and with it which names are ours.
            return self.deny(relay, "not_ready", f"no trust domain yet for {sni}")
        target = parse_mesh_sni(sni, tls.trust_domain)
        if target is None:
            return self.deny(relay, "unknown_sni", f"{sni} is not a mesh name of trust domain {tls.trust_domain}")
        if target.datacenter == self.datacenter:
            if not target.service:
                return self.deny(relay, "unknown_sni", f"{sni} names this datacenter, not a service in it")
            key = f"{target.subset}.{target.service}" if target.subset else target.service
            eps = routes.local.get(key, ())
            kind = "local"
        else:
            eps = routes.remote.get(target.datacenter, ())
            kind = "remote"
        if not eps:
            self.m_err["no_healthy_endpoints"].inc()
            where = "gateway" if kind == "remote" else "instance"
            log.warning("mesh gateway: no healthy %s for %s in %s", where, sni, target.datacenter)
            return relay.abort()
        relay.down._hold(hello)  # the ClientHello goes first, byte for byte
        self._spawn(self._connect(relay, eps, kind, sni))

    async def _connect(self, relay: Relay, eps: tuple[Endpoint, ...], kind: str, sni: str) -> None:
        start = self._rr
        self._rr += 1
        side, why = await connect_any(
            eps, start, lambda ep: Side(relay), self.connect_timeout, lambda: relay.down.lost, self.m_err
        )
        if side is None:
            log.warning("mesh gateway: giving up on %s: %s", sni, why)
            return relay.abort()
        relay.up = side
        self.m_accepted.inc()
        self.m_routed[kind].inc()
        relay.start()
