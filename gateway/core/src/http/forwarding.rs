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

/// Names a `Connection` option may never remove: they frame or route the message (envoyproxy/envoy#8623,
/// l7-security.md §4 `Connection: Content-Length`).
const NEVER_NOMINATED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Hop-by-hop fields and those the `Connection` field names, never the framing or the target. With
/// `keep_upgrade` (the inbound hop's 101 to a websocket upgrade) `Upgrade` stays.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let mut nominated: Vec<HeaderName> = Vec::new();
    for v in h.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let t = token.trim_ascii().to_ascii_lowercase();
            if let Ok(n) = HeaderName::from_bytes(&t) {
                if !NEVER_NOMINATED.contains(&n.as_str()) {
                    nominated.push(n);
                }
            }
        }
    }
    for n in HOP_BY_HOP {
        if !(keep_upgrade && n == "upgrade") {
            h.remove(n);
        }
    }
    for n in nominated {
        if !(keep_upgrade && n.as_str() == "upgrade") {
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

/// The request's `x-request-id`: the caller's non-empty one, else a new one (then `true`: the caller adds it).
pub fn request_id(incoming: Option<&[u8]>) -> (String, bool) {
    match incoming.filter(|v| !v.is_empty()) {
        Some(v) => (String::from_utf8_lossy(v).into_owned(), false),
        None => (new_request_id(), true),
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
