//! [`verify_log`]: checks a log line by line in bounded memory.
//!
//! Memory is one line (at most [`MAX_RECORD_BYTES`]), a batch of pending
//! signatures, the unsigned records still waiting for a checkpoint, and a
//! compact entry (32 bytes, see [`super::links`]) per decision that is still
//! open or was denied, for linking completions and approvals; never the
//! whole file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::links::{Authorizations, Entry};
use super::parse::{parse_lines, read_parsed, Parsed, ParsedLine, Position, Signer, CHUNK_LINES};
use super::recovery::is_incident;
use super::unsealed::{SealError, Unsealed};
use super::{io_error, MAX_RECORD_BYTES};
use crate::core::error::Result;
use crate::core::keys::Keyring;
use crate::core::receipt::{Receipt, FORMAT_VERSION};

/// Where verification stopped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Something a writer found done to the log and recorded in a signed
/// `recovery` record (a truncation, a rewrite): the chain verifies, but the
/// log is not whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// 1-based line of the recovery record.
    pub line: u64,
    /// The record's `recovered.reason`.
    pub reason: String,
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Complete records read (up to the first failure).
    pub records: u64,
    /// Decision records that allowed.
    pub allowed: u64,
    /// Decision records that denied.
    pub denied: u64,
    /// Completion records.
    pub completions: u64,
    /// Recovery records (torn tails, and what writers found, see `incidents`).
    pub recoveries: u64,
    /// Approval records (answers to decisions that required approval).
    pub approvals: u64,
    /// Signed checkpoint records.
    pub checkpoints: u64,
    /// Signed `state` records (ledger snapshots a gate restores from).
    pub states: u64,
    /// Signed `rotation` records (a file of a rotated log starts).
    pub rotations: u64,
    /// Earliest record time.
    pub first_ts: Option<String>,
    /// Latest record time.
    pub last_ts: Option<String>,
    /// Key ids that signed records.
    pub keys: BTreeSet<String>,
    /// Ids of decisions that let a call run (allowed, or in audit mode) with
    /// no completion record: authorized but never finished. At most
    /// [`UNFINISHED_LISTED`] of them, the earliest; `unfinished_count` has the number.
    pub unfinished: Vec<String>,
    /// How many decisions are authorized but never finished.
    pub unfinished_count: u64,
    /// Recovery records that name tampering (truncation, rewritten records).
    pub incidents: Vec<Incident>,
    /// The first problem, or `None` when every record checks out.
    pub failure: Option<VerifyFailure>,
    /// The digest of the last record (what a later part of a rotated log
    /// continues from, see [`Start::After`]); `None` for an empty log.
    pub head: Option<String>,
}

impl VerifyReport {
    /// Whether every check passed and no writer recorded an incident.
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.incidents.is_empty()
    }
}

/// How many unfinished decision ids a report names (it counts them all).
pub const UNFINISHED_LISTED: usize = 1000;

#[derive(Default)]
struct Verifier {
    report: VerifyReport,
    prev: Option<String>,
    decisions: Authorizations,
    /// Unsigned records waiting for a checkpoint (under a kid index).
    unsealed: Unsealed,
    kids: Vec<String>,
    /// The seq before this verification's first record (a later file of a
    /// rotated log verified alone).
    seq_base: u64,
    /// The digest the first record must continue from (see [`Start`]).
    after: Option<String>,
    /// Fed by [`ChainVerifier`]: each record's label is the seq it is stored
    /// under, and must be its own.
    rows: bool,
    /// The digest the first record must have (a [`ChainVerifier`]'s log id).
    genesis: Option<String>,
}

/// Where the verified chain must start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Start {
    /// At a genesis record (seq 1, no `prev`): the whole log. A later file of
    /// a rotated log given without the files before it fails, naming what
    /// is missing.
    #[default]
    Genesis,
    /// Right after the record with this digest (lowercase hex SHA-256 of its
    /// payload, as `verify` prints for a log's last record): the part of a
    /// rotated log after files verified before. The first record's `prev`
    /// must be this digest.
    After(String),
}

/// Verifies every signature (batched), the hash chain, sequence numbers,
/// checkpoints and completion links of the log at `path`.
pub fn verify_log(path: &Path, keyring: &Keyring) -> Result<VerifyReport> {
    verify_log_with_progress(path, keyring, &Start::Genesis, &mut |_, _| {})
}

/// [`verify_log`] from `start`, calling `progress(bytes_read, total_bytes)`
/// every few MiB and at the end.
pub fn verify_log_with_progress(
    path: &Path,
    keyring: &Keyring,
    start: &Start,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let total = std::fs::metadata(path)
        .map_err(|e| io_error(path, "cannot stat", e))?
        .len();
    let mut v = Verifier::starting(start);
    let mut at = Position::default();
    if v.feed(path, keyring, &mut at, total, progress)? {
        return Ok(v.report);
    }
    progress(at.read, total);
    Ok(v.finish())
}

/// Verifies a rotated log: the files of one chain (see
/// [`super::AuditLog::rotate`]), in any order given; they are put in chain
/// order by the `seq` of their first record and checked as one chain, so a
/// missing, reordered or altered file is a failure. Lines in the report are
/// counted across the set in that order; a failure's reason names the file
/// and its line there. A set whose first file is missing fails unless
/// `start` names the digest it continues from.
pub fn verify_logs_with_progress(
    paths: &[std::path::PathBuf],
    keyring: &Keyring,
    start: &Start,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let mut files = Vec::with_capacity(paths.len());
    let mut total = 0u64;
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| io_error(p, "cannot stat", e))?;
        total += meta.len();
        files.push((first_seq(p)?, p.clone()));
    }
    files.sort();
    let mut v = Verifier::starting(start);
    let mut at = Position::default();
    let mut starts: Vec<(u64, String)> = Vec::new();
    let mut stopped = false;
    for (_, p) in &files {
        starts.push((at.line, p.display().to_string()));
        if v.feed(p, keyring, &mut at, total, progress)? {
            stopped = true;
            break;
        }
    }
    progress(at.read, total);
    let mut report = if stopped { v.report } else { v.finish() };
    let locate = |line: u64| -> String {
        match starts.iter().rev().find(|(s, _)| *s < line) {
            Some((s, name)) => format!("{name} line {}", line - s),
            None => format!("line {line}"),
        }
    };
    if let Some(f) = &mut report.failure {
        f.reason = format!("{}: {}", locate(f.line), f.reason);
    }
    for i in &mut report.incidents {
        i.reason = format!("{}: {}", locate(i.line), i.reason);
    }
    Ok(report)
}

/// Verifies one chain fed as rows in `seq` order (a database table's, say)
/// by the rules [`verify_log`] applies to a file's lines (the same code:
/// parsing, batched signatures, chain, links), plus: each record is stored
/// under its own `seq`, and with a `log_id` the first record must be the one
/// it names (its digest: see [`super::LogReader::log_id`]). Failures name
/// the `seq` a record is stored under as their `line`.
pub struct ChainVerifier {
    verifier: Verifier,
    keyring: Keyring,
    stopped: bool,
}

impl ChainVerifier {
    /// A verifier for one chain signed by keys of `keyring`, from its genesis.
    pub fn new(keyring: Keyring, log_id: Option<String>) -> Self {
        Self {
            verifier: Verifier {
                rows: true,
                genesis: log_id,
                ..Verifier::default()
            },
            keyring,
            stopped: false,
        }
    }

    /// Checks the next rows, `(seq stored under, record without a newline)`,
    /// in order; `false` once verification has stopped at a failure (later
    /// rows are not looked at).
    pub fn push<'a>(&mut self, rows: impl IntoIterator<Item = (u64, &'a [u8])>) -> bool {
        let mut rows = rows.into_iter().peekable();
        while !self.stopped && rows.peek().is_some() {
            let chunk = rows.by_ref().take(CHUNK_LINES);
            self.stopped = self.verifier.apply(parse_lines(chunk, None, &self.keyring));
        }
        !self.stopped
    }

    /// The report, once every row was pushed.
    pub fn finish(self) -> VerifyReport {
        if self.stopped {
            self.verifier.report
        } else {
            self.verifier.finish()
        }
    }
}

/// The `seq` of a file's first record (0 when it has none that parses).
fn first_seq(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| io_error(path, "cannot read", e))?;
    let mut line = Vec::new();
    BufReader::new(file)
        .take(MAX_RECORD_BYTES + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error(path, "cannot read", e))?;
    Ok(std::str::from_utf8(&line)
        .ok()
        .and_then(|t| Receipt::chain_head(t).ok())
        .map_or(0, |(seq, _)| seq))
}

impl Verifier {
    fn starting(start: &Start) -> Self {
        Self {
            after: match start {
                Start::Genesis => None,
                Start::After(digest) => Some(digest.to_ascii_lowercase()),
            },
            ..Self::default()
        }
    }

    /// Where the chain starts, from its first record: at genesis, or after
    /// the digest the caller named (a later part of a rotated log).
    fn start_at(&mut self, receipt: &Receipt) -> std::result::Result<(), String> {
        let prev = receipt.payload().get("prev").and_then(Json::as_str);
        match (&self.after, prev) {
            (None, None) => Ok(()),
            (Some(after), Some(prev)) if after == prev => {
                self.seq_base = receipt.seq().saturating_sub(1);
                self.prev = Some(prev.to_string());
                Ok(())
            }
            (None, Some(prev)) => {
                let from = receipt
                    .payload()
                    .get("rotated")
                    .and_then(|r| r.get("from"))
                    .and_then(Json::as_str);
                let missing = match from {
                    Some(f) => format!("are in files not given (the one just before: {f})"),
                    None => "are missing (deleted, or in files not given)".into(),
                };
                Err(format!(
                    "the log does not start at a genesis record: its first record (seq {}, \
                     kind {}) continues a chain whose records up to seq {} {missing}, ending \
                     with digest {prev}; give the files before it, or --after {prev} to verify \
                     from there",
                    receipt.seq(),
                    receipt.kind(),
                    receipt.seq().saturating_sub(1)
                ))
            }
            (Some(after), prev) => Err(format!(
                "the log's first record does not continue from {after} (its prev is {})",
                prev.unwrap_or("null: it is a genesis record")
            )),
        }
    }

    /// Checks the lines of one file; `Ok(true)` when it stopped at a failure.
    fn feed(
        &mut self,
        path: &Path,
        keyring: &Keyring,
        at: &mut Position,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<bool> {
        let stopped = read_parsed(path, keyring, at, total, progress, &mut |parsed| {
            self.apply(parsed)
        })?;
        if stopped {
            progress(at.read, total);
        }
        Ok(stopped)
    }

    /// Checks a chunk of parsed lines in order; `true` at the first failure:
    /// a line that is not a record or breaks the chain, or a bad signature.
    fn apply(&mut self, parsed: Parsed) -> bool {
        for ParsedLine { line, outcome } in parsed.lines {
            let checked = outcome.and_then(|(receipt, signer)| self.record(line, &receipt, signer));
            let failure = match checked {
                Err(reason) => reason,
                Ok(()) if parsed.bad_signature == Some(line) => "bad signature".into(),
                Ok(()) => continue,
            };
            self.report.failure = Some(VerifyFailure {
                line,
                reason: failure,
            });
            return true;
        }
        if let Some((line, reason)) = parsed.end {
            self.report.failure = Some(VerifyFailure { line, reason });
            return true;
        }
        false
    }

    fn finish(mut self) -> VerifyReport {
        self.report.head.clone_from(&self.prev);
        if let Some(line) = self.unsealed.first_line() {
            self.report.failure = Some(VerifyFailure {
                line,
                reason: "record is covered by no signature: no checkpoint seals it (records \
                         after a writer's last checkpoint, or written without the key)"
                    .into(),
            });
            return self.report;
        }
        // Only the first UNFINISHED_LISTED ids are named (UUIDv7 byte order is
        // time order), so a log of a million `check()` calls does not make a
        // million strings.
        let (count, unfinished) = self.decisions.open(UNFINISHED_LISTED);
        self.report.unfinished_count = count;
        self.report.unfinished = unfinished;
        self.report
    }

    fn kid_index(&mut self, kid: &str) -> usize {
        match self.kids.iter().position(|k| k == kid) {
            Some(i) => i,
            None => {
                self.kids.push(kid.to_string());
                self.kids.len() - 1
            }
        }
    }

    /// Checks one parsed record against the chain so far.
    fn record(
        &mut self,
        line_no: u64,
        receipt: &Receipt,
        signer: Signer,
    ) -> std::result::Result<(), String> {
        if self.rows && receipt.seq() != line_no {
            return Err(format!(
                "the row stored as seq {line_no} holds the record of seq {} (a moved or copied row)",
                receipt.seq()
            ));
        }
        // Rows always start at genesis (seq 1, no prev: `check_record` names
        // what is missing); a file may start after a digest named (`Start`).
        if self.report.records == 0 && !self.rows {
            self.start_at(receipt)?;
        }
        check_record(
            receipt,
            self.seq_base + self.report.records,
            self.prev.as_deref(),
        )?;
        if let (0, Some(genesis)) = (self.report.records, &self.genesis) {
            if receipt.digest() != genesis {
                return Err(format!(
                    "the first record is not the one the log id names (a log id is the digest \
                     of the log's first record): it was replaced, or the rows belong to another \
                     log (digest {})",
                    receipt.digest()
                ));
            }
        }
        let payload = receipt.payload();
        let signer = signer?;
        match &signer {
            None => {
                let payload_kid = payload.get("kid").and_then(Json::as_str).unwrap_or("");
                let kid = self.kid_index(payload_kid);
                self.unsealed.insert(receipt.seq(), line_no, kid);
            }
            Some(kid) => {
                if !self.report.keys.contains(kid) {
                    self.report.keys.insert(kid.clone());
                }
            }
        }
        match receipt.kind() {
            "decision" => {
                let allowed = payload.get("decision").and_then(Json::as_str) == Some("allow");
                if allowed {
                    self.report.allowed += 1;
                } else {
                    self.report.denied += 1;
                }
                if !self
                    .decisions
                    .insert(receipt.id(), receipt.digest(), allowed)
                {
                    return Err(format!("duplicate record id {}", receipt.id()));
                }
            }
            "completion" => {
                let (id, sha) = authorization_link(payload);
                match self.link(id, sha) {
                    // Finished: forgotten, so memory follows the calls still
                    // open, not the length of the log. A second completion
                    // then links to nothing.
                    Some(auth) if auth.is_open() => {
                        self.decisions.remove(id);
                    }
                    Some(_) => {
                        return Err(format!(
                        "second completion for authorization {id}, or completion of a denied call"
                    ))
                    }
                    None => {
                        return Err(format!("completion links to unknown authorization {id:?}"))
                    }
                }
                self.report.completions += 1;
            }
            "approval" => {
                let (id, sha) = authorization_link(payload);
                let approved = payload
                    .get("approval")
                    .and_then(|a| a.get("approved"))
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                match self.link(id, sha) {
                    // A refused (or timed-out) approval means the call never runs.
                    Some(auth) => {
                        if !approved {
                            auth.close();
                        }
                    }
                    None => return Err(format!("approval links to unknown decision {id:?}")),
                }
                self.report.approvals += 1;
            }
            "recovery" => {
                self.report.recoveries += 1;
                let recovered = payload.get("recovered");
                let cause = recovered
                    .and_then(|r| r.get("cause"))
                    .and_then(Json::as_str);
                if is_incident(cause) {
                    let reason = recovered
                        .and_then(|r| r.get("reason"))
                        .and_then(Json::as_str)
                        .unwrap_or("a writer recorded an incident");
                    self.report.incidents.push(Incident {
                        line: line_no,
                        reason: reason.to_string(),
                    });
                }
            }
            "checkpoint" => {
                let Some(kid) = signer else {
                    return Err("unsigned checkpoint".into());
                };
                self.seal(receipt, &kid)?;
                self.report.checkpoints += 1;
            }
            "rotation" => {
                // The first record of a rotated log's next file: it names the
                // previous file's last record, and must be signed.
                if signer.is_none() {
                    return Err("unsigned rotation record".into());
                }
                self.report.rotations += 1;
            }
            "state" => {
                // A ledger snapshot (see `audit::state`): counts nothing, but
                // must be signed, since a gate restores from it.
                if signer.is_none() {
                    return Err("unsigned state record".into());
                }
                self.report.states += 1;
            }
            other => return Err(format!("unknown record kind {other:?}")),
        }
        let ts = payload.get("ts").and_then(Json::as_str);
        if self.report.first_ts.is_none() {
            self.report.first_ts = ts.map(str::to_string);
        }
        set(&mut self.report.last_ts, ts);
        set(&mut self.prev, Some(receipt.digest()));
        self.report.records += 1;
        Ok(())
    }

    /// The decision a completion or approval names, when id and digest match.
    fn link(&mut self, id: &str, sha: &str) -> Option<&mut Entry> {
        self.decisions.link(id, sha)
    }

    /// Marks the unsigned records a checkpoint names as sealed. A checkpoint
    /// may name only unsigned records before it that carry its own key id. A
    /// checkpoint without `sealed` (written before the field existed) seals
    /// every unsigned record before it.
    fn seal(&mut self, receipt: &Receipt, kid: &str) -> std::result::Result<(), String> {
        let Some(sealed) = receipt.payload().get("sealed") else {
            self.unsealed.clear();
            return Ok(());
        };
        let ranges = sealed.as_array().ok_or_else(|| {
            "checkpoint \"sealed\" is not a list of [first, last] seq ranges".to_string()
        })?;
        let kid = self.kid_index(kid);
        for range in ranges {
            let pair = range
                .as_array()
                .and_then(|p| match p.as_slice() {
                    [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                    _ => None,
                })
                .filter(|(a, b)| a <= b)
                .ok_or_else(|| "checkpoint \"sealed\" holds a malformed range".to_string())?;
            match self.unsealed.seal(pair.0, pair.1, kid) {
                Ok(()) => {}
                Err(SealError::NotAllUnsealed) => {
                    return Err(format!(
                        "checkpoint claims to seal seq {}..{}, which are not all unsigned, \
                         unsealed records before it",
                        pair.0, pair.1
                    ))
                }
                Err(SealError::OtherKey(seq)) => {
                    return Err(format!(
                    "checkpoint by key {} claims to seal seq {seq}, written under another key id",
                    self.kids.get(kid).map_or("?", String::as_str)
                ))
                }
            }
        }
        Ok(())
    }
}

/// Sets `slot` to `value`, reusing its buffer (once per record, so no
/// allocation per record).
fn set(slot: &mut Option<String>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(s), Some(v)) => {
            s.clear();
            s.push_str(v);
        }
        (_, v) => *slot = v.map(str::to_string),
    }
}

/// The `{id, sha256}` of the decision a completion or approval names.
fn authorization_link(payload: &Map<String, Json>) -> (&str, &str) {
    let auth = payload.get("authorization");
    let field = |name: &str| {
        auth.and_then(|a| a.get(name))
            .and_then(Json::as_str)
            .unwrap_or("")
    };
    (field("id"), field("sha256"))
}

/// Chain and sequence checks of one record against its predecessor.
fn check_record(
    receipt: &Receipt,
    seen: u64,
    prev: Option<&str>,
) -> std::result::Result<(), String> {
    let payload = receipt.payload();
    if payload.get("v").and_then(Json::as_u64) != Some(FORMAT_VERSION) {
        return Err("unsupported or missing format version \"v\"".into());
    }
    let seq = payload
        .get("seq")
        .and_then(Json::as_u64)
        .ok_or("missing \"seq\"")?;
    let expected = seen + 1;
    if seq < expected {
        return Err(format!(
            "sequence goes back: seq {seq} after {seen} (duplicated or reordered record)"
        ));
    }
    if seq > expected {
        return Err(format!(
            "sequence gap: seq {seq} where {expected} was expected (deleted record)"
        ));
    }
    let claimed = payload.get("prev").and_then(Json::as_str);
    if claimed != prev {
        return Err(format!(
            "chain break: prev is {} but the previous record's digest is {}",
            claimed.unwrap_or("null"),
            prev.unwrap_or("null")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{body, keyring, tempdir};
    use super::*;

    #[test]
    fn arbitrary_bytes_never_verify_and_never_panic() {
        let path = tempdir("verify").join("log");
        let ring = Keyring::new();
        for bytes in [
            &b""[..],
            b"\n",
            b"\xff\xfe\n",
            b"{}\n",
            b"[]\n",
            b"{\"payloadType\":\"application/vnd.execgate.receipt.v1+json\",\"payload\":\"e30=\",\"signatures\":[]}\n",
        ] {
            std::fs::write(&path, bytes).unwrap();
            let r = verify_log(&path, &ring).unwrap();
            if bytes.is_empty() {
                assert!(r.ok() && r.records == 0);
            } else {
                assert!(!r.ok(), "{bytes:?}");
            }
        }
    }

    /// Lines are parsed and batch-verified in chunks: the first failure is
    /// still the first bad line, whichever chunk it is in, and the counts
    /// stop there.
    #[test]
    fn first_failure_across_chunks_is_the_first_bad_line() {
        use crate::core::audit::{AuditLog, AuditOptions, Durability};
        use crate::core::keys::SigningKey;
        let path = tempdir("verify").join("log");
        let key = SigningKey::generate();
        let options = AuditOptions {
            durability: Durability::None,
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, key.clone(), options).unwrap();
        for n in 0..2000 {
            log.append(body(n)).unwrap();
        }
        log.close().unwrap();
        let ring = keyring(&key);
        let whole = std::fs::read(&path).unwrap();
        assert!(verify_log(&path, &ring).unwrap().ok());
        let lines: Vec<&[u8]> = whole.split_inclusive(|b| *b == b'\n').collect();
        // A bad signature on line 1300 (its sig's base64 changed, same length)
        // and a broken record on line 1700: line 1300 is reported.
        let mut bad = lines.iter().map(|l| l.to_vec()).collect::<Vec<_>>();
        let at = bad[1299].len() - 20;
        bad[1299][at] = if bad[1299][at] == b'A' { b'B' } else { b'A' };
        bad[1699] = b"{}\n".to_vec();
        std::fs::write(&path, bad.concat()).unwrap();
        let r = verify_log(&path, &ring).unwrap();
        let f = r.failure.unwrap();
        assert_eq!((f.line, f.reason.as_str()), (1300, "bad signature"));
        assert_eq!(r.records, 1300);
        // Only the broken record: reported at its own line.
        let mut broken = lines.iter().map(|l| l.to_vec()).collect::<Vec<_>>();
        broken[1699] = b"{}\n".to_vec();
        std::fs::write(&path, broken.concat()).unwrap();
        let f = verify_log(&path, &ring).unwrap().failure.unwrap();
        assert_eq!(f.line, 1700, "{}", f.reason);
        // A torn last line after a thousand good ones.
        let mut torn = whole[..whole.len() - 1].to_vec();
        torn.truncate(torn.len() - 5);
        std::fs::write(&path, &torn).unwrap();
        let r = verify_log(&path, &ring).unwrap();
        let f = r.failure.unwrap();
        assert_eq!(f.line, 2000);
        assert!(f.reason.contains("torn tail"), "{}", f.reason);
        assert_eq!(r.records, 1999);
    }

    /// A reader that meets a line being written (the writer holds the log's
    /// exclusive `flock` and has written part of it) waits for the writer and
    /// reads the whole line: a live log is never reported torn.
    #[test]
    fn a_line_being_written_is_waited_for_not_reported_torn() {
        use crate::core::audit::{AuditLog, AuditOptions};
        use crate::core::keys::SigningKey;
        use std::io::Write;
        let path = tempdir("verify").join("log");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        for n in 0..3 {
            log.append(body(n)).unwrap();
        }
        log.close().unwrap();
        let whole = std::fs::read(&path).unwrap();
        let last = whole[..whole.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        std::fs::write(&path, &whole[..last]).unwrap();
        let ring = keyring(&key);
        // A writer holds the lock with half of the last line written.
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writer.lock().unwrap();
        let half = last + (whole.len() - last) / 2;
        writer.write_all(&whole[last..half]).unwrap();
        let reader = {
            let (path, ring) = (path.clone(), ring.clone());
            std::thread::spawn(move || verify_log(&path, &ring).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !reader.is_finished(),
            "the reader did not wait for the writer"
        );
        writer.write_all(&whole[half..]).unwrap();
        writer.unlock().unwrap();
        let r = reader.join().unwrap();
        assert!(r.ok(), "{:?}", r.failure);
        assert_eq!(r.records, 3);
        // With no writer left, a part of a line is a torn tail; and so it is
        // when a holder of the lock never lets go (not waited for forever).
        std::fs::write(&path, &whole[..half]).unwrap();
        let f = verify_log(&path, &ring).unwrap().failure.unwrap();
        assert!(f.reason.contains("torn tail"), "{}", f.reason);
        writer.lock().unwrap();
        let f = verify_log(&path, &ring).unwrap().failure.unwrap();
        assert!(f.reason.contains("torn tail"), "{}", f.reason);
    }
}
