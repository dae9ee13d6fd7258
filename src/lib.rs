//! execgate: action-level authorization for AI agents.
//!
//! [`core`] is the pure Rust engine; [`python`] is the pyo3 binding compiled
//! into `execgate._core`.

pub mod core;
#[cfg(feature = "python")]
pub mod python;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// Policy evaluation allocates and frees many small values per call; mimalloc
/// is faster at that than the system allocator and scales across threads.
/// It serves Rust allocations only; Python objects keep Python's allocator.
#[cfg(feature = "python")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The extension module `execgate._core`.
#[cfg(feature = "python")]
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<python::gate::PyGate>()?;
    m.add_class::<python::gate::PyDecision>()?;
    m.add_class::<python::gate::PyCall>()?;
    m.add_class::<python::gate::PyCapabilities>()?;
    m.add_class::<python::keys::PySigningKey>()?;
    m.add_class::<python::keys::PyVerifyKey>()?;
    m.add_class::<python::keys::PyReceipt>()?;
    m.add_class::<python::audit::PyAuditLog>()?;
    m.add_class::<python::audit::PyVerifyReport>()?;
    m.add_class::<python::ship::PyLogReader>()?;
    m.add_class::<python::ship::PyChainVerifier>()?;
    m.add_class::<python::bundle::PyBundle>()?;
    m.add_class::<python::bundle::PyBundleKey>()?;
    m.add_function(wrap_pyfunction!(python::bundle::build_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(python::audit::verify, m)?)?;
    m.add_function(wrap_pyfunction!(python::state::rebuild_state, m)?)?;
    m.add_function(wrap_pyfunction!(python::audit::verify_set, m)?)?;
    m.add_function(wrap_pyfunction!(python::sandbox::run_sandboxed, m)?)?;
    m.add_function(wrap_pyfunction!(python::sandbox::private_network, m)?)?;
    m.add_function(wrap_pyfunction!(python::gate::rego_tests, m)?)?;
    m.add_function(wrap_pyfunction!(python::redact::redact, m)?)?;
    m.add_function(wrap_pyfunction!(python::gate::run_rego_test, m)?)?;
    Ok(())
}
