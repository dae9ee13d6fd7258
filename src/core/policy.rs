//! Rego policies: load sources and data, compile once to a regorus RVM program,
//! evaluate an input document to a [`Verdict`] or an [`EvalFailure`].
//!
//! Evaluation never returns an error to the caller: every failure (undefined
//! result, wrong type, conflicting rules, runtime error, exhausted limit) is an
//! [`EvalFailure`] that the gate turns into a deny naming the cause.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::RegoVM;
use regorus::rvm::Program;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use super::error::{PolicyLoadError, Result};

/// The rule queried when none is configured.
pub const DEFAULT_ENTRYPOINT: &str = "data.execgate.decision";

/// Default bound on RVM instructions per evaluation.
///
/// regorus defaults to 25,000, which a policy that scans a 10,000-entry
/// allowlist exceeds. A million instructions is still well under a
/// millisecond of work for the RVM, and the wall-clock bound below catches
/// anything slower.
pub const DEFAULT_MAX_INSTRUCTIONS: usize = 1_000_000;

/// Default wall-clock bound per evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// How many idle VMs a policy keeps for reuse (one per concurrently evaluating
/// thread is enough; more would only hold memory).
const VM_POOL_MAX: usize = 64;

/// How a policy is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Rule path queried for the decision, e.g. `data.execgate.decision`.
    pub entrypoint: String,
    /// Instruction budget of one evaluation; exceeding it denies.
    pub max_instructions: usize,
    /// Wall-clock budget of one evaluation; exceeding it denies.
    pub timeout: Duration,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            entrypoint: DEFAULT_ENTRYPOINT.to_string(),
            max_instructions: DEFAULT_MAX_INSTRUCTIONS,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One thing to load into a policy, recorded as given so `reload()` can read
/// files again.
#[derive(Debug, Clone)]
enum Input {
    Source { name: String, rego: String },
    Path(PathBuf),
    Data { name: String, data: Value },
    DataFile(PathBuf),
}

/// Rego modules and data documents, not yet compiled.
///
/// Files are read when [`PolicySet::compile`] runs, not when they are added, so
/// compiling the same set again picks up edits (that is what `reload()` does),
/// and the policy digest covers exactly what was read.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    inputs: Vec<Input>,
}

/// What a [`PolicySet`] read from its inputs.
#[derive(Default)]
struct Loaded {
    modules: Vec<(String, String)>,
    data: Vec<(String, Value)>,
}

impl Loaded {
    /// An interpreter engine with every module and data document added.
    fn engine(&self, timeout: Duration) -> Result<Engine> {
        let mut engine = Engine::new();
        engine.set_execution_timer_config(timer(timeout));
        for (name, text) in &self.modules {
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(|e| load_error(name, &e))?;
        }
        for (name, data) in &self.data {
            engine
                .add_data(data.clone())
                .map_err(|e| PolicyLoadError::in_file(name.as_str(), format!("{e:#}")))?;
        }
        Ok(engine)
    }
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds Rego source text under a display name used in error locations.
    pub fn add_source(&mut self, name: impl Into<String>, rego: impl Into<String>) -> &mut Self {
        self.inputs.push(Input::Source {
            name: name.into(),
            rego: rego.into(),
        });
        self
    }

    /// Adds a `.rego` file, or every `*.rego` file below a directory (sorted,
    /// recursive). Files ending in `_test.rego` hold policy unit tests, not
    /// policy, and are skipped.
    pub fn add_path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.inputs.push(Input::Path(path.into()));
        self
    }

    /// Adds a data document (an object); documents are merged, and a key
    /// defined twice with different values is a load error.
    pub fn add_data(&mut self, name: impl Into<String>, data: Value) -> &mut Self {
        self.inputs.push(Input::Data {
            name: name.into(),
            data,
        });
        self
    }

    /// Adds a JSON (`.json`) or YAML (`.yaml`/`.yml`) data file.
    pub fn add_data_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.inputs.push(Input::DataFile(path.into()));
        self
    }

    fn load(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        for input in &self.inputs {
            match input {
                Input::Source { name, rego } => loaded.modules.push((name.clone(), rego.clone())),
                Input::Path(path) => load_rego_path(path, &mut loaded.modules)?,
                Input::Data { name, data } => loaded.data.push((name.clone(), data.clone())),
                Input::DataFile(path) => loaded.data.push(load_data_file(path)?),
            }
        }
        if loaded.modules.is_empty() {
            return Err(PolicyLoadError::new("no policy given").into());
        }
        if let Some((name, _)) = loaded
            .data
            .iter()
            .find(|(_, d)| !matches!(d, Value::Object(_)))
        {
            return Err(PolicyLoadError::in_file(name, "data must be a JSON object").into());
        }
        Ok(loaded)
    }

    /// Parses and compiles everything into an evaluable [`Policy`].
    pub fn compile(&self, options: &PolicyOptions) -> Result<Policy> {
        if options.max_instructions == 0 || options.timeout.is_zero() {
            return Err(
                PolicyLoadError::new("max_instructions and timeout must be positive").into(),
            );
        }
        let loaded = self.load()?;
        let mut engine = loaded.engine(options.timeout)?;
        let entry: regorus::Rc<str> = options.entrypoint.as_str().into();
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| entrypoint_error(&options.entrypoint, &e))?;
        let program = Compiler::compile_from_policy(&compiled, &[options.entrypoint.as_str()])
            .map_err(|e| entrypoint_error(&options.entrypoint, &e))?;
        let data = engine.get_data();
        let policy = Policy {
            reads: InputReads::of(&loaded.modules),
            digest: digest(&loaded.modules, &data, &options.entrypoint),
            program,
            data,
            options: options.clone(),
            interpreter: Mutex::new(engine),
            pool: Mutex::new(Vec::new()),
        };
        // Build one VM now so rule/data conflicts surface at load, not first call.
        let vm = policy.new_vm().map_err(PolicyLoadError::new)?;
        policy.pool.lock().push(vm);
        Ok(policy)
    }
}

/// Which parts of the input a policy's text can read that the gate builds on
/// demand (they cost something per check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputReads {
    /// `input.history`, or the input indexed by a computed key.
    pub history: bool,
    /// `input.usage`, or the input indexed by a computed key.
    pub usage: bool,
}

impl InputReads {
    /// Scans the module texts. A reference the scan cannot resolve
    /// (`input[x]`, or `input` itself handed to a function) counts as reading
    /// everything, so history is never silently empty for a policy that uses it.
    fn of(modules: &[(String, String)]) -> Self {
        static PATTERN: OnceLock<Option<regex::Regex>> = OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            regex::Regex::new(
                r#"\binput\s*(?:\.\s*(history|usage)\b|\[\s*"(history|usage)"|\[|[^.\[\w\s]|\s*$)"#,
            )
            .ok()
        });
        let mut reads = Self::default();
        for (_, text) in modules {
            let Some(pattern) = pattern else {
                return Self {
                    history: true,
                    usage: true,
                };
            };
            for line in text.lines() {
                let code = line.split('#').next().unwrap_or("");
                for caps in pattern.captures_iter(code) {
                    match caps.get(1).or_else(|| caps.get(2)).map(|m| m.as_str()) {
                        Some("history") => reads.history = true,
                        Some("usage") => reads.usage = true,
                        _ => {
                            return Self {
                                history: true,
                                usage: true,
                            }
                        }
                    }
                }
            }
        }
        reads
    }
}

/// SHA-256 over the modules (sorted by name), the merged data and the entry point.
fn digest(modules: &[(String, String)], data: &Value, entrypoint: &str) -> String {
    let mut modules: Vec<&(String, String)> = modules.iter().collect();
    modules.sort();
    let mut h = Sha256::new();
    for (name, text) in modules {
        for part in [b"module".as_slice(), name.as_bytes(), text.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    for part in [
        b"data".as_slice(),
        data.to_string().as_bytes(),
        entrypoint.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

fn load_rego_path(path: &Path, modules: &mut Vec<(String, String)>) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PolicyLoadError::in_file(path, format!("cannot read policy: {e}")))?;
    let mut files: Vec<PathBuf> = Vec::new();
    if meta.is_dir() {
        for entry in walkdir::WalkDir::new(path).follow_links(true) {
            let entry = entry.map_err(|e| {
                PolicyLoadError::in_file(path, format!("cannot list policy directory: {e}"))
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file()
                && name.ends_with(".rego")
                && !name.ends_with("_test.rego")
            {
                files.push(entry.into_path());
            }
        }
        if files.is_empty() {
            return Err(PolicyLoadError::in_file(path, "no .rego files in directory").into());
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| PolicyLoadError::in_file(&file, format!("cannot read policy: {e}")))?;
        modules.push((file.display().to_string(), text));
    }
    Ok(())
}

fn load_data_file(path: &Path) -> Result<(String, Value)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyLoadError::in_file(path, format!("cannot read data: {e}")))?;
    let parsed = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Value::from_yaml_str(&text),
        _ => Value::from_json_str(&text),
    }
    .map_err(|e| PolicyLoadError::in_file(path, format!("invalid data: {e}")))?;
    Ok((path.display().to_string(), parsed))
}

/// Reading the clock costs about as much as a few dozen instructions, so the
/// time limit is checked every [`TIMER_CHECK_INTERVAL`] units of work; the
/// instruction limit still bounds what can run between two checks.
const TIMER_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(256) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

/// One Rego unit test: a rule named `test_*` (the `opa test` convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoTest {
    /// The file that defines it.
    pub file: String,
    /// Its full rule path, e.g. `data.execgate.test_reads_allowed`.
    pub rule: String,
}

/// The outcome of one Rego unit test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoTestOutcome {
    /// The rule evaluated to `true`.
    Passed,
    /// The rule was undefined or not `true`; the text says what it was.
    Failed(String),
    /// Evaluation raised an error.
    Error(String),
}

impl PolicySet {
    /// The `test_*` rules of the set's modules, in file order.
    pub fn rego_tests(&self) -> Result<Vec<RegoTest>> {
        static PACKAGE: OnceLock<regex::Regex> = OnceLock::new();
        static TEST: OnceLock<regex::Regex> = OnceLock::new();
        let package = PACKAGE.get_or_init(|| {
            regex::Regex::new(r"(?m)^\s*package\s+([A-Za-z0-9_.]+)").expect("valid pattern")
        });
        let test = TEST.get_or_init(|| {
            regex::Regex::new(r"(?m)^(test_[A-Za-z0-9_]+)\b").expect("valid pattern")
        });
        let mut out = Vec::new();
        for (file, text) in self.load()?.modules {
            let Some(pkg) = package.captures(&text).map(|c| c[1].to_string()) else {
                continue;
            };
            let mut seen = std::collections::BTreeSet::new();
            for c in test.captures_iter(&text) {
                if seen.insert(c[1].to_string()) {
                    out.push(RegoTest {
                        file: file.clone(),
                        rule: format!("data.{pkg}.{}", &c[1]),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Runs one test rule with the interpreter (tests use `with`, which the
    /// RVM does not compile). Load errors are returned as errors.
    pub fn run_rego_test(&self, rule: &str) -> Result<RegoTestOutcome> {
        let mut engine = self.load()?.engine(DEFAULT_TIMEOUT * 10)?;
        Ok(match engine.eval_rule(rule.to_string()) {
            Ok(Value::Bool(true)) => RegoTestOutcome::Passed,
            Ok(Value::Undefined) => {
                RegoTestOutcome::Failed(format!("{rule} is undefined (a condition failed)"))
            }
            Ok(other) => RegoTestOutcome::Failed(format!("{rule} is {other}, not true")),
            Err(e) => RegoTestOutcome::Error(parse_diagnostic(&e).to_string()),
        })
    }
}

/// Splits a regorus diagnostic into its location and its message.
///
/// regorus renders errors as `--> file:line:col`, a source excerpt, then
/// `error: message`, sometimes followed by further located notes; the first
/// location and message are kept and the excerpts dropped.
fn parse_diagnostic(err: &dyn std::fmt::Display) -> PolicyLoadError {
    static LOCATION: OnceLock<regex::Regex> = OnceLock::new();
    let text = format!("{err:#}");
    let re = LOCATION.get_or_init(|| {
        regex::Regex::new(r"--> (.+?):(\d+):(\d+)").expect("location pattern is valid")
    });
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let message = last.trim().trim_start_matches("error: ").to_string();
    let location = re.captures(&text);
    PolicyLoadError {
        message,
        file: location.as_ref().map(|c| c[1].to_string()),
        line: location.as_ref().and_then(|c| c[2].parse().ok()),
        column: location.as_ref().and_then(|c| c[3].parse().ok()),
    }
}

fn load_error(name: &str, err: &dyn std::fmt::Display) -> PolicyLoadError {
    let mut e = parse_diagnostic(err);
    e.file.get_or_insert_with(|| name.to_string());
    e
}

fn entrypoint_error(entrypoint: &str, err: &dyn std::fmt::Display) -> PolicyLoadError {
    let mut e = parse_diagnostic(err);
    if e.line.is_none() {
        e.message = format!("cannot compile entrypoint {entrypoint}: {}", e.message);
    }
    e
}

/// What a policy said, when it said something well-formed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether the action may proceed.
    pub allow: bool,
    /// Human-readable reasons, in the order the policy gave them.
    pub reasons: Vec<String>,
    /// Instructions for enforcement (sandbox limits, redactions, ...); an object.
    pub obligations: Value,
}

pub use super::decision::FailureKind;

/// A failed evaluation: the kind and a reason fit to show a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalFailure {
    /// Which fail-closed case this is.
    pub kind: FailureKind,
    /// A sentence naming the cause.
    pub message: String,
}

/// The result of one evaluation and how long it took.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The verdict, or why there is none.
    pub outcome: std::result::Result<Verdict, EvalFailure>,
    /// Time spent evaluating.
    pub duration: Duration,
}

/// A compiled, immutable policy. Safe to share between threads; each
/// evaluation borrows a VM from a small pool so threads never contend on one.
pub struct Policy {
    reads: InputReads,
    program: Arc<Program>,
    data: Value,
    options: PolicyOptions,
    digest: String,
    /// The tree-walking interpreter over the same modules, kept as a reference
    /// implementation for differential testing of the RVM.
    interpreter: Mutex<Engine>,
    pool: Mutex<Vec<RegoVM>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("entrypoint", &self.options.entrypoint)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Lowercase hex SHA-256 of the modules, data and entry point.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Which on-demand parts of the input the policy reads.
    pub fn reads(&self) -> InputReads {
        self.reads
    }

    /// The merged data document.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The options this policy was compiled with.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    fn new_vm(&self) -> std::result::Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| format!("policy data conflicts with rules: {e}"))?;
        vm.set_max_instructions(self.options.max_instructions);
        vm.set_execution_timer_config(Some(timer(self.options.timeout)));
        Ok(vm)
    }

    /// Evaluates `input` with the compiled RVM program (the hot path).
    ///
    /// The RVM reports an error or a conflict inside a rule as that rule being
    /// undefined. So when the entry point comes out undefined, the input is
    /// evaluated again by the interpreter with strict builtin errors, only to
    /// name the cause in the reason; the decision stays a deny either way.
    pub fn evaluate(&self, input: &Value) -> Evaluation {
        let start = Instant::now();
        let outcome = match self.run_vm(input) {
            Err(f) if f.kind == FailureKind::Undefined => Err(self.diagnose(input, f)),
            other => other,
        };
        Evaluation {
            outcome,
            duration: start.elapsed(),
        }
    }

    fn run_vm(&self, input: &Value) -> std::result::Result<Verdict, EvalFailure> {
        let pooled = self.pool.lock().pop();
        let mut vm = pooled
            .map_or_else(|| self.new_vm(), Ok)
            .map_err(|message| EvalFailure {
                kind: FailureKind::Runtime,
                message,
            })?;
        vm.set_input(input.clone());
        let result = vm.execute();
        // Release the input now rather than holding it in the pool.
        vm.set_input(Value::Null);
        let mut pool = self.pool.lock();
        if pool.len() < VM_POOL_MAX {
            pool.push(vm);
        }
        drop(pool);
        result
            .map_err(|e| classify(&e, &self.options))
            .and_then(|v| interpret(v, &self.options.entrypoint))
    }

    /// Finds out why the entry point was undefined; returns the failure to report.
    fn diagnose(&self, input: &Value, undefined: EvalFailure) -> EvalFailure {
        match self.interpret_with(input, true) {
            Err(f) if f.kind != FailureKind::Undefined => f,
            Ok(v) if v.allow => EvalFailure {
                kind: FailureKind::Runtime,
                message: format!(
                    "policy error: {} is undefined in the compiled policy but allows in the \
                     interpreter; denying",
                    self.options.entrypoint
                ),
            },
            _ => undefined,
        }
    }

    /// Evaluates `input` with regorus's tree-walking interpreter, with the same
    /// (OPA default) builtin error semantics as the RVM.
    ///
    /// Slower than [`Policy::evaluate`]; it is the reference the RVM is checked
    /// against (`tests/differential.rs`).
    pub fn evaluate_interpreted(&self, input: &Value) -> Evaluation {
        let start = Instant::now();
        let outcome = self.interpret_with(input, false);
        Evaluation {
            outcome,
            duration: start.elapsed(),
        }
    }

    fn interpret_with(
        &self,
        input: &Value,
        strict: bool,
    ) -> std::result::Result<Verdict, EvalFailure> {
        let mut engine = self.interpreter.lock();
        engine.set_strict_builtin_errors(strict);
        engine.set_input(input.clone());
        let result = engine.eval_rule(self.options.entrypoint.clone());
        drop(engine);
        result
            .map_err(|e| classify(&e, &self.options))
            .and_then(|v| interpret(v, &self.options.entrypoint))
    }
}

/// Maps an engine error to the fail-closed case it represents, with a
/// one-line reason (`file:line:col: message` when the engine located it).
fn classify(err: &dyn std::fmt::Display, options: &PolicyOptions) -> EvalFailure {
    let message = parse_diagnostic(err).to_string();
    let lower = message.to_ascii_lowercase();
    let (kind, message) = if lower.contains("instruction limit") {
        (
            FailureKind::Limit,
            format!(
                "policy evaluation exceeded the instruction limit (max_instructions={})",
                options.max_instructions
            ),
        )
    } else if lower.contains("time limit") {
        (
            FailureKind::Limit,
            format!(
                "policy evaluation exceeded the time limit (timeout={}ms)",
                options.timeout.as_millis()
            ),
        )
    } else if lower.contains("conflict") || lower.contains("multiple outputs") {
        (
            FailureKind::Conflict,
            format!("policy error: conflicting values: {message}"),
        )
    } else {
        (
            FailureKind::Runtime,
            format!("policy error during evaluation: {message}"),
        )
    };
    EvalFailure { kind, message }
}

/// Reads the entry point's value per the contract: a boolean, or an object
/// `{allow: bool, reasons: [string], obligations: {...}}`.
fn interpret(value: Value, entrypoint: &str) -> std::result::Result<Verdict, EvalFailure> {
    let type_error = |what: &str| EvalFailure {
        kind: FailureKind::Type,
        message: format!("policy error: {entrypoint} {what}"),
    };
    match value {
        Value::Undefined => Err(EvalFailure {
            kind: FailureKind::Undefined,
            message: format!("policy error: {entrypoint} is undefined for this input"),
        }),
        Value::Bool(allow) => Ok(Verdict {
            allow,
            reasons: if allow {
                Vec::new()
            } else {
                vec![format!("denied by {entrypoint}")]
            },
            obligations: Value::new_object(),
        }),
        Value::Object(fields) => {
            let allow = match fields.get(&Value::from("allow")) {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(type_error("has a non-boolean \"allow\"")),
                None => return Err(type_error("has no \"allow\" field")),
            };
            let reasons = match fields.get(&Value::from("reasons")) {
                None => Vec::new(),
                Some(Value::Array(items)) => {
                    strings(items.iter()).ok_or_else(|| type_error("has non-string \"reasons\""))?
                }
                Some(Value::Set(items)) => {
                    strings(items.iter()).ok_or_else(|| type_error("has non-string \"reasons\""))?
                }
                Some(_) => return Err(type_error("has \"reasons\" that is not an array or set")),
            };
            let obligations = match fields.get(&Value::from("obligations")) {
                None => Value::new_object(),
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(type_error("has \"obligations\" that is not an object")),
            };
            let reasons = if !allow && reasons.is_empty() {
                vec![format!("denied by {entrypoint}")]
            } else {
                reasons
            };
            Ok(Verdict {
                allow,
                reasons,
                obligations,
            })
        }
        other => Err(type_error(&format!(
            "must be a boolean or a decision object, got {}",
            type_name(&other)
        ))),
    }
}

fn strings<'a>(items: impl Iterator<Item = &'a Value>) -> Option<Vec<String>> {
    items
        .map(|v| match v {
            Value::String(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(rego: &str) -> Policy {
        let mut set = PolicySet::new();
        set.add_source("p.rego", rego);
        set.compile(&PolicyOptions::default()).expect("compiles")
    }

    fn eval(p: &Policy, input: &str) -> std::result::Result<Verdict, EvalFailure> {
        p.evaluate(&Value::from_json_str(input).expect("json"))
            .outcome
    }

    #[test]
    fn boolean_decision() {
        let p = compile("package execgate\ndefault decision := false\ndecision if input.ok\n");
        assert!(eval(&p, r#"{"ok": true}"#).unwrap().allow);
        let deny = eval(&p, r#"{"ok": false}"#).unwrap();
        assert!(!deny.allow);
        assert_eq!(deny.reasons, vec!["denied by data.execgate.decision"]);
    }

    #[test]
    fn object_decision_keeps_reasons_and_obligations() {
        let p = compile(
            r#"package execgate
decision := {"allow": false, "reasons": ["a", "b"], "obligations": {"x": 1}}"#,
        );
        let v = eval(&p, "{}").unwrap();
        assert_eq!(v.reasons, vec!["a", "b"]);
        assert_eq!(v.obligations, Value::from_json_str(r#"{"x":1}"#).unwrap());
    }

    #[test]
    fn undefined_and_type_errors_fail() {
        let p = compile("package execgate\ndecision if input.ok\n");
        assert_eq!(eval(&p, "{}").unwrap_err().kind, FailureKind::Undefined);
        let p = compile("package execgate\ndecision := 3\n");
        assert_eq!(eval(&p, "{}").unwrap_err().kind, FailureKind::Type);
        let p = compile("package execgate\ndecision := {\"allow\": \"yes\"}\n");
        assert_eq!(eval(&p, "{}").unwrap_err().kind, FailureKind::Type);
    }

    #[test]
    fn parse_error_has_location() {
        let mut set = PolicySet::new();
        set.add_source(
            "bad.rego",
            "package execgate\n\ndecision if {\n  input.x ==\n}\n",
        );
        let err = set.compile(&PolicyOptions::default()).unwrap_err();
        let super::super::error::CoreError::Policy(e) = err else {
            panic!("wrong error")
        };
        assert_eq!(e.file.as_deref(), Some("bad.rego"));
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    }

    #[test]
    fn digest_changes_with_data() {
        let mut a = PolicySet::new();
        a.add_source("p.rego", "package execgate\ndecision := true\n");
        let mut b = a.clone();
        b.add_data("d", Value::from_json_str(r#"{"k": 1}"#).unwrap());
        let o = PolicyOptions::default();
        assert_ne!(
            a.compile(&o).unwrap().digest(),
            b.compile(&o).unwrap().digest()
        );
    }
}
