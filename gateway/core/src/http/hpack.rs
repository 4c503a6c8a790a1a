//! Which fields an HTTP/2 hop sends "never indexed" (RFC 7541 §6.2.3), keeping them out of the peer's HPACK
//! table. The `h2` encoder indexes every other field it can, and it finds a field's entry by walking every
//! entry of the same name and comparing values: a value that changes keeps adding entries to walk, and each
//! insertion evicts older entries, whose fields then go out as literals again. HAProxy indexes no field at all;
//! meshgw keeps indexing the fields that repeat and spares the table the ones that do not:
//!
//! - `x-request-id` and `traceparent` are made for one request. They go out never indexed, except on the
//!   connection's first request, which puts the two names in the table for later requests to refer to (the
//!   encoder names a never-indexed field by an entry of the same name when there is one).
//! - `date` stays indexable. It changes every second, so a long-running connection's table fills with dates
//!   that each answer's lookup walks; but sent never indexed it costs a Huffman-coded literal on every answer,
//!   and that measured worse: 17.75 against 17.39 µs CPU per request through a fresh h2 pair (3 alternated
//!   rounds), while after a minute of load the two were within noise of each other.
//!
//! The receiving end decodes both forms alike; the flag only asks intermediaries not to index the field either.

use http::header::HeaderMap;

use super::forwarding::{TRACEPARENT, X_REQUEST_ID};

/// Marks a request's per-request fields: `named` once the connection has sent them indexed. Says whether the
/// request carried either (and so named them, if it was the first).
pub fn per_request(headers: &mut HeaderMap, named: bool) -> bool {
    let mut carried = false;
    for name in [&X_REQUEST_ID, &TRACEPARENT] {
        if let Some(v) = headers.get_mut(name) {
            v.set_sensitive(named);
            carried = true;
        }
    }
    carried
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn per_request_fields_are_named_once_then_never_indexed() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("id"));
        h.insert(&TRACEPARENT, HeaderValue::from_static("tp"));
        h.insert("x-other", HeaderValue::from_static("v"));
        assert!(per_request(&mut h, false));
        assert!(!h[&X_REQUEST_ID].is_sensitive() && !h[&TRACEPARENT].is_sensitive());
        assert!(per_request(&mut h, true));
        assert!(h[&X_REQUEST_ID].is_sensitive() && h[&TRACEPARENT].is_sensitive());
        assert!(!h["x-other"].is_sensitive());
        assert!(!per_request(&mut HeaderMap::new(), false));
    }
}
