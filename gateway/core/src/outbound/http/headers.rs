//! Header work of the outbound HTTP path (gateway/http/headers.py): hop-by-hop fields removed both ways (RFC
//! 9110 §7.6.1, plus the ones Envoy and HAProxy strip), the route's and split's header rules, X-Forwarded-For
//! (and an incoming Forwarded) extended with the client, x-request-id kept or made (UUID v4, as Envoy), and a
//! W3C traceparent with a new span id per hop.

use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::HeaderMap;

use super::rng;
use super::spec::HeaderRulesSpec;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Header changes compiled once per snapshot: names to drop, then fields to add.
#[derive(Default, Debug, Clone)]
pub struct HeaderRules {
    pub drop: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    pub fn compile(s: &HeaderRulesSpec) -> Result<HeaderRules, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("header rules: {n:?} is not a header name"))
        };
        Ok(HeaderRules {
            drop: s.drop.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            add: s
                .add
                .iter()
                .map(|(n, v)| {
                    Ok((
                        name(n)?,
                        HeaderValue::from_str(v)
                            .map_err(|_| format!("header rules: bad value for {n}"))?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.drop {
            h.remove(n);
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.add.is_empty()
    }
}

/// Hop-by-hop fields and those the Connection field names (RFC 9110 §7.6.1).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| {
            let t = t.trim_ascii();
            (!t.is_empty())
                .then(|| HeaderName::from_bytes(&t.to_ascii_lowercase()).ok())
                .flatten()
        })
        .collect();
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    for n in named {
        // Never the framing or the target (the Python proxy keeps those too).
        if n != http::header::HOST && n != http::header::CONTENT_LENGTH {
            h.remove(n);
        }
    }
}

/// What the access log says was sent: (x-request-id, traceparent).
pub struct Sent {
    pub request_id: String,
    pub traceparent: String,
}

/// The request head as it goes upstream (headers.py render_request_head).
pub fn forward_request(h: &mut HeaderMap, client_ip: &str, rules: &HeaderRules) -> Sent {
    strip_hop_by_hop(h);
    let join = |h: &HeaderMap, n: &str| -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for v in h.get_all(n) {
            let v = v.as_bytes().trim_ascii();
            match &mut out {
                None => out = Some(v.to_vec()),
                Some(o) => {
                    o.extend_from_slice(b", ");
                    o.extend_from_slice(v);
                }
            }
        }
        out
    };
    let xff = join(h, "x-forwarded-for");
    let fwd = join(h, "forwarded");
    let incoming_trace = h.get("traceparent").map(|v| v.as_bytes().to_vec());
    h.remove("x-forwarded-for");
    h.remove("forwarded");
    h.remove("traceparent");
    rules.apply(h);
    let mut xff = xff.unwrap_or_default();
    let mut fwd = fwd;
    if !client_ip.is_empty() {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(client_ip.as_bytes());
        if let Some(f) = &mut fwd {
            // RFC 7239 §6: an IPv6 node is quoted and bracketed.
            let node = if client_ip.contains(':') {
                format!("for=\"[{client_ip}]\"")
            } else {
                format!("for={client_ip}")
            };
            f.extend_from_slice(b", ");
            f.extend_from_slice(node.as_bytes());
        }
    }
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        if !xff.is_empty() {
            h.insert("x-forwarded-for", v);
        }
    }
    if let Some(Ok(v)) = fwd.as_deref().map(HeaderValue::from_bytes) {
        h.insert("forwarded", v);
    }
    let request_id = match h.get("x-request-id").filter(|v| !v.is_empty()) {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => {
            let id = new_request_id();
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert("x-request-id", v);
            }
            id
        }
    };
    let traceparent = new_trace_parent(incoming_trace.as_deref());
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        h.insert("traceparent", v);
    }
    Sent {
        request_id,
        traceparent,
    }
}

/// The response head as it goes downstream: hop-by-hop removed, the split's response rules applied.
pub fn forward_response(h: &mut HeaderMap, rules: &HeaderRules) {
    strip_hop_by_hop(h);
    rules.apply(h);
}

/// A UUID version 4 (RFC 9562 §5.4) as Envoy generates for x-request-id.
pub fn new_request_id() -> String {
    let mut n = (u128::from(rng::u64()) << 64) | u128::from(rng::u64());
    n = (n & !(0xF << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// W3C trace context: keep the trace id and flags, a new span id per hop; start a trace when none arrives.
pub fn new_trace_parent(incoming: Option<&[u8]>) -> String {
    let span = format!("{:016x}", rng::u64().max(1)); // all-zero ids are invalid (trace-context §3.2.2.4)
    if let Some(inc) = incoming {
        let s = String::from_utf8_lossy(inc.trim_ascii()).into_owned();
        let parts: Vec<&str> = s.split('-').collect();
        let hex = |x: &str| x.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.len() >= 4
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1] != "0".repeat(32)
            && hex(parts[0])
            && hex(parts[1])
        {
            let flags: String = parts[3].chars().take(2).collect();
            return format!("{}-{}-{span}-{flags}", parts[0], parts[1]);
        }
    }
    let trace = (u128::from(rng::u64()) << 64 | u128::from(rng::u64())).max(1);
    format!("00-{trace:032x}-{span}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        h.insert("x-drop", "a".parse().unwrap());
        let rules = HeaderRules::compile(&HeaderRulesSpec {
            drop: vec!["X-Drop".into()],
            add: vec![("x-add".into(), "v".into())],
        })
        .unwrap();
        let sent = forward_request(&mut h, "127.0.0.1", &rules);
        assert!(
            h.get("connection").is_none() && h.get("x-secret").is_none() && h.get("te").is_none()
        );
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 2.2.2.2, 127.0.0.1"
        );
        assert!(h.get("x-drop").is_none());
        assert_eq!(h.get("x-add").unwrap(), "v");
        assert_eq!(sent.request_id.len(), 36);
        assert_eq!(&sent.request_id[14..15], "4");
        assert!(sent
            .traceparent
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(sent.traceparent.ends_with("-01"));
        assert_ne!(&sent.traceparent[36..52], "b7ad6b7169203331");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc".parse().unwrap());
        let sent = forward_request(&mut h, "::1", &HeaderRules::default());
        assert_eq!(sent.request_id, "abc");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
        assert_eq!(sent.traceparent.len(), 55);
    }
}
