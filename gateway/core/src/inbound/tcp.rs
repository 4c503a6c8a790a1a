//! Inbound L4: one authorization per connection (an L7 intention counts as deny here; consul.md §7.3), then
//! the relay to the local app.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Plan;
use crate::identity::Peer;
use crate::listener::ListenerStats;
use crate::relay::relay;
use crate::stats::GaugeGuard;

pub async fn serve(mut tls: TlsStream<TcpStream>, peer: Peer, plan: &Plan, stats: &ListenerStats) {
    let d = plan.intentions.authorize_l4(&peer.id);
    if !d.allowed {
        stats.denied("intention", || format!("{} -> app: {}", peer.uri, d.reason));
        return;
    }
    let Some(mut app) = connect(
        &plan.app.address,
        plan.app.port,
        plan.connect_timeout,
        stats,
    )
    .await
    else {
        return;
    };
    stats.accepted.inc();
    let _active = GaugeGuard::new(&stats.active);
    relay(&mut tls, &mut app, stats).await;
}

/// A plain TCP connection to the local app (or an external service), counted as an upstream error when it fails.
pub async fn connect(
    address: &str,
    port: u16,
    timeout: Duration,
    stats: &ListenerStats,
) -> Option<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect((address, port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Ok(Err(e)) => {
            stats.upstream_error("connect_failed", || {
                format!("cannot connect to {address}:{port}: {e}")
            });
            None
        }
        Err(_) => {
            stats.upstream_error("connect_failed", || {
                format!("cannot connect to {address}:{port}: timed out")
            });
            None
        }
    }
}
