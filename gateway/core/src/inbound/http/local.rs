//! Answers made by the proxy itself, shaped as Envoy's `sendLocalReply` (`E:source/common/http/utility.cc`,
//! l7-security.md §4): a text body with `content-type: text/plain` when there is one, none (and no
//! content-type) for the empty ones (400/404/426/307); a HEAD gets the same headers and never a body.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{Response, StatusCode};

use super::body::RespBody;

/// RBAC deny (`E:source/extensions/filters/http/rbac/rbac_filter.cc`, l7-security.md §2.3, §6.15): 19 bytes.
pub const RBAC_DENIED: &str = "RBAC: access denied";
/// Envoy's route-timeout answer (l7-security.md §4 †).
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
/// Envoy's answer when the app cannot be reached / reset before its response head.
pub const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
pub const CONNECTION_TERMINATION: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// Envoy's stream idle timeout answer before the response head (l7-security.md §4: 408).
pub const STREAM_TIMEOUT: &str = "stream timeout";
/// The Python path's answer to a response hyper could not parse.
pub const BAD_RESPONSE: &str = "upstream sent a malformed response";

/// A local answer; `close` adds `connection: close` (hyper then closes after writing it).
pub fn answer(
    status: StatusCode,
    text: &'static str,
    head: bool,
    close: bool,
) -> Response<RespBody> {
    let body = if text.is_empty() || head {
        RespBody::empty()
    } else {
        RespBody::full(Bytes::from_static(text.as_bytes()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if !text.is_empty() {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        // Set here: a HEAD answer carries the length of the body it does not send (l7-security.md §6.15).
        h.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The same answer to a gRPC request: trailers-only, `grpc-status` from the HTTP status (`http::grpc`). A
/// HEAD cannot be gRPC (always POST), so there is never a body to leave out.
pub fn grpc_answer(status: StatusCode, text: &'static str, close: bool) -> Response<RespBody> {
    let mut r = Response::new(RespBody::empty());
    *r.headers_mut() = crate::http::grpc::local_reply_headers(status.as_u16(), text);
    if close {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// UNESCAPE_AND_REDIRECT (l7-security.md §1.2 step 2): 307 to the final path and query, no body.
pub fn redirect(location: &str) -> Response<RespBody> {
    let mut r = answer(StatusCode::TEMPORARY_REDIRECT, "", false, false);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}
