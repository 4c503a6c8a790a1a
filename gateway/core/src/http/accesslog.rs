//! Access-log records of both HTTP stacks: one JSON object per finished exchange with the fields and names of
//! gateway/accesslog.py `AccessLog.record` (Envoy's operators as Consul's default JSON format names them,
//! C:agent/xds/accesslogs/accesslogs.go), in the configured order. Python drains them (`Shared::take_access`)
//! and writes them as they are. Each stack fills a `Record` its own way; `render` is the one renderer.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    GrpcStatus,
}

const NAMES: [(&str, Field); 23] = [
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
    ("grpc_status", Field::GrpcStatus),
];

/// The fields a record has when the configuration names none. Python's configuration takes this list and
/// `NAMES` from here (`gateway._core.access_log_fields()`), so the two sides cannot drift: they had (this list
/// had lost `traceparent` and `downstream_address`).
pub const DEFAULTS: [&str; 19] = [
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
    "traceparent",
    "downstream_address",
    "source_service",
];

/// Every field name, in the order the README lists them.
pub fn names() -> Vec<&'static str> {
    NAMES.iter().map(|(n, _)| *n).collect()
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        NAMES.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
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

/// What a finished exchange says in its record.
#[derive(Default, Debug)]
pub struct Record {
    pub listener: String,
    pub method: String,
    pub path: String,
    /// `HTTP/1.1`, ...
    pub protocol: Cow<'static, str>,
    pub status: u16,
    pub flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_service_time: Option<Duration>,
    pub cluster: String,
    pub host: String,
    pub route: String,
    pub retries: u32,
    pub request_id: String,
    pub traceparent: String,
    pub downstream_address: String,
    pub source: String,
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    /// A gRPC call's status (head of a trailers-only answer, else trailers); None otherwise.
    pub grpc_status: Option<u32>,
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

fn ms(d: Duration) -> Value {
    Value::from((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The record's JSON line: `fields` in their order, `elapsed` since the request began at `start_wall`.
pub fn render(
    fields: impl IntoIterator<Item = Field>,
    r: &Record,
    elapsed: Duration,
    start_wall: SystemTime,
) -> String {
    // Built by hand to keep the configured field order (serde_json's Map sorts its keys without
    // `preserve_order`).
    let mut out = String::from("{");
    for f in fields {
        let v = match f {
            Field::StartTime => Value::String(iso(start_wall)),
            Field::Listener => Value::String(r.listener.clone()),
            Field::Method => Value::String(r.method.clone()),
            Field::Path => Value::String(r.path.clone()),
            Field::Protocol => Value::String(r.protocol.clone().into_owned()),
            Field::Status => Value::from(r.status),
            Field::ResponseFlags => {
                Value::String(if r.flags.is_empty() { "-" } else { r.flags }.to_owned())
            }
            Field::BytesReceived => Value::from(r.bytes_received),
            Field::BytesSent => Value::from(r.bytes_sent),
            Field::DurationMs => ms(elapsed),
            Field::UpstreamServiceTimeMs => r.upstream_service_time.map_or(Value::Null, ms),
            Field::UpstreamCluster => opt(&r.cluster),
            Field::UpstreamHost => opt(&r.host),
            Field::Route => opt(&r.route),
            Field::Retries => Value::from(r.retries),
            Field::RequestId => opt(&r.request_id),
            Field::TraceId => {
                let parts: Vec<&str> = r.traceparent.split('-').collect();
                match parts.get(1) {
                    Some(id) if parts.len() >= 4 => Value::String((*id).to_owned()),
                    _ => Value::Null,
                }
            }
            Field::Traceparent => opt(&r.traceparent),
            Field::DownstreamAddress => opt(&r.downstream_address),
            Field::SourceService => opt(&r.source),
            Field::Authority => r.authority.clone().map_or(Value::Null, Value::String),
            Field::UserAgent => r.user_agent.clone().map_or(Value::Null, Value::String),
            Field::GrpcStatus => r.grpc_status.map_or(Value::Null, Value::from),
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

/// `2026-12-06T19:18:44.123Z` (gateway/accesslog.py `_iso`), from the civil-from-days algorithm
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
pub fn iso(t: SystemTime) -> String {
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
