//! Inbound HTTP end to end on loopback: real mTLS (leaves made in the test), the listener started as the core
//! starts it, a keep-alive app behind it. The vectors are l7-security.md §7's, with its P0/P1/P2 intentions.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(http: Value) -> (App, Proxy) {
    let app = app().await;
    let p = proxy(Arc::new(Pki::new()), app.port, http).await;
    (app, p)
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: api\r\n\r\n")
}

/// l7-security.md §7 #1-#20 (Consul defaults: normalization on, merge off, escaped slashes kept, ALLOW).
#[tokio::test]
async fn vectors_of_section_7() {
    let (app, p) = setup(Value::Null).await;
    // (request, status, path the app got when forwarded)
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (get("/admin"), 403, None),
        (get("/api/../admin"), 403, None),
        (get("/./admin"), 403, None),
        (get("/x/%2E%2e/admin"), 403, None),
        (get("/%61dmin"), 403, None),
        (get("/a/..\\admin"), 403, None),
        (get("//admin"), 200, Some("//admin")),
        (get("/x%2f..%2fadmin"), 200, Some("/x%2f..%2fadmin")),
        (get("/admin%2Fx"), 403, None),
        (get("/ADMIN"), 200, Some("/ADMIN")),
        (get("/admin?debug=1"), 403, None),
        (get("/ok?next=/admin"), 200, Some("/ok?next=/admin")),
        (get("/admin#x"), 400, None),
        (get("/ok#x"), 400, None),
        (get("/x/..;p/admin"), 403, None),
        (get("/ok%00"), 400, None),
        (
            "PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: Admin\r\nContent-Length: 0\r\n\r\n".into(),
            403,
            None,
        ),
        (
            "PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: user\r\nX-Role: admin\r\nContent-Length: 0\r\n\r\n"
                .into(),
            403,
            None,
        ),
        (
            "PUT /reports HTTP/1.1\r\nHost: api\r\nX-Role: admin\r\nContent-Length: 0\r\n\r\n".into(),
            200,
            Some("/reports"),
        ),
        ("GET http://evil.example/admin HTTP/1.1\r\nHost: api\r\n\r\n".into(), 403, None),
        ("GET /ok HTTP/1.1\r\n\r\n".into(), 400, None),
        ("GET /ok HTTP/1.0\r\nHost: api\r\n\r\n".into(), 426, None),
        (
            "POST /ok HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
            400,
            None,
        ),
        ("GET /ok HTTP/1.1\r\nHost: api\r\nx_user: a\r\n\r\n".into(), 200, Some("/ok")),
    ];
    for (raw, status, forwarded) in cases {
        let before = app.seen().len();
        let r = p.once(&raw).await;
        assert_eq!(r.status, status, "{raw:?}: {r:?}");
        match forwarded {
            Some(path) => assert_eq!(app.last().path, path, "{raw:?}"),
            None => assert_eq!(app.seen().len(), before, "{raw:?} reached the app"),
        }
        if status == 403 {
            assert_eq!(r.body, b"RBAC: access denied");
            assert_eq!(r.header("content-type"), Some("text/plain"));
        }
        if status == 400 || status == 426 {
            assert!(r.body.is_empty(), "{raw:?}: {r:?}");
        }
    }
    assert_eq!(app.last().header("x_user"), ["a"]);
    let abs = p
        .once("GET http://evil.example/ok HTTP/1.1\r\nHost: api\r\n\r\n")
        .await;
    assert_eq!(abs.status, 200);
    assert_eq!(app.last().header("host"), ["evil.example"]);
    assert_eq!(app.last().path, "/ok");
    assert!(p.counter("meshgw_http_requests_denied_total", ("reason", "intention")) >= 11);
    assert_eq!(
        p.counter("meshgw_http_requests_denied_total", ("reason", "http_1_0")),
        1
    );
}

#[tokio::test]
async fn head_denied_has_length_and_no_body_then_pipelined_request_is_answered() {
    let (app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    s.write_all(b"HEAD /ok HTTP/1.1\r\nHost: api\r\n\r\nGET /next HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, true).await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-length"), Some("19"));
    let r2 = read_response(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(
        (r2.status, r2.body.as_slice()),
        (200, &b"app saw /next"[..])
    );
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn other_identity_is_denied_by_default() {
    let (app, p) = setup(Value::Null).await;
    let mut s = p.connect("intruder").await;
    s.write_all(get("/ok").as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(app.seen().is_empty());
}

/// The smuggling vector: `Connection: content-length` must not strip the framing of the request authorized.
#[tokio::test]
async fn connection_cannot_nominate_content_length_away() {
    let (app, p) = setup(Value::Null).await;
    let smuggled = "GET /admin/smuggled HTTP/1.1\r\nHost: api\r\n\r\n";
    let raw = format!(
        "POST /public HTTP/1.1\r\nHost: api\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let r = p.once(&raw).await;
    assert_eq!(r.status, 200);
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/public");
    assert_eq!(seen[0].body, smuggled.as_bytes());
    assert_eq!(
        seen[0].header("content-length"),
        [smuggled.len().to_string().as_str()]
    );
}

#[tokio::test]
async fn headers_over_60_kib_get_431() {
    let (app, p) = setup(Value::Null).await;
    let big = "a".repeat(61 * 1024);
    let r = p
        .once(&format!(
            "GET /ok HTTP/1.1\r\nHost: api\r\nx-big: {big}\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 431);
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = p
        .once(&format!("GET /ok HTTP/1.1\r\nHost: api\r\n{many}\r\n"))
        .await;
    assert_eq!(r.status, 431);
    assert!(app.seen().is_empty());
    wait_for(
        || p.counter("meshgw_http_responses_total", ("code_class", "4xx")) == 2,
        "hyper's 431s counted",
    )
    .await;
}

#[tokio::test]
async fn escaped_slash_actions_and_merge_slashes() {
    let app = app().await;
    let pki = Arc::new(Pki::new());
    let with = |action: &str, merge: bool| json!({"normalization": {"PathWithEscapedSlashesAction": action, "MergeSlashes": merge}});
    let reject = proxy(pki.clone(), app.port, with("REJECT_REQUEST", false)).await;
    assert_eq!(reject.once(&get("/x%2f..%2fadmin")).await.status, 400);
    let redirect = proxy(pki.clone(), app.port, with("UNESCAPE_AND_REDIRECT", false)).await;
    let r = redirect.once(&get("/x%2f..%2fadmin?q=1")).await;
    assert_eq!((r.status, r.header("location")), (307, Some("/admin?q=1")));
    let forward = proxy(pki.clone(), app.port, with("UNESCAPE_AND_FORWARD", true)).await;
    assert_eq!(forward.once(&get("/x%2f..%2fadmin")).await.status, 403);
    assert_eq!(forward.once(&get("//admin")).await.status, 403);
    assert_eq!(forward.once(&get("/a%2Fb")).await.status, 200);
    assert_eq!(app.last().path, "/a/b");
    let under = proxy(
        pki,
        app.port,
        json!({"normalization": {"headers_with_underscores_action": "REJECT_REQUEST"}}),
    )
    .await;
    let r = under
        .once("GET /ok HTTP/1.1\r\nHost: api\r\nx_user: a\r\n\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn keep_alive_pool_and_forwarding_headers() {
    let (app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    let mut buf = Vec::new();
    for i in 0..5 {
        let raw = format!(
            "GET /n/{i} HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 10.1.1.1\r\nKeep-Alive: 5\r\nTE: trailers, gzip\r\n\r\n"
        );
        s.write_all(raw.as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut buf, false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-app"), Some("1"));
    }
    assert_eq!(app.connections(), 1, "one pooled app connection");
    let seen = app.last();
    assert_eq!(seen.header("x-forwarded-for"), ["10.1.1.1, 127.0.0.1"]);
    assert_eq!(seen.header("x-request-id")[0].len(), 36);
    assert_eq!(seen.header("traceparent")[0].len(), 55);
    assert_eq!(seen.header("te"), ["trailers"]);
    assert!(seen.header("keep-alive").is_empty());
    // A second caller connection reuses the idle app connection.
    let r = p.once(&get("/again")).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.connections(), 1);
}

#[tokio::test]
async fn route_timeout_gives_504_and_is_counted() {
    let (_app, p) = setup(json!({"request_timeout_ms": 300})).await;
    let r = p.once(&get("/slow")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (504, &b"upstream request timeout"[..])
    );
    assert_eq!(
        p.counter("meshgw_http_timeouts_total", ("kind", "request")),
        1
    );
    assert_eq!(
        p.counter("meshgw_http_responses_total", ("code_class", "5xx")),
        1
    );
}

#[tokio::test]
async fn app_down_gives_503() {
    let p = proxy(Arc::new(Pki::new()), 1, Value::Null).await;
    let r = p.once(&get("/ok")).await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("upstream connect error"));
}

/// A caller that never finishes its head is closed by the header timeout, and no app connection was made.
#[tokio::test]
async fn slow_head_times_out_without_an_app_connection() {
    let (app, p) = setup(json!({"request_headers_timeout_ms": 300})).await;
    let mut s = p.connect("web").await;
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: a").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(n.is_ok(), "the connection was closed");
    assert_eq!(app.connections(), 0);
    wait_for(
        || p.counter("meshgw_http_timeouts_total", ("kind", "request_headers")) == 1,
        "the header timeout counted",
    )
    .await;
}

#[tokio::test]
async fn malformed_chunked_body_gets_400_and_nothing_reaches_the_app() {
    let (app, p) = setup(Value::Null).await;
    let r = p
        .once("POST /ok HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy() {
    let (app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).await.unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(b"hello").await.unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(app.last().body, b"hello");
    assert!(app.last().header("expect").is_empty());
}

#[tokio::test]
async fn websocket_is_relayed_after_101() {
    let (_app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    s.write_all(b"ping through").await.unwrap();
    while buf.len() < 12 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf, b"ping through");
}

#[tokio::test]
async fn access_log_records_with_python_field_names() {
    let (_app, p) = setup(json!({"access_log": {"enabled": true, "fields": []}})).await;
    assert_eq!(p.once(&get("/ok?x=1")).await.status, 200);
    assert_eq!(p.once(&get("/admin")).await.status, 403);
    let mut lines = Vec::new();
    wait_for(
        || {
            lines.extend(p.shared.take_access());
            lines.len() >= 2
        },
        "two access records",
    )
    .await;
    let a: Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    // No fields named: the defaults, the same list Python's configuration offers (gateway/config/http.py).
    assert!(
        keys.len() == _core::http::accesslog::DEFAULTS.len() && a["listener"] == "inbound",
        "{a}"
    );
    assert_eq!(a["path"], "/ok?x=1");
    assert_eq!(a["status"], 200);
    assert_eq!(a["response_flags"], "-");
    assert_eq!(a["upstream_cluster"], "local_app");
    assert_eq!(a["source_service"], "web");
    assert_eq!(a["bytes_sent"], "app saw /ok?x=1".len());
    assert!(lines[0].starts_with("{\"start_time\":"));
    let d: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (d["status"].as_u64(), d["response_flags"].as_str()),
        (Some(403), Some("RBAC"))
    );
}

/// Drain closes an idle keep-alive connection at once (gateway/http/proxy.py `ServerConnection.drain`).
#[tokio::test]
async fn drain_closes_idle_keep_alive_connections() {
    let (_app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    s.write_all(get("/ok").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut buf, false).await.unwrap().status,
        200
    );
    p.shared.draining.send_replace(true);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "closed by drain");
}

/// An intention change applies to the next request of a kept-alive connection (design.md; the Python path).
#[tokio::test]
async fn intention_change_applies_to_the_next_request_on_the_same_connection() {
    let (_app, p) = setup(Value::Null).await;
    let mut s = p.connect("web").await;
    let mut buf = Vec::new();
    s.write_all(get("/ok").as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut s, &mut buf, false).await.unwrap().status,
        200
    );
    p.set_intentions(
        json!({"destination": {"name": "api"}, "default_allow": false, "intentions": []}),
    );
    s.write_all(get("/ok").as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut s, &mut buf, false).await.unwrap().status,
        403
    );
}

/// A caller that stops sending its body gets 408 after the stream idle timeout (l7-security.md §4).
#[tokio::test]
async fn stalled_request_body_gets_408() {
    let (app, p) = setup(json!({"stream_idle_timeout_ms": 300})).await;
    let mut s = p.connect("web").await;
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (408, &b"stream timeout"[..]));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(app.seen().is_empty());
    assert_eq!(
        p.counter("meshgw_http_timeouts_total", ("kind", "stream_idle")),
        1
    );
}

/// A kept-alive connection with nothing to do is closed after idle_timeout and counted.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_and_counted() {
    let (_app, p) = setup(json!({"idle_timeout_ms": 200})).await;
    let mut s = p.connect("web").await;
    s.write_all(get("/ok").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut buf, false).await.unwrap().status,
        200
    );
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "closed when idle");
    assert_eq!(p.counter("meshgw_http_timeouts_total", ("kind", "idle")), 1);
}

/// Refused requests never cost an app connection (the pool is touched only after authorization).
#[tokio::test]
async fn refused_requests_open_no_app_connection() {
    let (app, p) = setup(Value::Null).await;
    for raw in [
        get("/admin"),
        get("/ok#f"),
        "GET /ok HTTP/1.1\r\n\r\n".to_string(),
    ] {
        p.once(&raw).await;
    }
    assert_eq!(app.connections(), 0);
    assert_eq!(
        p.counter("meshgw_http_responses_total", ("code_class", "4xx")),
        3
    );
}
