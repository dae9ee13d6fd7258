//! `AuditLog`, `verify_log` and `VerifyReport` for Python.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::seconds;
use super::keys::{keyring, PySigningKey, PyVerifyKey};
use crate::core::audit::{
    verify_log_with_progress, verify_logs_with_progress, AuditLog, AuditOptions, Durability,
    Signing, Start, VerifyReport,
};
use crate::core::error::CoreError;

fn invalid(message: impl Into<String>) -> PyErr {
    CoreError::InvalidArgument(message.into()).into()
}

/// The hash-chained, signed audit log (or an in-memory chain when `path` is None).
#[pyclass(frozen, weakref, name = "AuditLog", module = "execgate._core")]
pub struct PyAuditLog {
    pub(crate) inner: Arc<AuditLog>,
}

#[pymethods]
impl PyAuditLog {
    #[new]
    #[pyo3(signature = (path, key, *, durability="none", batch_interval=0.05, signing="record",
                        checkpoint_every=1000, checkpoint_interval=1.0,
                        state_every=10_000, rotate_bytes=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        key: PyRef<'_, PySigningKey>,
        durability: &str,
        batch_interval: f64,
        signing: &str,
        checkpoint_every: u64,
        checkpoint_interval: f64,
        state_every: u64,
        rotate_bytes: u64,
    ) -> PyResult<Self> {
        let durability = match durability {
            "none" => Durability::None,
            "batch" => Durability::Batch(seconds(batch_interval, "batch_interval")?),
            "always" => Durability::Always,
            other => {
                return Err(invalid(format!(
                    "durability must be \"none\", \"batch\" or \"always\", not {other:?}"
                )))
            }
        };
        let signing = match signing {
            "record" => Signing::Record,
            "checkpoint" if checkpoint_every > 0 => Signing::Checkpoint {
                every: checkpoint_every,
                interval: seconds(checkpoint_interval, "checkpoint_interval")?,
            },
            "checkpoint" => return Err(invalid("checkpoint_every must be positive")),
            other => {
                return Err(invalid(format!(
                    "signing must be \"record\" or \"checkpoint\", not {other:?}"
                )))
            }
        };
        let options = AuditOptions {
            durability,
            signing,
            state_every,
            rotate_bytes,
        };
        let key = key.inner.clone();
        let inner = match path {
            Some(p) => py.detach(|| AuditLog::open(&p, key, options))?,
            None => AuditLog::in_memory(key, options),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Writes the completion records still queued, seals pending
    /// checkpoint-mode records, syncs and closes. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.inner.close())?)
    }

    /// Waits until the completion records queued so far are written (a
    /// guarded call returns before its completion is written unless the
    /// durability is "always"). Raises AuditLogError when one could not be.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.inner.flush())?)
    }

    /// Closes this file's part of the chain: renames it to
    /// ``PATH.<last seq>`` and continues the chain in a new file at ``PATH``.
    /// Returns the archived file's path.
    fn rotate(&self, py: Python<'_>) -> PyResult<String> {
        Ok(py.detach(|| self.inner.rotate())?.display().to_string())
    }

    /// The ``seq`` of the last record this writer wrote or saw (0 before any).
    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq()
    }

    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.inner.path().map(PathBuf::from)
    }

    /// The public key that verifies this log's signatures.
    #[getter]
    fn verify_key(&self) -> PyVerifyKey {
        PyVerifyKey {
            inner: self.inner.verify_key(),
        }
    }

    fn __repr__(&self) -> String {
        match self.inner.path() {
            Some(p) => format!("<AuditLog {}>", p.display()),
            None => "<AuditLog in memory>".to_string(),
        }
    }
}

/// What `verify_log` found.
#[pyclass(frozen, name = "VerifyReport", module = "execgate._core")]
pub struct PyVerifyReport {
    pub(crate) inner: VerifyReport,
}

#[pymethods]
impl PyVerifyReport {
    /// True when every signature, link and sequence number checks out.
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok()
    }
    #[getter]
    fn records(&self) -> u64 {
        self.inner.records
    }
    #[getter]
    fn allowed(&self) -> u64 {
        self.inner.allowed
    }
    #[getter]
    fn denied(&self) -> u64 {
        self.inner.denied
    }
    #[getter]
    fn completions(&self) -> u64 {
        self.inner.completions
    }
    #[getter]
    fn recoveries(&self) -> u64 {
        self.inner.recoveries
    }
    #[getter]
    fn approvals(&self) -> u64 {
        self.inner.approvals
    }
    #[getter]
    fn checkpoints(&self) -> u64 {
        self.inner.checkpoints
    }
    /// Signed ``state`` records (ledger snapshots).
    #[getter]
    fn states(&self) -> u64 {
        self.inner.states
    }
    /// Signed ``rotation`` records (files of a rotated log).
    #[getter]
    fn rotations(&self) -> u64 {
        self.inner.rotations
    }
    #[getter]
    fn first_ts(&self) -> Option<&str> {
        self.inner.first_ts.as_deref()
    }
    #[getter]
    fn last_ts(&self) -> Option<&str> {
        self.inner.last_ts.as_deref()
    }
    /// Key ids that signed records.
    #[getter]
    fn keys(&self) -> Vec<String> {
        self.inner.keys.iter().cloned().collect()
    }
    /// How many allowed calls have no completion record.
    #[getter]
    fn unfinished_count(&self) -> u64 {
        self.inner.unfinished_count
    }
    /// Receipt ids of allowed calls with no completion record (the first 1000).
    #[getter]
    fn unfinished(&self) -> Vec<String> {
        self.inner.unfinished.clone()
    }
    /// The digest of the last record (what ``after=`` takes to verify the
    /// next part of a rotated log on its own), or None for an empty log.
    #[getter]
    fn head(&self) -> Option<&str> {
        self.inner.head.as_deref()
    }
    /// (line, reason) of each recovery record that names tampering a writer
    /// found (a truncation, rewritten records).
    #[getter]
    fn incidents(&self) -> Vec<(u64, String)> {
        self.inner
            .incidents
            .iter()
            .map(|i| (i.line, i.reason.clone()))
            .collect()
    }
    /// 1-based line of the first problem (or else of the first incident), or None.
    #[getter]
    fn line(&self) -> Option<u64> {
        match (&self.inner.failure, self.inner.incidents.first()) {
            (Some(f), _) => Some(f.line),
            (None, Some(i)) => Some(i.line),
            (None, None) => None,
        }
    }
    /// Why that line is bad, or None.
    #[getter]
    fn reason(&self) -> Option<&str> {
        match (&self.inner.failure, self.inner.incidents.first()) {
            (Some(f), _) => Some(f.reason.as_str()),
            (None, Some(i)) => Some(i.reason.as_str()),
            (None, None) => None,
        }
    }

    fn __repr__(&self) -> String {
        match (&self.inner.failure, self.inner.incidents.first()) {
            (None, None) => format!("<VerifyReport ok records={}>", self.inner.records),
            (Some(f), _) => format!("<VerifyReport FAILED line {}: {}>", f.line, f.reason),
            (None, Some(i)) => format!("<VerifyReport INCIDENT line {}: {}>", i.line, i.reason),
        }
    }
}

/// Verifies the log at `path` with `keys` and/or a `keyring` directory,
/// streaming; `progress(bytes_read, total_bytes)` is called every few MiB.
#[pyfunction]
#[pyo3(signature = (path, keys=Vec::new(), keyring_dir=None, progress=None, after=None))]
pub fn verify(
    py: Python<'_>,
    path: PathBuf,
    keys: Vec<PyRef<'_, PyVerifyKey>>,
    keyring_dir: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
    after: Option<String>,
) -> PyResult<PyVerifyReport> {
    let ring = keyring(&keys, keyring_dir.as_deref())?;
    let start = start(after);
    reporting(py, progress, |report| {
        verify_log_with_progress(&path, &ring, &start, report)
    })
}

/// Where the chain must start: at genesis, or after the digest given.
fn start(after: Option<String>) -> Start {
    after.map_or(Start::Genesis, Start::After)
}

/// Verifies the files of a rotated log as one chain (in chain order, whatever
/// the order given), streaming; `progress(bytes_read, total_bytes)` as above.
#[pyfunction]
#[pyo3(signature = (paths, keys=Vec::new(), keyring_dir=None, progress=None, after=None))]
pub fn verify_set(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    keys: Vec<PyRef<'_, PyVerifyKey>>,
    keyring_dir: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
    after: Option<String>,
) -> PyResult<PyVerifyReport> {
    let ring = keyring(&keys, keyring_dir.as_deref())?;
    let start = start(after);
    reporting(py, progress, |report| {
        verify_logs_with_progress(&paths, &ring, &start, report)
    })
}

/// Runs a verification without the GIL, calling `progress(bytes_read,
/// total_bytes)` as it goes; the first exception the callback raises stops
/// the reports and is raised once the verification is over.
fn reporting(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    verify: impl FnOnce(&mut dyn FnMut(u64, u64)) -> crate::core::error::Result<VerifyReport> + Send,
) -> PyResult<PyVerifyReport> {
    let mut raised: Option<PyErr> = None;
    let inner = py.detach(|| {
        let mut report = |done: u64, total: u64| {
            if let (Some(cb), None) = (&progress, &raised) {
                if let Err(e) = Python::attach(|py| cb.call1(py, (done, total)).map(drop)) {
                    raised = Some(e);
                }
            }
        };
        verify(&mut report)
    })?;
    if let Some(e) = raised {
        return Err(e);
    }
    Ok(PyVerifyReport { inner })
}
