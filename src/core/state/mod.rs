//! Shared state: the rates, budgets and history of many workers in one Redis.
//!
//! With `state="redis://..."` a gate keeps no limit or history of its own:
//! every decision that takes limits (or whose policy reads `input.history` /
//! `input.usage`) asks Redis, and one Lua script ([`SCRIPT`]) checks every
//! limit of the decision and takes them all or none, on Redis's clock
//! (`TIME`), in one round trip (`EVALSHA`, with `EVAL` when the server does
//! not hold the script yet). The semantics are the local ledger's
//! ([`crate::core::ledger`]): a rate window is exact (a sorted set of the
//! calls inside it, scored by microsecond), a budget is a sum that is never
//! forgotten, kept as an integer count of millionths ([`UNITS`]) so sums are
//! exact.
//!
//! - **Idempotent.** Each call carries an id ([`call_id`]); the script
//!   remembers ids that took their limits for [`RETRY_SECONDS`], so a retry
//!   (the client resending after a lost reply, or the caller retrying the
//!   same tool call) does not take twice.
//! - **One server or a cluster.** Every key is hash-tagged `{execgate}`, so
//!   all keys of one script fall in one slot (the whole state lives on one
//!   shard) and `redis+cluster://host:port,host:port/` works like one server
//!   ([`link`]: the URL forms).
//! - **TLS.** `rediss://` connects over rustls (ring), verifying the server
//!   against the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override
//!   them) or the URL's `ssl_ca_certs`, with a client certificate when the
//!   URL names one (`ssl_certfile`, `ssl_keyfile`); there is no mode that
//!   skips verification.
//! - **Fail closed.** An unreachable store, a reply later than the timeout, or
//!   a store that lost its data (no marker key: new, flushed, evicted) makes
//!   every call that needs it a deny naming the store. [`SharedState::rebuild`]
//!   restores the counters from the audit trail and sets the marker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use redis::{ConnectionLike, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use regorus::Value;
use serde_json::{json, Map, Value as Json};
use sha2::Sha256;

use super::audit::StateFold;
use super::error::{CoreError, Result};
use super::keys::Keyring;
use super::ledger::{budget_refusal, history_entry, rate_refusal, Budget, Ledger, Rate};
use super::receipt::Receipt;

pub mod link;

use link::{Conn, Link};

/// How long connecting may take before the store counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one reply may take before the store counts as unreachable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Budgets are kept in Redis as integer millionths of the policy's unit.
pub const UNITS: f64 = 1e6;

/// How long a call id that took its limits is remembered (a retry within it
/// takes nothing).
pub const RETRY_SECONDS: u64 = 600;

/// How long an idle session's history is kept.
pub const SESSION_SECONDS: u64 = 86_400;

/// The hash tag of every key: one slot, so one script may touch them all.
const TAG: &str = "{execgate}";

/// The largest budget amount whose millionths stay exact in Lua's doubles.
const MAX_BUDGET: f64 = 9_007_199_254.0;

/// Idle connections kept for reuse.
const POOL: usize = 64;

/// The one script. `KEYS`: marker, call id, rate keys, budget keys, then
/// (when history is written) the session's history and call count.
/// `ARGV`: op (`take` or `give`), rates, budgets, call id, retry ms, then a
/// (limit, window µs) pair per rate and a (limit, cost) pair in millionths
/// per budget, then (history) the entry if allowed, if denied, the length
/// kept and the session's time to live.
///
/// Returns `{code, kind, index, used, now}`: code -1 the store holds no
/// execgate state, 0 refused (kind 1 a rate, 2 a budget; index 1-based;
/// used what it had), 1 taken, 2 already taken by this call id. Numbers are
/// passed to Redis through `%.0f`: Lua would print a microsecond time in
/// exponent form.
pub const SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0, 0, 0} end
local op, nr, nb, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local function n(x) return string.format('%.0f', x) end
if op == 'give' then
  if redis.call('DEL', KEYS[2]) == 0 then return {0, 0, 0, 0, 0} end
  for i = 1, nr do redis.call('ZREM', KEYS[2 + i], id .. ':' .. i) end
  for j = 1, nb do
    local k = KEYS[2 + nr + j]
    if redis.call('DECRBY', k, ARGV[5 + 2 * nr + 2 * j]) < 0 then redis.call('SET', k, 0) end
  end
  return {1, 0, 0, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local code, kind, index, used = 1, 0, 0, 0
if nr + nb > 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    code = 2
  else
    for i = 1, nr do
      local k, limit, window = KEYS[2 + i], tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
      redis.call('ZREMRANGEBYSCORE', k, '-inf', n(now - window))
      local c = redis.call('ZCARD', k)
      if c >= limit then code, kind, index, used = 0, 1, i, c break end
    end
    if code == 1 then
      for j = 1, nb do
        local base = 4 + 2 * nr + 2 * j
        local spent = tonumber(redis.call('GET', KEYS[2 + nr + j]) or '0')
        if spent + tonumber(ARGV[base + 1]) > tonumber(ARGV[base]) then
          code, kind, index, used = 0, 2, j, spent break
        end
      end
    end
    if code == 1 then
      for i = 1, nr do
        local k = KEYS[2 + i]
        redis.call('ZADD', k, n(now), id .. ':' .. i)
        redis.call('PEXPIRE', k, n(math.ceil(tonumber(ARGV[5 + 2 * i]) / 1000) + 1000))
      end
      for j = 1, nb do redis.call('INCRBY', KEYS[2 + nr + j], ARGV[5 + 2 * nr + 2 * j]) end
      redis.call('SET', KEYS[2], n(now), 'PX', ARGV[5])
    end
  end
end
local h = 3 + nr + nb
if KEYS[h] then
  local a = 5 + 2 * nr + 2 * nb
  local entry = ARGV[a + 1]
  if code == 0 then entry = ARGV[a + 2] end
  redis.call('RPUSH', KEYS[h], entry)
  redis.call('LTRIM', KEYS[h], '-' .. ARGV[a + 3], '-1')
  redis.call('INCR', KEYS[h + 1])
  redis.call('EXPIRE', KEYS[h], ARGV[a + 4])
  redis.call('EXPIRE', KEYS[h + 1], ARGV[a + 4])
end
return {code, kind, index, n(used), n(now)}
"#;

/// How long connecting and each reply may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOptions {
    /// Connecting (TCP or unix socket, and the handshake).
    pub connect_timeout: Duration,
    /// Each reply.
    pub timeout: Duration,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A history entry to append, in the script's round trip.
pub struct HistoryWrite<'a> {
    /// The session, as the log records it.
    pub session: &'a str,
    /// The action name.
    pub action: &'a str,
    /// `context.time`.
    pub time: &'a str,
    /// SHA-256 of the arguments.
    pub args_sha256: &'a str,
    /// Whether the decision allows (before the limits are checked).
    pub allowed: bool,
    /// Entries kept per session.
    pub len: usize,
}

/// What [`SharedState::rebuild`] restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Decision records read from the logs.
    pub decisions: u64,
    /// Retries (same call id within [`RETRY_SECONDS`]) not counted again.
    pub retries: u64,
    /// Rate keys with calls still inside their window.
    pub rates: u64,
    /// Budget keys.
    pub budgets: u64,
    /// Sessions with history.
    pub sessions: u64,
}

/// A Redis that holds the limits and history of every gate pointed at it.
pub struct SharedState {
    link: Link,
    /// The URL without its password and TLS files, for reasons and errors.
    shown: String,
    options: StateOptions,
    pool: Mutex<Vec<Conn>>,
    script: Script,
    /// Keys the call ids (from the gate's signing key, like pseudonyms).
    call_key: [u8; 32],
}

impl SharedState {
    /// A store at `url` (`redis://`, `rediss://` (TLS), `redis+unix://`,
    /// `unix://`, `redis+cluster://`, `rediss+cluster://`; see [`link`]).
    /// Only the URL (and the TLS files it names) is checked here: an
    /// unreachable store denies calls, it does not stop a gate from starting.
    pub fn open(url: &str, options: StateOptions, call_key: [u8; 32]) -> Result<Self> {
        // rediss:// verifies the server with rustls, which needs the
        // process's crypto provider: ring. Another provider installed first
        // (by another library) serves as well.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let (link, shown) = Link::open(url, &options).map_err(|e| {
            CoreError::InvalidArgument(format!(
                "state {}: not a Redis URL: {e}",
                link::without_password(url)
            ))
        })?;
        Ok(Self {
            link,
            shown,
            options,
            pool: Mutex::new(Vec::new()),
            script: Script::new(SCRIPT),
            call_key,
        })
    }

    /// The store's URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn connect(&self) -> RedisResult<Conn> {
        self.link.connect(&self.options)
    }

    /// Runs `op` on a pooled connection. A connection that fails is dropped;
    /// one broken by the network (a restarted server) is replaced once and
    /// `op` retried, which the call ids make safe. On a cluster, all of it
    /// is over within one connect timeout and one reply timeout
    /// ([`link::within`]).
    fn run<T>(&self, op: impl FnMut(&mut dyn ConnectionLike) -> RedisResult<T>) -> Result<T> {
        let deadline =
            std::time::Instant::now() + self.options.connect_timeout + self.options.timeout;
        link::within(deadline, || self.run_once(op))
    }

    fn run_once<T>(
        &self,
        mut op: impl FnMut(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Result<T> {
        let pooled = self.pool.lock().pop();
        let fresh = pooled.is_none();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(|e| self.failed(&e))?,
        };
        let out = match op(conn.link()) {
            Err(e) if !fresh && broken(&e) => {
                conn = self.connect().map_err(|e| self.failed(&e))?;
                op(conn.link())
            }
            other => other,
        };
        match out {
            Ok(v) => {
                let mut pool = self.pool.lock();
                if pool.len() < POOL {
                    pool.push(conn);
                }
                Ok(v)
            }
            Err(e) => Err(self.failed(&e)),
        }
    }

    fn failed(&self, e: &RedisError) -> CoreError {
        let what = if e.is_timeout() {
            format!("no reply within {:?}", self.options.timeout)
        } else {
            e.to_string()
        };
        CoreError::State(format!("{}: {what}", self.shown))
    }

    fn lost(&self) -> CoreError {
        CoreError::State(format!(
            "{}: the store holds no execgate state (new, flushed or evicted); restore it \
             with `execgate state rebuild --state URL --key PUB LOG...`",
            self.shown
        ))
    }

    /// `input.history` and `input.usage` for a session (as
    /// [`Ledger::view`]), in one round trip.
    pub fn view(
        &self,
        session: &str,
        budget_keys: &[(String, String)],
        len: usize,
    ) -> Result<(Value, Value)> {
        let mut pipe = redis::pipe();
        pipe.exists(marker())
            .lrange(key("h", session), -(len.max(1) as isize), -1)
            .get(key("n", session));
        for (_, kept) in budget_keys {
            pipe.get(key("b", kept));
        }
        let (present, entries, calls, spent): (bool, Vec<String>, Option<u64>, Vec<Option<i64>>) =
            self.run(|conn| {
                let mut v: Vec<redis::Value> = pipe.query(conn)?;
                let spent = v.split_off(3.min(v.len()));
                let mut it = v.into_iter();
                let mut next = || it.next().unwrap_or(redis::Value::Nil);
                Ok((
                    redis::from_redis_value(next())?,
                    redis::from_redis_value(next())?,
                    redis::from_redis_value(next())?,
                    spent
                        .into_iter()
                        .map(redis::from_redis_value)
                        .collect::<std::result::Result<_, _>>()?,
                ))
            })?;
        if !present {
            return Err(self.lost());
        }
        let history: Vec<Value> = entries.iter().filter_map(|e| parse_entry(e)).collect();
        let mut usage = Value::new_object();
        if let Ok(map) = usage.as_object_mut() {
            map.insert(
                Value::from("session_calls"),
                Value::from(calls.unwrap_or(0)),
            );
            let mut budgets = Value::new_object();
            if let Ok(b) = budgets.as_object_mut() {
                for ((shown, _), units) in budget_keys.iter().zip(spent) {
                    let spent = units.unwrap_or(0) as f64 / UNITS;
                    b.insert(Value::from(shown.as_str()), Value::from(spent));
                }
            }
            map.insert(Value::from("budgets"), budgets);
        }
        Ok((Value::from(history), usage))
    }

    /// Checks every limit and, only if all hold, takes them, and appends the
    /// history entry (as allowed only if the limits were taken), all in one
    /// script. `Ok(Ok(true))`: taken now; `Ok(Ok(false))`: nothing to take,
    /// or this call id already took them (a retry; nothing to give back
    /// then, so the units stay spent); `Ok(Err(reason))`: a limit does not
    /// hold.
    pub fn take(
        &self,
        call: &str,
        rates: &[Rate],
        budgets: &[Budget],
        history: Option<&HistoryWrite<'_>>,
    ) -> Result<std::result::Result<bool, String>> {
        let reply = self.invoke("take", call, rates, budgets, history)?;
        match reply {
            (-1, ..) => Err(self.lost()),
            (0, 1, i, used) => Ok(Err(rates
                .get(i.saturating_sub(1))
                .map(|r| rate_refusal(r, used as u64))
                .unwrap_or_default())),
            (0, _, i, used) => Ok(Err(budgets
                .get(i.saturating_sub(1))
                .map(|b| budget_refusal(b, used as f64 / UNITS))
                .unwrap_or_default())),
            (code, ..) => Ok(Ok(code == 1 && !(rates.is_empty() && budgets.is_empty()))),
        }
    }

    /// Gives back what `call` took (once; nothing if it took nothing).
    pub fn give_back(&self, call: &str, rates: &[Rate], budgets: &[Budget]) -> Result<()> {
        match self.invoke("give", call, rates, budgets, None)? {
            (-1, ..) => Err(self.lost()),
            _ => Ok(()),
        }
    }

    fn invoke(
        &self,
        op: &str,
        call: &str,
        rates: &[Rate],
        budgets: &[Budget],
        history: Option<&HistoryWrite<'_>>,
    ) -> Result<(i64, i64, usize, i64)> {
        let mut keys = vec![marker(), key("c", call)];
        keys.extend(rates.iter().map(|r| key("r", &r.key)));
        keys.extend(budgets.iter().map(|b| key("b", &b.key)));
        // Lua sees every argument as a string.
        let mut args = vec![
            op.to_string(),
            rates.len().to_string(),
            budgets.len().to_string(),
            call.to_string(),
            (RETRY_SECONDS * 1000).to_string(),
        ];
        for r in rates {
            args.extend([r.limit.to_string(), micros(r.window).to_string()]);
        }
        for b in budgets {
            args.extend([units(b.limit, &b.key)?, units(b.cost, &b.key)?].map(|u| u.to_string()));
        }
        if let Some(h) = history {
            keys.push(key("h", h.session));
            keys.push(key("n", h.session));
            let entry = |allowed: bool| {
                json!([
                    h.action,
                    if allowed { "allow" } else { "deny" },
                    h.time,
                    h.args_sha256
                ])
                .to_string()
            };
            args.extend([
                entry(h.allowed),
                entry(false),
                h.len.max(1).to_string(),
                SESSION_SECONDS.to_string(),
            ]);
        }
        // EVALSHA, or EVAL (which caches the script) when the node does not
        // hold it: both go to the node of the first key. Not SCRIPT LOAD,
        // which a cluster client sends to every primary (one of them down
        // would fail calls the state's node could serve).
        let script = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body).arg(keys.len()).arg(&keys).arg(&args);
            cmd
        };
        let evalsha = script("EVALSHA", self.script.get_hash());
        let (code, kind, index, used, _now): (i64, i64, usize, i64, i64) =
            self.run(|conn| match evalsha.query(conn) {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script("EVAL", SCRIPT).query(conn)
                }
                other => other,
            })?;
        Ok((code, kind, index, used))
    }

    /// The id of one call: the keyed digest of who, in which session, with
    /// which `tool_call_id`, called which action with which arguments. A call
    /// without a `tool_call_id` gets a fresh id (it can only be retried by
    /// this process's own reconnect).
    pub fn call_id(
        &self,
        session: &str,
        principal: &str,
        tool_call_id: Option<&str>,
        action: &str,
        args_sha256: &str,
    ) -> String {
        let Some(id) = tool_call_id else {
            return uuid::Uuid::now_v7().simple().to_string();
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.call_key) else {
            return uuid::Uuid::now_v7().simple().to_string();
        };
        for part in [session, principal, id, action, args_sha256] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Replaces the store's execgate state with the counters and history the
    /// audit logs hold (each verified first with `keyring`): after the store
    /// lost its data, or to initialize a new one (no logs). Calls taken after
    /// the logs were read are not in them: rebuild while the store is empty
    /// (the workers deny) or the workers are stopped.
    pub fn rebuild(&self, logs: &[PathBuf], keyring: &Keyring, history: usize) -> Result<Rebuilt> {
        let (ledger, mut report) = fold_logs(logs, keyring, history)?;
        let snapshot = ledger.snapshot();
        self.run(|conn| redis::cmd("DEL").arg(marker()).query::<()>(conn))?;
        let pattern = format!("{TAG}:*");
        let stale: Vec<String> = self.run(|conn| {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .to_owned();
                let (next, batch): (u64, Vec<String>) = on_slot(conn, &scan)?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })?;
        for chunk in stale.chunks(1000) {
            self.run(|conn| redis::cmd("DEL").arg(chunk).query::<()>(conn))?;
        }
        let (secs, us): (i64, i64) = self.run(|conn| on_slot(conn, &redis::cmd("TIME")))?;
        let now = secs * 1_000_000 + us;
        let mut pipe = redis::pipe();
        let list = |k: &str| snapshot.get(k).and_then(Json::as_array).cloned();
        for b in list("budgets").unwrap_or_default() {
            let (Some(k), Some(spent)) = (b[0].as_str(), b[1].as_f64()) else {
                continue;
            };
            pipe.set(key("b", k), (spent * UNITS).round() as i64)
                .ignore();
            report.budgets += 1;
        }
        for r in list("rates").unwrap_or_default() {
            let (Some(k), Some(window), Some(times)) =
                (r[0].as_str(), r[1].as_f64(), r[2].as_array())
            else {
                continue;
            };
            let window = micros(window);
            let inside: Vec<(i64, String)> = times
                .iter()
                .filter_map(Json::as_f64)
                .map(|t| (t * UNITS).round() as i64)
                .filter(|t| *t > now - window)
                .enumerate()
                .map(|(i, t)| (t, format!("rebuilt:{i}")))
                .collect();
            if let Some(last) = inside.iter().map(|(t, _)| *t).max() {
                pipe.zadd_multiple(key("r", k), &inside).ignore();
                pipe.pexpire_at(key("r", k), (last + window) / 1000 + 1000)
                    .ignore();
                report.rates += 1;
            }
        }
        for s in list("sessions").unwrap_or_default() {
            let (Some(k), Some(calls), Some(entries)) =
                (s[0].as_str(), s[1].as_u64(), s[2].as_array())
            else {
                continue;
            };
            let entries: Vec<String> = entries.iter().map(Json::to_string).collect();
            if !entries.is_empty() {
                pipe.rpush(key("h", k), entries).ignore();
                pipe.expire(key("h", k), SESSION_SECONDS as i64).ignore();
            }
            pipe.set_ex(key("n", k), calls, SESSION_SECONDS).ignore();
            report.sessions += 1;
        }
        pipe.set(marker(), format!("rebuilt at {now}")).ignore();
        self.run(|conn| pipe.query::<()>(conn))?;
        Ok(report)
    }
}

/// Whether the connection itself is gone (worth one reconnect), rather than
/// the command failing or the store being slow (a timeout is final: the bound
/// is the bound).
fn broken(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error())
}

/// Runs a command that names no key (`TIME`, `SCAN`) on the node that holds
/// the state: on a cluster a pipeline goes where its first command's key
/// lives, so the command follows a key of the tag.
fn on_slot<T: redis::FromRedisValue>(
    conn: &mut dyn ConnectionLike,
    cmd: &redis::Cmd,
) -> RedisResult<T> {
    let (out,): (T,) = redis::pipe()
        .exists(marker())
        .ignore()
        .add_command(cmd.clone())
        .query(conn)?;
    Ok(out)
}

fn marker() -> String {
    format!("{TAG}:marker")
}

/// The key of `name` of one kind: `c` call ids, `r` rate windows, `b`
/// budgets, `h` session history, `n` session call counts.
fn key(kind: &str, name: &str) -> String {
    format!("{TAG}:{kind}:{name}")
}

fn micros(seconds: f64) -> i64 {
    (seconds * UNITS).round() as i64
}

fn units(amount: f64, key: &str) -> Result<i64> {
    if amount > MAX_BUDGET {
        return Err(CoreError::State(format!(
            "budget {key}: amounts above {MAX_BUDGET} cannot be kept exactly in the shared store"
        )));
    }
    Ok((amount * UNITS).round() as i64)
}

/// A history entry as the script stores it: `[action, decision, time, sha]`.
fn parse_entry(text: &str) -> Option<Value> {
    let v: Json = serde_json::from_str(text).ok()?;
    let f = |i: usize| v.get(i).and_then(Json::as_str);
    Some(history_entry(f(0)?, f(1)? == "allow", f(2)?, f(3)?))
}

/// The fold of every decision record of `logs` (verified), in time order,
/// with retries of one call id counted once.
fn fold_logs(logs: &[PathBuf], keyring: &Keyring, history: usize) -> Result<(Ledger, Rebuilt)> {
    let mut report = Rebuilt::default();
    let mut decisions: Vec<(String, Map<String, Json>)> = Vec::new();
    for path in logs {
        let verified = super::audit::verify_log(path, keyring)?;
        if let Some(f) = &verified.failure {
            return Err(CoreError::Audit {
                message: format!(
                    "does not verify (line {}: {}); counters are rebuilt only from logs that do",
                    f.line, f.reason
                ),
                path: path.display().to_string(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::Audit {
            message: format!("cannot read: {e}"),
            path: path.display().to_string(),
        })?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let receipt = Receipt::from_json(line)?;
            if receipt.kind() == "decision" {
                let p = receipt.payload();
                let time = p["context"]["time"].as_str().unwrap_or("").to_string();
                decisions.push((time, p.clone()));
            }
        }
    }
    decisions.sort_by(|a, b| a.0.cmp(&b.0));
    let ledger = Ledger::with_bounds(history, 1 << 32);
    let mut seen: HashMap<String, f64> = HashMap::new();
    for (time, payload) in &decisions {
        report.decisions += 1;
        let at = chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp_micros() as f64 / UNITS)
            .unwrap_or(0.0);
        if let Some(id) = recorded_call(payload) {
            let retry = seen
                .get(&id)
                .is_some_and(|first| at - first < RETRY_SECONDS as f64);
            if retry {
                report.retries += 1;
                ledger.replay_history(payload);
                continue;
            }
            seen.insert(id, at);
        }
        ledger.replay(payload);
    }
    Ok((ledger, report))
}

/// What identifies an allowed call that took limits in a record (as
/// [`SharedState::call_id`] keys it, in the record's pseudonyms), if it had
/// a `tool_call_id`.
fn recorded_call(p: &Map<String, Json>) -> Option<String> {
    if p.get("decision").and_then(Json::as_str) != Some("allow") {
        return None;
    }
    let ob = p.get("obligations")?;
    ob.get("rate").or_else(|| ob.get("budget"))?;
    let s = |v: &Json| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let context = p.get("context")?;
    Some(
        json!([
            s(&context["session"]),
            s(&p["principal"]["id"]),
            context.get("tool_call_id")?.as_str()?,
            s(&p["action"]["name"]),
            s(&p["action"]["args_sha256"]),
        ])
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused() {
        assert!(SharedState::open("http://x", StateOptions::default(), [0; 32]).is_err());
        assert!(
            SharedState::open("redis://127.0.0.1:1/0", StateOptions::default(), [0; 32]).is_ok()
        );
    }

    #[test]
    fn an_unreachable_store_is_an_error_naming_it() {
        let options = StateOptions {
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
        };
        // Port 1 on loopback: refused at once.
        let s = SharedState::open("redis://127.0.0.1:1/0", options, [0; 32]).unwrap();
        let rate = [Rate {
            key: "k".into(),
            limit: 1,
            window: 1.0,
        }];
        let e = s.take("c", &rate, &[], None).unwrap_err().to_string();
        assert!(e.contains("redis://127.0.0.1:1/0"), "{e}");
        assert!(s.view("s", &[], 4).is_err());
    }

    #[test]
    fn call_ids_are_stable_keyed_and_distinct() {
        let a =
            SharedState::open("redis://127.0.0.1:1/0", StateOptions::default(), [1; 32]).unwrap();
        let b =
            SharedState::open("redis://127.0.0.1:1/0", StateOptions::default(), [2; 32]).unwrap();
        let id = |s: &SharedState, tc: Option<&str>, args: &str| s.call_id("s", "p", tc, "a", args);
        assert_eq!(id(&a, Some("t"), "h"), id(&a, Some("t"), "h"));
        assert_ne!(id(&a, Some("t"), "h"), id(&b, Some("t"), "h"));
        assert_ne!(id(&a, Some("t"), "h"), id(&a, Some("t"), "g"));
        assert_ne!(id(&a, None, "h"), id(&a, None, "h"));
    }
}
