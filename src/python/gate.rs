//! `execgate._core.Gate` and `execgate._core.Decision`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyMapping, PyTuple};
use regorus::Value;

use super::audit::PyAuditLog;
use super::bundle::PyBundle;
use super::convert::{json_to_python, optional_object, seconds, to_python, to_value, Converter};
use super::keys::PyReceipt;
use crate::core::decision::{Decision, Mode, Request};
use crate::core::error::CoreError;
use crate::core::gate::Gate;
use crate::core::pipeline::{Call, Capabilities};
use crate::core::policy::{
    PolicyOptions, PolicySet, DEFAULT_ENTRYPOINT, DEFAULT_MAX_INSTRUCTIONS, DEFAULT_MAX_MEMORY,
    DEFAULT_TIMEOUT,
};
use crate::core::receipt::{Approval, Outcome};
use crate::core::state::{
    StateOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT as DEFAULT_STATE_TIMEOUT,
};

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
        set.add_data(format!("<data {i}>"), to_value(d.as_any(), "data")?);
    }
    for path in data_files {
        set.add_data_file(path);
    }
    Ok(set)
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

/// The native gate: compiled policy, the call pipeline, reload.
#[pyclass(frozen, name = "Gate", module = "execgate._core")]
pub struct PyGate {
    inner: Arc<Gate>,
}

#[pymethods]
impl PyGate {
    #[new]
    #[pyo3(signature = (*, sources=Vec::new(), paths=Vec::new(), data=Vec::new(), data_files=Vec::new(),
                        entrypoint=DEFAULT_ENTRYPOINT.to_string(), mode="enforce",
                        max_instructions=DEFAULT_MAX_INSTRUCTIONS, timeout=DEFAULT_TIMEOUT.as_secs_f64(),
                        max_memory=DEFAULT_MAX_MEMORY, log=None, record_input=false, history=None,
                        bundle=None, bundle_max_age=None, bundle_name=String::new(), state=None,
                        state_timeout=DEFAULT_STATE_TIMEOUT.as_secs_f64(),
                        state_connect_timeout=DEFAULT_CONNECT_TIMEOUT.as_secs_f64()))]
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
        history: Option<usize>,
        bundle: Option<PyRef<'_, PyBundle>>,
        bundle_max_age: Option<f64>,
        bundle_name: String,
        state: Option<String>,
        state_timeout: f64,
        state_connect_timeout: f64,
    ) -> PyResult<Self> {
        let mode: Mode = mode.parse()?;
        for (what, n) in [
            ("max_instructions", max_instructions as u64),
            ("max_memory", max_memory),
        ] {
            if n == 0 {
                return Err(CoreError::InvalidArgument(format!("{what} must be positive")).into());
            }
        }
        let options = PolicyOptions {
            entrypoint,
            max_instructions,
            timeout: seconds(timeout, "timeout")?,
            max_memory,
        };
        // A bundle replaces every other policy source.
        let set = match bundle {
            Some(b) => b.inner.policy_set(),
            None => policy_set(sources, paths, data, data_files)?,
        };
        let mut inner = py.detach(|| Gate::new(set, options, mode))?;
        if let Some(len) = history {
            inner = inner.with_history(len)?;
        }
        if let Some(age) = bundle_max_age {
            inner = inner.with_max_age(bundle_name, seconds(age, "bundle_max_age")?)?;
        }
        if let Some(log) = log {
            let log = log.inner.clone();
            inner = py.detach(|| inner.with_log(log, record_input))?;
        }
        if let Some(url) = state {
            let options = StateOptions {
                connect_timeout: seconds(state_connect_timeout, "state_connect_timeout")?,
                timeout: seconds(state_timeout, "state_timeout")?,
            };
            inner = inner.with_state(&url, options)?;
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Evaluates one call and parses its obligations: the first stages of the
    /// pipeline. `principal` and `context` override the ambient ones
    /// (`execgate.principal(...)`, `execgate.context(...)`) key by key.
    /// `capabilities` says what the entry point can enforce; None (for
    /// `check()`) leaves the obligations to the caller. With `authorize=True`
    /// the call is also authorized (limits taken, decision recorded), for
    /// callers with no approver to ask first. Never raises for a deny.
    #[pyo3(signature = (action, args=None, principal=None, context=None, time=None,
                        capabilities=None, authorize=false))]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        py: Python<'_>,
        action: String,
        args: Option<&Bound<'_, PyDict>>,
        principal: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
        time: Option<String>,
        capabilities: Option<&PyCapabilities>,
        authorize: bool,
    ) -> PyResult<PyCall> {
        let (request, conv) = request(py, action, args, principal, context, time)?;
        let capabilities = capabilities.map(|c| c.inner.clone());
        let call = self.run(py, request, capabilities, authorize)?;
        Ok(PyCall {
            state: Mutex::new(CallState { call, conv }),
        })
    }

    /// `decide(..., query=True, authorize=True).decision` in one step, for
    /// `check()` when there is no approver to ask: the decision, with no call
    /// object around it.
    #[pyo3(signature = (action, args=None, principal=None, context=None, time=None))]
    fn check(
        &self,
        py: Python<'_>,
        action: String,
        args: Option<&Bound<'_, PyDict>>,
        principal: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
        time: Option<String>,
    ) -> PyResult<PyDecision> {
        let (request, _) = request(py, action, args, principal, context, time)?;
        let call = self.run(py, request, None, true)?;
        Ok(PyDecision {
            inner: call.shared_decision(),
        })
    }

    /// Recompiles and swaps the policy in atomically; with no arguments,
    /// re-reads the current sources. Returns the new policy digest.
    /// A verified `bundle` replaces every other source.
    #[pyo3(signature = (*, sources=None, paths=None, data=None, data_files=None, bundle=None))]
    fn reload(
        &self,
        py: Python<'_>,
        sources: Option<Vec<(String, String)>>,
        paths: Option<Vec<PathBuf>>,
        data: Option<Vec<Bound<'_, PyDict>>>,
        data_files: Option<Vec<PathBuf>>,
        bundle: Option<PyRef<'_, PyBundle>>,
    ) -> PyResult<String> {
        let replace =
            sources.is_some() || paths.is_some() || data.is_some() || data_files.is_some();
        let set = if let Some(b) = bundle {
            Some(b.inner.policy_set())
        } else if replace {
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

    /// Records that the bundle in force was confirmed current `age` seconds
    /// ago (see `bundle_max_age`); an infinite age leaves it stale.
    #[pyo3(signature = (age=0.0))]
    fn confirm_bundle(&self, age: f64) -> PyResult<()> {
        if age.is_nan() || age < 0.0 {
            return Err(CoreError::InvalidArgument(format!(
                "a bundle's age cannot be {age} seconds"
            ))
            .into());
        }
        // Past what a Duration holds (inf): never confirmed, so stale.
        let age = Duration::try_from_secs_f64(age).unwrap_or(Duration::MAX);
        self.inner.confirm_bundle(age);
        Ok(())
    }

    /// Records the outcome of a call its caller ran itself (after a bare
    /// `check()`), linked to the decision's receipt.
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
        let outcome = outcome(status, duration_ns, output.as_ref(), error_type, extra)?;
        let authorization = receipt.inner.clone();
        let inner = py.detach(|| self.inner.record_outcome(&authorization, &outcome))?;
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
        super::redact::run(
            py,
            &self.inner.redactor(),
            &value,
            transform,
            detectors,
            &path,
        )
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

    /// The revision of the bundle now in force, if the policy came from one.
    #[getter]
    fn policy_revision(&self) -> Option<String> {
        self.inner.policy().revision().map(str::to_string)
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

/// The outcome record's fields from what an entry point reports. The output
/// is digested as: bytes as they are, str as UTF-8, anything else as the
/// RFC 8785 JSON of its argument conversion; an output that cannot be
/// converted gets no digest and its type name is recorded.
fn outcome(
    status: String,
    duration_ns: u64,
    output: Option<&Bound<'_, PyAny>>,
    error_type: Option<String>,
    extra: Option<Bound<'_, PyDict>>,
) -> PyResult<Outcome> {
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
        match Converter::default().arg(out, &mut String::from("output"), 0) {
            Ok(arg) => outcome.output_sha256 = Some(arg.digest()?),
            Err(_) => {
                outcome.extra.insert(
                    "output_type".into(),
                    serde_json::Value::String(out.get_type().name()?.to_string()),
                );
            }
        }
    }
    Ok(outcome)
}

struct CallState {
    call: Call,
    /// The converter of the call's arguments: it holds the originals the tool
    /// receives as they are.
    conv: Converter,
}

impl PyGate {
    /// Decides `request` without the GIL; with `authorize`, also authorizes
    /// it in the same crossing (a pending approval is then recorded as such).
    fn run(
        &self,
        py: Python<'_>,
        request: Request,
        capabilities: Option<Capabilities>,
        authorize: bool,
    ) -> PyResult<Call> {
        let gate = self.inner.clone();
        Ok(py.detach(|| -> crate::core::error::Result<Call> {
            let mut call = gate.decide(request, capabilities)?;
            if authorize {
                call.authorize()?;
            }
            Ok(call)
        })?)
    }
}

/// The request from the Python arguments, and the converter that holds the
/// originals of the arguments' opaque values (to hand them to the tool).
fn request(
    py: Python<'_>,
    action: String,
    args: Option<&Bound<'_, PyDict>>,
    principal: Option<&Bound<'_, PyAny>>,
    context: Option<&Bound<'_, PyAny>>,
    time: Option<String>,
) -> PyResult<(Request, Converter)> {
    let mut conv = Converter::default();
    let args = optional_object(&mut conv, args, "args")?;
    let mut side = Converter::default();
    let request = Request {
        action,
        args,
        principal: PRINCIPAL.merged(py, &mut side, principal)?,
        context: CONTEXT.merged(py, &mut side, context)?,
        time,
    };
    Ok((request, conv))
}

/// The ambient principal or context: a context variable of `execgate.context`.
struct Ambient {
    /// The variable's `get`.
    var: PyOnceLock<Py<PyAny>>,
    attr: &'static str,
    name: &'static str,
}

static PRINCIPAL: Ambient = Ambient {
    var: PyOnceLock::new(),
    attr: "_principal",
    name: "principal",
};
static CONTEXT: Ambient = Ambient {
    var: PyOnceLock::new(),
    attr: "_context",
    name: "context",
};

impl Ambient {
    /// The ambient value overridden key by key by the call's own (`own`).
    fn merged(
        &self,
        py: Python<'_>,
        conv: &mut Converter,
        own: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Value> {
        // The context variable's bound `get`, looked up once.
        let get = self.var.get_or_try_init(py, || {
            let module = py.import("execgate.context")?;
            PyResult::Ok(module.getattr(self.attr)?.getattr("get")?.unbind())
        })?;
        let current = get.call0(py)?;
        let current = current.bind(py).cast::<PyDict>().map_err(PyErr::from)?;
        let own = match own {
            None => None,
            Some(o) => Some(match o.cast::<PyDict>() {
                Ok(d) => d.clone(),
                Err(_) => {
                    // Any other mapping, as `dict(own)` reads it.
                    let d = PyDict::new(py);
                    d.update(o.cast::<PyMapping>().map_err(PyErr::from)?)?;
                    d
                }
            }),
        };
        let Some(own) = own.filter(|o| !o.is_empty()) else {
            return Ok(optional_object(conv, Some(current), self.name)?.to_value());
        };
        if current.is_empty() {
            return Ok(optional_object(conv, Some(&own), self.name)?.to_value());
        }
        let mut value = optional_object(conv, Some(current), self.name)?.to_value();
        if let (Some(entries), Ok(map)) = (
            optional_object(conv, Some(&own), self.name)?.entries(),
            value.as_object_mut(),
        ) {
            for (k, v) in entries {
                map.insert(Value::String(k.clone()), v.to_value());
            }
        }
        Ok(value)
    }
}

/// What an entry point can enforce beyond the decision (built once per entry
/// point, passed with each call): run the tool sandboxed, hand it rewritten
/// arguments (only those named in `replaceable`, when given), pass its output
/// through the redaction. An obligation it cannot meet denies the call.
#[pyclass(frozen, name = "Capabilities", module = "execgate._core")]
pub struct PyCapabilities {
    inner: Capabilities,
}

#[pymethods]
impl PyCapabilities {
    #[new]
    #[pyo3(signature = (*, sandbox=false, rewrite=true, replaceable=None, output=true))]
    fn new(sandbox: bool, rewrite: bool, replaceable: Option<Vec<String>>, output: bool) -> Self {
        Self {
            inner: Capabilities {
                sandbox,
                rewrite,
                replaceable: replaceable.map(Arc::from),
                output,
            },
        }
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "Capabilities(sandbox={}, rewrite={}, replaceable={}, output={})",
            py_bool(c.sandbox),
            py_bool(c.rewrite),
            c.replaceable
                .as_ref()
                .map_or_else(|| "None".to_string(), |r| format!("{r:?}")),
            py_bool(c.output)
        )
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// One call on its way through the pipeline (see `core::pipeline`). Each
/// method is one stage; a stage out of order raises.
#[pyclass(frozen, name = "Call", module = "execgate._core")]
pub struct PyCall {
    state: Mutex<CallState>,
}

#[pymethods]
impl PyCall {
    /// The decision as it stands (final after `authorize()`).
    #[getter]
    fn decision(&self) -> PyDecision {
        PyDecision {
            inner: self.state.lock().call.shared_decision(),
        }
    }

    /// What an approver must be asked (`{"reason", "approvers"}`), while the
    /// call waits for an answer; None otherwise.
    #[getter]
    fn approval<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let state = self.state.lock();
        let Some(request) = state.call.approval() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("reason", request.spec.reason.as_deref())?;
        d.set_item("approvers", request.spec.approvers.clone())?;
        Ok(Some(d))
    }

    /// Gives the approver's answer.
    #[pyo3(signature = (*, approved, approver, comment=None, timed_out=false))]
    fn answer(
        &self,
        approved: bool,
        approver: String,
        comment: Option<String>,
        timed_out: bool,
    ) -> PyResult<()> {
        Ok(self.state.lock().call.answer(Approval {
            approved,
            approver,
            comment,
            timed_out,
        })?)
    }

    /// Refuses the call before it is authorized (for the entry point's own
    /// reasons): `authorize()` then records a deny with `reason`.
    fn refuse(&self, reason: String) -> PyResult<()> {
        Ok(self.state.lock().call.refuse(reason)?)
    }

    /// Meets the approval, takes the limits and records the decision;
    /// returns the final decision.
    fn authorize(&self, py: Python<'_>) -> PyResult<PyDecision> {
        py.detach(|| {
            let mut state = self.state.lock();
            state.call.authorize()?;
            Ok(PyDecision {
                inner: state.call.shared_decision(),
            })
        })
    }

    /// The arguments the tool receives (rewritten and redacted), as a dict.
    fn arguments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.lock();
        let args = state.call.tool_args()?;
        state.conv.to_python(py, args)
    }

    /// Like `arguments()`, but None when the tool may be called with the
    /// caller's own values: the obligations left them as they were and each
    /// is an immutable scalar of an exact type (what the policy judged is
    /// then what those objects are, and nobody can change them).
    fn arguments_if_copied<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let state = self.state.lock();
        let args = state.call.tool_args()?;
        if !state.call.args_changed() && !state.conv.needs_copies {
            return Ok(None);
        }
        state.conv.to_python(py, args).map(Some)
    }

    /// `obligations.sandbox`, for an entry point that runs the tool sandboxed.
    #[getter]
    fn sandbox<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let state = self.state.lock();
        state
            .call
            .sandbox()
            .map(|s| json_to_python(py, s))
            .transpose()
    }

    /// Whether `redact_output` changes anything (so entry points can skip it).
    #[getter]
    fn redacts_output(&self) -> bool {
        self.state.lock().call.redacts_output()
    }

    /// Whether anything happens after the tool runs (its outcome is recorded
    /// or its output redacted): an untracked, authorized call's tool may be
    /// called directly, without `complete()` or `redact_output()`.
    #[getter]
    fn tracked(&self) -> bool {
        self.state.lock().call.tracked()
    }

    /// `value` after `obligations.redact.output`. Raises when it holds what
    /// the router must refuse or cannot rewrite: then it must not be shown.
    fn redact_output<'py>(
        &self,
        py: Python<'py>,
        value: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.lock();
        if !state.call.redacts_output() {
            return Ok(value);
        }
        let mut conv = Converter::default();
        let arg = conv.arg(&value, &mut String::from("output"), 0)?;
        let out = py.detach(|| state.call.redact_output(&arg))?;
        conv.to_python(py, &out)
    }

    /// Records what happened when the tool ran (once). Returns the
    /// completion record's id when the gate keeps a log (the record is
    /// written after this returns unless the log's durability is "always").
    #[pyo3(signature = (status, duration_ns=0, output=None, error_type=None, extra=None))]
    fn complete(
        &self,
        py: Python<'_>,
        status: String,
        duration_ns: u64,
        output: Option<Bound<'_, PyAny>>,
        error_type: Option<String>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Option<String>> {
        // Without a receipt nothing is recorded: skip digesting the output.
        let recorded = self.state.lock().call.decision().receipt.is_some();
        if !recorded {
            // Nothing to write: only the stage moves on (no need to let go of the GIL).
            self.state.lock().call.complete(&Outcome::default())?;
            return Ok(None);
        }
        let outcome = outcome(status, duration_ns, output.as_ref(), error_type, extra)?;
        py.detach(|| Ok(self.state.lock().call.complete(&outcome)?))
    }
}

/// An immutable authorization decision.
#[pyclass(frozen, name = "Decision", module = "execgate._core")]
pub struct PyDecision {
    inner: Arc<Decision>,
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

    /// The revision of the bundle the decision was made under, if any.
    #[getter]
    fn policy_revision(&self) -> Option<&str> {
        self.inner.policy_revision.as_deref()
    }

    /// `input.context` alone (cheaper than `input` when that is all one needs).
    #[getter]
    fn context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.inner.input["context"])
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

    /// The approver's answer (`{"approved", "approver", "comment",
    /// "timed_out"}`) when the policy required approval and one was given.
    #[getter]
    fn approval<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(a) = &self.inner.approval else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("approved", a.approved && !a.timed_out)?;
        d.set_item("approver", &a.approver)?;
        d.set_item("comment", a.comment.as_deref())?;
        d.set_item("timed_out", a.timed_out)?;
        Ok(Some(d))
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
