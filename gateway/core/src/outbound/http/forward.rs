//! One request's way through the outbound HTTP path (gateway/listeners.py UpstreamListener._request, _dial,
//! _done, _route_observe; gateway/http/outbound.py Call): chain → route → split → cluster, breakers, the
//! attempts (endpoint pick, pooled or new mTLS connection, retries with budget and backoff, outlier results)
//! under the request timeout, then the response streamed back and the exchange settled and logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::attempt::Attempts;
use super::body::{Payload, RespBody};
use super::conn::ConnCtx;
use super::exchange::{bad_body, local, Exchange};
use super::hash::request_hash;
use super::headers;
use super::retry::RetryPolicy;
use super::rng;
use super::router::{pick_split, RequestView};
use super::runtime::BREAKERS;
use crate::http::forwarding::{lossy, TRACEPARENT, X_REQUEST_ID};
use crate::http::h1_client::{take_upgrade, Upgraded};

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
async fn tunnel(down: hyper::upgrade::OnUpgrade, up: Upgraded) {
    let Ok(d) = down.await else {
        return;
    };
    let mut d = TokioIo::new(d);
    up.join(&mut d).await;
}

/// `started`: the exchange's first clock read, taken by the listener (it also times the HTTP/2 stream's guard).
pub(super) async fn handle(
    mut req: Request<Incoming>,
    cx: Arc<ConnCtx>,
    started: Instant,
) -> Response<RespBody> {
    let (snap, plan) = cx.current();
    let down_version = req.version();
    if req.version() == Version::HTTP_10 {
        cx.http10.store(true, Ordering::Relaxed);
    }
    let upgrade = upgrade_of(req.headers());
    let down_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let mut ex = Box::new(Exchange::new(&plan, &cx, &req, started));
    // The exchange's wall-clock start serves the leaf's validity check too (one clock read, not two).
    let Some(tls) = snap.tls.clone().filter(|t| t.valid_at(ex.start_wall)) else {
        plan.m.not_ready.inc();
        return local(ex, 503, "no healthy upstream (not_ready)", "UH", None);
    };
    // Read as text only where it is used: an ingress picks its chain by it, an HTTP/2 upstream gets it as
    // `:authority`, a caller without Host (HTTP/2) gives its `:authority` as Host.
    let host = (plan.ingress || plan.h2 || !req.headers().contains_key(http::header::HOST))
        .then(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
        })
        .flatten();
    let Some(ci) = (if plan.ingress {
        plan.chain_for(host.as_deref())
            .and_then(|c| plan.chains.iter().position(|x| std::ptr::eq(x, c)))
    } else {
        Some(0)
    }) else {
        return local(ex, 404, "no service for this host", "NR", None);
    };
    let chain = &plan.chains[ci];
    // The target as received (reference-counted, not copied): routed on, and sent as it is unless rewritten.
    let received_pq = req.uri().path_and_query().cloned();
    let pq = received_pq.as_ref().map_or("/", |p| p.as_str());
    let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
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
        plan.m.no_healthy.inc();
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
    let rewritten = match &route.prefix_rewrite {
        Some(rw) if pq.starts_with(route.match_prefix.as_str()) => {
            Some(format!("{rw}{}", &pq[route.match_prefix.len()..]))
        }
        _ => None,
    };
    let target = rewritten.as_deref().unwrap_or(pq);
    let mut hdrs = parts.headers;
    let uri = if plan.h2 {
        // HTTP/2 upstream: `:authority` from Host (or the caller's own `:authority`), `:scheme` as the app spoke
        // it (plaintext: http); no `host` field beside it (RFC 9113 §8.3.1).
        hdrs.remove(http::header::HOST);
        let authority = host.clone().unwrap_or_else(|| cluster.name.clone());
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(target)
            .build()
            .or_else(|_| {
                Uri::builder()
                    .scheme("http")
                    .authority(cluster.name.as_str())
                    .path_and_query(target)
                    .build()
            })
            .ok()
    } else {
        if !hdrs.contains_key(http::header::HOST) {
            // An HTTP/2 caller's `:authority` becomes Host for an HTTP/1.1 upstream.
            if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                hdrs.insert(http::header::HOST, h);
            }
        }
        Some(match (&rewritten, &received_pq) {
            (None, Some(pq)) => Uri::from(pq.clone()),
            _ => Uri::try_from(target)
                .unwrap_or_else(|_| Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"))),
        })
    };
    let Some(uri) = uri else {
        return local(ex, 400, "invalid request target", "", None);
    };
    // hyper answers Expect: 100-continue itself when the body is read; the upstream must not wait for it.
    hdrs.remove(http::header::EXPECT);
    headers::forward_request(&mut hdrs, &cx.peer_ip, &split.request);
    if let Some(u) = &upgrade {
        hdrs.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        hdrs.insert(http::header::UPGRADE, u.clone());
    }
    if let Some(l) = &mut ex.log {
        // What forward_request left in the head: the id it kept or made, the span it made.
        let field = |n: &http::HeaderName| hdrs.get(n).map(lossy).unwrap_or_default();
        l.request_id = field(&X_REQUEST_ID);
        l.traceparent = field(&TRACEPARENT);
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
    let replay = upgrade.is_none() && a.policy.wants_replay(&a.method, ex.grpc);
    let tap = ex.tap.clone();
    // From the exchange's start, read once already (a clock read saved per request).
    let deadline = tokio::time::Instant::from_std(ex.started + timeout);
    let run = async {
        let payload = Payload::prepare(body, replay, &tap).await;
        if tap.failed.load(Ordering::Relaxed) {
            return Err(bad_body());
        }
        a.run(&mut ex, payload).await
    };
    // Boxed: the attempts' state (dial, TLS, the exchange) is large, and the timer would carry it inline.
    match tokio::time::timeout_at(deadline, Box::pin(run)).await {
        Err(_) => {
            plan.m.timeouts[1].inc();
            ex.detach();
            local(ex, 504, "upstream request timeout", "UT", None)
        }
        Ok(Err(f)) => local(ex, f.status, f.text, f.flags, f.overloaded),
        Ok(Ok((mut resp, conn))) => {
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(down)) = (resp.status(), down_upgrade) {
                let Some(up) = take_upgrade(&mut resp) else {
                    return local(ex, 502, "upstream upgrade failed", "UC", None);
                };
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
            rp.version = if down_version == Version::HTTP_2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            ex.grpc_trailers(&rp.headers);
            ex.head(rp.status.as_u16());
            let pool = rt.pool.clone();
            Response::from_parts(rp, RespBody::upstream(rbody, conn, pool, ex))
        }
    }
}
