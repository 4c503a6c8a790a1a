//! meshgw's data-plane core, the Python extension `gateway._core` (design.md: "Python compiles, the core decides
//! and carries"). Only this file and the `py_*` modules touch Python; the rest is plain Rust.

use pyo3::prelude::*;

mod py_intentions;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py_intentions::register(m)?;
    Ok(())
}
