//! Endpoint selection (gateway/balancer.py): round_robin (smooth weighted), least_request (power of
//! `choice_count` choices), random, ring_hash, maglev, and peak_ewma (Linkerd's balancer: power of two choices
//! over a peak-sensitive EWMA of response latency × (requests in flight + 1)). The tables are built once per
//! (endpoints, policy) and kept across snapshots while those do not change; what changes per request lives in
//! each endpoint's `HostState` (atomics), kept across snapshots by endpoint address.
//!
//! Semantics follow Envoy's load balancers as Consul configures them from a resolver's LoadBalancer (consul.md
//! §8.5; Envoy docs "Supported load balancers"): ejected endpoints are skipped, and when every endpoint is
//! ejected they are all used again (Envoy's panic mode); a hash policy without a hash picks at random.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::hash::{maglev, ring};
use super::rng;
use super::spec::LbSpec;

/// Monotonic nanoseconds since the first call, never 0 (0 means "not ejected").
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `t` on [`now_ns`]'s clock (for a caller that read the clock already).
pub fn ns_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(|| t);
    u64::try_from(t.saturating_duration_since(*e).as_nanos()).unwrap_or(u64::MAX) + 1
}

/// Linkerd's defaults (linkerd/app/outbound: `default_rtt` 30 ms for a new endpoint, decay 10 s).
const EWMA_DEFAULT_RTT_NS: f64 = 30e6;
const EWMA_DECAY_NS: f64 = 10e9;

#[derive(Debug)]
struct Ewma {
    estimate_ns: f64,
    updated_ns: u64,
}

/// What one endpoint of one cluster is doing now; kept across snapshots while the endpoint stays.
#[derive(Debug)]
pub struct HostState {
    pub active: AtomicI64,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    /// `now_ns()` until which it is ejected; 0 in service.
    pub ejected_until: AtomicU64,
    /// Times ejected: the next ejection lasts base × (ejections + 1).
    pub ejections: AtomicU32,
    pub last_ejected: AtomicU64,
    ewma: Mutex<Ewma>,
}

impl Default for HostState {
    fn default() -> Self {
        HostState {
            active: AtomicI64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejected: AtomicU64::new(0),
            ewma: Mutex::new(Ewma {
                estimate_ns: EWMA_DEFAULT_RTT_NS,
                updated_ns: 0,
            }),
        }
    }
}

impl HostState {
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// One response's latency into the peak EWMA: a slower sample replaces the estimate at once (the peak),
    /// a faster one is blended in by how long ago the last sample was (tower's PeakEwma, which Linkerd uses).
    pub fn observe_rtt(&self, rtt: Duration) {
        self.observe_rtt_at(rtt, now_ns());
    }

    fn observe_rtt_at(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        if rtt > e.estimate_ns {
            e.estimate_ns = rtt;
        } else {
            let elapsed = now.saturating_sub(e.updated_ns) as f64;
            let decay = (-elapsed / EWMA_DECAY_NS).exp();
            e.estimate_ns = e.estimate_ns * decay + rtt * (1.0 - decay);
        }
        e.updated_ns = now;
    }

    /// The estimate decayed toward 0 since its last sample (an endpoint that was slow long ago gets tried
    /// again), times the load.
    fn ewma_cost(&self, now: u64, weight: u32) -> f64 {
        let e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_sub(e.updated_ns) as f64;
        let est = if e.updated_ns == 0 {
            e.estimate_ns
        } else {
            e.estimate_ns * (-elapsed / EWMA_DECAY_NS).exp()
        };
        let pending = self.active.load(Ordering::Relaxed).max(0) as f64;
        est * (pending + 1.0) / f64::from(weight.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
    PeakEwma,
}

impl Policy {
    pub fn parse(s: &str) -> Result<Policy, String> {
        Ok(match s {
            "" | "round_robin" => Policy::RoundRobin,
            "least_request" => Policy::LeastRequest,
            "random" => Policy::Random,
            "ring_hash" => Policy::RingHash,
            "maglev" => Policy::Maglev,
            "peak_ewma" => Policy::PeakEwma,
            other => return Err(format!("unknown load-balancing policy {other:?}")),
        })
    }
}

/// Longest weighted round-robin schedule kept; larger weight sums are scaled down (balancer.py).
const RR_SCHEDULE_MAX: u64 = 4096;
/// Bound on ring points whatever the snapshot says (Envoy's maximum_ring_size default is 8M; a few MB here).
const RING_MAX: u64 = 1 << 20;

/// Precomputed selection tables for one endpoint set and one policy. Immutable once built.
#[derive(Debug)]
pub struct Tables {
    pub policy: Policy,
    n: usize,
    weights: Vec<u32>,
    uniform: bool,
    total: u64,
    cum: Vec<u64>,
    schedule: Vec<u32>,
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
    choice_count: usize,
}

pub struct Pick<'a> {
    pub hosts: &'a [Arc<HostState>],
    pub rr: &'a AtomicUsize,
    pub hash: Option<u64>,
    /// An index to avoid if any other is usable (a retry goes elsewhere).
    pub exclude: Option<usize>,
    pub now: u64,
    /// Some endpoint is ejected now: only then is `ejected_until` read.
    pub any_ejected: bool,
}

impl Tables {
    pub fn build(keys: &[(String, u16)], weights: &[u32], lb: &LbSpec) -> Result<Tables, String> {
        let policy = Policy::parse(&lb.policy)?;
        let weights: Vec<u32> = weights.iter().map(|w| (*w).max(1)).collect();
        let n = weights.len();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let mut acc = 0u64;
        let cum: Vec<u64> = weights
            .iter()
            .map(|w| {
                acc += u64::from(*w);
                acc
            })
            .collect();
        let mut t = Tables {
            policy,
            n,
            uniform,
            total: acc,
            cum,
            schedule: Vec::new(),
            ring: Vec::new(),
            maglev: Vec::new(),
            choice_count: (lb.choice_count as usize).clamp(2, 16),
            weights,
        };
        if n == 0 {
            return Ok(t);
        }
        match policy {
            Policy::RoundRobin => {
                t.schedule = if uniform {
                    (0..n as u32).collect()
                } else {
                    smooth_wrr(&t.weights)
                }
            }
            Policy::RingHash => {
                t.ring = ring(
                    keys,
                    &t.weights,
                    lb.minimum_ring_size.clamp(1, RING_MAX),
                    lb.maximum_ring_size.clamp(1, RING_MAX),
                )
            }
            Policy::Maglev => t.maglev = maglev(keys, &t.weights),
            _ => {}
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Index of the chosen endpoint; None when there is none.
    pub fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        let n = self.n;
        if n == 0 || p.hosts.len() != n {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let i = match (self.policy, p.hash) {
            (Policy::RoundRobin, _) => {
                let r = p.rr.fetch_add(1, Ordering::Relaxed);
                self.schedule[r % self.schedule.len()] as usize
            }
            (Policy::LeastRequest, _) => self.least(p),
            (Policy::PeakEwma, _) => self.peak_ewma(p),
            (Policy::Random, _) | (Policy::RingHash | Policy::Maglev, None) => self.random(),
            (Policy::RingHash, Some(h)) => self.ring[self.ring_start(h)].1 as usize,
            (Policy::Maglev, Some(h)) => {
                self.maglev[(h % self.maglev.len() as u64) as usize] as usize
            }
        };
        if self.usable(p, i) {
            return Some(i);
        }
        Some(self.fallback(p, i))
    }

    fn usable(&self, p: &Pick<'_>, i: usize) -> bool {
        Some(i) != p.exclude && !(p.any_ejected && p.hosts[i].ejected(p.now))
    }

    fn random(&self) -> usize {
        if self.uniform {
            return rng::below(self.n);
        }
        let x = ((rng::u64() as u128 * self.total as u128) >> 64) as u64;
        self.cum.partition_point(|c| *c <= x).min(self.n - 1)
    }

    fn least(&self, p: &Pick<'_>) -> usize {
        let mut best = 0;
        let mut best_load = f64::INFINITY;
        for _ in 0..self.choice_count {
            let i = self.random();
            let active = p.hosts[i].active.load(Ordering::Relaxed).max(0) as f64;
            let load = if self.uniform {
                active
            } else {
                (active + 1.0) / f64::from(self.weights[i])
            };
            if load < best_load {
                best = i;
                best_load = load;
            }
        }
        best
    }

    /// Power of two choices over the peak-EWMA cost (two distinct candidates, weighted draws).
    fn peak_ewma(&self, p: &Pick<'_>) -> usize {
        let a = self.random();
        let mut b = self.random();
        if b == a {
            b = (a + 1 + rng::below(self.n - 1)) % self.n;
        }
        let ca = p.hosts[a].ewma_cost(p.now, self.weights[a]);
        let cb = p.hosts[b].ewma_cost(p.now, self.weights[b]);
        if cb < ca {
            b
        } else {
            a
        }
    }

    fn ring_start(&self, h: u64) -> usize {
        self.ring.partition_point(|(x, _)| *x < h) % self.ring.len()
    }

    /// The choice was ejected (or excluded): walk on in the policy's own order to the next usable one
    /// (clockwise along the ring, along the Maglev table, or the next index); panic mode when none is.
    fn fallback(&self, p: &Pick<'_>, first: usize) -> usize {
        match (self.policy, p.hash) {
            (Policy::RingHash, Some(h)) => {
                let start = self.ring_start(h);
                let size = self.ring.len();
                for step in 1..size {
                    let i = self.ring[(start + step) % size].1 as usize;
                    if self.usable(p, i) {
                        return i;
                    }
                }
            }
            (Policy::Maglev, Some(h)) => {
                let size = self.maglev.len();
                let start = (h % size as u64) as usize;
                for step in 1..size {
                    let i = self.maglev[(start + step) % size] as usize;
                    if self.usable(p, i) {
                        return i;
                    }
                }
            }
            _ => {
                for step in 1..self.n {
                    let i = (first + step) % self.n;
                    if self.usable(p, i) {
                        return i;
                    }
                }
            }
        }
        if Some(first) != p.exclude {
            first
        } else {
            (first + 1) % self.n
        }
    }
}

/// The sequence nginx's smooth weighted round robin produces over one full cycle: Envoy's shares, with the
/// heavy endpoints spread out instead of bunched.
fn smooth_wrr(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<i64> = weights.iter().map(|x| i64::from(*x)).collect();
    let mut total: i64 = w.iter().sum();
    if total as u64 > RR_SCHEDULE_MAX {
        let scale = RR_SCHEDULE_MAX as f64 / total as f64;
        w = w
            .iter()
            .map(|x| ((*x as f64 * scale).round() as i64).max(1))
            .collect();
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
#[path = "balancer_test.rs"]
mod tests;
