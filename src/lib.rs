//! execgate: action-level authorization for AI agents.
//!
//! [`core`] is the pure Rust engine; [`python`] is the pyo3 binding compiled
//! into `execgate._core`.

pub mod core;
pub mod python;

use pyo3::prelude::*;

/// The extension module `execgate._core`.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<python::gate::PyGate>()?;
    m.add_class::<python::gate::PyDecision>()?;
    Ok(())
}
