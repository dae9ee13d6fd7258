//! The gate: builds the input document for a call, evaluates the current
//! policy, and returns a [`Decision`]. Holds the policy behind a lock so
//! `reload()` swaps it atomically.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use regorus::Value;

use super::audit::AuditLog;
use super::error::{CoreError, Result};
use super::ledger::{history_entry, parse_limits, Ledger, DEFAULT_HISTORY};
use super::policy::{FailureKind, Policy, PolicyOptions, PolicySet};
use super::receipt::{approval_body, completion_body, decision_body, Approval, Outcome, Receipt};
use super::redact::Redactor;

/// Whether a deny blocks the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denied calls are blocked.
    Enforce,
    /// Every call proceeds; denials are recorded as "would deny" (for rolling
    /// out a policy).
    Audit,
}

impl Mode {
    /// `"enforce"` or `"audit"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "audit" => Ok(Self::Audit),
            other => Err(CoreError::InvalidArgument(format!(
                "mode must be \"enforce\" or \"audit\", not {other:?}"
            ))),
        }
    }
}

/// One call to authorize. `principal` and `context` are objects (possibly
/// empty); `args` is an object of argument name to value.
#[derive(Debug, Clone)]
pub struct Request {
    /// The action name, e.g. `fs.read`.
    pub action: String,
    /// The call's arguments bound to parameter names.
    pub args: Value,
    /// Who is acting.
    pub principal: Value,
    /// Why and where (purpose, session, tool_call_id, ...).
    pub context: Value,
    /// The gate clock's reading to use instead of the system clock, as
    /// RFC 3339 UTC with a `Z` (for gates with an injected clock).
    pub time: Option<String>,
}

/// The outcome of one check. Immutable.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What the policy decided (in audit mode, a deny here does not block).
    pub allowed: bool,
    /// The gate's mode when deciding.
    pub mode: Mode,
    /// Reasons from the policy, or the cause of a fail-closed deny.
    pub reasons: Vec<String>,
    /// Obligations from the policy (an object; empty on failure).
    pub obligations: Value,
    /// The exact input document the policy saw.
    pub input: Value,
    /// Digest of the policy set that decided.
    pub policy_digest: Arc<str>,
    /// Entry point that was queried.
    pub entrypoint: Arc<str>,
    /// Time spent building the input and evaluating, in nanoseconds.
    pub duration_ns: u64,
    /// Set when the deny is fail-closed rather than the policy's verdict.
    pub error: Option<FailureKind>,
    /// The signed receipt, when the gate has a key.
    pub receipt: Option<Receipt>,
}

impl Decision {
    /// Whether the call must be stopped: denied and the gate enforces.
    pub fn blocks(&self) -> bool {
        !self.allowed && self.mode == Mode::Enforce
    }
}

struct Current {
    policy: Arc<Policy>,
    digest: Arc<str>,
    entrypoint: Arc<str>,
    /// The detectors for this policy's data (custom patterns in
    /// `data.execgate_redact.patterns`), keyed by the gate's pseudonym key.
    redactor: Arc<Redactor>,
}

/// A policy, its sources, and a mode. Thread-safe; share it freely.
pub struct Gate {
    current: RwLock<Current>,
    sources: Mutex<PolicySet>,
    options: PolicyOptions,
    mode: Mode,
    log: Option<Arc<AuditLog>>,
    record_input: bool,
    ledger: Ledger,
    redact_key: [u8; 32],
}

impl Gate {
    /// Compiles `set` and builds a gate. Fails with a policy error if the set
    /// does not load.
    pub fn new(set: PolicySet, options: PolicyOptions, mode: Mode) -> Result<Self> {
        let policy = set.compile(&options)?;
        // Random until a log gives a stable key (see with_log).
        let mut redact_key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut redact_key);
        Ok(Self {
            current: RwLock::new(Current::new(Arc::new(policy), &redact_key)?),
            redact_key,
            sources: Mutex::new(set),
            options,
            mode,
            log: None,
            record_input: false,
            ledger: Ledger::new(DEFAULT_HISTORY),
        })
    }

    /// Receipts every decision into `log` (allow and deny alike). With
    /// `record_input`, receipts carry the whole input document, arguments
    /// included, so `replay` can re-evaluate them.
    pub fn with_log(mut self, log: Arc<AuditLog>, record_input: bool) -> Result<Self> {
        // Rebuild history and rate/budget counters from what the log holds,
        // so a restart is not a way around a limit.
        if let Some(path) = log.path() {
            let text = std::fs::read_to_string(path).map_err(|e| CoreError::Audit {
                message: format!("cannot read to rebuild history: {e}"),
                path: path.display().to_string(),
            })?;
            for line in text.lines() {
                if let Ok(receipt) = Receipt::from_json(line) {
                    self.ledger.replay(receipt.payload());
                }
            }
        }
        // Pseudonyms stay stable across restarts: the key derives from the log's signing key.
        self.redact_key = log.derived_key(b"execgate redaction v1");
        let policy = self.policy();
        *self.current.get_mut() = Current::new(policy, &self.redact_key)?;
        self.log = Some(log);
        self.record_input = record_input;
        Ok(self)
    }

    /// Keeps `len` history entries per session for `input.history` (0: none).
    pub fn with_history(mut self, len: usize) -> Self {
        self.ledger = Ledger::new(len);
        self
    }

    /// The log decisions are receipted into, if any.
    pub fn log(&self) -> Option<&Arc<AuditLog>> {
        self.log.as_ref()
    }

    /// The privacy router of the policy now in force (its data's custom
    /// patterns, this gate's pseudonym key).
    pub fn redactor(&self) -> Arc<Redactor> {
        self.current.read().redactor.clone()
    }

    /// The policy now in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().policy.clone()
    }

    /// The gate's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The evaluation options.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    /// Recompiles (from `set`, or by re-reading the current sources) and swaps
    /// the new policy in. Checks already running finish on the old policy; on
    /// any load error the old policy stays in force. Returns the new digest.
    pub fn reload(&self, set: Option<PolicySet>) -> Result<String> {
        // One reload at a time, so two reloads cannot publish out of order.
        let mut sources = self.sources.lock();
        let set = set.unwrap_or_else(|| sources.clone());
        let policy = set.compile(&self.options)?;
        let digest = policy.digest().to_string();
        *self.current.write() = Current::new(Arc::new(policy), &self.redact_key)?;
        *sources = set;
        Ok(digest)
    }

    /// Builds the input document and evaluates it. Never fails for a deny:
    /// every evaluation failure is a deny whose reason names the cause.
    pub fn check(&self, request: Request) -> Result<Decision> {
        let start = std::time::Instant::now();
        let mut input = input_document(request)?;
        let session = match &input["context"]["session"] {
            Value::String(s) => s.to_string(),
            _ => String::new(),
        };
        if self.ledger.history_len() > 0 {
            let (history, usage) = self.ledger.view(&session);
            if let Ok(root) = input.as_object_mut() {
                root.insert(Value::from("history"), history);
                root.insert(Value::from("usage"), usage);
            }
        }
        let (policy, digest, entrypoint, redactor) = {
            let c = self.current.read();
            (
                c.policy.clone(),
                c.digest.clone(),
                c.entrypoint.clone(),
                c.redactor.clone(),
            )
        };
        let evaluation = policy.evaluate(&input);
        let (mut allowed, mut reasons, mut obligations, mut error) = match evaluation.outcome {
            Ok(v) => (v.allow, v.reasons, v.obligations, None),
            Err(f) => (false, vec![f.message], Value::new_object(), Some(f.kind)),
        };
        let time = input["context"]["time"]
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_default();
        if allowed {
            // Rate and budget obligations are met here, atomically, or the call is denied.
            if let Err(reason) = self.take_limits(&obligations, &time) {
                allowed = false;
                reasons = vec![reason];
                obligations = Value::new_object();
                error = Some(FailureKind::Obligation);
            }
        }
        if self.ledger.history_len() > 0 {
            let args =
                serde_json::to_value(&input["action"]["args"]).unwrap_or(serde_json::Value::Null);
            let name = input["action"]["name"]
                .as_string()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let digest = super::receipt::json_sha256(&args).unwrap_or_default();
            self.ledger
                .record(&session, history_entry(&name, allowed, &time, &digest));
        }
        let mut decision = Decision {
            allowed,
            mode: self.mode,
            reasons,
            obligations,
            input,
            policy_digest: digest,
            entrypoint,
            duration_ns: 0,
            error,
            receipt: None,
        };
        if let Some(log) = &self.log {
            // A decision that cannot be recorded is a deny: no tool runs on an
            // authorization the log does not hold.
            match decision_body(&decision, self.record_input, &redactor)
                .and_then(|body| log.append(body))
            {
                Ok(receipt) => decision.receipt = Some(receipt),
                Err(e) => {
                    decision.allowed = false;
                    decision.reasons = vec![format!("the decision could not be recorded: {e}")];
                    decision.obligations = Value::new_object();
                    decision.error = Some(FailureKind::Audit);
                }
            }
        }
        decision.duration_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(decision)
    }

    fn take_limits(&self, obligations: &Value, time: &str) -> std::result::Result<(), String> {
        if !matches!(obligations, Value::Object(o) if o.contains_key(&Value::from("rate")) || o.contains_key(&Value::from("budget")))
        {
            return Ok(());
        }
        let json = serde_json::to_value(obligations).map_err(|e| e.to_string())?;
        let (rates, budgets) = parse_limits(&json)?;
        let now = chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp_micros() as f64 / 1e6)
            .map_err(|e| format!("cannot read context.time for rate limits: {e}"))?;
        self.ledger.take(&rates, &budgets, now)
    }

    /// Records a human's answer to a decision that required approval.
    pub fn record_approval(&self, authorization: &Receipt, approval: &Approval) -> Result<Receipt> {
        let log = self.log.as_ref().ok_or_else(|| {
            CoreError::InvalidArgument("this gate has no key or log to record approvals in".into())
        })?;
        log.append(approval_body(authorization, approval)?)
    }

    /// Records what happened when an authorized call ran, linked to its
    /// authorization receipt.
    pub fn record_outcome(&self, authorization: &Receipt, outcome: &Outcome) -> Result<Receipt> {
        let log = self.log.as_ref().ok_or_else(|| {
            CoreError::InvalidArgument("this gate has no key or log to record outcomes in".into())
        })?;
        log.append(completion_body(authorization, outcome)?)
    }
}

impl Current {
    fn new(policy: Arc<Policy>, key: &[u8]) -> Result<Self> {
        let mut custom = BTreeMap::new();
        if let Value::Object(patterns) = &policy.data()["execgate_redact"]["patterns"] {
            for (name, pattern) in patterns.iter() {
                match (name, pattern) {
                    (Value::String(n), Value::String(p)) => {
                        custom.insert(n.to_string(), p.to_string());
                    }
                    _ => {
                        return Err(CoreError::InvalidArgument(
                            "data.execgate_redact.patterns must map names to regex strings".into(),
                        ))
                    }
                }
            }
        }
        Ok(Self {
            digest: policy.digest().into(),
            entrypoint: policy.options().entrypoint.as_str().into(),
            redactor: Arc::new(Redactor::new(&custom, key)?),
            policy,
        })
    }
}

/// The gate's clock: now, as RFC 3339 UTC with microseconds and a `Z`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Assembles `{action: {name, args}, principal, context}` per DESIGN.md §2.
/// `principal.id` (null when unknown) and `principal.roles` (empty when
/// unknown) are always present; `context.time` is always the gate's clock,
/// whatever the caller passed.
fn input_document(request: Request) -> Result<Value> {
    let Request {
        action,
        args,
        mut principal,
        mut context,
        time,
    } = request;
    if action.is_empty() {
        return Err(CoreError::InvalidArgument("action name is empty".into()));
    }
    for (what, v) in [
        ("args", &args),
        ("principal", &principal),
        ("context", &context),
    ] {
        if !matches!(v, Value::Object(_)) {
            return Err(CoreError::InvalidArgument(format!(
                "{what} must be an object"
            )));
        }
    }
    let p = principal.as_object_mut().map_err(invalid)?;
    for (key, default) in [
        ("id", Value::Null),
        ("roles", Value::from(Vec::<Value>::new())),
    ] {
        let key = Value::from(key);
        if !p.contains_key(&key) {
            p.insert(key, default);
        }
    }
    context.as_object_mut().map_err(invalid)?.insert(
        Value::from("time"),
        Value::from(time.unwrap_or_else(now_rfc3339)),
    );
    let mut doc = Value::new_object();
    let root = doc.as_object_mut().map_err(invalid)?;
    let mut act = Value::new_object();
    let a = act.as_object_mut().map_err(invalid)?;
    a.insert(Value::from("name"), Value::from(action));
    a.insert(Value::from("args"), args);
    root.insert(Value::from("action"), act);
    root.insert(Value::from("principal"), principal);
    root.insert(Value::from("context"), context);
    Ok(doc)
}

fn invalid(e: anyhow::Error) -> CoreError {
    CoreError::InvalidArgument(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"package execgate
default decision := {"allow": false, "reasons": ["default deny"]}
decision := {"allow": true} if input.action.name == "ok"
"#;

    fn gate(mode: Mode) -> Gate {
        let mut set = PolicySet::new();
        set.add_source("p.rego", POLICY);
        Gate::new(set, PolicyOptions::default(), mode).unwrap()
    }

    fn request(action: &str) -> Request {
        Request {
            action: action.into(),
            args: Value::new_object(),
            principal: Value::new_object(),
            context: Value::from_json_str(r#"{"time": "spoofed"}"#).unwrap(),
            time: None,
        }
    }

    #[test]
    fn input_document_shape_and_clock() {
        let d = gate(Mode::Enforce).check(request("ok")).unwrap();
        assert!(d.allowed);
        let time = d.input["context"]["time"].as_string().unwrap().to_string();
        assert_ne!(time, "spoofed");
        assert!(time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(&time).is_ok());
        assert_eq!(d.input["principal"]["id"], Value::Null);
        assert_eq!(d.input["action"]["name"], Value::from("ok"));
    }

    #[test]
    fn audit_mode_records_but_does_not_block() {
        let d = gate(Mode::Audit).check(request("nope")).unwrap();
        assert!(!d.allowed && !d.blocks());
        assert_eq!(d.reasons, vec!["default deny"]);
        assert!(gate(Mode::Enforce).check(request("nope")).unwrap().blocks());
    }

    #[test]
    fn failed_reload_keeps_old_policy() {
        let g = gate(Mode::Enforce);
        let before = g.policy().digest().to_string();
        let mut bad = PolicySet::new();
        bad.add_source("bad.rego", "package execgate\ndecision if {");
        assert!(g.reload(Some(bad)).is_err());
        assert_eq!(g.policy().digest(), before);
        assert!(g.check(request("ok")).unwrap().allowed);
    }

    #[test]
    fn gate_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Gate>();
    }
}
