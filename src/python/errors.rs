//! The one conversion from core errors to Python exceptions.
//!
//! The exception classes live in `execgate/errors.py` (so `ActionDenied` can
//! inherit from both `ExecgateError` and `PermissionError`); this module looks
//! them up once and instantiates them with their structured fields.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::core::error::CoreError;

static POLICY_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CONFIGURATION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ARGUMENT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SIGNATURE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static AUDIT_LOG_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SANDBOX_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STATE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Instantiates `execgate.errors.<name>(message, **fields)`.
fn raise(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    message: String,
    fields: Option<Bound<'_, PyDict>>,
) -> PyErr {
    let class = match cell.import(py, "execgate.errors", name) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match class.call((message,), fields.as_ref()) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        Python::attach(|py| match err {
            CoreError::Policy(e) => {
                let fields = PyDict::new(py);
                let set = (|| -> PyResult<()> {
                    fields.set_item("message", &e.message)?;
                    fields.set_item("file", &e.file)?;
                    fields.set_item("line", e.line)?;
                    fields.set_item("column", e.column)
                })();
                match set {
                    Ok(()) => raise(
                        py,
                        &POLICY_ERROR,
                        "PolicyError",
                        e.to_string(),
                        Some(fields),
                    ),
                    Err(err) => err,
                }
            }
            CoreError::InvalidArgument(message) => raise(
                py,
                &CONFIGURATION_ERROR,
                "ConfigurationError",
                message,
                None,
            ),
            CoreError::Argument { message, argument } => {
                let fields = PyDict::new(py);
                match fields.set_item("argument", argument) {
                    Ok(()) => raise(py, &ARGUMENT_ERROR, "ArgumentError", message, Some(fields)),
                    Err(e) => e,
                }
            }
            CoreError::Key { ref path, .. } => {
                let fields = PyDict::new(py);
                match fields.set_item("path", path) {
                    Ok(()) => raise(
                        py,
                        &SIGNATURE_ERROR,
                        "SignatureError",
                        err.to_string(),
                        Some(fields),
                    ),
                    Err(e) => e,
                }
            }
            CoreError::Sandbox(message) => raise(py, &SANDBOX_ERROR, "SandboxError", message, None),
            CoreError::State(_) => raise(py, &STATE_ERROR, "StateError", err.to_string(), None),
            CoreError::Signature(message) => {
                raise(py, &SIGNATURE_ERROR, "SignatureError", message, None)
            }
            CoreError::Audit { ref path, .. } => {
                let fields = PyDict::new(py);
                match fields.set_item("path", path) {
                    Ok(()) => raise(
                        py,
                        &AUDIT_LOG_ERROR,
                        "AuditLogError",
                        err.to_string(),
                        Some(fields),
                    ),
                    Err(e) => e,
                }
            }
        })
    }
}
