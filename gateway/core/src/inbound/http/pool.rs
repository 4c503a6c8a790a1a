//! Keep-alive HTTP/1.1 connections to the local app (gateway/http/pool.py's job): a bounded stack of idle
//! connections, newest first. A connection is taken only once a request is complete in its head and authorized,
//! and goes back only when its response body ended and its request body was sent whole, so a slow caller never
//! holds an idle app connection (l7-security.md §6; the brief's slow-head rule). Pools are shared across
//! snapshots with the same settings, so a snapshot swap does not drop the warm connections.
//!
//! An `http2`/`grpc` app is reached over h2c with prior knowledge (http2-grpc.md §2.2): one connection per app
//! address carries every stream (an `H2Client` is a handle to it), replaced when it closes. An idle HTTP/1.1
//! connection belongs to the pool alone; taking it checks, without waiting, that the app has not closed it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::body::ReqState;
use crate::http::h1_client::H1Client;

type Key = (usize, Option<Duration>, Duration);

pub type AppSender = H1Client;
pub type AppSender2 = crate::http::h2_client::H2Client;

static POOLS: Mutex<Vec<(Key, Weak<AppPool>)>> = Mutex::new(Vec::new());

struct Idle {
    host: String,
    port: u16,
    sender: AppSender,
    since: Instant,
}

pub struct AppPool {
    idle: Mutex<VecDeque<Idle>>,
    /// h2c connections by app address (a handful at most: one per address the listeners name).
    h2: Mutex<Vec<(String, u16, AppSender2)>>,
    /// One h2c dial at a time: a burst of requests on a cold pool shares the first connection.
    h2_gate: tokio::sync::Mutex<()>,
    max_idle: usize,
    idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
}

pub enum DialError {
    Timeout,
    Io(std::io::Error),
    /// The HTTP/1.1 or HTTP/2 set-up failed.
    Handshake(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Timeout => f.write_str("timed out"),
            DialError::Io(e) => write!(f, "{e}"),
            DialError::Handshake(e) => write!(f, "{e}"),
        }
    }
}

/// A connection in use, to be handed back when its exchange ends cleanly.
pub struct Checkin {
    pool: Arc<AppPool>,
    host: String,
    port: u16,
    sender: AppSender,
    req: Arc<ReqState>,
}

impl Checkin {
    pub fn put_back(self) {
        // A request body not sent whole (the app answered early, or the caller's framing broke) leaves the
        // connection mid-message: it cannot carry another request.
        if self.req.is_whole() && self.sender.is_ready() {
            self.pool.put(self.host, self.port, self.sender);
        }
    }
}

impl AppPool {
    /// The pool for these settings, shared with every plan that has the same ones.
    pub fn shared(
        max_idle: usize,
        idle_timeout: Option<Duration>,
        connect_timeout: Duration,
    ) -> Arc<AppPool> {
        let key = (max_idle, idle_timeout, connect_timeout);
        let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(_, w)| w.strong_count() > 0);
        if let Some(p) = pools
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return p;
        }
        let p = Arc::new(AppPool {
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(Vec::new()),
            h2_gate: tokio::sync::Mutex::new(()),
            max_idle,
            idle_timeout,
            connect_timeout,
        });
        pools.push((key, Arc::downgrade(&p)));
        p
    }

    fn put(&self, host: String, port: u16, sender: AppSender) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            idle.pop_front(); // the oldest goes: the bound holds (design.md "every queue")
        }
        idle.push_back(Idle {
            host,
            port,
            sender,
            since: Instant::now(),
        });
    }

    /// The newest idle connection to `host:port` that is still usable, or None.
    pub fn take(&self, host: &str, port: u16) -> Option<AppSender> {
        loop {
            let cand = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = self.idle_timeout {
                    // Oldest first (put pushes at the back): the expired ones are a prefix.
                    let now = Instant::now();
                    while idle
                        .front()
                        .is_some_and(|i| now.duration_since(i.since) >= t)
                    {
                        idle.pop_front();
                    }
                }
                let at = idle
                    .iter()
                    .rposition(|i| i.host == host && i.port == port)?;
                idle.remove(at)?
            };
            if cand.sender.is_ready() {
                return Some(cand.sender);
            }
            // The app closed it while idle (or sent something unasked): dropped, try the next.
        }
    }

    /// The open h2c connection to `host:port`, if there is one.
    pub fn take_h2(&self, host: &str, port: u16) -> Option<AppSender2> {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|(_, _, s)| !s.is_closed());
        h2.iter()
            .find(|(h, p, _)| h == host && *p == port)
            .map(|(_, _, s)| s.clone())
    }

    /// The open h2c connection to the app, or a new one (one dial at a time; waiters share its result).
    pub async fn take_or_dial_h2(&self, host: &str, port: u16) -> Result<AppSender2, DialError> {
        if let Some(s) = self.take_h2(host, port) {
            return Ok(s);
        }
        let _gate = self.h2_gate.lock().await;
        if let Some(s) = self.take_h2(host, port) {
            return Ok(s);
        }
        self.dial_h2(host, port).await
    }

    /// A new h2c connection to the app, kept for the requests after this one.
    pub async fn dial_h2(&self, host: &str, port: u16) -> Result<AppSender2, DialError> {
        let stream = self.connect(host, port).await?;
        let sender = crate::http::h2_client::handshake(stream, ())
            .await
            .map_err(|e| DialError::Handshake(e.to_string()))?;
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|(h, p, s)| !(s.is_closed() || (h == host && *p == port)));
        h2.push((host.to_owned(), port, sender.clone()));
        Ok(sender)
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Err(_) => return Err(DialError::Timeout),
            Ok(Err(e)) => return Err(DialError::Io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new connection to the app, driven by the requests that use it (crate::http::h1_client).
    pub async fn dial(&self, host: &str, port: u16) -> Result<AppSender, DialError> {
        let stream = self.connect(host, port).await?;
        Ok(H1Client::new(stream, ()))
    }

    pub fn checkin(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        sender: AppSender,
        req: Arc<ReqState>,
    ) -> Checkin {
        Checkin {
            pool: self.clone(),
            host: host.to_owned(),
            port,
            sender,
            req,
        }
    }

    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}
