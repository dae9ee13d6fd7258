//! Rego policies: load sources and data, compile once to a regorus RVM program,
//! evaluate an input document to a [`Verdict`] or an [`EvalFailure`].
//!
//! Evaluation never returns an error to the caller: every failure (undefined
//! result, wrong type, conflicting rules, runtime error, exhausted limit) is an
//! [`EvalFailure`] that the gate turns into a deny naming the cause.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use regorus::languages::rego::compiler::Compiler;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use super::error::{PolicyLoadError, Result};

mod bounds;
mod cycles;
mod diagnose;
mod eval;
pub mod files;
mod regex_match;
mod rego_test;
mod stack;

pub use bounds::DEFAULT_MAX_MEMORY;
pub use eval::{EvalFailure, Evaluation, Policy, Verdict};
pub use files::{MAX_DATA_FILE_BYTES, MAX_KEY_FILE_BYTES, MAX_POLICY_FILE_BYTES};
pub use rego_test::{RegoTest, RegoTestOutcome};

use diagnose::{entrypoint_error, load_error};

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

/// How a policy is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Rule path queried for the decision, e.g. `data.execgate.decision`.
    pub entrypoint: String,
    /// Instruction budget of one evaluation; exceeding it denies.
    pub max_instructions: usize,
    /// Wall-clock budget of one evaluation; exceeding it denies, and so does
    /// a result that arrives after it.
    pub timeout: Duration,
    /// Memory budget of one evaluation, in bytes of builtin output (see
    /// [`DEFAULT_MAX_MEMORY`]); a builtin call that would exceed it denies.
    pub max_memory: u64,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            entrypoint: DEFAULT_ENTRYPOINT.to_string(),
            max_instructions: DEFAULT_MAX_INSTRUCTIONS,
            timeout: DEFAULT_TIMEOUT,
            max_memory: DEFAULT_MAX_MEMORY,
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
    /// The bundle revision these inputs came from, if any (see [`crate::core::bundle`]).
    revision: Option<String>,
}

/// What a [`PolicySet`] read from its inputs.
#[derive(Default)]
pub(super) struct Loaded {
    pub(super) modules: Vec<(String, String)>,
    pub(super) data: Vec<(String, Value)>,
}

impl Loaded {
    /// An interpreter engine with every module and data document added.
    pub(super) fn engine(&self, timeout: Duration) -> Result<Engine> {
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

    /// Names the bundle revision this set came from; receipts record it in
    /// `policy.revision`.
    pub fn set_revision(&mut self, revision: impl Into<String>) -> &mut Self {
        self.revision = Some(revision.into());
        self
    }

    /// The bundle revision this set came from, if any.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    pub(super) fn load(&self) -> Result<Loaded> {
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
    ///
    /// A policy in which a rule or function depends on itself is refused
    /// (see [`cycles`]).
    pub fn compile(&self, options: &PolicyOptions) -> Result<Policy> {
        self.compile_with(options, stack::Checks::default())
    }

    fn compile_with(&self, options: &PolicyOptions, checks: stack::Checks) -> Result<Policy> {
        if options.max_instructions == 0 || options.timeout.is_zero() || options.max_memory == 0 {
            return Err(PolicyLoadError::new(
                "max_instructions, timeout and max_memory must be positive",
            )
            .into());
        }
        let loaded = self.load()?;
        if checks.cycles {
            cycles::check(&loaded.modules)?;
        }
        let mut engine = loaded.engine(options.timeout)?;
        let entry: regorus::Rc<str> = options.entrypoint.as_str().into();
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| entrypoint_error(&options.entrypoint, &e))?;
        let program = Compiler::compile_from_policy(&compiled, &[options.entrypoint.as_str()])
            .map_err(|e| entrypoint_error(&options.entrypoint, &e))?;
        let mut program = Arc::unwrap_or_clone(program);
        bounds::install(&mut program);
        regex_match::install(&mut program);
        let guarded = bounds::uses_guarded_builtins(&program);
        let explicit_stack = stack::needs_explicit_stack(&program) || checks.explicit_stack;
        let program = Arc::new(program);
        let data = engine.get_data();
        let policy = Policy {
            reads: InputReads::of(&loaded.modules),
            guarded,
            explicit_stack,
            digest: digest(&loaded.modules, &data, &options.entrypoint),
            revision: self.revision.as_deref().map(Into::into),
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
    let mut found: Vec<PathBuf> = Vec::new();
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
                found.push(entry.into_path());
            }
        }
        if found.is_empty() {
            return Err(PolicyLoadError::in_file(path, "no .rego files in directory").into());
        }
        found.sort();
    } else {
        found.push(path.to_path_buf());
    }
    for file in found {
        let text = files::read_regular_text(&file, MAX_POLICY_FILE_BYTES)
            .map_err(|e| PolicyLoadError::in_file(&file, format!("cannot read policy: {e}")))?;
        modules.push((file.display().to_string(), text));
    }
    Ok(())
}

fn load_data_file(path: &Path) -> Result<(String, Value)> {
    let text = files::read_regular_text(path, MAX_DATA_FILE_BYTES)
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

pub(super) fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

pub use crate::core::decision::FailureKind;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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

    /// Runs the named test of this module in a child process under an
    /// address-space limit, so a regression that allocates without bound or
    /// overflows the stack fails the test instead of taking the machine down.
    fn in_child(test: &str, body: impl FnOnce()) {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("EXECGATE_BOUNDS_CHILD").is_some() {
            body();
            return;
        }
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--test-threads=1"])
            .env("EXECGATE_BOUNDS_CHILD", "1");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{test} failed in its child: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn recursion_is_refused_at_load_with_the_cycle_named() {
        for (rego, cycle) in [
            (
                "f(x) := f(x)\ndecision := f(1)\n",
                "data.execgate.f -> data.execgate.f",
            ),
            (
                "a := b\nb := a\ndecision := a\n",
                "data.execgate.a -> data.execgate.b -> data.execgate.a",
            ),
            (
                "h(x) := g(x)\ng(x) := h(x)\ndecision := g(1)\n",
                "data.execgate.g -> data.execgate.h -> data.execgate.g",
            ),
        ] {
            let mut set = PolicySet::new();
            set.add_source("p.rego", format!("package execgate\n{rego}"));
            let err = set.compile(&PolicyOptions::default()).unwrap_err();
            assert!(err.to_string().contains(cycle), "{err}");
        }
    }

    #[test]
    fn recursion_past_the_load_check_is_a_limit_deny() {
        in_child(
            "core::policy::tests::recursion_past_the_load_check_is_a_limit_deny",
            || {
                for rego in [
                    "f(x) := f(x)\ndecision := f(1)\n",
                    "a := b\nb := a\ndecision := a\n",
                ] {
                    let mut set = PolicySet::new();
                    set.add_source("p.rego", format!("package execgate\n{rego}"));
                    let checks = stack::Checks {
                        cycles: false,
                        explicit_stack: true,
                    };
                    let p = set.compile_with(&PolicyOptions::default(), checks).unwrap();
                    let f = eval(&p, "{}").unwrap_err();
                    assert_eq!(f.kind, FailureKind::Limit, "{f:?}");
                }
            },
        );
    }

    #[test]
    fn builtin_bombs_deny_with_limit_within_the_budget() {
        in_child(
            "core::policy::tests::builtin_bombs_deny_with_limit_within_the_budget",
            || {
                let doubling: String = (1..=12)
                    .map(|i| format!("s{i} := replace(s{}, \"a\", \"aa\")\n", i - 1))
                    .collect();
                for (rego, input) in [
                    ("decision := count(numbers.range(0, 1e9)) > 0", "{}"),
                    ("decision := count(numbers.range_step(0, 1e9, 1)) > 0", "{}"),
                    ("decision := count(net.cidr_expand(\"::/64\")) > 0", "{}"),
                    (
                        "decision := count([x | some x in numbers.range(1, 1e8)]) > 0",
                        "{}",
                    ),
                    (
                        "decision := count(numbers.range(0, input.n)) > 0",
                        r#"{"n": 2e9}"#,
                    ),
                    ("decision := count(sprintf(\"%999999999d\", [1])) > 0", "{}"),
                    (
                        &format!(
                            "s0 := concat(\"\", [\"a\" | some _ in numbers.range(1, 10000)])\n\
                             {doubling}decision := {{\"allow\": count(s12) > 0}}"
                        ),
                        "{}",
                    ),
                ] {
                    let p = compile(&format!("package execgate\n{rego}\n"));
                    let f = eval(&p, input).unwrap_err();
                    assert_eq!(f.kind, FailureKind::Limit, "{rego}: {f:?}");
                }
            },
        );
    }

    #[test]
    fn small_builtin_calls_are_unaffected() {
        let p = compile(
            "package execgate\ndecision := {\"allow\": count(numbers.range(1, 100)) == 100, \
             \"reasons\": [sprintf(\"%5d|%v\", [3, replace(\"ab\", \"a\", \"xy\")])]}\n",
        );
        let v = eval(&p, "{}").unwrap();
        assert!(v.allow);
        assert_eq!(v.reasons, vec!["    3|xyb"]);
    }

    #[test]
    fn a_result_after_the_deadline_is_a_limit_deny() {
        let mut set = PolicySet::new();
        set.add_source(
            "p.rego",
            "package execgate\ndecision := count([x | some x in numbers.range(1, 200000)]) > 0\n",
        );
        let options = PolicyOptions {
            timeout: Duration::from_nanos(1),
            ..PolicyOptions::default()
        };
        let p = set.compile(&options).unwrap();
        let f = eval(&p, "{}").unwrap_err();
        assert_eq!(f.kind, FailureKind::Limit, "{f:?}");
    }

    #[test]
    fn fifo_directory_and_oversized_policy_and_data_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("execgate-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("p.rego");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut set = PolicySet::new();
        set.add_path(&fifo);
        let e = set
            .compile(&PolicyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("FIFO"), "{e}");
        let big = dir.join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_DATA_FILE_BYTES + 1).unwrap();
        let mut set = PolicySet::new();
        set.add_source("p.rego", "package execgate\ndecision := true\n");
        set.add_data_file(&big);
        let e = set
            .compile(&PolicyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("byte limit"), "{e}");
        let mut set = PolicySet::new();
        set.add_source("p.rego", "package execgate\ndecision := true\n");
        set.add_data_file("/dev/zero");
        let e = set
            .compile(&PolicyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
    }
}
