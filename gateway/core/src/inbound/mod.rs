//! The inbound stack (linkerd2-proxy's `app/inbound`): mTLS accept → SPIFFE identity → intentions → the local
//! app. Nothing reaches the app before the caller is authorized: at L4 the whole connection, at L7 each request
//! (`http`).

pub mod expose;
pub mod http;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::identity::{peer_of, Peer};
use crate::listener::ListenerStats;
use crate::policy::Intentions;
use crate::snapshot::{Addr, ListenerKind, ListenerSpec, Protocol};
use crate::state::{Compiled, Shared};

pub struct Plan {
    pub app: Addr,
    pub intentions: Intentions,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Some for HTTP-like protocols: requests are authorized one by one.
    pub http: Option<Arc<http::Policy>>,
    pub protocol: Protocol,
}

impl Plan {
    pub fn build(l: &ListenerSpec, shared: &Shared) -> Result<Plan, String> {
        let ListenerKind::Inbound {
            protocol,
            app,
            intentions,
            http,
        } = &l.kind
        else {
            return Err("not an inbound listener".into());
        };
        let http = match protocol {
            Protocol::Tcp => None,
            _ => Some(Arc::new(
                http::Policy::build(http, &l.limits)?.with_stats(shared, &l.name, &l.bind),
            )),
        };
        Ok(Plan {
            app: app.clone(),
            intentions: Intentions::build(intentions),
            handshake_timeout: Duration::from_millis(l.limits.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(l.limits.connect_timeout_ms),
            http,
            protocol: *protocol,
        })
    }
}

pub async fn serve(
    stream: TcpStream,
    peer_addr: SocketAddr,
    snap: &Arc<Compiled>,
    plan: &Plan,
    stats: &ListenerStats,
) {
    let Some((tls, peer)) = accept_mtls(
        stream,
        peer_addr,
        snap,
        &plan.server_config(snap),
        plan.handshake_timeout,
        stats,
    )
    .await
    else {
        return;
    };
    match &plan.http {
        None => tcp::serve(tls, peer, plan, stats).await,
        Some(policy) => http::serve(tls, peer, peer_addr, snap, plan, policy, stats).await,
    }
}

impl Plan {
    fn server_config(&self, snap: &Compiled) -> Option<Arc<rustls::ServerConfig>> {
        snap.tls
            .as_ref()
            .filter(|t| t.valid_now())
            .map(|t| match self.protocol {
                Protocol::Tcp => t.server.clone(),
                Protocol::Http => t.server_http.clone(),
                Protocol::Http2 | Protocol::Grpc => t.server_h2.clone(),
            })
    }
}

/// The one authentication step of every mTLS listener (inbound, terminating gateway): our own leaf must be
/// valid, the handshake must finish in time with a client certificate chaining to the roots, and its SPIFFE ID
/// must be a service of our trust domain.
pub async fn accept_mtls(
    stream: TcpStream,
    peer_addr: SocketAddr,
    snap: &Compiled,
    server: &Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    stats: &ListenerStats,
) -> Option<(TlsStream<TcpStream>, Peer)> {
    let Some(server) = server else {
        stats.denied("not_ready", || {
            format!("{peer_addr}: no valid leaf certificate (never plaintext)")
        });
        return None;
    };
    let acceptor = TlsAcceptor::from(server.clone());
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Err(_) => {
            stats.denied("handshake_timeout", || {
                format!("{peer_addr}: TLS handshake timed out")
            });
            return None;
        }
        Ok(Err(e)) => {
            let reason = crate::tls::failure_reason(&e);
            stats.denied(reason, || format!("{peer_addr}: TLS handshake failed: {e}"));
            return None;
        }
        Ok(Ok(s)) => s,
    };
    stats.handshake(tls.get_ref().1);
    if crate::tls::resumed_with_expired_peer(tls.get_ref().1) {
        stats.denied("cert_expired", || {
            format!("{peer_addr}: resumed a session whose client certificate has expired")
        });
        return None;
    }
    match peer_of(tls.get_ref().1.peer_certificates(), &snap.trust_domain) {
        Ok(p) => Some((tls, p)),
        Err(reason) => {
            stats.denied(reason, || {
                format!("{peer_addr}: client certificate refused")
            });
            None
        }
    }
}
