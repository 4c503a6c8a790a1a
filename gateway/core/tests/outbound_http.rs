//! Outbound HTTP end to end on real sockets: the app's plaintext requests → an upstream listener → real mTLS
//! (certificates made here with rcgen, SPIFFE URI SANs) to two fake "sidecar" servers, A and B.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use _core::listener::{self, Running};
use _core::snapshot::Snapshot;
use _core::state::{Compiled, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

struct Pki {
    ca_pem: String,
    ca_key: KeyPair,
    ca_params: CertificateParams,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_key,
            ca_params: p,
        }
    }

    /// (cert PEM, key PEM) for a service's SPIFFE ID.
    fn leaf(&self, service: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let uri = format!("spiffe://{TD}/ns/default/dc/dc1/svc/{service}");
        p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A fake sidecar: answers with its name, or as told (503s, resets, slow answers).
struct Fake {
    name: &'static str,
    port: u16,
    /// The next N requests get 503 / 500.
    fail_503: AtomicUsize,
    always_500: AtomicUsize,
    /// The next N connections are closed after the request head arrives, without an answer.
    reset: AtomicUsize,
    requests: AtomicUsize,
    connections: AtomicUsize,
    /// Requests to /slow wait for this.
    release: Notify,
}

async fn fake(pki: &Pki, name: &'static str) -> Arc<Fake> {
    let (cert, key) = pki.leaf("api");
    let roots = _core::tls::roots(&pki.ca_pem, "ca").unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, _core::tls::provider())
            .build()
            .unwrap();
    let certs = _core::tls::certs(&cert, "leaf").unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(_core::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let f = Arc::new(Fake {
        name,
        port: l.local_addr().unwrap().port(),
        fail_503: AtomicUsize::new(0),
        always_500: AtomicUsize::new(0),
        reset: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        release: Notify::new(),
    });
    let f2 = f.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            let f = f2.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                f.connections.fetch_add(1, Ordering::SeqCst);
                if take(&f.reset) {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    f.requests.fetch_add(1, Ordering::SeqCst);
                    return; // dropped: the proxy sees the connection end before a response
                }
                let f3 = f.clone();
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let f = f3.clone();
                    async move {
                        f.requests.fetch_add(1, Ordering::SeqCst);
                        if req.headers().contains_key("upgrade") {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let Ok(io) = on.await else { return };
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
                            r.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            return Ok(r);
                        }
                        if req.uri().path() == "/slow" {
                            f.release.notified().await;
                        }
                        let status = if f.always_500.load(Ordering::SeqCst) > 0 {
                            500
                        } else if take(&f.fail_503) {
                            503
                        } else {
                            200
                        };
                        let seen = |n: &str| {
                            req.headers()
                                .get(n)
                                .map(|v| v.to_str().unwrap_or("").to_string())
                                .unwrap_or_default()
                        };
                        let mut r = Response::new(Full::new(Bytes::from(f.name)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        let h = r.headers_mut();
                        h.insert("x-server", f.name.parse().unwrap());
                        h.insert("x-seen-xff", seen("x-forwarded-for").parse().unwrap());
                        h.insert("x-seen-request-id", seen("x-request-id").parse().unwrap());
                        h.insert("x-seen-path", req.uri().to_string().parse().unwrap());
                        h.insert("x-seen-added", seen("x-added").parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    f
}

fn take(a: &AtomicUsize) -> bool {
    a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn ep(f: &Fake) -> Value {
    json!({"address": "127.0.0.1", "port": f.port, "weight": 1, "health": "passing", "datacenter": "dc1"})
}

fn cluster(eps: Vec<Value>, extra: Value) -> Value {
    let mut c = json!({
        "sni": format!("api.default.dc1.internal.{TD}"),
        "expected_uri": format!("spiffe://{TD}/ns/default/dc/dc1/svc/api"),
        "endpoints": eps,
    });
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c
}

fn route(name: &str, m: Value, splits: Vec<(&str, f64)>, extra: Value) -> Value {
    let mut r = json!({
        "name": name,
        "match": m,
        "splits": splits.iter().map(|(c, w)| json!({"cluster": c, "weight": w,
            "request_headers": {"drop": [], "add": [["x-added", *c]]}})).collect::<Vec<_>>(),
    });
    if let (Some(o), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    r
}

struct Proxy {
    shared: Arc<Shared>,
    _running: Running,
    port: u16,
}

async fn proxy(pki: &Pki, http: Value) -> Proxy {
    let (cert, key) = pki.leaf("web");
    let snap = json!({
        "version": 1,
        "datacenter": "dc1",
        "trust_domain": TD,
        "tls": {"roots_pem": pki.ca_pem, "cert_pem": cert, "key_pem": key, "not_before": 0.0, "not_after": 1e12},
        "listeners": [{"name": "upstream:api", "bind": "127.0.0.1:0", "kind": "upstream", "protocol": "http",
                       "http": http}],
    });
    let snap: Snapshot = serde_json::from_value(snap).unwrap();
    let shared = Shared::new();
    let compiled = Compiled::build(&snap, &shared);
    let logs = shared.take_logs();
    assert!(compiled.plans.contains_key("127.0.0.1:0"), "{logs:?}");
    shared.current.store(Arc::new(compiled));
    let running = listener::start(
        &tokio::runtime::Handle::current(),
        &shared,
        &snap.listeners[0],
    )
    .unwrap();
    let port = running.port;
    Proxy {
        shared,
        _running: running,
        port,
    }
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn get(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "api");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn counter(shared: &Shared, name: &str, labels: &[(&str, &str)]) -> u64 {
    let v = shared.stats.render();
    for c in v["counters"].as_array().unwrap() {
        if c[0] == name && labels.iter().all(|(k, want)| c[1][*k] == *want) {
            return c[2].as_u64().unwrap();
        }
    }
    0
}

fn two_clusters(a: &Fake, b: &Fake, routes: Vec<Value>, extra: Value) -> Value {
    let mut h = json!({
        "source": "web",
        "observe": true,
        "access_log": {"fields": ["status", "response_flags", "upstream_cluster", "route", "retries"]},
        "chains": [{"name": "api", "routes": routes}],
        "clusters": {"a": cluster(vec![ep(a)], json!({})), "b": cluster(vec![ep(b)], json!({}))},
    });
    if let (Some(o), Some(e)) = (h.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    h
}

#[tokio::test]
async fn routes_by_path_and_header_with_forwarding_headers() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![
        route(
            "api/0",
            json!({"path_prefix": "/b"}),
            vec![("b", 100.0)],
            json!({"prefix_rewrite": "/rewritten", "match_prefix": "/b"}),
        ),
        route(
            "api/1",
            json!({"headers": [{"name": "x-pick", "exact": "b"}]}),
            vec![("b", 100.0)],
            json!({}),
        ),
        route("default", Value::Null, vec![("a", 100.0)], json!({})),
    ];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let r = get(&p, "/x", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    assert_eq!(r.headers["x-seen-xff"], "127.0.0.1");
    assert_eq!(r.headers["x-seen-request-id"].len(), 36);
    assert_eq!(r.headers["x-seen-added"], "a");
    let r = get(&p, "/b/c?q=1", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert_eq!(r.headers["x-seen-path"], "/rewritten/c?q=1");
    let r = get(&p, "/x", &[("x-pick", "b"), ("x-request-id", "rid-1")]).await;
    assert_eq!(r.body, "b");
    assert_eq!(r.headers["x-seen-request-id"], "rid-1");
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_http_responses_total",
            &[("code_class", "2xx")]
        ),
        3
    );
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_http_route_responses_total",
            &[("route", "api/0"), ("code_class", "2xx")]
        ),
        1
    );
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_http_upstream_responses_total",
            &[("cluster", "b"), ("code_class", "2xx")]
        ),
        2
    );
    let logs = p.shared.take_access();
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(
        logs[1],
        r#"{"status":200,"response_flags":"-","upstream_cluster":"b","route":"api/0","retries":0}"#
    );
}

#[tokio::test]
async fn weighted_split_reaches_both() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route(
        "default",
        Value::Null,
        vec![("a", 50.0), ("b", 50.0)],
        json!({}),
    )];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let r = get(&p, "/", &[]).await;
        assert_eq!(r.status, 200);
        *seen.entry(r.body).or_default() += 1;
    }
    assert!(
        seen.get("a").copied().unwrap_or(0) >= 10 && seen.get("b").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );
}

#[tokio::test]
async fn retries_on_503_and_on_reset_and_reuses_connections() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route(
        "default",
        Value::Null,
        vec![("a", 100.0)],
        json!({"retry": {"num_retries": 2, "retry_on_status_codes": [503], "retry_on_reset": true}}),
    )];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    a.fail_503.store(1, Ordering::SeqCst);
    let r = get(&p, "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_http_retries_total",
            &[("reason", "status")]
        ),
        1
    );
    // The 503's connection is not reused (its body was not read); the retry's one is kept alive.
    for _ in 0..3 {
        assert_eq!(get(&p, "/", &[]).await.status, 200);
    }
    assert_eq!(
        a.connections.load(Ordering::SeqCst),
        2,
        "pooled connection reused"
    );
    // A reset on a fresh connection: the pool is emptied by a server-side close first.
    a.reset.store(1, Ordering::SeqCst);
    a.fail_503.store(0, Ordering::SeqCst);
    let q = proxy(
        &pki,
        two_clusters(
            &a,
            &b,
            vec![route(
                "default",
                Value::Null,
                vec![("a", 100.0)],
                json!({"retry": {"num_retries": 1, "retry_on_reset": true}}),
            )],
            json!({}),
        ),
    )
    .await;
    let r = get(&q, "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    assert_eq!(
        counter(
            &q.shared,
            "meshgw_http_retries_total",
            &[("reason", "reset")]
        ),
        1
    );
    let logs = q.shared.take_access();
    assert!(logs[0].contains(r#""retries":1"#), "{logs:?}");
    // Without retries a reset is a 503 UC.
    a.reset.store(1, Ordering::SeqCst);
    let n = proxy(
        &pki,
        two_clusters(
            &a,
            &b,
            vec![route(
                "default",
                Value::Null,
                vec![("a", 100.0)],
                json!({"retry": {"num_retries": 0}}),
            )],
            json!({}),
        ),
    )
    .await;
    let r = get(&n, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert!(n.shared.take_access()[0].contains(r#""response_flags":"UC""#));
}

#[tokio::test]
async fn breaker_answers_503_when_max_pending_is_reached() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route(
        "default",
        Value::Null,
        vec![("a", 100.0)],
        json!({"retry": {"num_retries": 0}}),
    )];
    let mut h = two_clusters(&a, &b, routes, json!({}));
    h["clusters"]["a"]["limits"] =
        json!({"max_connections": 1, "max_pending_requests": 1, "max_concurrent_requests": 100});
    let p = Arc::new(proxy(&pki, h).await);
    let p1 = p.clone();
    let slow = tokio::spawn(async move { get(&p1, "/slow", &[]).await });
    wait_for(|| a.requests.load(Ordering::SeqCst) == 1).await;
    let p2 = p.clone();
    let queued = tokio::spawn(async move { get(&p2, "/", &[]).await });
    wait_for(|| counter_gauge(&p.shared, "meshgw_http_pending_requests") == 1).await;
    let r = get(&p, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-meshgw-overloaded"], "max_pending_requests");
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_http_circuit_breaker_trips_total",
            &[("breaker", "max_pending_requests")]
        ),
        1
    );
    a.release.notify_one();
    assert_eq!(slow.await.unwrap().status, 200);
    let q = queued.await.unwrap();
    assert_eq!(
        (q.status, q.body.as_str()),
        (200, "a"),
        "the queued request got the connection"
    );
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route(
        "default",
        Value::Null,
        vec![("ab", 100.0)],
        json!({"retry": {"num_retries": 0}}),
    )];
    let h = json!({
        "chains": [{"name": "api", "routes": routes}],
        "clusters": {"ab": cluster(vec![ep(&a), ep(&b)], json!({"outlier": {"max_failures": 2, "max_ejection_percent": 50}}))},
    });
    let p = proxy(&pki, h).await;
    a.always_500.store(1, Ordering::SeqCst);
    let mut bodies = Vec::new();
    for _ in 0..12 {
        bodies.push(get(&p, "/", &[]).await.body);
    }
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_outlier_ejections_total",
            &[("reason", "consecutive_5xx")]
        ),
        1
    );
    // Round robin: a's 2nd failure (by the 4th request) ejects it; after that only b answers.
    assert!(bodies[4..].iter().all(|b| b == "b"), "{bodies:?}");
    assert_eq!(
        counter_gauge(&p.shared, "meshgw_outlier_ejected_endpoints"),
        1
    );
}

fn counter_gauge(shared: &Shared, name: &str) -> i64 {
    let v = shared.stats.render();
    v["gauges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g[0] == name)
        .map(|g| g[2].as_i64().unwrap())
        .sum()
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met in 5 s");
}

#[tokio::test]
async fn upgrade_becomes_a_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn idle_keepalive_connections_close_and_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let p = proxy(
        &pki,
        two_clusters(&a, &b, routes, json!({"idle_timeout_ms": 200})),
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    assert!(n.is_ok(), "closed by the proxy");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert_eq!(
        counter(&p.shared, "meshgw_http_timeouts_total", &[("kind", "idle")]),
        1
    );
}

#[tokio::test]
async fn malformed_chunked_body_gets_400_and_nothing_reaches_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    assert!(
        String::from_utf8_lossy(&all).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&all)
    );
    assert_eq!(a.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_new_snapshot_reroutes_the_next_request_of_a_kept_alive_connection() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let to = |c: &str| {
        two_clusters(
            &a,
            &b,
            vec![route("default", Value::Null, vec![(c, 100.0)], json!({}))],
            json!({}),
        )
    };
    let p = proxy(&pki, to("a")).await;
    let s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async || {
        let req = Request::builder()
            .uri("/")
            .header("host", "api")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = tx.send_request(req).await.unwrap();
        String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
    };
    assert_eq!(ask().await, "a");
    // The same listener in a new snapshot, now routing to b.
    let old = p.shared.current.load_full();
    let (cert, key) = pki.leaf("web");
    let snap: Snapshot = serde_json::from_value(json!({
        "version": 2, "datacenter": "dc1", "trust_domain": TD,
        "tls": {"roots_pem": pki.ca_pem, "cert_pem": cert, "key_pem": key, "not_before": 0.0, "not_after": 1e12},
        "listeners": [{"name": "upstream:api", "bind": "127.0.0.1:0", "kind": "upstream", "protocol": "http",
                       "http": to("b")}],
    }))
    .unwrap();
    p.shared
        .current
        .store(Arc::new(Compiled::build(&snap, &p.shared)));
    drop(old);
    assert_eq!(ask().await, "b");
}

#[tokio::test]
async fn drain_closes_idle_keepalive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    p.shared.draining.send_replace(true);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "closed on drain");
}

#[tokio::test]
async fn an_http_1_0_request_is_answered_with_an_http_1_1_status_line_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let p = proxy(&pki, two_clusters(&a, &b, routes, json!({}))).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\na"),
        "{text}"
    );
}

#[tokio::test]
async fn max_concurrent_requests_breaker() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let routes = vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))];
    let mut h = two_clusters(&a, &b, routes, json!({}));
    h["clusters"]["a"]["limits"] = json!({"max_concurrent_requests": 1});
    let p = Arc::new(proxy(&pki, h).await);
    let p1 = p.clone();
    let slow = tokio::spawn(async move { get(&p1, "/slow", &[]).await });
    wait_for(|| a.requests.load(Ordering::SeqCst) == 1).await;
    let r = get(&p, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-meshgw-overloaded"], "max_concurrent_requests");
    assert_eq!(r.body, "upstream overflow\n");
    a.release.notify_one();
    assert_eq!(slow.await.unwrap().status, 200);
    // Settled: the next request is served.
    assert_eq!(get(&p, "/", &[]).await.status, 200);
    let logs = p.shared.take_access();
    assert!(
        logs.iter()
            .any(|l| l.contains(r#""status":503,"response_flags":"UO""#)),
        "{logs:?}"
    );
}

#[tokio::test]
async fn no_healthy_endpoint_is_a_counted_503_and_an_unknown_host_on_ingress_a_404() {
    let pki = Pki::new();
    let (a, b) = (fake(&pki, "a").await, fake(&pki, "b").await);
    let mut h = two_clusters(
        &a,
        &b,
        vec![route("default", Value::Null, vec![("a", 100.0)], json!({}))],
        json!({}),
    );
    h["clusters"]["a"]["endpoints"] =
        json!([{"address": "127.0.0.1", "port": a.port, "health": "critical"}]);
    let p = proxy(&pki, h).await;
    let r = get(&p, "/", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "no healthy upstream (no_healthy_endpoints)\n")
    );
    assert_eq!(
        counter(
            &p.shared,
            "meshgw_upstream_connect_errors_total",
            &[("reason", "no_healthy_endpoints")]
        ),
        1
    );
    // Ingress: the chain is picked by Host; none matches: 404 NR.
    let ingress = json!({
        "ingress": true,
        "access_log": {"fields": ["status", "response_flags"]},
        "chains": [
            {"name": "a", "hosts": ["a.example.com"], "routes": [route("default", Value::Null, vec![("a", 100.0)], json!({}))]},
            {"name": "b", "hosts": ["*.b.example.com"], "routes": [route("default", Value::Null, vec![("b", 100.0)], json!({}))]},
        ],
        "clusters": {"a": cluster(vec![ep(&a)], json!({})), "b": cluster(vec![ep(&b)], json!({}))},
    });
    let q = proxy(&pki, ingress).await;
    let host = |h: &'static str| [("host", h)];
    assert_eq!(get(&q, "/", &host("A.example.com:8080")).await.body, "a");
    assert_eq!(get(&q, "/", &host("x.b.example.com")).await.body, "b");
    assert_eq!(get(&q, "/", &host("other.example.com")).await.status, 404);
    let logs = q.shared.take_access();
    assert_eq!(logs[2], r#"{"status":404,"response_flags":"NR"}"#);
}
