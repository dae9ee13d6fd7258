//! `execgate._core.redact`: the privacy router's detectors for direct use.

use std::collections::BTreeMap;

use pyo3::prelude::*;

use super::convert::{json_to_python, Converter};
use crate::core::error::CoreError;
use crate::core::redact::{Redactor, Transform};

/// Returns `(new_value, report)`: `value` with every finding transformed,
/// and `[{path, detector, count}]` without the original values.
#[pyfunction]
#[pyo3(signature = (value, *, detectors=None, transform="mask", key=Vec::new(), custom=BTreeMap::new()))]
pub fn redact<'py>(
    py: Python<'py>,
    value: Bound<'py, PyAny>,
    detectors: Option<Vec<String>>,
    transform: &str,
    key: Vec<u8>,
    custom: BTreeMap<String, String>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let redactor = Redactor::new(&custom, &key)?;
    run(py, &redactor, &value, transform, detectors, "")
}

/// One redaction with `redactor`: the module function and `Gate.redact`.
pub fn run<'py>(
    py: Python<'py>,
    redactor: &Redactor,
    value: &Bound<'py, PyAny>,
    transform: &str,
    detectors: Option<Vec<String>>,
    path: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let transform: Transform = transform.parse()?;
    if let Some(names) = &detectors {
        let known = redactor.names();
        if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(CoreError::InvalidArgument(format!(
                "unknown detector {unknown:?}; known: {}",
                known.join(", ")
            ))
            .into());
        }
    }
    let mut conv = Converter::default();
    let arg = conv.arg(value, &mut path.to_string(), 0)?;
    let (out, findings) =
        py.detach(|| redactor.redact_arg(&arg, detectors.as_deref(), transform, path))?;
    let report =
        serde_json::to_value(&findings).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
    Ok((conv.to_python(py, &out)?, json_to_python(py, &report)?))
}
