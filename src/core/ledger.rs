//! What the agent has already done: per-session history for `input.history`,
//! and the counters behind `rate` and `budget` obligations.
//!
//! The policy computes the key, limit and cost; the ledger enforces them
//! atomically (check and take under one lock), so concurrent calls cannot
//! both take the last unit. It is rebuilt from the audit log on open, so a
//! restart is not a way around a budget.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use regorus::Value;
use serde_json::Value as Json;

/// Default number of history entries kept per session, for policies that
/// read `input.history` (a policy that does not read it keeps none).
pub const DEFAULT_HISTORY: usize = 32;

/// A `rate` obligation: at most `limit` calls per `window` seconds per `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// What is counted (the policy builds it, e.g. from the principal).
    pub key: String,
    /// Calls allowed in the window.
    pub limit: u64,
    /// The sliding window, in seconds.
    pub window: f64,
}

/// A `budget` obligation: cumulative `cost` per `key` up to `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// What is spent from.
    pub key: String,
    /// The most that may be spent in total.
    pub limit: f64,
    /// What this call spends.
    pub cost: f64,
}

#[derive(Default)]
struct Inner {
    history: HashMap<String, VecDeque<Value>>,
    calls: HashMap<String, u64>,
    rates: HashMap<String, VecDeque<f64>>,
    spent: HashMap<String, f64>,
}

/// History and counters, shared by all checks of a gate.
pub struct Ledger {
    inner: Mutex<Inner>,
    history_len: usize,
}

impl Ledger {
    /// An empty ledger keeping `history_len` entries per session.
    pub fn new(history_len: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            history_len,
        }
    }

    /// `input.history` and `input.usage` for a session. `usage.budgets` shows
    /// only the budgets named (those of the decision being made, as
    /// `(key the policy built, key the ledger keeps)`), never every
    /// principal's spending.
    pub fn view(&self, session: &str, budget_keys: &[(String, String)]) -> (Value, Value) {
        let inner = self.inner.lock();
        let history: Vec<Value> = inner
            .history
            .get(session)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        let mut usage = Value::new_object();
        if let Ok(map) = usage.as_object_mut() {
            map.insert(
                Value::from("session_calls"),
                Value::from(inner.calls.get(session).copied().unwrap_or(0)),
            );
            let mut budgets = Value::new_object();
            if let Ok(b) = budgets.as_object_mut() {
                for (shown, kept) in budget_keys {
                    let spent = inner.spent.get(kept).copied().unwrap_or(0.0);
                    b.insert(Value::from(shown.as_str()), Value::from(spent));
                }
            }
            map.insert(Value::from("budgets"), budgets);
        }
        (Value::from(history), usage)
    }

    /// Checks every limit and, only if all hold, takes them (atomically).
    /// `now` is seconds since the epoch. Returns the reason of the first
    /// limit that does not hold.
    pub fn take(&self, rates: &[Rate], budgets: &[Budget], now: f64) -> Result<(), String> {
        let mut inner = self.inner.lock();
        for r in rates {
            let used = inner.rates.get(&r.key).map_or(0, |q| {
                q.iter().filter(|t| **t > now - r.window).count() as u64
            });
            if used >= r.limit {
                return Err(format!(
                    "rate limit: {} allows {} calls per {} s, and {} were made",
                    r.key, r.limit, r.window, used
                ));
            }
        }
        for b in budgets {
            let spent = inner.spent.get(&b.key).copied().unwrap_or(0.0);
            if spent + b.cost > b.limit {
                return Err(format!(
                    "budget exceeded: {} has spent {} of {}, and this call costs {}",
                    b.key, spent, b.limit, b.cost
                ));
            }
        }
        Self::apply(&mut inner, rates, budgets, now);
        Ok(())
    }

    /// Returns what [`Ledger::take`] took for a call that then did not
    /// proceed (refused, or its decision could not be recorded).
    pub fn give_back(&self, rates: &[Rate], budgets: &[Budget], now: f64) {
        let mut inner = self.inner.lock();
        for r in rates {
            if let Some(q) = inner.rates.get_mut(&r.key) {
                if let Some(i) = q.iter().rposition(|t| *t == now) {
                    q.remove(i);
                }
            }
        }
        for b in budgets {
            if let Some(spent) = inner.spent.get_mut(&b.key) {
                *spent = (*spent - b.cost).max(0.0);
            }
        }
    }

    fn apply(inner: &mut Inner, rates: &[Rate], budgets: &[Budget], now: f64) {
        for r in rates {
            let q = inner.rates.entry(r.key.clone()).or_default();
            q.retain(|t| *t > now - r.window);
            q.push_back(now);
        }
        for b in budgets {
            *inner.spent.entry(b.key.clone()).or_insert(0.0) += b.cost;
        }
    }

    /// Appends a decision to its session's history.
    pub fn record(&self, session: &str, entry: Value) {
        let mut inner = self.inner.lock();
        *inner.calls.entry(session.to_string()).or_insert(0) += 1;
        let h = inner.history.entry(session.to_string()).or_default();
        h.push_back(entry);
        while h.len() > self.history_len {
            h.pop_front();
        }
    }

    /// Replays a decision record from the log (on open): history, and the
    /// limits of allowed decisions, as of the record's time.
    pub fn replay(&self, payload: &serde_json::Map<String, Json>) {
        if payload.get("kind").and_then(Json::as_str) != Some("decision") {
            return;
        }
        let payload = &Json::Object(payload.clone());
        let session = payload
            .pointer("/context/session")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let time = payload
            .pointer("/context/time")
            .and_then(Json::as_str)
            .unwrap_or("");
        let allowed = payload.get("decision").and_then(Json::as_str) == Some("allow");
        let entry = history_entry(
            payload
                .pointer("/action/name")
                .and_then(Json::as_str)
                .unwrap_or(""),
            allowed,
            time,
            payload
                .pointer("/action/args_sha256")
                .and_then(Json::as_str)
                .unwrap_or(""),
        );
        self.record(&session, entry);
        if allowed {
            let now = chrono::DateTime::parse_from_rfc3339(time)
                .map(|t| t.timestamp_micros() as f64 / 1e6)
                .unwrap_or(0.0);
            if let Some(ob) = payload.get("obligations") {
                if let Ok((rates, budgets)) = super::obligation::limits(ob) {
                    Self::apply(&mut self.inner.lock(), &rates, &budgets, now);
                }
            }
        }
    }
}

/// One `input.history` entry: `{action, decision, time, args_sha256}`.
pub fn history_entry(action: &str, allowed: bool, time: &str, args_sha256: &str) -> Value {
    let mut v = Value::new_object();
    if let Ok(m) = v.as_object_mut() {
        m.insert(Value::from("action"), Value::from(action));
        m.insert(
            Value::from("decision"),
            Value::from(if allowed { "allow" } else { "deny" }),
        );
        m.insert(Value::from("time"), Value::from(time));
        m.insert(Value::from("args_sha256"), Value::from(args_sha256));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_budgets_take_atomically_and_refuse_past_the_limit() {
        let ledger = Ledger::new(4);
        let rate = [Rate {
            key: "k".into(),
            limit: 2,
            window: 10.0,
        }];
        assert!(ledger.take(&rate, &[], 100.0).is_ok());
        assert!(ledger.take(&rate, &[], 101.0).is_ok());
        assert!(ledger
            .take(&rate, &[], 102.0)
            .unwrap_err()
            .contains("rate limit"));
        assert!(ledger.take(&rate, &[], 111.5).is_ok()); // the window moved on
        let budget = [Budget {
            key: "b".into(),
            limit: 10.0,
            cost: 4.0,
        }];
        assert!(ledger.take(&[], &budget, 0.0).is_ok());
        assert!(ledger.take(&[], &budget, 0.0).is_ok());
        assert!(ledger
            .take(&[], &budget, 0.0)
            .unwrap_err()
            .contains("budget exceeded"));
        // A refused call takes nothing from the other limits.
        let both = [Budget {
            key: "c".into(),
            limit: 1.0,
            cost: 1.0,
        }];
        assert!(ledger.take(&rate, &both, 112.0).is_ok());
        assert!(ledger.take(&rate, &both, 112.1).is_err());
    }
}
