//! What outlives requests and snapshots (gateway/http/outbound.py ClusterRuntime): per listener a `Registry`
//! kept in `Shared` by listener name, in it one `ClusterRuntime` per cluster name holding the connection pool,
//! the breaker counts, the endpoints' `HostState`s (requests in flight, outlier state, latency), the
//! round-robin position, the balancer tables (rebuilt only when endpoints or policy change) and the
//! cluster's metric handles. A new snapshot finds them by name, so it neither resets ejections nor
//! empties pools.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::balancer::{now_ns, HostState, Tables};
use super::pool::Pool;
use super::rng;
use super::spec::{LbSpec, OutlierSpec};
use crate::state::{Level, Shared};
use crate::stats::{Counter, Gauge, Histogram};

pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
pub const BREAKERS: [&str; 3] = [
    "max_connections",
    "max_pending_requests",
    "max_concurrent_requests",
];
pub const RETRY_REASONS: [&str; 4] = ["connect_failure", "reset", "status", "grpc_status"];
pub const EJECTION_REASONS: [&str; 2] = ["consecutive_5xx", "consecutive_gateway_failure"];

pub fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Every listener's registry, in `Shared` (state.rs), keyed by listener name.
#[derive(Default)]
pub struct Registries(Mutex<HashMap<String, Arc<Registry>>>);

impl Registries {
    pub fn get(&self, listener: &str) -> Arc<Registry> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(listener.to_string())
            .or_insert_with(|| {
                Arc::new(Registry {
                    listener: listener.to_string(),
                    clusters: Mutex::new(HashMap::new()),
                    sweeping: AtomicBool::new(false),
                })
            })
            .clone()
    }
}

pub struct Registry {
    pub listener: String,
    clusters: Mutex<HashMap<String, Arc<ClusterRuntime>>>,
    sweeping: AtomicBool,
}

impl Registry {
    pub fn cluster(&self, name: &str, shared: &Shared) -> Arc<ClusterRuntime> {
        let mut m = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string())
            .or_insert_with(|| Arc::new(ClusterRuntime::new(&self.listener, name, shared)))
            .clone()
    }

    /// After a build: forget clusters the new plan does not name (requests still on them hold their own Arc).
    pub fn retain(&self, names: &[&str]) {
        let mut m = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, rt| {
            let keep = names.contains(&k.as_str());
            if !keep {
                rt.pool.close_all();
            }
            keep
        });
    }

    fn all(&self) -> Vec<Arc<ClusterRuntime>> {
        let m = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        m.values().cloned().collect()
    }

    /// Starts the periodic sweep once, on the data plane's runtime (the first request's task): it returns
    /// ejected endpoints whose time is up, decays ejection multipliers and closes idle pooled connections.
    pub fn ensure_sweeper(self: &Arc<Self>, shared: &Arc<Shared>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Registry> = Arc::downgrade(self);
        let shared = Arc::downgrade(shared);
        tokio::spawn(async move {
            loop {
                let period = match weak.upgrade() {
                    None => return,
                    Some(r) => r.sweep_period(),
                };
                tokio::time::sleep(period).await;
                let (Some(r), Some(s)) = (weak.upgrade(), shared.upgrade()) else {
                    return;
                };
                for c in r.all() {
                    c.sweep(&s);
                }
            }
        });
    }

    fn sweep_period(&self) -> Duration {
        let mut ms = 1_000u64;
        for c in self.all() {
            let s = c.settings();
            ms = ms
                .min(s.outlier.interval_ms.max(50))
                .min((s.idle_timeout_ms / 4).max(50));
        }
        Duration::from_millis(ms)
    }
}

/// Settings of the latest snapshot that the sweeper needs.
#[derive(Clone, Copy)]
pub struct Settings {
    pub outlier: OutlierSpec,
    pub idle_timeout_ms: u64,
}

pub struct ClusterMetrics {
    pub class: [Counter; 5],
    pub latency: Histogram,
    pub retries: [Counter; 4],
    pub retry_overflow: Counter,
    pub trips: [Counter; 3],
    pub pending: Gauge,
    pub ejections: [Counter; 2],
    pub ejected: Gauge,
}

/// The tables with what they were built from: (endpoints with weights, policy).
type TablesCache = (Vec<((String, u16), u32)>, LbSpec, Arc<Tables>);

pub struct ClusterRuntime {
    pub listener: String,
    pub name: String,
    pub pool: Arc<Pool>,
    pub rr: AtomicUsize,
    /// Requests in flight (max_concurrent_requests, the retry budget's base).
    pub active: AtomicUsize,
    /// Requests waiting for a connection: being dialled for, or queued at max_connections.
    pub pending: AtomicUsize,
    pub retrying: AtomicUsize,
    pub ejected: AtomicUsize,
    hosts: Mutex<HashMap<(String, u16), Arc<HostState>>>,
    current: Mutex<Vec<Arc<HostState>>>,
    tables: Mutex<Option<TablesCache>>,
    settings: Mutex<Settings>,
    pub m: ClusterMetrics,
}

impl ClusterRuntime {
    fn new(listener: &str, name: &str, shared: &Shared) -> ClusterRuntime {
        let st = &shared.stats;
        let lc = [("listener", listener), ("cluster", name)];
        let with =
            |k: &'static str, v: &'static str| [("listener", listener), ("cluster", name), (k, v)];
        ClusterRuntime {
            listener: listener.to_string(),
            name: name.to_string(),
            pool: Arc::new(Pool::default()),
            rr: AtomicUsize::new(rng::below(1 << 16)),
            active: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            hosts: Mutex::new(HashMap::new()),
            current: Mutex::new(Vec::new()),
            tables: Mutex::new(None),
            settings: Mutex::new(Settings {
                outlier: OutlierSpec::default(),
                idle_timeout_ms: 3_600_000,
            }),
            m: ClusterMetrics {
                class: CODE_CLASSES.map(|c| {
                    st.counter(
                        "meshgw_http_upstream_responses_total",
                        &with("code_class", c),
                    )
                }),
                latency: st.histogram("meshgw_http_upstream_request_duration_seconds", &lc),
                retries: RETRY_REASONS
                    .map(|r| st.counter("meshgw_http_retries_total", &with("reason", r))),
                retry_overflow: st.counter("meshgw_http_retry_budget_exhausted_total", &lc),
                trips: BREAKERS.map(|b| {
                    st.counter(
                        "meshgw_http_circuit_breaker_trips_total",
                        &with("breaker", b),
                    )
                }),
                pending: st.gauge("meshgw_http_pending_requests", &lc),
                ejections: EJECTION_REASONS
                    .map(|r| st.counter("meshgw_outlier_ejections_total", &with("reason", r))),
                ejected: st.gauge("meshgw_outlier_ejected_endpoints", &lc),
            },
        }
    }

    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new snapshot's endpoints: their states (kept for endpoints that stay) and the balancer tables (kept
    /// while endpoints, weights and policy are unchanged).
    pub fn sync(
        &self,
        keys: &[(String, u16)],
        weights: &[u32],
        lb: &LbSpec,
        settings: Settings,
    ) -> Result<(Vec<Arc<HostState>>, Arc<Tables>), String> {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        self.pool
            .set_idle_limit(Duration::from_millis(settings.idle_timeout_ms.max(1)));
        let sig: Vec<((String, u16), u32)> =
            keys.iter().cloned().zip(weights.iter().copied()).collect();
        let tables = {
            let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            match &*t {
                Some((s, l, tb)) if *s == sig && l == lb => tb.clone(),
                _ => {
                    let tb = Arc::new(Tables::build(keys, weights, lb)?);
                    *t = Some((sig, lb.clone(), tb.clone()));
                    tb
                }
            }
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = HashMap::new();
        let mut list = Vec::with_capacity(keys.len());
        for k in keys {
            let h = hosts.get(k).cloned().unwrap_or_default();
            fresh.insert(k.clone(), h.clone());
            list.push(h);
        }
        *hosts = fresh;
        let now = now_ns();
        let ejected = list.iter().filter(|h| h.ejected(now)).count();
        self.ejected.store(ejected, Ordering::Relaxed);
        self.m.ejected.set(ejected as i64);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = list.clone();
        Ok((list, tables))
    }

    /// An attempt's outcome for outlier detection (outbound.py host_result): connect failures and resets count
    /// as 503 (Envoy's default of not splitting local-origin errors).
    pub fn host_result(
        &self,
        host: &HostState,
        status: u16,
        outlier: &OutlierSpec,
        shared: &Shared,
    ) {
        if status < 500 {
            host.consecutive_5xx.store(0, Ordering::Relaxed);
            host.consecutive_gateway.store(0, Ordering::Relaxed);
            return;
        }
        let c5 = host.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if matches!(status, 502..=504) {
            host.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            host.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        if host.ejected_until.load(Ordering::Relaxed) != 0 {
            return;
        }
        if outlier.max_failures > 0 && c5 >= outlier.max_failures {
            self.maybe_eject(host, 0, outlier.enforcing_consecutive_5xx, outlier, shared);
        } else if outlier.consecutive_gateway_failure > 0
            && cg >= outlier.consecutive_gateway_failure
        {
            self.maybe_eject(
                host,
                1,
                outlier.enforcing_consecutive_gateway_failure,
                outlier,
                shared,
            );
        }
    }

    fn maybe_eject(
        &self,
        host: &HostState,
        reason: usize,
        enforcing: u32,
        od: &OutlierSpec,
        shared: &Shared,
    ) {
        host.consecutive_5xx.store(0, Ordering::Relaxed);
        host.consecutive_gateway.store(0, Ordering::Relaxed);
        if enforcing == 0 || (enforcing < 100 && rng::f64() * 100.0 >= f64::from(enforcing)) {
            return;
        }
        let n = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            .max(1);
        let ejected = self.ejected.load(Ordering::Relaxed);
        // Envoy: an ejection is allowed while the share ejected before it is below the maximum, so one
        // endpoint can always go.
        if ejected * 100 >= od.max_ejection_percent as usize * n {
            return;
        }
        let times = u64::from(host.ejections.load(Ordering::Relaxed)) + 1;
        let ms = (od.base_ejection_time_ms.saturating_mul(times))
            .min(od.base_ejection_time_ms.max(od.max_ejection_time_ms));
        let now = now_ns();
        host.ejections.fetch_add(1, Ordering::Relaxed);
        host.ejected_until
            .store(now + ms.saturating_mul(1_000_000), Ordering::Relaxed);
        host.last_ejected.store(now, Ordering::Relaxed);
        let e = self.ejected.fetch_add(1, Ordering::Relaxed) + 1;
        self.m.ejections[reason].inc();
        self.m.ejected.set(e as i64);
        shared.log(
            Level::Warning,
            format!(
                "{}: {}: endpoint ejected for {:.1}s ({})",
                self.listener,
                self.name,
                ms as f64 / 1000.0,
                EJECTION_REASONS[reason]
            ),
        );
    }

    /// Periodic: endpoints whose ejection is over come back; every interval in service takes one step off the
    /// multiplier; idle pooled connections past the idle timeout close.
    pub fn sweep(&self, shared: &Shared) {
        let s = self.settings();
        let now = now_ns();
        let hosts = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut back = 0;
        for h in &hosts {
            let until = h.ejected_until.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                h.ejected_until.store(0, Ordering::Relaxed);
                h.last_ejected.store(now, Ordering::Relaxed);
                back += 1;
            }
        }
        if back > 0 {
            let e = hosts.iter().filter(|h| h.ejected(now)).count();
            self.ejected.store(e, Ordering::Relaxed);
            self.m.ejected.set(e as i64);
            shared.log(
                Level::Info,
                format!(
                    "{}: {}: {back} endpoint(s) back in service",
                    self.listener, self.name
                ),
            );
        }
        let interval = s.outlier.interval_ms.saturating_mul(1_000_000);
        for h in &hosts {
            let n = h.ejections.load(Ordering::Relaxed);
            if n > 0
                && h.ejected_until.load(Ordering::Relaxed) == 0
                && now.saturating_sub(h.last_ejected.load(Ordering::Relaxed)) >= interval
            {
                h.ejections.store(n - 1, Ordering::Relaxed);
                h.last_ejected.store(now, Ordering::Relaxed);
            }
        }
        self.pool
            .close_idle(Duration::from_millis(s.idle_timeout_ms.max(1)));
    }
}

#[path = "runtime_view.rs"]
mod view;

#[cfg(test)]
#[path = "runtime_test.rs"]
mod tests;
