//! The privacy router's detectors and transforms.
//!
//! Detectors are compiled once, each into a pair of dense DFAs (forward for
//! where a match ends, reverse for where it starts: `regex-automata`), so a
//! scan costs a table walk per byte and no per-call set-up. The `regex`
//! crate's own matcher runs on its PikeVM here (its lazy DFA is off for
//! regorus's sake, see Cargo.toml), an order of magnitude slower on text
//! with findings; it remains the matcher for custom patterns no dense DFA
//! can hold (Unicode word boundaries, or a DFA over [`DFA_SIZE_LIMIT`]).
//! Each built-in detector's search starts where a match can first begin
//! (its literal prefix, the first digit, ...) or is skipped when the text
//! cannot hold one, so clean text costs a few byte scans and text with
//! findings little more; validators (Luhn, mod-97, SSN and IPv4 rules) keep false positives low. Transforms rewrite each finding:
//! `mask` keeps a hint, `hash` is a keyed HMAC-SHA-256 pseudonym (stable per
//! key, so joins still work), `drop` removes it, `deny` refuses the call.
//! Reports say which detector fired where, never the original value.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};

use hmac::{Hmac, Mac};
use regex::Regex;
use regex_automata::dfa::{dense, regex::Regex as DfaRegex};
use regex_automata::util::iter::Searcher;
use regex_automata::{Anchored, Input, MatchError};
use serde_json::Value as Json;
use sha2::Sha256;

use super::args::Arg;
use super::error::{CoreError, Result};

/// Checks one match (checksums, ranges); false drops it.
type Validator = fn(&str) -> bool;

/// A detector: a hint, a pattern and an optional validator of each match.
struct Detector {
    name: String,
    hint: Option<Hint>,
    matcher: Matcher,
    validate: Option<Validator>,
}

/// The largest dense DFA (forward or reverse) a detector may compile to; a
/// custom pattern whose DFA would be larger runs on the regex crate.
pub const DFA_SIZE_LIMIT: usize = 8 << 20;

/// Finds a detector's matches: dense DFAs when the pattern compiles to them,
/// else the regex crate.
///
/// The DFAs are built on first use: most are a few kilobytes and build in
/// microseconds, but the card pattern's forward DFA (counted digits with
/// optional separators, searched unanchored) is about 2 MB and takes a few
/// hundred milliseconds, which only processes that meet long digit runs
/// should pay, once.
struct Matcher {
    pattern: String,
    dfa: OnceLock<Option<DfaRegex>>,
    /// Same pattern, same leftmost-first semantics; also the fallback should
    /// a DFA search ever stop (a dense DFA built this way has no quit bytes,
    /// so it does not).
    regex: Regex,
}

impl Matcher {
    fn new(pattern: &str) -> std::result::Result<Self, regex::Error> {
        Ok(Self {
            regex: Regex::new(pattern)?,
            pattern: pattern.to_string(),
            dfa: OnceLock::new(),
        })
    }

    fn dfa(&self) -> Option<&DfaRegex> {
        self.dfa
            .get_or_init(|| {
                let dense = dense::Config::new()
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT));
                DfaRegex::builder().dense(dense).build(&self.pattern).ok()
            })
            .as_ref()
    }

    /// The byte ranges of the leftmost-first, non-overlapping matches in
    /// `text`, as `Regex::find_iter` yields them, into `out`; the caller
    /// knows that none starts before `from` (the DFA search starts there,
    /// with the text before it as look-behind context).
    ///
    /// With a validator, only matches it accepts, and a rejected candidate
    /// hides nothing: the other matches from its start that end inside it
    /// are tried (in order of preference: greedy patterns, longest first),
    /// then the search goes on from the next byte after its start. So every
    /// place where a valid match starts is found unless an accepted one
    /// covers it, and the text the router leaves holds no valid match of
    /// the detector. Each start costs one search plus an anchored search per
    /// shorter end, all bounded by the pattern's longest match, so a text of
    /// nothing but candidates (a megabyte of digits and spaces) still costs
    /// time linear in its length.
    fn find_all(
        &self,
        text: &str,
        from: usize,
        validate: Option<Validator>,
        out: &mut Vec<(usize, usize)>,
    ) {
        out.clear();
        if let Some(dfa) = self.dfa() {
            let found = match validate {
                None => {
                    let input = Input::new(text).span(from.min(text.len())..text.len());
                    let mut searcher = Searcher::new(input);
                    loop {
                        match searcher.try_advance(|input| dfa.try_search(input)) {
                            Ok(Some(m)) => out.push((m.start(), m.end())),
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Some(ok) => valid_matches(text, from, ok, |input| dfa.try_search(input), out),
            };
            if found.is_ok() {
                return;
            }
            out.clear();
        }
        match validate {
            None => out.extend(self.regex.find_iter(text).map(|m| (m.start(), m.end()))),
            // The regex crate has no bounded search in context, so no shorter
            // ends here (only custom patterns, which have no validator, can
            // lack a DFA).
            Some(ok) => {
                let _ = valid_matches(
                    text,
                    0,
                    ok,
                    |input| {
                        Ok(self
                            .regex
                            .find_at(text, input.start())
                            .filter(|m| {
                                m.end() <= input.end()
                                    && (!input.get_anchored().is_anchored()
                                        || m.start() == input.start())
                            })
                            .map(|m| regex_automata::Match::must(0, m.start()..m.end())))
                    },
                    out,
                );
            }
        }
    }

    /// Whether the matches come from dense DFAs.
    #[cfg(test)]
    fn is_dfa(&self) -> bool {
        self.dfa().is_some()
    }
}

/// The matches `ok` accepts, leftmost first and not overlapping, from
/// `from` on (see [`Matcher::find_all`]); `search` finds the preferred match
/// in an input's span.
fn valid_matches(
    text: &str,
    from: usize,
    ok: Validator,
    search: impl Fn(&Input<'_>) -> std::result::Result<Option<regex_automata::Match>, MatchError>,
    out: &mut Vec<(usize, usize)>,
) -> std::result::Result<(), MatchError> {
    let mut at = from.min(text.len());
    while let Some(m) = search(&Input::new(text).span(at..text.len()))? {
        let start = m.start();
        let mut end = m.end();
        let accepted = loop {
            if end > start && text.get(start..end).is_some_and(ok) {
                break true;
            }
            if end == start {
                break false;
            }
            let shorter = Input::new(text)
                .span(start..end - 1)
                .anchored(Anchored::Yes);
            match search(&shorter)? {
                Some(m) if m.end() < end => end = m.end(),
                _ => break false,
            }
        };
        if accepted {
            out.push((start, end));
            at = end;
        } else {
            at = start + 1;
            while !text.is_char_boundary(at) {
                at += 1;
            }
        }
        if at >= text.len() {
            break;
        }
    }
    Ok(())
}

/// Where a detector's search may start in a text: a byte offset before which
/// no match of the detector can begin, or None when the text cannot hold a
/// match at all. Each is derived from what every match of the pattern must
/// contain (a literal prefix, a digit, an `@`, a `:`) and how far before it a
/// match can start, so skipping is exact: the findings are those of a scan
/// from the start. The DFA search starts there with the text before it still
/// seen by `\b`.
type Hint = fn(&str, &mut Scan) -> Option<usize>;

/// What the hints of one text share: where its first ASCII digit is, found
/// once and kept valid across rewrites (see [`Scan::rewritten`]).
struct Scan {
    /// No digit occurs before this offset.
    no_digit_before: usize,
    /// The first digit at or after `no_digit_before` (None: not looked for).
    first_digit: Option<Option<usize>>,
}

impl Scan {
    fn new() -> Self {
        Self {
            no_digit_before: 0,
            first_digit: None,
        }
    }

    fn first_digit(&mut self, text: &str) -> Option<usize> {
        if let Some(found) = self.first_digit {
            return found;
        }
        let from = self.no_digit_before.min(text.len());
        let found = text.as_bytes()[from..]
            .iter()
            .position(u8::is_ascii_digit)
            .map(|i| from + i);
        self.no_digit_before = found.unwrap_or(text.len());
        self.first_digit = Some(found);
        found
    }

    /// The text was rewritten from offset `start` on: what lies before it is
    /// unchanged, so it still holds no digit before `min(known, start)`.
    fn rewritten(&mut self, start: usize) {
        self.no_digit_before = self.no_digit_before.min(start);
        self.first_digit = None;
    }
}

/// `offset - back`, moved back to a character boundary of `text`.
fn before(text: &str, offset: usize, back: usize) -> usize {
    let mut at = offset.saturating_sub(back);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The first occurrence of a literal, with its searcher built once per
/// process (building one per call costs more than searching a short text).
macro_rules! find {
    ($text:expr, $literal:literal) => {{
        static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new($literal));
        FINDER.find($text.as_bytes())
    }};
}

/// A match starts at its first digit, at most `back` bytes before it.
fn from_digit(text: &str, scan: &mut Scan, back: usize) -> Option<usize> {
    scan.first_digit(text).map(|d| before(text, d, back))
}

/// The first case-insensitive `bearer`.
fn find_bearer(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    memchr::memchr2_iter(b'b', b'B', bytes).find(|&i| {
        bytes
            .get(i..i + 6)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"bearer"))
    })
}

/// An email's local part is a run of `[A-Za-z0-9._%+-]` right before its
/// `@`: a match starts within the run before the first `@`, or after it.
fn email_start(text: &str, _: &mut Scan) -> Option<usize> {
    let at = memchr::memchr(b'@', text.as_bytes())?;
    let local = |b: &u8| b.is_ascii_alphanumeric() || b"._%+-".contains(b);
    let run = text.as_bytes()[..at]
        .iter()
        .rev()
        .take_while(|b| local(b))
        .count();
    Some(at - run)
}

/// The built-in detectors, by name, in the order they are tried:
/// (name, pattern, where a search may start, validator).
const BUILTIN: &[(&str, &str, Hint, Option<Validator>)] = &[
    (
        "pem_private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?u:[\s\S])*?-----END [A-Z ]*PRIVATE KEY-----",
        |s, _| find!(s, "PRIVATE KEY-----").and(find!(s, "-----BEGIN ")),
        None,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        |s, _| find!(s, "eyJ"),
        None,
    ),
    (
        "bearer_token",
        r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
        |s, _| find_bearer(s),
        None,
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
        |s, _| match (find!(s, "AKIA"), find!(s, "ASIA")) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        None,
    ),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b",
        |s, _| find!(s, "gh"),
        None,
    ),
    (
        "gitlab_token",
        r"\bglpat-[A-Za-z0-9_-]{20}\b",
        |s, _| find!(s, "glpat-"),
        None,
    ),
    (
        "slack_token",
        r"\bxox[baprs]-[A-Za-z0-9-]{10,}\b",
        |s, _| find!(s, "xox"),
        None,
    ),
    (
        "email",
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        email_start,
        None,
    ),
    (
        "iban",
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        // Two letters, then the first digit.
        |s, scan| from_digit(s, scan, 2),
        Some(iban_valid),
    ),
    (
        "card",
        r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
        |s, scan| from_digit(s, scan, 0),
        Some(luhn_valid),
    ),
    (
        "us_ssn",
        r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
        |s, scan| from_digit(s, scan, 0),
        Some(ssn_valid),
    ),
    (
        "phone",
        r"(?:\+[1-9][0-9]{0,2}[ .-]?)?\(?\b[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b",
        // A `+` or `(` right before the first digit.
        |s, scan| from_digit(s, scan, 1),
        None,
    ),
    (
        "ipv4",
        r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        |s, scan| from_digit(s, scan, 0),
        Some(ipv4_valid),
    ),
    (
        "ipv6",
        r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}\b)?",
        // Every match holds a `:` at most four hex digits in. A match ends
        // at a `::` or a word boundary, never inside a word: what its
        // replacement leaves after it is no new word for another detector.
        |s, _| {
            if !s.contains("::") && s.bytes().filter(|b| *b == b':').count() < 7 {
                return None;
            }
            memchr::memchr(b':', s.as_bytes()).map(|c| before(s, c, 4))
        },
        Some(ipv6_valid),
    ),
];

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Luhn checksum over the digits (13 to 19 of them).
fn luhn_valid(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 {
                    x * 2 - 9
                } else {
                    x * 2
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 check.
fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US SSN rules: no 000, 666 or 9xx area, no 00 group, no 0000 serial.
fn ssn_valid(s: &str) -> bool {
    let d = digits(s);
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn ipv4_valid(s: &str) -> bool {
    s.split('.')
        .all(|o| o.parse::<u8>().is_ok() && !(o.len() > 1 && o.starts_with('0')))
}

fn ipv6_valid(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok() && s.contains(':') && s.len() > 2
}

/// What to do with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Keep a hint (the last four characters, or the domain of an email).
    Mask,
    /// A keyed pseudonym: `<detector:first 16 hex of HMAC-SHA-256>`.
    Hash,
    /// Remove it: `[detector]`.
    Drop,
    /// Refuse the call.
    Deny,
}

impl std::str::FromStr for Transform {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mask" => Ok(Self::Mask),
            "hash" => Ok(Self::Hash),
            "drop" => Ok(Self::Drop),
            "deny" => Ok(Self::Deny),
            other => Err(CoreError::InvalidArgument(format!(
                "transform must be mask, hash, drop or deny, not {other:?}"
            ))),
        }
    }
}

/// One kind of finding at one place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Where: `args.body`, `output[2].text`, ...
    pub path: String,
    /// Which detector.
    pub detector: String,
    /// How many matches.
    pub count: usize,
}

/// Compiled detectors.
struct Compiled {
    detectors: Vec<Detector>,
}

/// Compiled detectors and the pseudonym key.
pub struct Redactor {
    compiled: Arc<Compiled>,
    key: Vec<u8>,
}

#[allow(
    clippy::expect_used,
    reason = "constant patterns, compiled by the tests"
)]
fn builtin_detectors() -> Vec<Detector> {
    BUILTIN
        .iter()
        .map(|(name, pattern, hint, validate)| Detector {
            name: (*name).to_string(),
            hint: Some(*hint),
            // ASCII word boundaries and classes: the detectors look for ASCII
            // tokens, and Unicode-aware \b is far slower without a DFA.
            matcher: Matcher::new(&format!("(?-u){pattern}")).expect("built-in patterns are valid"),
            validate: *validate,
        })
        .collect()
}

impl Redactor {
    /// The built-in detectors plus `custom` (name -> regex), keyed for `hash`.
    /// The built-in set is compiled once per process.
    pub fn new(custom: &BTreeMap<String, String>, key: &[u8]) -> Result<Self> {
        static BUILTIN_ONLY: OnceLock<Arc<Compiled>> = OnceLock::new();
        if custom.is_empty() {
            let compiled = BUILTIN_ONLY
                .get_or_init(|| {
                    Arc::new(Compiled {
                        detectors: builtin_detectors(),
                    })
                })
                .clone();
            return Ok(Self {
                compiled,
                key: key.to_vec(),
            });
        }
        let mut detectors = builtin_detectors();
        for (name, pattern) in custom {
            let matcher = Matcher::new(pattern).map_err(|e| {
                CoreError::InvalidArgument(format!(
                    "custom detector {name:?} is not a valid regex: {e}"
                ))
            })?;
            detectors.push(Detector {
                name: name.clone(),
                hint: None,
                matcher,
                validate: None,
            });
        }
        Ok(Self {
            compiled: Arc::new(Compiled { detectors }),
            key: key.to_vec(),
        })
    }

    /// `text` with every finding replaced by its keyed pseudonym: how receipts
    /// record caller data, so the ledger keys sessions and limits the same way
    /// and can be rebuilt from the log.
    pub fn pseudonym(&self, text: &str) -> String {
        self.redact_str(text, None, Transform::Hash, "", &mut Vec::new())
    }

    /// The detector names, built-in then custom.
    pub fn names(&self) -> Vec<&str> {
        self.compiled
            .detectors
            .iter()
            .map(|d| d.name.as_str())
            .collect()
    }

    /// Rewrites every string in `value` (recursively, object keys included),
    /// returning the new value and what was found. `only` limits the
    /// detectors (None: all). With `Transform::Deny`, any finding is an error
    /// naming the detector and path.
    pub fn redact(
        &self,
        value: &Json,
        only: Option<&[String]>,
        transform: Transform,
        path: &str,
    ) -> Result<(Json, Vec<Finding>)> {
        self.redact_json(value.clone(), only, transform, path)
    }

    /// [`Redactor::redact`] taking the value by ownership: strings are
    /// rewritten in place, so a value without findings is returned as it
    /// came (how receipts pass their principal, context and obligations).
    pub fn redact_json(
        &self,
        mut value: Json,
        only: Option<&[String]>,
        transform: Transform,
        path: &str,
    ) -> Result<(Json, Vec<Finding>)> {
        let mut findings = Vec::new();
        self.walk_json(
            &mut value,
            only,
            transform,
            &mut path.to_string(),
            &mut findings,
        );
        if transform == Transform::Deny {
            if let Some(f) = findings.first() {
                return Err(CoreError::InvalidArgument(format!(
                    "{} found in {}: the call is refused",
                    f.detector, f.path
                )));
            }
        }
        Ok((value, findings))
    }

    /// Rewrites `value` in place, in the order (and with the paths) the
    /// argument walk uses: an object's entries in key order, each key before
    /// its value; a renamed key that collides keeps the later entry.
    fn walk_json(
        &self,
        value: &mut Json,
        only: Option<&[String]>,
        transform: Transform,
        path: &mut String,
        findings: &mut Vec<Finding>,
    ) {
        match value {
            Json::String(s) => {
                if let Some(out) = self.rewrite(s, only, transform, Where::At(path), findings) {
                    *s = out;
                }
            }
            Json::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.walk_json(item, only, transform, path, findings);
                    path.truncate(len);
                }
            }
            Json::Object(map) => {
                let mut renamed: Vec<(String, String)> = Vec::new();
                for (k, v) in map.iter_mut() {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if let Some(key) = self.rewrite(k, only, transform, Where::Key(path), findings)
                    {
                        renamed.push((k.clone(), key));
                    }
                    self.walk_json(v, only, transform, path, findings);
                    path.truncate(len);
                }
                if !renamed.is_empty() {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        let key = match renamed.iter().position(|(from, _)| *from == k) {
                            Some(i) => renamed.swap_remove(i).1,
                            None => k,
                        };
                        map.insert(key, v);
                    }
                }
            }
            Json::Null | Json::Bool(_) | Json::Number(_) => {}
        }
    }

    /// [`Redactor::redact`] over a call's argument tree: strings and keys are
    /// rewritten; binary data is read as UTF-8 text and rewritten when it is
    /// text. A finding the router cannot rewrite (in binary data that is not
    /// UTF-8, or in a value handed to the tool as it is) is an error, as is
    /// any finding with `Transform::Deny`: a redaction that cannot be done
    /// refuses the call.
    pub fn redact_arg(
        &self,
        value: &Arg,
        only: Option<&[String]>,
        transform: Transform,
        path: &str,
    ) -> Result<(Arg, Vec<Finding>)> {
        let mut walk = Walk {
            redactor: self,
            only,
            transform,
            findings: Vec::new(),
            unrewritable: None,
        };
        let out = walk.arg(value, &mut path.to_string(), true);
        let refuse = |f: &Finding, why: &str| {
            Err(CoreError::InvalidArgument(format!(
                "{} found in {}{why}: the call is refused",
                f.detector, f.path
            )))
        };
        if let Some(f) = &walk.unrewritable {
            return refuse(f, ", which the gate cannot rewrite");
        }
        if transform == Transform::Deny {
            if let Some(f) = walk.findings.first() {
                return refuse(f, "");
            }
        }
        Ok((out, walk.findings))
    }

    fn redact_str(
        &self,
        text: &str,
        only: Option<&[String]>,
        transform: Transform,
        path: &str,
        findings: &mut Vec<Finding>,
    ) -> String {
        self.rewrite(text, only, transform, Where::At(path), findings)
            .unwrap_or_else(|| text.to_string())
    }

    /// `text` with every finding transformed, or None when nothing was found
    /// (so the caller keeps what it has).
    fn rewrite(
        &self,
        text: &str,
        only: Option<&[String]>,
        transform: Transform,
        at: Where<'_>,
        findings: &mut Vec<Finding>,
    ) -> Option<String> {
        let mut current: Option<String> = None;
        let mut spans = Vec::new();
        let mut scan = Scan::new();
        for detector in &self.compiled.detectors {
            let now = current.as_deref().unwrap_or(text);
            if only.is_some_and(|names| !names.iter().any(|n| n == &detector.name)) {
                continue;
            }
            let from = match detector.hint {
                Some(start) => match start(now, &mut scan) {
                    Some(from) => from,
                    None => continue,
                },
                None => 0,
            };
            detector
                .matcher
                .find_all(now, from, detector.validate, &mut spans);
            if spans.is_empty() {
                continue;
            }
            let mut out = String::with_capacity(now.len() + 16);
            let (mut last, mut count, mut first) = (0, 0, now.len());
            for &(start, end) in &spans {
                let (Some(gap), Some(found)) = (now.get(last..start), now.get(start..end)) else {
                    continue;
                };
                out.push_str(gap);
                out.push_str(&self.transform(&detector.name, found, transform));
                first = first.min(start);
                last = end;
                count += 1;
            }
            if count > 0 {
                out.push_str(now.get(last..).unwrap_or_default());
                scan.rewritten(first);
                findings.push(Finding {
                    path: at.path(),
                    detector: detector.name.clone(),
                    count,
                });
                current = Some(out);
            }
        }
        current
    }

    fn transform(&self, detector: &str, found: &str, transform: Transform) -> String {
        match transform {
            Transform::Mask => match (detector, found.rsplit_once('@')) {
                ("email", Some((_, domain))) => format!("***@{domain}"),
                _ => {
                    let tail: String = found
                        .chars()
                        .rev()
                        .take(4)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    if found.chars().count() > 8 {
                        format!("[{detector}:…{tail}]")
                    } else {
                        format!("[{detector}]")
                    }
                }
            },
            Transform::Hash => match Hmac::<Sha256>::new_from_slice(&self.key) {
                Ok(mut mac) => {
                    mac.update(found.as_bytes());
                    let tag = hex::encode(mac.finalize().into_bytes());
                    format!("<{detector}:{}>", &tag[..16])
                }
                // HMAC takes keys of any length; were it ever to refuse, the
                // finding is dropped rather than kept.
                Err(_) => format!("[{detector}]"),
            },
            Transform::Drop | Transform::Deny => format!("[{detector}]"),
        }
    }
}

/// Where a string is, for a finding's path: a value at a path, or the key
/// that ends the path (reported as `path (key)`).
#[derive(Clone, Copy)]
enum Where<'a> {
    At(&'a str),
    Key(&'a str),
}

impl Where<'_> {
    fn path(self) -> String {
        match self {
            Self::At(path) => path.to_string(),
            Self::Key(path) => format!("{path} (key)"),
        }
    }
}

/// One pass of the router over an argument tree.
struct Walk<'a> {
    redactor: &'a Redactor,
    only: Option<&'a [String]>,
    transform: Transform,
    findings: Vec<Finding>,
    /// The first finding in a place that cannot be rewritten.
    unrewritable: Option<Finding>,
}

impl Walk<'_> {
    fn text(&mut self, text: &str, path: &str, rewritable: bool) -> String {
        let before = self.findings.len();
        let out =
            self.redactor
                .redact_str(text, self.only, self.transform, path, &mut self.findings);
        if !rewritable && self.findings.len() > before && self.unrewritable.is_none() {
            self.unrewritable = self.findings.get(before).cloned();
        }
        out
    }

    fn arg(&mut self, value: &Arg, path: &mut String, rewritable: bool) -> Arg {
        match value {
            Arg::Str(s) => Arg::Str(self.text(s, path, rewritable).into()),
            Arg::Bytes { data, mutable } => match std::str::from_utf8(data) {
                Ok(text) => Arg::Bytes {
                    data: self.text(text, path, rewritable).into_bytes(),
                    mutable: *mutable,
                },
                Err(_) => {
                    self.text(&String::from_utf8_lossy(data), path, false);
                    value.clone()
                }
            },
            Arg::List { items, tuple } => Arg::List {
                items: items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        let out = self.arg(v, path, rewritable);
                        path.truncate(len);
                        out
                    })
                    .collect(),
                tuple: *tuple,
            },
            Arg::Map(entries) => Arg::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let len = path.len();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(k);
                        let key = self.text(k, &format!("{path} (key)"), rewritable);
                        let out = self.arg(v, path, rewritable);
                        path.truncate(len);
                        (key.into(), out)
                    })
                    .collect(),
            ),
            Arg::Opaque { view, .. } => {
                self.arg(view, path, false);
                value.clone()
            }
            Arg::Null | Arg::Bool(_) | Arg::Int(_) | Arg::UInt(_) | Arg::Float(_) => value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new(&BTreeMap::new(), b"k").unwrap()
    }

    fn found(text: &str) -> Vec<String> {
        let (_, f) = redactor()
            .redact(&json!(text), None, Transform::Mask, "v")
            .unwrap();
        f.into_iter().map(|f| f.detector).collect()
    }

    /// Every built-in detector runs on dense DFAs, and they find exactly the
    /// matches the regex crate finds, on text built from the pieces the
    /// detectors look for (digits, separators, words, tokens); the hints
    /// change no finding, and dropping what the router finds leaves nothing
    /// to find.
    #[test]
    fn dfas_find_what_the_regex_crate_finds() {
        let r = redactor();
        for d in &r.compiled.detectors {
            assert!(d.matcher.is_dfa(), "{} has no DFA", d.name);
        }
        let pieces = [
            "4111",
            " ",
            "-",
            "1111",
            "123",
            "45",
            "6789",
            ".",
            "@",
            "example.com",
            "alice",
            "AKIA",
            "IOSFODNN7EXAMPLE",
            "GB82",
            "WEST",
            "ghp_",
            "glpat-",
            "xoxb-",
            "Bearer ",
            "eyJ",
            "abcdefghij",
            "_",
            "::",
            "fe80",
            ":",
            "(",
            ")",
            "+1",
            "é",
            "\n",
            "0",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
            "10",
            "255",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let unhinted = Redactor {
            compiled: Arc::new(Compiled {
                detectors: builtin_detectors()
                    .into_iter()
                    .map(|d| Detector { hint: None, ..d })
                    .collect(),
            }),
            key: r.key.clone(),
        };
        let mut spans = Vec::new();
        let mut with_findings = 0;
        for _ in 0..3000 {
            let n = (next() % 40) as usize;
            let text: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            for d in &r.compiled.detectors {
                d.matcher.find_all(&text, 0, None, &mut spans);
                let expected: Vec<(usize, usize)> = d
                    .matcher
                    .regex
                    .find_iter(&text)
                    .map(|m| (m.start(), m.end()))
                    .collect();
                assert_eq!(spans, expected, "{} on {text:?}", d.name);
            }
            // Where the hints start the searches (or skip them) does not
            // change the findings: the same as every search run from the
            // start of the text.
            for transform in [Transform::Mask, Transform::Hash, Transform::Drop] {
                let mut findings = Vec::new();
                let out = r.redact_str(&text, None, transform, "v", &mut findings);
                let mut expected_findings = Vec::new();
                let expected =
                    unhinted.redact_str(&text, None, transform, "v", &mut expected_findings);
                assert_eq!(
                    (&out, &findings),
                    (&expected, &expected_findings),
                    "{text:?}"
                );
                with_findings += usize::from(!findings.is_empty());
                if transform != Transform::Drop {
                    continue;
                }
                // What the router leaves holds nothing it would find: a
                // second pass finds nothing, and no match the regex crate
                // finds from any start passes its detector's validator.
                let mut again = Vec::new();
                assert_eq!(r.redact_str(&out, None, transform, "v", &mut again), out);
                assert!(again.is_empty(), "{text:?} -> {out:?}: {again:?}");
                for d in &r.compiled.detectors {
                    let Some(ok) = d.validate else { continue };
                    for at in (0..out.len()).filter(|&i| out.is_char_boundary(i)) {
                        if let Some(m) = d.matcher.regex.find_at(&out, at) {
                            assert!(!ok(m.as_str()), "{} {:?} left in {out:?}", d.name, m);
                        }
                    }
                }
            }
        }
        assert!(
            with_findings > 1000,
            "only {with_findings} texts had findings"
        );
    }

    /// A custom pattern a dense DFA cannot hold (a Unicode word boundary)
    /// still works, on the regex crate.
    #[test]
    fn custom_patterns_without_a_dfa_fall_back() {
        let custom = BTreeMap::from([("ticket".to_string(), r"\bTCK-[0-9]+\b".to_string())]);
        let r = Redactor::new(&custom, b"k").unwrap();
        let ticket = r.compiled.detectors.last().unwrap();
        assert!(!ticket.matcher.is_dfa());
        let (out, f) = r
            .redact(&json!("see TCK-42 now"), None, Transform::Drop, "v")
            .unwrap();
        assert_eq!(out, json!("see [ticket] now"));
        assert_eq!(f[0].detector, "ticket");
    }

    fn dropped(text: &str) -> String {
        let (out, _) = redactor()
            .redact(&json!(text), None, Transform::Drop, "v")
            .unwrap();
        out.as_str().unwrap().to_string()
    }

    /// A candidate its validator rejects hides no valid match that starts
    /// inside it or ends before it (issue 13's fuzz crash: a rejected card
    /// candidate spanning a phone number and a card).
    #[test]
    fn a_rejected_candidate_hides_no_valid_match() {
        let crash = "\"B1 0555 1111 4111011111/111 111 1115 11111 1111 11111 111 1115 \
                     11111 1111 11111111112704";
        let once = dropped(crash);
        assert!(once.ends_with(" [card]"), "{once}");
        assert_eq!(dropped(&once), once);
        let card = "4111 1111 1111 1111";
        for prefix in ["9 ", "9 9 ", "5 9 9 ", "12 ", "123 "] {
            let text = format!("{prefix}{card}");
            assert!(!luhn_valid(&text), "{text}");
            assert_eq!(dropped(&text), format!("{prefix}[card]"));
        }
        for suffix in [" 5", " 12", "-9-9"] {
            let text = format!("{card}{suffix}");
            assert!(!luhn_valid(&text), "{text}");
            assert_eq!(dropped(&text), format!("[card]{suffix}"));
        }
        let iban = "GB82 WEST 1234 5698 7654 32";
        for prefix in ["XX00 ", "XX00 ABCD "] {
            let text = format!("{prefix}{iban}");
            assert!(!iban_valid(&text), "{text}");
            assert_eq!(dropped(&text), format!("{prefix}[iban]"));
        }
        assert!(!iban_valid("BE68 5390 0754 7034 1234"));
        assert_eq!(dropped("BE68 5390 0754 7034 1234"), "[iban] 1234");
        // A card that a later detector's rewrite would have exposed.
        assert_eq!(
            dropped("4111 1111 1111 1111 555 123 4567"),
            "[card] [phone]"
        );
        // An IPv6 match does not end inside a word: the phone number that
        // follows it is not hidden until a second pass.
        assert_eq!(dropped("fe80::1234567-890-1234"), "[ipv6]1234567-890-1234");
        assert_eq!(dropped("fe80::1234 567-890-1234"), "[ipv6] [phone]");
    }

    proptest::proptest! {
        /// Dropping is idempotent on text of digits, separators and letters.
        #[test]
        fn dropping_twice_is_dropping_once(
            chars in proptest::collection::vec(
                proptest::sample::select(b"0123456789 -- aZ:.".to_vec()), 0..80)
        ) {
            let text: String = chars.into_iter().map(char::from).collect();
            let once = dropped(&text);
            proptest::prop_assert_eq!(dropped(&once), once, "{:?}", text);
        }
    }

    #[test]
    fn validators_keep_near_misses_out() {
        assert_eq!(found("card 4111 1111 1111 1111 here"), vec!["card"]);
        assert!(found("order 4111 1111 1111 1112").is_empty()); // fails Luhn
        assert_eq!(found("GB82 WEST 1234 5698 7654 32"), vec!["iban"]);
        assert!(found("GB82 WEST 1234 5698 7654 33").is_empty()); // fails mod-97
        assert_eq!(found("ssn 123-45-6789"), vec!["us_ssn"]);
        assert!(found("ssn 000-45-6789 or 666-12-3456").is_empty());
        assert_eq!(found("host 10.0.0.255"), vec!["ipv4"]);
        assert!(found("version 1.2.3.400").is_empty());
    }
}
