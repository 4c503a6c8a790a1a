//! Counters, gauges and histograms the data plane updates without locks; Python reads them all at scrape time
//! (a prometheus_client collector, gateway/core_metrics.py) under the metric names meshgw always had.
//! Labels come from the snapshot (listener, cluster, route names) or from fixed reason lists, never from a
//! request, so the set of series is bounded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type Key = (&'static str, Labels);

/// The same buckets as the Python histograms had (gateway/metrics.py), in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge held up by a guard: +1 now, -1 when the guard drops (however the connection ends).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Default, Debug)]
struct HistogramCells {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

#[derive(Clone, Default, Debug)]
pub struct Histogram(Arc<HistogramCells>);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Cumulative buckets are made at read time; here only the first bucket that holds the value counts.
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<Key, Counter>,
    gauges: BTreeMap<Key, Gauge>,
    histograms: BTreeMap<Key, Histogram>,
}

/// Handles are looked up once (per listener, cluster or route at compile time) and then updated lock-free.
#[derive(Default)]
pub struct Stats {
    reg: Mutex<Registry>,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
    )
}

impl Stats {
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        let mut reg = self.reg.lock().unwrap_or_else(|p| p.into_inner());
        reg.counters.entry(key(name, labels)).or_default().clone()
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        let mut reg = self.reg.lock().unwrap_or_else(|p| p.into_inner());
        reg.gauges.entry(key(name, labels)).or_default().clone()
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        let mut reg = self.reg.lock().unwrap_or_else(|p| p.into_inner());
        reg.histograms.entry(key(name, labels)).or_default().clone()
    }

    /// Everything as JSON: `{"counters": [[name, {label: value}, n]], "gauges": [...],
    /// "histograms": [[name, {labels}, [cumulative bucket counts], count, sum_seconds]], "buckets": [...]}`.
    pub fn render(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let reg = self.reg.lock().unwrap_or_else(|p| p.into_inner());
        let labels = |l: &Labels| {
            let mut m = Map::new();
            for (k, v) in l {
                m.insert((*k).to_string(), Value::String(v.clone()));
            }
            Value::Object(m)
        };
        let counters: Vec<Value> = reg
            .counters
            .iter()
            .map(|((n, l), c)| json!([n, labels(l), c.get()]))
            .collect();
        let gauges: Vec<Value> = reg
            .gauges
            .iter()
            .map(|((n, l), g)| json!([n, labels(l), g.get()]))
            .collect();
        let histograms: Vec<Value> = reg
            .histograms
            .iter()
            .map(|((n, l), h)| {
                let mut acc = 0u64;
                let cumulative: Vec<u64> =
                    h.0.buckets
                        .iter()
                        .map(|b| {
                            acc += b.load(Ordering::Relaxed);
                            acc
                        })
                        .collect();
                let sum = h.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
                json!([
                    n,
                    labels(l),
                    cumulative,
                    h.0.count.load(Ordering::Relaxed),
                    sum
                ])
            })
            .collect();
        json!({"counters": counters, "gauges": gauges, "histograms": histograms, "buckets": BUCKETS.to_vec()})
    }
}
