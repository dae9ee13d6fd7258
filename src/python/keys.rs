//! `SigningKey`, `VerifyKey` and `Receipt` for Python.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::json_to_python;
use crate::core::keys::{Keyring, SigningKey, VerifyKey};
use crate::core::receipt::Receipt;

/// PEM given either as bytes (the key itself) or as a path to a file.
#[derive(FromPyObject)]
pub enum PemSource {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// An Ed25519 private key.
#[pyclass(frozen, name = "SigningKey", module = "execgate._core")]
pub struct PySigningKey {
    pub(crate) inner: SigningKey,
}

#[pymethods]
impl PySigningKey {
    /// A new key from the operating system's random source.
    #[staticmethod]
    fn generate() -> Self {
        Self {
            inner: SigningKey::generate(),
        }
    }

    /// Loads PKCS#8 PEM from bytes or from a file (which must be mode 0600 or
    /// stricter), decrypting with `password` when given.
    #[staticmethod]
    #[pyo3(signature = (source, password=None))]
    fn from_pem(py: Python<'_>, source: PemSource, password: Option<Vec<u8>>) -> PyResult<Self> {
        let pw = password.as_deref();
        let inner = py.detach(|| match &source {
            PemSource::Bytes(b) => SigningKey::from_pem(b, pw),
            PemSource::Path(p) => SigningKey::from_pem_file(p, pw),
        })?;
        Ok(Self { inner })
    }

    /// PKCS#8 PEM. With `path`, writes a new file with mode 0600 (never
    /// overwriting) and returns None; otherwise returns the PEM bytes.
    #[pyo3(signature = (path=None, *, password=None))]
    fn to_pem<'py>(
        &self,
        py: Python<'py>,
        path: Option<PathBuf>,
        password: Option<Vec<u8>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let pw = password.as_deref();
        match path {
            Some(p) => {
                py.detach(|| self.inner.write_pem_file(&p, pw))?;
                Ok(None)
            }
            None => Ok(Some(PyBytes::new(py, self.inner.to_pem(pw)?.as_bytes()))),
        }
    }

    /// The matching public key.
    #[getter]
    fn verify_key(&self) -> PyVerifyKey {
        PyVerifyKey {
            inner: self.inner.verify_key(),
        }
    }

    /// Key id: hex of the first 16 bytes of SHA-256 over the raw public key.
    #[getter]
    fn kid(&self) -> &str {
        self.inner.kid()
    }

    fn __repr__(&self) -> String {
        format!("<SigningKey kid={}>", self.inner.kid())
    }
}

/// An Ed25519 public key.
#[pyclass(frozen, eq, name = "VerifyKey", module = "execgate._core")]
#[derive(PartialEq)]
pub struct PyVerifyKey {
    pub(crate) inner: VerifyKey,
}

#[pymethods]
impl PyVerifyKey {
    /// Loads SPKI PEM (`BEGIN PUBLIC KEY`) from bytes or a file.
    #[staticmethod]
    fn from_pem(py: Python<'_>, source: PemSource) -> PyResult<Self> {
        let inner = py.detach(|| match &source {
            PemSource::Bytes(b) => VerifyKey::from_pem(b),
            PemSource::Path(p) => VerifyKey::from_pem_file(p),
        })?;
        Ok(Self { inner })
    }

    /// SPKI PEM. With `path`, writes the file and returns None.
    #[pyo3(signature = (path=None))]
    fn to_pem<'py>(
        &self,
        py: Python<'py>,
        path: Option<PathBuf>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let pem = self.inner.to_pem()?;
        match path {
            Some(p) => {
                std::fs::write(&p, pem).map_err(|e| crate::core::error::CoreError::Key {
                    message: format!("cannot write key file: {e}"),
                    path: Some(p.display().to_string()),
                })?;
                Ok(None)
            }
            None => Ok(Some(PyBytes::new(py, pem.as_bytes()))),
        }
    }

    /// The raw 32-byte public key.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[getter]
    fn kid(&self) -> &str {
        self.inner.kid()
    }

    fn __repr__(&self) -> String {
        format!("<VerifyKey kid={}>", self.inner.kid())
    }
}

/// Builds a keyring from public keys and/or a directory of `*.pub`/`*.pem` files.
pub fn keyring(
    keys: &[PyRef<'_, PyVerifyKey>],
    dir: Option<&std::path::Path>,
) -> PyResult<Keyring> {
    let mut ring = Keyring::new();
    for k in keys {
        ring.add(k.inner.clone());
    }
    if let Some(dir) = dir {
        ring.add_dir(dir)?;
    }
    if ring.is_empty() {
        return Err(crate::core::error::CoreError::InvalidArgument(
            "no verification keys given".into(),
        )
        .into());
    }
    Ok(ring)
}

/// A signed record: a DSSE envelope around canonical JSON.
#[pyclass(frozen, name = "Receipt", module = "execgate._core")]
pub struct PyReceipt {
    pub(crate) inner: Receipt,
}

#[pymethods]
impl PyReceipt {
    /// Parses an envelope (one log line). Does not check the signature.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        Ok(Self {
            inner: Receipt::from_json(text)?,
        })
    }

    /// Raises SignatureError unless a signature by `key` verifies; returns True.
    fn verify(&self, py: Python<'_>, key: PyRef<'_, PyVerifyKey>) -> PyResult<bool> {
        let key = key.inner.clone();
        py.detach(|| self.inner.verify(&key))?;
        Ok(true)
    }

    /// The decoded payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_python(py, &serde_json::Value::Object(self.inner.payload().clone()))
    }

    /// The DSSE envelope as JSON text (one line).
    #[getter]
    fn envelope(&self) -> &str {
        self.inner.envelope()
    }

    /// Lowercase hex SHA-256 of the canonical payload bytes.
    #[getter]
    fn digest(&self) -> &str {
        self.inner.digest()
    }

    #[getter]
    fn id(&self) -> &str {
        self.inner.id()
    }

    #[getter]
    fn kind(&self) -> &str {
        self.inner.kind()
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq()
    }

    /// False for checkpoint-mode records, whose proof is the next checkpoint.
    #[getter]
    fn signed(&self) -> bool {
        !self.inner.signatures().is_empty()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Receipt {} seq={} id={} sha256={}>",
            self.inner.kind(),
            self.inner.seq(),
            self.inner.id(),
            &self.inner.digest()[..12]
        )
    }
}
