//! HTTP pieces the inbound and the outbound stacks share: forwarding headers (`forwarding`), ported once from
//! gateway/http/headers.py.

pub mod forwarding;
