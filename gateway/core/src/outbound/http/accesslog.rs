//! Access-log records of the outbound HTTP path: one JSON line per finished request, with the fields the config
//! names, as gateway/accesslog.py `record` wrote them (Envoy's operators as Consul's default JSON format uses
//! them, C:agent/xds/accesslogs/accesslogs.go). Python writes the lines (Shared::take_access).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[derive(Default)]
pub struct Record {
    pub listener: String,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
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
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// `2026-01-02T03:04:05.678Z` (accesslog.py `_iso`), without a date library: civil-from-days (H. Hinnant).
pub fn iso(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
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

pub fn render(fields: &[String], r: &Record, started: Instant, start_wall: SystemTime) -> String {
    let elapsed = started.elapsed();
    // Built by hand to keep the configured field order (serde_json's Map sorts its keys).
    let mut out = String::from("{");
    for f in fields {
        let v = match f.as_str() {
            "start_time" => Value::String(iso(start_wall)),
            "listener" => Value::String(r.listener.clone()),
            "method" => Value::String(r.method.clone()),
            "path" => Value::String(r.path.clone()),
            "protocol" => Value::String(r.protocol.to_string()),
            "status" => Value::from(r.status),
            "response_flags" => {
                Value::String(if r.flags.is_empty() { "-" } else { r.flags }.to_string())
            }
            "bytes_received" => Value::from(r.bytes_received),
            "bytes_sent" => Value::from(r.bytes_sent),
            "duration_ms" => ms(elapsed),
            "upstream_service_time_ms" => r.upstream_service_time.map_or(Value::Null, ms),
            "upstream_cluster" => opt(&r.cluster),
            "upstream_host" => opt(&r.host),
            "route" => opt(&r.route),
            "retries" => Value::from(r.retries),
            "request_id" => opt(&r.request_id),
            "trace_id" => {
                let parts: Vec<&str> = r.traceparent.split('-').collect();
                if parts.len() >= 4 {
                    Value::String(parts[1].to_string())
                } else {
                    Value::Null
                }
            }
            "traceparent" => opt(&r.traceparent),
            "downstream_address" => opt(&r.downstream_address),
            "source_service" => opt(&r.source),
            "authority" => r.authority.clone().map_or(Value::Null, Value::String),
            "user_agent" => r.user_agent.clone().map_or(Value::Null, Value::String),
            _ => continue,
        };
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Value::String(f.clone()).to_string());
        out.push(':');
        out.push_str(&v.to_string());
    }
    out.push('}');
    out
}

fn ms(d: Duration) -> Value {
    Value::from((d.as_secs_f64() * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(iso(t), "2024-02-29T23:59:59.123Z");
    }

    #[test]
    fn fields() {
        let r = Record {
            status: 503,
            flags: "UO",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ..Record::default()
        };
        let line = render(
            &[
                "status".into(),
                "response_flags".into(),
                "trace_id".into(),
                "upstream_cluster".into(),
            ],
            &r,
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(
            line,
            r#"{"status":503,"response_flags":"UO","trace_id":"0af7651916cd43dd8448eb211c80319c","upstream_cluster":null}"#
        );
    }
}
