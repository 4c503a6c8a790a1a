//! One request through the inbound pipeline (l7-security.md §1.2, §6.1): version → target form → header
//! checks (Host, framing, underscores, `Connection`) → fragment and path normalization → L7 intentions on the
//! normalized path → the app, which gets exactly that path (§6.7). Every refusal is a local answer; nothing is
//! dialled or taken from the pool before the head is whole and authorized.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, HOST, USER_AGENT};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshgw_proto::http_head::{check_request_headers, split_target, HeadError, HeaderVerdict};
use meshgw_proto::intentions::Request as AuthzRequest;
use meshgw_proto::normalize::{normalize_path, PathOutcome, REJECT_FRAGMENT};

use super::accesslog::Exchange;
use super::body::{Finish, ReqBody, ReqState, RespBody};
use super::headers;
use super::local::{self, answer};
use super::metrics::Timeout;
use super::pool::{AppSender, DialError};
use super::Conn;
use crate::http::grpc;
use crate::http::sniff::Codec;
use crate::http::upstream_body::UpBody;
use crate::state::{Level, Plan as State};

/// A request that passed every check: what goes to the app.
struct Admitted {
    path: String,
    sent: headers::Sent,
    websocket: bool,
    /// The exchange's first clock read (its route timeout starts there when the request ended with its head).
    started: Instant,
}

/// Why the pipeline answered itself.
struct Refusal {
    status: StatusCode,
    text: &'static str,
    reason: &'static str,
    /// The rest of the connection cannot be trusted (framing, an underscore under REJECT_REQUEST, 1.0).
    close: bool,
    location: Option<String>,
}

impl Refusal {
    /// RBAC deny (l7-security.md §6.15).
    fn denied() -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            text: local::RBAC_DENIED,
            reason: "intention",
            close: false,
            location: None,
        }
    }

    fn bad(reason: &'static str, close: bool) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            text: "",
            reason,
            close,
            location: None,
        }
    }
}

fn head_error(e: HeadError) -> Refusal {
    // Codec-level refusals close the HTTP/1 connection as Envoy's codec does (l7-security.md §4); a missing or
    // doubled Host is the connection manager's and leaves it open.
    let close = !matches!(e, HeadError::MissingHost | HeadError::DuplicateHost);
    Refusal::bad(e.reason(), close)
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// Log lines carry at most this much of a request target.
const LOG_TARGET: usize = 200;

fn clip(s: &str) -> &str {
    match s.char_indices().nth(LOG_TARGET) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

impl Conn {
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<RespBody>, Infallible> {
        let started = Instant::now();
        // HTTP/2: a stream the caller resets before its answer counts towards Rapid Reset (http::h2).
        let mut stream = self.resets.as_ref().map(|r| r.stream(started));
        let head = req.method() == Method::HEAD;
        let h2 = self.codec == Codec::Http2;
        let target = match req.uri().scheme() {
            // HTTP/2 always has `:scheme` and `:authority`: its target is `:path` (RFC 9113 §8.3.1).
            Some(_) if h2 && req.method() != Method::CONNECT => req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.as_str().to_owned()),
            Some(_) => req.uri().to_string(),
            None if h2 => req.uri().to_string(),
            None => req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned()),
        };
        // Every request line is looked up, in order, so the next lookup starts after this one (tap.rs).
        let raw = if h2 {
            super::tap::Raw::default()
        } else {
            let chunked = req.headers().contains_key(http::header::TRANSFER_ENCODING);
            self.recent.lookup(req.method().as_str(), &target, chunked)
        };
        let grpc = grpc::is_grpc(req.headers());
        // Filled only while the access log is on: nothing else reads it.
        let ex = if self.policy.access_log.is_none() {
            Exchange::default()
        } else {
            Exchange {
                started: Some(started),
                listener: self.stats.name.to_string(),
                method: req.method().as_str().to_owned(),
                path: target.clone(),
                version: version_name(req.version()),
                downstream_address: self.client_ip.clone(),
                source_service: self.peer.id.service.clone(),
                authority: header_str(&req, HOST)
                    .or_else(|| req.uri().authority().map(|a| a.to_string())),
                user_agent: header_str(&req, USER_AGENT),
                ..Exchange::default()
            }
        };
        let mut ex = ex;
        ex.grpc = grpc;
        let websocket = req.method() == Method::GET
            && headers::is_websocket(
                req.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            );
        let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let resp = match self.admit(&parts, &target, raw, websocket, started) {
            Err(r) => self.refuse(r, head, ex),
            // Boxed: a refused request's future need not carry (and move) the forwarding state.
            Ok(a) => Box::pin(self.forward(&parts, a, body, on_upgrade, head, ex)).await,
        };
        self.policy
            .stats
            .response(resp.status().as_u16(), started.elapsed());
        if let Some(s) = stream.as_mut() {
            s.answered();
        }
        Ok(resp)
    }

    /// The checks, in Envoy's order; Ok is a request the app may get.
    fn admit(
        &self,
        parts: &Parts,
        target: &str,
        raw: super::tap::Raw,
        websocket: bool,
        started: Instant,
    ) -> Result<Admitted, Refusal> {
        // Consul leaves accept_http_10 false: 426 from the codec (l7-security.md §4, §6.16).
        let h2 = self.codec == Codec::Http2;
        if parts.version != Version::HTTP_11 && !(h2 && parts.version == Version::HTTP_2) {
            return Err(Refusal {
                status: StatusCode::UPGRADE_REQUIRED,
                text: "",
                reason: "http_1_0",
                close: true,
                location: None,
            });
        }
        // hyper drops a Content-Length beside Transfer-Encoding (and closes after the answer); Consul's Envoy
        // refuses the request (allow_chunked_length false, l7-security.md §4, §6.16).
        if raw.content_length {
            return Err(head_error(HeadError::ContentLengthWithTransferEncoding));
        }
        // Per request, as the Python path did: an intention (or mesh entry) change applies to the next request
        // of a kept-alive connection too, not only to new connections (design.md "decides per request").
        let snap = self.stats.shared().current.load();
        let current = match snap.plans.get(&self.policy.plan_key).map(|p| &**p) {
            Some(State::Inbound(p)) => Some(p),
            _ => None,
        };
        let (plan, norm) = match current {
            Some(p) => (
                p,
                p.http
                    .as_ref()
                    .map_or(self.policy.normalization, |h| h.normalization),
            ),
            // The listener has no usable plan now: its connections are refused (fail closed).
            None => return Err(Refusal::denied()),
        };
        // `:authority` is HTTP/2's Host (RFC 9113 §8.3.1): the checks, intentions and an HTTP/1.1 app see it as
        // Host; a `host` field beside it is dropped so there are never two.
        let (mut received, mut typed) = received_typed(&parts.headers, h2);
        if h2 {
            if parts.method == Method::CONNECT {
                // CONNECT (and extended CONNECT, never enabled in SETTINGS) is not routed: Consul configures
                // no connect matcher (http2-grpc.md §7; the issue: refused cleanly). Same answer as HTTP/1.1.
                return Err(head_error(HeadError::AuthorityForm));
            }
            if let Some(a) = parts.uri.authority() {
                received.push(("host", a.as_str().as_bytes()));
                typed.push(None);
            }
        }
        let verdict: HeaderVerdict =
            check_request_headers(&received, norm.headers_with_underscores_action)
                .map_err(head_error)?;
        // Absolute-form: origin form, and the URL's authority replaces Host (l7-security.md §4, §6.17).
        let t = split_target(target).map_err(head_error)?;
        if raw.fragment {
            return Err(Refusal::bad(REJECT_FRAGMENT, false));
        }
        let path = match normalize_path(&t.path_and_query, &norm) {
            PathOutcome::Forward(p) => p,
            PathOutcome::Redirect(location) => {
                return Err(Refusal {
                    status: StatusCode::TEMPORARY_REDIRECT,
                    text: "",
                    reason: "escaped_slash_redirect",
                    close: false,
                    location: Some(location),
                })
            }
            PathOutcome::Reject(reason) => {
                // A path without its leading `/` once normalization is off: Envoy's 404 (l7-security.md §4).
                let mut r = Refusal::bad(reason, false);
                if reason == meshgw_proto::normalize::REJECT_NOT_ABSOLUTE {
                    r.status = StatusCode::NOT_FOUND;
                }
                return Err(r);
            }
        };
        // The headers intentions see: what is forwarded, with DROP_HEADER's gone and Host = the authority.
        let mut seen: Vec<(&str, &[u8])> = received
            .iter()
            .enumerate()
            .filter(|(i, (n, _))| {
                let replaced = t.authority.is_some() && *n == "host";
                !(verdict.drop.contains(i) || replaced)
            })
            .map(|(_, h)| *h)
            .collect();
        if let Some(a) = &t.authority {
            seen.push(("host", a.as_bytes()));
        }
        let d = plan.intentions.authorize_http(
            &self.peer.id,
            &AuthzRequest {
                method: parts.method.as_str(),
                path: &path,
                headers: &seen,
            },
        );
        if !d.allowed {
            self.stats.shared().log(
                Level::Info,
                format!(
                    "{}: denied {} {} from {}: {}",
                    self.stats.name,
                    parts.method,
                    clip(&path),
                    self.peer.uri,
                    d.reason
                ),
            );
            return Err(Refusal::denied());
        }
        let sent = headers::request(
            &received,
            &typed,
            &verdict,
            t.authority.as_deref(),
            &self.client_ip,
            websocket,
        );
        Ok(Admitted {
            path,
            sent,
            websocket,
            started,
        })
    }

    fn finish(&self, ex: Exchange, req: Option<Arc<ReqState>>) -> Finish {
        Finish {
            exchange: ex,
            fields: self.policy.access_log.clone(),
            stats: self.stats.clone(),
            http: self.policy.stats.clone(),
            req,
            complete: false,
        }
    }

    fn refuse(&self, r: Refusal, head: bool, mut ex: Exchange) -> Response<RespBody> {
        self.policy.stats.denied(r.reason);
        ex.status = r.status.as_u16();
        let grpc = ex.grpc;
        if grpc {
            ex.grpc_status = Some(grpc::status_for_http(ex.status));
        }
        ex.flags = if r.status == StatusCode::FORBIDDEN {
            "RBAC"
        } else {
            ""
        };
        let mut resp = match &r.location {
            Some(l) => local::redirect(l),
            None if grpc => local::grpc_answer(r.status, r.text, r.close && !self.is_h2()),
            None => answer(r.status, r.text, head, r.close && !self.is_h2()),
        };
        let body = std::mem::replace(resp.body_mut(), RespBody::empty());
        *resp.body_mut() = body.with_finish(self.finish(ex, None));
        resp
    }

    /// A local answer after the request was admitted (the app failed or timed out).
    fn fail(
        &self,
        status: StatusCode,
        text: &'static str,
        flags: &'static str,
        head: bool,
        state: &Arc<ReqState>,
        mut ex: Exchange,
    ) -> Response<RespBody> {
        let grpc = ex.grpc;
        ex.status = status.as_u16();
        ex.flags = flags;
        if grpc {
            ex.grpc_status = Some(grpc::status_for_http(ex.status));
        }
        // The connection goes on only if the whole request body was read (gateway/http/proxy.py
        // local_response): otherwise its rest would be taken for the next request. HTTP/2 frames each stream
        // apart: the connection always goes on.
        let close = !state.is_whole() && !self.is_h2();
        let mut resp = if grpc {
            local::grpc_answer(status, text, close)
        } else {
            answer(status, text, head, close)
        };
        let body = std::mem::replace(resp.body_mut(), RespBody::empty());
        *resp.body_mut() = body.with_finish(self.finish(ex, Some(state.clone())));
        resp
    }

    async fn forward(
        &self,
        parts: &Parts,
        a: Admitted,
        body: Incoming,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
        head: bool,
        mut ex: Exchange,
    ) -> Response<RespBody> {
        if self.policy.access_log.is_some() {
            // Only the access log reads them (its record is filled only while the log is on).
            ex.request_id = a.sent.request_id();
            ex.traceparent = a.sent.traceparent();
        }
        let mut headers = a.sent.headers;
        let uri = if self.app_h2 {
            // h2c to the app: `:authority` from Host (RFC 9113 §8.3.1), `:scheme` http (plaintext hop).
            let host = headers.remove(HOST);
            let authority = host.as_ref().and_then(|h| h.to_str().ok()).map_or_else(
                || format!("{}:{}", self.app.address, self.app.port),
                str::to_owned,
            );
            Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(a.path.as_str())
                .build()
                .ok()
        } else {
            Uri::try_from(a.path.as_str()).ok()
        };
        let Some(uri) = uri else {
            return self.refuse(Refusal::bad("invalid_request_target", false), head, ex);
        };
        let state = ReqState::new();
        let mut out = Request::new(ReqBody::new(
            body,
            state.clone(),
            self.policy.stream_idle_timeout,
        ));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = headers;
        let app = &self.app;
        let exchange = self.exchange(out, &app.address, app.port);
        let timed = async {
            // The route timeout runs from the end of the request, as Envoy's (and the Python path's) does.
            match self.policy.request_timeout {
                // A request that ended with its head (every GET) ended when it began: no clock read.
                Some(t) if state.is_done() => {
                    tokio::time::sleep_until((a.started + t).into()).await;
                }
                Some(t) => {
                    state.complete().await;
                    tokio::time::sleep(t).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let outcome = tokio::select! {
            r = exchange => r,
            _ = timed => {
                self.policy.stats.timeout(Timeout::Request);
                return self.fail(StatusCode::GATEWAY_TIMEOUT, local::UPSTREAM_TIMEOUT, "UT", head, &state, ex);
            }
        };
        let (sender, mut resp) = match outcome {
            Ok(x) => x,
            Err(Failure::Dial(e)) => {
                if matches!(e, DialError::Timeout) {
                    self.policy.stats.timeout(Timeout::Connect);
                }
                self.stats.upstream_error("connect_failed", || {
                    format!(
                        "cannot reach the local app at {}:{}: {e}",
                        app.address, app.port
                    )
                });
                return self.fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    local::CONNECT_FAILURE,
                    "UF",
                    head,
                    &state,
                    ex,
                );
            }
            Err(Failure::Send(e)) => {
                if state.broken.load(Ordering::Relaxed) {
                    // The caller's body framing broke after the head went on (a bad chunk): 400, as the
                    // Python proxy answered it, and the connection closes (hyper stops reading it).
                    return self.fail(StatusCode::BAD_REQUEST, "", "", head, &state, ex);
                }
                if state.idle.load(Ordering::Relaxed) {
                    self.policy.stats.timeout(Timeout::StreamIdle);
                    return self.fail(
                        StatusCode::REQUEST_TIMEOUT,
                        local::STREAM_TIMEOUT,
                        "SI",
                        head,
                        &state,
                        ex,
                    );
                }
                self.stats.shared().log(
                    Level::Info,
                    format!(
                        "{}: the local app at {}:{} failed the request: {}",
                        self.stats.name,
                        app.address,
                        app.port,
                        e.text()
                    ),
                );
                if e.is_parse() {
                    return self.fail(
                        StatusCode::BAD_GATEWAY,
                        local::BAD_RESPONSE,
                        "UC",
                        head,
                        &state,
                        ex,
                    );
                }
                return self.fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    local::CONNECTION_TERMINATION,
                    "UC",
                    head,
                    &state,
                    ex,
                );
            }
        };
        if ex.started.is_some() {
            // Only the access log reads it (its record is filled only while the log is on).
            ex.head_time = Some(Instant::now());
        }
        ex.status = resp.status().as_u16();
        ex.grpc_status = grpc::status_of(resp.headers());
        if self.policy.access_log.is_some() {
            // Only the access log reads it (an empty one there means a local answer).
            ex.upstream_host = format!("{}:{}", app.address, app.port);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let up = crate::http::h1_client::take_upgrade(&mut resp);
            if let (true, Some(down), Some(up)) = (a.websocket, on_upgrade, up) {
                self.tunnel(down, up);
                headers::response(resp.headers_mut(), true);
                let (p, _) = resp.into_parts();
                let mut finish = self.finish(ex, Some(state));
                finish.complete = true;
                return Response::from_parts(p, RespBody::empty().with_finish(finish));
            }
            // A 101 to a request that asked for no (WebSocket) upgrade cannot be relayed.
            return self.fail(
                StatusCode::BAD_GATEWAY,
                local::BAD_RESPONSE,
                "UC",
                head,
                &state,
                ex,
            );
        }
        headers::response(resp.headers_mut(), false);
        let (p, incoming) = resp.into_parts();
        let checkin = sender.map(|s| {
            self.policy
                .pool
                .checkin(&app.address, app.port, s, state.clone())
        });
        let body = RespBody::proxied(
            incoming,
            checkin,
            self.policy.stream_idle_timeout,
            self.finish(ex, Some(state)),
        );
        Response::from_parts(p, body)
    }

    /// A pooled connection (or a new one), and the request sent on it. A pooled connection the app closed just
    /// before the request went out gives the request back unsent; it is sent once more on a new connection.
    async fn exchange(
        &self,
        req: Request<ReqBody>,
        host: &str,
        port: u16,
    ) -> Result<(Option<AppSender>, Response<UpBody>), Failure> {
        let pool = &self.policy.pool;
        if self.app_h2 {
            // One multiplexed h2c connection per app address: nothing to check in or out per request.
            let mut sender = pool
                .take_or_dial_h2(host, port)
                .await
                .map_err(Failure::Dial)?;
            let r = match sender.send(req).await {
                Ok(r) => r,
                Err(e) => match e.request {
                    Some(req) => {
                        let mut fresh = pool.dial_h2(host, port).await.map_err(Failure::Dial)?;
                        fresh
                            .send(req)
                            .await
                            .map_err(|e| Failure::Send(SendFailure::H2(e.error)))?
                    }
                    None => return Err(Failure::Send(SendFailure::H2(e.error))),
                },
            };
            return Ok((None, r.map(UpBody::H2)));
        }
        let sender = match pool.take(host, port) {
            Some(s) => s,
            None => pool.dial(host, port).await.map_err(Failure::Dial)?,
        };
        let h1 = |e| Failure::Send(SendFailure::H1(e));
        match sender.send(req).await {
            Ok(r) => Ok((Some(sender), r.map(UpBody::H1))),
            Err(e) => match e.request {
                Some(req) => {
                    let fresh = pool.dial(host, port).await.map_err(Failure::Dial)?;
                    let r = fresh.send(req).await.map_err(|e| h1(e.error))?;
                    Ok((Some(fresh), r.map(UpBody::H1)))
                }
                None => Err(h1(e.error)),
            },
        }
    }

    /// 101 from the app: both upgraded connections relayed as bytes (crate::relay), on their own task that the
    /// connection waits for before it counts as closed.
    fn tunnel(&self, down: hyper::upgrade::OnUpgrade, up: crate::http::h1_client::Upgraded) {
        self.recent.stop();
        let stats = self.stats.clone();
        let task = tokio::spawn(async move {
            let Ok(down) = down.await else {
                return;
            };
            let mut d = TokioIo::new(down);
            let (from_down, from_up) = up.join(&mut d).await;
            stats.bytes_received.add(from_down);
            stats.bytes_sent.add(from_up);
        });
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

impl Conn {
    fn is_h2(&self) -> bool {
        self.codec == Codec::Http2
    }
}

enum Failure {
    Dial(DialError),
    Send(SendFailure),
}

/// The app's connection failed the request, on either client hop.
enum SendFailure {
    H1(crate::http::h1_client::Error),
    H2(::h2::Error),
}

impl SendFailure {
    /// The app's answer could not be parsed (HTTP/1.1; h2 resets a malformed answer's stream instead).
    fn is_parse(&self) -> bool {
        matches!(self, SendFailure::H1(e) if e.is_parse())
    }

    fn text(&self) -> String {
        match self {
            SendFailure::H1(e) => crate::http::h2::error_text(e),
            SendFailure::H2(e) => crate::http::h2::error_text(e),
        }
    }
}

/// The header list as `http_head` and intentions take it: lower-case names (hyper's), values as received,
/// without `host` for HTTP/2. Beside each entry the field it was read from: the request to
/// the app reuses those (reference-counted) instead of parsing each name and copying each value again.
fn received_typed(h: &http::HeaderMap, h2: bool) -> (Vec<(&str, &[u8])>, Vec<headers::Typed<'_>>) {
    let mut list = Vec::with_capacity(h.len() + 1);
    let mut typed = Vec::with_capacity(h.len() + 1);
    for (n, v) in h {
        if h2 && n == http::header::HOST {
            continue;
        }
        list.push((n.as_str(), v.as_bytes()));
        typed.push(Some((n, v)));
    }
    (list, typed)
}

fn header_str<B>(req: &Request<B>, name: http::header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
}
