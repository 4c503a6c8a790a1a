//! Outbound L4: the app's connection is carried to one healthy endpoint of the listener's cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::dial::{dial_cluster, Timeouts};
use super::Plan;
use crate::listener::ListenerStats;
use crate::relay::relay;
use crate::state::Compiled;
use crate::stats::GaugeGuard;

pub async fn serve(
    mut stream: TcpStream,
    _peer: SocketAddr,
    snap: &Arc<Compiled>,
    plan: &Plan,
    stats: &ListenerStats,
) {
    let Some(tls) = snap.tls.as_ref().filter(|t| t.valid_now()) else {
        stats.upstream_error("not_ready", || {
            "no valid leaf certificate (never plaintext)".into()
        });
        return;
    };
    let Some(cluster) = snap.clusters.get(&plan.cluster) else {
        stats.upstream_error("no_healthy_endpoints", || {
            format!("no cluster {} in the snapshot", plan.cluster)
        });
        return;
    };
    let t = Timeouts {
        connect: plan.connect_timeout,
        handshake: plan.handshake_timeout,
    };
    let Some(mut up) = dial_cluster(cluster, tls, &t, stats).await else {
        return;
    };
    stats.accepted.inc();
    let _active = GaugeGuard::new(&stats.active);
    relay(&mut stream, &mut up, stats).await;
}
