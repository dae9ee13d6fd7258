//! Evaluating a compiled policy: the RVM hot path, the reference interpreter,
//! and the classification of every outcome into a verdict or a fail-closed failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regorus::rvm::vm::{ExecutionMode, RegoVM};
use regorus::rvm::Program;
use regorus::{Engine, Value};

use super::bounds::{Exceeded, Scope};
use super::diagnose::parse_diagnostic;
use super::{timer, FailureKind, PolicyOptions};

/// How many idle VMs a policy keeps for reuse (one per concurrently evaluating
/// thread is enough; more would only hold memory).
const VM_POOL_MAX: usize = 64;

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
    pub(super) reads: super::InputReads,
    pub(super) program: Arc<Program>,
    pub(super) data: Value,
    pub(super) options: PolicyOptions,
    pub(super) digest: String,
    /// The bundle revision the policy came from, if any.
    pub(super) revision: Option<std::sync::Arc<str>>,
    /// The tree-walking interpreter over the same modules, kept as a reference
    /// implementation for differential testing of the RVM.
    pub(super) interpreter: Mutex<Engine>,
    pub(super) pool: Mutex<Vec<RegoVM>>,
    /// Whether the program calls a builtin that only the RVM's guards bound
    /// (see [`bounds`]); the unguarded interpreter is then never run on input.
    pub(super) guarded: bool,
    /// Whether rule calls run on the VM's own heap stack instead of the
    /// native one (see [`super::stack`]).
    pub(super) explicit_stack: bool,
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
    /// The bundle revision the policy came from, if any.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// The bundle revision shared, for decisions that record it.
    pub fn revision_arc(&self) -> Option<std::sync::Arc<str>> {
        self.revision.clone()
    }

    /// Lowercase hex SHA-256 of the modules, data and entry point.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Which on-demand parts of the input the policy reads.
    pub fn reads(&self) -> super::InputReads {
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

    pub(super) fn new_vm(&self) -> std::result::Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| format!("policy data conflicts with rules: {e}"))?;
        vm.set_max_instructions(self.options.max_instructions);
        vm.set_execution_timer_config(Some(timer(self.options.timeout)));
        if self.explicit_stack {
            vm.set_execution_mode(ExecutionMode::Suspendable);
        }
        Ok(vm)
    }

    /// Evaluates `input` with the compiled RVM program (the hot path).
    ///
    /// The RVM reports an error or a conflict inside a rule as that rule being
    /// undefined. So when the entry point comes out undefined, the input is
    /// evaluated again by the interpreter with strict builtin errors, only to
    /// name the cause in the reason; the decision stays a deny either way.
    ///
    /// Builtins are bounded by the memory budget and the deadline (see
    /// [`super::bounds`]), native recursion by [`super::stack`], and an evaluation that
    /// finishes after its deadline is a `limit` deny whatever it returned.
    pub fn evaluate(&self, input: &Value) -> Evaluation {
        let start = Instant::now();
        let scope = Scope::enter(start, self.options.timeout, self.options.max_memory);
        let outcome = match self.run_vm(input, false) {
            Err(f) if f.kind == FailureKind::Undefined && scope.exceeded().is_none() => {
                Err(self.diagnose(input, f))
            }
            other => other,
        };
        let duration = start.elapsed();
        let outcome = match (outcome, scope.exceeded()) {
            (_, Some(why)) => Err(self.exceeded(why)),
            (Err(f), None) if f.kind == FailureKind::Limit => Err(f),
            (_, None) if duration > self.options.timeout => Err(self.late()),
            (other, None) => other,
        };
        drop(scope);
        Evaluation { outcome, duration }
    }

    /// The failure for a builtin stopped by a bound.
    fn exceeded(&self, why: Exceeded) -> EvalFailure {
        let message = match why {
            Exceeded::Memory { builtin, bytes } => format!(
                "policy evaluation exceeded the memory limit in {builtin} (would use {bytes} \
                 bytes; max_memory={})",
                self.options.max_memory
            ),
            Exceeded::Time { builtin } => format!(
                "policy evaluation exceeded the time limit in {builtin} (timeout={}ms)",
                self.options.timeout.as_millis()
            ),
        };
        EvalFailure {
            kind: FailureKind::Limit,
            message,
        }
    }

    /// The failure for an evaluation that returned after its deadline.
    fn late(&self) -> EvalFailure {
        EvalFailure {
            kind: FailureKind::Limit,
            message: format!(
                "policy evaluation exceeded the time limit (timeout={}ms); its result is not used",
                self.options.timeout.as_millis()
            ),
        }
    }

    pub(super) fn run_vm(
        &self,
        input: &Value,
        strict: bool,
    ) -> std::result::Result<Verdict, EvalFailure> {
        let pooled = self.pool.lock().pop();
        let mut vm = pooled
            .map_or_else(|| self.new_vm(), Ok)
            .map_err(|message| EvalFailure {
                kind: FailureKind::Runtime,
                message,
            })?;
        vm.set_input(input.clone());
        vm.set_strict_builtin_errors(strict);
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

    pub(super) fn interpret_with(
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
pub(super) fn classify(err: &dyn std::fmt::Display, options: &PolicyOptions) -> EvalFailure {
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
    } else if lower.contains("memory limit") {
        (
            FailureKind::Limit,
            format!(
                "policy evaluation exceeded the memory limit (max_memory={})",
                options.max_memory
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
