//! Header work of the inbound hop, ported from gateway/http/headers.py `render_request_head` /
//! `render_response_head`: hop-by-hop fields removed (RFC 9110 §7.6.1, l7-security.md §6.19) with the
//! `Connection` nominations `http_head` accepted, `X-Forwarded-For` (and an incoming `Forwarded`) extended with
//! the caller, `x-request-id` kept or made, a new `traceparent` span. Framing is hyper's on each side. The field
//! rules themselves are shared with the outbound path (crate::http::forwarding).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use meshgw_proto::http_head::HeaderVerdict;

use crate::http::forwarding::{
    append, append_named, extend_forwarding, is_hop_by_hop, join, new_traceparent, request_id,
    strip_hop_by_hop, FORWARDED, TRACEPARENT, X_FORWARDED_FOR, X_REQUEST_ID,
};

/// What the request sent to the app carries for the access log.
pub struct Sent {
    pub headers: HeaderMap,
    pub request_id: HeaderValue,
    pub traceparent: HeaderValue,
}

/// The field a `received` entry was read from; `None` for one made here (HTTP/2's `:authority` as `host`).
pub type Typed<'a> = Option<(&'a HeaderName, &'a HeaderValue)>;

/// The request headers for the app. `received` is the list given to `check_request_headers` (same order, so
/// `verdict.drop` indexes it), `typed` the fields beside it (same length, or empty: each name parsed again);
/// `authority` replaces `Host` for an absolute-form target (l7-security.md §6.17).
pub fn request(
    received: &[(&str, &[u8])],
    typed: &[Typed<'_>],
    verdict: &HeaderVerdict,
    authority: Option<&str>,
    client_ip: &str,
    websocket: bool,
) -> Sent {
    let mut out = HeaderMap::with_capacity(received.len() + 4);
    let mut xff: Vec<u8> = Vec::new();
    let mut fwd: Vec<u8> = Vec::new();
    let mut trace: Option<&[u8]> = None;
    let mut incoming_id: Option<HeaderValue> = None;
    for (i, (name, value)) in received.iter().enumerate() {
        if verdict.drop.contains(&i) {
            continue; // DROP_HEADER: gone before anything looks at it (l7-security.md §6.18)
        }
        match *name {
            "upgrade" if websocket => {}
            // A `TE` of only `trailers` goes on as it is (http_head decides; gRPC needs it, RFC 9113 §8.2.2).
            "te" if !verdict.strip.contains("te") => {}
            n if is_hop_by_hop(n) || verdict.strip.contains(n) => continue,
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
            // The first non-empty one is the caller's id (an empty one is relayed as it is).
            "x-request-id" if incoming_id.is_none() && !value.is_empty() => {
                incoming_id = match typed.get(i) {
                    Some(Some((_, v))) => Some((*v).clone()),
                    _ => HeaderValue::from_bytes(value).ok(),
                };
            }
            _ => {}
        }
        match typed.get(i) {
            Some(Some((n, v))) => {
                out.append((*n).clone(), (*v).clone());
            }
            _ => append(&mut out, name, value),
        }
    }
    if let Some(a) = authority {
        append(&mut out, "host", a.as_bytes());
    }
    let has_fwd = !fwd.is_empty();
    extend_forwarding(&mut xff, has_fwd.then_some(&mut fwd), client_ip);
    if !xff.is_empty() {
        append_named(&mut out, &X_FORWARDED_FOR, &xff);
    }
    if !fwd.is_empty() {
        append_named(&mut out, &FORWARDED, &fwd);
    }
    let (request_id, made) = request_id(incoming_id.as_ref());
    if made {
        out.append(X_REQUEST_ID.clone(), request_id.clone());
    }
    let traceparent = new_traceparent(trace);
    out.append(TRACEPARENT.clone(), traceparent.clone());
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
/// (RFC 9112 §6.3; inbound only: hyper frames the body again for the caller).
pub fn response(headers: &mut HeaderMap, switching: bool) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers, switching);
    if switching {
        headers.insert("connection", HeaderValue::from_static("upgrade"));
    }
}

/// A websocket upgrade, the only kind Consul configures (`upgrade_configs [websocket]`, l7-security.md §0).
/// `fields` are (lower-case name, value) pairs: the checked list, or a request's header map as it came.
pub fn is_websocket<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    let (mut upgrade, mut connection) = (false, false);
    for (n, v) in fields {
        match n {
            "upgrade" => upgrade |= v.trim_ascii().eq_ignore_ascii_case(b"websocket"),
            "connection" => {
                connection |= v
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
            }
            _ => {}
        }
    }
    upgrade && connection
}

#[cfg(test)]
#[path = "headers_test.rs"]
mod tests;
