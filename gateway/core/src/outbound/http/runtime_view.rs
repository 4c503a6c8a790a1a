//! A read-only view of the outbound HTTP runtime state for the admin port's `/clusters` and console (issue
//! #16): per listener, per cluster, per endpoint the requests in flight and the outlier state, as Envoy's
//! `/clusters` shows `rq_active` and `health_flags::/failed_outlier_check`. Read with relaxed loads: a
//! snapshot for operators, not a consistent cut.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{ClusterRuntime, Registries};
use crate::outbound::http::balancer::now_ns;

impl Registries {
    /// `[{"listener", "cluster", "active_requests", "pending_requests", "ejected", "connections",
    /// "endpoints": [{"address", "port", "active_requests", "ejected", "ejected_for_ms", "ejections",
    /// "consecutive_5xx"}]}]`, sorted by listener then cluster.
    pub fn describe(&self) -> Value {
        let registries: Vec<_> = {
            let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            m.values().cloned().collect()
        };
        let mut out: Vec<(String, String, Value)> = Vec::new();
        for r in registries {
            for c in r.all() {
                out.push((r.listener.clone(), c.name.clone(), c.describe()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Value::Array(out.into_iter().map(|(_, _, v)| v).collect())
    }
}

impl ClusterRuntime {
    pub fn describe(&self) -> Value {
        let now = now_ns();
        let mut endpoints: Vec<((String, u16), Value)> = {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts
                .iter()
                .map(|((address, port), h)| {
                    let until = h.ejected_until.load(Ordering::Relaxed);
                    let ejected = until > now;
                    let left_ms = if ejected {
                        (until - now) / 1_000_000
                    } else {
                        0
                    };
                    let v = json!({
                        "address": address,
                        "port": port,
                        "active_requests": h.active.load(Ordering::Relaxed).max(0),
                        "ejected": ejected,
                        "ejected_for_ms": left_ms,
                        "ejections": h.ejections.load(Ordering::Relaxed),
                        "consecutive_5xx": h.consecutive_5xx.load(Ordering::Relaxed),
                    });
                    ((address.clone(), *port), v)
                })
                .collect()
        };
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let (connections, _dialing) = self.pool.counts();
        json!({
            "listener": self.listener,
            "cluster": self.name,
            "active_requests": self.active.load(Ordering::Relaxed),
            "pending_requests": self.pending.load(Ordering::Relaxed),
            "ejected": self.ejected.load(Ordering::Relaxed),
            "connections": connections,
            "endpoints": endpoints.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;
    use crate::outbound::http::spec::{LbSpec, OutlierSpec};
    use crate::state::Shared;

    #[test]
    fn describes_endpoints_with_active_requests_and_ejection() {
        let shared = Shared::new();
        let rt = shared
            .outbound_http
            .get("upstream:api")
            .cluster("api", &shared);
        let keys = vec![("10.0.0.2".to_string(), 80), ("10.0.0.1".to_string(), 80)];
        let settings = Settings {
            outlier: OutlierSpec::default(),
            idle_timeout_ms: 1000,
        };
        let (hosts, _) = rt
            .sync(&keys, &[1, 1], &LbSpec::default(), settings)
            .expect("tables");
        hosts[0].active.store(3, Ordering::Relaxed);
        hosts[1]
            .ejected_until
            .store(now_ns() + 5_000_000_000, Ordering::Relaxed);
        rt.active.store(3, Ordering::Relaxed);

        let all = shared.outbound_http.describe();
        let c = &all[0];
        assert_eq!(c["listener"], "upstream:api");
        assert_eq!(c["cluster"], "api");
        assert_eq!(c["active_requests"], 3);
        let eps = c["endpoints"].as_array().expect("endpoints");
        // Sorted by address: 10.0.0.1 (ejected) first, then 10.0.0.2 (3 in flight).
        assert_eq!(eps[0]["address"], "10.0.0.1");
        assert_eq!(eps[0]["ejected"], true);
        assert!(eps[0]["ejected_for_ms"].as_u64().unwrap_or(0) > 0);
        assert_eq!(eps[1]["address"], "10.0.0.2");
        assert_eq!(eps[1]["active_requests"], 3);
        assert_eq!(eps[1]["ejected"], false);
    }

    #[test]
    fn empty_without_http_listeners() {
        let shared = Shared::new();
        assert_eq!(shared.outbound_http.describe(), json!([]));
    }
}
