//! Dialling a mesh endpoint: TCP, then mTLS with the cluster's SNI, then the server's SPIFFE ID compared with
//! the one expected (consul.md §5). Up to three endpoints are tried, round robin from the cluster's cursor.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cluster::{attempts, Cluster};
use crate::listener::ListenerStats;
use crate::snapshot::EndpointSpec;
use crate::tls::MeshTls;

pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
}

/// One endpoint; the error is the `reason` label of `meshgw_upstream_connect_errors_total` and a detail.
pub async fn dial_one(
    ep: &EndpointSpec,
    cluster: &Cluster,
    tls: &MeshTls,
    t: &Timeouts,
) -> Result<TlsStream<TcpStream>, (&'static str, String)> {
    dial_one_with(ep, cluster, &tls.client, t).await
}

/// [`dial_one`] with the client configuration given (`MeshTls::client_h2` offers ALPN `h2`).
pub async fn dial_one_with(
    ep: &EndpointSpec,
    cluster: &Cluster,
    client: &std::sync::Arc<rustls::ClientConfig>,
    t: &Timeouts,
) -> Result<TlsStream<TcpStream>, (&'static str, String)> {
    let where_ = format!("{}:{}", ep.address, ep.port);
    let tcp = match tokio::time::timeout(
        t.connect,
        TcpStream::connect((ep.address.as_str(), ep.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(("connect_failed", format!("cannot connect to {where_}: {e}"))),
        Err(_) => {
            return Err((
                "connect_failed",
                format!("cannot connect to {where_}: timed out"),
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(cluster.sni.clone())
        .map_err(|_| ("tls_failed", format!("{} is not a usable SNI", cluster.sni)))?;
    let conn = TlsConnector::from(client.clone());
    let s = match tokio::time::timeout(t.handshake, conn.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(("tls_failed", format!("TLS with {where_} failed: {e}"))),
        Err(_) => return Err(("tls_failed", format!("TLS with {where_} timed out"))),
    };
    if crate::tls::resumed_with_expired_peer(s.get_ref().1) {
        return Err((
            "tls_failed",
            format!("{where_}: resumed a session whose server certificate has expired"),
        ));
    }
    let uri = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::uri_san(c.as_ref()));
    if uri.as_deref() != Some(cluster.expected_uri.as_str()) {
        return Err((
            "identity_mismatch",
            format!(
                "{where_} presented {}, expected {}",
                uri.as_deref().unwrap_or("no SPIFFE ID"),
                cluster.expected_uri
            ),
        ));
    }
    Ok(s)
}

/// Tries up to three endpoints; every failure is counted. None when none answered (or none is healthy).
pub async fn dial_cluster(
    cluster: &Cluster,
    tls: &MeshTls,
    t: &Timeouts,
    stats: &ListenerStats,
) -> Option<TlsStream<TcpStream>> {
    if cluster.endpoints.is_empty() {
        stats.upstream_error("no_healthy_endpoints", || {
            format!("no healthy instance of {}", cluster.name)
        });
        return None;
    }
    for ep in attempts(&cluster.endpoints, cluster.start()) {
        match dial_one(ep, cluster, tls, t).await {
            Ok(s) => {
                stats.handshake(s.get_ref().1);
                return Some(s);
            }
            Err((reason, detail)) => stats.upstream_error(reason, || detail),
        }
    }
    None
}
