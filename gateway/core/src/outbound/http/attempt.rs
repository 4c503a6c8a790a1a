//! The attempts of one request (gateway/http/outbound.py Call): endpoint pick, a pooled or new mTLS connection
//! under the breakers (max_connections, max_pending_requests), retries with budget and backoff, outlier results.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Response, Uri};

use super::balancer::{now_ns, Pick, Policy};
use super::body::Payload;
use super::conn::ConnCtx;
use super::exchange::{bad_body, Exchange, Fail};
use super::pool::{Conn, Sender};
use super::retry::{Kind, RetryPolicy};
use super::runtime::BREAKERS;
use super::{HttpCluster, Plan};
use crate::http::h1_client::ReqHead;
use crate::http::upstream_body::UpBody;
use crate::outbound::dial::{dial_one_with, Timeouts};
use crate::tls::MeshTls;

pub(super) enum ConnErr {
    Overflow(usize),
    Failed,
}

pub(super) struct Attempts<'a> {
    pub(super) cx: &'a ConnCtx,
    pub(super) plan: &'a Plan,
    pub(super) cluster: &'a Arc<HttpCluster>,
    pub(super) tls: &'a MeshTls,
    pub(super) policy: &'a RetryPolicy,
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    pub(super) hash: Option<u64>,
}

impl Attempts<'_> {
    pub(super) async fn run(
        &self,
        ex: &mut Exchange,
        mut payload: Payload,
    ) -> Result<(Response<UpBody>, Conn), Fail> {
        let c = self.cluster;
        let rt = &c.rt;
        let mut last: Option<usize> = None;
        loop {
            let any_ejected = rt.ejected.load(Ordering::Relaxed) > 0;
            let picked = c.tables.pick(&Pick {
                hosts: &c.hosts,
                rr: &rt.rr,
                hash: self.hash,
                exclude: last,
                // Read only for an ejection's end or the latency estimate's decay: no clock read otherwise.
                now: if any_ejected || c.tables.policy == Policy::PeakEwma {
                    now_ns()
                } else {
                    0
                },
                any_ejected,
            });
            let Some(i) = picked else {
                self.plan.m.no_healthy.inc();
                return Err(Fail {
                    status: 503,
                    text: "no healthy upstream",
                    flags: "UH",
                    overloaded: None,
                });
            };
            last = Some(i);
            let mut conn = match self.connect(i).await {
                Ok(conn) => conn,
                Err(ConnErr::Overflow(b)) => {
                    rt.m.trips[b].inc();
                    return Err(Fail {
                        status: 503,
                        text: "upstream overflow",
                        flags: "UO",
                        overloaded: Some(BREAKERS[b]),
                    });
                }
                Err(ConnErr::Failed) => {
                    rt.host_result(&c.hosts[i], 503, &c.outlier, &self.cx.shared);
                    if self.may_retry(ex, Kind::ConnectFailure, &payload) {
                        self.backoff(ex).await;
                        continue;
                    }
                    return Err(self.failed(ex, "upstream connect error", "UF"));
                }
            };
            // A connection adopted from another endpoint (at max_connections) counts for that endpoint.
            let hi = if conn.key == c.keys[i] {
                i
            } else {
                c.keys.iter().position(|k| *k == conn.key).unwrap_or(i)
            };
            if ex.log.is_some() {
                // Only the access log reads it.
                ex.upstream_host = format!("{}:{}", conn.key.0, conn.key.1);
            }
            if conn.tx.ready().await.is_err() {
                // Closed while idle in the pool: not an attempt; the next pick gets another connection.
                continue;
            }
            let Some(body) = payload.take() else {
                return Err(self.failed(
                    ex,
                    "upstream connection reset before the response headers",
                    "UC",
                ));
            };
            // The head stays here for another attempt: the HTTP/1.1 hop writes it from a borrow.
            let head = ReqHead {
                method: &self.method,
                uri: &self.uri,
                headers: &self.headers,
            };
            let host = &c.hosts[hi];
            ex.attach(host);
            // Only the latency-aware policy reads the estimate: others skip the two clock reads and the lock.
            let t0 = (c.tables.policy == Policy::PeakEwma).then(Instant::now);
            match conn.tx.try_send(head, body).await {
                Ok(resp) => {
                    if let Some(t0) = t0 {
                        host.observe_rtt(t0.elapsed());
                    }
                    let status = resp.status().as_u16();
                    let grpc_retry = ex.grpc && self.policy.grpc_retriable(resp.headers());
                    if grpc_retry && self.may_retry(ex, Kind::Grpc, &payload) {
                        ex.detach();
                        rt.host_result(host, status, &c.outlier, &self.cx.shared);
                        drop(resp);
                        self.backoff(ex).await;
                        continue;
                    }
                    if self.policy.status_retriable(status)
                        && self.may_retry(ex, Kind::Status, &payload)
                    {
                        ex.detach();
                        rt.host_result(host, status, &c.outlier, &self.cx.shared);
                        drop(resp);
                        self.backoff(ex).await;
                        continue;
                    }
                    rt.host_result(host, status, &c.outlier, &self.cx.shared);
                    return Ok((resp, conn));
                }
                Err(mut e) => {
                    ex.detach();
                    if let Some(body) = e.take_body() {
                        // Never sent (the connection closed first): as a connect failure, safe for any method.
                        payload.put_back(body);
                        rt.host_result(host, 503, &c.outlier, &self.cx.shared);
                        if self.may_retry(ex, Kind::ConnectFailure, &payload) {
                            self.backoff(ex).await;
                            continue;
                        }
                        return Err(self.failed(ex, "upstream connect error", "UF"));
                    }
                    if ex.tap.failed.load(Ordering::Relaxed) {
                        return Err(bad_body());
                    }
                    rt.host_result(host, 503, &c.outlier, &self.cx.shared);
                    if self.may_retry(ex, Kind::Reset, &payload) {
                        self.backoff(ex).await;
                        continue;
                    }
                    return Err(self.failed(
                        ex,
                        "upstream connection reset before the response headers",
                        "UC",
                    ));
                }
            }
        }
    }

    fn failed(&self, ex: &Exchange, text: &'static str, flags: &'static str) -> Fail {
        Fail {
            status: 503,
            text,
            flags: if ex.retries > 0 { "URX" } else { flags },
            overloaded: None,
        }
    }

    fn may_retry(&self, ex: &Exchange, kind: Kind, payload: &Payload) -> bool {
        if !self
            .policy
            .allows(kind, ex.retries, &self.method, payload.can_replay())
        {
            return false;
        }
        let rt = &self.cluster.rt;
        if !ex.retrying
            && !self.policy.budget_allows(
                rt.retrying.load(Ordering::Relaxed),
                rt.active.load(Ordering::Relaxed),
            )
        {
            rt.m.retry_overflow.inc();
            return false;
        }
        if let Some(c) = rt.m.retries.get(kind as usize) {
            c.inc();
        }
        true
    }

    async fn backoff(&self, ex: &mut Exchange) {
        ex.retries += 1;
        if !ex.retrying {
            ex.retrying = true;
            self.cluster.rt.retrying.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(self.policy.backoff(ex.retries)).await;
    }

    /// A connection to endpoint `i`: an idle pooled one, else a new one while under max_connections (the
    /// request pending meanwhile), else at the limit any idle one or a place in the queue (max_pending).
    async fn connect(&self, i: usize) -> Result<Conn, ConnErr> {
        let c = self.cluster;
        let rt = &c.rt;
        let key = &c.keys[i];
        if let Some(conn) = rt.pool.take(key) {
            return Ok(conn);
        }
        // h2: while one request dials the endpoint, the others wait for its connection (held to the end).
        let gate = self.plan.h2.then(|| rt.pool.h2_gate(key));
        let _dialing = match &gate {
            Some(g) => {
                let held = g.lock().await;
                if let Some(conn) = rt.pool.take(key) {
                    return Ok(conn);
                }
                Some(held)
            }
            None => None,
        };
        let limits = c.limits;
        loop {
            let (total, dialing) = rt.pool.counts();
            let pending = rt.pending.load(Ordering::Relaxed);
            if total + dialing >= limits.max_connections {
                if let Some(conn) = rt.pool.take_any() {
                    return Ok(conn);
                }
                if pending >= limits.max_pending_requests {
                    return Err(ConnErr::Overflow(if limits.max_pending_requests > 0 {
                        1
                    } else {
                        0
                    }));
                }
                let _p = Pending::new(self.cluster);
                rt.pool.freed.notified().await;
                if let Some(conn) = rt.pool.take(key) {
                    return Ok(conn);
                }
                continue;
            }
            if pending >= limits.max_pending_requests {
                return Err(ConnErr::Overflow(1));
            }
            let _p = Pending::new(self.cluster);
            let _d = rt.pool.begin_dial();
            // Boxed: the dial's TLS handshake state is only needed on a cold pool, not in every request's future.
            return Box::pin(self.dial(i)).await;
        }
    }

    async fn dial(&self, i: usize) -> Result<Conn, ConnErr> {
        let c = self.cluster;
        let ep = &c.endpoints[i];
        let t = Timeouts {
            connect: c.connect_timeout,
            handshake: self.plan.handshake_timeout,
        };
        let client = if self.plan.h2 {
            &self.tls.client_h2
        } else {
            &self.tls.client_http
        };
        let s = match dial_one_with(ep, &c.dial, client, &t).await {
            Ok(s) => {
                self.cx.stats.handshake(s.get_ref().1);
                s
            }
            Err((reason, detail)) => {
                if detail.ends_with("timed out") {
                    self.plan.m.timeouts[0].inc();
                }
                self.cx.stats.upstream_error(reason, || detail);
                return Err(ConnErr::Failed);
            }
        };
        let open = c.rt.pool.opened();
        if self.plan.h2 {
            // h2 whatever ALPN said, as Envoy's explicit-HTTP/2 cluster (http2-grpc.md §2.4, §7 item 5).
            let tx = match crate::http::h2_client::handshake(s, open).await {
                Ok(x) => x,
                Err(e) => {
                    self.cx
                        .stats
                        .upstream_error("connect_failed", || format!("HTTP/2 set-up failed: {e}"));
                    return Err(ConnErr::Failed);
                }
            };
            c.rt.pool.add_h2(&c.keys[i], &tx);
            return Ok(Conn {
                tx: Sender::H2(tx),
                key: c.keys[i].clone(),
            });
        }
        // Driven by the request task itself (crate::http::h1_client); `open` lives as long as the connection.
        let tx = crate::http::h1_client::H1Client::new(s, open);
        Ok(Conn {
            tx: Sender::H1(tx),
            key: c.keys[i].clone(),
        })
    }
}

/// A request waiting for a connection (meshgw_http_pending_requests, the max_pending_requests breaker).
pub(super) struct Pending(Arc<HttpCluster>);

impl Pending {
    fn new(c: &Arc<HttpCluster>) -> Pending {
        let n = c.rt.pending.fetch_add(1, Ordering::Relaxed) + 1;
        c.rt.m.pending.set(n as i64);
        Pending(c.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let n = self
            .0
            .rt
            .pending
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.0.rt.m.pending.set(n as i64);
    }
}
