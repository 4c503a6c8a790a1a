//! HTTP pieces the inbound and the outbound stacks share: forwarding headers (`forwarding`), access-log
//! records (`accesslog`), ported once from gateway/http/headers.py and gateway/accesslog.py; the codec choice
//! of a connection (`sniff`), HTTP/2 settings and abuse accounting (`h2`), the client hops driven by the request's
//! own task (`h1_client`, `h2_client`), the fields they keep out of HPACK tables (`hpack`), the body they bring
//! back (`upstream_body`), and gRPC's view of local answers (`grpc`).

pub mod accesslog;
pub mod forwarding;
pub mod grpc;
pub mod h1_client;
pub mod h2;
pub mod h2_client;
pub mod hpack;
pub mod sniff;
pub mod upstream_body;

/// Every `content-length` value of a head, read once for both client hops by meshgw-proto's rule (plain
/// digits; repeated values, as fields or a list, must agree): Ok(None) when there is none.
pub fn content_length(h: &http::HeaderMap) -> Result<Option<u64>, &'static str> {
    meshgw_proto::h1_response::content_length(
        h.get_all(http::header::CONTENT_LENGTH)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// The error of a body either stack hands hyper: whatever the inner body's was, or a timeout of its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
