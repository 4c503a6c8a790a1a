//! Test harness: a CA and SPIFFE leaves made here (rcgen), an inbound HTTP listener started through
//! `Compiled::build` + `listener::start` in front of a small keep-alive app, and a raw HTTP/1.1 client over mTLS.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use _core::listener::{self, Running};
use _core::snapshot::Snapshot;
use _core::state::{Compiled, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

pub struct Pki {
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    pub fn leaf(&self, service: &str) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let uri = format!("spiffe://{TD}/ns/default/dc/dc1/svc/{service}");
        p.subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().unwrap()));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// P0/P1/P2 of l7-security.md §7 for destination `api`, source `web`; default deny.
pub fn intentions() -> Value {
    json!({
        "destination": {"name": "api"},
        "default_allow": false,
        "intentions": [{
            "source": {"name": "web"},
            "destination": {"name": "api"},
            "precedence": 9,
            "permissions": [
                {"action": "deny", "http": {"path_prefix": "/admin"}},
                {"action": "allow", "http": {"path_exact": "/reports", "methods": ["PUT"],
                                             "headers": [{"name": "x-role", "exact": "admin"}]}},
                {"action": "allow", "http": {"path_prefix": "/", "methods": ["GET", "POST"]}}
            ]
        }]
    })
}

/// What the app saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, n: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Clone, Default)]
pub struct App {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl App {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the app saw a request")
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A keep-alive app: answers the path it got; `/slow` waits 3 s; `/ws` switches to an echo.
pub async fn app() -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App {
        port: l.local_addr().unwrap().port(),
        ..App::default()
    };
    let a = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            a.connections.fetch_add(1, Ordering::SeqCst);
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| serve_app(a.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    app
}

async fn serve_app(
    a: App,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if path == "/ws" {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let mut io = TokioIo::new(u);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        a.seen.lock().unwrap().push(Seen {
            method,
            path,
            headers,
            body: vec![],
        });
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return Ok(Response::new(Full::new(Bytes::new()))), // cut short: not recorded
    };
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    a.seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body,
    });
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .header("x-app", "1")
        .body(Full::new(Bytes::from(format!("app saw {path}"))))
        .unwrap())
}

pub struct Proxy {
    pub snapshot: Value,
    pub shared: Arc<Shared>,
    pub port: u16,
    pub pki: Arc<Pki>,
    _running: Running,
}

/// An inbound HTTP listener for `api` in front of `app_port`, with `http` as its http section.
pub async fn proxy(pki: Arc<Pki>, app_port: u16, http: Value) -> Proxy {
    let api = pki.leaf("api");
    let snap = json!({
        "version": 1,
        "datacenter": "dc1",
        "trust_domain": TD,
        "tls": {"roots_pem": pki.ca_pem, "cert_pem": api.cert_pem, "key_pem": api.key_pem,
                "not_before": 0.0, "not_after": 4.0e9},
        "listeners": [{
            "name": "inbound", "bind": "127.0.0.1:0", "kind": "inbound", "protocol": "http",
            "app": {"address": "127.0.0.1", "port": app_port},
            "intentions": intentions(),
            "http": http,
            "limits": {"connect_timeout_ms": 1000}
        }]
    });
    let json = snap.clone();
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
    Proxy {
        snapshot: json,
        shared,
        port: running.port,
        pki,
        _running: running,
    }
}

impl Proxy {
    /// Swaps in the same snapshot with other intentions (what `Core.apply` does).
    pub fn set_intentions(&self, intentions: Value) {
        let mut v = self.snapshot.clone();
        v["version"] = json!(2);
        v["listeners"][0]["intentions"] = intentions;
        let snap: Snapshot = serde_json::from_value(v).unwrap();
        self.shared
            .current
            .store(Arc::new(Compiled::build(&snap, &self.shared)));
    }

    /// An mTLS connection as `service`.
    pub async fn connect(&self, service: &str) -> TlsStream<TcpStream> {
        let leaf = self.pki.leaf(service);
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .unwrap();
        TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// One request on a fresh connection as `web`; the response (HEAD: no body expected).
    pub async fn once(&self, raw: &str) -> Resp {
        let mut s = self.connect("web").await;
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = raw.starts_with("HEAD ");
        read_response(&mut s, &mut buf, head)
            .await
            .expect("a response")
    }

    pub fn counter(&self, name: &str, label: (&str, &str)) -> u64 {
        let v = self.shared.stats.render();
        v["counters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c[0] == name && c[1][label.0] == label.1)
            .map(|c| c[2].as_u64().unwrap())
            .sum()
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (skipping 100s); None at end of stream before a head. Leftover bytes stay in `buf`.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: bool,
) -> Option<Resp> {
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !fill(s, buf).await {
                return None;
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        if status == 100 {
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head || status == 101 || status == 204 || status == 304 {
        } else if let Some(n) = get("content-length") {
            let n: usize = n.parse().ok()?;
            while buf.len() < n {
                if !fill(s, buf).await {
                    return None;
                }
            }
            body = buf.drain(..n).collect();
        } else if get("transfer-encoding").is_some() {
            loop {
                let line = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !fill(s, buf).await {
                        return None;
                    }
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line]).trim(), 16).ok()?;
                buf.drain(..line + 2);
                while buf.len() < size + 2 {
                    if !fill(s, buf).await {
                        return None;
                    }
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while fill(s, buf).await {}
            body = std::mem::take(buf);
        }
        return Some(Resp {
            status,
            headers,
            body,
        });
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Polls `f` until it holds or the deadline passes (no sleeps as synchronisation: design.md).
pub async fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
