//! `execgate._core.Gate` and `execgate._core.Decision`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::audit::PyAuditLog;
use super::convert::{dict_to_value, to_python, to_value};
use super::keys::PyReceipt;
use crate::core::gate::{Decision, Gate, Mode, Request};
use crate::core::policy::{
    PolicyOptions, PolicySet, DEFAULT_ENTRYPOINT, DEFAULT_MAX_INSTRUCTIONS, DEFAULT_MAX_MEMORY,
    DEFAULT_TIMEOUT,
};
use crate::core::receipt::{json_sha256, sha256_hex, Approval, Outcome};

/// Builds a policy set from the already-classified pieces the Python layer passes.
fn policy_set(
    sources: Vec<(String, String)>,
    paths: Vec<PathBuf>,
    data: Vec<Bound<'_, PyDict>>,
    data_files: Vec<PathBuf>,
) -> PyResult<PolicySet> {
    let mut set = PolicySet::new();
    for (name, rego) in sources {
        set.add_source(name, rego);
    }
    for path in paths {
        set.add_path(path);
    }
    for (i, d) in data.iter().enumerate() {
        let mut path = String::from("data");
        set.add_data(format!("<data {i}>"), dict_to_value(d, &mut path, 0)?);
    }
    for path in data_files {
        set.add_data_file(path);
    }
    Ok(set)
}

fn optional_object(obj: Option<&Bound<'_, PyDict>>, name: &str) -> PyResult<regorus::Value> {
    match obj {
        None => Ok(regorus::Value::new_object()),
        Some(d) => dict_to_value(d, &mut name.to_string(), 0),
    }
}

/// Lists the `test_*` rules of the given policy files as (file, rule path).
#[pyfunction]
#[pyo3(signature = (*, sources=Vec::new(), paths=Vec::new(), data=Vec::new(), data_files=Vec::new()))]
pub fn rego_tests(
    py: Python<'_>,
    sources: Vec<(String, String)>,
    paths: Vec<PathBuf>,
    data: Vec<Bound<'_, PyDict>>,
    data_files: Vec<PathBuf>,
) -> PyResult<Vec<(String, String)>> {
    let set = policy_set(sources, paths, data, data_files)?;
    let tests = py.detach(|| set.rego_tests())?;
    Ok(tests.into_iter().map(|t| (t.file, t.rule)).collect())
}

/// Runs one Rego test rule: returns ("passed" | "failed" | "error", detail).
#[pyfunction]
#[pyo3(signature = (rule, *, sources=Vec::new(), paths=Vec::new(), data=Vec::new(), data_files=Vec::new()))]
pub fn run_rego_test(
    py: Python<'_>,
    rule: String,
    sources: Vec<(String, String)>,
    paths: Vec<PathBuf>,
    data: Vec<Bound<'_, PyDict>>,
    data_files: Vec<PathBuf>,
) -> PyResult<(&'static str, String)> {
    use crate::core::policy::RegoTestOutcome;
    let set = policy_set(sources, paths, data, data_files)?;
    Ok(match py.detach(|| set.run_rego_test(&rule))? {
        RegoTestOutcome::Passed => ("passed", String::new()),
        RegoTestOutcome::Failed(d) => ("failed", d),
        RegoTestOutcome::Error(d) => ("error", d),
    })
}

/// The native gate: compiled policy, evaluation and reload.
#[pyclass(frozen, name = "Gate", module = "execgate._core")]
pub struct PyGate {
    inner: Gate,
}

#[pymethods]
impl PyGate {
    #[new]
    #[pyo3(signature = (*, sources=Vec::new(), paths=Vec::new(), data=Vec::new(), data_files=Vec::new(),
                        entrypoint=DEFAULT_ENTRYPOINT.to_string(), mode="enforce",
                        max_instructions=DEFAULT_MAX_INSTRUCTIONS, timeout=DEFAULT_TIMEOUT.as_secs_f64(),
                        max_memory=DEFAULT_MAX_MEMORY, log=None, record_input=false, history=crate::core::ledger::DEFAULT_HISTORY))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        sources: Vec<(String, String)>,
        paths: Vec<PathBuf>,
        data: Vec<Bound<'_, PyDict>>,
        data_files: Vec<PathBuf>,
        entrypoint: String,
        mode: &str,
        max_instructions: usize,
        timeout: f64,
        max_memory: u64,
        log: Option<PyRef<'_, PyAuditLog>>,
        record_input: bool,
        history: usize,
    ) -> PyResult<Self> {
        let mode: Mode = mode.parse()?;
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "timeout must be a positive number of seconds",
            ));
        }
        let options = PolicyOptions {
            entrypoint,
            max_instructions,
            timeout: Duration::from_secs_f64(timeout),
            max_memory,
        };
        let set = policy_set(sources, paths, data, data_files)?;
        let mut inner = py
            .detach(|| Gate::new(set, options, mode))?
            .with_history(history);
        if let Some(log) = log {
            let log = log.inner.clone();
            inner = py.detach(|| inner.with_log(log, record_input))?;
        }
        Ok(Self { inner })
    }

    /// Evaluates one call. Never raises for a deny.
    #[pyo3(signature = (action, args=None, principal=None, context=None, time=None))]
    fn check(
        &self,
        py: Python<'_>,
        action: String,
        args: Option<&Bound<'_, PyDict>>,
        principal: Option<&Bound<'_, PyDict>>,
        context: Option<&Bound<'_, PyDict>>,
        time: Option<String>,
    ) -> PyResult<PyDecision> {
        let request = Request {
            action,
            args: optional_object(args, "args")?,
            principal: optional_object(principal, "principal")?,
            context: optional_object(context, "context")?,
            time,
        };
        let decision = py.detach(|| self.inner.check(request))?;
        Ok(PyDecision { inner: decision })
    }

    /// Recompiles and swaps the policy in atomically; with no arguments,
    /// re-reads the current sources. Returns the new policy digest.
    #[pyo3(signature = (*, sources=None, paths=None, data=None, data_files=None))]
    fn reload(
        &self,
        py: Python<'_>,
        sources: Option<Vec<(String, String)>>,
        paths: Option<Vec<PathBuf>>,
        data: Option<Vec<Bound<'_, PyDict>>>,
        data_files: Option<Vec<PathBuf>>,
    ) -> PyResult<String> {
        let replace =
            sources.is_some() || paths.is_some() || data.is_some() || data_files.is_some();
        let set = if replace {
            Some(policy_set(
                sources.unwrap_or_default(),
                paths.unwrap_or_default(),
                data.unwrap_or_default(),
                data_files.unwrap_or_default(),
            )?)
        } else {
            None
        };
        Ok(py.detach(|| self.inner.reload(set))?)
    }

    /// Records the outcome of an authorized call as a completion receipt.
    ///
    /// The output is digested as: bytes as they are, str as UTF-8, anything
    /// else as the RFC 8785 JSON of its argument conversion; an output that
    /// cannot be converted gets no digest and its type name is recorded.
    #[pyo3(signature = (receipt, *, status, duration_ns=0, output=None, error_type=None, extra=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_outcome(
        &self,
        py: Python<'_>,
        receipt: PyRef<'_, PyReceipt>,
        status: String,
        duration_ns: u64,
        output: Option<Bound<'_, PyAny>>,
        error_type: Option<String>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<PyReceipt> {
        let extra: serde_json::Map<String, serde_json::Value> = match extra {
            Some(d) => pythonize::depythonize(d.as_any())?,
            None => serde_json::Map::new(),
        };
        let mut outcome = Outcome {
            status,
            error_type,
            duration_ns,
            extra,
            ..Outcome::default()
        };
        if let Some(out) = output {
            match output_digest(&out) {
                Ok(digest) => outcome.output_sha256 = Some(digest),
                Err(_) => {
                    outcome.extra.insert(
                        "output_type".into(),
                        serde_json::Value::String(out.get_type().name()?.to_string()),
                    );
                }
            }
        }
        let authorization = receipt.inner.clone();
        let inner = py.detach(|| self.inner.record_outcome(&authorization, &outcome))?;
        Ok(PyReceipt { inner })
    }

    /// Records a human's answer to a decision that required approval.
    #[pyo3(signature = (receipt, *, approved, approver, comment=None, timed_out=false))]
    fn record_approval(
        &self,
        py: Python<'_>,
        receipt: PyRef<'_, PyReceipt>,
        approved: bool,
        approver: String,
        comment: Option<String>,
        timed_out: bool,
    ) -> PyResult<PyReceipt> {
        let approval = Approval {
            approved,
            approver,
            comment,
            timed_out,
        };
        let authorization = receipt.inner.clone();
        let inner = py.detach(|| self.inner.record_approval(&authorization, &approval))?;
        Ok(PyReceipt { inner })
    }

    /// Applies the gate's privacy router (built-in and policy-data detectors,
    /// this gate's pseudonym key) to `value`; returns `(new_value, report)`.
    #[pyo3(signature = (value, *, transform="mask", detectors=None, path=String::new()))]
    fn redact<'py>(
        &self,
        py: Python<'py>,
        value: Bound<'py, PyAny>,
        transform: &str,
        detectors: Option<Vec<String>>,
        path: String,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let transform: crate::core::redact::Transform = transform.parse()?;
        let json = serde_json::to_value(to_value(&value, &mut path.clone(), 0)?)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let redactor = self.inner.redactor();
        let (out, findings) =
            py.detach(|| redactor.redact(&json, detectors.as_deref(), transform, &path))?;
        let report = serde_json::to_value(&findings)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        Ok((
            super::convert::json_to_python(py, &out)?,
            super::convert::json_to_python(py, &report)?,
        ))
    }

    /// The audit log this gate writes, if any.
    #[getter]
    fn log(&self) -> Option<PyAuditLog> {
        self.inner.log().map(|l| PyAuditLog { inner: l.clone() })
    }

    #[getter]
    fn policy_digest(&self) -> String {
        self.inner.policy().digest().to_string()
    }

    #[getter]
    fn entrypoint(&self) -> String {
        self.inner.options().entrypoint.clone()
    }

    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode().as_str()
    }

    #[getter]
    fn max_instructions(&self) -> usize {
        self.inner.options().max_instructions
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.inner.options().timeout.as_secs_f64()
    }

    #[getter]
    fn max_memory(&self) -> u64 {
        self.inner.options().max_memory
    }
}

fn output_digest(out: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = out.cast::<pyo3::types::PyBytes>() {
        return Ok(sha256_hex(b.as_bytes()));
    }
    if let Ok(s) = out.cast::<pyo3::types::PyString>() {
        return Ok(sha256_hex(s.to_str()?.as_bytes()));
    }
    let value = to_value(out, &mut String::from("output"), 0)?;
    let json = serde_json::to_value(&value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(json_sha256(&json)?)
}

/// An immutable authorization decision.
#[pyclass(frozen, name = "Decision", module = "execgate._core")]
pub struct PyDecision {
    inner: Decision,
}

#[pymethods]
impl PyDecision {
    /// What the policy decided. In audit mode a deny does not block.
    #[getter]
    fn allowed(&self) -> bool {
        self.inner.allowed
    }

    /// True when the call must not run (denied, and the gate enforces).
    #[getter]
    fn blocked(&self) -> bool {
        self.inner.blocks()
    }

    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode.as_str()
    }

    #[getter]
    fn reasons<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.reasons)
    }

    #[getter]
    fn obligations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.inner.obligations)
    }

    #[getter]
    fn input<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.inner.input)
    }

    #[getter]
    fn action(&self) -> String {
        self.inner.input["action"]["name"]
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    #[getter]
    fn policy_digest(&self) -> &str {
        &self.inner.policy_digest
    }

    #[getter]
    fn entrypoint(&self) -> &str {
        &self.inner.entrypoint
    }

    #[getter]
    fn duration_ns(&self) -> u64 {
        self.inner.duration_ns
    }

    /// The fail-closed cause (`undefined`, `type`, `conflict`, `limit`,
    /// `runtime`), or None when the policy itself decided.
    #[getter]
    fn error(&self) -> Option<&'static str> {
        self.inner.error.map(|k| k.as_str())
    }

    /// The signed receipt, when the gate has a key (None otherwise).
    #[getter]
    fn receipt(&self) -> Option<PyReceipt> {
        self.inner.receipt.clone().map(|inner| PyReceipt { inner })
    }

    /// A plain dict of every field, for logging or JSON.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("allowed", self.inner.allowed)?;
        d.set_item("blocked", self.inner.blocks())?;
        d.set_item("mode", self.inner.mode.as_str())?;
        d.set_item("reasons", self.reasons(py)?.to_list())?;
        d.set_item("obligations", self.obligations(py)?)?;
        d.set_item("error", self.error())?;
        d.set_item("policy_digest", self.policy_digest())?;
        d.set_item("entrypoint", self.entrypoint())?;
        d.set_item("duration_ns", self.inner.duration_ns)?;
        d.set_item("input", self.input(py)?)?;
        d.set_item(
            "receipt",
            self.inner.receipt.as_ref().map(|r| r.id().to_string()),
        )?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let verdict = match (self.inner.allowed, self.inner.blocks()) {
            (true, _) => "ALLOW",
            (false, true) => "DENY",
            (false, false) => "DENY (audit: not enforced)",
        };
        let principal = self.inner.input["principal"]["id"].to_string();
        format!(
            "<Decision {verdict} action={:?} principal={principal} reasons={:?} policy={}>",
            self.action(),
            self.inner.reasons,
            &self.inner.policy_digest[..12.min(self.inner.policy_digest.len())]
        )
    }
}
