//! HTTP pieces the inbound and the outbound stacks share: forwarding headers (`forwarding`) and access-log
//! records (`accesslog`), ported once from gateway/http/headers.py and gateway/accesslog.py.

pub mod accesslog;
pub mod forwarding;
