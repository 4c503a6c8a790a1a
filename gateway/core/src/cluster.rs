//! An upstream target (Envoy's cluster): its endpoints and how to pick one for an L4 connection.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::snapshot::{ClusterSpec, EndpointSpec};

/// Consul's Envoy config keeps warning instances in the set; only critical ones leave it (consul.md §4.1).
pub fn usable(e: &EndpointSpec) -> bool {
    !e.health.eq_ignore_ascii_case("critical") && !e.health.eq_ignore_ascii_case("maintenance")
}

pub struct Cluster {
    pub name: String,
    pub sni: String,
    pub expected_uri: String,
    pub endpoints: Vec<EndpointSpec>,
    next: AtomicUsize,
}

impl Cluster {
    pub fn build(name: &str, spec: &ClusterSpec) -> Cluster {
        Cluster {
            name: name.to_string(),
            sni: spec.sni.clone(),
            expected_uri: spec.expected_uri.clone(),
            endpoints: spec
                .endpoints
                .iter()
                .filter(|e| usable(e))
                .cloned()
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin start for the next connection; the dial walks on from there on failure.
    pub fn start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// Up to three endpoints tried per connection when connecting fails (README "What the sidecar does").
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The endpoints to try, in order, for one connection.
pub fn attempts(eps: &[EndpointSpec], start: usize) -> impl Iterator<Item = &EndpointSpec> {
    let n = eps.len();
    (0..n.min(MAX_CONNECT_ATTEMPTS)).map(move |i| &eps[(start + i) % n])
}
