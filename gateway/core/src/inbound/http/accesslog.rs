//! Access-log records of inbound requests: what an exchange leaves for its record, rendered by the renderer
//! both stacks share (crate::http::accesslog: gateway/accesslog.py `AccessLog.record`'s fields and names, in
//! the configured order). Python drains them (`Shared::take_access`) and writes them as they are.

use std::borrow::Cow;
#[cfg(test)]
use std::time::{Duration, UNIX_EPOCH};
use std::time::{Instant, SystemTime};

pub use crate::http::accesslog::Field;
#[cfg(test)]
use crate::http::accesslog::{iso, DEFAULTS};
use crate::http::accesslog::{render, Record};

/// What an exchange leaves for its record; filled as the request goes.
#[derive(Default, Debug)]
pub struct Exchange {
    pub started: Option<Instant>,
    pub listener: String,
    pub method: String,
    pub path: String,
    pub version: &'static str,
    pub status: u16,
    pub flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub head_time: Option<Instant>,
    /// "" for a local answer (the request never reached the app).
    pub upstream_host: String,
    pub request_id: String,
    pub traceparent: String,
    pub downstream_address: String,
    pub source_service: String,
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    /// The request is gRPC (`http::grpc::is_grpc`); its status once known.
    pub grpc: bool,
    pub grpc_status: Option<u32>,
}

impl Exchange {
    pub fn record(&self, fields: &[Field]) -> String {
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let age = now.saturating_duration_since(started);
        // An empty upstream_host is a local answer: no cluster, no upstream time.
        let upstream = !self.upstream_host.is_empty();
        let r = Record {
            listener: self.listener.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            protocol: Cow::Owned(format!("HTTP/{}", self.version)),
            status: self.status,
            flags: self.flags,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            upstream_service_time: self
                .head_time
                .filter(|_| upstream)
                .map(|t| t.saturating_duration_since(started)),
            cluster: if upstream {
                "local_app".into()
            } else {
                String::new()
            },
            host: self.upstream_host.clone(),
            route: String::new(),
            retries: 0,
            request_id: self.request_id.clone(),
            traceparent: self.traceparent.clone(),
            downstream_address: self.downstream_address.clone(),
            source: self.source_service.clone(),
            authority: self.authority.clone(),
            user_agent: self.user_agent.clone(),
            grpc_status: self.grpc_status,
        };
        render(fields.iter().copied(), &r, age, SystemTime::now() - age)
    }
}

#[cfg(test)]
#[path = "accesslog_test.rs"]
mod tests;
