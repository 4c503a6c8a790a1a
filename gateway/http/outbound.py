"""The outbound request driver: endpoint choice, connections, retries, circuit breakers, outlier detection.

One ``ClusterRuntime`` per upstream cluster per listener holds what outlives requests and snapshots: the
connection pool, the balancer's mutable state (round-robin position, requests per endpoint, ejections), the
breaker counters and the metric children. One ``Call`` per request drives its attempts. Nothing here awaits
except the TCP+TLS dial, which runs as a task only when no pooled connection is free.

Semantics follow Envoy as Consul configures it (consul.md §8.1, §8.3; Envoy docs "Circuit breaking",
"Outlier detection", "Retry semantics"):

* Breakers, per cluster: ``max_concurrent_requests`` (requests in flight), ``max_pending_requests`` (requests
  waiting for a connection: being dialled for, or queued while the cluster is at ``max_connections``),
  ``max_connections`` (open connections; at the limit a request waits for one to be released). A refused
  request gets 503 with ``x-meshgw-overloaded: <breaker>`` (Envoy sends ``x-envoy-overloaded: true``).
* Retries: connect failures for every method (nothing was sent), resets and retriable status codes only for
  idempotent methods (RFC 9110 §9.2.2) unless the policy says otherwise, never once a response head went
  downstream or the request body outgrew the replay buffer. Each retry prefers another endpoint, waits a
  jittered exponential backoff (Envoy: 25 ms base, 10x cap), and needs room in the cluster's retry budget
  (``budget_percent`` of requests in flight, at least ``min_retry_concurrency``). The request timeout covers
  all attempts (Envoy's route timeout).
* Outlier detection: consecutive 5xx (connect failures and resets count as 503: Envoy's default of not
  splitting local-origin errors) or consecutive gateway errors (502/503/504) eject an endpoint for
  ``base_ejection_time`` x the number of times it was ejected (capped at ``max_ejection_time``), unless that
  would take the ejected share of the cluster past ``max_ejection_percent`` (checked as Envoy does: an ejection
  is allowed while the share ejected *before* it is below the maximum, so one endpoint can always go). Ejected
  endpoints return at the next sweep after their time is up; every ``interval`` an endpoint stays in service
  its ejection multiplier goes down by one (counted from its return).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway import metrics
from gateway.balancer import ClusterState, HostStats, request_hash
from gateway.config import LimitsConfig, PassiveHealthCheckConfig, RetryConfig
from gateway.http.pool import ConnectionPool
from gateway.http.proxy import Exchange

if TYPE_CHECKING:
    from gateway.http.routing import Cluster, Route, Split

log = logging.getLogger("meshgw.http.outbound")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
GATEWAY_ERRORS = frozenset({502, 503, 504})


def code_class(status: int) -> str:
    return CODE_CLASSES[min(max(status // 100, 1), 5) - 1]


class ClusterRuntime:
    """Per-cluster state of one listener, kept across snapshots (keyed by cluster name)."""

    def __init__(
        self,
        listener: str,
        name: str,
        limits: LimitsConfig,
        outlier: PassiveHealthCheckConfig,
    ):
        self.listener = listener
        self.name = name
        self.limits = limits
        self.outlier = outlier
        self.cluster: Any = None  # the snapshot's Cluster these settings came from
        self.lb = ClusterState()
        self.pool = ConnectionPool()
        self.pool.waiter = self._hand_over
        self.pool.slot_freed = self._slot_freed
        self.waiters: deque[Call] = self.pool.waiters
        self.active = 0  # requests in flight
        self.pending = 0  # requests waiting for a connection
        self.dialing = 0  # connections being set up
        self.retrying = 0  # requests that are on a retry now (for the budget)
        self.m_class = {c: metrics.HTTP_UPSTREAM_RESPONSES.labels(listener, name, c) for c in CODE_CLASSES}
        self.m_latency = metrics.HTTP_UPSTREAM_DURATION.labels(listener, name)
        self.m_retries = {r: metrics.HTTP_RETRIES.labels(listener, name, r) for r in metrics.RETRY_REASONS}
        self.m_retry_overflow = metrics.HTTP_RETRY_OVERFLOW.labels(listener, name)
        self.m_trips = {b: metrics.HTTP_BREAKER_TRIPS.labels(listener, name, b) for b in metrics.CLUSTER_BREAKERS}
        self.m_pending = metrics.HTTP_PENDING.labels(listener, name)
        self.m_ejections = {r: metrics.OUTLIER_EJECTIONS.labels(listener, name, r) for r in metrics.EJECTION_REASONS}
        self.m_ejected = metrics.OUTLIER_EJECTED.labels(listener, name)

    # ------------------------------------------------------------------ connections

    def _hand_over(self, client: Any) -> bool:
        """A connection came back while requests wait for one (at max_connections): the oldest gets it."""
        waiters = self.waiters
        native = client.native
        other = False
        for call in list(waiters):
            if call.state != WAITING:
                waiters.remove(call)
            elif call.native == native:  # an engine connection serves engine exchanges only
                waiters.remove(call)
                call.from_queue(client)
                return True
            else:
                other = True
        if other:
            # Only requests of the other kind (the Python proxy's, or the engine's) wait: this connection's slot
            # goes to them (its loss wakes the oldest, _slot_freed) rather than idling while they starve.
            client.close()
            return True
        return False

    def _slot_freed(self) -> None:
        """A connection is gone while requests wait: the oldest tries again (a dial, now under the limit)."""
        waiters = self.waiters
        while waiters:
            call = waiters.popleft()
            if call.state == WAITING:
                asyncio.get_running_loop().call_soon(call.wake)
                return

    # ------------------------------------------------------------------ outlier detection

    def host_result(self, host: HostStats | None, status: int) -> None:
        if host is None:
            return
        if status < 500:
            host.consecutive_5xx = 0
            host.consecutive_gateway = 0
            return
        host.consecutive_5xx += 1
        if status in GATEWAY_ERRORS:
            host.consecutive_gateway += 1
        else:
            host.consecutive_gateway = 0
        if host.ejected_until:
            return
        od = self.outlier
        if od.max_failures and host.consecutive_5xx >= od.max_failures:
            self._maybe_eject(host, "consecutive_5xx", od.enforcing_consecutive_5xx)
        elif od.consecutive_gateway_failure and host.consecutive_gateway >= od.consecutive_gateway_failure:
            self._maybe_eject(host, "consecutive_gateway_failure", od.enforcing_consecutive_gateway_failure)

    def _maybe_eject(self, host: HostStats, reason: str, enforcing: int) -> None:
        host.consecutive_5xx = 0
        host.consecutive_gateway = 0
        if enforcing <= 0 or (enforcing < 100 and random.random() * 100 >= enforcing):
            return
        lb = self.lb
        n = len(lb.hosts) or 1
        if lb.ejected * 100 >= self.outlier.max_ejection_percent * n:
            return  # Envoy: the share already ejected must be below max_ejection_percent
        od = self.outlier
        duration = min(od.base_ejection_time * (host.ejections + 1), max(od.base_ejection_time, od.max_ejection_time))
        now = time.monotonic()
        host.ejections += 1
        host.ejected_until = now + duration
        host.last_ejected = now
        lb.ejected += 1
        self.m_ejections[reason].inc()
        self.m_ejected.set(lb.ejected)
        log.warning("%s: %s: endpoint ejected for %.1fs (%s)", self.listener, self.name, duration, reason)

    def sweep(self, now: float, idle_before: float) -> None:
        """Periodic: return endpoints whose ejection is over, decay multipliers, close idle connections."""
        lb = self.lb
        if lb.ejected:
            back = 0
            for h in lb.by_key.values():
                if h.ejected_until and h.ejected_until <= now:
                    h.ejected_until = 0.0
                    h.last_ejected = now  # from now on: time in service, for the multiplier's decay
                    back += 1
            if back:
                lb.ejected = sum(1 for h in lb.hosts if h.ejected_until)
                self.m_ejected.set(lb.ejected)
                log.info("%s: %s: %d endpoint(s) back in service", self.listener, self.name, back)
        interval = self.outlier.interval
        for h in lb.by_key.values():
            # In service for a whole interval since it came back (or since the last decrement): one step down.
            if h.ejections and not h.ejected_until and now - h.last_ejected >= interval:
                h.ejections -= 1
                h.last_ejected = now
        self.pool.close_idle(idle_before)

    def close(self) -> None:
        self.pool.close()


# Call states
STARTING, DIALING, WAITING, ATTACHED, BACKOFF, DONE = range(6)


class Call:
    """One request's way to an upstream cluster: attempts, retries, accounting. Created per request."""

    __slots__ = (
        "attached",
        "cluster",
        "ex",
        "hash",
        "host",
        "host_idx",
        "native",
        "observe",
        "owner",
        "retries",
        "retry",
        "retrying",
        "route",
        "rt",
        "split",
        "state",
        "timer",
        "tls",
        "upstream_host",
    )

    def __init__(
        self,
        owner: Any,
        ex: Exchange,
        route: Route,
        split: Split,
        cluster: Cluster,
        rt: ClusterRuntime,
        tls: Any,
        retry: RetryConfig | None,
    ):
        self.owner = owner  # the UpstreamListener: dials, errors, metrics
        self.ex = ex
        self.native = ex.native
        self.route = route
        self.split = split
        self.cluster = cluster
        self.rt = rt
        self.tls = tls
        self.retry = retry
        self.state = STARTING
        self.retries = 0
        self.retrying = False
        self.host: HostStats | None = None
        self.host_idx = -1
        self.attached = False
        self.timer: asyncio.TimerHandle | None = None
        self.upstream_host = ""
        self.observe = False  # per-route and per-cluster metrics (chains with routes or splits)
        self.hash = (
            request_hash(cluster.hash_policies, ex.headers, ex.url.partition(b"?")[2], ex.server.peer_ip)
            if cluster.hash_policies
            else None
        )
        rt.active += 1
        # Keep what is sent for a replay only when an attempt after sending may happen.
        if retry is not None and retry.num_retries and not ex.upgrade:
            if ex.method in IDEMPOTENT or retry.retry_non_idempotent:
                ex.replay = bool(
                    retry.retry_on_reset or retry.retry_on_status_codes or set(retry.retry_on) - {"connect-failure"}
                )

    # ------------------------------------------------------------------ attempts

    def attempt(self) -> Any:
        """Pick an endpoint and get a connection to it. Returns a coroutine when a dial is needed."""
        self.timer = None
        if self.state == DONE:
            return None
        rt = self.rt
        cluster = self.cluster
        bal = cluster.balancer
        lb = rt.lb
        if lb.balancer is not bal:
            lb.sync(bal)
        i = bal.pick(lb, self.hash, self.host_idx, time.monotonic() if lb.ejected else 0.0)
        if i < 0:
            self.owner.m_err["no_healthy_endpoints"].inc()
            self.ex.flags = "UH"
            self.ex.upstream_failed(503, "no healthy upstream")
            return None
        self.host_idx = i
        self.host = lb.hosts[i]
        key = bal.keys[i]
        self.upstream_host = f"{key[0]}:{key[1]}"
        client = rt.pool.take(key, self.native)
        if client is not None:
            self.attach(client)
            return None
        limits = rt.limits
        if rt.pool.total + rt.dialing >= limits.max_connections:
            client = rt.pool.take_any(self.native)
            if client is not None:
                self._adopt(client)
                self.attach(client)
                return None
            if rt.pending >= limits.max_pending_requests:
                return self.overflow("max_pending_requests" if limits.max_pending_requests else "max_connections")
            self.state = WAITING
            rt.pending += 1
            rt.m_pending.set(rt.pending)
            rt.waiters.append(self)
            idle = rt.pool.take_any(not self.native)
            if idle is not None:
                # Idle, of the other kind (the engine's or the Python proxy's): its slot is for the queue, whose
                # oldest request its loss wakes (_slot_freed).
                idle.close()
            return None
        if rt.pending >= limits.max_pending_requests:
            return self.overflow("max_pending_requests")
        self.state = DIALING
        rt.pending += 1
        rt.dialing += 1
        rt.m_pending.set(rt.pending)
        return self.owner.dial(self, cluster.endpoints[i], key)

    def _adopt(self, client: Any) -> None:
        """A connection to another endpoint than the one picked: account the request to that endpoint."""
        host = self.rt.lb.by_key.get(client.key)
        self.host = host
        self.host_idx = -1
        self.upstream_host = f"{client.key[0]}:{client.key[1]}"

    def wake(self) -> None:
        """Out of the queue without a connection (one was closed to make room): another attempt."""
        if self.state != WAITING:
            return
        rt = self.rt
        rt.pending -= 1
        rt.m_pending.set(rt.pending)
        self.state = STARTING
        self.owner.retry(self)

    def from_queue(self, client: Any) -> None:
        rt = self.rt
        rt.pending -= 1
        rt.m_pending.set(rt.pending)
        self._adopt(client)
        self.attach(client)

    def dialed(self, client: Any, reason: str) -> None:
        """The dial for this call ended: ``client`` is the new connection (already in the pool) or None."""
        rt = self.rt
        rt.dialing -= 1
        if self.state == DIALING:
            rt.pending -= 1
            rt.m_pending.set(rt.pending)
        if client is None:
            rt.host_result(self.host, 503)
            if self.state == DIALING:
                self.failed("connect_failure", "UF", "upstream connect error")
            return
        if self.state != DIALING or self.ex.server.closed:
            rt.pool.release(client)  # the request went away meanwhile: the next one (or a waiter) gets it
            return
        self.attach(client)

    def attach(self, client: Any) -> None:
        self.state = ATTACHED
        self.attached = True
        host = self.host
        if host is not None:
            host.active += 1
        self.ex.attach(client)

    def _end_attempt(self, status: int) -> None:
        """The attached attempt is over with ``status`` (503 for a reset)."""
        if self.attached:
            self.attached = False
            host = self.host
            if host is not None:
                host.active -= 1
            self.rt.host_result(host, status)

    def overflow(self, breaker: str) -> None:
        self.rt.m_trips[breaker].inc()
        self.ex.flags = "UO"
        self.ex.upstream_failed(503, "upstream overflow", b"x-meshgw-overloaded: %s\r\n" % breaker.encode())

    # ------------------------------------------------------------------ failures and retries

    def on_reset(self) -> None:
        """The connection went away before a response head (the exchange already dropped it)."""
        self._end_attempt(503)
        self.failed("reset", "UC", "upstream connection reset before the response headers")

    def on_response_head(self, status: int) -> bool:
        """A response head arrived: True when it is dropped for a retry (the caller then stops relaying it)."""
        r = self.retry
        if r is None or status < 400 or not self._status_retriable(r, status) or not self._may_retry("status"):
            return False
        self._end_attempt(status)
        self.ex.detach()
        self._schedule()
        return True

    @staticmethod
    def _status_retriable(r: RetryConfig, status: int) -> bool:
        if status in r.retry_on_status_codes:
            return True
        on = r.retry_on
        if not on:
            return False
        return (
            ("5xx" in on and status >= 500)
            or ("gateway-error" in on and status in GATEWAY_ERRORS)
            or ("retriable-4xx" in on and status == 409)
        )

    def failed(self, kind: str, flags: str, reason: str) -> None:
        if self.state == DONE:
            return
        if self._may_retry(kind):
            self._schedule()
            return
        ex = self.ex
        ex.flags = "URX" if self.retries else flags
        ex.upstream_failed(503, reason)

    def _may_retry(self, kind: str) -> bool:
        r = self.retry
        if r is None or self.retries >= r.num_retries or self.ex.response_status is not None:
            return False
        on = r.retry_on
        if kind == "connect_failure":
            if not (r.retry_on_connect_failure or "connect-failure" in on or "5xx" in on):
                return False
        else:
            if kind == "reset" and not (r.retry_on_reset or "reset" in on or "5xx" in on or "refused-stream" in on):
                return False
            if self.ex.method not in IDEMPOTENT and not r.retry_non_idempotent:
                return False
            if not self.ex.can_replay():
                return False
        rt = self.rt
        if not self.retrying and rt.retrying >= max(r.min_retry_concurrency, rt.active * r.budget_percent / 100):
            rt.m_retry_overflow.inc()
            return False
        rt.m_retries[kind].inc()
        return True

    def _schedule(self) -> None:
        r = self.retry
        assert r is not None
        self.retries += 1
        if not self.retrying:
            self.retrying = True
            self.rt.retrying += 1
        self.state = BACKOFF
        # Full jitter over an exponential window (Envoy: (2^n - 1) x base, capped at the maximum).
        delay = random.uniform(0, min(r.backoff_max, r.backoff_base * ((1 << self.retries) - 1)))
        self.timer = asyncio.get_running_loop().call_later(delay, self.owner.retry, self)

    # ------------------------------------------------------------------ the end

    def done(self) -> None:
        """The exchange is finished (answered, failed, or the client went away): settle every count."""
        if self.state == DONE:
            return
        rt = self.rt
        if self.state == WAITING:
            rt.pending -= 1  # it stays in the deque; _hand_over skips it
            rt.m_pending.set(rt.pending)
        elif self.state == DIALING:
            rt.pending -= 1
            rt.m_pending.set(rt.pending)
        self.state = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        status = self.ex.response_status or 0
        if self.attached:
            if status:
                self._end_attempt(status)
            else:  # the client went away: says nothing about the endpoint
                self.attached = False
                if self.host is not None:
                    self.host.active -= 1
        rt.active -= 1
        if self.retrying:
            rt.retrying -= 1
