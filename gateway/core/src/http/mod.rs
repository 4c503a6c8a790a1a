//! HTTP pieces the inbound and the outbound stacks share: forwarding headers (`forwarding`), access-log
//! records (`accesslog`), ported once from gateway/http/headers.py and gateway/accesslog.py; the codec choice
//! of a connection (`sniff`), HTTP/2 settings and abuse accounting (`h2`), the client hops driven by the request's
//! own task (`h1_client`, `h2_client`) and the body they bring back (`upstream_body`), and gRPC's view of local
//! answers (`grpc`).

pub mod accesslog;
pub mod forwarding;
pub mod grpc;
pub mod h1_client;
pub mod h2;
pub mod h2_client;
pub mod sniff;
pub mod upstream_body;

/// The error of a body either stack hands hyper: whatever the inner body's was, or a timeout of its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
