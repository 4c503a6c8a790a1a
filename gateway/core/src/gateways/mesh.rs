//! `mode: mesh-gateway`: reads the ClientHello as bytes, routes by its SNI (consul.md §6) to an instance in this
//! datacenter or to another datacenter's gateways, and relays every byte it read unchanged: the mTLS session
//! stays between the two sidecars.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshgw_proto::sni::{peek_client_hello, Peek, MAX_HELLO};
use meshgw_proto::spiffe::parse_mesh_sni;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{attempts, usable};
use crate::listener::ListenerStats;
use crate::relay::relay;
use crate::snapshot::{EndpointSpec, ListenerKind, ListenerSpec};
use crate::state::{Compiled, Shared};
use crate::stats::{Counter, GaugeGuard};

pub struct Plan {
    local: HashMap<String, Vec<EndpointSpec>>,
    remote: HashMap<String, Vec<EndpointSpec>>,
    hello_timeout: Duration,
    connect_timeout: Duration,
    next: AtomicUsize,
    routed_local: Counter,
    routed_remote: Counter,
}

fn healthy(
    m: &std::collections::BTreeMap<String, Vec<EndpointSpec>>,
) -> HashMap<String, Vec<EndpointSpec>> {
    m.iter()
        .map(|(k, v)| (k.clone(), v.iter().filter(|e| usable(e)).cloned().collect()))
        .collect()
}

impl Plan {
    pub fn build(l: &ListenerSpec, shared: &Shared) -> Result<Plan, String> {
        let ListenerKind::MeshGateway { local, remote } = &l.kind else {
            return Err("not a mesh gateway listener".into());
        };
        let routed = |kind: &str| {
            shared.stats.counter(
                "meshgw_gateway_connections_routed_total",
                &[("listener", &l.name), ("route", kind)],
            )
        };
        Ok(Plan {
            local: healthy(local),
            remote: healthy(remote),
            hello_timeout: Duration::from_millis(l.limits.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(l.limits.connect_timeout_ms),
            next: AtomicUsize::new(0),
            routed_local: routed("local"),
            routed_remote: routed("remote"),
        })
    }
}

/// Reads until a whole ClientHello is in `buf`; the refusal reason otherwise.
async fn read_hello(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, (&'static str, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        match peek_client_hello(buf) {
            Ok(Peek::Hello(h)) => return Ok(h.sni),
            Ok(Peek::NeedMore) => {}
            Err(e) => return Err(("not_tls", e.to_string())),
        }
        if buf.len() >= MAX_HELLO {
            return Err((
                "not_tls",
                format!("no complete ClientHello in {} bytes", buf.len()),
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ("not_tls", format!("read failed: {e}")))?;
        if n == 0 {
            return Err(("not_tls", "closed before a whole ClientHello".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    snap: &Arc<Compiled>,
    plan: &Plan,
    stats: &ListenerStats,
) {
    let mut hello = Vec::with_capacity(1024);
    let sni = match tokio::time::timeout(plan.hello_timeout, read_hello(&mut stream, &mut hello))
        .await
    {
        Err(_) => {
            return stats.denied("handshake_timeout", || {
                format!("{peer}: no complete ClientHello in time")
            })
        }
        Ok(Err((reason, detail))) => return stats.denied(reason, || format!("{peer}: {detail}")),
        Ok(Ok(None)) => {
            return stats.denied("no_sni", || {
                format!("{peer}: ClientHello without a server name")
            })
        }
        Ok(Ok(Some(sni))) => sni,
    };
    if snap.trust_domain.is_empty() {
        // Without the CA roots the trust domain is unknown, and with it which names are ours.
        return stats.denied("not_ready", || format!("no trust domain yet for {sni}"));
    }
    let Some(target) = parse_mesh_sni(&sni, &snap.trust_domain) else {
        return stats.denied("unknown_sni", || {
            format!(
                "{sni} is not a mesh name of trust domain {}",
                snap.trust_domain
            )
        });
    };
    let (eps, local) = if target.datacenter == snap.datacenter {
        if target.service.is_empty() {
            return stats.denied("unknown_sni", || {
                format!("{sni} names this datacenter, not a service in it")
            });
        }
        let key = if target.subset.is_empty() {
            target.service.clone()
        } else {
            format!("{}.{}", target.subset, target.service)
        };
        (plan.local.get(&key), true)
    } else {
        (plan.remote.get(&target.datacenter), false)
    };
    let eps = eps.map(Vec::as_slice).unwrap_or(&[]);
    if eps.is_empty() {
        let what = if local { "instance" } else { "gateway" };
        return stats.upstream_error("no_healthy_endpoints", || {
            format!("no healthy {what} for {sni} in {}", target.datacenter)
        });
    }
    let start = plan.next.fetch_add(1, Ordering::Relaxed);
    let mut up = None;
    for ep in attempts(eps, start) {
        match crate::inbound::tcp::connect(&ep.address, ep.port, plan.connect_timeout, stats).await
        {
            Some(s) => {
                up = Some(s);
                break;
            }
            None => continue,
        }
    }
    let Some(mut up) = up else { return };
    // The ClientHello goes first, byte for byte.
    if up.write_all(&hello).await.is_err() {
        return;
    }
    stats.accepted.inc();
    if local {
        plan.routed_local.inc();
    } else {
        plan.routed_remote.inc();
    }
    stats.bytes_received.add(hello.len() as u64);
    let _active = GaugeGuard::new(&stats.active);
    relay(&mut stream, &mut up, stats).await;
}
