//! Forwarding headers of both HTTP stacks (gateway/http/headers.py): hop-by-hop fields and their `Connection`
//! nominations removed (RFC 9110 §7.6.1, l7-security.md §6.19), `X-Forwarded-For` (and an incoming `Forwarded`)
//! extended with the caller, `x-request-id` kept or made (UUID v4, as Envoy), and a W3C `traceparent` with a new
//! span id per hop.
//!
//! Where the stacks differ on purpose the difference is a parameter or stays with the caller:
//! - `strip_hop_by_hop(.., keep_upgrade)`: only the inbound hop relays a websocket upgrade (its 101 keeps
//!   `Upgrade`); the outbound path never does, and passes `false`.
//! - the inbound request is built from the list `http_head` checked (its drop/strip verdicts index that list),
//!   the outbound one is edited in place in a `HeaderMap` with the route's header rules; both call the pieces
//!   here for the fields themselves.

use std::cell::Cell;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

/// gateway/http/headers.py HOP_BY_HOP: RFC 9110 §7.6.1 plus what every proxy strips (Envoy, HAProxy).
pub const HOP_BY_HOP: [&str; 9] = [
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

/// Whether `name` (lower-case) is in [`HOP_BY_HOP`]: one match on the name instead of nine comparisons.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Names a `Connection` option may never remove: they frame or route the message (envoyproxy/envoy#8623,
/// l7-security.md §4 `Connection: Content-Length`).
const NEVER_NOMINATED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// The same list as names made once: removing by a `&str` parses the name again on every request.
static HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static FORWARDED: HeaderName = http::header::FORWARDED;
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Hop-by-hop fields and those the `Connection` field names, never the framing or the target. With
/// `keep_upgrade` (the inbound hop's 101 to a websocket upgrade) `Upgrade` stays.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them (and so no `Connection` nominations either): one pass over the names
    // present instead of nine removals, each a hash and a probe.
    if !h.keys().any(|k| HOP_BY_HOP_NAMES.contains(k)) {
        return;
    }
    let mut nominated: Vec<HeaderName> = Vec::new();
    for v in h.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            // The usual options (`keep-alive`, `close`, `upgrade`) name no field left to remove: not parsed
            // into a name (an allocation each) to be removed again.
            if token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_bytes()))
            {
                continue;
            }
            // HeaderName::from_bytes lower-cases as it parses (http's `parse_hdr`).
            if let Ok(n) = HeaderName::from_bytes(token) {
                if !NEVER_NOMINATED.contains(&n.as_str()) {
                    nominated.push(n);
                }
            }
        }
    }
    for n in &HOP_BY_HOP_NAMES {
        if !(keep_upgrade && n == http::header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in nominated {
        if !(keep_upgrade && n == http::header::UPGRADE) {
            h.remove(n);
        }
    }
}

/// Appends `v` to a comma-joined field value.
pub fn join(acc: &mut Vec<u8>, v: &[u8]) {
    if !acc.is_empty() {
        acc.extend_from_slice(b", ");
    }
    acc.extend_from_slice(v);
}

/// `X-Forwarded-For` and, when the request came with one, `Forwarded` extended with the caller's address.
pub fn extend_forwarding(xff: &mut Vec<u8>, fwd: Option<&mut Vec<u8>>, client_ip: &str) {
    if client_ip.is_empty() {
        return;
    }
    join(xff, client_ip.as_bytes());
    if let Some(fwd) = fwd {
        // RFC 7239 §6: an IPv6 node is quoted and bracketed.
        let node = if client_ip.contains(':') {
            format!("for=\"[{client_ip}]\"")
        } else {
            format!("for={client_ip}")
        };
        join(fwd, node.as_bytes());
    }
}

/// A field value as the access log writes it.
pub fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
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

/// Lower-case hex of `v`, most significant nibble first, one digit per byte of `out`.
fn hex_into(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> ((n - 1 - i) * 4)) & 0xF) as usize];
    }
}

/// A value made of hex digits and dashes: always a valid field value (the fallback is never taken). The bytes
/// become the value's own, not copied (`len == capacity`: bytes keeps the allocation as it is).
fn made_value(b: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(b))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A UUID version 4 (RFC 9562 §5.4) as Envoy makes for x-request-id.
pub fn new_request_id() -> HeaderValue {
    let hi = (next() & !(0xF << 12)) | (0x4 << 12);
    let lo = (next() & !(0x3 << 62)) | (0x2 << 62);
    let mut s = [b'-'; 36];
    hex_into(&mut s[0..8], hi >> 32);
    hex_into(&mut s[9..13], hi >> 16);
    hex_into(&mut s[14..18], hi);
    hex_into(&mut s[19..23], lo >> 48);
    hex_into(&mut s[24..36], lo);
    made_value(s.to_vec())
}

/// W3C trace context: keep the trace id and flags, new span id per hop; start a trace when none arrives.
pub fn new_traceparent(incoming: Option<&[u8]>) -> HeaderValue {
    let span = next().max(1); // an all-zero id is invalid (W3C trace-context §3.2.2.4)
    if let Some(v) = incoming.map(<[u8]>::trim_ascii) {
        let mut parts = v.split(|&b| b == b'-');
        if let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let hex = |x: &[u8]| x.iter().all(u8::is_ascii_hexdigit);
            // trace-flags is two hex digits (W3C trace-context §3.2.2.5); a later version may append fields.
            let flags = flags.get(..2).filter(|f| hex(f));
            if let (32, 16, true, true, true, Some(flags)) = (
                trace.len(),
                parent.len(),
                hex(trace),
                hex(version),
                trace.iter().any(|&b| b != b'0'),
                flags,
            ) {
                let mut s = Vec::with_capacity(version.len() + 53);
                s.extend_from_slice(version);
                s.push(b'-');
                s.extend_from_slice(trace);
                s.push(b'-');
                let at = s.len();
                s.resize(at + 16, b'0');
                hex_into(&mut s[at..], span);
                s.push(b'-');
                s.extend_from_slice(flags);
                return made_value(s);
            }
        }
    }
    let mut s = *b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
    hex_into(&mut s[3..19], next());
    hex_into(&mut s[19..35], next().max(1));
    hex_into(&mut s[36..52], span);
    made_value(s.to_vec())
}

/// Adds a field; names and values came through hyper's parser or are made here: a failure drops the line,
/// never panics.
pub fn append(out: &mut HeaderMap, name: &str, value: &[u8]) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        out.append(n, v);
    }
}

/// Adds a field under a name made once (no parse of the name per request); a value that cannot be one is dropped.
pub fn append_named(out: &mut HeaderMap, name: &HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        out.append(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_hex(s: &str) -> bool {
        s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn is_hop_by_hop_is_the_list() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in ["host", "content-length", "x-te", "tee", "", "connectionx"] {
            assert!(!is_hop_by_hop(n), "{n}");
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        for _ in 0..100 {
            let id = new_request_id();
            let id = id.to_str().unwrap();
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts.iter().all(|p| is_hex(p)), "{id}");
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8'..=b'b'),
                "variant 10: {id}"
            );
        }
    }

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_span() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = new_traceparent(Some(incoming));
        let t = t.to_str().unwrap();
        assert_eq!(t.len(), 55);
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(t.ends_with("-01"));
        assert_ne!(&t[36..52], "00f067aa0ba902b7");
        assert!(is_hex(&t[36..52]));
        let fresh = new_traceparent(None);
        let fresh = fresh.to_str().unwrap();
        assert_eq!(fresh.len(), 55);
        assert!(fresh.starts_with("00-") && fresh.ends_with("-01"));
        assert!(is_hex(&fresh[3..35]) && is_hex(&fresh[36..52]));
        // Not UTF-8, or a zero trace id: a new trace.
        assert!(new_traceparent(Some(b"\xff\xfe"))
            .as_bytes()
            .starts_with(b"00-"));
        let zero = new_traceparent(Some(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ));
        assert_ne!(&zero.as_bytes()[3..35], b"00000000000000000000000000000000");
        // Flags that are not two hex digits: not a traceparent to continue.
        let bad = new_traceparent(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\x7f1",
        ));
        assert!(!bad
            .as_bytes()
            .starts_with(b"00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(bad.len(), 55);
        // A later version's extra fields are not carried; its trace and flags are.
        let v = new_traceparent(Some(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ));
        assert!(v
            .as_bytes()
            .starts_with(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(v.as_bytes().ends_with(b"-01"));
    }

    #[test]
    fn connection_nominations_go_but_never_framing() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Secret, Content-Length, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(CONNECTION).is_none());
        assert_eq!(
            h.get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
    }
}
