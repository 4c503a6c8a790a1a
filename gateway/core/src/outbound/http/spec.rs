//! The `http` section of an upstream listener as Python's emitter (gateway/corespec/outbound_http.py) writes
//! it: the already-compiled discovery chain(s) (gateway/http/routing.py compile_chain), flattened into plain
//! data. Schema documented in `super` (mod.rs). Unknown fields are ignored so Python may send more.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::snapshot::EndpointSpec;

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct HttpSpec {
    /// Ingress gateway listener: the chain is picked by Host (consul.md §8.6); else the first chain serves.
    pub ingress: bool,
    pub chains: Vec<ChainSpec>,
    pub clusters: BTreeMap<String, ClusterSpec>,
    /// The upstream's own retry policy, used by routes that set none.
    pub retry: Option<RetrySpec>,
    pub request_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    /// Per-route and per-cluster metrics (a chain with routes or splits, or an ingress listener).
    pub observe: bool,
    /// The local service's name, the access log's `source_service`.
    pub source: String,
    /// Present when access logs are on: the fields each record carries (gateway/config.py ACCESS_LOG_FIELDS).
    pub access_log: Option<AccessLogSpec>,
    pub max_headers: Option<usize>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct AccessLogSpec {
    pub fields: Vec<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct ChainSpec {
    pub name: String,
    /// Envoy virtual-host domain forms: exact, `*.suffix`, `prefix.*`, `*`; empty means `*`.
    pub hosts: Vec<String>,
    /// In order, first match wins (consul.md §8.3); the emitter ends the list with the catch-all route.
    pub routes: Vec<RouteSpec>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct RouteSpec {
    /// Metric label: `default` or `<router>/<index>`.
    pub name: String,
    #[serde(rename = "match")]
    pub match_: Option<MatchSpec>,
    pub splits: Vec<SplitSpec>,
    pub request_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub retry: Option<RetrySpec>,
    pub prefix_rewrite: Option<String>,
    /// The PathPrefix (or PathExact) that `prefix_rewrite` replaces.
    pub match_prefix: String,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct MatchSpec {
    pub path_exact: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub case_insensitive: bool,
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatchSpec>,
    pub query: Vec<QueryMatchSpec>,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct HeaderMatchSpec {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub regex: Option<String>,
    /// Neither of the above: the header must be present.
    pub invert: bool,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct QueryMatchSpec {
    pub name: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SplitSpec {
    /// Percent; only relative sizes matter.
    pub weight: f64,
    pub cluster: String,
    pub request_headers: HeaderRulesSpec,
    pub response_headers: HeaderRulesSpec,
}

/// Header changes already merged over route and split levels by Python's render_rules: names to drop (the
/// message's own fields of that name), then lines to add.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct HeaderRulesSpec {
    pub drop: Vec<String>,
    pub add: Vec<(String, String)>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct RetrySpec {
    pub num_retries: u32,
    pub retry_on_connect_failure: bool,
    pub retry_on_reset: bool,
    pub retry_on_status_codes: Vec<u16>,
    pub retry_on: Vec<String>,
    pub retry_non_idempotent: bool,
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RetrySpec {
    /// gateway/config.py RetryConfig's defaults (Envoy's retry budget: 20 %, at least 3).
    fn default() -> Self {
        RetrySpec {
            num_retries: 2,
            retry_on_connect_failure: true,
            retry_on_reset: true,
            retry_on_status_codes: Vec::new(),
            retry_on: Vec::new(),
            retry_non_idempotent: false,
            budget_percent: 20.0,
            min_retry_concurrency: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct ClusterSpec {
    /// Consul's SNI for the target (consul.md §5.2).
    pub sni: String,
    pub expected_uri: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub lb: LbSpec,
    #[serde(default = "connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The resolver's RequestTimeout, when set.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub outlier: OutlierSpec,
}

fn connect_timeout() -> u64 {
    5_000
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct LbSpec {
    /// round_robin | least_request | random | ring_hash | maglev | peak_ewma
    pub policy: String,
    pub choice_count: u32,
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
    pub hash_policies: Vec<HashPolicySpec>,
}

impl Default for LbSpec {
    fn default() -> Self {
        LbSpec {
            policy: "round_robin".into(),
            choice_count: 2,
            minimum_ring_size: 1024,
            maximum_ring_size: 8 * 1024 * 1024,
            hash_policies: Vec::new(),
        }
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct HashPolicySpec {
    /// header | cookie | query_parameter | source_ip
    pub field: String,
    /// The header (lower-case), cookie or parameter name; empty for source_ip.
    pub name: String,
    pub terminal: bool,
}

/// Circuit breakers (consul.md §8.1 UpstreamConfig.Limits; Envoy's defaults 1024).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(default)]
pub struct LimitsSpec {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_concurrent_requests: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_concurrent_requests: 1024,
        }
    }
}

/// Outlier detection (consul.md §8.1 PassiveHealthCheck; gateway/config.py PassiveHealthCheckConfig defaults).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(default)]
pub struct OutlierSpec {
    pub interval_ms: u64,
    pub max_failures: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub max_ejection_percent: u32,
    pub base_ejection_time_ms: u64,
    pub max_ejection_time_ms: u64,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            interval_ms: 10_000,
            max_failures: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            max_ejection_percent: 10,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
        }
    }
}
