//! Python objects to argument trees ([`Arg`]) and back.
//!
//! One conversion serves both sides of the gate: the policy judges the tree
//! and the tool receives what is rebuilt from it, so both see the same
//! values. JSON-native types are read by their real content (a `str`
//! subclass by its characters, never its `__str__`; a `dict` subclass by its
//! storage, never an overridden `items`); the tool receives plain copies.
//! Everything else is handed to `execgate._convert.to_json`, the one place
//! that defines the rules for dates, paths, enums, dataclasses and pydantic
//! models: it returns what the policy sees and what the tool receives.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::critical_section::with_critical_section;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use std::fmt::Write as _;
use std::time::Duration;

use regorus::Value;

use crate::core::args::{Arg, Text};
use crate::core::error::CoreError;

static TO_JSON: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NATIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Deepest nesting accepted, so a self-referencing structure cannot recurse forever.
const MAX_DEPTH: usize = 64;

/// Checks a number of seconds a caller passed: finite, positive, and small
/// enough to be a duration.
pub fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    let bad = |why: &str| -> PyErr {
        CoreError::InvalidArgument(format!("{what} {why}, not {value:e} seconds")).into()
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(bad("must be a positive number of seconds"));
    }
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(bad("must be at least a nanosecond")),
        Err(_) => Err(bad("is out of range")),
    }
}

/// A conversion failure naming the argument.
pub fn argument_error(path: &str, message: String) -> PyErr {
    CoreError::Argument {
        message,
        argument: path.to_string(),
    }
    .into()
}

/// Converts values, keeping the originals the tool is to receive as they are.
#[derive(Default)]
pub struct Converter {
    /// Originals referenced by [`Arg::Opaque`] handles.
    pub handles: Vec<Py<PyAny>>,
    /// Whether a value below the top level was anything but an immutable
    /// scalar of an exact type (`str`, `int`, `float`, `bool`, `None`,
    /// `bytes`): a container the caller could change after the check, a
    /// subclass, or a type converted by the rules in `execgate._convert`.
    /// Only when it is not may the tool be handed the caller's own values.
    pub needs_copies: bool,
}

impl Converter {
    /// Converts `obj`; `path` names it in errors (e.g. `args.items[2]`).
    pub fn arg(
        &mut self,
        obj: &Bound<'_, PyAny>,
        path: &mut String,
        depth: usize,
    ) -> PyResult<Arg> {
        let py = obj.py();
        if depth > MAX_DEPTH {
            return Err(argument_error(
                path,
                format!("argument {path} is nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        if let Ok(s) = obj.cast_exact::<PyString>() {
            return text(s, path).map(Arg::Str);
        }
        if obj.is_none() {
            return Ok(Arg::Null);
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            return Ok(Arg::Bool(b.is_true()));
        }
        if obj.is_exact_instance_of::<PyInt>()
            || obj.is_exact_instance_of::<PyFloat>()
            || obj.is_exact_instance_of::<PyBytes>()
        {
            return self.native(obj, path, depth);
        }
        self.needs_copies = true;
        if obj.is_exact_instance_of::<PyDict>()
            || obj.is_exact_instance_of::<PyList>()
            || obj.is_exact_instance_of::<PyTuple>()
            || obj.is_exact_instance_of::<PyByteArray>()
        {
            return self.native(obj, path, depth);
        }
        // Not a JSON-native type: the documented rules in Python say what the
        // policy sees and what the tool receives (or that it is a subclass of
        // a native type, read here by its real content).
        let to_json = TO_JSON.import(py, "execgate._convert", "to_json")?;
        let native = NATIVE.import(py, "execgate._convert", "NATIVE")?;
        let converted = to_json.call1((obj, path.as_str()))?;
        if converted.is(native) {
            return self.native(obj, path, depth);
        }
        let (view, original): (Bound<'_, PyAny>, Bound<'_, PyAny>) = converted.extract()?;
        if view.is(obj) {
            return Err(argument_error(
                path,
                format!("argument {path}: converter returned the object unchanged"),
            ));
        }
        let view = self.arg(&view, path, depth + 1)?;
        self.handles.push(original.unbind());
        Ok(Arg::Opaque {
            view: Box::new(view),
            handle: self.handles.len() - 1,
        })
    }

    /// A value of a JSON-native type or a subclass of one, by its content.
    fn native(&mut self, obj: &Bound<'_, PyAny>, path: &mut String, depth: usize) -> PyResult<Arg> {
        if let Ok(s) = obj.cast::<PyString>() {
            return text(s, path).map(Arg::Str);
        }
        if let Ok(i) = obj.cast::<PyInt>() {
            if let Ok(v) = i.extract::<i64>() {
                return Ok(Arg::Int(v));
            }
            if let Ok(v) = i.extract::<u64>() {
                return Ok(Arg::UInt(v));
            }
            return Err(argument_error(
                path,
                format!("argument {path} is an integer outside the 64-bit range"),
            ));
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            let v = f.value();
            if !v.is_finite() {
                return Err(argument_error(
                    path,
                    format!("argument {path} is {v}, which JSON cannot represent"),
                ));
            }
            return Ok(Arg::Float(v));
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            return self.dict(d, path, depth);
        }
        if let Ok(l) = obj.cast::<PyList>() {
            // Python code the conversion runs (an item's `to_json`) could
            // change the list: a change is refused. (Either way the tool gets
            // the copy rebuilt from what the policy saw.)
            let len = l.len();
            let arg = self.sequence(l.iter(), path, depth, false)?;
            if l.len() != len {
                return Err(changed(path));
            }
            return Ok(arg);
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            return self.sequence(t.iter(), path, depth, true);
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Arg::Bytes {
                data: b.as_bytes().to_vec(),
                mutable: false,
            });
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(Arg::Bytes {
                data: b.to_vec(),
                mutable: true,
            });
        }
        Err(argument_error(
            path,
            format!("argument {path} has a type the converter cannot read"),
        ))
    }

    /// A dict with str keys, read from its storage (never an overridden
    /// `items`, `keys` or `__iter__` of a subclass).
    pub fn dict(
        &mut self,
        d: &Bound<'_, PyDict>,
        path: &mut String,
        depth: usize,
    ) -> PyResult<Arg> {
        // On a free-threaded Python the dict's critical section stands in
        // for the GIL while its storage is read (a no-op with the GIL).
        with_critical_section(d.as_any(), || self.entries(d, path, depth))
    }

    fn entries(&mut self, d: &Bound<'_, PyDict>, path: &mut String, depth: usize) -> PyResult<Arg> {
        let len = d.len();
        let mut out = Vec::with_capacity(len);
        let mut pos = 0;
        while let Some((k, v)) = next_entry(d, &mut pos) {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(argument_error(
                    path,
                    format!(
                        "argument {path} has a key of type {}; only str keys are supported",
                        k.get_type().name()?
                    ),
                ));
            };
            let key = text(key, path)?;
            let at = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            let value = self.arg(&v, path, depth + 1)?;
            path.truncate(at);
            out.push((key, value));
            // Python code the conversion ran (a value's `to_json`) changed it.
            if d.len() != len {
                return Err(changed(path));
            }
        }
        if out.len() != len {
            return Err(changed(path));
        }
        Ok(Arg::Map(out))
    }

    fn sequence<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        path: &mut String,
        depth: usize,
        tuple: bool,
    ) -> PyResult<Arg> {
        let mut out = Vec::with_capacity(items.size_hint().0);
        for (i, item) in items.enumerate() {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            out.push(self.arg(&item, path, depth + 1)?);
            path.truncate(len);
        }
        Ok(Arg::List { items: out, tuple })
    }

    /// Rebuilds Python values from a tree: plain copies, and the originals of
    /// opaque values.
    pub fn to_python<'py>(&self, py: Python<'py>, arg: &Arg) -> PyResult<Bound<'py, PyAny>> {
        Ok(match arg {
            Arg::Null => py.None().into_bound(py),
            Arg::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            Arg::Int(i) => i.into_pyobject(py)?.into_any(),
            Arg::UInt(u) => u.into_pyobject(py)?.into_any(),
            Arg::Float(f) => PyFloat::new(py, *f).into_any(),
            Arg::Str(s) => PyString::new(py, s).into_any(),
            Arg::Bytes { data, mutable } => {
                if *mutable {
                    PyByteArray::new(py, data).into_any()
                } else {
                    PyBytes::new(py, data).into_any()
                }
            }
            Arg::List { items, tuple } => {
                let items = items
                    .iter()
                    .map(|i| self.to_python(py, i))
                    .collect::<PyResult<Vec<_>>>()?;
                if *tuple {
                    PyTuple::new(py, items)?.into_any()
                } else {
                    PyList::new(py, items)?.into_any()
                }
            }
            Arg::Map(entries) => {
                let d = PyDict::new(py);
                for (k, v) in entries {
                    d.set_item(&**k, self.to_python(py, v)?)?;
                }
                d.into_any()
            }
            Arg::Opaque { handle, .. } => match self.handles.get(*handle) {
                Some(original) => original.bind(py).clone(),
                None => {
                    return Err(CoreError::InvalidArgument(format!(
                        "argument tree names an unknown value {handle}"
                    ))
                    .into())
                }
            },
        })
    }
}

/// The entry of `d` at or after `*pos`, moving `pos` past it (CPython's
/// `PyDict_Next`, which reads the storage of a dict or a subclass). Unlike
/// pyo3's dict iterator it does not panic when Python code changes the dict
/// between two calls: its caller checks the size and refuses instead.
fn next_entry<'py>(
    d: &Bound<'py, PyDict>,
    pos: &mut ffi::Py_ssize_t,
) -> Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let mut key = std::ptr::null_mut();
    let mut value = std::ptr::null_mut();
    // SAFETY: `d` is a dict, and the GIL is held (it is a `Bound`) or, on a
    // free-threaded Python, the dict's critical section (see `Converter::dict`).
    // PyDict_Next checks `pos` against the dict's current table, so a dict
    // changed since the last call is still read within bounds; the key and
    // value it lends are owned at once (a new reference each), before any
    // Python code can run.
    unsafe {
        if ffi::PyDict_Next(d.as_ptr(), pos, &mut key, &mut value) == 0 {
            return None;
        }
        Some((
            Bound::from_borrowed_ptr(d.py(), key),
            Bound::from_borrowed_ptr(d.py(), value),
        ))
    }
}

fn changed(path: &str) -> PyErr {
    let what = if path.is_empty() {
        "the arguments"
    } else {
        path
    };
    argument_error(
        path,
        format!("argument {what} changed while it was being converted"),
    )
}

/// The characters of a str (or subclass), or an error naming the argument.
fn text(s: &Bound<'_, PyString>, path: &str) -> PyResult<Text> {
    match s.to_str() {
        Ok(t) => Ok(t.into()),
        Err(_) => Err(argument_error(
            path,
            format!("argument {path} is not valid Unicode text (it holds a lone surrogate)"),
        )),
    }
}

/// The policy's view of `obj` (a data document, a query's arguments).
pub fn to_value(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<Value> {
    Ok(Converter::default()
        .arg(obj, &mut path.to_string(), 0)?
        .to_value())
}

/// An argument tree of a dict's entries (`args`, `principal`, `context`),
/// empty for None.
pub fn optional_object(
    conv: &mut Converter,
    obj: Option<&Bound<'_, PyDict>>,
    name: &str,
) -> PyResult<Arg> {
    match obj {
        None => Ok(Arg::empty()),
        Some(d) => conv.dict(d, &mut name.to_string(), 0),
    }
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
