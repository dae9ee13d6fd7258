//! Python objects to regorus values and back.
//!
//! JSON-native types (str, int, float, bool, None, list, tuple, dict with str
//! keys) are converted here without calling into Python. Everything else is
//! handed to `execgate._convert.to_json`, the one place that defines the rules
//! for dates, paths, enums, bytes, dataclasses and pydantic models; what it
//! rejects raises `ArgumentError` naming the argument.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use regorus::Value;

use super::errors::argument_error;

static TO_JSON: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Deepest nesting accepted, so a self-referencing structure cannot recurse forever.
const MAX_DEPTH: usize = 64;

/// Converts `obj` to a value; `path` names it in errors (e.g. `args.items[2]`).
pub fn to_value(obj: &Bound<'_, PyAny>, path: &mut String, depth: usize) -> PyResult<Value> {
    let py = obj.py();
    if depth > MAX_DEPTH {
        return Err(argument_error(
            py,
            path,
            format!("argument {path} is nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return Ok(Value::from(s.to_str()?));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        return Ok(Value::from(b.is_true()));
    }
    if let Ok(i) = obj.cast_exact::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::from(v));
        }
        if let Ok(v) = i.extract::<u64>() {
            return Ok(Value::from(v));
        }
        return Err(argument_error(
            py,
            path,
            format!("argument {path} is an integer outside the 64-bit range"),
        ));
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Err(argument_error(
                py,
                path,
                format!("argument {path} is {v}, which JSON cannot represent"),
            ));
        }
        return Ok(Value::from(v));
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        return dict_to_value(d, path, depth);
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return sequence_to_value(l.iter(), path, depth);
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return sequence_to_value(t.iter(), path, depth);
    }
    // Not a JSON-native type: apply the documented rules in Python.
    let to_json = TO_JSON.import(py, "execgate._convert", "to_json")?;
    match to_json.call1((obj, path.as_str())) {
        Ok(converted) if converted.is(obj) => Err(argument_error(
            py,
            path,
            format!("argument {path}: converter returned the object unchanged"),
        )),
        Ok(converted) => to_value(&converted, path, depth + 1),
        Err(e) => Err(e),
    }
}

/// Converts a dict with str keys to an object value.
pub fn dict_to_value(d: &Bound<'_, PyDict>, path: &mut String, depth: usize) -> PyResult<Value> {
    let mut out = Value::new_object();
    let map = out
        .as_object_mut()
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    for (k, v) in d.iter() {
        let Ok(key) = k.cast::<PyString>() else {
            return Err(argument_error(
                d.py(),
                path,
                format!(
                    "argument {path} has a key of type {}; only str keys are supported",
                    k.get_type().name()?
                ),
            ));
        };
        let key = key.to_str()?;
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        let value = to_value(&v, path, depth + 1)?;
        path.truncate(len);
        map.insert(Value::from(key), value);
    }
    Ok(out)
}

fn sequence_to_value<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    path: &mut String,
    depth: usize,
) -> PyResult<Value> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let len = path.len();
        path.push_str(&format!("[{i}]"));
        out.push(to_value(&item, path, depth + 1)?);
        path.truncate(len);
    }
    Ok(Value::from(out))
}

/// Converts a value to plain Python objects (sets become lists).
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(PyErr::from)
}

/// Converts JSON (receipt payloads) to plain Python objects.
pub fn json_to_python<'py>(
    py: Python<'py>,
    value: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(PyErr::from)
}
