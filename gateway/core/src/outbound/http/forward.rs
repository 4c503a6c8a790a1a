//! One request's way through the outbound HTTP path (gateway/listeners.py UpstreamListener._request, _dial,
//! _done, _route_observe; gateway/http/outbound.py Call): chain → route → split → cluster, breakers, the
//! attempts (endpoint pick, pooled or new mTLS connection, retries with budget and backoff, outlier results)
//! under the request timeout, then the response streamed back and the exchange settled and logged.
//!
//! Local answers carry Envoy's response flags in the access log: UH no healthy upstream, UF upstream connect
//! failure, UO overflow (a breaker), UT request timeout, UC upstream reset, URX retries exhausted, NR no
//! route, DC downstream gone before an answer (gateway/accesslog.py).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::accesslog::{self, Record};
use super::balancer::{now_ns, request_hash, HostState, Pick};
use super::body::{Payload, RespBody, Tap};
use super::headers;
use super::pool::Conn;
use super::retry::{Kind, RetryPolicy};
use super::rng;
use super::router::{pick_split, RequestView};
use super::runtime::{class_index, BREAKERS};
use super::{HttpCluster, Plan};
use crate::listener::ListenerStats;
use crate::outbound::dial::{dial_one, Timeouts};
use crate::state::{self, Compiled, Shared};
use crate::stats::GaugeGuard;
use crate::tls::MeshTls;

/// Requests in flight on one downstream connection and when it last had one: the idle-timeout watchdog's view.
#[derive(Default)]
struct IdleTrack {
    inflight: std::sync::atomic::AtomicUsize,
    last_ns: AtomicU64,
}

struct ConnCtx {
    /// An HTTP/1.0 request's answer is on its way: its status line says HTTP/1.1 (see `Counted`).
    http10: Arc<std::sync::atomic::AtomicBool>,
    /// The key of this listener's plan in every snapshot (its bind address, state.rs).
    key: Option<String>,
    idle: Arc<IdleTrack>,
    shared: Arc<Shared>,
    accept_plan: Arc<Plan>,
    peer_ip: String,
    stats: ListenerStats,
}

impl ConnCtx {
    /// Per request, as the Python listener read `holder.current`: a route change applies to the next request
    /// of a kept-alive connection too.
    fn current(&self) -> (Arc<Compiled>, Arc<Plan>) {
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
    let svc = service_fn(move |req| {
        let cx = cx.clone();
        async move { Ok::<_, Infallible>(handle(req, cx).await) }
    });
    let io = TokioIo::new(Counted {
        http10,
        inner: stream,
        rx: 0,
        tx: 0,
        stats,
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

/// One exchange's accounting: metrics at the response head, the rest (per-route and per-cluster metrics,
/// breaker and load counts, the access-log record) when it is dropped, however it ends.
pub struct Exchange {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    started: Instant,
    start_wall: SystemTime,
    head_at: Option<Instant>,
    status: u16,
    flags: &'static str,
    route: Option<(usize, usize)>,
    cluster: Option<Arc<HttpCluster>>,
    /// The cluster's `active` is held (released on drop).
    active: bool,
    retrying: bool,
    retries: u32,
    /// The endpoint of the attempt in progress; its `active` is held.
    host: Option<Arc<HostState>>,
    upstream_host: String,
    tap: Arc<Tap>,
    sent: u64,
    log: Option<Record>,
    idle: Arc<IdleTrack>,
}

impl Exchange {
    fn new(plan: &Arc<Plan>, cx: &ConnCtx, req: &Request<Incoming>) -> Exchange {
        let log = plan.access_fields.as_ref().map(|_| {
            let hv = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            Record {
                listener: plan.listener.clone(),
                method: req.method().as_str().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string()),
                protocol: match req.version() {
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                downstream_address: cx.peer_ip.clone(),
                source: plan.source.clone(),
                authority: hv("host"),
                user_agent: hv("user-agent"),
                ..Record::default()
            }
        });
        Exchange {
            plan: plan.clone(),
            shared: cx.shared.clone(),
            started: Instant::now(),
            start_wall: SystemTime::now(),
            head_at: None,
            status: 0,
            flags: "",
            route: None,
            cluster: None,
            active: false,
            retrying: false,
            retries: 0,
            host: None,
            upstream_host: String::new(),
            tap: Arc::new(Tap::default()),
            sent: 0,
            log,
            idle: {
                cx.idle.inflight.fetch_add(1, Ordering::Relaxed);
                cx.idle.clone()
            },
        }
    }

    /// The response head goes downstream (listeners.py `_on_response`).
    fn head(&mut self, status: u16) {
        let now = Instant::now();
        self.status = status;
        self.head_at = Some(now);
        self.plan.m.class[class_index(status)].inc();
        self.plan.m.latency.observe(now - self.started);
    }

    fn attach(&mut self, host: &Arc<HostState>) {
        host.active.fetch_add(1, Ordering::Relaxed);
        self.host = Some(host.clone());
    }

    fn detach(&mut self) {
        if let Some(h) = self.host.take() {
            h.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn finish(mut self: Box<Self>, sent: u64, _complete: bool) {
        self.sent = sent;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.detach();
        self.idle.last_ns.store(now_ns(), Ordering::Relaxed);
        self.idle.inflight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        if let Some(c) = &self.cluster {
            if self.active {
                c.rt.active.fetch_sub(1, Ordering::Relaxed);
            }
            if self.retrying {
                c.rt.retrying.fetch_sub(1, Ordering::Relaxed);
            }
            if self.plan.observe && self.status != 0 {
                let k = class_index(self.status);
                c.rt.m.class[k].inc();
                c.rt.m.latency.observe(elapsed);
                if let Some((ci, ri)) = self.route {
                    if let Some(r) = self.plan.chains.get(ci).and_then(|ch| ch.routes.get(ri)) {
                        r.m.class[k].inc();
                        r.m.latency.observe(elapsed);
                    }
                }
            }
        }
        let (Some(fields), Some(mut rec)) = (self.plan.access_fields.as_ref(), self.log.take())
        else {
            return;
        };
        rec.status = self.status;
        rec.flags = if self.flags.is_empty() && self.status == 0 {
            "DC"
        } else {
            self.flags
        };
        rec.bytes_received = self.tap.bytes.load(Ordering::Relaxed);
        rec.bytes_sent = self.sent;
        rec.upstream_service_time = self.head_at.map(|h| h - self.started);
        rec.retries = self.retries;
        rec.host = std::mem::take(&mut self.upstream_host);
        if let Some(c) = &self.cluster {
            rec.cluster = c.name.clone();
        }
        if let Some((ci, ri)) = self.route {
            if let Some(r) = self.plan.chains.get(ci).and_then(|ch| ch.routes.get(ri)) {
                rec.route = r.name.clone();
            }
        }
        self.shared.access_record(accesslog::render(
            fields,
            &rec,
            self.started,
            self.start_wall,
        ));
    }
}

/// A local answer: `text` and a newline as text/plain (headers.py simple_response).
fn local(
    mut ex: Box<Exchange>,
    status: u16,
    text: &str,
    flags: &'static str,
    overloaded: Option<&'static str>,
) -> Response<RespBody> {
    ex.flags = flags;
    ex.head(status);
    let body = Bytes::from(format!("{text}\n"));
    let len = body.len();
    let mut r = Response::new(RespBody::local(body, Some(ex)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    h.insert("content-length", HeaderValue::from(len));
    if let Some(b) = overloaded {
        // Envoy sends x-envoy-overloaded: true; the Python proxy named the breaker.
        h.insert("x-meshgw-overloaded", HeaderValue::from_static(b));
    }
    r
}

/// The downstream request body's framing broke: the client's fault, not the upstream's.
fn bad_body() -> Fail {
    Fail {
        status: 400,
        text: "malformed request body",
        flags: "",
        overloaded: None,
    }
}

struct Fail {
    status: u16,
    text: &'static str,
    flags: &'static str,
    overloaded: Option<&'static str>,
}

/// An Upgrade request (WebSocket): after a 101 the connection becomes a tunnel (RFC 9110 §7.8).
fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let conn_upgrade = h.get_all(http::header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if conn_upgrade {
        h.get(http::header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Both sides upgraded: bytes both ways until either ends (the one relay's half-close semantics).
async fn tunnel(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (Ok(d), Ok(u)) = tokio::join!(down, up) else {
        return;
    };
    let mut d = TokioIo::new(d);
    let mut u = TokioIo::new(u);
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut d,
        &mut u,
        crate::relay::BUFFER,
        crate::relay::BUFFER,
    )
    .await;
}

async fn handle(mut req: Request<Incoming>, cx: Arc<ConnCtx>) -> Response<RespBody> {
    let (snap, plan) = cx.current();
    if req.version() == Version::HTTP_10 {
        cx.http10.store(true, Ordering::Relaxed);
    }
    let upgrade = upgrade_of(req.headers());
    let down_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let mut ex = Box::new(Exchange::new(&plan, &cx, &req));
    let Some(tls) = snap.tls.clone().filter(|t| t.valid_now()) else {
        cx.stats.upstream_error("not_ready", || {
            "no valid leaf certificate: refusing (never plaintext)".into()
        });
        return local(ex, 503, "no healthy upstream (not_ready)", "UH", None);
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(ci) = (if plan.ingress {
        plan.chain_for(host.as_deref())
            .and_then(|c| plan.chains.iter().position(|x| std::ptr::eq(x, c)))
    } else {
        Some(0)
    }) else {
        return local(ex, 404, "no service for this host", "NR", None);
    };
    let chain = &plan.chains[ci];
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
    let view = RequestView {
        method: req.method().as_str(),
        path: path.as_bytes(),
        query: query.as_bytes(),
        headers: req.headers(),
    };
    let ri = chain
        .routes
        .iter()
        .position(|r| r.matcher.matches(&view))
        .unwrap_or(chain.routes.len() - 1);
    let route = &chain.routes[ri];
    let split = &route.splits[pick_split(&route.cum, rng::f64())];
    let cluster = split.cluster.clone();
    if cluster.endpoints.is_empty() {
        cx.stats.upstream_error("no_healthy_endpoints", || {
            format!("no healthy instance of {}", cluster.name)
        });
        return local(
            ex,
            503,
            "no healthy upstream (no_healthy_endpoints)",
            "UH",
            None,
        );
    }
    let rt = cluster.rt.clone();
    if rt.active.load(Ordering::Relaxed) >= cluster.limits.max_concurrent_requests {
        rt.m.trips[2].inc();
        return local(ex, 503, "upstream overflow", "UO", Some(BREAKERS[2]));
    }
    rt.active.fetch_add(1, Ordering::Relaxed);
    ex.active = true;
    ex.route = Some((ci, ri));
    ex.cluster = Some(cluster.clone());
    let hash = if cluster.hash.is_empty() {
        None
    } else {
        request_hash(&cluster.hash, req.headers(), query.as_bytes(), &cx.peer_ip)
    };
    let (parts, body) = req.into_parts();
    let target = match &route.prefix_rewrite {
        Some(rw) if pq.starts_with(route.match_prefix.as_str()) => {
            format!("{rw}{}", &pq[route.match_prefix.len()..])
        }
        _ => pq.clone(),
    };
    let uri = Uri::try_from(target.as_str())
        .unwrap_or_else(|_| Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/")));
    let mut hdrs = parts.headers;
    if !hdrs.contains_key(http::header::HOST) {
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            hdrs.insert(http::header::HOST, h);
        }
    }
    // hyper answers Expect: 100-continue itself when the body is read; the upstream must not wait for it.
    hdrs.remove(http::header::EXPECT);
    let sent = headers::forward_request(&mut hdrs, &cx.peer_ip, &split.request);
    if let Some(u) = &upgrade {
        hdrs.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        hdrs.insert(http::header::UPGRADE, u.clone());
    }
    if let Some(l) = &mut ex.log {
        l.request_id = sent.request_id;
        l.traceparent = sent.traceparent;
    }
    let policy = route
        .retry
        .clone()
        .unwrap_or_else(|| Arc::new(RetryPolicy::compile(&super::spec::RetrySpec::default())));
    let timeout = route
        .request_timeout
        .or(cluster.request_timeout)
        .unwrap_or(plan.request_timeout);
    let a = Attempts {
        cx: &cx,
        plan: &plan,
        cluster: &cluster,
        tls: &tls,
        policy: &policy,
        method: parts.method,
        uri,
        headers: hdrs,
        hash,
    };
    let replay = upgrade.is_none() && a.policy.wants_replay(&a.method);
    let tap = ex.tap.clone();
    let run = async {
        let payload = Payload::prepare(body, replay, &tap).await;
        if tap.failed.load(Ordering::Relaxed) {
            return Err(bad_body());
        }
        a.run(&mut ex, payload).await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            plan.m.timeouts[1].inc();
            ex.detach();
            local(ex, 504, "upstream request timeout", "UT", None)
        }
        Ok(Err(f)) => local(ex, f.status, f.text, f.flags, f.overloaded),
        Ok(Ok((mut resp, conn))) => {
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(down)) = (resp.status(), down_upgrade) {
                let up = hyper::upgrade::on(&mut resp);
                let value = resp.headers().get(http::header::UPGRADE).cloned();
                let (mut rp, _) = resp.into_parts();
                headers::forward_response(&mut rp.headers, &split.response);
                rp.headers.insert(
                    http::header::CONNECTION,
                    HeaderValue::from_static("upgrade"),
                );
                if let Some(v) = value {
                    rp.headers.insert(http::header::UPGRADE, v);
                }
                ex.head(101);
                // The upstream connection is the tunnel's now: it never goes back to the pool.
                drop(conn);
                tokio::spawn(tunnel(down, up));
                return Response::from_parts(rp, RespBody::local(Bytes::new(), Some(ex)));
            }
            let (mut rp, rbody) = resp.into_parts();
            headers::forward_response(&mut rp.headers, &split.response);
            rp.version = Version::HTTP_11;
            ex.head(rp.status.as_u16());
            let pool = rt.pool.clone();
            Response::from_parts(rp, RespBody::upstream(rbody, conn, pool, ex))
        }
    }
}

enum ConnErr {
    Overflow(usize),
    Failed,
}

struct Attempts<'a> {
    cx: &'a ConnCtx,
    plan: &'a Plan,
    cluster: &'a Arc<HttpCluster>,
    tls: &'a MeshTls,
    policy: &'a RetryPolicy,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    hash: Option<u64>,
}

impl Attempts<'_> {
    async fn run(
        &self,
        ex: &mut Exchange,
        mut payload: Payload,
    ) -> Result<(Response<Incoming>, Conn), Fail> {
        let c = self.cluster;
        let rt = &c.rt;
        let mut last: Option<usize> = None;
        loop {
            let picked = c.tables.pick(&Pick {
                hosts: &c.hosts,
                rr: &rt.rr,
                hash: self.hash,
                exclude: last,
                now: now_ns(),
                any_ejected: rt.ejected.load(Ordering::Relaxed) > 0,
            });
            let Some(i) = picked else {
                self.cx.stats.upstream_error("no_healthy_endpoints", || {
                    format!("no healthy instance of {}", c.name)
                });
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
            ex.upstream_host = format!("{}:{}", conn.key.0, conn.key.1);
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
            let mut req = Request::new(body);
            *req.method_mut() = self.method.clone();
            *req.uri_mut() = self.uri.clone();
            *req.headers_mut() = self.headers.clone();
            let host = &c.hosts[hi];
            ex.attach(host);
            let t0 = Instant::now();
            match conn.tx.try_send_request(req).await {
                Ok(resp) => {
                    host.observe_rtt(t0.elapsed());
                    let status = resp.status().as_u16();
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
                    if let Some(req) = e.take_message() {
                        // Never sent (the connection closed first): as a connect failure, safe for any method.
                        payload.put_back(req.into_body());
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
        rt.m.retries[kind as usize].inc();
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
            return self.dial(i).await;
        }
    }

    async fn dial(&self, i: usize) -> Result<Conn, ConnErr> {
        let c = self.cluster;
        let ep = &c.endpoints[i];
        let t = Timeouts {
            connect: c.connect_timeout,
            handshake: self.plan.handshake_timeout,
        };
        let s = match dial_one(ep, &c.dial, self.tls, &t).await {
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
        let (tx, conn) = match hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(s))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                self.cx
                    .stats
                    .upstream_error("connect_failed", || format!("HTTP/1.1 set-up failed: {e}"));
                return Err(ConnErr::Failed);
            }
        };
        let open = c.rt.pool.opened();
        tokio::spawn(async move {
            let _open = open;
            let _ = conn.with_upgrades().await;
        });
        Ok(Conn {
            tx,
            key: c.keys[i].clone(),
        })
    }
}

/// A request waiting for a connection (meshgw_http_pending_requests, the max_pending_requests breaker).
struct Pending(Arc<HttpCluster>);

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

/// The downstream socket with its byte counts, added to the listener's when the connection ends.
struct Counted {
    http10: Arc<std::sync::atomic::AtomicBool>,
    inner: TcpStream,
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
