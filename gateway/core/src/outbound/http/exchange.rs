//! One exchange's accounting and the local answers (gateway/listeners.py `_done`, `_route_observe`, headers.py
//! simple_response). Local answers carry Envoy's response flags in the access log: UH no healthy upstream, UF
//! upstream connect failure, UO overflow (a breaker), UT request timeout, UC upstream reset, URX retries
//! exhausted, NR no route, DC downstream gone before an answer (gateway/accesslog.py).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::accesslog::{self, Record};
use super::balancer::{ns_at, HostState};
use super::body::{RespBody, Tap};
use super::conn::{ConnCtx, IdleTrack};
use super::runtime::class_index;
use super::{HttpCluster, Plan};
use crate::state::Shared;

/// One exchange's accounting: metrics at the response head, the rest (per-route and per-cluster metrics,
/// breaker and load counts, the access-log record) when it is dropped, however it ends.
pub struct Exchange {
    pub(super) plan: Arc<Plan>,
    pub(super) shared: Arc<Shared>,
    pub(super) started: Instant,
    pub(super) start_wall: SystemTime,
    pub(super) head_at: Option<Instant>,
    pub(super) status: u16,
    pub(super) flags: &'static str,
    pub(super) route: Option<(usize, usize)>,
    pub(super) cluster: Option<Arc<HttpCluster>>,
    /// The cluster's `active` is held (released on drop).
    pub(super) active: bool,
    pub(super) retrying: bool,
    pub(super) retries: u32,
    /// The endpoint of the attempt in progress; its `active` is held.
    pub(super) host: Option<Arc<HostState>>,
    pub(super) upstream_host: String,
    pub(super) tap: Arc<Tap>,
    pub(super) sent: u64,
    pub(super) log: Option<Record>,
    pub(super) idle: Arc<IdleTrack>,
    /// The request is gRPC (`http::grpc::is_grpc`): local answers are trailers-only, the status is counted.
    pub(super) grpc: bool,
    pub(super) grpc_status: Option<u32>,
}

impl Exchange {
    pub(super) fn new(
        plan: &Arc<Plan>,
        cx: &ConnCtx,
        req: &Request<Incoming>,
        started: Instant,
    ) -> Exchange {
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
                    Version::HTTP_2 => "HTTP/2",
                    _ => "HTTP/1.1",
                }
                .into(),
                downstream_address: cx.peer_ip.clone(),
                source: plan.source.clone(),
                authority: hv("host").or_else(|| req.uri().authority().map(|a| a.to_string())),
                user_agent: hv("user-agent"),
                ..Record::default()
            }
        });
        Exchange {
            plan: plan.clone(),
            shared: cx.shared.clone(),
            started,
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
            grpc: crate::http::grpc::is_grpc(req.headers()),
            grpc_status: None,
            idle: {
                cx.idle.inflight.fetch_add(1, Ordering::Relaxed);
                cx.idle.clone()
            },
        }
    }

    /// The response head goes downstream (listeners.py `_on_response`).
    pub(super) fn head(&mut self, status: u16) {
        let now = Instant::now();
        self.status = status;
        self.head_at = Some(now);
        self.plan.m.class[class_index(status)].inc();
        self.plan.m.latency.observe(now - self.started);
    }

    pub(super) fn attach(&mut self, host: &Arc<HostState>) {
        host.active.fetch_add(1, Ordering::Relaxed);
        self.host = Some(host.clone());
    }

    pub(super) fn detach(&mut self) {
        if let Some(h) = self.host.take() {
            h.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn finish(mut self: Box<Self>, sent: u64, _complete: bool) {
        self.sent = sent;
    }

    /// The response head or trailers may carry the call's `grpc-status`.
    pub fn grpc_trailers(&mut self, h: &http::HeaderMap) {
        if let Some(s) = crate::http::grpc::status_of(h) {
            self.grpc_status = Some(s);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.detach();
        // One clock read for both: the connection's last activity and the exchange's duration.
        let now = Instant::now();
        self.idle.last_ns.store(ns_at(now), Ordering::Relaxed);
        self.idle.inflight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(self.started);
        if let (true, Some(s)) = (self.grpc, self.grpc_status) {
            self.plan.m.grpc.count(s);
        }
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
        rec.grpc_status = self.grpc_status;
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
pub(super) fn local(
    mut ex: Box<Exchange>,
    status: u16,
    text: &str,
    flags: &'static str,
    overloaded: Option<&'static str>,
) -> Response<RespBody> {
    ex.flags = flags;
    ex.head(status);
    if ex.grpc {
        // Trailers-only with the mapped status, as Envoy's local replies to gRPC (http2-grpc.md §3).
        ex.grpc_status = Some(crate::http::grpc::status_for_http(status));
        let mut r = Response::new(RespBody::local(Bytes::new(), Some(ex)));
        *r.headers_mut() = crate::http::grpc::local_reply_headers(status, text);
        if let Some(b) = overloaded {
            r.headers_mut()
                .insert("x-meshgw-overloaded", HeaderValue::from_static(b));
        }
        return r;
    }
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
pub(super) fn bad_body() -> Fail {
    Fail {
        status: 400,
        text: "malformed request body",
        flags: "",
        overloaded: None,
    }
}

pub(super) struct Fail {
    pub(super) status: u16,
    pub(super) text: &'static str,
    pub(super) flags: &'static str,
    pub(super) overloaded: Option<&'static str>,
}
