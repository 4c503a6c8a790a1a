//! The listener's `http` section (schema in the module doc of `inbound::http`), read once per snapshot into a
//! [`Policy`] with every bound and every metric series of the listener made up front.

use std::sync::Arc;
use std::time::Duration;

use meshgw_proto::normalize::Normalization;
use serde::Deserialize;

use super::accesslog::Field;
use super::metrics::HttpStats;
use super::pool::AppPool;
use crate::snapshot::Limits;
use crate::state::Shared;

/// Envoy's `max_request_headers_kb` default (l7-security.md §0, §4): 60 KiB.
const MAX_HEAD_KB: usize = 60;
/// Envoy's `max_headers_count` default (l7-security.md §4, §9.6).
const MAX_HEADERS: usize = 100;
/// The Python inbound path's `request_timeout` default, which is Envoy's route timeout when Consul leaves
/// `local_request_timeout_ms` unset (l7-security.md §0, §4: 15 s).
const REQUEST_TIMEOUT_MS: u64 = 15_000;
/// Envoy's `stream_idle_timeout` default, 5 min (l7-security.md §4).
const STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
/// The Python inbound path's `idle_timeout` default (Envoy's HCM connection idle timeout, 1 h; §4).
const IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Idle keep-alive connections kept to the local app (the bound of the pool).
const MAX_IDLE_APP: usize = 64;

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct Spec {
    normalization: Normalization,
    max_request_headers_kb: usize,
    max_headers: usize,
    request_headers_timeout_ms: u64,
    request_timeout_ms: u64,
    stream_idle_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_idle_app_connections: usize,
    app_idle_timeout_ms: u64,
    access_log: AccessLogSpec,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            normalization: Normalization::default(),
            max_request_headers_kb: MAX_HEAD_KB,
            max_headers: MAX_HEADERS,
            // Envoy's default, which Consul keeps (l7-security.md §4): disabled.
            request_headers_timeout_ms: 0,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            stream_idle_timeout_ms: STREAM_IDLE_TIMEOUT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            max_idle_app_connections: MAX_IDLE_APP,
            app_idle_timeout_ms: IDLE_TIMEOUT_MS,
            access_log: AccessLogSpec::default(),
        }
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
struct AccessLogSpec {
    enabled: bool,
    fields: Vec<String>,
}

/// What one inbound HTTP listener does per request, compiled from its `http` section.
pub struct Policy {
    pub normalization: Normalization,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// None: disabled.
    pub request_headers_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Access-log fields in order; None when the access log is off.
    pub access_log: Option<Arc<[Field]>>,
    pub pool: Arc<AppPool>,
    /// Set by `with_stats` at plan-build time; until then the series are detached (counted nowhere).
    pub stats: HttpStats,
    /// HTTP/2 connections cut for abuse (`http::h2`).
    pub cuts: crate::http::h2::CutStats,
    /// This listener's key in `Compiled::plans`, to find its current plan per request.
    pub plan_key: String,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl Policy {
    pub fn build(v: &serde_json::Value, limits: &Limits) -> Result<Policy, String> {
        let spec: Spec = if v.is_null() {
            Spec::default()
        } else {
            serde_json::from_value(v.clone()).map_err(|e| format!("http: {e}"))?
        };
        if spec.max_request_headers_kb == 0 || spec.max_request_headers_kb > 8192 {
            return Err("http: max_request_headers_kb must be 1..8192".into());
        }
        if spec.max_headers == 0 || spec.max_headers > 10_000 {
            return Err("http: max_headers must be 1..10000".into());
        }
        let access_log = if spec.access_log.enabled {
            let fields = if spec.access_log.fields.is_empty() {
                Field::defaults()
            } else {
                spec.access_log
                    .fields
                    .iter()
                    .map(|f| {
                        Field::parse(f)
                            .ok_or_else(|| format!("http: access_log.fields: unknown field {f:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            Some(Arc::from(fields))
        } else {
            None
        };
        Ok(Policy {
            normalization: spec.normalization,
            max_head_bytes: spec.max_request_headers_kb * 1024,
            max_headers: spec.max_headers,
            request_headers_timeout: ms(spec.request_headers_timeout_ms),
            request_timeout: ms(spec.request_timeout_ms),
            stream_idle_timeout: ms(spec.stream_idle_timeout_ms),
            idle_timeout: ms(spec.idle_timeout_ms),
            access_log,
            pool: AppPool::shared(
                spec.max_idle_app_connections,
                ms(spec.app_idle_timeout_ms),
                Duration::from_millis(limits.connect_timeout_ms.max(1)),
            ),
            stats: HttpStats::detached(),
            cuts: crate::http::h2::CutStats::default(),
            plan_key: String::new(),
        })
    }

    /// Pre-creates this listener's labelled series (design.md: labels from the snapshot, never a request) and
    /// remembers the key of its plan in later snapshots (`Compiled::plans` is keyed by bind address).
    pub fn with_stats(mut self, shared: &Shared, listener: &str, bind: &str) -> Policy {
        self.stats = HttpStats::new(shared, listener);
        self.cuts = crate::http::h2::CutStats::new(shared, listener);
        self.plan_key = bind.to_owned();
        self
    }
}

#[cfg(test)]
#[path = "config_test.rs"]
mod tests;
