//! `execgate._core.run_sandboxed`: the Python Sandbox's specification in,
//! the result out. The Python layer builds the specification; limits,
//! tightening and enforcement are all in `core::sandbox`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde::Deserialize;

use super::convert::{json_to_python, seconds};
use crate::core::error::CoreError;
use crate::core::sandbox::{self, Limits, Network, Sandbox};

#[derive(Deserialize)]
#[serde(untagged)]
enum NetworkSpec {
    Named(String),
    Ports(Vec<u16>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    cpu_seconds: Option<u64>,
    memory_bytes: Option<u64>,
    file_size_bytes: Option<u64>,
    open_files: Option<u64>,
    processes: Option<u64>,
    wall_seconds: Option<f64>,
    output_bytes: usize,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    system_paths: bool,
    network: NetworkSpec,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    strict: bool,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    unix_sockets: bool,
    /// network = proxy: the namespace descriptor from `private_network`.
    #[serde(default)]
    join_network: Option<i32>,
}

fn build(spec: Spec, stdin: Vec<u8>) -> PyResult<Sandbox> {
    let err = |m: &str| PyErr::from(CoreError::InvalidArgument(m.to_string()));
    let network = match spec.network {
        NetworkSpec::Named(n) if n == "none" => Network::None,
        NetworkSpec::Named(n) if n == "host" => Network::Host,
        NetworkSpec::Named(n) if n == "proxy" => Network::Proxy,
        NetworkSpec::Named(_) => {
            return Err(err(
                "network must be \"none\", \"host\", \"proxy\" or a list of ports",
            ))
        }
        NetworkSpec::Ports(p) => Network::Ports(p),
    };
    let wall = match spec.wall_seconds {
        None => None,
        Some(s) => Some(seconds(s, "wall")?),
    };
    Ok(Sandbox {
        limits: Limits {
            cpu_seconds: spec.cpu_seconds,
            memory_bytes: spec.memory_bytes,
            file_size_bytes: spec.file_size_bytes,
            open_files: spec.open_files,
            processes: spec.processes,
            wall,
            output_bytes: spec.output_bytes,
        },
        read: spec.read,
        write: spec.write,
        system_paths: spec.system_paths,
        network,
        env: spec.env,
        cwd: spec.cwd,
        stdin,
        strict: spec.strict,
        stream: spec.stream,
        unix_sockets: spec.unix_sockets,
        join_network: spec.join_network,
    })
}

/// Runs `argv` under the sandbox `spec`, tightened by `obligation` (a policy's
/// `obligations.sandbox`) when given. Returns the result as a dict, with the
/// effective sandbox under `"sandbox"`.
#[pyfunction]
#[pyo3(signature = (argv, spec, stdin=Vec::new(), obligation=None))]
pub fn run_sandboxed<'py>(
    py: Python<'py>,
    argv: Vec<String>,
    spec: Bound<'py, PyDict>,
    stdin: Vec<u8>,
    obligation: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let spec: Spec = pythonize::depythonize(spec.as_any())?;
    let mut sandbox = build(spec, stdin)?;
    if let Some(ob) = obligation {
        let ob: serde_json::Value = pythonize::depythonize(&ob)?;
        sandbox = sandbox.tightened(&ob)?;
    }
    let done = py.detach(|| sandbox::run(&argv, &sandbox))?;
    let out = json_to_python(
        py,
        &serde_json::to_value(&done).map_err(|e| CoreError::InvalidArgument(e.to_string()))?,
    )?
    .cast_into::<PyDict>()?;
    out.set_item("stdout", PyBytes::new(py, &done.stdout))?;
    out.set_item("stderr", PyBytes::new(py, &done.stderr))?;
    out.set_item("sandbox", json_to_python(py, &sandbox.describe())?)?;
    Ok(out)
}

/// Makes the private network namespace of a `network="proxy"` run: returns
/// `(namespace_fd, listener_fd, port)`. The caller owns both descriptors
/// (close them when the run is over): the listener is a TCP socket on
/// 127.0.0.1:`port` inside the namespace, for the egress proxy to accept on.
#[pyfunction]
pub fn private_network(py: Python<'_>) -> PyResult<(i32, i32, u16)> {
    use std::os::fd::IntoRawFd;
    let net = py.detach(sandbox::private_network)?;
    Ok((
        net.namespace.into_raw_fd(),
        net.listener.into_raw_fd(),
        net.port,
    ))
}
