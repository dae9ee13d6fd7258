//! `LogReader` and `ChainVerifier` for Python: what the PostgreSQL shipper
//! and `verify --postgres` (both in `execgate.postgres`) need from the core.

use std::path::PathBuf;

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::audit::PyVerifyReport;
use super::keys::{keyring, PyVerifyKey};
use crate::core::audit::{ChainVerifier, LogReader};
use crate::core::error::CoreError;

/// A log's records by `seq`, across rotated files (see the core's `LogReader`).
#[pyclass(frozen, name = "LogReader", module = "execgate._core")]
pub struct PyLogReader {
    inner: Mutex<LogReader>,
}

#[pymethods]
impl PyLogReader {
    #[new]
    fn new(path: PathBuf) -> Self {
        Self {
            inner: Mutex::new(LogReader::new(&path)),
        }
    }

    /// The digest of the log's first record (seq 1), or None while it has none.
    fn log_id(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(py.detach(|| self.inner.lock().log_id())?)
    }

    /// Up to ``max_records`` records (about ``max_bytes``) from ``seq`` on:
    /// ``(seqs, digests, envelopes)``, three lists of one length.
    #[pyo3(signature = (seq, max_records=1000, max_bytes=8 << 20))]
    #[allow(clippy::type_complexity)]
    fn read_from(
        &self,
        py: Python<'_>,
        seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> PyResult<(Vec<u64>, Vec<String>, Vec<String>)> {
        let records = py.detach(|| self.inner.lock().read_from(seq, max_records, max_bytes))?;
        let mut seqs = Vec::with_capacity(records.len());
        let mut digests = Vec::with_capacity(records.len());
        let mut envelopes = Vec::with_capacity(records.len());
        for r in records {
            seqs.push(r.seq);
            digests.push(r.digest);
            envelopes.push(r.envelope);
        }
        Ok((seqs, digests, envelopes))
    }
}

/// Verifies one chain fed as ``(seq, envelope)`` rows in seq order.
#[pyclass(frozen, name = "ChainVerifier", module = "execgate._core")]
pub struct PyChainVerifier {
    inner: Mutex<Option<ChainVerifier>>,
}

#[pymethods]
impl PyChainVerifier {
    #[new]
    #[pyo3(signature = (keys=Vec::new(), keyring_dir=None, log_id=None))]
    fn new(
        keys: Vec<PyRef<'_, PyVerifyKey>>,
        keyring_dir: Option<PathBuf>,
        log_id: Option<String>,
    ) -> PyResult<Self> {
        let ring = keyring(&keys, keyring_dir.as_deref())?;
        Ok(Self {
            inner: Mutex::new(Some(ChainVerifier::new(ring, log_id))),
        })
    }

    /// Checks the next rows; False once verification stopped at a failure.
    fn push(&self, py: Python<'_>, rows: Vec<(u64, String)>) -> PyResult<bool> {
        py.detach(|| {
            let mut guard = self.inner.lock();
            let verifier = guard.as_mut().ok_or_else(finished)?;
            Ok(verifier.push(
                rows.iter()
                    .map(|(seq, envelope)| (*seq, envelope.as_bytes())),
            ))
        })
    }

    /// The report; the verifier takes no rows after it.
    fn finish(&self, py: Python<'_>) -> PyResult<PyVerifyReport> {
        let verifier = self.inner.lock().take().ok_or_else(finished)?;
        let inner = py.detach(|| verifier.finish());
        Ok(PyVerifyReport { inner })
    }
}

fn finished() -> PyErr {
    CoreError::InvalidArgument("the verifier has finished".into()).into()
}
