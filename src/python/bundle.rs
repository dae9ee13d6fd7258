//! `execgate._core.Bundle` and `build_bundle`: OPA-format signed bundles
//! (the format and its checks live in [`crate::core::bundle`]).

use std::path::PathBuf;

use pyo3::prelude::*;

use super::keys::{PemSource, PySigningKey, PyVerifyKey};
use crate::core::bundle::{self, Bundle, BundleKey};
use crate::core::error::CoreError;

/// A public key bundles are verified with: an execgate (Ed25519) key, an RSA
/// key (RS256) or a P-256 key (ES256). The JWT's algorithm must be the key's.
#[pyclass(frozen, name = "BundleKey", module = "execgate._core")]
pub struct PyBundleKey {
    pub(crate) inner: BundleKey,
}

#[pymethods]
impl PyBundleKey {
    /// Loads a public key PEM (SPKI `BEGIN PUBLIC KEY`, or PKCS#1
    /// `BEGIN RSA PUBLIC KEY`) from bytes or a file.
    #[staticmethod]
    fn from_pem(py: Python<'_>, source: PemSource) -> PyResult<Self> {
        let inner = py.detach(|| match &source {
            PemSource::Bytes(b) => BundleKey::from_pem(b),
            PemSource::Path(p) => BundleKey::from_pem_file(p),
        })?;
        Ok(Self { inner })
    }

    /// The one JWT algorithm this key verifies: "EdDSA", "RS256" or "ES256".
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm()
    }

    /// The execgate key id (Ed25519), or the first 16 bytes of SHA-256 over
    /// the key's SPKI DER as hex.
    #[getter]
    fn id(&self) -> String {
        self.inner.id().to_string()
    }

    fn __repr__(&self) -> String {
        format!("<BundleKey {} {}>", self.inner.algorithm(), self.inner.id())
    }
}

/// What `Bundle.read` and `Bundle.from_bytes` accept as a key.
#[derive(FromPyObject)]
pub enum AnyBundleKey<'py> {
    Bundle(PyRef<'py, PyBundleKey>),
    Verify(PyRef<'py, PyVerifyKey>),
}

impl AnyBundleKey<'_> {
    fn key(&self) -> BundleKey {
        match self {
            Self::Bundle(k) => k.inner.clone(),
            Self::Verify(k) => k.inner.clone().into(),
        }
    }
}

/// A bundle whose signature and file list verified; not yet compiled.
#[pyclass(frozen, name = "Bundle", module = "execgate._core")]
pub struct PyBundle {
    pub(crate) inner: Bundle,
}

#[pymethods]
impl PyBundle {
    /// Reads and verifies the bundle file at `path` with `key`.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf, key: AnyBundleKey<'_>) -> PyResult<Self> {
        let key = key.key();
        let inner = py.detach(|| Bundle::from_file(&path, &key))?;
        Ok(Self { inner })
    }

    /// Verifies a bundle held in memory (for example as downloaded).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: Vec<u8>, key: AnyBundleKey<'_>) -> PyResult<Self> {
        let key = key.key();
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
        let written = Bundle::from_bytes(&bytes, &key.verify_key().into())?;
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let io = |e: std::io::Error| CoreError::InvalidArgument(format!("{}: {e}", out.display()));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &out).map_err(io)?;
        Ok(written.revision)
    })?;
    Ok(revision)
}
