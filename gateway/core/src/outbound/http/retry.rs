//! Retry policy of a route (gateway/http/outbound.py Call._may_retry, _status_retriable, _schedule; Envoy's
//! "Retry semantics" as Consul configures them, consul.md §8.3): connect failures are retried for every method
//! (nothing was sent); resets and retriable statuses only for idempotent methods (RFC 9110 §9.2.2) unless the
//! policy says otherwise, and only while the request body can be replayed. Concurrent retries of a cluster are
//! capped by a budget: `budget_percent` of the requests in flight, at least `min_retry_concurrency`.

use std::time::Duration;

use super::rng;
use super::spec::RetrySpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConnectFailure = 0,
    Reset = 1,
    Status = 2,
    /// A trailers-only gRPC answer whose `grpc-status` a gRPC token names.
    Grpc = 3,
}

/// Consul's gRPC `RetryOn` tokens and the codes they stand for (http2-grpc.md §2.7; Envoy router_filter.rst).
const GRPC_TOKENS: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub num_retries: u32,
    connect_failure: bool,
    reset: bool,
    statuses: Vec<u16>,
    on_5xx: bool,
    on_gateway: bool,
    on_409: bool,
    /// gRPC status codes that retry (from the gRPC tokens).
    grpc: Vec<u32>,
    non_idempotent: bool,
    budget_percent: f64,
    min_concurrency: usize,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Whether an attempt after the request was sent may happen: only then is the body kept for a replay.
    replay: bool,
}

pub fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl RetryPolicy {
    pub fn compile(s: &RetrySpec) -> RetryPolicy {
        let on = |t: &str| s.retry_on.iter().any(|x| x == t);
        RetryPolicy {
            num_retries: s.num_retries,
            connect_failure: s.retry_on_connect_failure || on("connect-failure") || on("5xx"),
            reset: s.retry_on_reset || on("reset") || on("5xx") || on("refused-stream"),
            statuses: s.retry_on_status_codes.clone(),
            on_5xx: on("5xx"),
            on_gateway: on("gateway-error"),
            on_409: on("retriable-4xx"),
            grpc: GRPC_TOKENS
                .iter()
                .filter(|(t, _)| on(t))
                .map(|(_, c)| *c)
                .collect(),
            non_idempotent: s.retry_non_idempotent,
            budget_percent: s.budget_percent,
            min_concurrency: s.min_retry_concurrency as usize,
            backoff_base: Duration::from_millis(s.backoff_base_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            replay: s.retry_on_reset
                || !s.retry_on_status_codes.is_empty()
                || s.retry_on.iter().any(|x| x != "connect-failure"),
        }
    }

    /// Keep the body for a replay (outbound.py Call.__init__). A gRPC call (always POST) is replayed when a
    /// gRPC token may retry it: Envoy retries whatever the method, and a trailers-only status means the server
    /// answered without a message.
    pub fn wants_replay(&self, method: &http::Method, grpc: bool) -> bool {
        self.num_retries > 0
            && self.replay
            && (idempotent(method) || self.non_idempotent || (grpc && !self.grpc.is_empty()))
    }

    /// Envoy: gRPC tokens fire only when `grpc-status` is in the response headers (trailers-only); "gRPC status
    /// codes in trailers will not trigger retry logic" (http2-grpc.md §2.7).
    pub fn grpc_retriable(&self, head: &http::HeaderMap) -> bool {
        !self.grpc.is_empty()
            && crate::http::grpc::status_of(head).is_some_and(|s| self.grpc.contains(&s))
    }

    /// Whether a response head with this status may be dropped for another attempt (by the policy alone).
    pub fn status_retriable(&self, status: u16) -> bool {
        status >= 400
            && (self.statuses.contains(&status)
                || (self.on_5xx && status >= 500)
                || (self.on_gateway && matches!(status, 502..=504))
                || (self.on_409 && status == 409))
    }

    /// The policy's part of the decision; the budget is checked by the caller.
    pub fn allows(
        &self,
        kind: Kind,
        retries: u32,
        method: &http::Method,
        can_replay: bool,
    ) -> bool {
        if retries >= self.num_retries {
            return false;
        }
        match kind {
            Kind::ConnectFailure => self.connect_failure,
            Kind::Grpc => can_replay,
            Kind::Reset | Kind::Status => {
                if kind == Kind::Reset && !self.reset {
                    return false;
                }
                (idempotent(method) || self.non_idempotent) && can_replay
            }
        }
    }

    /// Room in the cluster's budget for one more request on a retry (Envoy's retry_budget).
    pub fn budget_allows(&self, retrying_now: usize, active: usize) -> bool {
        (retrying_now as f64)
            < (self.min_concurrency as f64).max(active as f64 * self.budget_percent / 100.0)
    }

    /// Full jitter over an exponential window ((2^n - 1) × base, capped), as Envoy.
    pub fn backoff(&self, retries: u32) -> Duration {
        let window = self
            .backoff_base
            .saturating_mul((1u32 << retries.min(20)) - 1)
            .min(self.backoff_max);
        window.mul_f64(rng::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn policy_and_budget() {
        let p = RetryPolicy::compile(&RetrySpec {
            retry_on_status_codes: vec![503],
            ..RetrySpec::default()
        });
        assert!(p.wants_replay(&Method::GET, false));
        assert!(!p.wants_replay(&Method::POST, false));
        assert!(!p.wants_replay(&Method::POST, true), "no gRPC token");
        let g = RetryPolicy::compile(&RetrySpec {
            retry_on: vec!["unavailable".into(), "cancelled".into()],
            ..RetrySpec::default()
        });
        assert!(g.wants_replay(&Method::POST, true));
        let mut h = http::HeaderMap::new();
        assert!(!g.grpc_retriable(&h), "no status in the head");
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(g.grpc_retriable(&h));
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
        assert!(!g.grpc_retriable(&h), "internal not named");
        assert!(g.allows(Kind::Grpc, 0, &Method::POST, true));
        assert!(p.status_retriable(503));
        assert!(!p.status_retriable(500));
        assert!(
            p.allows(Kind::ConnectFailure, 0, &Method::POST, false),
            "nothing was sent"
        );
        assert!(
            !p.allows(Kind::Reset, 0, &Method::POST, true),
            "not idempotent"
        );
        assert!(p.allows(Kind::Reset, 1, &Method::GET, true));
        assert!(
            !p.allows(Kind::Reset, 2, &Method::GET, true),
            "num_retries 2"
        );
        assert!(
            !p.allows(Kind::Status, 0, &Method::GET, false),
            "body not replayable"
        );
        // Budget: 20 % of in-flight, at least 3.
        assert!(p.budget_allows(2, 0));
        assert!(!p.budget_allows(3, 10));
        assert!(p.budget_allows(19, 100));
        assert!(!p.budget_allows(20, 100));
        let g = RetryPolicy::compile(&RetrySpec {
            retry_on: vec!["gateway-error".into()],
            ..RetrySpec::default()
        });
        assert!(g.status_retriable(502) && g.status_retriable(504) && !g.status_retriable(500));
        for n in 1..6 {
            assert!(p.backoff(n) <= Duration::from_millis(250));
        }
        let none = RetryPolicy::compile(&RetrySpec {
            retry_on_reset: false,
            ..RetrySpec::default()
        });
        assert!(
            !none.wants_replay(&Method::GET, false),
            "connect failures only: nothing to replay"
        );
    }
}
