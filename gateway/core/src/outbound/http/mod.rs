//! Outbound HTTP/1.1 (hyper): the app's plaintext requests → the upstream's compiled discovery chain (route →
//! weighted split → cluster) → a balanced endpoint over pooled mTLS keep-alive connections, with retries and
//! their budget, circuit breakers, outlier detection, timeouts, header rules, forwarding and trace headers,
//! metrics and access-log records. The same listener kind serves an ingress gateway's HTTP listener, where the
//! chain is picked by Host (consul.md §8.6). Ported from gateway/listeners.py UpstreamListener and
//! IngressHTTPListener, gateway/http/{routing,outbound,pool,headers}.py and gateway/balancer.py.
//!
//! Everything expensive (regexes, header rules, balancer tables, metric handles) is compiled once per snapshot
//! in `Plan::build`; per request there are only lookups. State that must outlive a snapshot (pools, breaker
//! counts, outlier ejections, per-endpoint load and latency, balancer tables while endpoints are unchanged)
//! lives in a per-listener `runtime::Registry` kept in `Shared::outbound_http`, keyed by cluster name.
//!
//! Files, one job each: `spec` (the JSON below), `router` (matchers, splits, Host patterns), `balancer` and `hash`
//! (endpoint choice), `runtime` (per-listener registry, breakers' counts, outlier detection), `pool` (keep-alive
//! connections), `retry` (policy and budget), `headers` (forwarding, trace, header rules), `body` (streamed
//! bodies, the bounded replay buffer), `conn` (the downstream connection), `forward` (one request), `attempt`
//! (its attempts), `exchange` (accounting, local answers), `accesslog` (records).
//!
//! # The `http` section of an upstream listener (Python: gateway/corespec/outbound_http.py)
//!
//! ```json
//! {
//!   "ingress": false,                 // true: pick the chain by Host; false: the first chain serves
//!   "observe": false,                 // per-route and per-cluster metrics (chain with routes/splits, ingress)
//!   "source": "web",                  // the local service (access log source_service)
//!   "request_timeout_ms": 15000,      // no response head by then: 504 (route and cluster may override)
//!   "idle_timeout_ms": 3600000,       // idle keep-alive connections close (both sides)
//!   "max_headers": 100,               // request header count bound (431 beyond)
//!   "access_log": {"fields": ["start_time", "method", ...]},   // or null: access logs off
//!   "retry": {RETRY},                 // the upstream's retry policy, for routes without their own
//!   "chains": [{
//!     "name": "api", "hosts": ["api.example.com", "*.api.local"],   // hosts: ingress only; [] means "*"
//!     "routes": [{                    // in order, first match wins; the last one matches everything
//!       "name": "api/0",              // metric label ("default" for the catch-all)
//!       "match": {"path_exact"|"path_prefix"|"path_regex": "...", "case_insensitive": false,
//!                 "methods": ["GET"],
//!                 "headers": [{"name": "x-v", "exact"|"prefix"|"suffix"|"regex": "...", "invert": false}],
//!                 "query": [{"name": "v", "exact"|"regex": "..."}]},      // or null: matches everything
//!       "splits": [{"weight": 90.0, "cluster": "v1.api",
//!                   "request_headers": {"drop": ["x-a"], "add": [["x-b", "1"]]},
//!                   "response_headers": {"drop": [], "add": []}}],
//!       "request_timeout_ms": null, "idle_timeout_ms": null, "retry": null | {RETRY},
//!       "prefix_rewrite": null | "/new", "match_prefix": "/old"
//!     }]
//!   }],
//!   "clusters": {"v1.api": {
//!     "sni": "v1.api.default.dc1.internal.<td>", "expected_uri": "spiffe://<td>/ns/default/dc/dc1/svc/api",
//!     "endpoints": [{"address": "10.0.0.1", "port": 21000, "weight": 1, "health": "passing",
//!                    "datacenter": "dc1"}],
//!     "lb": {"policy": "round_robin|least_request|random|ring_hash|maglev|peak_ewma", "choice_count": 2,
//!            "minimum_ring_size": 1024, "maximum_ring_size": 8388608,
//!            "hash_policies": [{"field": "header|cookie|query_parameter|source_ip", "name": "x-user",
//!                               "terminal": false}]},
//!     "connect_timeout_ms": 5000, "request_timeout_ms": null,
//!     "limits": {"max_connections": 1024, "max_pending_requests": 1024, "max_concurrent_requests": 1024},
//!     "outlier": {"interval_ms": 10000, "max_failures": 5, "enforcing_consecutive_5xx": 100,
//!                 "consecutive_gateway_failure": 5, "enforcing_consecutive_gateway_failure": 0,
//!                 "max_ejection_percent": 10, "base_ejection_time_ms": 30000, "max_ejection_time_ms": 300000}
//!   }}
//! }
//! ```
//! RETRY = `{"num_retries": 2, "retry_on_connect_failure": true, "retry_on_reset": true,
//! "retry_on_status_codes": [503], "retry_on": ["5xx", "gateway-error", "reset", "connect-failure",
//! "retriable-4xx", "refused-stream"], "retry_non_idempotent": false, "budget_percent": 20.0,
//! "min_retry_concurrency": 3, "backoff_base_ms": 25, "backoff_max_ms": 250}` (gateway/config.py RetryConfig).

pub mod accesslog;
mod attempt;
pub mod balancer;
pub mod body;
mod conn;
mod exchange;
mod forward;
pub mod hash;
pub mod headers;
pub mod pool;
pub mod retry;
pub mod rng;
pub mod router;
pub mod runtime;
pub mod spec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::listener::ListenerStats;
use crate::snapshot::{EndpointSpec, Limits};
use crate::state::{Compiled, Shared};
use crate::stats::{Counter, Histogram};

use balancer::{HostState, Tables};
use hash::HashField;
use headers::HeaderRules;
use retry::RetryPolicy;
use router::{HostPattern, Matcher};
use runtime::{ClusterRuntime, Registry, Settings, CODE_CLASSES};
use spec::{HttpSpec, LimitsSpec, OutlierSpec};

pub use runtime::Registries;

/// Envoy's default route timeout, the Python listener's default (gateway/config.py UpstreamConfig).
const REQUEST_TIMEOUT_MS: u64 = 15_000;
const IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// hyper's default and Envoy's (max_request_headers_kb aside): a request with more fields gets 431.
const MAX_HEADERS: usize = 100;
const TIMEOUT_KINDS: [&str; 3] = ["connect", "request", "idle"];

pub struct Split {
    pub cluster: Arc<HttpCluster>,
    pub request: HeaderRules,
    pub response: HeaderRules,
}

pub struct RouteMetrics {
    pub class: [Counter; 5],
    pub latency: Histogram,
}

pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub splits: Vec<Split>,
    pub cum: Vec<f64>,
    pub request_timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub prefix_rewrite: Option<String>,
    pub match_prefix: String,
    pub m: RouteMetrics,
}

pub struct Chain {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub routes: Vec<Route>,
}

/// One cluster as this snapshot sees it; its runtime state is `rt`.
pub struct HttpCluster {
    pub name: String,
    /// The SNI and SPIFFE ID `dial_one` uses.
    pub dial: crate::cluster::Cluster,
    pub endpoints: Vec<EndpointSpec>,
    pub keys: Vec<pool::Key>,
    pub hosts: Vec<Arc<HostState>>,
    pub tables: Arc<Tables>,
    pub hash: Vec<(HashField, bool)>,
    pub connect_timeout: Duration,
    pub request_timeout: Option<Duration>,
    pub limits: LimitsSpec,
    pub outlier: OutlierSpec,
    pub rt: Arc<ClusterRuntime>,
}

pub struct ListenerMetrics {
    /// meshgw_upstream_connect_errors_total for the per-request refusals, counted without a log line per
    /// request (as the Python listener; dial failures are logged through ListenerStats).
    pub no_healthy: Counter,
    pub not_ready: Counter,
    pub class: [Counter; 5],
    pub latency: Histogram,
    pub timeouts: [Counter; 3],
    pub grpc: crate::http::grpc::GrpcStats,
    pub h2_cuts: crate::http::h2::CutStats,
}

pub struct Plan {
    pub listener: String,
    pub ingress: bool,
    pub chains: Vec<Chain>,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub observe: bool,
    pub source: String,
    pub access_fields: Option<Vec<String>>,
    pub max_headers: usize,
    /// `http2`/`grpc`: upstream clusters are spoken to in h2 over mTLS with ALPN `h2`, as Consul configures
    /// Envoy's (explicit HTTP/2, http2-grpc.md §2.4); `http`: HTTP/1.1.
    pub h2: bool,
    pub registry: Arc<Registry>,
    pub m: ListenerMetrics,
}

impl Plan {
    pub fn build(
        name: &str,
        v: &serde_json::Value,
        limits: &Limits,
        shared: &Shared,
        h2: bool,
    ) -> Result<Plan, String> {
        let s: HttpSpec = serde_json::from_value(v.clone()).map_err(|e| format!("http: {e}"))?;
        let registry = shared.outbound_http.get(name);
        let idle_timeout_ms = s.idle_timeout_ms.unwrap_or(IDLE_TIMEOUT_MS).max(1);
        let st = &shared.stats;
        let mut clusters = std::collections::HashMap::new();
        for (cname, c) in &s.clusters {
            let endpoints: Vec<EndpointSpec> = c
                .endpoints
                .iter()
                .filter(|e| crate::cluster::usable(e))
                .cloned()
                .collect();
            let keys: Vec<pool::Key> = endpoints
                .iter()
                .map(|e| (e.address.clone(), e.port))
                .collect();
            let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
            let rt = registry.cluster(cname, shared);
            let (hosts, tables) = rt
                .sync(
                    &keys,
                    &weights,
                    &c.lb,
                    Settings {
                        outlier: c.outlier,
                        idle_timeout_ms,
                    },
                )
                .map_err(|e| format!("http: clusters: {cname}: {e}"))?;
            let dial = crate::cluster::Cluster::build(
                cname,
                &crate::snapshot::ClusterSpec {
                    sni: c.sni.clone(),
                    expected_uri: c.expected_uri.clone(),
                    endpoints: Vec::new(),
                },
            );
            clusters.insert(
                cname.clone(),
                Arc::new(HttpCluster {
                    name: cname.clone(),
                    dial,
                    endpoints,
                    keys,
                    hosts,
                    tables,
                    hash: hash::compile_hash_policies(&c.lb.hash_policies),
                    connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
                    request_timeout: c
                        .request_timeout_ms
                        .filter(|t| *t > 0)
                        .map(Duration::from_millis),
                    limits: c.limits,
                    outlier: c.outlier,
                    rt,
                }),
            );
        }
        let default_retry = Arc::new(RetryPolicy::compile(&s.retry.clone().unwrap_or_default()));
        let mut chains = Vec::new();
        for ch in &s.chains {
            let mut routes = Vec::new();
            for r in &ch.routes {
                let what =
                    |e: String| format!("http: chains: {}: routes: {}: {e}", ch.name, r.name);
                let mut splits = Vec::new();
                let mut cum = Vec::new();
                let mut acc = 0.0;
                for sp in &r.splits {
                    let Some(c) = clusters.get(&sp.cluster) else {
                        return Err(what(format!("no cluster {:?}", sp.cluster)));
                    };
                    acc += sp.weight.max(0.0);
                    cum.push(acc);
                    splits.push(Split {
                        cluster: c.clone(),
                        request: HeaderRules::compile(&sp.request_headers).map_err(what)?,
                        response: HeaderRules::compile(&sp.response_headers).map_err(what)?,
                    });
                }
                if splits.is_empty() {
                    return Err(what("no splits".into()));
                }
                if acc <= 0.0 {
                    // All weights zero: equal shares rather than always the last.
                    cum = (1..=splits.len()).map(|i| i as f64).collect();
                }
                let lr = [("listener", name), ("route", r.name.as_str())];
                routes.push(Route {
                    name: r.name.clone(),
                    matcher: Matcher::compile(r.match_.as_ref()).map_err(what)?,
                    splits,
                    cum,
                    request_timeout: r
                        .request_timeout_ms
                        .filter(|t| *t > 0)
                        .map(Duration::from_millis),
                    retry: Some(
                        r.retry
                            .as_ref()
                            .map(|x| Arc::new(RetryPolicy::compile(x)))
                            .unwrap_or_else(|| default_retry.clone()),
                    ),
                    prefix_rewrite: r.prefix_rewrite.clone(),
                    match_prefix: r.match_prefix.clone(),
                    m: RouteMetrics {
                        class: CODE_CLASSES.map(|c| {
                            st.counter(
                                "meshgw_http_route_responses_total",
                                &[lr[0], lr[1], ("code_class", c)],
                            )
                        }),
                        latency: st.histogram("meshgw_http_route_request_duration_seconds", &lr),
                    },
                });
            }
            if routes.is_empty() {
                return Err(format!("http: chains: {}: no routes", ch.name));
            }
            let hosts = if ch.hosts.is_empty() {
                vec![HostPattern::Any]
            } else {
                ch.hosts.iter().map(|h| HostPattern::compile(h)).collect()
            };
            chains.push(Chain {
                name: ch.name.clone(),
                hosts,
                routes,
            });
        }
        if chains.is_empty() {
            return Err("http: no chains".into());
        }
        let names: Vec<&str> = clusters.keys().map(|k| k.as_str()).collect();
        registry.retain(&names);
        let l = [("listener", name)];
        Ok(Plan {
            listener: name.to_string(),
            ingress: s.ingress,
            chains,
            request_timeout: Duration::from_millis(
                s.request_timeout_ms.unwrap_or(REQUEST_TIMEOUT_MS).max(1),
            ),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms.max(1)),
            observe: s.observe || s.ingress,
            source: s.source.clone(),
            access_fields: s.access_log.map(|a| a.fields),
            max_headers: s.max_headers.unwrap_or(MAX_HEADERS).clamp(1, 1024),
            h2,
            registry,
            m: ListenerMetrics {
                no_healthy: st.counter(
                    "meshgw_upstream_connect_errors_total",
                    &[("listener", name), ("reason", "no_healthy_endpoints")],
                ),
                not_ready: st.counter(
                    "meshgw_upstream_connect_errors_total",
                    &[("listener", name), ("reason", "not_ready")],
                ),
                class: CODE_CLASSES.map(|c| {
                    st.counter(
                        "meshgw_http_responses_total",
                        &[("listener", name), ("code_class", c)],
                    )
                }),
                latency: st.histogram("meshgw_http_request_duration_seconds", &l),
                timeouts: TIMEOUT_KINDS.map(|k| {
                    st.counter(
                        "meshgw_http_timeouts_total",
                        &[("listener", name), ("kind", k)],
                    )
                }),
                grpc: crate::http::grpc::GrpcStats::new(shared, name),
                h2_cuts: crate::http::h2::CutStats::new(shared, name),
            },
        })
    }

    /// The chain for a request: on an ingress listener by Host (listeners.py `_chain_for_host`).
    pub fn chain_for(&self, host: Option<&str>) -> Option<&Chain> {
        if !self.ingress {
            return self.chains.first();
        }
        let host = router::host_only(host.unwrap_or(""));
        self.chains
            .iter()
            .find(|c| c.hosts.iter().any(|p| p.matches(&host)))
    }
}

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    snap: &Arc<Compiled>,
    plan: &super::Plan,
    _h: &Plan,
    stats: &ListenerStats,
) {
    let Some(h) = plan.http.clone() else {
        return;
    };
    conn::serve_connection(stream, peer, snap.clone(), h, stats.clone()).await;
}
