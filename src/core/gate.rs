//! The gate: a compiled policy (swapped atomically by `reload()`), its audit
//! log, its ledger and its privacy router. Calls go through it by way of the
//! pipeline ([`crate::core::pipeline`]), which owns the stages and their order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use regorus::Value;

use super::audit::{AuditLog, StateFold};
use super::decision::{now_rfc3339, Mode, Request};
use super::error::{CoreError, Result};
use super::ledger::{Ledger, DEFAULT_HISTORY};
use super::policy::{Policy, PolicyOptions, PolicySet};
use super::receipt::{completion_body, Outcome, Receipt};
use super::redact::Redactor;
use super::state::{SharedState, StateOptions};

/// The policy in force, with what is derived from it.
pub(crate) struct Current {
    pub(crate) policy: Arc<Policy>,
    pub(crate) digest: Arc<str>,
    pub(crate) entrypoint: Arc<str>,
    /// The detectors for this policy's data (custom patterns in
    /// `data.execgate_redact.patterns`), keyed by the gate's pseudonym key.
    pub(crate) redactor: Arc<Redactor>,
}

/// A policy, its sources, and a mode. Thread-safe; share it in an `Arc`.
pub struct Gate {
    current: RwLock<Arc<Current>>,
    sources: Mutex<PolicySet>,
    options: PolicyOptions,
    pub(crate) mode: Mode,
    pub(crate) log: Option<Arc<AuditLog>>,
    pub(crate) record_input: bool,
    pub(crate) ledger: Ledger,
    /// Where limits and history live when shared by many workers (Redis);
    /// `None`: in `ledger`.
    pub(crate) state: Option<SharedState>,
    redact_key: [u8; 32],
    freshness: Option<Freshness>,
}

/// A maximum policy age: the bundle in force must have been confirmed
/// current (by whoever fetches it) within `max_age`, or every decision denies.
struct Freshness {
    /// What the bundle is, for the reason (its path or URL).
    source: String,
    max_age: Duration,
    /// When the bundle in force was last confirmed current; None: never.
    confirmed: Mutex<Option<Instant>>,
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
            current: RwLock::new(Arc::new(Current::new(Arc::new(policy), &redact_key)?)),
            redact_key,
            sources: Mutex::new(set),
            options,
            mode,
            log: None,
            record_input: false,
            ledger: Ledger::new(DEFAULT_HISTORY),
            state: None,
            freshness: None,
        })
    }

    /// Denies every decision (`error="stale"`) once the policy, a bundle
    /// from `source`, was last confirmed current more than `max_age` ago
    /// (see [`Gate::confirm_bundle`]). Until the first confirmation the
    /// policy counts as stale.
    pub fn with_max_age(mut self, source: String, max_age: Duration) -> Result<Self> {
        if max_age.is_zero() {
            return Err(CoreError::InvalidArgument(
                "bundle_max_age must be a positive number of seconds".into(),
            ));
        }
        self.freshness = Some(Freshness {
            source,
            max_age,
            confirmed: Mutex::new(None),
        });
        Ok(self)
    }

    /// Records that the bundle in force was confirmed current `age` ago (0:
    /// now; a bundle restored from a cache is as old as its last
    /// confirmation). Without a maximum age this does nothing.
    pub fn confirm_bundle(&self, age: Duration) {
        if let Some(f) = &self.freshness {
            // An age beyond what the monotonic clock can reach back to is stale.
            *f.confirmed.lock() = Instant::now().checked_sub(age);
        }
    }

    /// Why the policy in force may not decide, if it is older than the
    /// maximum age.
    pub(crate) fn stale(&self, revision: Option<&str>) -> Option<String> {
        let f = self.freshness.as_ref()?;
        let confirmed = *f.confirmed.lock();
        let age = confirmed.map(|t| t.elapsed());
        if age.is_some_and(|a| a <= f.max_age) {
            return None;
        }
        let what = match revision {
            Some(r) => format!("policy bundle {} (revision {r:?})", f.source),
            None => format!("policy bundle {}", f.source),
        };
        Some(match age {
            Some(a) => format!(
                "{what} is stale: last confirmed current {:.1} s ago, more than \
                 bundle_max_age {} s",
                a.as_secs_f64(),
                f.max_age.as_secs_f64()
            ),
            None => format!("{what} is stale: never confirmed current"),
        })
    }

    /// Receipts every decision into `log` (allow and deny alike). With
    /// `record_input`, receipts carry the whole input document, arguments
    /// included, so `replay` can re-evaluate them.
    pub fn with_log(mut self, log: Arc<AuditLog>, record_input: bool) -> Result<Self> {
        // Pseudonyms stay stable across restarts: the key derives from the
        // log's signing key. The ledger is keyed by pseudonyms (sessions and
        // limit keys as the log records them), so it can be rebuilt from it.
        self.redact_key = log.derived_key(b"execgate redaction v1");
        let policy = self.policy();
        *self.current.get_mut() = Arc::new(Current::new(policy, &self.redact_key)?);
        // Rebuild history and rate/budget counters from what the log holds,
        // so a restart is not a way around a limit: from the last signed
        // `state` record and the records after it, read through the log's
        // own descriptor (no second open, so no symlink or special file is
        // ever followed). The log keeps this fold in step with every record
        // and writes it out periodically (see `audit::state`).
        if log.path().is_some() {
            let fold: Arc<dyn StateFold> = Arc::new(Ledger::with_bounds(
                self.ledger.history_len(),
                self.ledger.max_sessions(),
            ));
            let fold = log.attach_state(fold)?;
            let rebuilt = fold.snapshot();
            self.ledger
                .restore(&rebuilt)
                .map_err(|message| CoreError::Audit {
                    message,
                    path: log
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                })?;
        }
        self.log = Some(log);
        self.record_input = record_input;
        Ok(self)
    }

    /// Keeps `len` history entries per session for policies that read
    /// `input.history` (the default is [`DEFAULT_HISTORY`]).
    pub fn with_history(mut self, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(CoreError::InvalidArgument(
                "history must keep at least one entry; policies that do not read \
                 input.history cost nothing"
                    .into(),
            ));
        }
        // Keeps what a log already rebuilt, if `with_log` came first.
        let ledger = Ledger::with_bounds(len, self.ledger.max_sessions());
        ledger
            .restore(&self.ledger.snapshot())
            .map_err(CoreError::InvalidArgument)?;
        self.ledger = ledger;
        Ok(self)
    }

    /// Keeps rates, budgets and history in the Redis at `url`, shared with
    /// every gate pointed at it (see [`crate::core::state`]). Needs a log
    /// (a signing key): limit keys and sessions are the pseudonyms the log
    /// records, derived from its key, so workers sharing a store must share
    /// the key, and the store can be rebuilt from their logs.
    pub fn with_state(mut self, url: &str, options: StateOptions) -> Result<Self> {
        let log = self.log.as_ref().ok_or_else(|| {
            CoreError::InvalidArgument(
                "state= needs a signing key (key=...): limit keys and sessions in the shared \
                 store are the pseudonyms the audit trail records, derived from that key"
                    .into(),
            )
        })?;
        let call_key = log.derived_key(b"execgate state call id v1");
        self.state = Some(SharedState::open(url, options, call_key)?);
        Ok(self)
    }

    /// The shared state store, if limits and history live in one.
    pub fn state(&self) -> Option<&SharedState> {
        self.state.as_ref()
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

    pub(crate) fn current(&self) -> Arc<Current> {
        self.current.read().clone()
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
        *self.current.write() = Arc::new(Current::new(Arc::new(policy), &self.redact_key)?);
        *sources = set;
        Ok(digest)
    }

    /// Records what happened when an authorized call ran, linked to its
    /// authorization receipt (for callers that run the tool themselves).
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

/// Assembles `{action: {name, args}, principal, context}` per DESIGN.md §2.
/// `principal.id` (null when unknown) and `principal.roles` (empty when
/// unknown) are always present; `context.time` is always the gate's clock,
/// whatever the caller passed.
pub(crate) fn input_document(request: &Request) -> Result<Value> {
    let Request {
        action,
        args,
        principal,
        context,
        time,
    } = request;
    if action.is_empty() {
        return Err(CoreError::InvalidArgument("action name is empty".into()));
    }
    if args.entries().is_none() {
        return Err(CoreError::InvalidArgument("args must be an object".into()));
    }
    for (what, v) in [("principal", principal), ("context", context)] {
        if !matches!(v, Value::Object(_)) {
            return Err(CoreError::InvalidArgument(format!(
                "{what} must be an object"
            )));
        }
    }
    let mut principal = principal.clone();
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
    let mut context = context.clone();
    context.as_object_mut().map_err(invalid)?.insert(
        Value::from("time"),
        Value::from(time.clone().unwrap_or_else(now_rfc3339)),
    );
    let mut doc = Value::new_object();
    let root = doc.as_object_mut().map_err(invalid)?;
    let mut act = Value::new_object();
    let a = act.as_object_mut().map_err(invalid)?;
    a.insert(Value::from("name"), Value::from(action.as_str()));
    a.insert(Value::from("args"), args.to_value());
    root.insert(Value::from("action"), act);
    root.insert(Value::from("principal"), principal);
    root.insert(Value::from("context"), context);
    Ok(doc)
}

fn invalid(e: anyhow::Error) -> CoreError {
    CoreError::InvalidArgument(e.to_string())
}
