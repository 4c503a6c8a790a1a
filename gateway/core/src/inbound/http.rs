//! Inbound HTTP (being written): per-request normalization, L7 intentions and forwarding to the local app.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Plan;
use crate::identity::Peer;
use crate::listener::ListenerStats;
use crate::snapshot::Limits;
use crate::state::Compiled;

pub struct Policy;

impl Policy {
    pub fn build(_v: &serde_json::Value, _limits: &Limits) -> Result<Policy, String> {
        Err("protocol http is not served by this build of the core".into())
    }
}

pub async fn serve(
    _tls: TlsStream<TcpStream>,
    _peer: Peer,
    _peer_addr: SocketAddr,
    _snap: &Arc<Compiled>,
    _plan: &Plan,
    _policy: &Policy,
    _stats: &ListenerStats,
) {
}
