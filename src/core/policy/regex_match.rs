//! `regex.match` without per-call set-up: the hot path of many agent policies.
//!
//! regorus's `regex.match` takes the compiled pattern from its LRU cache as a
//! *clone*, and a clone of a `regex::Regex` starts with empty match caches, so
//! every call builds the PikeVM's caches again; and since the regex crate's
//! lazy DFA is off in this build (Cargo.toml, regorus's "glob"), every search
//! runs on the PikeVM. On the example policy (eight patterns over each shell
//! command) that was a third of a `gate.check`.
//!
//! This builtin, put in the compiled program in place of regorus's, keeps each
//! pattern compiled once and shared, so the regex crate's own cache pool
//! survives between calls. Once a pattern has been matched [`HOT`] times it
//! also gets a dense forward DFA (built once, size-capped) that answers "is
//! there a match" in one pass over the text; where that DFA cannot decide (a
//! Unicode word boundary beside non-ASCII text makes it stop) or could not be
//! built within its caps, the shared `Regex` answers. Both are built from the
//! same pattern with the regex crate's default syntax, so they agree on every
//! text (property test below).
//!
//! Anything else goes to regorus's own builtin, so its errors stay exactly
//! regorus's: arguments that are not two strings, and patterns that do not
//! compile (with its size limit, [`NFA_SIZE_LIMIT`]). The reference
//! interpreter (`evaluate_interpreted`, the differential test) keeps regorus's
//! builtin.
//!
//! Memory: at most [`CAPACITY`] patterns (an arbitrary one is dropped to make
//! room), each DFA at most [`DFA_SIZE_LIMIT`] bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use parking_lot::Mutex;
use regex::{Regex, RegexBuilder};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::Input;
use regorus::rvm::Program;
use regorus::unstable::{Expr, Ref, Span};
use regorus::Value;

use super::bounds::{regorus_builtin, replace_builtins, BuiltinFn};

const NAME: &str = "regex.match";
/// Patterns kept compiled (regorus's own cache keeps 256 too).
const CAPACITY: usize = 256;
/// The compiled-NFA size limit regorus's `regex.match` applies.
const NFA_SIZE_LIMIT: usize = 100 * 1024;
/// Matches before a pattern gets its DFA: a pattern used once or twice (one
/// built from a tool call's arguments) never pays for the build.
const HOT: u32 = 16;
/// Cap on one pattern's DFA, and on the work of building it.
const DFA_SIZE_LIMIT: usize = 64 * 1024;

/// One compiled pattern.
struct Compiled {
    pattern: Box<str>,
    regex: Regex,
    uses: AtomicU32,
    /// Set once the pattern is hot: `None` when its DFA would pass the caps.
    dfa: OnceLock<Option<dense::DFA<Vec<u32>>>>,
}

impl Compiled {
    fn new(pattern: &str) -> Option<Self> {
        let regex = RegexBuilder::new(pattern)
            .size_limit(NFA_SIZE_LIMIT)
            .build()
            .ok()?;
        Some(Self {
            pattern: pattern.into(),
            regex,
            uses: AtomicU32::new(0),
            dfa: OnceLock::new(),
        })
    }

    fn dfa(&self) -> Option<&dense::DFA<Vec<u32>>> {
        if let Some(built) = self.dfa.get() {
            return built.as_ref();
        }
        if self.uses.fetch_add(1, Ordering::Relaxed) < HOT {
            return None;
        }
        self.dfa
            .get_or_init(|| {
                let config = dense::Config::new()
                    .start_kind(StartKind::Unanchored)
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT));
                dense::Builder::new()
                    .configure(config)
                    .build(&self.pattern)
                    .ok()
            })
            .as_ref()
    }

    fn is_match(&self, text: &str) -> bool {
        if let Some(dfa) = self.dfa() {
            if let Ok(found) = dfa.try_search_fwd(&Input::new(text).earliest(true)) {
                return found.is_some();
            }
        }
        self.regex.is_match(text)
    }
}

static PATTERNS: LazyLock<Mutex<HashMap<Box<str>, Arc<Compiled>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The pattern compiled, from the cache or now; None if it does not compile.
fn compiled(pattern: &str) -> Option<Arc<Compiled>> {
    if let Some(hit) = PATTERNS.lock().get(pattern) {
        return Some(hit.clone());
    }
    let fresh = Arc::new(Compiled::new(pattern)?);
    let mut patterns = PATTERNS.lock();
    if patterns.len() >= CAPACITY {
        if let Some(victim) = patterns.keys().next().cloned() {
            patterns.remove(&victim);
        }
    }
    Some(
        patterns
            .entry(fresh.pattern.clone())
            .or_insert(fresh)
            .clone(),
    )
}

fn regex_match(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> anyhow::Result<Value> {
    if let [Value::String(pattern), Value::String(text)] = args {
        if let Some(re) = compiled(pattern) {
            return Ok(Value::Bool(re.is_match(text)));
        }
    }
    regorus_builtin(NAME)?(span, params, args, strict)
}

/// Puts this `regex.match` in the compiled program in place of regorus's.
pub(super) fn install(program: &mut Program) {
    replace_builtins(program, |name| {
        (name == NAME).then_some(regex_match as BuiltinFn)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hot(pattern: &str) -> Compiled {
        let c = Compiled::new(pattern).unwrap_or_else(|| panic!("{pattern} compiles"));
        c.uses.store(HOT, Ordering::Relaxed);
        c
    }

    #[test]
    fn a_hot_pattern_gets_a_dfa_and_a_cold_one_does_not() {
        let c = Compiled::new(r"\bdd\s+if=").expect("compiles");
        for _ in 0..HOT {
            assert!(c.is_match("sudo dd if=/dev/zero"));
            assert!(c.dfa.get().is_none());
        }
        assert!(c.is_match("sudo dd if=/dev/zero"));
        assert!(c.dfa.get().is_some_and(Option::is_some));
        assert!(!c.is_match("add if=x"));
    }

    #[test]
    fn a_pattern_past_the_dfa_cap_is_matched_by_the_regex() {
        // 2^15 states: the classic exponential DFA, with a small NFA.
        let c = hot("[ab]*a[ab]{14}");
        assert!(c.is_match(&("xa".to_string() + &"b".repeat(14))));
        assert!(
            c.dfa.get().is_some_and(Option::is_none),
            "no DFA within the cap"
        );
        assert!(!c.is_match(&"b".repeat(30)));
    }

    #[test]
    fn unicode_word_boundaries_beside_non_ascii_text_fall_back_to_the_regex() {
        let c = hot(r"\brm\b");
        assert!(c.is_match("rm -rf"));
        assert!(c.dfa.get().is_some_and(Option::is_some));
        // "é" is a word character: no boundary between it and "rm".
        assert!(!c.is_match("érm -rf"));
        assert!(c.is_match("ü rm"));
    }

    #[test]
    fn the_cache_is_bounded() {
        for i in 0..CAPACITY + 20 {
            assert!(compiled(&format!("bounded-{i}")).is_some());
        }
        assert!(PATTERNS.lock().len() <= CAPACITY);
        assert!(compiled("(").is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_dfa_agrees_with_the_regex(
            pattern in r"(\\b|\\B|\\w|\\s|\\d|[a-cé ]|\.|\^|\$|\||\(|\)|\*|\+|\?){1,8}",
            text in r"[a-cé ü1\n]{0,12}",
        ) {
            if let Some(c) = Compiled::new(&pattern) {
                let expected = c.regex.is_match(&text);
                c.uses.store(HOT, Ordering::Relaxed);
                prop_assert_eq!(c.is_match(&text), expected, "{:?} on {:?}", pattern, text);
            }
        }
    }
}
