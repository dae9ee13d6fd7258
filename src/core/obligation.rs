//! Obligations: what a policy requires for a call to run, parsed into types
//! once per decision.
//!
//! A policy enforcement point that does not understand an obligation must not
//! run the call, so an unknown key, a malformed shape, an unknown detector or
//! an out-of-range number is an error here, and the pipeline turns it into a
//! deny (`error = "obligation"`) whose reason names the key. Information a
//! policy wants recorded but not enforced goes under [`ANNOTATIONS`].

use serde_json::{Map, Value as Json};

use super::ledger::{Budget, Rate};
use super::redact::Transform;
use super::sandbox::Sandbox;

/// The one key for non-enforced information: recorded in the receipt, never
/// acted on.
pub const ANNOTATIONS: &str = "annotations";

/// The longest rate window accepted, in seconds (a year).
const MAX_WINDOW_SECONDS: f64 = 366.0 * 86400.0;

/// The largest count or amount accepted in a limit: integers stay exact in
/// JSON and in the ledger below 2^53.
const MAX_AMOUNT: f64 = 9_007_199_254_740_992.0;

/// `obligations.approval`: a human must say yes before the call runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApprovalSpec {
    /// Why approval is needed, shown to the approver.
    pub reason: Option<String>,
    /// Who may approve (identities as the deployment names them).
    pub approvers: Vec<String>,
}

/// One `obligations.redact.args` or `obligations.redact.output` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RedactRule {
    /// What to do with a finding.
    pub transform: Transform,
    /// The detectors to run (None: all).
    pub detectors: Option<Vec<String>>,
    /// For `args`: the argument names to rewrite (None: all).
    pub paths: Option<Vec<String>>,
}

/// Every obligation of one decision, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obligations {
    /// Human approval.
    pub approval: Option<ApprovalSpec>,
    /// Rate limits, taken atomically with the budgets.
    pub rates: Vec<Rate>,
    /// Budgets.
    pub budgets: Vec<Budget>,
    /// Redaction of the arguments before the tool receives them.
    pub redact_args: Option<RedactRule>,
    /// Redaction of the output before the caller receives it.
    pub redact_output: Option<RedactRule>,
    /// Sandbox tightening (checked against the sandbox's own rules here;
    /// applied by the entry point that runs the tool in a sandbox).
    pub sandbox: Option<Json>,
    /// Arguments that replace the caller's (an object).
    pub args: Option<Json>,
    /// Recorded, never enforced.
    pub annotations: Option<Json>,
}

impl Obligations {
    /// Parses a decision's obligations. `detectors` are the names the privacy
    /// router knows. The error names the key at fault.
    pub fn parse(value: &Json, detectors: &[&str]) -> Result<Self, String> {
        let object = match value {
            Json::Null => return Ok(Self::default()),
            Json::Object(o) => o,
            other => {
                return Err(format!(
                    "obligations must be an object, not {}",
                    kind(other)
                ))
            }
        };
        let mut out = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "approval" => out.approval = approval(value)?,
                "rate" => out.rates = each(value, "rate", rate)?,
                "budget" => out.budgets = each(value, "budget", budget)?,
                "redact" => (out.redact_args, out.redact_output) = redact(value, detectors)?,
                "sandbox" => {
                    // The sandbox's own parser is the one place its rules live.
                    Sandbox::default()
                        .tightened(value)
                        .map_err(|e| e.to_string())?;
                    out.sandbox = Some(value.clone());
                }
                "args" => match value {
                    Json::Object(_) => out.args = Some(value.clone()),
                    other => {
                        return Err(format!(
                        "obligations.args must be an object of argument names to values, not {}",
                        kind(other)
                    ))
                    }
                },
                ANNOTATIONS => out.annotations = Some(value.clone()),
                other => {
                    return Err(format!(
                    "unknown obligation {other:?}: the gate cannot enforce it (known: approval, \
                         rate, budget, redact, sandbox, args; non-enforced information goes under \
                         {ANNOTATIONS:?})"
                ))
                }
            }
        }
        Ok(out)
    }

    /// Whether there is nothing to enforce.
    pub fn is_empty(&self) -> bool {
        self.approval.is_none()
            && self.rates.is_empty()
            && self.budgets.is_empty()
            && self.redact_args.is_none()
            && self.redact_output.is_none()
            && self.sandbox.is_none()
            && self.args.is_none()
    }
}

/// Only the rate and budget obligations of a recorded decision (the ledger
/// replays them on open), by the same rules as [`Obligations::parse`].
pub fn limits(value: &Json) -> Result<(Vec<Rate>, Vec<Budget>), String> {
    limits_of(value.get("rate"), value.get("budget"))
}

/// [`limits`] from the `rate` and `budget` members (`None` when absent).
pub fn limits_of(
    rate_member: Option<&Json>,
    budget_member: Option<&Json>,
) -> Result<(Vec<Rate>, Vec<Budget>), String> {
    let rates = match rate_member {
        Some(v) => each(v, "rate", rate)?,
        None => Vec::new(),
    };
    let budgets = match budget_member {
        Some(v) => each(v, "budget", budget)?,
        None => Vec::new(),
    };
    Ok((rates, budgets))
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Checks that `o` has only the `allowed` fields.
fn fields<'a>(
    value: &'a Json,
    what: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Json>, String> {
    let Json::Object(o) = value else {
        return Err(format!(
            "obligations.{what} must be an object, not {}",
            kind(value)
        ));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "obligations.{what} has an unknown field {k:?} (known: {})",
            allowed.join(", ")
        ));
    }
    Ok(o)
}

fn string_list(value: &Json, what: &str) -> Result<Vec<String>, String> {
    match value {
        Json::String(s) => Ok(vec![s.clone()]),
        Json::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("obligations.{what} must be a list of strings")),
        other => Err(format!(
            "obligations.{what} must be a list of strings, not {}",
            kind(other)
        )),
    }
}

fn approval(value: &Json) -> Result<Option<ApprovalSpec>, String> {
    match value {
        Json::Bool(false) | Json::Null => Ok(None),
        Json::Bool(true) => Ok(Some(ApprovalSpec::default())),
        _ => {
            let o = fields(value, "approval", &["reason", "approvers", "approver"])?;
            let reason = match o.get("reason") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(format!(
                        "obligations.approval.reason must be a string, not {}",
                        kind(other)
                    ))
                }
            };
            let mut approvers = Vec::new();
            for field in ["approvers", "approver"] {
                if let Some(v) = o.get(field) {
                    approvers.extend(string_list(v, &format!("approval.{field}"))?);
                }
            }
            Ok(Some(ApprovalSpec { reason, approvers }))
        }
    }
}

/// An object, or a list of objects, each parsed by `one`.
fn each<T>(
    value: &Json,
    what: &str,
    one: fn(&Json, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    match value {
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| one(item, &format!("{what}[{i}]")))
            .collect(),
        _ => Ok(vec![one(value, what)?]),
    }
}

fn key(o: &Map<String, Json>, what: &str) -> Result<String, String> {
    match o.get("key") {
        Some(Json::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!(
            "obligations.{what} needs a non-empty string \"key\""
        )),
    }
}

fn amount(o: &Map<String, Json>, field: &str, what: &str, max: f64) -> Result<f64, String> {
    o.get(field)
        .and_then(Json::as_f64)
        .filter(|n| n.is_finite() && (0.0..=max).contains(n))
        .ok_or_else(|| format!("obligations.{what} needs a number \"{field}\" from 0 to {max}"))
}

fn rate(value: &Json, what: &str) -> Result<Rate, String> {
    let o = fields(value, what, &["key", "limit", "window_seconds"])?;
    let limit = amount(o, "limit", what, MAX_AMOUNT)?;
    if limit.fract() != 0.0 {
        return Err(format!(
            "obligations.{what}.limit must be a whole number of calls"
        ));
    }
    let window = amount(o, "window_seconds", what, MAX_WINDOW_SECONDS)?;
    if window <= 0.0 {
        return Err(format!("obligations.{what}.window_seconds must be above 0"));
    }
    Ok(Rate {
        key: key(o, what)?,
        // Whole and within 2^53: the conversion is exact.
        limit: limit as u64,
        window,
    })
}

fn budget(value: &Json, what: &str) -> Result<Budget, String> {
    let o = fields(value, what, &["key", "limit", "cost"])?;
    Ok(Budget {
        key: key(o, what)?,
        limit: amount(o, "limit", what, MAX_AMOUNT)?,
        cost: amount(o, "cost", what, MAX_AMOUNT)?,
    })
}

type RedactPair = (Option<RedactRule>, Option<RedactRule>);

fn redact(value: &Json, detectors: &[&str]) -> Result<RedactPair, String> {
    let o = fields(value, "redact", &["args", "output"])?;
    let rule = |where_: &str| -> Result<Option<RedactRule>, String> {
        let what = format!("redact.{where_}");
        let value = match o.get(where_) {
            None | Some(Json::Null) | Some(Json::Bool(false)) => return Ok(None),
            Some(Json::Bool(true)) => &Json::Object(Map::new()),
            Some(v) => v,
        };
        let allowed: &[&str] = if where_ == "args" {
            &["transform", "detectors", "paths"]
        } else {
            &["transform", "detectors"]
        };
        let r = fields(value, &what, allowed)?;
        let transform = match r.get("transform") {
            None => Transform::Mask,
            Some(Json::String(t)) => t.parse().map_err(|_| {
                format!("obligations.{what}.transform must be mask, hash, drop or deny, not {t:?}")
            })?,
            Some(other) => {
                return Err(format!(
                    "obligations.{what}.transform must be a string, not {}",
                    kind(other)
                ))
            }
        };
        let names = match r.get("detectors") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let names = string_list(v, &format!("{what}.detectors"))?;
                if let Some(unknown) = names.iter().find(|n| !detectors.contains(&n.as_str())) {
                    return Err(format!(
                        "obligations.{what}.detectors names an unknown detector {unknown:?} \
                         (known: {})",
                        detectors.join(", ")
                    ));
                }
                Some(names)
            }
        };
        let paths = match r.get("paths") {
            None | Some(Json::Null) => None,
            Some(v) => Some(string_list(v, &format!("{what}.paths"))?),
        };
        Ok(Some(RedactRule {
            transform,
            detectors: names,
            paths,
        }))
    };
    Ok((rule("args")?, rule("output")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DETECTORS: &[&str] = &["email", "card"];

    fn parse(v: Json) -> Result<Obligations, String> {
        Obligations::parse(&v, DETECTORS)
    }

    #[test]
    fn known_obligations_parse_into_types() {
        let o = parse(json!({
            "approval": {"reason": "prod", "approvers": ["sre"]},
            "rate": {"key": "k", "limit": 3, "window_seconds": 60},
            "budget": [{"key": "b", "limit": 10, "cost": 2.5}],
            "redact": {"args": {"transform": "deny", "detectors": ["card"], "paths": ["body"]},
                       "output": true},
            "sandbox": {"limits": {"wall_seconds": 2}},
            "args": {"path": "/w/a"},
            "annotations": {"ticket": "OPS-1"}
        }))
        .unwrap();
        assert_eq!(o.approval.unwrap().approvers, vec!["sre"]);
        assert_eq!(o.rates[0].limit, 3);
        assert_eq!(o.budgets[0].cost, 2.5);
        assert_eq!(o.redact_args.unwrap().transform, Transform::Deny);
        assert_eq!(o.redact_output.unwrap().transform, Transform::Mask);
        assert!(o.sandbox.is_some() && o.args.is_some() && o.annotations.is_some());
        assert!(parse(json!({"annotations": {"x": 1}})).unwrap().is_empty());
    }

    #[test]
    fn anything_not_understood_is_an_error_naming_the_key() {
        for (bad, names) in [
            (json!({"quarantine": true}), "quarantine"),
            (json!({"redact": ["args"]}), "redact"),
            (json!({"redact": {"args": {"detectors": ["nope"]}}}), "nope"),
            (json!({"redact": {"args": {"transform": "shred"}}}), "shred"),
            (json!({"redact": {"inputs": true}}), "inputs"),
            (
                json!({"rate": {"key": "k", "limit": 1.5, "window_seconds": 1}}),
                "limit",
            ),
            (
                json!({"rate": {"key": "k", "limit": 1, "window_seconds": 1e300}}),
                "window_seconds",
            ),
            (
                json!({"rate": {"key": "k", "limit": 1, "window_seconds": 0}}),
                "window_seconds",
            ),
            (json!({"rate": {"limit": 1, "window_seconds": 1}}), "key"),
            (
                json!({"budget": {"key": "k", "limit": -1, "cost": 1}}),
                "limit",
            ),
            (json!({"approval": "yes"}), "approval"),
            (json!({"approval": {"reason": 3}}), "reason"),
            (json!({"args": ["x"]}), "args"),
            (
                json!({"sandbox": {"limits": {"wall_seconds": 1e300}}}),
                "wall_seconds",
            ),
            (json!({"sandbox": {"jail": true}}), "jail"),
            (json!([1]), "obligations"),
        ] {
            let err = parse(bad.clone()).expect_err(&bad.to_string());
            assert!(err.contains(names), "{bad}: {err}");
        }
    }
}
