//! What the agent has already done: per-session history for `input.history`,
//! and the counters behind `rate` and `budget` obligations.
//!
//! The policy computes the key, limit and cost; the ledger enforces them
//! atomically (check and take under one lock), so concurrent calls cannot
//! both take the last unit. It is rebuilt from the audit log on open (from
//! the last signed `state` record and the records after it, see
//! [`crate::core::audit::StateFold`]), so a restart is not a way around a
//! budget.
//!
//! Memory is bounded, and nothing that a limit depends on is forgotten early:
//! - **budgets** are never evicted (forgetting one would reset it);
//! - **rate windows** hold only the calls still inside their window (at most
//!   `limit` of them, since a full window refuses); a window whose calls have
//!   all expired is dropped, checked on every use of its key and in a sweep of
//!   all keys once per as many changes as there are keys;
//! - **sessions** (history and `session_calls`) are bounded by
//!   `max_sessions`: past it, the least recently active sessions are
//!   forgotten. Use a budget, not `session_calls`, for a limit that must hold.
//!
//! A rate check is O(log n) in the calls inside the window: each window is
//! kept sorted by time, and the count is one binary search.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use regorus::Value;
use serde_json::Value as Json;

use super::audit::StateFold;
use super::counted::Counted;
use super::jcs;
use super::obligation::limits_of;
use super::receipt::Fields;

/// Default number of history entries kept per session, for policies that
/// read `input.history` (a policy that does not read it keeps none).
pub const DEFAULT_HISTORY: usize = 32;

/// Default number of sessions whose history and call count are kept.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// The version of the `state` snapshot format ([`Ledger::snapshot`]).
pub const STATE_VERSION: u64 = 1;

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

struct Session {
    calls: u64,
    history: VecDeque<Value>,
    /// Activity clock value of the last change (for eviction).
    last: u64,
}

/// The calls of one rate key still inside its window, oldest first.
struct Window {
    /// The window of the last call that used this key, in seconds.
    window: f64,
    times: VecDeque<f64>,
}

impl Window {
    /// Calls strictly after `now - window` (as the limit counts them).
    fn used(&self, now: f64, window: f64) -> u64 {
        let cut = now - window;
        (self.times.len() - self.times.partition_point(|t| *t <= cut)) as u64
    }

    /// Drops calls at or before `now - window`.
    fn expire(&mut self, now: f64, window: f64) {
        let cut = now - window;
        while self.times.front().is_some_and(|t| *t <= cut) {
            self.times.pop_front();
        }
    }

    fn insert(&mut self, now: f64) {
        match self.times.back() {
            Some(last) if *last > now => {
                let at = self.times.partition_point(|t| *t <= now);
                self.times.insert(at, now);
            }
            _ => self.times.push_back(now),
        }
    }

    fn remove(&mut self, now: f64) {
        let at = self.times.partition_point(|t| *t < now);
        if self.times.get(at) == Some(&now) {
            self.times.remove(at);
        }
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    rates: HashMap<String, Window>,
    spent: HashMap<String, f64>,
    /// Activity clock: bumped on every change to a session.
    clock: u64,
    /// The latest call time seen (seconds since the epoch), for sweeps.
    latest: f64,
    /// Changes to rate windows since the last sweep.
    since_sweep: usize,
    /// Rate keys left by the last sweep.
    after_sweep: usize,
}

/// History and counters, shared by all checks of a gate.
pub struct Ledger {
    inner: Mutex<Inner>,
    history_len: usize,
    max_sessions: usize,
}

/// One decision record, as the ledger replays it.
struct Replayed<'a> {
    session: Cow<'a, str>,
    entry: Value,
    limits: Option<(Vec<Rate>, Vec<Budget>, f64)>,
}

impl Ledger {
    /// An empty ledger keeping `history_len` entries per session, for at most
    /// [`DEFAULT_MAX_SESSIONS`] sessions.
    pub fn new(history_len: usize) -> Self {
        Self::with_bounds(history_len, DEFAULT_MAX_SESSIONS)
    }

    /// An empty ledger keeping `history_len` entries per session for at most
    /// `max_sessions` sessions (at least one of each).
    pub fn with_bounds(history_len: usize, max_sessions: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            history_len: history_len.max(1),
            max_sessions: max_sessions.max(1),
        }
    }

    /// History entries kept per session.
    pub fn history_len(&self) -> usize {
        self.history_len
    }

    /// Sessions kept.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// How many sessions, rate keys and budget keys the ledger holds now.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let inner = self.inner.lock();
        (inner.sessions.len(), inner.rates.len(), inner.spent.len())
    }

    /// `input.history` and `input.usage` for a session. `usage.budgets` shows
    /// only the budgets named (those of the decision being made, as
    /// `(key the policy built, key the ledger keeps)`), never every
    /// principal's spending.
    pub fn view(&self, session: &str, budget_keys: &[(String, String)]) -> (Value, Value) {
        let inner = self.inner.lock();
        let s = inner.sessions.get(session);
        let history: Vec<Value> = s
            .map(|s| s.history.iter().cloned().collect())
            .unwrap_or_default();
        let mut usage = Value::new_object();
        if let Ok(map) = usage.as_object_mut() {
            map.insert(
                Value::from("session_calls"),
                Value::from(s.map_or(0, |s| s.calls)),
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
        Self::check_locked(&inner, rates, budgets, now)?;
        Self::apply(&mut inner, rates, budgets, now);
        Ok(())
    }

    /// Whether every limit would hold for one more call, taking nothing.
    pub fn check(&self, rates: &[Rate], budgets: &[Budget], now: f64) -> Result<(), String> {
        Self::check_locked(&self.inner.lock(), rates, budgets, now)
    }

    fn check_locked(
        inner: &Inner,
        rates: &[Rate],
        budgets: &[Budget],
        now: f64,
    ) -> Result<(), String> {
        for r in rates {
            let used = inner.rates.get(&r.key).map_or(0, |w| w.used(now, r.window));
            if used >= r.limit {
                return Err(rate_refusal(r, used));
            }
        }
        for b in budgets {
            let spent = inner.spent.get(&b.key).copied().unwrap_or(0.0);
            if spent + b.cost > b.limit {
                return Err(budget_refusal(b, spent));
            }
        }
        Ok(())
    }

    /// Returns what [`Ledger::take`] took for a call that then did not
    /// proceed (refused, or its decision could not be recorded).
    pub fn give_back(&self, rates: &[Rate], budgets: &[Budget], now: f64) {
        let mut inner = self.inner.lock();
        for r in rates {
            if let Some(w) = inner.rates.get_mut(&r.key) {
                w.remove(now);
            }
        }
        for b in budgets {
            if let Some(spent) = inner.spent.get_mut(&b.key) {
                *spent = (*spent - b.cost).max(0.0);
            }
        }
    }

    fn apply(inner: &mut Inner, rates: &[Rate], budgets: &[Budget], now: f64) {
        if now.is_finite() && now > inner.latest {
            inner.latest = now;
        }
        for r in rates {
            let w = inner.rates.entry(r.key.clone()).or_insert_with(|| Window {
                window: r.window,
                times: VecDeque::new(),
            });
            w.window = r.window;
            w.expire(now, r.window);
            w.insert(now);
        }
        for b in budgets {
            *inner.spent.entry(b.key.clone()).or_insert(0.0) += b.cost;
        }
        if !rates.is_empty() {
            inner.since_sweep += rates.len();
            // A sweep costs the keys left last time plus those added since,
            // so once per max(those left, 1024) changes is O(1) amortized.
            if inner.since_sweep >= inner.after_sweep.max(1024) {
                Self::sweep(inner);
            }
        }
    }

    /// Drops the calls that left their window, and the windows left empty.
    /// Called once per as many rate changes as there are keys: O(1) amortized.
    fn sweep(inner: &mut Inner) {
        let latest = inner.latest;
        inner.rates.retain(|_, w| {
            let window = w.window;
            w.expire(latest, window);
            !w.times.is_empty()
        });
        inner.since_sweep = 0;
        inner.after_sweep = inner.rates.len();
    }

    /// Appends a decision to its session's history.
    pub fn record(&self, session: &str, entry: Value) {
        let mut inner = self.inner.lock();
        self.record_locked(&mut inner, session, entry);
    }

    fn record_locked(&self, inner: &mut Inner, session: &str, entry: Value) {
        inner.clock += 1;
        let clock = inner.clock;
        let s = match inner.sessions.get_mut(session) {
            Some(s) => s,
            None => inner
                .sessions
                .entry(session.to_string())
                .or_insert_with(|| Session {
                    calls: 0,
                    history: VecDeque::new(),
                    last: clock,
                }),
        };
        s.calls += 1;
        s.last = clock;
        s.history.push_back(entry);
        while s.history.len() > self.history_len {
            s.history.pop_front();
        }
        // Evict in batches (an eighth over the bound, down to the bound), so
        // the sort is paid once per many new sessions: O(log n) amortized.
        if inner.sessions.len() > self.max_sessions + (self.max_sessions / 8).max(1) {
            let mut ages: Vec<u64> = inner.sessions.values().map(|s| s.last).collect();
            let excess = inner.sessions.len() - self.max_sessions;
            let (_, cut, _) = ages.select_nth_unstable(excess - 1);
            let cut = *cut;
            inner.sessions.retain(|_, s| s.last > cut);
        }
    }

    /// Replays a decision record from the log (on open): history, and the
    /// limits of allowed decisions, as of the record's time.
    pub fn replay(&self, payload: &dyn Fields) {
        self.replay_counted(Counted::from_fields(payload));
    }

    /// Replays a record as [`Counted`] read it.
    fn replay_counted(&self, record: Counted<'_>) {
        let Some(r) = replayed(record) else { return };
        let mut inner = self.inner.lock();
        self.record_locked(&mut inner, &r.session, r.entry);
        if let Some((rates, budgets, now)) = r.limits {
            Self::apply(&mut inner, &rates, &budgets, now);
        }
    }

    /// Replays a decision record's history only (a retry whose limits the
    /// call it repeats already took).
    pub fn replay_history(&self, payload: &dyn Fields) {
        if let Some(r) = replayed(Counted::from_fields(payload)) {
            self.record(&r.session, r.entry);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        *self.inner.lock() = Inner::default();
    }

    /// The ledger as canonical JSON (RFC 8785), appended to `out`: the
    /// `state` of a `state` record, written straight from the ledger (no
    /// JSON tree: a large ledger's snapshot costs its bytes, not a tree
    /// several times their size). `{"budgets": [[key, spent], ...], "rates":
    /// [[key, window_seconds, [time, ...]], ...], "sessions": [[session,
    /// calls, [[action, decision, time, args_sha256], ...]], ...] (least
    /// recently active first), "v": 1}`, keys as the ledger keeps them
    /// (pseudonyms), times in seconds since the epoch; rates and budgets
    /// sorted by key. Fails (and `out` is as it was) on a number JSON has
    /// no form for.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) -> crate::core::error::Result<()> {
        let start = out.len();
        let written = self.write_snapshot_at(out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    fn write_snapshot_at(&self, out: &mut Vec<u8>) -> crate::core::error::Result<()> {
        let inner = self.inner.lock();
        // Array elements, comma-separated.
        let sep = |out: &mut Vec<u8>, i: usize| {
            if i > 0 {
                out.push(b',');
            }
        };
        // The i-th `[key, ...` entry of a list, up to the comma after the key.
        let entry = |out: &mut Vec<u8>, i: usize, key: &str| {
            sep(out, i);
            out.push(b'[');
            jcs::write_str(out, key);
            out.push(b',');
        };
        let mut budgets: Vec<(&String, &f64)> = inner.spent.iter().collect();
        budgets.sort_by(|a, b| a.0.cmp(b.0));
        out.extend_from_slice(b"{\"budgets\":[");
        for (i, (key, spent)) in budgets.into_iter().enumerate() {
            entry(out, i, key);
            jcs::write_f64(out, *spent)?;
            out.push(b']');
        }
        let latest = inner.latest;
        let mut rates: Vec<(&String, &Window)> = inner
            .rates
            .iter()
            .filter(|(_, w)| w.used(latest, w.window) > 0 || latest == 0.0)
            .collect();
        rates.sort_by(|a, b| a.0.cmp(b.0));
        out.extend_from_slice(b"],\"rates\":[");
        for (i, (key, w)) in rates.into_iter().enumerate() {
            entry(out, i, key);
            jcs::write_f64(out, w.window)?;
            out.extend_from_slice(b",[");
            for (j, t) in w.times.iter().enumerate() {
                sep(out, j);
                jcs::write_f64(out, *t)?;
            }
            out.extend_from_slice(b"]]");
        }
        let mut sessions: Vec<(&String, &Session)> = inner.sessions.iter().collect();
        sessions.sort_by_key(|(_, s)| s.last);
        out.extend_from_slice(b"],\"sessions\":[");
        for (i, (key, session)) in sessions.into_iter().enumerate() {
            entry(out, i, key);
            jcs::write_u64(out, session.calls);
            out.extend_from_slice(b",[");
            for (j, call) in session.history.iter().enumerate() {
                sep(out, j);
                for (k, field) in ["action", "decision", "time", "args_sha256"]
                    .iter()
                    .enumerate()
                {
                    out.push(if k == 0 { b'[' } else { b',' });
                    jcs::write_str(out, call[*field].as_string().map_or("", |s| s.as_ref()));
                }
                out.push(b']');
            }
            out.extend_from_slice(b"]]");
        }
        out.extend_from_slice(b"],\"v\":");
        jcs::write_u64(out, STATE_VERSION);
        out.push(b'}');
        Ok(())
    }

    /// Replaces the ledger's contents with a snapshot ([`Ledger::write_snapshot`]). On any
    /// malformed part, nothing is replaced and the reason is returned.
    pub fn restore(&self, state: &Json) -> Result<(), String> {
        let bad = |what: &str| format!("malformed state snapshot: {what}");
        if state.get("v").and_then(Json::as_u64) != Some(STATE_VERSION) {
            return Err(bad("unknown version"));
        }
        let list = |k: &str| -> Result<&Vec<Json>, String> {
            state
                .get(k)
                .and_then(Json::as_array)
                .ok_or_else(|| bad(&format!("{k} is not a list")))
        };
        let time = |v: &Json| -> Result<f64, String> {
            v.as_f64()
                .filter(|t| t.is_finite())
                .ok_or_else(|| bad("a time is not a number"))
        };
        let mut next = Inner::default();
        for s in list("sessions")? {
            let (Some(key), Some(calls), Some(history)) = (
                s.get(0).and_then(Json::as_str),
                s.get(1).and_then(Json::as_u64),
                s.get(2).and_then(Json::as_array),
            ) else {
                return Err(bad("a session is not [key, calls, history]"));
            };
            let mut h = VecDeque::new();
            for e in history.iter().rev().take(self.history_len).rev() {
                let f = |i: usize| e.get(i).and_then(Json::as_str);
                let (Some(a), Some(d), Some(t), Some(sha)) = (f(0), f(1), f(2), f(3)) else {
                    return Err(bad("a history entry is not four strings"));
                };
                h.push_back(history_entry(a, d == "allow", t, sha));
            }
            next.clock += 1;
            next.sessions.insert(
                key.to_string(),
                Session {
                    calls,
                    history: h,
                    last: next.clock,
                },
            );
        }
        for r in list("rates")? {
            let (Some(key), Some(window), Some(times)) = (
                r.get(0).and_then(Json::as_str),
                r.get(1).and_then(Json::as_f64),
                r.get(2).and_then(Json::as_array),
            ) else {
                return Err(bad("a rate is not [key, window, times]"));
            };
            let mut w = Window {
                window,
                times: VecDeque::with_capacity(times.len()),
            };
            for t in times {
                let t = time(t)?;
                if t > next.latest {
                    next.latest = t;
                }
                w.insert(t);
            }
            next.rates.insert(key.to_string(), w);
        }
        for b in list("budgets")? {
            let (Some(key), Some(spent)) = (
                b.get(0).and_then(Json::as_str),
                b.get(1).and_then(Json::as_f64),
            ) else {
                return Err(bad("a budget is not [key, spent]"));
            };
            if !spent.is_finite() || spent < 0.0 {
                return Err(bad("a budget's spending is not a non-negative number"));
            }
            next.spent.insert(key.to_string(), spent);
        }
        *self.inner.lock() = next;
        Ok(())
    }
}

impl StateFold for Ledger {
    fn fold(&self, payload: &dyn Fields) {
        self.replay(payload);
    }

    /// Reads only what the ledger counts, straight from the bytes (opening a
    /// gate folds up to `state_every` records this way).
    fn fold_json(&self, payload: &[u8]) {
        if let Some(record) = Counted::from_json(payload) {
            self.replay_counted(record);
        }
    }

    fn write_snapshot(&self, out: &mut Vec<u8>) -> crate::core::error::Result<()> {
        Ledger::write_snapshot(self, out)
    }

    fn restore(&self, state: &Json) -> Result<(), String> {
        Ledger::restore(self, state)
    }

    fn reset(&self) {
        self.clear();
    }

    /// An allowed decision is admitted only if every limit it takes still
    /// holds over this fold (the records of every writer of the log).
    fn admits(&self, body: &dyn Fields) -> Result<(), String> {
        match replayed(Counted::from_fields(body)).and_then(|r| r.limits) {
            Some((rates, budgets, now)) => self.check(&rates, &budgets, now),
            None => Ok(()),
        }
    }
}

/// Why a rate does not hold for one more call, `used` calls being in its window.
pub fn rate_refusal(r: &Rate, used: u64) -> String {
    format!(
        "rate limit: {} allows {} calls per {} s, and {} were made",
        r.key, r.limit, r.window, used
    )
}

/// Why a budget does not hold for this call, `spent` being spent already.
pub fn budget_refusal(b: &Budget, spent: f64) -> String {
    format!(
        "budget exceeded: {} has spent {} of {}, and this call costs {}",
        b.key, spent, b.limit, b.cost
    )
}

/// What a decision record means to the ledger, or `None` for other records:
/// the one place the ledger's reading of a record lives (whether it comes
/// from a record being written or from the log's bytes, see [`Counted`]).
fn replayed(record: Counted<'_>) -> Option<Replayed<'_>> {
    if record.kind.as_deref() != Some("decision") {
        return None;
    }
    let time = record.time.as_deref().unwrap_or("");
    let allowed = record.decision.as_deref() == Some("allow");
    let entry = history_entry(
        record.name.as_deref().unwrap_or(""),
        allowed,
        time,
        record.args_sha256.as_deref().unwrap_or(""),
    );
    let limits = if allowed {
        let now = chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp_micros() as f64 / 1e6)
            .unwrap_or(0.0);
        record
            .obligations
            .and_then(|ob| limits_of(ob.rate.as_deref(), ob.budget.as_deref()).ok())
            .map(|(r, b)| (r, b, now))
    } else {
        None
    };
    Some(Replayed {
        session: record.session.unwrap_or_default(),
        entry,
        limits,
    })
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
    use serde_json::json;

    fn rate(key: &str, limit: u64, window: f64) -> [Rate; 1] {
        [Rate {
            key: key.into(),
            limit,
            window,
        }]
    }

    #[test]
    fn rates_and_budgets_take_atomically_and_refuse_past_the_limit() {
        let ledger = Ledger::new(4);
        let rate = rate("k", 2, 10.0);
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

    /// The limit is held exactly at the window's edge: a call exactly
    /// `window` seconds after another no longer counts it, one a microsecond
    /// earlier still does; out-of-order times and give-backs keep the count.
    #[test]
    fn sliding_window_is_exact() {
        let ledger = Ledger::new(1);
        let r = rate("k", 3, 10.0);
        for t in [100.0, 101.0, 102.0] {
            ledger.take(&r, &[], t).unwrap();
        }
        assert!(ledger.take(&r, &[], 109.999_999).is_err());
        assert!(ledger.take(&r, &[], 110.0).is_ok()); // 100.0 left the window
        assert!(ledger.take(&r, &[], 110.5).is_err());
        // An earlier time arriving late is sorted in; a give-back removes it.
        let r2 = rate("j", 2, 10.0);
        ledger.take(&r2, &[], 205.0).unwrap();
        ledger.take(&r2, &[], 204.0).unwrap();
        assert!(ledger.take(&r2, &[], 206.0).is_err());
        ledger.give_back(&r2, &[], 204.0);
        assert!(ledger.take(&r2, &[], 206.0).is_ok());
        assert!(ledger.take(&r2, &[], 214.9).is_err());
        assert!(ledger.take(&r2, &[], 215.0).is_ok());
        // Exactly `limit` calls in any window, over a long run.
        let r3 = rate("m", 5, 1.0);
        let mut allowed = Vec::new();
        for i in 0..10_000 {
            let t = 1000.0 + f64::from(i) * 0.01;
            if ledger.take(&r3, &[], t).is_ok() {
                allowed.push(t);
            }
        }
        for (i, t) in allowed.iter().enumerate() {
            let in_window = allowed[..=i].iter().filter(|u| **u > t - 1.0).count();
            assert!(in_window <= 5, "at {t}: {in_window}");
        }
        assert_eq!(allowed.len(), 5 * 100); // 100 s, 5 per second
    }

    #[test]
    fn sessions_are_bounded_and_expired_windows_dropped_but_budgets_kept() {
        let ledger = Ledger::with_bounds(2, 100);
        for i in 0..10_000u32 {
            ledger.record(&format!("s{i}"), history_entry("a", true, "t", "h"));
            let r = rate(&format!("r{i}"), 1, 1.0);
            let b = [Budget {
                key: format!("b{i}"),
                limit: 10.0,
                cost: 1.0,
            }];
            ledger.take(&r, &b, f64::from(i)).unwrap();
        }
        let (sessions, rates, budgets) = ledger.sizes();
        assert!(sessions <= 100 + 100 / 8 + 1, "{sessions}");
        assert!(rates <= 1024 + 2, "{rates}");
        assert_eq!(budgets, 10_000);
        // The most recent session is kept, the oldest forgotten.
        let (h, _) = ledger.view("s9999", &[]);
        assert_eq!(h.as_array().unwrap().len(), 1);
        let (h, u) = ledger.view("s0", &[]);
        assert!(h.as_array().unwrap().is_empty());
        assert_eq!(u["session_calls"], Value::from(0u64));
        // History per session is bounded.
        for _ in 0..10 {
            ledger.record("x", history_entry("a", true, "t", "h"));
        }
        assert_eq!(ledger.view("x", &[]).0.as_array().unwrap().len(), 2);
    }

    #[test]
    fn snapshot_restores_the_same_state() {
        let ledger = Ledger::new(3);
        for i in 0..5 {
            ledger.record("s", history_entry(&format!("a{i}"), i % 2 == 0, "t", "h"));
        }
        ledger.take(&rate("k", 10, 100.0), &[], 50.0).unwrap();
        ledger.take(&rate("k", 10, 100.0), &[], 60.0).unwrap();
        let b = [Budget {
            key: "b".into(),
            limit: 10.0,
            cost: 2.5,
        }];
        ledger.take(&[], &b, 60.0).unwrap();
        let snap = ledger.snapshot();
        let copy = Ledger::new(3);
        copy.restore(&snap).unwrap();
        assert_eq!(copy.snapshot(), snap);
        let keys = [("b".to_string(), "b".to_string())];
        assert_eq!(copy.view("s", &keys), ledger.view("s", &keys));
        assert!(copy.take(&rate("k", 2, 100.0), &[], 61.0).is_err());
        // Malformed snapshots replace nothing.
        for bad in [
            json!({}),
            json!({"v": 2}),
            json!({"v": 1, "sessions": [[1]], "rates": [], "budgets": []}),
            json!({"v": 1, "sessions": [], "rates": [], "budgets": [["b", -1]]}),
        ] {
            assert!(copy.restore(&bad).is_err(), "{bad}");
        }
        assert_eq!(copy.snapshot(), snap);
    }

    /// `cargo test --release --lib -- --ignored rate_check_cost --nocapture`:
    /// a check with 300,000 calls in the window against one with 10.
    #[test]
    fn the_snapshot_is_written_canonical() {
        let ledger = Ledger::new(3);
        for (i, session) in ["s\"1\\\u{1}", "é-session", "\u{1F600}", "a"]
            .iter()
            .enumerate()
        {
            let time = format!("2026-12-0{}T00:00:00Z", i + 1);
            ledger.record(session, history_entry("fs.read\n", i % 2 == 0, &time, "ab"));
        }
        ledger
            .take(&rate("r\u{7f}", 10, 0.25), &[], 1.0e21 + 0.5)
            .unwrap();
        ledger.take(&rate("k", 10, 100.0), &[], 60.123).unwrap();
        let b = |key: &str, cost: f64| Budget {
            key: key.into(),
            limit: 1.0e300,
            cost,
        };
        ledger
            .take(&[], &[b("€", 0.1), b("b", 1e-7)], 61.0)
            .unwrap();
        let mut bytes = b"prefix".to_vec();
        ledger.write_snapshot(&mut bytes).unwrap();
        let written = &bytes[b"prefix".len()..];
        let parsed: Json = serde_json::from_slice(written).unwrap();
        assert_eq!(jcs::to_vec(&parsed).unwrap(), written);
        assert_eq!(parsed["v"], STATE_VERSION);
        assert_eq!(parsed["sessions"].as_array().unwrap().len(), 4);
        // A number JSON cannot hold fails the snapshot and leaves `out` alone.
        ledger.inner.lock().spent.insert("nan".into(), f64::NAN);
        let mut out = b"prefix".to_vec();
        assert!(ledger.write_snapshot(&mut out).is_err());
        assert_eq!(out, b"prefix");
        assert_eq!(ledger.snapshot(), Json::Null);
    }

    #[test]
    #[ignore = "a measurement"]
    fn rate_check_cost() {
        let mut per = Vec::new();
        for fill in [10u32, 300_000] {
            let ledger = Ledger::new(1);
            let r = rate("k", 100_000_000, 1e9);
            for i in 0..fill {
                ledger.take(&r, &[], f64::from(i) * 1e-3).unwrap();
            }
            let start = std::time::Instant::now();
            let n = 20_000u32;
            for i in 0..n {
                ledger.take(&r, &[], 1e6 + f64::from(i)).unwrap();
            }
            let each = start.elapsed().as_secs_f64() / f64::from(n);
            println!("{fill:>7} calls in window: {:.3} us per take", each * 1e6);
            per.push(each);
        }
        assert!(per[1] < per[0] * 4.0, "{per:?}");
    }
}
