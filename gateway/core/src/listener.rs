//! Listener sockets and their accept loops. Binding happens in `apply` (so a bad bind is an error Python turns
//! into one line naming the config key); accepting runs on the core's runtime. A connection looks up its
//! listener's plan in the snapshot current at accept time and keeps it for its life (design.md).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::snapshot::{ListenerKind, ListenerSpec};
use crate::state::{Level, OpenGuard, Plan, Shared};
use crate::stats::{Counter, Gauge};
use crate::{gateways, inbound, outbound};

/// What identifies a running listener across snapshots: a change of any of these needs a new socket.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Identity {
    pub name: String,
    pub bind: String,
    pub kind: &'static str,
}

impl Identity {
    pub fn of(spec: &ListenerSpec) -> Identity {
        let kind = match spec.kind {
            ListenerKind::Inbound { .. } => "inbound",
            ListenerKind::Upstream { .. } => "upstream",
            ListenerKind::MeshGateway { .. } => "mesh_gateway",
            ListenerKind::TerminatingGateway { .. } => "terminating_gateway",
            ListenerKind::Expose { .. } => "expose",
        };
        Identity {
            name: spec.name.clone(),
            bind: spec.bind.clone(),
            kind,
        }
    }
}

/// Per-listener counters, looked up once when the listener starts. Cloned per connection and per exchange: one
/// reference count.
#[derive(Clone)]
pub struct ListenerStats(Arc<ListenerCounters>);

pub struct ListenerCounters {
    pub name: Arc<str>,
    pub accepted: Counter,
    pub active: Gauge,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// mTLS handshakes this listener finished, full or resumed (a ticket: no certificate work), as Envoy's
    /// `ssl.handshake` / `ssl.session_reused`.
    handshakes_full: Counter,
    handshakes_resumed: Counter,
    shared: Arc<Shared>,
}

/// Every refusal reason (README's table; gateway/metrics.py DENY_REASONS), shown from the start at 0.
pub const DENY_REASONS: [&str; 13] = [
    "intention",
    "no_client_cert",
    "untrusted_cert",
    "cert_expired",
    "handshake_timeout",
    "tls_error",
    "foreign_trust_domain",
    "no_spiffe_id",
    "not_ready",
    "not_tls",
    "no_sni",
    "unknown_sni",
    "max_connections",
];

pub const UPSTREAM_ERRORS: [&str; 5] = [
    "no_healthy_endpoints",
    "connect_failed",
    "tls_failed",
    "identity_mismatch",
    "not_ready",
];

impl std::ops::Deref for ListenerStats {
    type Target = ListenerCounters;
    fn deref(&self) -> &ListenerCounters {
        &self.0
    }
}

impl ListenerStats {
    pub fn new(shared: &Arc<Shared>, name: &str) -> ListenerStats {
        let l = [("listener", name)];
        for reason in DENY_REASONS {
            shared.stats.counter(
                "meshgw_connections_denied_total",
                &[("listener", name), ("reason", reason)],
            );
        }
        for reason in UPSTREAM_ERRORS {
            shared.stats.counter(
                "meshgw_upstream_connect_errors_total",
                &[("listener", name), ("reason", reason)],
            );
        }
        ListenerStats(Arc::new(ListenerCounters {
            name: Arc::from(name),
            accepted: shared
                .stats
                .counter("meshgw_connections_accepted_total", &l),
            active: shared.stats.gauge("meshgw_connections_active", &l),
            bytes_received: shared.stats.counter("meshgw_bytes_received_total", &l),
            bytes_sent: shared.stats.counter("meshgw_bytes_sent_total", &l),
            handshakes_full: shared.stats.counter(
                "meshgw_tls_handshakes_total",
                &[("listener", name), ("kind", "full")],
            ),
            handshakes_resumed: shared.stats.counter(
                "meshgw_tls_handshakes_total",
                &[("listener", name), ("kind", "resumed")],
            ),
            shared: shared.clone(),
        }))
    }

    /// A refused downstream connection: counted by reason and logged once (reason labels: README's list).
    pub fn denied(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        self.shared
            .stats
            .counter(
                "meshgw_connections_denied_total",
                &[("listener", &self.name), ("reason", reason)],
            )
            .inc();
        self.shared.log(
            Level::Info,
            format!("{}: refused ({reason}): {}", self.name, detail()),
        );
    }

    pub fn upstream_error(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        self.shared
            .stats
            .counter(
                "meshgw_upstream_connect_errors_total",
                &[("listener", &self.name), ("reason", reason)],
            )
            .inc();
        self.shared.log(
            Level::Warning,
            format!("{}: {reason}: {}", self.name, detail()),
        );
    }

    pub fn handshake(&self, conn: &rustls::CommonState) {
        match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => self.handshakes_resumed.inc(),
            _ => self.handshakes_full.inc(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

pub struct Running {
    pub port: u16,
    stop: watch::Sender<bool>,
    /// Told when the accept loop has let go of the socket (the port is free again).
    closed: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// How long `stop_and_wait` waits for the runtime to close a listening socket (it takes one turn of the loop).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

impl Running {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and returns once the socket is closed, so the same address can be bound again at once (a reload
    /// that moves a listener to a new identity on the same bind). Called off the runtime's thread (`apply`).
    pub fn stop_and_wait(&self) {
        self.stop();
        if let Ok(rx) = self.closed.lock() {
            let _ = rx.recv_timeout(CLOSE_WAIT);
        }
    }
}

fn resolve(bind: &str) -> Result<SocketAddr, String> {
    bind.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {bind}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {bind}"))
}

/// Binds now (errors come back to `apply`), accepts on the runtime.
pub fn start(
    handle: &Handle,
    shared: &Arc<Shared>,
    spec: &ListenerSpec,
) -> Result<Running, String> {
    let addr = resolve(&spec.bind)?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| format!("cannot listen on {}: {e}", spec.bind))?;
    // As every server does, so a restart does not wait out TIME_WAIT.
    let _ = sock.set_reuse_address(true);
    sock.set_nonblocking(true)
        .and_then(|_| sock.bind(&addr.into()))
        .and_then(|_| sock.listen(1024))
        .map_err(|e| format!("cannot listen on {}: {}", spec.bind, os_message(&e)))?;
    let std_listener: std::net::TcpListener = sock.into();
    let port = std_listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let _guard = handle.enter();
    let listener = TcpListener::from_std(std_listener)
        .map_err(|e| format!("cannot listen on {}: {e}", spec.bind))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = std::sync::mpsc::sync_channel(1);
    let stats = ListenerStats::new(shared, &spec.name);
    let limit = Arc::new(Semaphore::new(spec.limits.max_connections.max(1)));
    let accepting = accept_loop(
        listener,
        shared.clone(),
        spec.bind.clone(),
        stats,
        limit,
        stop_rx,
    );
    handle.spawn(async move {
        accepting.await; // returns having dropped the socket
        let _ = closed_tx.try_send(());
    });
    Ok(Running {
        port,
        stop: stop_tx,
        closed: std::sync::Mutex::new(closed_rx),
    })
}

/// The system's message without Rust's "(os error N)" suffix, as the Python side printed it.
fn os_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    // Plans are keyed by bind address: two listeners may share a name (an upstream's twins), never a socket.
    bind: String,
    stats: ListenerStats,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays.
                shared.log(
                    Level::Warning,
                    format!("{}: accept failed: {e}", stats.name),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats.denied("max_connections", || {
                format!("{peer}: the listener's max_connections is reached")
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let snap = shared.current.load_full();
        let Some(plan) = snap.plans.get(&bind).cloned() else {
            stats.denied("not_ready", || {
                format!("{peer}: no usable plan for this listener")
            });
            continue;
        };
        let open = OpenGuard::new(&shared);
        let stats = stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            serve(stream, peer, snap, plan, stats).await;
        });
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    snap: Arc<crate::state::Compiled>,
    plan: Arc<Plan>,
    stats: ListenerStats,
) {
    match &*plan {
        Plan::Inbound(p) => inbound::serve(stream, peer, &snap, p, &stats).await,
        Plan::Upstream(p) => outbound::serve(stream, peer, &snap, p, &stats).await,
        Plan::MeshGateway(p) => gateways::mesh::serve(stream, peer, &snap, p, &stats).await,
        Plan::TerminatingGateway(p) => {
            gateways::terminating::serve(stream, peer, &snap, p, &stats).await
        }
        Plan::Expose(p) => inbound::expose::serve(stream, peer, p.clone(), stats).await,
    }
}

/// Listeners to keep, start and stop for a new snapshot, keyed by identity.
pub fn sync(
    handle: &Handle,
    shared: &Arc<Shared>,
    running: &mut HashMap<Identity, Running>,
    specs: &[ListenerSpec],
) -> Result<(), String> {
    let wanted: Vec<Identity> = specs.iter().map(Identity::of).collect();
    // A listener leaving whose address a new one takes is closed first (and waited for): the new one binds it.
    let rebinds: Vec<Identity> = running
        .keys()
        .filter(|id| !wanted.contains(id))
        .filter(|id| {
            wanted
                .iter()
                .any(|w| w.bind == id.bind && !running.contains_key(w))
        })
        .cloned()
        .collect();
    for id in rebinds {
        if let Some(r) = running.remove(&id) {
            r.stop_and_wait();
        }
    }
    // Start the new ones next: if one cannot bind, nothing else that was serving has been stopped.
    let mut started = Vec::new();
    for (id, spec) in wanted.iter().zip(specs) {
        if running.contains_key(id) {
            continue;
        }
        match start(handle, shared, spec) {
            Ok(r) => started.push((id.clone(), r)),
            Err(e) => {
                for (_, r) in &started {
                    r.stop();
                }
                return Err(format!("listener {}: {e}", spec.name));
            }
        }
    }
    running.retain(|id, r| {
        let keep = wanted.contains(id);
        if !keep {
            // Waited for: the next apply may bind this address again (a reload removes, then adds).
            r.stop_and_wait();
        }
        keep
    });
    running.extend(started);
    Ok(())
}
