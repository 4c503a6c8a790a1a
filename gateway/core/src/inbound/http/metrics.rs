//! Per-request series of an inbound HTTP listener under the names gateway/metrics.py always exported
//! (`meshgw_http_responses_total{listener,code_class}`, `meshgw_http_request_duration_seconds{listener}`,
//! `meshgw_http_requests_denied_total{listener,reason}`, `meshgw_http_timeouts_total{listener,kind}`). Every
//! label value is from the fixed lists below, all created when the plan is built (design.md style rule 3).

use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;
use crate::stats::{Counter, Histogram};

pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a request was refused before it reached the app. `intention` is the 403 of an L7 intention (what the
/// Python path counted); the others are the 400/404/426/307 of the request checks (l7-security.md §1.2, §4).
pub const DENY_REASONS: [&str; 16] = [
    "intention",
    "http_1_0",
    "invalid_request_target",
    "invalid_absolute_url",
    "authority_form_target",
    "asterisk_form_target",
    "missing_host_header",
    "duplicate_host_header",
    "unexpected_underscore",
    "content_length_with_transfer_encoding",
    "connection_header_rejected",
    "path_with_fragment",
    "escaped_slash_rejected",
    "path_normalization_failed",
    "path_not_absolute",
    "escaped_slash_redirect",
];

/// gateway/metrics.py TIMEOUT_KINDS plus the two Envoy timeouts the core adds (l7-security.md §4).
pub const TIMEOUT_KINDS: [&str; 5] = [
    "connect",
    "request",
    "idle",
    "request_headers",
    "stream_idle",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Connect = 0,
    Request = 1,
    Idle = 2,
    RequestHeaders = 3,
    StreamIdle = 4,
}

/// Cloned into every exchange (its end counts the response): one reference count, not thirty counters' worth.
#[derive(Clone, Default)]
pub struct HttpStats(Arc<HttpCounters>);

#[derive(Default)]
pub struct HttpCounters {
    responses: [Counter; 5],
    duration: Histogram,
    denied: Vec<Counter>,
    timeouts: [Counter; 5],
    pub grpc: crate::http::grpc::GrpcStats,
}

impl std::ops::Deref for HttpStats {
    type Target = HttpCounters;
    fn deref(&self) -> &HttpCounters {
        &self.0
    }
}

impl HttpStats {
    /// Counted nowhere: a policy built outside a plan (tests of the policy alone).
    pub fn detached() -> HttpStats {
        HttpStats(Arc::new(HttpCounters {
            denied: vec![Counter::default(); DENY_REASONS.len()],
            ..HttpCounters::default()
        }))
    }

    pub fn new(shared: &Shared, listener: &str) -> HttpStats {
        let s = &shared.stats;
        HttpStats(Arc::new(HttpCounters {
            responses: CODE_CLASSES.map(|c| {
                s.counter(
                    "meshgw_http_responses_total",
                    &[("listener", listener), ("code_class", c)],
                )
            }),
            duration: s.histogram(
                "meshgw_http_request_duration_seconds",
                &[("listener", listener)],
            ),
            denied: DENY_REASONS
                .iter()
                .map(|r| {
                    s.counter(
                        "meshgw_http_requests_denied_total",
                        &[("listener", listener), ("reason", r)],
                    )
                })
                .collect(),
            timeouts: TIMEOUT_KINDS.map(|k| {
                s.counter(
                    "meshgw_http_timeouts_total",
                    &[("listener", listener), ("kind", k)],
                )
            }),
            grpc: crate::http::grpc::GrpcStats::new(shared, listener),
        }))
    }

    /// A response head went downstream (gateway/listeners.py `_on_response`: class and head latency).
    pub fn response(&self, status: u16, head_latency: Duration) {
        let i = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(c) = self.responses.get(i) {
            c.inc();
        }
        self.duration.observe(head_latency);
    }

    /// `reason` is one of DENY_REASONS (every caller passes a constant of the list); another is not counted.
    pub fn denied(&self, reason: &str) {
        if let Some(i) = DENY_REASONS.iter().position(|r| *r == reason) {
            if let Some(c) = self.denied.get(i) {
                c.inc();
            }
        }
    }

    pub fn timeout(&self, kind: Timeout) {
        if let Some(c) = self.timeouts.get(kind as usize) {
            c.inc();
        }
    }

    /// The counter [`HttpCounters::timeout`] moves for `kind`.
    pub fn timeout_counter(&self, kind: Timeout) -> Option<&Counter> {
        self.timeouts.get(kind as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_before_any_request() {
        let shared = Shared::new();
        let _ = HttpStats::new(&shared, "inbound");
        let r = shared.stats.render().to_string();
        for c in CODE_CLASSES
            .iter()
            .chain(DENY_REASONS.iter())
            .chain(TIMEOUT_KINDS.iter())
        {
            assert!(r.contains(&format!("\"{c}\"")), "{c}");
        }
    }

    #[test]
    fn denied_reasons_of_proto_are_all_listed() {
        use meshgw_proto::http_head::HeadError::*;
        use meshgw_proto::normalize::*;
        for e in [
            InvalidTarget,
            InvalidAbsoluteUrl,
            AuthorityForm,
            AsteriskForm,
            MissingHost,
            DuplicateHost,
            UnderscoreInHeaderName,
            ContentLengthWithTransferEncoding,
            ConnectionHeaderRejected,
        ] {
            assert!(DENY_REASONS.contains(&e.reason()), "{e}");
        }
        for r in [
            REJECT_FRAGMENT,
            REJECT_ESCAPED_SLASH,
            REJECT_NORMALIZATION,
            REJECT_NOT_ABSOLUTE,
        ] {
            assert!(DENY_REASONS.contains(&r), "{r}");
        }
    }
}
