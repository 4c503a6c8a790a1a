//! Inbound HTTP (the sidecar's public listener with an HTTP-like protocol) on hyper, HTTP/1.1 and HTTP/2 on the
//! same pipeline: per request, Envoy's
//! order as a Consul ≥ 1.20.1 sidecar runs it (l7-security.md §1.2, §6.1): codec checks → target form → Host
//! and header checks → path normalization → L7 intentions on the normalized path → the local app over pooled
//! keep-alive connections, with the same normalized path forwarded (§6.7). Replaces the inbound side of
//! gateway/listeners.py (`InboundListener._serve_http`, `_request`, `_open_app`), gateway/http/proxy.py and
//! gateway/_httpcore.c.
//!
//! Intentions and normalization settings come from the snapshot current at each request (an intention change
//! applies to the next request of a kept-alive connection, as in the Python path); limits, timeouts and the
//! app pool are the connection's plan's.
//!
//! # The listener's `http` section (emitted by gateway/corespec/inbound_http.py)
//!
//! Every key is optional; unknown keys are refused (the plan is not built, the listener refuses connections).
//! ```text
//! {
//!   "normalization": {                                  // the mesh entry's HTTP.Incoming.RequestNormalization
//!     "insecure_disable_path_normalization": false,     //   (l7-security.md §1.1; Consul's CamelCase names
//!     "merge_slashes": false,                           //   are accepted too)
//!     "path_with_escaped_slashes_action": "IMPLEMENTATION_SPECIFIC_DEFAULT",  // | KEEP_UNCHANGED |
//!                                                       //   REJECT_REQUEST | UNESCAPE_AND_REDIRECT | UNESCAPE_AND_FORWARD
//!     "headers_with_underscores_action": "ALLOW"        // | REJECT_REQUEST | DROP_HEADER
//!   },
//!   "max_request_headers_kb": 60,        // request head bound → 431 (Envoy max_request_headers_kb)
//!   "max_headers": 100,                  // header count bound → 431 (Envoy max_headers_count)
//!   "request_headers_timeout_ms": 0,     // whole head within this, else the connection closes; 0 = off (Envoy)
//!   "request_timeout_ms": 15000,         // route timeout: end of request → response head, else 504; 0 = off.
//!                                        //   meshgw.yaml inbound.request_timeout (the Python path's 15 s default =
//!                                        //   Envoy's route default when Consul's local_request_timeout_ms is unset)
//!   "stream_idle_timeout_ms": 300000,    // no body frame either way this long: 408 before the head, reset after;
//!                                        //   0 = off (Envoy's 5 min default)
//!   "idle_timeout_ms": 3600000,          // a connection without a byte either way this long is closed;
//!                                        //   meshgw.yaml inbound.idle_timeout (1 h, Envoy's HCM default)
//!   "max_idle_app_connections": 64,      // idle keep-alive connections kept to the app
//!   "app_idle_timeout_ms": 3600000,      // an idle app connection older than this is not reused; 0 = no limit
//!   "access_log": {"enabled": false,     // records pushed through Shared::access_record when on
//!                  "fields": [...]}      // gateway/config.py ACCESS_LOG_FIELDS names, in order; [] = defaults
//! }
//! ```
//! The connect timeout to the app is the listener's `limits.connect_timeout_ms`.
//!
//! Differences from the Python path, all towards Envoy (the contract, l7-security.md): HTTP/1.0 gets 426
//! (the Python proxy served it; no e2e test sends 1.0 to an inbound listener); the 403 body is exactly
//! `RBAC: access denied` without the reason; local 400/404/426/307 carry no body; malformed heads get hyper's
//! bodiless 400 (and 431 over the head bounds); `Connection` can no longer nominate `Content-Length`,
//! `Transfer-Encoding` or `Host` away (the smuggling bypass); `TE: trailers` is kept as Envoy keeps it.
//! No `x-forwarded-client-cert`: the Python inbound path did not add one either.

//!
//! # HTTP/2 (`http2`, `grpc`; http2-grpc.md §2.1, §7)
//! The codec is the one ALPN chose (`tls::Alpn`), else the preface decides (`http::sniff`), as Envoy's AUTO
//! codec. An HTTP/2 request goes through the same checks (`:authority` stands for Host; h2 itself refuses
//! connection-specific fields, a `te` other than `trailers`, bad names and a content-length that disagrees
//! with the DATA, RFC 9113 §8.2, §8.1.1, as stream errors) and intentions. The app gets h2c with prior knowledge
//! when the listener's protocol is `http2`/`grpc` (one multiplexed connection per app address) and HTTP/1.1
//! when it is `http`, so callers and app may differ (hyper translates; trailers pass on h2). A gRPC request's
//! local answers are trailers-only with a `grpc-status` (`http::grpc`). `CONNECT` (and so extended CONNECT,
//! never enabled in SETTINGS) is refused with 404 as Envoy's route table without a connect matcher does.
//! Abuse bounds and their counter: `http::h2`.

mod accesslog;
mod body;
mod config;
mod headers;
mod local;
mod metrics;
mod pool;
mod request;
mod tap;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

pub use config::Policy;

use super::Plan;
use crate::http::h2::{cut_reason, server_builder, ResetWatch};
use crate::http::sniff::{sniff, Codec, Prefixed};
use crate::identity::Peer;
use crate::listener::ListenerStats;
use crate::snapshot::Addr;
use crate::state::{Compiled, Level};
use crate::stats::GaugeGuard;
use metrics::Timeout;

/// hyper reads ahead at most this much past a head (its read buffer bound, besides the head bound itself).
const READ_AHEAD: usize = 16 * 1024;

/// One downstream connection: what every request on it shares.
pub(crate) struct Conn {
    pub peer: Peer,
    pub client_ip: String,
    pub app: Addr,
    /// The app speaks h2c (the listener's protocol is `http2` or `grpc`).
    pub app_h2: bool,
    pub codec: Codec,
    pub policy: Arc<Policy>,
    pub stats: ListenerStats,
    pub recent: tap::Recent,
    /// HTTP/2: Envoy's premature-reset accounting of this connection.
    pub resets: Option<Arc<ResetWatch>>,
    /// The relay of an upgraded (WebSocket) exchange: the connection is over when it is.
    pub tunnel: Mutex<Option<JoinHandle<()>>>,
}

pub async fn serve(
    tls: TlsStream<TcpStream>,
    peer: Peer,
    peer_addr: SocketAddr,
    _snap: &Arc<Compiled>,
    plan: &Plan,
    policy: &Arc<Policy>,
    stats: &ListenerStats,
) {
    stats.accepted.inc();
    let _active = GaugeGuard::new(&stats.active);
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (codec, io) = match alpn.as_deref() {
        Some(crate::tls::H2) => (Codec::Http2, Prefixed::new(tls)),
        Some(_) => (Codec::Http1, Prefixed::new(tls)),
        // No ALPN: the preface decides (Envoy's AUTO codec, http2-grpc.md §7 item 4).
        None => {
            let mut draining = stats.shared().draining.subscribe();
            tokio::select! {
                r = sniff(tls, policy.request_headers_timeout) => match r {
                    Ok(x) => x,
                    Err(_) => return,
                },
                _ = draining.wait_for(|d| *d) => return,
            }
        }
    };
    // hyper's read buffer bound: when it hands a request over, its head and everything read past it are
    // within the last max_buf_size bytes read (tap.rs).
    let recent = tap::Recent::new(max_buf(policy) + 4096);
    if codec == Codec::Http2 {
        recent.http2();
    }
    let io = TokioIo::new(tap::Tap::new(io, recent.clone()));
    let conn = Arc::new(Conn {
        peer,
        client_ip: peer_addr.ip().to_string(),
        app: plan.app.clone(),
        app_h2: plan.protocol.is_h2(),
        codec,
        policy: policy.clone(),
        stats: stats.clone(),
        recent: recent.clone(),
        resets: (codec == Codec::Http2).then(ResetWatch::new),
        tunnel: Mutex::new(None),
    });
    match codec {
        Codec::Http1 => serve_http1(io, &conn).await,
        Codec::Http2 => serve_http2(io, &conn).await,
    }
    let (rx, tx) = recent.counts();
    stats.bytes_received.add(rx);
    stats.bytes_sent.add(tx);
    let tunnel = conn.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = tunnel {
        let _ = t.await;
    }
}

async fn serve_http1<I>(io: TokioIo<I>, conn: &Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let policy = &conn.policy;
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(policy.request_headers_timeout)
        .max_headers(policy.max_headers)
        .max_header_size(policy.max_head_bytes)
        .max_buf_size(max_buf(policy))
        // One buffer per answer (head and body copied together), not a vectored write: TLS takes a vectored write
        // as a list it collects per call, and an answer is mostly small. Same-hour A/B of the HTTP/1.1 pair, both
        // listeners: 31.0 -> 30.1 us per request.
        .writev(false)
        .keep_alive(true);
    let served = b
        .serve_connection(io, service_fn(|req| conn.handle(req)))
        .with_upgrades();
    tokio::pin!(served);
    let mut draining = conn.stats.shared().draining.subscribe();
    let mut closing = false;
    let result = loop {
        let deadline = policy.idle_timeout.map(|t| conn.recent.last_activity() + t);
        tokio::select! {
            r = served.as_mut() => break r,
            Ok(_) = draining.wait_for(|d| *d), if !closing => {
                // Drain: the exchange in flight finishes, then the connection closes (idle ones at once).
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = sleep_until(deadline), if !closing => {
                if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                    // No byte either way for idle_timeout (gateway/listeners.py `_sweep`): closed, counted.
                    policy.stats.timeout(Timeout::Idle);
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            // hyper's header_read_timeout: the caller did not send a whole head in time.
            policy.stats.timeout(Timeout::RequestHeaders);
        } else if e.is_parse_too_large() || e.is_parse() {
            // hyper answered a head it could not take itself (431 over the head bounds, else 400) and closed;
            // counted as the Python path counted its malformed-request 400s.
            let status = if e.is_parse_too_large() { 431 } else { 400 };
            policy.stats.response(status, std::time::Duration::ZERO);
            conn.stats.shared().log(
                Level::Info,
                format!(
                    "{}: malformed request from {}: {e}",
                    conn.stats.name, conn.peer.uri
                ),
            );
        }
    }
}

/// HTTP/2: each stream is a task of its own (hyper's executor), so the handler owns its connection state.
/// Drain sends GOAWAY twice (h2's graceful shutdown: last-stream-id 2^31-1, a PING, then the real one,
/// RFC 9113 §6.8, http2-grpc.md §5.4); the streams in flight finish.
async fn serve_http2<I>(io: TokioIo<I>, conn: &Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let policy = &conn.policy;
    let header_list = u32::try_from(policy.max_head_bytes).unwrap_or(u32::MAX);
    let svc_conn = conn.clone();
    let svc = service_fn(move |req| {
        let c = svc_conn.clone();
        // A pointer moves through hyper's stream task, not the request's whole state (see http::h2::Exec).
        Box::pin(async move { c.handle(req).await })
    });
    let served = server_builder(header_list).serve_connection(io, svc);
    tokio::pin!(served);
    let mut draining = conn.stats.shared().draining.subscribe();
    let resets = conn.resets.clone().unwrap_or_default();
    let mut closing = false;
    let result = loop {
        let deadline = policy.idle_timeout.map(|t| conn.recent.last_activity() + t);
        tokio::select! {
            r = served.as_mut() => break r,
            _ = resets.cut.notified() => {
                // Rapid Reset: cut at once, without a graceful GOAWAY the peer would use for more of it.
                policy.cuts.count("rapid_reset");
                log_cut(conn, "rapid_reset");
                return;
            }
            Ok(_) = draining.wait_for(|d| *d), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = sleep_until(deadline), if !closing => {
                if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                    policy.stats.timeout(Timeout::Idle);
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    let reason = if conn.recent.flooded() {
        Some("control_frame_flood")
    } else {
        result.as_ref().err().and_then(cut_reason).map(|r| match r {
            crate::http::h2::CALM => conn.recent.calm_reason(),
            r => r,
        })
    };
    if let Some(reason) = reason {
        policy.cuts.count(reason);
        let detail = result
            .err()
            .map(|e| format!(" ({})", crate::http::h2::error_text(&e)))
            .unwrap_or_default();
        log_cut(conn, &format!("{reason}{detail}"));
    }
}

fn log_cut(conn: &Conn, reason: &str) {
    conn.stats.shared().log(
        Level::Warning,
        format!(
            "{}: HTTP/2 connection from {} closed: {reason}",
            conn.stats.name, conn.peer.uri
        ),
    );
}

fn max_buf(policy: &Policy) -> usize {
    (policy.max_head_bytes + READ_AHEAD).max(8192)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
