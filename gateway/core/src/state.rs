//! What the data plane runs on: the compiled snapshot (swapped atomically by `apply`, read once per
//! connection), the stats registry and the bounded queues Python drains (log lines, access-log records).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::snapshot::{ListenerKind, Snapshot};
use crate::stats::{Counter, Stats};
use crate::tls::MeshTls;
use crate::{gateways, inbound, outbound};

/// One listener's compiled plan; the accept loop looks it up by name in the snapshot current at accept time.
pub enum Plan {
    Inbound(inbound::Plan),
    Upstream(outbound::Plan),
    MeshGateway(gateways::mesh::Plan),
    TerminatingGateway(gateways::terminating::Plan),
    Expose(Arc<inbound::expose::Plan>),
}

pub struct Compiled {
    pub version: u64,
    pub datacenter: String,
    pub trust_domain: String,
    /// None until a leaf exists, or when the material is unusable: every mTLS listener refuses (never plaintext).
    pub tls: Option<Arc<MeshTls>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// By bind address (unique per process; names may repeat).
    pub plans: HashMap<String, Arc<Plan>>,
}

impl Compiled {
    pub fn empty() -> Compiled {
        Compiled {
            version: 0,
            datacenter: String::new(),
            trust_domain: String::new(),
            tls: None,
            clusters: HashMap::new(),
            plans: HashMap::new(),
        }
    }

    /// Builds everything a snapshot needs once; problems that concern one part are logged and that part fails
    /// closed (a listener whose plan cannot be built refuses its connections), the rest serves.
    pub fn build(s: &Snapshot, shared: &Shared) -> Compiled {
        // The same material keeps the same configurations: rebuilding them per snapshot (an intention edit, an
        // endpoint's health) gave the server a new session-ticket key and the client an empty ticket store, so
        // every caller's next connection paid a full handshake.
        let previous = shared.current.load();
        let tls = match &s.tls {
            None => None,
            Some(m) if previous.tls.as_ref().is_some_and(|t| t.material == *m) => {
                previous.tls.clone()
            }
            Some(m) => match MeshTls::build(m) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    shared.log(
                        Level::Error,
                        format!("snapshot {}: {e}: refusing mTLS connections", s.version),
                    );
                    None
                }
            },
        };
        let clusters = s
            .clusters
            .iter()
            .map(|(name, spec)| (name.clone(), Arc::new(Cluster::build(name, spec))))
            .collect();
        let mut plans = HashMap::new();
        for l in &s.listeners {
            let plan = match &l.kind {
                ListenerKind::Inbound { .. } => inbound::Plan::build(l, shared).map(Plan::Inbound),
                ListenerKind::Upstream { .. } => {
                    outbound::Plan::build(l, shared).map(Plan::Upstream)
                }
                ListenerKind::MeshGateway { .. } => {
                    gateways::mesh::Plan::build(l, shared).map(Plan::MeshGateway)
                }
                ListenerKind::TerminatingGateway { .. } => {
                    gateways::terminating::Plan::build(l, tls.as_deref(), shared)
                        .map(Plan::TerminatingGateway)
                }
                ListenerKind::Expose { .. } => {
                    inbound::expose::Plan::build(l).map(|p| Plan::Expose(Arc::new(p)))
                }
            };
            match plan {
                Ok(p) => {
                    plans.insert(l.bind.clone(), Arc::new(p));
                }
                Err(e) => shared.log(
                    Level::Error,
                    format!(
                        "listener {}: {e}: refusing its connections until a usable snapshot",
                        l.name
                    ),
                ),
            }
        }
        Compiled {
            version: s.version,
            datacenter: s.datacenter.clone(),
            trust_domain: s.trust_domain.to_ascii_lowercase(),
            tls,
            clusters,
            plans,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// Bounded: when Python falls behind, the newest lines are dropped and counted, never buffered without end.
const LOG_QUEUE: usize = 4096;
const ACCESS_QUEUE: usize = 65_536;

pub struct Shared {
    pub stats: Stats,
    pub current: ArcSwap<Compiled>,
    logs: Mutex<VecDeque<(Level, String)>>,
    logs_dropped: Counter,
    access: Mutex<VecDeque<String>>,
    access_dropped: Counter,
    /// Outbound HTTP state that outlives snapshots (pools, breakers, ejections), per listener by name.
    pub outbound_http: outbound::http::Registries,
    /// Open downstream connections of every listener, for drain.
    pub open: AtomicUsize,
    pub closed: Notify,
    /// True once drain has begun: HTTP connections finish their exchange in flight and close, idle ones at
    /// once (what gateway/http/proxy.py `ServerConnection.drain` did).
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Readable when log lines or access-log records are waiting: Python's loop watches the other end
    /// (`Core.wakeup_fd`) instead of polling.
    wake_tx: Option<UnixStream>,
    pub wake_rx: Option<UnixStream>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        let stats = Stats::default();
        let logs_dropped = stats.counter("meshgw_core_log_lines_dropped", &[]);
        let access_dropped = stats.counter("meshgw_access_log_records_dropped", &[]);
        // Non-blocking: a full socket buffer already means "wake up", so a failed write is fine.
        let (wake_tx, wake_rx) = match UnixStream::pair() {
            Ok((a, b)) if a.set_nonblocking(true).is_ok() && b.set_nonblocking(true).is_ok() => {
                (Some(a), Some(b))
            }
            _ => (None, None),
        };
        Arc::new(Shared {
            wake_tx,
            wake_rx,
            stats,
            current: ArcSwap::from_pointee(Compiled::empty()),
            logs: Mutex::new(VecDeque::new()),
            logs_dropped,
            access: Mutex::new(VecDeque::new()),
            access_dropped,
            outbound_http: outbound::http::Registries::default(),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            draining: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn log(&self, level: Level, line: String) {
        let mut q = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= LOG_QUEUE {
            self.logs_dropped.inc();
            return;
        }
        q.push_back((level, line));
        if q.len() == 1 {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(tx) = &self.wake_tx {
            let _ = (&*tx).write(&[1]);
        }
    }

    pub fn take_logs(&self) -> Vec<(Level, String)> {
        let mut q = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }

    pub fn access_record(&self, line: String) {
        let mut q = self.access.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= ACCESS_QUEUE {
            self.access_dropped.inc();
            return;
        }
        q.push_back(line);
        if q.len() == 1 {
            self.wake();
        }
    }

    pub fn take_access(&self) -> Vec<String> {
        let mut q = self.access.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// Held by every open downstream connection: drain waits for the count to reach zero.
pub struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    pub fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(shared.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
