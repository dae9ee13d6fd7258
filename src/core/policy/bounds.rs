//! Memory and time bounds *inside* builtins.
//!
//! regorus checks its instruction and time limits between instructions, never
//! inside a builtin, and nothing in this build bounds memory. A single call can
//! therefore allocate in proportion to its arguments before any check runs:
//! `numbers.range(0, 1e9)` reserves a 1e9-element vector up front and the
//! process aborts; eight nested `replace` doublings build gigabytes. Since the
//! arguments can come from a tool call, the model could take the agent down.
//!
//! So every builtin whose output can grow faster than its input is replaced in
//! the compiled RVM program by a guard ([`install`]). Before calling the
//! original, the guard estimates the bytes the call would produce from its
//! arguments and refuses it if that would take the evaluation past its memory
//! budget (`max_memory`); after the call it charges the result's actual size to
//! the budget, so chains of calls that are each small add up. Each guard also
//! checks the deadline before and after the call. A refusal is a regorus
//! [`LimitError`], which the RVM propagates even where it turns other builtin
//! errors into `undefined`, and the evaluation ends as a `limit` deny.
//!
//! regorus 0.14 has an allocator-based budget (`allocator-memory-limits`), but
//! it needs its own mimalloc fork as the process's global allocator and it only
//! checks between steps, so it cannot stop the single up-front allocation that
//! aborts; the estimates here are checked before the allocation happens.
//!
//! The budget of an evaluation lives in a thread-local [`Scope`]: the RVM runs
//! on the calling thread and builtins are plain function pointers, so there is
//! no other way to hand them per-evaluation state.

use std::cell::Cell;
use std::time::{Duration, Instant};

use regorus::rvm::Program;
use regorus::unstable::{Expr, Ref, Span, BUILTINS};
use regorus::{LimitError, Value};

/// Default evaluation memory budget: 64 MiB of builtin output per evaluation.
///
/// A decision over a 10,000-entry allowlist produces well under a megabyte;
/// 64 MiB leaves room for large data while keeping a runaway policy far from
/// an agent's memory.
pub const DEFAULT_MAX_MEMORY: u64 = 64 << 20;

/// What one element of an array, set or object costs at least in memory.
const VALUE_BYTES: u64 = std::mem::size_of::<Value>() as u64;
/// Heap overhead of one string value beyond its bytes (allocation header, Arc counts).
const STRING_BYTES: u64 = 32;
/// Overhead of one entry of a set or object (a B-tree node slot) beyond its values.
const ENTRY_BYTES: u64 = 2 * VALUE_BYTES;

/// Why an evaluation was stopped inside a builtin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The builtin would have taken the evaluation past its memory budget.
    Memory {
        /// The builtin refused.
        builtin: &'static str,
        /// Bytes the evaluation would have used with this call.
        bytes: u64,
    },
    /// The deadline passed before or during the builtin.
    Time {
        /// The builtin during or before which it passed.
        builtin: &'static str,
    },
}

#[derive(Clone, Copy)]
struct Budget {
    start: Instant,
    timeout: Duration,
    max_memory: u64,
    used: u64,
    exceeded: Option<Exceeded>,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// The bounds of one evaluation on this thread, active until dropped.
///
/// Scopes nest: dropping one restores the one it replaced, so a diagnosis run
/// inside an evaluation does not leak its budget to the caller.
pub struct Scope {
    previous: Option<Budget>,
}

impl Scope {
    /// Starts bounding builtins on this thread: `timeout` from `start`, at
    /// most `max_memory` bytes of builtin output.
    pub fn enter(start: Instant, timeout: Duration, max_memory: u64) -> Self {
        let budget = Budget {
            start,
            timeout,
            max_memory,
            used: 0,
            exceeded: None,
        };
        Self {
            previous: BUDGET.with(|b| b.replace(Some(budget))),
        }
    }

    /// The bound that stopped a builtin in this scope, if any did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        BUDGET.with(|b| b.get().and_then(|b| b.exceeded))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        BUDGET.with(|b| b.set(self.previous));
    }
}

/// An estimate of what a call will produce, from its arguments alone.
type Estimator = fn(&[Value], u64) -> Result<u64, String>;

/// The guarded builtins and how to estimate their output in bytes. An
/// estimator may also refuse arguments that would make the original panic
/// (`numbers.range_step` with a zero step, `sprintf` with a non-ASCII width).
const GUARDED: &[(&str, Estimator)] = &[
    ("numbers.range", est_range),
    ("numbers.range_step", est_range_step),
    ("net.cidr_expand", est_cidr_expand),
    ("replace", est_replace),
    ("strings.replace_n", est_replace_n),
    ("regex.replace", est_regex_replace),
    ("concat", est_concat),
    ("array.concat", est_sum_of_lengths),
    ("union", est_sum_of_lengths),
    ("object.union", est_sum_of_lengths),
    ("object.union_n", est_union_n),
    ("sprintf", est_sprintf),
    ("json.marshal", est_serialize),
    ("json.marshal_with_options", est_serialize_indented),
    ("yaml.marshal", est_serialize),
    ("base64.encode", est_encode),
    ("base64url.encode", est_encode),
    ("base64url.encode_no_pad", est_encode),
    ("hex.encode", est_encode),
    ("urlquery.encode", est_encode),
    ("urlquery.encode_object", est_serialize),
    ("split", est_split),
    ("regex.split", est_split),
    ("regex.find_n", est_split),
    ("indexof_n", est_split),
    ("bits.lsh", est_lsh),
    ("json.unmarshal", est_encode),
    ("yaml.unmarshal", est_encode),
];

/// A builtin as regorus calls it.
pub(super) type BuiltinFn = fn(&Span, &[Ref<Expr>], &[Value], bool) -> anyhow::Result<Value>;

/// One guard function per entry of [`GUARDED`], by index (builtins are plain
/// function pointers, so the index is a const parameter).
const GUARDS: [BuiltinFn; 28] = [
    guarded::<0>,
    guarded::<1>,
    guarded::<2>,
    guarded::<3>,
    guarded::<4>,
    guarded::<5>,
    guarded::<6>,
    guarded::<7>,
    guarded::<8>,
    guarded::<9>,
    guarded::<10>,
    guarded::<11>,
    guarded::<12>,
    guarded::<13>,
    guarded::<14>,
    guarded::<15>,
    guarded::<16>,
    guarded::<17>,
    guarded::<18>,
    guarded::<19>,
    guarded::<20>,
    guarded::<21>,
    guarded::<22>,
    guarded::<23>,
    guarded::<24>,
    guarded::<25>,
    guarded::<26>,
    guarded::<27>,
];

/// Replaces the guarded builtins of a compiled program with their guards.
pub fn install(program: &mut Program) {
    replace_builtins(program, |name| {
        let g = GUARDED.iter().position(|(n, _)| *n == name)?;
        GUARDS.get(g).copied()
    });
}

/// Puts `with(name)`, where it gives one, in the compiled program's slot of
/// each builtin the program calls.
pub(super) fn replace_builtins(program: &mut Program, with: impl Fn(&str) -> Option<BuiltinFn>) {
    for (i, info) in program.builtin_info_table.iter().enumerate() {
        if let (Some(f), Some(slot)) = (with(&info.name), program.resolved_builtins.get_mut(i)) {
            slot.0 = f;
        }
    }
}

/// regorus's own implementation of a builtin, which a replacement calls.
pub(super) fn regorus_builtin(name: &str) -> anyhow::Result<BuiltinFn> {
    match BUILTINS.get(name) {
        Some(&(original, _)) => Ok(original),
        None => anyhow::bail!("internal error: builtin {name} is not available"),
    }
}

/// Whether a program calls any builtin this module guards (such a program is
/// never handed to the unguarded interpreter).
pub fn uses_guarded_builtins(program: &Program) -> bool {
    program
        .builtin_info_table
        .iter()
        .any(|info| GUARDED.iter().any(|(n, _)| *n == info.name))
}

fn guarded<const I: usize>(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> anyhow::Result<Value> {
    let Some(&(name, estimate)) = GUARDED.get(I) else {
        anyhow::bail!("internal error: no guarded builtin {I}");
    };
    let original = regorus_builtin(name)?;
    let Some(budget) = BUDGET.with(Cell::get) else {
        // No evaluation scope (never the case for the gate): apply the default bound.
        let _scope = Scope::enter(Instant::now(), Duration::MAX, DEFAULT_MAX_MEMORY);
        return guarded::<I>(span, params, args, strict);
    };
    check_time(&budget, name)?;
    let remaining = budget.max_memory.saturating_sub(budget.used);
    let needed =
        estimate(args, remaining.saturating_add(1)).map_err(|m| anyhow::anyhow!("{name}: {m}"))?;
    if needed > remaining {
        return Err(exceed(
            &budget,
            Exceeded::Memory {
                builtin: name,
                bytes: budget.used.saturating_add(needed),
            },
        ));
    }
    let result = original(span, params, args, strict)?;
    let produced = deep_size(&result, remaining.saturating_add(1));
    let used = budget.used.saturating_add(produced);
    BUDGET.with(|b| {
        if let Some(mut current) = b.get() {
            current.used = used;
            b.set(Some(current));
        }
    });
    if used > budget.max_memory {
        return Err(exceed(
            &budget,
            Exceeded::Memory {
                builtin: name,
                bytes: used,
            },
        ));
    }
    check_time(&budget, name)?;
    Ok(result)
}

fn check_time(budget: &Budget, name: &'static str) -> anyhow::Result<()> {
    if budget.start.elapsed() > budget.timeout {
        return Err(exceed(budget, Exceeded::Time { builtin: name }));
    }
    Ok(())
}

/// Records why the evaluation stops and builds the error regorus propagates.
fn exceed(budget: &Budget, why: Exceeded) -> anyhow::Error {
    BUDGET.with(|b| {
        if let Some(mut current) = b.get() {
            current.exceeded.get_or_insert(why);
            b.set(Some(current));
        }
    });
    anyhow::Error::new(match why {
        Exceeded::Memory { bytes, .. } => LimitError::MemoryLimitExceeded {
            usage: bytes,
            limit: budget.max_memory,
        },
        Exceeded::Time { .. } => LimitError::TimeLimitExceeded {
            elapsed: budget.start.elapsed(),
            limit: budget.timeout,
        },
    })
}

/// Bytes a value occupies, counted until `cap` is reached (shared parts count
/// each time they appear: that is what serializing or copying them costs).
pub fn deep_size(value: &Value, cap: u64) -> u64 {
    match value {
        Value::String(s) => return STRING_BYTES + s.len() as u64,
        Value::Array(_) | Value::Set(_) | Value::Object(_) => {}
        _ => return VALUE_BYTES,
    }
    let mut total = 0u64;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total = total.saturating_add(match v {
            Value::String(s) => STRING_BYTES + s.len() as u64,
            Value::Array(a) => {
                stack.extend(a.iter());
                VALUE_BYTES * (a.len() as u64 + 1)
            }
            Value::Set(s) => {
                stack.extend(s.iter());
                VALUE_BYTES + ENTRY_BYTES * s.len() as u64
            }
            Value::Object(o) => {
                for (k, v) in o.iter() {
                    stack.push(k);
                    stack.push(v);
                }
                VALUE_BYTES + ENTRY_BYTES * o.len() as u64
            }
            _ => VALUE_BYTES,
        });
        if total >= cap {
            return total;
        }
    }
    total
}

fn int_arg(v: Option<&Value>) -> Option<i128> {
    match v {
        Some(Value::Number(n)) if n.is_integer() => n.as_i64().map(i128::from),
        Some(Value::Number(n)) => n.as_f64().map(|f| f as i128),
        _ => None,
    }
}

fn str_arg(v: Option<&Value>) -> &str {
    match v {
        Some(Value::String(s)) => s,
        _ => "",
    }
}

fn len_arg(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.len() as u64,
        Some(Value::Array(a)) => a.len() as u64,
        Some(Value::Set(s)) => s.len() as u64,
        Some(Value::Object(o)) => o.len() as u64,
        _ => 0,
    }
}

fn elements(count: u128) -> u64 {
    u64::try_from(count.saturating_mul(u128::from(VALUE_BYTES))).unwrap_or(u64::MAX)
}

fn est_range(args: &[Value], _cap: u64) -> Result<u64, String> {
    match (int_arg(args.first()), int_arg(args.get(1))) {
        // Integers beyond i64 make the original fail on its own.
        (Some(a), Some(b)) => Ok(elements(a.abs_diff(b) + 1)),
        _ => Ok(0),
    }
}

fn est_range_step(args: &[Value], _cap: u64) -> Result<u64, String> {
    let (Some(a), Some(b)) = (int_arg(args.first()), int_arg(args.get(1))) else {
        return Ok(0);
    };
    match args.get(2) {
        Some(Value::Number(n)) if n.is_integer() && n.as_i64().is_some_and(|s| s > 0) => {
            let step = n.as_i64().map_or(1, |s| s.unsigned_abs());
            Ok(elements(a.abs_diff(b) / u128::from(step) + 1))
        }
        // The original divides by the step without checking it.
        _ => Err("step must be a positive integer".into()),
    }
}

fn est_cidr_expand(args: &[Value], _cap: u64) -> Result<u64, String> {
    let cidr = str_arg(args.first());
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return Ok(0);
    };
    let bits: u32 = if addr.contains(':') { 128 } else { 32 };
    let Ok(prefix) = prefix.trim().parse::<u32>() else {
        return Ok(0);
    };
    let host_bits = bits.saturating_sub(prefix);
    let hosts = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    Ok(
        u64::try_from(hosts.saturating_mul(u128::from(VALUE_BYTES + STRING_BYTES + 40)))
            .unwrap_or(u64::MAX),
    )
}

fn replaced_len(s: &str, old: &str, new: &str) -> u64 {
    let base = s.len() as u64;
    if new.len() <= old.len() {
        return base;
    }
    let matches = if old.is_empty() {
        s.chars().count() as u64 + 1
    } else {
        s.matches(old).count() as u64
    };
    base.saturating_add(matches.saturating_mul((new.len() - old.len()) as u64))
}

fn est_replace(args: &[Value], _cap: u64) -> Result<u64, String> {
    let s = str_arg(args.first());
    Ok(STRING_BYTES + replaced_len(s, str_arg(args.get(1)), str_arg(args.get(2))))
}

fn est_replace_n(args: &[Value], _cap: u64) -> Result<u64, String> {
    // Replacements apply one after another, each to the previous result.
    let mut len = len_arg(args.get(1));
    if let Some(Value::Object(patterns)) = args.first() {
        for (old, new) in patterns.iter() {
            let (old, new) = (
                str_arg(Some(old)).len() as u64,
                str_arg(Some(new)).len() as u64,
            );
            if new > old {
                let matches = len.checked_div(old).unwrap_or(len + 1);
                len = len.saturating_add(matches.saturating_mul(new - old));
            }
        }
    }
    Ok(STRING_BYTES + len)
}

fn est_regex_replace(args: &[Value], _cap: u64) -> Result<u64, String> {
    // A pattern can match at every position, empty matches included.
    let s = len_arg(args.first());
    let value = len_arg(args.get(2));
    Ok(STRING_BYTES + s.saturating_add((s + 1).saturating_mul(value)))
}

fn est_concat(args: &[Value], cap: u64) -> Result<u64, String> {
    let delim = len_arg(args.first());
    let parts = len_arg(args.get(1));
    let content = args.get(1).map_or(0, |v| deep_size(v, cap));
    Ok(STRING_BYTES + content.saturating_add(delim.saturating_mul(parts)))
}

fn est_sum_of_lengths(args: &[Value], _cap: u64) -> Result<u64, String> {
    let n: u64 = args
        .iter()
        .map(|a| len_arg(Some(a)))
        .fold(0, u64::saturating_add);
    Ok(n.saturating_mul(ENTRY_BYTES))
}

fn est_union_n(args: &[Value], _cap: u64) -> Result<u64, String> {
    let n = match args.first() {
        Some(Value::Array(objects)) => objects
            .iter()
            .map(|o| len_arg(Some(o)))
            .fold(0, u64::saturating_add),
        _ => 0,
    };
    Ok(n.saturating_mul(ENTRY_BYTES))
}

/// `sprintf` pads each verb to its width (`%999999999d`), and the original
/// parses widths with unchecked arithmetic and `expect` on non-ASCII digits.
fn est_sprintf(args: &[Value], cap: u64) -> Result<u64, String> {
    let fmt = str_arg(args.first());
    let mut widths = 0u64;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            continue;
        }
        let mut width = 0u64;
        while let Some(&d) = chars.peek() {
            if !(d == '.' || d.is_numeric()) {
                break;
            }
            chars.next();
            if d == '.' {
                continue;
            }
            let Some(digit) = d.to_digit(10).filter(|_| d.is_ascii_digit()) else {
                return Err(format!("invalid width digit {d:?} in format string"));
            };
            width = width.saturating_mul(10).saturating_add(u64::from(digit));
            if width > u64::from(u32::MAX) {
                return Err("width in format string is too large".into());
            }
        }
        widths = widths.saturating_add(width);
    }
    let values = args.get(1).map_or(0, |v| deep_size(v, cap));
    Ok(STRING_BYTES
        + (fmt.len() as u64)
            .saturating_add(widths)
            .saturating_add(values.saturating_mul(2)))
}

fn est_serialize(args: &[Value], cap: u64) -> Result<u64, String> {
    Ok(args
        .first()
        .map_or(0, |v| deep_size(v, cap))
        .saturating_mul(2))
}

fn est_serialize_indented(args: &[Value], cap: u64) -> Result<u64, String> {
    let (nodes, depth) = args.first().map_or((0, 0), |v| nodes_and_depth(v, cap));
    let indent = match args.get(1) {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(_, v)| len_arg(Some(v)))
            .fold(0, u64::saturating_add),
        _ => 0,
    };
    let size = args.first().map_or(0, |v| deep_size(v, cap));
    Ok(size.saturating_mul(2).saturating_add(
        nodes
            .saturating_mul(depth.saturating_add(1))
            .saturating_mul(indent + 1),
    ))
}

fn est_encode(args: &[Value], _cap: u64) -> Result<u64, String> {
    Ok(STRING_BYTES + len_arg(args.first()).saturating_mul(3))
}

fn est_split(args: &[Value], _cap: u64) -> Result<u64, String> {
    // At most one part (or match) per byte, plus one.
    let s = len_arg(args.first());
    Ok(s.saturating_add(1)
        .saturating_mul(VALUE_BYTES + STRING_BYTES)
        .saturating_add(s))
}

fn est_lsh(args: &[Value], _cap: u64) -> Result<u64, String> {
    Ok(match int_arg(args.get(1)) {
        Some(shift) if shift > 0 => u64::try_from(shift / 8).unwrap_or(u64::MAX),
        _ => 0,
    })
}

/// Node count and maximum depth of a value, counted until `cap` nodes.
fn nodes_and_depth(value: &Value, cap: u64) -> (u64, u64) {
    let (mut nodes, mut max_depth) = (0u64, 0u64);
    let mut stack = vec![(value, 0u64)];
    while let Some((v, depth)) = stack.pop() {
        nodes += 1;
        max_depth = max_depth.max(depth);
        if nodes >= cap {
            break;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, depth + 1))),
            Value::Set(s) => stack.extend(s.iter().map(|x| (x, depth + 1))),
            Value::Object(o) => stack.extend(o.iter().map(|(_, x)| (x, depth + 1))),
            _ => {}
        }
    }
    (nodes, max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guarded_builtin_exists_and_has_a_guard() {
        assert_eq!(GUARDED.len(), GUARDS.len());
        for (name, _) in GUARDED {
            assert!(
                BUILTINS.contains_key(name),
                "{name} is not a regorus builtin"
            );
        }
    }

    #[test]
    fn estimates_see_the_bombs() {
        let n = |x: f64| Value::from(x);
        let huge = 64u64 << 20;
        assert!(est_range(&[n(0.0), n(1e9)], huge).unwrap() > huge);
        assert!(est_range(&[n(0.0), n(10.0)], huge).unwrap() < 1024);
        assert!(est_range_step(&[n(0.0), n(1e9), n(1.0)], huge).unwrap() > huge);
        assert!(est_range_step(&[n(0.0), n(10.0), n(0.0)], huge).is_err());
        assert!(est_cidr_expand(&[Value::from("::/64")], huge).unwrap() > huge);
        assert!(est_cidr_expand(&[Value::from("10.0.0.0/30")], huge).unwrap() < 1024);
        let s = Value::from("a".repeat(1000));
        let doubled = est_replace(&[s, Value::from("a"), Value::from("aa")], huge).unwrap();
        assert!((2000..2100).contains(&doubled), "{doubled}");
        assert!(
            est_sprintf(&[Value::from("%999999999d"), Value::new_array()], huge).unwrap()
                > 999_999_999
        );
        assert!(est_sprintf(&[Value::from("%\u{0663}d"), Value::new_array()], huge).is_err());
        assert!(est_sprintf(
            &[Value::from("%99999999999999999999d"), Value::new_array()],
            huge
        )
        .is_err());
    }
}
