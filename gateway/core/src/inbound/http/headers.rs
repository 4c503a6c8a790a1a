//! Header work of the inbound hop, ported from gateway/http/headers.py `render_request_head` /
//! `render_response_head`: hop-by-hop fields removed (RFC 9110 §7.6.1, l7-security.md §6.19) with the
//! `Connection` nominations `http_head` accepted, `X-Forwarded-For` (and an incoming `Forwarded`) extended with
//! the caller, `x-request-id` kept or made, a new `traceparent` span. Framing is hyper's on each side.

use std::cell::Cell;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use meshgw_proto::http_head::HeaderVerdict;

/// gateway/http/headers.py HOP_BY_HOP: RFC 9110 §7.6.1 plus what every proxy strips (Envoy, HAProxy).
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

/// Names a `Connection` option may never remove: they frame or route the message (envoyproxy/envoy#8623,
/// l7-security.md §4 `Connection: Content-Length`).
const NEVER_NOMINATED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// What the request sent to the app carries for the access log.
pub struct Sent {
    pub headers: HeaderMap,
    pub request_id: String,
    pub traceparent: String,
}

/// The request headers for the app. `received` is the list given to `check_request_headers` (same order, so
/// `verdict.drop` indexes it); `authority` replaces `Host` for an absolute-form target (l7-security.md §6.17).
pub fn request(
    received: &[(&str, &[u8])],
    verdict: &HeaderVerdict,
    authority: Option<&str>,
    client_ip: &str,
    websocket: bool,
) -> Sent {
    let mut out = HeaderMap::with_capacity(received.len() + 4);
    let mut xff: Vec<u8> = Vec::new();
    let mut fwd: Vec<u8> = Vec::new();
    let mut trace: Option<&[u8]> = None;
    let mut request_id = String::new();
    for (i, (name, value)) in received.iter().enumerate() {
        if verdict.drop.contains(&i) {
            continue; // DROP_HEADER: gone before anything looks at it (l7-security.md §6.18)
        }
        match *name {
            "upgrade" if websocket => {}
            n if HOP_BY_HOP.contains(&n) || verdict.strip.contains(n) => continue,
            // Envoy answers 100 itself and strips the header (l7-security.md §4); hyper sent the 100.
            "expect" => continue,
            "host" if authority.is_some() => continue,
            "x-forwarded-for" => {
                join(&mut xff, value.trim_ascii());
                continue;
            }
            "forwarded" => {
                join(&mut fwd, value.trim_ascii());
                continue;
            }
            "traceparent" => {
                trace = Some(value);
                continue;
            }
            "x-request-id" if request_id.is_empty() => {
                request_id = String::from_utf8_lossy(value).into_owned();
            }
            _ => {}
        }
        append(&mut out, name, value);
    }
    if let Some(a) = authority {
        append(&mut out, "host", a.as_bytes());
    }
    if !client_ip.is_empty() {
        join(&mut xff, client_ip.as_bytes());
        if !fwd.is_empty() {
            // RFC 7239 §6: an IPv6 node is quoted and bracketed.
            let node = if client_ip.contains(':') {
                format!("for=\"[{client_ip}]\"")
            } else {
                format!("for={client_ip}")
            };
            join(&mut fwd, node.as_bytes());
        }
    }
    if !xff.is_empty() {
        append(&mut out, "x-forwarded-for", &xff);
    }
    if !fwd.is_empty() {
        append(&mut out, "forwarded", &fwd);
    }
    if request_id.is_empty() {
        request_id = new_request_id();
        append(&mut out, "x-request-id", request_id.as_bytes());
    }
    let traceparent = new_traceparent(trace);
    append(&mut out, "traceparent", traceparent.as_bytes());
    if verdict.te_trailers {
        append(&mut out, "te", b"trailers");
    }
    if websocket {
        append(&mut out, "connection", b"upgrade");
    }
    Sent {
        headers: out,
        request_id,
        traceparent,
    }
}

/// The app's response headers for the caller: hop-by-hop fields and their nominations removed (a 101 keeps
/// `Upgrade` and says `Connection: upgrade`); with `Transfer-Encoding` a `Content-Length` beside it goes too
/// (RFC 9112 §6.3). hyper frames the body again.
pub fn response(headers: &mut HeaderMap, switching: bool) {
    let mut nominated: Vec<HeaderName> = Vec::new();
    for v in headers.get_all("connection") {
        for token in v.as_bytes().split(|&b| b == b',') {
            let t = token.trim_ascii().to_ascii_lowercase();
            if let Ok(n) = HeaderName::from_bytes(&t) {
                if !NEVER_NOMINATED.contains(&n.as_str()) {
                    nominated.push(n);
                }
            }
        }
    }
    if headers.contains_key("transfer-encoding") {
        headers.remove("content-length");
    }
    for n in HOP_BY_HOP {
        if !(switching && n == "upgrade") {
            headers.remove(n);
        }
    }
    for n in nominated {
        if !(switching && n.as_str() == "upgrade") {
            headers.remove(n);
        }
    }
    if switching {
        headers.insert("connection", HeaderValue::from_static("upgrade"));
    }
}

/// A websocket upgrade, the only kind Consul configures (`upgrade_configs [websocket]`, l7-security.md §0).
pub fn is_websocket(received: &[(&str, &[u8])]) -> bool {
    let upgrade = received
        .iter()
        .any(|(n, v)| *n == "upgrade" && v.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let conn = received.iter().any(|(n, v)| {
        *n == "connection"
            && v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    upgrade && conn
}

fn join(acc: &mut Vec<u8>, v: &[u8]) {
    if !acc.is_empty() {
        acc.extend_from_slice(b", ");
    }
    acc.extend_from_slice(v);
}

fn append(out: &mut HeaderMap, name: &str, value: &[u8]) {
    // Names and values came through hyper's parser or are made here: a failure drops the line, never panics.
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        out.append(n, v);
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = crate::tls::provider().secure_random.fill(&mut b);
    u64::from_le_bytes(b) | 1
}

/// splitmix64: ids name requests, they guard nothing (gateway/http/headers.py uses the fast PRNG too).
fn next() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A UUID version 4 (RFC 9562 §5.4) as Envoy makes for x-request-id.
pub fn new_request_id() -> String {
    let hi = (next() & !(0xF << 12)) | (0x4 << 12);
    let lo = (next() & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// W3C trace context: keep the trace id and flags, new span id per hop; start a trace when none arrives.
pub fn new_traceparent(incoming: Option<&[u8]>) -> String {
    let span = next().max(1); // an all-zero id is invalid (W3C trace-context §3.2.2.4)
    if let Some(v) = incoming {
        let s = String::from_utf8_lossy(v.trim_ascii()).into_owned();
        let parts: Vec<&str> = s.split('-').collect();
        if let [version, trace, parent, flags, ..] = parts.as_slice() {
            let hex = |x: &str| x.bytes().all(|b| b.is_ascii_hexdigit());
            if trace.len() == 32
                && parent.len() == 16
                && hex(trace)
                && hex(version)
                && *trace != "00000000000000000000000000000000"
                && flags.len() >= 2
            {
                let f = flags.get(..2).unwrap_or("01");
                return format!("{version}-{trace}-{span:016x}-{f}");
            }
        }
    }
    format!("00-{:016x}{:016x}-{span:016x}-01", next(), next().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgw_proto::http_head::check_request_headers;
    use meshgw_proto::normalize::UnderscoreAction;

    fn sent(h: &[(&str, &str)], authority: Option<&str>) -> Sent {
        let raw: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let v = check_request_headers(&raw, UnderscoreAction::DropHeader).unwrap();
        let ws = is_websocket(&raw);
        request(&raw, &v, authority, "10.0.0.9", ws)
    }

    fn get<'a>(s: &'a Sent, n: &str) -> Vec<&'a str> {
        s.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn hop_by_hop_and_nominations_go_framing_stays() {
        let s = sent(
            &[
                ("host", "api"),
                ("connection", "content-length, x-secret, keep-alive"),
                ("content-length", "5"),
                ("x-secret", "s"),
                ("keep-alive", "1"),
                ("proxy-authorization", "p"),
                ("expect", "100-continue"),
                ("x_user", "u"),
            ],
            None,
        );
        assert_eq!(get(&s, "content-length"), ["5"]);
        assert_eq!(get(&s, "host"), ["api"]);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "expect",
            "x_user",
        ] {
            assert!(get(&s, gone).is_empty(), "{gone}");
        }
    }

    #[test]
    fn forwarding_headers() {
        let s = sent(
            &[
                ("host", "api"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("forwarded", "for=1.1.1.1"),
                ("x-request-id", "abc"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
            Some("evil.example"),
        );
        assert_eq!(get(&s, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.9"]);
        assert_eq!(get(&s, "forwarded"), ["for=1.1.1.1, for=10.0.0.9"]);
        assert_eq!(get(&s, "x-request-id"), ["abc"]);
        assert_eq!(get(&s, "host"), ["evil.example"]);
        let tp = get(&s, "traceparent")[0];
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"));
        assert!(!tp.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn made_ids_are_well_formed() {
        let s = sent(&[("host", "api")], None);
        let id = get(&s, "x-request-id")[0];
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        let tp: Vec<&str> = s.traceparent.split('-').collect();
        assert_eq!(
            (tp[0], tp[1].len(), tp[2].len(), tp[3]),
            ("00", 32, 16, "01")
        );
        assert_ne!(
            new_traceparent(Some(b"garbage")),
            new_traceparent(Some(b"garbage"))
        );
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let s = sent(
            &[
                ("host", "api"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ],
            None,
        );
        assert_eq!(get(&s, "upgrade"), ["websocket"]);
        assert_eq!(get(&s, "connection"), ["upgrade"]);
        let s = sent(
            &[
                ("host", "api"),
                ("connection", "Upgrade"),
                ("upgrade", "h2c"),
            ],
            None,
        );
        assert!(get(&s, "upgrade").is_empty() && get(&s, "connection").is_empty());
    }

    #[test]
    fn response_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("x-a, content-length"),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("keep-alive", HeaderValue::from_static("t"));
        response(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-length"));
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-length", HeaderValue::from_static("3"));
        response(&mut h, false);
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        response(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }
}
