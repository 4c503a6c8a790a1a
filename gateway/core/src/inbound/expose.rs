//! Consul's Expose paths (consul.md §3.1 `Proxy.Expose`): a plaintext HTTP listener that lets the Consul agent's
//! HTTP and gRPC health checks reach chosen paths of the local app without mTLS, as Envoy serves them for
//! `consul connect envoy` (`C:agent/xds/listeners.go` `makeExposedCheckListener`). No identity and no
//! intentions: only the listed exact paths pass, each to its own port of the app; anything else is 404 and
//! never reaches the app. Replaces gateway/expose.py (an aiohttp server: the core owns every data-plane socket).
//!
//! What Envoy does there and this module does too:
//! - the route match is Envoy's exact `path` match: `:path` without its query must equal the exposed path
//!   (no normalization: l7-security.md §1.1 lists exposed-path listeners among those Consul leaves without it);
//! - paths parsed from checks (`Expose.Checks`, `ParsedFromCheck`) only take connections from the loopback
//!   ranges and the agent's LAN address, given here as `sources` (Consul's `SourcePrefixRanges`: 127.0.0.1/8,
//!   the advertise address, ::1); a connection from elsewhere finds no filter chain and is closed unanswered;
//! - `protocol: http2` (a gRPC check) is h2c with prior knowledge on both sides (`C:agent/xds/clusters.go`
//!   `makeAppCluster`, http2-grpc.md §2.2); `http` is HTTP/1.1 (HTTP/1.0 gets 426, Envoy's default);
//! - the Host field goes to the app as it came (Envoy's route has no host rewrite); hop-by-hop fields do not.
//!
//! Health checks are rare and Consul's check client does not keep connections alive, so each request dials the
//! app afresh (no pool); the listener's `max_connections` bounds the app connections in flight, and an h2c
//! connection at most `MAX_STREAMS` streams.
//!
//! # The listener's `expose` section (emitted by gateway/corespec/expose.py)
//! ```text
//! {
//!   "app_address": "127.0.0.1",          // the local app; each path names its port
//!   "protocol": "http",                  // | "http2" (h2c): one protocol per listener port
//!   "paths": [{"path": "/health", "port": 8080, "sources": []}],   // sources: IP or CIDR; [] = any caller
//!   "request_timeout_ms": 15000,         // end of request → response head, else 504 (Envoy's route default)
//!   "request_headers_timeout_ms": 10000, // the whole head within this, else the connection closes
//!   "idle_timeout_ms": 60000,            // a connection without a request this long is closed
//!   "max_request_headers_kb": 60, "max_headers": 100   // head bounds → 431 (Envoy's defaults)
//! }
//! ```
//! The connect timeout to the app is the listener's `limits.connect_timeout_ms`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::forwarding::strip_hop_by_hop;
use crate::http::h1_client::H1Client;
use crate::http::upstream_body::UpBody;
use crate::listener::ListenerStats;
use crate::snapshot::{ListenerKind, ListenerSpec};
use crate::state::Level;
use crate::stats::GaugeGuard;

/// Concurrent streams per h2c connection (each one dials the app).
const MAX_STREAMS: u32 = 16;
/// Envoy's answers (`E:source/common/router/router.cc`), as the inbound listener gives them.
const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Proto {
    #[default]
    Http,
    Http2,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    path: String,
    port: u16,
    #[serde(default)]
    sources: Vec<String>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct Spec {
    app_address: String,
    protocol: Proto,
    paths: Vec<PathSpec>,
    request_timeout_ms: u64,
    request_headers_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_request_headers_kb: usize,
    max_headers: usize,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            app_address: "127.0.0.1".into(),
            protocol: Proto::Http,
            paths: Vec::new(),
            request_timeout_ms: 15_000,
            request_headers_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_request_headers_kb: 60,
            max_headers: 100,
        }
    }
}

/// An address range `sources` allows: an IP with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 caller on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

struct Route {
    path: String,
    port: u16,
    /// Empty: any caller.
    sources: Vec<Cidr>,
}

impl Route {
    fn admits(&self, ip: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|c| c.contains(ip))
    }
}

/// One expose listener, compiled from its snapshot section.
pub struct Plan {
    app_address: String,
    http2: bool,
    routes: Vec<Route>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    request_headers_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_head_bytes: usize,
    max_headers: usize,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl Plan {
    pub fn build(l: &ListenerSpec) -> Result<Plan, String> {
        let ListenerKind::Expose { expose } = &l.kind else {
            return Err("not an expose listener".into());
        };
        let spec: Spec =
            serde_json::from_value(expose.clone()).map_err(|e| format!("expose section: {e}"))?;
        let mut routes = Vec::with_capacity(spec.paths.len());
        for p in spec.paths {
            if !p.path.starts_with('/') {
                return Err(format!("expose path {:?} does not start with /", p.path));
            }
            let sources = p
                .sources
                .iter()
                .map(|s| Cidr::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            routes.push(Route {
                path: p.path,
                port: p.port,
                sources,
            });
        }
        Ok(Plan {
            app_address: spec.app_address,
            http2: spec.protocol == Proto::Http2,
            routes,
            connect_timeout: Duration::from_millis(l.limits.connect_timeout_ms.max(1)),
            request_timeout: ms(spec.request_timeout_ms),
            request_headers_timeout: ms(spec.request_headers_timeout_ms),
            idle_timeout: ms(spec.idle_timeout_ms),
            max_head_bytes: spec.max_request_headers_kb.clamp(1, 96) * 1024,
            max_headers: spec.max_headers.clamp(1, 1024),
        })
    }

    /// Envoy's filter-chain match on source ranges: a caller no path admits gets no filter chain at all.
    fn admits_peer(&self, ip: IpAddr) -> bool {
        self.routes.iter().any(|r| r.admits(ip))
    }

    fn route(&self, path: &str, ip: IpAddr) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path && r.admits(ip))
    }
}

type RespBody = Either<UpBody, Either<Full<Bytes>, Empty<Bytes>>>;

fn local(status: StatusCode, text: &'static str, head: bool) -> Response<RespBody> {
    let body = if text.is_empty() || head {
        Either::Right(Either::Right(Empty::new()))
    } else {
        Either::Right(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if !text.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    }
    r
}

/// What the connection's requests share: the plan, the caller and the idle clock. Owned (an h2c connection
/// runs each stream as its own task).
struct Conn {
    plan: Arc<Plan>,
    peer: SocketAddr,
    stats: ListenerStats,
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Conn {
    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// When the connection has been idle for the idle timeout (None while a request is in flight).
    fn idle_deadline(&self) -> Option<Instant> {
        let t = self.plan().idle_timeout?;
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|p| p.into_inner()) + t)
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        let r = self.exchange(req).await;
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(r)
    }

    async fn exchange(&self, mut req: Request<Incoming>) -> Response<RespBody> {
        let head = req.method() == http::Method::HEAD;
        if !self.plan().http2 && req.version() != Version::HTTP_11 {
            return local(StatusCode::UPGRADE_REQUIRED, "", head);
        }
        let Some(route) = self.plan().route(req.uri().path(), self.peer.ip()) else {
            // Envoy's answer when no route matches (`NR`): 404 without a body.
            return local(StatusCode::NOT_FOUND, "", head);
        };
        // HTTP/1.1: an absolute-form target goes on in origin form, as Envoy forwards it. h2c: the request keeps
        // its :scheme and :authority (hyper's HTTP/2 client sends them from the URI).
        if !self.plan().http2 && req.uri().scheme().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            match pq.parse::<Uri>() {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => return local(StatusCode::BAD_REQUEST, "", head),
            }
        }
        // `TE: trailers` survives, as Envoy keeps it: gRPC servers may require it (RFC 9113 §8.2.2 allows it).
        let te_trailers = req
            .headers()
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(req.headers_mut(), false);
        if te_trailers {
            req.headers_mut()
                .insert(TE, HeaderValue::from_static("trailers"));
        }
        let port = route.port;
        let sent = match self.plan().request_timeout {
            Some(t) => match tokio::time::timeout(t, self.forward(req, port)).await {
                Ok(r) => r,
                Err(_) => {
                    self.stats.shared().log(
                        Level::Info,
                        format!("{}: the app did not answer in time", self.stats.name),
                    );
                    return local(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT, head);
                }
            },
            None => self.forward(req, port).await,
        };
        match sent {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut(), false);
                resp.map(Either::Left)
            }
            Err(e) => {
                self.stats.upstream_error("connect_failed", || {
                    format!("app {}:{port}: {e}", self.plan().app_address)
                });
                local(StatusCode::SERVICE_UNAVAILABLE, CONNECT_FAILURE, head)
            }
        }
    }

    /// Dials the app for this one request and sends it; the response body streams from the app's connection.
    async fn forward(&self, req: Request<Incoming>, port: u16) -> Result<Response<UpBody>, String> {
        let stream = match tokio::time::timeout(
            self.plan().connect_timeout,
            TcpStream::connect((self.plan().app_address.as_str(), port)),
        )
        .await
        {
            Err(_) => return Err("connect timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        // The same client hops as the inbound listener's (crate::http::h1_client, h2_client).
        if self.plan().http2 {
            let mut sender = crate::http::h2_client::handshake(stream, ())
                .await
                .map_err(|e| e.to_string())?;
            match sender.send(req).await {
                Ok(r) => Ok(r.map(UpBody::H2)),
                Err(e) => Err(e.error.to_string()),
            }
        } else {
            match H1Client::new(stream, ()).send(req).await {
                Ok(r) => Ok(r.map(UpBody::H1)),
                Err(e) => Err(e.error.to_string()),
            }
        }
    }
}

pub async fn serve(stream: TcpStream, peer: SocketAddr, plan: Arc<Plan>, stats: ListenerStats) {
    if !plan.admits_peer(peer.ip()) {
        stats.denied("source", || {
            format!("{peer}: not a source this exposed path admits")
        });
        return;
    }
    stats.accepted.inc();
    let _active = GaugeGuard::new(&stats.active);
    let mut draining = stats.shared().draining.subscribe();
    let http2 = plan.http2;
    let (head_timeout, max_headers, max_head) = (
        plan.request_headers_timeout,
        plan.max_headers,
        plan.max_head_bytes,
    );
    let conn = Arc::new(Conn {
        plan: plan.clone(),
        peer,
        stats,
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let io = TokioIo::new(stream);
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| {
            let conn = conn.clone();
            async move { conn.handle(req).await }
        })
    };
    if http2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
        let served = b.serve_connection(io, svc);
        tokio::pin!(served);
        drive(served, &conn, &mut draining, |s| s.graceful_shutdown()).await;
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_headers(max_headers)
            .max_buf_size(max_head.max(8192))
            .keep_alive(true);
        let served = b.serve_connection(io, svc);
        tokio::pin!(served);
        drive(served, &conn, &mut draining, |s| s.graceful_shutdown()).await;
    }
}

/// Runs a served connection until it ends; on drain or when idle past the timeout it is shut down gracefully
/// (the exchange in flight finishes first).
async fn drive<F, S>(
    mut served: std::pin::Pin<&mut S>,
    conn: &Conn,
    draining: &mut tokio::sync::watch::Receiver<bool>,
    shutdown: F,
) where
    S: std::future::Future<Output = Result<(), hyper::Error>>,
    F: Fn(std::pin::Pin<&mut S>),
{
    let mut closing = false;
    loop {
        let deadline = conn.idle_deadline();
        let poll = conn.plan.idle_timeout.is_some();
        tokio::select! {
            _ = served.as_mut() => return,
            Ok(_) = draining.wait_for(|d| *d), if !closing => {
                shutdown(served.as_mut());
                closing = true;
            }
            _ = sleep_until(deadline), if !closing && poll => {
                if conn.idle_deadline().is_some_and(|d| d <= Instant::now()) {
                    shutdown(served.as_mut());
                    closing = true;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        // A request in flight: look again shortly after it may have ended.
        None => tokio::time::sleep(Duration::from_millis(500)).await,
    }
}

#[cfg(test)]
#[path = "expose_test.rs"]
mod tests;
