//! `mode: terminating-gateway`: mTLS from mesh callers (each linked service's own leaf, picked by the SNI they
//! send), identity and intentions per linked service, then plaintext or TLS origination to the service's
//! instances outside the mesh (consul.md §6). A service whose TLS files are unusable is refused, never served
//! in plaintext instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cluster::{attempts, usable};
use crate::inbound::accept_mtls;
use crate::inbound::tcp::connect;
use crate::listener::ListenerStats;
use crate::policy::Intentions;
use crate::relay::relay;
use crate::snapshot::{EndpointSpec, ListenerKind, ListenerSpec, Origination};
use crate::state::{Compiled, Level, Plan as State, Shared};
use crate::stats::GaugeGuard;
use crate::tls::{certified_key, origination_config, sni_server_config, MeshTls};

struct Linked {
    service: String,
    intentions: Intentions,
    endpoints: Vec<EndpointSpec>,
    origination: Option<Arc<rustls::ClientConfig>>,
    /// What `origination` was made from: the next snapshot keeps the same configuration (and so its session
    /// cache: TLS resumption to the external service) while these stay the same.
    origination_spec: Option<Origination>,
    origination_sni: Option<String>,
    tls_required: bool,
    next: AtomicUsize,
}

pub struct Plan {
    server: Option<Arc<rustls::ServerConfig>>,
    by_sni: HashMap<String, Linked>,
    handshake_timeout: Duration,
    connect_timeout: Duration,
}

impl Plan {
    pub fn build(l: &ListenerSpec, tls: Option<&MeshTls>, shared: &Shared) -> Result<Plan, String> {
        let ListenerKind::TerminatingGateway { services } = &l.kind else {
            return Err("not a terminating gateway listener".into());
        };
        let mut leaves = Vec::new();
        let mut by_sni = HashMap::new();
        let current = shared.current.load();
        let previous = match current.plans.get(&l.bind).map(|p| &**p) {
            Some(State::TerminatingGateway(p)) => Some(p),
            _ => None,
        };
        for s in services {
            if let (Some(c), Some(k)) = (&s.cert_pem, &s.key_pem) {
                match certified_key(c, k, &format!("services: {}: leaf", s.service)) {
                    Ok(ck) => leaves.push((s.sni.to_ascii_lowercase(), ck)),
                    Err(e) => shared.log(Level::Error, e),
                }
            }
            let kept = previous
                .and_then(|p| p.by_sni.get(&s.sni.to_ascii_lowercase()))
                .filter(|k| k.origination_spec.is_some() && k.origination_spec == s.origination)
                .and_then(|k| k.origination.clone());
            let origination = match &s.origination {
                None => None,
                Some(_) if kept.is_some() => kept,
                Some(o) => match origination_config(o) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        shared.log(
                            Level::Error,
                            format!("services: {}: TLS files unusable: {e}", s.service),
                        );
                        None
                    }
                },
            };
            by_sni.insert(
                s.sni.to_ascii_lowercase(),
                Linked {
                    service: s.service.clone(),
                    intentions: Intentions::build(&s.intentions),
                    endpoints: s.endpoints.iter().filter(|e| usable(e)).cloned().collect(),
                    origination_sni: s.origination.as_ref().and_then(|o| o.sni.clone()),
                    tls_required: s.tls_required || s.origination.is_some(),
                    origination,
                    origination_spec: s.origination.clone(),
                    next: AtomicUsize::new(0),
                },
            );
        }
        let server = match (tls, leaves.is_empty()) {
            (Some(t), false) => Some(sni_server_config(
                t.roots.clone(),
                &leaves,
                t.tickets.as_ref(),
            )?),
            _ => None,
        };
        Ok(Plan {
            server,
            by_sni,
            handshake_timeout: Duration::from_millis(l.limits.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(l.limits.connect_timeout_ms),
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
    let server = if snap.tls.as_ref().is_some_and(|t| t.valid_now()) {
        plan.server.clone()
    } else {
        None
    };
    let Some((mut tls, peer)) = accept_mtls(
        stream,
        peer_addr,
        snap,
        &server,
        plan.handshake_timeout,
        stats,
    )
    .await
    else {
        return;
    };
    // An SNI naming no linked service already failed the handshake (no certificate for it).
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let Some(view) = plan.by_sni.get(&sni) else {
        return stats.denied("tls_error", || {
            format!("{peer_addr}: no linked service for {sni}")
        });
    };
    let d = view.intentions.authorize_l4(&peer.id);
    if !d.allowed {
        return stats.denied("intention", || {
            format!("{} -> {}: {}", peer.uri, view.service, d.reason)
        });
    }
    if view.tls_required && view.origination.is_none() {
        return stats.upstream_error("tls_failed", || {
            format!(
                "{}: its TLS files are unusable: refusing (never plaintext)",
                view.service
            )
        });
    }
    if view.endpoints.is_empty() {
        return stats.upstream_error("no_healthy_endpoints", || {
            format!("no healthy instance of {}", view.service)
        });
    }
    let start = view.next.fetch_add(1, Ordering::Relaxed);
    for ep in attempts(&view.endpoints, start) {
        let Some(tcp) = connect(&ep.address, ep.port, plan.connect_timeout, stats).await else {
            continue;
        };
        match &view.origination {
            None => {
                let mut tcp = tcp;
                stats.accepted.inc();
                let _active = GaugeGuard::new(&stats.active);
                return relay(&mut tls, &mut tcp, stats).await;
            }
            Some(cfg) => {
                let name = view
                    .origination_sni
                    .clone()
                    .unwrap_or_else(|| ep.address.clone());
                let Ok(name) = ServerName::try_from(name.clone()) else {
                    stats.upstream_error("tls_failed", || {
                        format!("{name} is not a usable TLS server name")
                    });
                    continue;
                };
                match tokio::time::timeout(
                    plan.handshake_timeout,
                    TlsConnector::from(cfg.clone()).connect(name, tcp),
                )
                .await
                {
                    Ok(Ok(mut up)) => {
                        stats.accepted.inc();
                        let _active = GaugeGuard::new(&stats.active);
                        return relay(&mut tls, &mut up, stats).await;
                    }
                    Ok(Err(e)) => stats.upstream_error("tls_failed", || {
                        format!("TLS with {}:{} failed: {e}", ep.address, ep.port)
                    }),
                    Err(_) => stats.upstream_error("tls_failed", || {
                        format!("TLS with {}:{} timed out", ep.address, ep.port)
                    }),
                }
            }
        }
    }
}
