//! meshgw's data-plane core, the Python extension `gateway._core` (design.md: "Python compiles, the core decides
//! and carries"). Only this file and the `py_*` modules touch Python; the rest is plain Rust on tokio.

use pyo3::prelude::*;

pub mod cluster;
mod driver_wake;
pub mod gateways;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod policy;
mod py_core;
mod py_intentions;
pub mod relay;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod tls;
pub mod tls_tickets;

/// Rust-side allocations (the whole data plane) go through mimalloc; Python keeps its own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The access log's field names and its default selection: the one list both sides use
/// (gateway/config/http.py takes them from here).
#[pyfunction]
fn access_log_fields() -> (Vec<&'static str>, Vec<&'static str>) {
    (http::accesslog::names(), http::accesslog::DEFAULTS.to_vec())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The checksum of the PGO profile this crate was compiled with (gateway/core/pgo/rustc-pgo sets it when it
    // applies one), empty without: what the build is, for the admin port and the benches' reports.
    m.add(
        "__pgo_profile__",
        option_env!("MESHGW_PGO_PROFILE").unwrap_or(""),
    )?;
    m.add_class::<py_core::Core>()?;
    m.add_function(wrap_pyfunction!(py_core::check_origination, m)?)?;
    m.add_function(wrap_pyfunction!(access_log_fields, m)?)?;
    py_intentions::register(m)?;
    Ok(())
}
