//! The outbound stack (linkerd2-proxy's `app/outbound`): plaintext from the local app → a cluster's endpoint
//! over mTLS with Consul's SNI, the server's SPIFFE ID checked. At L4 per connection (`tcp`); at L7 each request
//! goes through the discovery chain (`http`).

pub mod dial;
pub mod http;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::listener::ListenerStats;
use crate::snapshot::{ListenerKind, ListenerSpec, Protocol};
use crate::state::{Compiled, Shared};

pub struct Plan {
    pub cluster: String,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub http: Option<Arc<http::Plan>>,
}

impl Plan {
    pub fn build(l: &ListenerSpec, shared: &Shared) -> Result<Plan, String> {
        let ListenerKind::Upstream {
            protocol,
            cluster,
            http,
        } = &l.kind
        else {
            return Err("not an upstream listener".into());
        };
        let http = match protocol {
            Protocol::Tcp => None,
            p => Some(Arc::new(http::Plan::build(
                &l.name,
                http,
                &l.limits,
                shared,
                p.is_h2(),
            )?)),
        };
        Ok(Plan {
            cluster: cluster.clone(),
            connect_timeout: Duration::from_millis(l.limits.connect_timeout_ms),
            handshake_timeout: Duration::from_millis(l.limits.handshake_timeout_ms),
            http,
        })
    }
}

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    snap: &Arc<Compiled>,
    plan: &Plan,
    stats: &ListenerStats,
) {
    match &plan.http {
        None => tcp::serve(stream, peer, snap, plan, stats).await,
        Some(h) => http::serve(stream, peer, snap, plan, h, stats).await,
    }
}
