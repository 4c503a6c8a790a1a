//! gRPC's view of the proxy's own answers (http2-grpc.md §3, §5.7). A request whose `content-type` is
//! `application/grpc` or `application/grpc+…` (gRPC-Web is not gRPC: `E:source/common/grpc/common.cc`
//! `hasGrpcContentType`) gets every local answer as Envoy's `prepareLocalReply` makes it: trailers-only, one
//! HEADERS frame with END_STREAM, `:status 200`, `content-type: application/grpc`, `grpc-status` mapped from the
//! HTTP status and `grpc-message` the answer's text (`E:source/common/http/utility.cc`), so a denied call is
//! PERMISSION_DENIED to the client, not a transport error.

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

/// gRPC status codes (`G:doc/statuscodes.md`).
pub const CANCELLED: u32 = 1;
pub const UNKNOWN: u32 = 2;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc" || v.starts_with(b"application/grpc+")
    })
}

/// `E:source/common/grpc/status.cc` `httpToGrpcStatus`.
pub fn status_for_http(status: u16) -> u32 {
    match status {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The headers of a trailers-only answer standing for the local HTTP answer `status` with body `text`.
pub fn local_reply_headers(status: u16, text: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(3);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(status_for_http(status)));
    if !text.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(text)) {
            h.insert("grpc-message", v);
        }
    }
    h
}

/// `grpc-message` is percent-encoded outside printable ASCII and `%` (`G:doc/PROTOCOL-HTTP2.md`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `meshgw_grpc_responses_total{listener,grpc_status}`: gRPC calls by the status they ended with (the
/// response head of a trailers-only answer, else the trailers), every code's series made with the plan.
#[derive(Clone, Default)]
pub struct GrpcStats(Vec<crate::stats::Counter>);

/// gRPC defines codes 0..=16 (`G:doc/statuscodes.md`).
const CODES: usize = 17;

impl GrpcStats {
    pub fn new(shared: &crate::state::Shared, listener: &str) -> GrpcStats {
        GrpcStats(
            (0..CODES)
                .map(|c| {
                    shared.stats.counter(
                        "meshgw_grpc_responses_total",
                        &[("listener", listener), ("grpc_status", &c.to_string())],
                    )
                })
                .collect(),
        )
    }

    /// A code outside 0..=16 is counted as UNKNOWN, as gRPC clients read it.
    pub fn count(&self, status: u32) {
        let i = usize::try_from(status)
            .ok()
            .filter(|i| *i < CODES)
            .unwrap_or(UNKNOWN as usize);
        if let Some(c) = self.0.get(i) {
            c.inc();
        }
    }
}

/// The `grpc-status` a response head or trailers carry, if any.
pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/json", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
    }

    #[test]
    fn deny_is_permission_denied() {
        let h = local_reply_headers(403, "RBAC: access denied");
        assert_eq!(h["grpc-status"], "7");
        assert_eq!(h["grpc-message"], "RBAC: access denied");
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(status_of(&h), Some(PERMISSION_DENIED));
        assert_eq!(status_for_http(503), UNAVAILABLE);
        assert_eq!(status_for_http(504), UNAVAILABLE);
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
