//! shovel's native storage client.
//!
//! [`store`] is the pure-tokio core (testable with `cargo test`, no Python involved);
//! [`runtime`] owns the dedicated runtime thread; `client` (with the `python` feature) is the
//! PyO3 boundary exposed as `shovel._native`.

pub mod buffers;
pub mod fskind;
pub mod runtime;
pub mod split;
pub mod store;

#[cfg(feature = "python")]
mod client;
#[cfg(feature = "python")]
mod reading;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// The `shovel._native` extension module.
#[cfg(feature = "python")]
#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    client::register(m)
}
