//! Keep-alive connection pool of one cluster, keyed by endpoint (gateway/http/pool.py): HTTP/1.1 client
//! connections (hyper) over mTLS. It counts open connections and dials in progress for the max_connections
//! breaker; a connection going back or going away wakes one request queued at that limit (Envoy's HTTP/1
//! pool behaviour: requests wait as "pending" while the cluster is at its connection limit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use tokio::sync::Notify;

use super::body::ReqBody;

/// Idle connections kept per endpoint; more are closed when returned (pool.py MAX_IDLE).
pub const MAX_IDLE: usize = 64;

pub type Key = (String, u16);

pub struct Conn {
    pub tx: SendRequest<ReqBody>,
    pub key: Key,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    idle: HashMap<Key, Vec<Idle>>,
    /// Open connections made through this pool, busy or idle.
    total: usize,
    dialing: usize,
}

#[derive(Default)]
pub struct Pool {
    inner: Mutex<Inner>,
    /// A connection came back or went away: one queued request tries again.
    pub freed: Notify,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take(&self, key: &Key) -> Option<Conn> {
        let mut g = self.lock();
        let list = g.idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if !i.conn.tx.is_closed() && i.conn.tx.is_ready() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Any endpoint's idle connection: at max_connections a request takes what there is.
    pub fn take_any(&self) -> Option<Conn> {
        let mut g = self.lock();
        for list in g.idle.values_mut() {
            while let Some(i) = list.pop() {
                if !i.conn.tx.is_closed() && i.conn.tx.is_ready() {
                    return Some(i.conn);
                }
            }
        }
        None
    }

    pub fn release(&self, conn: Conn) {
        if conn.tx.is_closed() {
            return;
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
        let g = self.lock();
        (g.total, g.dialing)
    }

    pub fn begin_dial(self: &Arc<Self>) -> DialGuard {
        self.lock().dialing += 1;
        DialGuard(self.clone())
    }

    /// Held by the connection's task for as long as it runs.
    pub fn opened(self: &Arc<Self>) -> OpenGuard {
        self.lock().total += 1;
        OpenGuard(self.clone())
    }

    pub fn close_idle(&self, older_than: Duration) {
        let mut g = self.lock();
        for list in g.idle.values_mut() {
            list.retain(|i| i.since.elapsed() < older_than && !i.conn.tx.is_closed());
        }
        g.idle.retain(|_, l| !l.is_empty());
    }

    pub fn close_all(&self) {
        self.lock().idle.clear();
    }
}

pub struct DialGuard(Arc<Pool>);

impl Drop for DialGuard {
    fn drop(&mut self) {
        {
            let mut g = self.0.lock();
            g.dialing = g.dialing.saturating_sub(1);
        }
        self.0.freed.notify_one();
    }
}

pub struct OpenGuard(Arc<Pool>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        {
            let mut g = self.0.lock();
            g.total = g.total.saturating_sub(1);
        }
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
#[path = "pool_test.rs"]
mod tests;
