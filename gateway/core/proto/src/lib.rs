//! Pure wire logic of meshgw's data plane: nothing here does I/O, so every parser can be fuzzed alone and
//! unit-tested without sockets. The core crate (`meshgw-core`, the PyO3 extension `gateway._core`) calls it.

#![forbid(unsafe_code)]

pub mod h1_response;
pub mod h2_frames;
pub mod http_head;
pub mod intentions;
pub mod matchers;
pub mod normalize;
pub mod raw_head;
pub mod sni;
pub mod spiffe;
