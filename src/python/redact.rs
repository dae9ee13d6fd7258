//! `execgate._core.redact`: the privacy router's detectors for direct use.

use std::collections::BTreeMap;

use pyo3::prelude::*;

use super::convert::{json_to_python, to_value};
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
    let transform: Transform = transform.parse()?;
    let redactor = Redactor::new(&custom, &key)?;
    if let Some(names) = &detectors {
        let known = redactor.names();
        if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown detector {unknown:?}; known: {}",
                known.join(", ")
            )));
        }
    }
    let json = serde_json::to_value(to_value(&value, &mut String::from("value"), 0)?)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let (out, findings) =
        py.detach(|| redactor.redact(&json, detectors.as_deref(), transform, ""))?;
    let report = serde_json::to_value(&findings)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok((json_to_python(py, &out)?, json_to_python(py, &report)?))
}
