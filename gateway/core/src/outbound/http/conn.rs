//! One downstream connection of an outbound HTTP listener: hyper's HTTP/1.1 or HTTP/2 (h2c with prior knowledge,
//! told by its preface as Envoy's AUTO codec does on the local upstream port, http2-grpc.md §2.3, §7 item 7)
//! server over the app's socket (bytes counted for the listener), the idle keep-alive watchdog, drain, and the
//! per-request look-up of the current plan.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::balancer::now_ns;
use super::forward::handle;
use super::Plan;
use crate::http::h2::{cut_reason, server_builder, ResetWatch};
use crate::http::sniff::{sniff, Codec, Prefixed};
use crate::listener::ListenerStats;
use crate::state::{self, Compiled, Shared};
use crate::stats::GaugeGuard;

/// Requests in flight on one downstream connection and when it last had one: the idle-timeout watchdog's view.
#[derive(Default)]
pub(super) struct IdleTrack {
    pub(super) inflight: std::sync::atomic::AtomicUsize,
    pub(super) last_ns: AtomicU64,
}

pub(super) struct ConnCtx {
    /// An HTTP/1.0 request's answer is on its way: its status line says HTTP/1.1 (see `Counted`).
    pub(super) http10: Arc<std::sync::atomic::AtomicBool>,
    /// The key of this listener's plan in every snapshot (its bind address, state.rs).
    pub(super) key: Option<String>,
    pub(super) idle: Arc<IdleTrack>,
    pub(super) shared: Arc<Shared>,
    pub(super) accept_plan: Arc<Plan>,
    pub(super) peer_ip: String,
    pub(super) stats: ListenerStats,
}

impl ConnCtx {
    /// Per request, as the Python listener read `holder.current`: a route change applies to the next request
    /// of a kept-alive connection too.
    pub(super) fn current(&self) -> (Arc<Compiled>, Arc<Plan>) {
        let snap = self.shared.current.load_full();
        let plan = match self
            .key
            .as_ref()
            .and_then(|k| snap.plans.get(k))
            .map(|p| &**p)
        {
            Some(state::Plan::Upstream(p)) => p.http.clone(),
            _ => None,
        }
        .unwrap_or_else(|| self.accept_plan.clone());
        (snap, plan)
    }
}

pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    snap: Arc<Compiled>,
    plan: Arc<Plan>,
    stats: ListenerStats,
) {
    // Which plan key is ours: found once per connection by identity, then looked up per request.
    let key = snap.plans.iter().find_map(|(k, p)| match &**p {
        state::Plan::Upstream(u) if u.http.as_ref().is_some_and(|h| Arc::ptr_eq(h, &plan)) => {
            Some(k.clone())
        }
        _ => None,
    });
    stats.accepted.inc();
    let _active = GaugeGuard::new(&stats.active);
    let shared = stats.shared().clone();
    plan.registry.ensure_sweeper(&shared);
    let mut b = hyper::server::conn::http1::Builder::new();
    // hyper's own header-read timer would also close idle keep-alive connections, uncounted: the watchdog below
    // does it instead, counted as meshgw_http_timeouts_total{kind="idle"} as the Python listener's sweep did.
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .max_headers(plan.max_headers)
        // As the inbound listener's (inbound/http/mod.rs): one buffer per answer.
        .writev(false)
        .header_read_timeout(None);
    let idle_timeout = plan.idle_timeout;
    let idle = Arc::new(IdleTrack::default());
    idle.last_ns.store(now_ns(), Ordering::Relaxed);
    let m_idle = plan.m.timeouts[2].clone();
    let mut draining = shared.draining.subscribe();
    let http10 = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cx = Arc::new(ConnCtx {
        http10: http10.clone(),
        key,
        idle: idle.clone(),
        shared,
        accept_plan: plan,
        peer_ip: peer.ip().to_string(),
        stats: stats.clone(),
    });
    // Until its first bytes the connection is idle: drain closes it as it would an idle keep-alive one.
    let (codec, stream) = tokio::select! {
        r = sniff(stream, Some(idle_timeout)) => match r {
            Ok(x) => x,
            Err(_) => return,
        },
        _ = draining.wait_for(|d| *d) => return,
    };
    let io = TokioIo::new(Counted {
        http10,
        inner: stream,
        rx: 0,
        tx: 0,
        stats: stats.clone(),
    });
    if codec == Codec::Http2 {
        serve_h2(io, cx, draining, &stats).await;
        return;
    }
    let svc = service_fn(move |req| {
        let cx = cx.clone();
        async move { Ok::<_, Infallible>(handle(req, cx, std::time::Instant::now()).await) }
    });
    let conn = b.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let check = (idle_timeout / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let idle_ns = u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX);
    let mut closing = false;
    if *draining.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            _ = &mut conn => return,
            // Drain: the exchange in flight finishes, then the connection closes (idle ones at once).
            r = draining.changed(), if !closing => {
                if r.is_err() || *draining.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(check), if !closing => {
                let quiet = idle.inflight.load(Ordering::Relaxed) == 0
                    && now_ns().saturating_sub(idle.last_ns.load(Ordering::Relaxed)) >= idle_ns;
                if quiet {
                    m_idle.inc();
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// h2c from the app: streams multiplexed, each its own task. A stream reset before its answer counts towards
/// Rapid Reset as on the mesh side (`http::h2`); drain is h2's double GOAWAY. Idle connections close after the
/// listener's idle timeout as HTTP/1.1 ones do.
async fn serve_h2(
    io: TokioIo<Counted>,
    cx: Arc<ConnCtx>,
    mut draining: tokio::sync::watch::Receiver<bool>,
    stats: &ListenerStats,
) {
    let plan = cx.accept_plan.clone();
    let resets = ResetWatch::new();
    let idle = cx.idle.clone();
    let svc_resets = resets.clone();
    let svc = service_fn(move |req| {
        let cx = cx.clone();
        let started = std::time::Instant::now();
        let mut stream = svc_resets.stream(started);
        // A pointer moves through hyper's stream task, not the request's whole state (see http::h2::Exec).
        Box::pin(async move {
            let r = handle(req, cx, started).await;
            stream.answered();
            Ok::<_, Infallible>(r)
        })
    });
    // The app's own requests: the header list bound is the listener's header count bound's order of size.
    let conn = server_builder(64 * 1024).serve_connection(io, svc);
    tokio::pin!(conn);
    let idle_ns = u64::try_from(plan.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
    let check = (plan.idle_timeout / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let mut closing = false;
    if *draining.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    let result = loop {
        tokio::select! {
            r = &mut conn => break r,
            _ = resets.cut.notified() => {
                plan.m.h2_cuts.count("rapid_reset");
                return;
            }
            r = draining.changed(), if !closing => {
                if r.is_err() || *draining.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(check), if !closing => {
                let quiet = idle.inflight.load(Ordering::Relaxed) == 0
                    && now_ns().saturating_sub(idle.last_ns.load(Ordering::Relaxed)) >= idle_ns;
                if quiet {
                    plan.m.timeouts[2].inc();
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = result {
        if let Some(reason) = cut_reason(&e) {
            // The local app is not scanned: h2's abuse bounds count as one.
            let reason = if reason == crate::http::h2::CALM {
                "stream_error_flood"
            } else {
                reason
            };
            plan.m.h2_cuts.count(reason);
            stats.shared().log(
                crate::state::Level::Warning,
                format!(
                    "{}: HTTP/2 connection from the app closed: {reason}",
                    plan.listener
                ),
            );
        }
    }
}

/// The downstream socket with its byte counts, added to the listener's when the connection ends.
struct Counted {
    http10: Arc<std::sync::atomic::AtomicBool>,
    inner: Prefixed<TcpStream>,
    rx: u64,
    tx: u64,
    stats: ListenerStats,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.bytes_received.add(self.rx);
        self.stats.bytes_sent.add(self.tx);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.rx += n as u64;
        r
    }
}

impl Counted {
    /// hyper answers an HTTP/1.0 request with an HTTP/1.0 status line; the Python proxy (and RFC 9110 §6.2: the
    /// highest minor version the server conforms to) said HTTP/1.1. Framing stays hyper's (close-delimited or
    /// Content-Length, never chunked, for a 1.0 client); only the version digit of the head's first write is
    /// changed, same length.
    fn patched(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if self.http10.load(Ordering::Relaxed) && buf.starts_with(b"HTTP/1.0 ") {
            let mut v = buf.to_vec();
            v[7] = b'1';
            Some(v)
        } else {
            None
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let patched = self.patched(buf);
        let r = match &patched {
            Some(v) => Pin::new(&mut self.inner).poll_write(cx, v),
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = &r {
            self.tx += *n as u64;
            if patched.is_some() && *n > 0 {
                self.http10.store(false, Ordering::Relaxed);
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.http10.load(Ordering::Relaxed) && first.starts_with(b"HTTP/1.0 ") {
                // A short write of the head alone is allowed; the rest follows in the next call.
                let first: &[u8] = first;
                return self.poll_write(cx, first);
            }
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.tx += *n as u64;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
