//! Header work of the outbound HTTP path (gateway/http/headers.py): hop-by-hop fields removed both ways (RFC
//! 9110 §7.6.1, plus the ones Envoy and HAProxy strip), the route's and split's header rules, X-Forwarded-For
//! (and an incoming Forwarded) extended with the client, x-request-id kept or made (UUID v4, as Envoy), and a
//! W3C traceparent with a new span id per hop. The field rules are shared with the inbound hop
//! (crate::http::forwarding); the route's and split's header rules are this path's own.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::spec::HeaderRulesSpec;
use crate::http::forwarding::{
    extend_forwarding, join, new_request_id, new_traceparent, strip_hop_by_hop, FORWARDED,
    TRACEPARENT, X_FORWARDED_FOR, X_REQUEST_ID,
};

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

/// What the access log says was sent: (x-request-id, traceparent).
/// The request head as it goes upstream (headers.py render_request_head).
pub fn forward_request(h: &mut HeaderMap, client_ip: &str, rules: &HeaderRules) {
    // `TE: trailers` is the one TE a proxy keeps (RFC 9113 §8.2.2; gRPC needs it end to end, and Envoy keeps it,
    // http2-grpc.md §5.5); any other TE goes with the hop-by-hop fields.
    let te_trailers = h.get_all(http::header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    strip_hop_by_hop(h, false);
    if te_trailers {
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let joined = |h: &HeaderMap, n: &HeaderName| -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for v in h.get_all(n) {
            join(out.get_or_insert_with(Vec::new), v.as_bytes().trim_ascii());
        }
        out
    };
    let mut xff = joined(h, &X_FORWARDED_FOR).unwrap_or_default();
    let mut fwd = joined(h, &FORWARDED);
    let incoming_trace = h.remove(&TRACEPARENT);
    h.remove(&X_FORWARDED_FOR);
    h.remove(&FORWARDED);
    rules.apply(h);
    extend_forwarding(&mut xff, fwd.as_mut(), client_ip);
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        if !xff.is_empty() {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    if let Some(Ok(v)) = fwd.as_deref().map(HeaderValue::from_bytes) {
        h.insert(FORWARDED.clone(), v);
    }
    // Left in the head only: a clone of a made value costs an allocation (bytes promotes it to shared).
    if h.get(&X_REQUEST_ID).is_none_or(HeaderValue::is_empty) {
        h.insert(X_REQUEST_ID.clone(), new_request_id());
    }
    let traceparent = new_traceparent(incoming_trace.as_ref().map(HeaderValue::as_bytes));
    h.insert(TRACEPARENT.clone(), traceparent);
}

/// The response head as it goes downstream: hop-by-hop removed (an outbound response never keeps `Upgrade`:
/// this path relays no upgrade), the split's response rules applied.
pub fn forward_response(h: &mut HeaderMap, rules: &HeaderRules) {
    strip_hop_by_hop(h, false);
    rules.apply(h);
}

#[cfg(test)]
#[path = "headers_test.rs"]
mod tests;
