//! Expose listeners end to end on loopback (src/inbound/expose.rs): plaintext HTTP/1.1 to a keep-alive app for
//! the exact paths only, h2c to an h2c app for a gRPC check, and a caller no path admits finds no listener chain.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use _core::listener::{self, Running};
use _core::snapshot::Snapshot;
use _core::state::{Compiled, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn expose(section: Value) -> (Arc<Shared>, Running) {
    let snap = json!({
        "version": 1,
        "listeners": [{"name": "expose:0", "bind": "127.0.0.1:0", "kind": "expose", "expose": section,
                       "limits": {"connect_timeout_ms": 1000}}]
    });
    let snap: Snapshot = serde_json::from_value(snap).unwrap();
    let shared = Shared::new();
    shared
        .current
        .store(Arc::new(Compiled::build(&snap, &shared)));
    assert!(
        shared.current.load().plans.contains_key("127.0.0.1:0"),
        "{:?}",
        shared.take_logs()
    );
    let running = listener::start(
        &tokio::runtime::Handle::current(),
        &shared,
        &snap.listeners[0],
    )
    .unwrap();
    (shared, running)
}

async fn once(port: u16, raw: &str) -> Option<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, raw.starts_with("HEAD ")).await
}

#[tokio::test]
async fn only_the_exact_paths_reach_the_app() {
    let app = app().await;
    let (_shared, l) = expose(json!({
        "app_address": "127.0.0.1",
        "paths": [{"path": "/health", "port": app.port}],
    }))
    .await;
    let r = once(
        l.port,
        "GET /health?full=1 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"app saw /health?full=1");
    assert_eq!(app.last().header("host"), vec!["web"]);
    for target in [
        "/admin",
        "/health/",
        "/health/../admin",
        "/Health",
        "/%68ealth",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: web\r\n\r\n");
        assert_eq!(once(l.port, &raw).await.unwrap().status, 404, "{target}");
    }
    let r = once(l.port, "GET /health HTTP/1.0\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 426);
    assert_eq!(
        app.seen().len(),
        1,
        "nothing but the exposed path reached the app"
    );
}

#[tokio::test]
async fn an_app_that_is_down_gets_503() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gone.local_addr().unwrap().port();
    drop(gone);
    let (_shared, l) = expose(json!({"paths": [{"path": "/health", "port": port}]})).await;
    let r = once(l.port, "GET /health HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn a_caller_no_path_admits_is_closed_unanswered() {
    let app = app().await;
    // Consul's sources for a path parsed from a check, without loopback: this test's caller is not among them.
    let (shared, l) = expose(json!({
        "paths": [{"path": "/health", "port": app.port, "sources": ["192.0.2.1", "10.0.0.0/8"]}],
    }))
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", l.port)).await.unwrap();
    let _ = s
        .write_all(b"GET /health HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "no answer");
    assert_eq!(app.seen().len(), 0);
    let denied = shared.stats.render()["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c[0] == "meshgw_connections_denied_total" && c[1]["reason"] == "source")
        .map(|c| c[2].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(denied, 1);
}

async fn grpc_health(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let ok = req.uri().path() == "/grpc.health.v1.Health/Check"
        && req.version() == http::Version::HTTP_2;
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", if ok { "0" } else { "12" })
        .body(Full::new(Bytes::new()))
        .unwrap())
}

#[tokio::test]
async fn a_grpc_check_goes_through_as_h2c() {
    // An h2c app (prior knowledge), as Consul's local_app cluster speaks to it for an http2 expose path.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = app.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(grpc_health))
                    .await;
            });
        }
    });
    let (_shared, l) = expose(json!({
        "protocol": "http2",
        "paths": [{"path": "/grpc.health.v1.Health/Check", "port": app_port, "sources": ["127.0.0.1/8"]}],
    }))
    .await;
    let tcp = TcpStream::connect(("127.0.0.1", l.port)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, status, grpc) in [
        ("/grpc.health.v1.Health/Check", 200, Some("0")),
        ("/grpc.health.v1.Health/Watch", 404, None),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(
            resp.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            grpc,
            "{path}"
        );
        let _ = resp.into_body().collect().await;
    }
}
