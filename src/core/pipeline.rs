//! The call pipeline: the one lifecycle every entry point drives.
//!
//! ```text
//! decide -> parse obligations -> rewrite and redact arguments -> approval
//!        -> take limits -> record the decision -> run (the entry point)
//!        -> redact the output -> record the outcome
//! ```
//!
//! [`Gate::decide`] runs the stages up to approval and returns a [`Call`];
//! the entry point obtains an approval answer when [`Call::approval`] asks
//! for one (in its own calling convention: a thread, an event loop, a
//! protocol message), then [`Call::authorize`] takes the limits and records
//! the decision. Only then are [`Call::tool_args`] handed out, and the
//! entry point reports the outcome with [`Call::complete`]. A stage out of
//! order is an error, and every failure on the way to running is a deny
//! whose reason names the cause.

use std::sync::Arc;

use regorus::Value;
use serde_json::Value as Json;

use super::args::Arg;
use super::decision::{Decision, FailureKind, Request};
use super::error::{CoreError, Result};
use super::gate::{input_document, Current, Gate};
use super::ledger::{history_entry, Budget, Rate};
use super::obligation::{ApprovalSpec, Obligations, RedactRule};
use super::policy::EvalFailure;
use super::receipt::{completion_body, decision_body, value_sha256, Approval, Outcome};
use super::state::{HistoryWrite, SharedState};

/// What an entry point can do with a call beyond deciding it. An obligation
/// the entry point cannot meet denies the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// It runs the tool in a sandbox and applies `obligations.sandbox`.
    pub sandbox: bool,
    /// It hands the tool [`Call::tool_args`] (argument rewrites and redaction).
    pub rewrite: bool,
    /// The arguments it can replace, when not all (a function without
    /// `**kwargs` takes only its parameters; a command only its `argv`).
    pub replaceable: Option<Arc<[String]>>,
    /// It passes the output through [`Call::redact_output`] before the caller
    /// sees it.
    pub output: bool,
}

impl Capabilities {
    /// An entry point that runs the tool in-process and can do everything but
    /// sandboxing (a decorator, a framework adapter).
    pub fn in_process() -> Self {
        Self {
            sandbox: false,
            rewrite: true,
            replaceable: None,
            output: true,
        }
    }
}

/// How far a call has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Decided,
    Authorized,
    Completed,
}

/// Limits taken for a call, kept so they can be given back.
struct Taken {
    rates: Vec<Rate>,
    budgets: Vec<Budget>,
    now: f64,
    /// The call id the shared store took them under (`None`: the ledger).
    call: Option<String>,
}

/// One call on its way through the pipeline.
pub struct Call {
    gate: Arc<Gate>,
    current: Arc<Current>,
    /// Shared with the entry point once final (a `Decision` handed out is a
    /// snapshot: a later change copies it).
    decision: Arc<Decision>,
    /// Boxed: it is the bulk of the call, which is moved a few times on the
    /// way to the entry point (and a smaller call object fits Python's
    /// small-object allocator).
    obligations: Box<Obligations>,
    /// What the tool receives (rewritten and redacted) when it runs.
    tool_args: Arg,
    /// Whether the obligations rewrote or redacted the arguments.
    args_changed: bool,
    /// The session, as the ledger and the log know it (a pseudonym).
    session: String,
    answer: Option<Approval>,
    stage: Stage,
    /// None for `check()`: the caller fulfils the obligations itself.
    capabilities: Option<Capabilities>,
}

impl Gate {
    /// Evaluates a call and parses its obligations. `capabilities` says what
    /// the entry point can enforce (None: a query whose caller fulfils the
    /// obligations itself, as `check()` documents). Never fails for a deny:
    /// every failure is a deny naming the cause.
    pub fn decide(
        self: &Arc<Self>,
        request: Request,
        capabilities: Option<Capabilities>,
    ) -> Result<Call> {
        let start = std::time::Instant::now();
        let current = self.current();
        let mut input = input_document(&request)?;
        let session = match &input["context"]["session"] {
            Value::String(s) => current.redactor.pseudonym(s),
            _ => String::new(),
        };
        let reads = current.policy.reads();
        let stateful = reads.history || reads.usage;
        // A policy that reads state it cannot have is not evaluated.
        let evaluate = |input: &mut Value, keys: &[(String, String)]| {
            if stateful {
                if let Err(message) = self.add_state(input, &session, keys) {
                    return Err(EvalFailure {
                        kind: FailureKind::State,
                        message,
                    });
                }
            }
            current.policy.evaluate(input).outcome
        };
        // A policy older than the gate's maximum age does not decide.
        let mut verdict = match self.stale(current.policy.revision()) {
            Some(message) => Err(EvalFailure {
                kind: FailureKind::Stale,
                message,
            }),
            None => evaluate(&mut input, &[]),
        };
        // input.usage.budgets shows only the budgets this decision names: the
        // first evaluation says which; the second sees their spending.
        if reads.usage && verdict.is_ok() {
            if let Ok(v) = &verdict {
                let keys = budget_keys(&v.obligations, &current);
                if !keys.is_empty() {
                    verdict = evaluate(&mut input, &keys);
                }
            }
        }
        let mut decision = Decision {
            allowed: false,
            mode: self.mode,
            reasons: Vec::new(),
            obligations: Value::new_object(),
            input,
            policy_digest: current.digest.clone(),
            entrypoint: current.entrypoint.clone(),
            policy_revision: current.policy.revision_arc(),
            duration_ns: 0,
            error: None,
            approval: None,
            receipt: None,
        };
        let mut obligations = Obligations::default();
        match verdict {
            Ok(v) => {
                decision.allowed = v.allow;
                decision.reasons = v.reasons;
                let parsed = match &v.obligations {
                    // The common case, without a round trip through JSON.
                    Value::Object(o) if o.is_empty() => Ok(Obligations::default()),
                    other => to_json(other)
                        .and_then(|json| Obligations::parse(&json, &current.redactor.names())),
                };
                match parsed {
                    Ok(parsed) => {
                        obligations = parsed;
                        decision.obligations = v.obligations;
                    }
                    Err(reason) => decision.deny(FailureKind::Obligation, reason),
                }
            }
            Err(f) => decision.deny(f.kind, f.message),
        }
        let mut tool_args = request.args;
        let mut args_changed = false;
        if decision.allowed {
            match prepare_args(&tool_args, &obligations, &current, &capabilities) {
                Ok(Some(args)) => {
                    tool_args = args;
                    args_changed = true;
                }
                Ok(None) => {}
                Err(reason) => decision.deny(FailureKind::Obligation, reason),
            }
        }
        decision.duration_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(Call {
            gate: self.clone(),
            current,
            decision: Arc::new(decision),
            obligations: Box::new(obligations),
            tool_args,
            args_changed,
            session,
            answer: None,
            stage: Stage::Decided,
            capabilities,
        })
    }

    /// Puts `input.history` and `input.usage` in the input, from the shared
    /// store or the ledger; `Err` names why the store cannot say.
    fn add_state(
        &self,
        input: &mut Value,
        session: &str,
        budget_keys: &[(String, String)],
    ) -> std::result::Result<(), String> {
        let (history, usage) = match &self.state {
            Some(store) => store
                .view(session, budget_keys, self.ledger.history_len())
                .map_err(|e| e.to_string())?,
            None => self.ledger.view(session, budget_keys),
        };
        if let Ok(root) = input.as_object_mut() {
            root.insert(Value::from("history"), history);
            root.insert(Value::from("usage"), usage);
        }
        Ok(())
    }
}

/// The budget keys a verdict's obligations name, with the keys the ledger
/// keeps them under.
fn budget_keys(obligations: &Value, current: &Current) -> Vec<(String, String)> {
    to_json(obligations)
        .and_then(|json| super::obligation::limits(&json))
        .map(|(_, budgets)| {
            budgets
                .into_iter()
                .map(|b| {
                    let kept = current.redactor.pseudonym(&b.key);
                    (b.key, kept)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn to_json(value: &Value) -> std::result::Result<Json, String> {
    serde_json::to_value(value).map_err(|e| format!("obligations cannot be read: {e}"))
}

/// The arguments the tool will receive when the obligations change them
/// (None: the caller's, unchanged), or the reason the entry point cannot meet
/// the obligations.
fn prepare_args(
    args: &Arg,
    obligations: &Obligations,
    current: &Current,
    capabilities: &Option<Capabilities>,
) -> std::result::Result<Option<Arg>, String> {
    let Some(can) = &capabilities else {
        // A query: the caller fulfils the obligations; only a redaction that
        // refuses outright (a deny transform that finds something) decides here.
        if let Some(rule) = obligations.redact_args.as_ref() {
            redact_args(args, rule, current)?;
        }
        return Ok(None);
    };
    if obligations.sandbox.is_some() && !can.sandbox {
        return Err(
            "obligations.sandbox cannot be met: this entry point does not run the tool \
                    in a sandbox (for a function, guard it with isolate=Sandbox(...))"
                .into(),
        );
    }
    if obligations.redact_output.is_some() && !can.output {
        return Err(
            "obligations.redact.output cannot be met: this entry point cannot rewrite the \
             tool's output"
                .into(),
        );
    }
    if obligations.args.is_none() && obligations.redact_args.is_none() {
        return Ok(None);
    }
    let mut out = args.clone();
    if let Some(Json::Object(rewrite)) = &obligations.args {
        if !can.rewrite {
            return Err(
                "obligations.args cannot be met: this entry point cannot replace the tool's \
                 arguments"
                    .into(),
            );
        }
        let Arg::Map(entries) = &mut out else {
            return Err("the call's arguments are not an object".into());
        };
        for (name, value) in rewrite {
            let value = Arg::from_json(value);
            match entries.iter_mut().find(|(k, _)| **k == **name) {
                Some(entry) => entry.1 = value,
                None => entries.push((name.as_str().into(), value)),
            }
        }
    }
    if let Some(rule) = obligations.redact_args.as_ref() {
        let redacted = redact_args(&out, rule, current)?;
        if redacted != out && !can.rewrite {
            return Err(
                "obligations.redact.args cannot be met: the arguments hold data to redact and \
                 this entry point cannot replace them"
                    .into(),
            );
        }
        out = redacted;
    }
    if let (Some(names), Some(before), Some(after)) =
        (&can.replaceable, args.entries(), out.entries())
    {
        let changed = after.iter().find(|(k, v)| {
            !names.iter().any(|n| **n == **k)
                && before.iter().find(|(b, _)| b == k).map(|e| &e.1) != Some(v)
        });
        if let Some((name, _)) = changed {
            return Err(format!(
                "the obligations would replace the argument {name:?}, which this entry point \
                 cannot hand to the tool"
            ));
        }
    }
    Ok(Some(out))
}

/// `args` after a `redact.args` rule (the named top-level arguments, or all).
fn redact_args(
    args: &Arg,
    rule: &RedactRule,
    current: &Current,
) -> std::result::Result<Arg, String> {
    let Arg::Map(entries) = args else {
        return Err("the call's arguments are not an object".into());
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let selected = rule
            .paths
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| **x == **name));
        let value = if selected {
            current
                .redactor
                .redact_arg(value, rule.detectors.as_deref(), rule.transform, name)
                .map_err(|e| format!("redaction refused the call: {}", message(&e)))?
                .0
        } else {
            value.clone()
        };
        out.push((name.clone(), value));
    }
    Ok(Arg::Map(out))
}

/// A core error's message without its category prefix.
fn message(e: &CoreError) -> String {
    match e {
        CoreError::InvalidArgument(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Returns what a call took, to the ledger or the shared store. A store that
/// cannot be reached keeps the units: spent, the safe side.
fn give_back(gate: &Gate, t: &Taken) {
    match (&t.call, &gate.state) {
        (Some(call), Some(store)) => {
            // Nothing else to do when it fails: the units stay spent.
            let _unreachable = store.give_back(call, &t.rates, &t.budgets);
        }
        _ => gate.ledger.give_back(&t.rates, &t.budgets, t.now),
    }
}

/// What an approver is asked about.
#[derive(Debug, Clone)]
pub struct ApprovalRequest<'a> {
    /// The policy's approval obligation.
    pub spec: &'a ApprovalSpec,
    /// The decision waiting for the answer.
    pub decision: &'a Decision,
}

impl Call {
    /// The decision as it stands (final after [`Call::authorize`]).
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The decision as it stands, shared (no copy).
    pub fn shared_decision(&self) -> Arc<Decision> {
        self.decision.clone()
    }

    /// The typed obligations.
    pub fn obligations(&self) -> &Obligations {
        &self.obligations
    }

    /// What an approver must be asked, while the call waits for an answer.
    pub fn approval(&self) -> Option<ApprovalRequest<'_>> {
        match (&self.obligations.approval, self.stage, &self.answer) {
            (Some(spec), Stage::Decided, None) if self.decision.allowed => Some(ApprovalRequest {
                spec,
                decision: &self.decision,
            }),
            _ => None,
        }
    }

    /// Gives the approver's answer (before [`Call::authorize`]).
    pub fn answer(&mut self, answer: Approval) -> Result<()> {
        if self.approval().is_none() {
            return Err(CoreError::InvalidArgument(
                "this call is not waiting for an approval".into(),
            ));
        }
        self.answer = Some(answer);
        Ok(())
    }

    /// Refuses the call before it is authorized: [`Call::authorize`] then
    /// records a deny with `reason` (`error = "refused"`), so an entry point
    /// that will not run a call says so in the log instead of leaving an allow.
    pub fn refuse(&mut self, reason: String) -> Result<()> {
        if self.stage != Stage::Decided {
            return Err(CoreError::InvalidArgument(
                "a call can be refused only before it is authorized".into(),
            ));
        }
        Arc::make_mut(&mut self.decision).deny(FailureKind::Refused, reason);
        Ok(())
    }

    /// Meets the approval, takes the limits and records the decision; the
    /// result says whether the call may run. A call refused at any stage
    /// gives back what it took.
    pub fn authorize(&mut self) -> Result<&Decision> {
        if self.stage != Stage::Decided {
            return Err(CoreError::InvalidArgument(
                "this call was already authorized".into(),
            ));
        }
        self.stage = Stage::Authorized;
        let gate = self.gate.clone();
        if self.decision.allowed {
            self.meet_approval();
        }
        let mut taken = match &gate.state {
            Some(store) => self.take_shared(store),
            None if self.decision.allowed => self.take_limits(),
            None => None,
        };
        // Recording is part of the decision's duration (no clock read without a log).
        let start = gate.log.as_ref().map(|_| std::time::Instant::now());
        if let Some(log) = &gate.log {
            // A decision that cannot be recorded is a deny: no tool runs on an
            // authorization the log does not hold.
            // A call that takes limits from the ledger is written only if
            // they still hold over every writer's records (processes sharing
            // the log share its limits); refused, it is recorded as the deny
            // it is. A shared store has already decided for every writer.
            let body = decision_body(&self.decision, gate.record_input, &self.current.redactor);
            let appended = match (&taken, body) {
                (Some(t), Ok(body)) if t.call.is_none() => match log.append_admitted(&body) {
                    Ok(Err(reason)) => {
                        gate.ledger.give_back(&t.rates, &t.budgets, t.now);
                        taken = None;
                        Arc::make_mut(&mut self.decision).deny(FailureKind::Obligation, reason);
                        decision_body(&self.decision, gate.record_input, &self.current.redactor)
                            .and_then(|body| log.append(body))
                    }
                    Ok(Ok(receipt)) => Ok(receipt),
                    Err(e) => Err(e),
                },
                (_, body) => body.and_then(|body| log.append(body)),
            };
            match appended {
                Ok(receipt) => Arc::make_mut(&mut self.decision).receipt = Some(receipt),
                Err(e) => {
                    if let Some(t) = &taken {
                        give_back(&gate, t);
                    }
                    Arc::make_mut(&mut self.decision).deny(
                        FailureKind::Audit,
                        format!("the decision could not be recorded: {e}"),
                    );
                }
            }
        }
        // After recording, so the history says what the log says (a call the
        // log refused, or could not hold, is a deny there too). A shared
        // store took the entry with the limits, before the record: a call
        // the log then could not hold stays an allow there, which can only
        // make a sequence rule stricter.
        if gate.state.is_none() && self.current.policy.reads().history {
            let digest = value_sha256(&self.decision.input["action"]["args"]).unwrap_or_default();
            let name = self.decision.input["action"]["name"]
                .as_string()
                .map(|s| s.to_string())
                .unwrap_or_default();
            gate.ledger.record(
                &self.session,
                history_entry(&name, self.decision.allowed, &self.time(), &digest),
            );
        }
        if let Some(start) = start {
            let decision = Arc::make_mut(&mut self.decision);
            decision.duration_ns = decision
                .duration_ns
                .saturating_add(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        Ok(&self.decision)
    }

    fn meet_approval(&mut self) {
        let Some(spec) = &self.obligations.approval else {
            return;
        };
        let why = spec
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        match &self.answer {
            None => Arc::make_mut(&mut self.decision).deny(
                FailureKind::Approval,
                format!("pending approval{why} (no approver answered)"),
            ),
            Some(a) if a.timed_out => {
                let after = a
                    .comment
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                Arc::make_mut(&mut self.decision).approval = Some(a.clone());
                Arc::make_mut(&mut self.decision)
                    .deny(FailureKind::Approval, format!("approval timed out{after}"));
            }
            Some(a) if !a.approved => {
                let comment = a
                    .comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                Arc::make_mut(&mut self.decision).approval = Some(a.clone());
                Arc::make_mut(&mut self.decision).deny(
                    FailureKind::Approval,
                    format!("approval refused by {}{comment}", a.approver),
                );
            }
            Some(a) => Arc::make_mut(&mut self.decision).approval = Some(a.clone()),
        }
    }

    fn time(&self) -> String {
        self.decision.input["context"]["time"]
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Rate and budget obligations, met atomically (keys as the log records
    /// them), or the call is denied.
    fn take_limits(&mut self) -> Option<Taken> {
        let (rates, budgets, now) = self.limits()?;
        match self.gate.ledger.take(&rates, &budgets, now) {
            Ok(()) => Some(Taken {
                rates,
                budgets,
                now,
                call: None,
            }),
            Err(reason) => {
                Arc::make_mut(&mut self.decision).deny(FailureKind::Obligation, reason);
                None
            }
        }
    }

    /// [`Call::take_limits`] and the history entry, from and into the shared
    /// store in one round trip. A store that cannot be used denies a call
    /// that needed it.
    fn take_shared(&mut self, store: &SharedState) -> Option<Taken> {
        let reads_history = self.current.policy.reads().history;
        let limits = if self.decision.allowed {
            self.limits()
        } else {
            None
        };
        if limits.is_none() && !reads_history {
            return None;
        }
        let input = &self.decision.input;
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.to_string()),
            _ => None,
        };
        let action = text(&input["action"]["name"]).unwrap_or_default();
        let args_sha256 = value_sha256(&input["action"]["args"]).unwrap_or_default();
        let principal = match &input["principal"]["id"] {
            Value::Null => String::new(),
            Value::String(s) => s.to_string(),
            other => other.to_json_str().unwrap_or_default(),
        };
        let tool_call_id = text(&input["context"]["tool_call_id"]);
        let time = self.time();
        let call = store.call_id(
            &self.session,
            &principal,
            tool_call_id.as_deref(),
            &action,
            &args_sha256,
        );
        let history = reads_history.then(|| HistoryWrite {
            session: &self.session,
            action: &action,
            time: &time,
            args_sha256: &args_sha256,
            allowed: self.decision.allowed,
            len: self.gate.ledger.history_len(),
        });
        let (rates, budgets, now) = limits.unwrap_or_default();
        let result = store.take(&call, &rates, &budgets, history.as_ref());
        match result {
            Ok(Ok(true)) => Some(Taken {
                rates,
                budgets,
                now,
                call: Some(call),
            }),
            Ok(Ok(false)) => None,
            Ok(Err(reason)) => {
                Arc::make_mut(&mut self.decision).deny(FailureKind::Obligation, reason);
                None
            }
            Err(e) => {
                if self.decision.allowed {
                    Arc::make_mut(&mut self.decision).deny(FailureKind::State, e.to_string());
                }
                None
            }
        }
    }

    /// The call's rate and budget obligations with their keys as the log
    /// records them, and `context.time` in seconds; `None` when it has none
    /// (or its time cannot be read, which denies it).
    fn limits(&mut self) -> Option<(Vec<Rate>, Vec<Budget>, f64)> {
        let ob = &self.obligations;
        if ob.rates.is_empty() && ob.budgets.is_empty() {
            return None;
        }
        let redactor = &self.current.redactor;
        let rates: Vec<Rate> = ob
            .rates
            .iter()
            .map(|r| Rate {
                key: redactor.pseudonym(&r.key),
                ..r.clone()
            })
            .collect();
        let budgets: Vec<Budget> = ob
            .budgets
            .iter()
            .map(|b| Budget {
                key: redactor.pseudonym(&b.key),
                ..b.clone()
            })
            .collect();
        let now = match chrono::DateTime::parse_from_rfc3339(&self.time()) {
            Ok(t) => t.timestamp_micros() as f64 / 1e6,
            Err(e) => {
                Arc::make_mut(&mut self.decision).deny(
                    FailureKind::Obligation,
                    format!("cannot read context.time for rate limits: {e}"),
                );
                return None;
            }
        };
        Some((rates, budgets, now))
    }

    /// The arguments the tool receives: the caller's, rewritten and redacted
    /// as the obligations say. Only for an authorized call that may run.
    pub fn tool_args(&self) -> Result<&Arg> {
        self.runnable()?;
        Ok(&self.tool_args)
    }

    /// Whether the obligations rewrote or redacted the arguments (when not,
    /// [`Call::tool_args`] are the arguments as the entry point gave them).
    pub fn args_changed(&self) -> bool {
        self.args_changed
    }

    /// `obligations.sandbox`, for an entry point that runs the tool sandboxed.
    pub fn sandbox(&self) -> Option<&Json> {
        self.obligations.sandbox.as_ref()
    }

    fn runnable(&self) -> Result<()> {
        match self.stage {
            Stage::Decided => Err(CoreError::InvalidArgument(
                "this call has not been authorized".into(),
            )),
            Stage::Authorized if self.decision.blocks() => Err(CoreError::InvalidArgument(
                "this call was denied and must not run".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The output after `obligations.redact.output` (unchanged without it).
    /// An error means the output must not reach the caller.
    pub fn redact_output(&self, output: &Arg) -> Result<Arg> {
        self.runnable()?;
        match (&self.obligations.redact_output, self.decision.allowed) {
            (Some(rule), true) => Ok(self
                .current
                .redactor
                .redact_arg(output, rule.detectors.as_deref(), rule.transform, "output")?
                .0),
            _ => Ok(output.clone()),
        }
    }

    /// Whether the output passes the privacy router (so an entry point can
    /// skip converting it when it does not).
    pub fn redacts_output(&self) -> bool {
        self.decision.allowed && self.obligations.redact_output.is_some()
    }

    /// Whether anything happens after the tool runs: its outcome is recorded
    /// (the decision has a receipt) or its output is redacted. An entry point
    /// may call the tool of an untracked, authorized call directly and skip
    /// [`Call::complete`] and [`Call::redact_output`], which would change
    /// nothing.
    pub fn tracked(&self) -> bool {
        self.decision.receipt.is_some() || self.redacts_output()
    }

    /// Records what happened when the tool ran (once), linked to the decision
    /// receipt; returns the completion record's id when the gate keeps a log.
    /// The record is written after this returns unless the log's durability
    /// is `Always` (see `AuditLog::append_later`).
    pub fn complete(&mut self, outcome: &Outcome) -> Result<Option<String>> {
        match self.stage {
            Stage::Authorized => self.runnable()?,
            Stage::Decided => {
                return Err(CoreError::InvalidArgument(
                    "this call has not been authorized".into(),
                ))
            }
            Stage::Completed => {
                return Err(CoreError::InvalidArgument(
                    "this call's outcome was already recorded".into(),
                ))
            }
        }
        self.stage = Stage::Completed;
        match (&self.gate.log, &self.decision.receipt) {
            (Some(log), Some(authorization)) => {
                let body = completion_body(authorization, outcome)?;
                Ok(Some(log.append_later(body)?))
            }
            _ => Ok(None),
        }
    }

    /// What the entry point said it can do.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Mode;
    use crate::core::policy::{PolicyOptions, PolicySet};

    const POLICY: &str = r#"package execgate
default decision := {"allow": false, "reasons": ["default deny"]}
decision := {"allow": true} if input.action.name == "ok"
decision := {"allow": true, "obligations": input.action.args.ob} if input.action.name == "ob"
"#;

    fn gate(mode: Mode) -> Arc<Gate> {
        let mut set = PolicySet::new();
        set.add_source("p.rego", POLICY);
        Arc::new(Gate::new(set, PolicyOptions::default(), mode).unwrap())
    }

    fn request(action: &str, args: Json) -> Request {
        Request {
            action: action.into(),
            args: Arg::from_json(&args),
            principal: Value::new_object(),
            context: Value::from_json_str(r#"{"time": "spoofed"}"#).unwrap(),
            time: None,
        }
    }

    fn run(g: &Arc<Gate>, action: &str, args: Json, can: Option<Capabilities>) -> Call {
        let mut call = g.decide(request(action, args), can).unwrap();
        call.authorize().unwrap();
        call
    }

    #[test]
    fn input_document_shape_and_clock() {
        let call = run(&gate(Mode::Enforce), "ok", serde_json::json!({}), None);
        let d = call.decision();
        assert!(d.allowed);
        let time = d.input["context"]["time"].as_string().unwrap().to_string();
        assert_ne!(time, "spoofed");
        assert!(time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(&time).is_ok());
        assert_eq!(d.input["principal"]["id"], Value::Null);
    }

    #[test]
    fn audit_mode_records_but_does_not_block() {
        let call = run(&gate(Mode::Audit), "nope", serde_json::json!({}), None);
        assert!(!call.decision().allowed && !call.decision().blocks());
        assert!(call.tool_args().is_ok());
        let call = run(&gate(Mode::Enforce), "nope", serde_json::json!({}), None);
        assert!(call.decision().blocks() && call.tool_args().is_err());
    }

    #[test]
    fn failed_reload_keeps_old_policy() {
        let g = gate(Mode::Enforce);
        let before = g.policy().digest().to_string();
        let mut bad = PolicySet::new();
        bad.add_source("bad.rego", "package execgate\ndecision if {");
        assert!(g.reload(Some(bad)).is_err());
        assert_eq!(g.policy().digest(), before);
        assert!(
            run(&g, "ok", serde_json::json!({}), None)
                .decision()
                .allowed
        );
    }

    #[test]
    fn unknown_and_unmeetable_obligations_deny() {
        let g = gate(Mode::Enforce);
        let ob = |o: Json| serde_json::json!({"ob": o});
        let call = run(&g, "ob", ob(serde_json::json!({"quarantine": 1})), None);
        assert_eq!(call.decision().error, Some(FailureKind::Obligation));
        assert!(call.decision().reasons[0].contains("quarantine"));
        let sandbox = ob(serde_json::json!({"sandbox": {"network": "none"}}));
        let call = run(&g, "ob", sandbox.clone(), Some(Capabilities::in_process()));
        assert!(call.decision().blocks());
        assert!(call.decision().reasons[0].contains("sandbox"));
        // A query leaves the sandbox to the caller.
        assert!(run(&g, "ob", sandbox, None).decision().allowed);
    }

    #[test]
    fn approval_is_pending_until_answered() {
        let g = gate(Mode::Enforce);
        let args = serde_json::json!({"ob": {"approval": {"reason": "prod"}}});
        let mut call = g.decide(request("ob", args.clone()), None).unwrap();
        assert!(call.approval().is_some());
        let d = call.authorize().unwrap();
        assert!(!d.allowed && d.error == Some(FailureKind::Approval));
        let mut call = g.decide(request("ob", args), None).unwrap();
        call.answer(Approval {
            approved: true,
            approver: "sre".into(),
            ..Approval::default()
        })
        .unwrap();
        assert!(call.authorize().unwrap().allowed);
        assert!(call.authorize().is_err(), "a stage runs once");
    }

    #[test]
    fn an_entry_point_can_refuse_before_authorizing() {
        let g = gate(Mode::Enforce);
        let mut call = g
            .decide(request("ok", serde_json::json!({})), None)
            .unwrap();
        call.refuse("hidden".into()).unwrap();
        let d = call.authorize().unwrap();
        assert!(d.blocks() && d.error == Some(FailureKind::Refused));
        assert!(call.refuse("late".into()).is_err());
    }

    #[test]
    fn limits_are_taken_only_for_calls_that_proceed() {
        let g = gate(Mode::Enforce);
        let ob = serde_json::json!({"ob": {"approval": true,
            "budget": {"key": "k", "limit": 1, "cost": 1}}});
        let mut refused = g.decide(request("ob", ob.clone()), None).unwrap();
        refused
            .answer(Approval {
                approved: false,
                approver: "a".into(),
                ..Approval::default()
            })
            .unwrap();
        assert!(!refused.authorize().unwrap().allowed);
        let mut approved = g.decide(request("ob", ob), None).unwrap();
        approved
            .answer(Approval {
                approved: true,
                approver: "a".into(),
                ..Approval::default()
            })
            .unwrap();
        assert!(
            approved.authorize().unwrap().allowed,
            "the refused call spent nothing"
        );
    }

    #[test]
    fn arguments_are_rewritten_then_redacted() {
        let g = gate(Mode::Enforce);
        let args = serde_json::json!({"to": "x", "ob": {"args": {"to": "bob@example.com"},
            "redact": {"args": {"paths": ["to"]}}}});
        let call = run(&g, "ob", args, Some(Capabilities::in_process()));
        let tool = call.tool_args().unwrap().to_json();
        assert_eq!(tool["to"], "***@example.com");
        let deny = serde_json::json!({"card": "4111 1111 1111 1111",
            "ob": {"redact": {"args": {"transform": "deny"}}}});
        for can in [None, Some(Capabilities::in_process())] {
            let call = run(&g, "ob", deny.clone(), can.clone());
            assert!(call.decision().blocks(), "{can:?}");
            assert!(call.decision().reasons[0].contains("card"));
        }
    }

    #[test]
    fn history_is_kept_exactly_when_the_policy_reads_it() {
        for (text, history, usage) in [
            ("decision := count(input.history) >= 0", true, false),
            (
                "decision := input[\"usage\"].session_calls >= 0",
                false,
                true,
            ),
            ("decision := f(input)\nf(x) := true", true, true),
            ("decision := input[k] == 1 if some k in [\"a\"]", true, true),
            (
                "decision := input.action.name == \"history\" # input.usage",
                false,
                false,
            ),
        ] {
            let mut set = PolicySet::new();
            set.add_source("p.rego", format!("package execgate\n{text}\n"));
            let g = Gate::new(set, PolicyOptions::default(), Mode::Enforce).unwrap();
            let reads = g.policy().reads();
            assert_eq!((reads.history, reads.usage), (history, usage), "{text}");
        }
    }

    #[test]
    fn gate_and_call_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Gate>();
        assert_send_sync::<Call>();
    }
}
