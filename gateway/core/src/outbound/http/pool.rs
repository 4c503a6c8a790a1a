//! Keep-alive connection pool of one cluster, keyed by endpoint (gateway/http/pool.py): HTTP/1.1 client
//! connections (crate::http::h1_client) over mTLS. It counts open connections and dials in progress for the max_connections
//! breaker; a connection going back or going away wakes one request queued at that limit (Envoy's HTTP/1
//! pool behaviour: requests wait as "pending" while the cluster is at its connection limit).
//!
//! For `http2`/`grpc` clusters one h2 connection per endpoint carries every request (Envoy's HTTP/2 pool):
//! it is registered when dialled and shared by handle, and a request waits for stream capacity inside h2
//! (the peer's SETTINGS_MAX_CONCURRENT_STREAMS) rather than in this pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::Notify;

use super::body::ReqBody;
use crate::http::h1_client::{H1Client, ReqHead};
use crate::http::h2_client::H2Client;
use crate::http::upstream_body::UpBody;

/// Idle connections kept per endpoint; more are closed when returned (pool.py MAX_IDLE).
pub const MAX_IDLE: usize = 64;

pub type Key = (String, u16);

pub enum Sender {
    H1(H1Client),
    H2(H2Client),
}

/// A request that failed on its connection; its body is given back when none of it went out (the connection
/// was gone).
pub struct Unsent(Option<ReqBody>);

impl Unsent {
    pub fn take_body(&mut self) -> Option<ReqBody> {
        self.0.take()
    }
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => !s.is_ready(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => !s.is_closed(),
        }
    }

    /// Err: the connection closed while it was idle.
    pub async fn ready(&mut self) -> Result<(), ()> {
        match self {
            // Checked as it left the pool (`usable`), with no wait since; `send` checks once more and gives
            // the request back unsent if the peer closed it in between.
            Sender::H1(_) => Ok(()),
            Sender::H2(s) if s.is_closed() => Err(()),
            Sender::H2(_) => Ok(()),
        }
    }

    /// Sends a request whose head the caller keeps (an attempt may be followed by another). Err carries the
    /// body back when none of the request went out (the connection was gone).
    pub async fn try_send(
        &mut self,
        head: ReqHead<'_>,
        body: ReqBody,
    ) -> Result<Response<UpBody>, Unsent> {
        match self {
            Sender::H1(s) => match s.send_head(head, body).await {
                Ok(r) => Ok(r.map(UpBody::H1)),
                Err((body, _)) => Err(Unsent(body)),
            },
            Sender::H2(s) => {
                // h2 takes the head by value.
                let mut req = Request::new(body);
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.headers_mut() = head.headers.clone();
                match s.send(req).await {
                    Ok(r) => Ok(r.map(UpBody::H2)),
                    Err(e) => Err(Unsent(e.request.map(Request::into_body))),
                }
            }
        }
    }
}

pub struct Conn {
    pub tx: Sender,
    pub key: Key,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    idle: HashMap<Key, Vec<Idle>>,
    /// The shared h2 connection of each endpoint (h2 clusters only).
    h2: HashMap<Key, H2Client>,
}

#[derive(Default)]
pub struct Pool {
    inner: Mutex<Inner>,
    /// Open connections made through this pool, busy or idle, and dials in progress. Atomics, not under
    /// `inner`: a connection's count drops where the connection does, which may be inside `inner`'s lock (an
    /// idle HTTP/1.1 connection found closed, or swept).
    total: AtomicUsize,
    dialing: AtomicUsize,
    /// The cluster's idle timeout in ms (0: none yet): an idle connection older than this is never handed
    /// out, though the sweep (every quarter of it) may not have closed it yet. The peer may be closing it at
    /// that very moment, and Envoy's pool does not reuse a connection past its idle timeout either.
    idle_limit_ms: AtomicU64,
    /// One h2 dial per endpoint at a time: the requests that arrive meanwhile wait for it and share the
    /// connection, instead of each opening its own (a burst of calls on a cold pool).
    h2_gates: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// A connection came back or went away: one queued request tries again.
    pub freed: Notify,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_idle_limit(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.idle_limit_ms.store(ms, Ordering::Relaxed);
    }

    /// An idle connection that may still be handed out: open, ready, not idle past the limit.
    fn usable(&self, i: &Idle) -> bool {
        let limit = self.idle_limit_ms.load(Ordering::Relaxed);
        i.conn.tx.is_ready() && (limit == 0 || i.since.elapsed() < Duration::from_millis(limit))
    }

    pub fn take(&self, key: &Key) -> Option<Conn> {
        let mut g = self.lock();
        if let Some(s) = g.h2.get(key) {
            if !s.is_closed() {
                return Some(Conn {
                    tx: Sender::H2(s.clone()),
                    key: key.clone(),
                });
            }
            g.h2.remove(key);
        }
        let list = g.idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if self.usable(&i) {
                return Some(i.conn);
            }
        }
        None
    }

    /// Any endpoint's idle connection: at max_connections a request takes what there is.
    pub fn take_any(&self) -> Option<Conn> {
        let mut g = self.lock();
        g.h2.retain(|_, s| !s.is_closed());
        if let Some((k, s)) = g.h2.iter().next() {
            return Some(Conn {
                tx: Sender::H2(s.clone()),
                key: k.clone(),
            });
        }
        for list in g.idle.values_mut() {
            while let Some(i) = list.pop() {
                if self.usable(&i) {
                    return Some(i.conn);
                }
            }
        }
        None
    }

    /// The gate h2 dials to `key` pass one at a time.
    pub fn h2_gate(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.h2_gates.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() > 4096 {
            g.retain(|_, m| Arc::strong_count(m) > 1); // endpoints come and go: keep the map bounded
        }
        g.entry(key.clone()).or_default().clone()
    }

    /// A new h2 connection: every request to its endpoint shares it from now on.
    pub fn add_h2(&self, key: &Key, s: &H2Client) {
        self.lock().h2.insert(key.clone(), s.clone());
    }

    pub fn release(&self, conn: Conn) {
        if conn.tx.is_closed() || matches!(conn.tx, Sender::H2(_)) {
            return; // an h2 handle stays registered by add_h2; this one is a copy
        }
        {
            let mut g = self.lock();
            let list = g.idle.entry(conn.key.clone()).or_default();
            if list.len() >= MAX_IDLE {
                return; // dropped: closed
            }
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        self.freed.notify_one();
    }

    /// (open connections, dials in progress)
    pub fn counts(&self) -> (usize, usize) {
        (
            self.total.load(Ordering::Relaxed),
            self.dialing.load(Ordering::Relaxed),
        )
    }

    pub fn begin_dial(self: &Arc<Self>) -> DialGuard {
        self.dialing.fetch_add(1, Ordering::Relaxed);
        DialGuard(self.clone())
    }

    /// Held by the connection for as long as it is open. Weak: an idle HTTP/1.1 connection lives in the pool
    /// itself, so a strong count would keep a pool no plan uses alive through its own connections.
    pub fn opened(self: &Arc<Self>) -> OpenGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::downgrade(self))
    }

    pub fn close_idle(&self, older_than: Duration) {
        let mut g = self.lock();
        for list in g.idle.values_mut() {
            list.retain(|i| i.since.elapsed() < older_than && !i.conn.tx.is_closed());
        }
        g.idle.retain(|_, l| !l.is_empty());
        g.h2.retain(|_, s| !s.is_closed());
    }

    pub fn close_all(&self) {
        let mut g = self.lock();
        g.idle.clear();
        g.h2.clear();
    }
}

pub struct DialGuard(Arc<Pool>);

impl Drop for DialGuard {
    fn drop(&mut self) {
        self.0.dialing.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

pub struct OpenGuard(std::sync::Weak<Pool>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let Some(pool) = self.0.upgrade() else {
            return;
        };
        pool.total.fetch_sub(1, Ordering::Relaxed);
        pool.freed.notify_one();
    }
}

#[cfg(test)]
#[path = "pool_test.rs"]
mod tests;
