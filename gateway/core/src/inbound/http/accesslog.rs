//! Access-log records of inbound requests: one JSON object per finished exchange with the fields and names of
//! gateway/accesslog.py `AccessLog.record` (Envoy's operators as Consul's default JSON format names them), in
//! the configured order. Python drains them (`Shared::take_access`) and writes them as they are.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    StartTime,
    Listener,
    Method,
    Path,
    Protocol,
    Status,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    DurationMs,
    UpstreamServiceTimeMs,
    UpstreamCluster,
    UpstreamHost,
    Route,
    Retries,
    RequestId,
    TraceId,
    Traceparent,
    DownstreamAddress,
    SourceService,
    Authority,
    UserAgent,
}

const NAMES: [(&str, Field); 22] = [
    ("start_time", Field::StartTime),
    ("listener", Field::Listener),
    ("method", Field::Method),
    ("path", Field::Path),
    ("protocol", Field::Protocol),
    ("status", Field::Status),
    ("response_flags", Field::ResponseFlags),
    ("bytes_received", Field::BytesReceived),
    ("bytes_sent", Field::BytesSent),
    ("duration_ms", Field::DurationMs),
    ("upstream_service_time_ms", Field::UpstreamServiceTimeMs),
    ("upstream_cluster", Field::UpstreamCluster),
    ("upstream_host", Field::UpstreamHost),
    ("route", Field::Route),
    ("retries", Field::Retries),
    ("request_id", Field::RequestId),
    ("trace_id", Field::TraceId),
    ("traceparent", Field::Traceparent),
    ("downstream_address", Field::DownstreamAddress),
    ("source_service", Field::SourceService),
    ("authority", Field::Authority),
    ("user_agent", Field::UserAgent),
];

/// gateway/config.py DEFAULT_ACCESS_LOG_FIELDS.
const DEFAULTS: [&str; 17] = [
    "start_time",
    "listener",
    "method",
    "path",
    "protocol",
    "status",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_cluster",
    "upstream_host",
    "route",
    "retries",
    "request_id",
    "trace_id",
    "source_service",
];

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        NAMES.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    pub fn defaults() -> Vec<Field> {
        DEFAULTS.iter().filter_map(|n| Field::parse(n)).collect()
    }
}

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
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

impl Exchange {
    pub fn record(&self, fields: &[Field]) -> String {
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let age = now.saturating_duration_since(started);
        // In the configured order (serde_json's Map sorts its keys without `preserve_order`).
        let mut out = String::from("{");
        for f in fields {
            let v = match f {
                Field::StartTime => Value::String(iso(SystemTime::now() - age)),
                Field::Listener => Value::String(self.listener.clone()),
                Field::Method => Value::String(self.method.clone()),
                Field::Path => Value::String(self.path.clone()),
                Field::Protocol => Value::String(format!("HTTP/{}", self.version)),
                Field::Status => Value::from(self.status),
                Field::ResponseFlags => Value::String(
                    if self.flags.is_empty() {
                        "-"
                    } else {
                        self.flags
                    }
                    .to_owned(),
                ),
                Field::BytesReceived => Value::from(self.bytes_received),
                Field::BytesSent => Value::from(self.bytes_sent),
                Field::DurationMs => Value::from(ms(age)),
                Field::UpstreamServiceTimeMs => match self.head_time {
                    Some(t) if !self.upstream_host.is_empty() => {
                        Value::from(ms(t.saturating_duration_since(started)))
                    }
                    _ => Value::Null,
                },
                Field::UpstreamCluster => {
                    if self.upstream_host.is_empty() {
                        Value::Null
                    } else {
                        Value::String("local_app".into())
                    }
                }
                Field::UpstreamHost => opt(&self.upstream_host),
                Field::Route => Value::Null,
                Field::Retries => Value::from(0),
                Field::RequestId => opt(&self.request_id),
                Field::TraceId => {
                    let parts: Vec<&str> = self.traceparent.split('-').collect();
                    match parts.get(1) {
                        Some(id) if parts.len() >= 4 => Value::String((*id).to_owned()),
                        _ => Value::Null,
                    }
                }
                Field::Traceparent => opt(&self.traceparent),
                Field::DownstreamAddress => opt(&self.downstream_address),
                Field::SourceService => opt(&self.source_service),
                Field::Authority => self.authority.clone().map_or(Value::Null, Value::String),
                Field::UserAgent => self.user_agent.clone().map_or(Value::Null, Value::String),
            };
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(f.name());
            out.push_str("\":");
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

/// `2026-12-06T19:18:44.123Z` (gateway/accesslog.py `_iso`), from the civil-from-days algorithm
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn iso(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_584_724_123);
        assert_eq!(iso(t), "2026-12-06T19:18:44.123Z");
        assert_eq!(iso(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn record_has_the_fields_in_order_with_python_names() {
        let ex = Exchange {
            started: Some(Instant::now()),
            listener: "inbound".into(),
            method: "GET".into(),
            path: "/a?b".into(),
            version: "1.1",
            status: 403,
            flags: "RBAC",
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ..Exchange::default()
        };
        let fields: Vec<Field> = [
            "status",
            "response_flags",
            "trace_id",
            "upstream_cluster",
            "method",
        ]
        .iter()
        .filter_map(|n| Field::parse(n))
        .collect();
        assert_eq!(
            ex.record(&fields),
            r#"{"status":403,"response_flags":"RBAC","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","upstream_cluster":null,"method":"GET"}"#
        );
    }

    #[test]
    fn defaults_are_all_known() {
        assert_eq!(Field::defaults().len(), DEFAULTS.len());
    }
}
