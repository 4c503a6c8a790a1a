//! Header work of the inbound hop, ported from gateway/http/headers.py `render_request_head` /
//! `render_response_head`: hop-by-hop fields removed (RFC 9110 §7.6.1, l7-security.md §6.19) with the
//! `Connection` nominations `http_head` accepted, `X-Forwarded-For` (and an incoming `Forwarded`) extended with
//! the caller, `x-request-id` kept or made, a new `traceparent` span. Framing is hyper's on each side. The field
//! rules themselves are shared with the outbound path (crate::http::forwarding).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use meshgw_proto::http_head::HeaderVerdict;

use crate::http::forwarding::{
    append, append_named, extend_forwarding, is_hop_by_hop, join, lossy, new_request_id,
    new_traceparent, strip_hop_by_hop, FORWARDED, TRACEPARENT, X_FORWARDED_FOR, X_REQUEST_ID,
};

/// The request head for the app.
pub struct Sent {
    pub headers: HeaderMap,
}

impl Sent {
    /// The request's id for the access log: the caller's first non-empty one, or the one made here.
    pub fn request_id(&self) -> String {
        let id = self
            .headers
            .get_all(&X_REQUEST_ID)
            .iter()
            .find(|v| !v.is_empty());
        id.map(lossy).unwrap_or_default()
    }

    /// The traceparent with this hop's span, for the access log.
    pub fn traceparent(&self) -> String {
        self.headers
            .get(&TRACEPARENT)
            .map(lossy)
            .unwrap_or_default()
    }
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
    let mut has_id = false;
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
            "x-request-id" if !value.is_empty() => has_id = true,
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
    // The values made here go into the head only: a clone of one costs an allocation (bytes promotes it).
    if !has_id {
        out.append(X_REQUEST_ID.clone(), new_request_id());
    }
    out.append(TRACEPARENT.clone(), new_traceparent(trace));
    if verdict.te_trailers {
        append(&mut out, "te", b"trailers");
    }
    if websocket {
        append(&mut out, "connection", b"upgrade");
    }
    Sent { headers: out }
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
