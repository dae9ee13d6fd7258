//! `execgate._core.Bundle` and `build_bundle`: OPA-format signed bundles
//! (the format and its checks live in [`crate::core::bundle`]).

use std::path::PathBuf;

use pyo3::prelude::*;

use super::keys::{PySigningKey, PyVerifyKey};
use crate::core::bundle::{self, Bundle};
use crate::core::error::CoreError;

/// A bundle whose signature and file list verified; not yet compiled.
#[pyclass(frozen, name = "Bundle", module = "execgate._core")]
pub struct PyBundle {
    pub(crate) inner: Bundle,
}

#[pymethods]
impl PyBundle {
    /// Reads and verifies the bundle file at `path` with `key`.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf, key: PyRef<'_, PyVerifyKey>) -> PyResult<Self> {
        let key = key.inner.clone();
        let inner = py.detach(|| Bundle::from_file(&path, &key))?;
        Ok(Self { inner })
    }

    /// Verifies a bundle held in memory (for example as downloaded).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: Vec<u8>, key: PyRef<'_, PyVerifyKey>) -> PyResult<Self> {
        let key = key.inner.clone();
        let inner = py.detach(|| Bundle::from_bytes(&data, &key))?;
        Ok(Self { inner })
    }

    /// The manifest's revision ("" without a manifest).
    #[getter]
    fn revision(&self) -> String {
        self.inner.revision.clone()
    }

    /// The manifest's roots.
    #[getter]
    fn roots(&self) -> Vec<String> {
        self.inner.roots.clone()
    }

    fn __repr__(&self) -> String {
        format!("<Bundle revision={:?}>", self.inner.revision)
    }
}

/// Builds a signed bundle from `directory` into `out` (written to a temporary
/// file beside it, then renamed); returns the revision.
#[pyfunction]
#[pyo3(signature = (directory, key, out, revision=None))]
pub fn build_bundle(
    py: Python<'_>,
    directory: PathBuf,
    key: PyRef<'_, PySigningKey>,
    out: PathBuf,
    revision: Option<String>,
) -> PyResult<String> {
    let key = key.inner.clone();
    let revision = py.detach(|| -> Result<String, CoreError> {
        let bytes = bundle::build(&directory, &key, revision.as_deref())?;
        let written = Bundle::from_bytes(&bytes, &key.verify_key())?;
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let io = |e: std::io::Error| CoreError::InvalidArgument(format!("{}: {e}", out.display()));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &out).map_err(io)?;
        Ok(written.revision)
    })?;
    Ok(revision)
}
