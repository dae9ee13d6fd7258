//! [`verify_log`]: checks a log line by line in bounded memory.
//!
//! Memory is one line (at most [`MAX_RECORD_BYTES`]), a batch of pending
//! signatures, the unsigned records still waiting for a checkpoint, and a
//! compact entry (about 50 bytes) per decision that is still open or was
//! denied, for linking completions and approvals; never the whole file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::recovery::is_incident;
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
}

impl VerifyReport {
    /// Whether every check passed and no writer recorded an incident.
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.incidents.is_empty()
    }
}

/// A signature waiting for batch verification.
struct PendingSig {
    line: u64,
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
    key: ed25519_dalek::VerifyingKey,
}

const BATCH: usize = 256;
/// How many unfinished decision ids a report names (it counts them all).
pub const UNFINISHED_LISTED: usize = 1000;
/// How often (in bytes read) the progress callback is called.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;

/// A decision, as later completions and approvals need it.
struct Authorization {
    digest: [u8; 32],
    open: bool,
}

/// A compact, fixed-size key for a record id: the UUID's bytes for the ids
/// execgate writes (so they can be printed again), a hash for anything else.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum IdKey {
    Uuid([u8; 16]),
    Hashed([u8; 16]),
}

fn id_key(id: &str) -> IdKey {
    if let Ok(u) = uuid::Uuid::try_parse(id) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        if u.hyphenated().encode_lower(&mut buf) == id {
            return IdKey::Uuid(*u.as_bytes());
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    IdKey::Hashed(out)
}

fn digest_bytes(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

#[derive(Default)]
struct Verifier {
    report: VerifyReport,
    pending: Vec<PendingSig>,
    prev: Option<String>,
    decisions: HashMap<IdKey, Authorization>,
    /// Ids of decisions that are not UUIDs, to report them by name.
    other_ids: HashMap<IdKey, String>,
    /// Unsigned records waiting for a checkpoint: seq -> (line, kid index).
    unsealed: BTreeMap<u64, (u64, usize)>,
    kids: Vec<String>,
    /// The seq before this verification's first record (a later file of a
    /// rotated log verified alone).
    seq_base: u64,
    /// Fed by [`ChainVerifier`]: each record's label is the seq it is stored
    /// under, and must be its own.
    rows: bool,
    /// The digest the first record must have (a [`ChainVerifier`]'s log id).
    genesis: Option<String>,
}

/// Verifies every signature (batched), the hash chain, sequence numbers,
/// checkpoints and completion links of the log at `path`.
pub fn verify_log(path: &Path, keyring: &Keyring) -> Result<VerifyReport> {
    verify_log_with_progress(path, keyring, &mut |_, _| {})
}

/// [`verify_log`], calling `progress(bytes_read, total_bytes)` every few MiB
/// and at the end.
pub fn verify_log_with_progress(
    path: &Path,
    keyring: &Keyring,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let total = std::fs::metadata(path)
        .map_err(|e| io_error(path, "cannot stat", e))?
        .len();
    let mut v = Verifier::default();
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
/// and its line there.
pub fn verify_logs_with_progress(
    paths: &[std::path::PathBuf],
    keyring: &Keyring,
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
    let mut v = Verifier::default();
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

/// Verifies one chain fed record by record in `seq` order (the rows of a
/// database table, say), with the checks [`verify_log`] makes, plus: each
/// record is stored under its own `seq`, and with a `log_id` the first record
/// must be the one it names (its digest: see [`super::LogReader::log_id`]).
/// Failures name the `seq` a record is stored under as their `line`.
pub struct ChainVerifier {
    verifier: Verifier,
    keyring: Keyring,
    stopped: bool,
}

impl ChainVerifier {
    /// A verifier for one chain signed by keys of `keyring`.
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

    /// Checks the record stored under `seq` (its bytes, without a newline);
    /// `false` once verification has stopped at a failure (later records are
    /// not looked at).
    pub fn push(&mut self, seq: u64, record: &[u8]) -> bool {
        if !self.stopped {
            self.stopped = self.verifier.check_record(seq, record, &self.keyring);
        }
        !self.stopped
    }

    /// The report, once every record was pushed.
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

/// Where a (possibly multi-file) verification is.
#[derive(Default)]
struct Position {
    line: u64,
    read: u64,
    reported: u64,
}

impl Verifier {
    /// Checks the lines of one file; `Ok(true)` when it stopped at a failure.
    fn feed(
        &mut self,
        path: &Path,
        keyring: &Keyring,
        at: &mut Position,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<bool> {
        let file = File::open(path).map_err(|e| io_error(path, "cannot read", e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_RECORD_BYTES + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| io_error(path, "cannot read", e))?;
            if n == 0 {
                return Ok(false);
            }
            at.read += n as u64;
            at.line += 1;
            let line_no = at.line;
            if at.read - at.reported >= PROGRESS_EVERY {
                progress(at.read, total);
                at.reported = at.read;
            }
            if self.check_line(line_no, &line, keyring) {
                progress(at.read, total);
                return Ok(true);
            }
        }
    }

    /// Checks one line as read (with its newline when complete); `true` when
    /// verification stopped at a failure.
    fn check_line(&mut self, line_no: u64, line: &[u8], keyring: &Keyring) -> bool {
        match line.strip_suffix(b"\n") {
            Some(raw) => self.check_record(line_no, raw, keyring),
            None if line.len() as u64 > MAX_RECORD_BYTES => {
                self.fail(
                    line_no,
                    format!("line is longer than a record may be ({MAX_RECORD_BYTES} bytes)"),
                );
                true
            }
            None => {
                self.fail(line_no, "torn tail: the last line is incomplete".into());
                true
            }
        }
    }

    /// Checks one record (a line without its newline); `true` when
    /// verification stopped at a failure.
    fn check_record(&mut self, line_no: u64, raw: &[u8], keyring: &Keyring) -> bool {
        if let Err(reason) = self.record(line_no, raw, keyring) {
            self.fail(line_no, reason);
            return true;
        }
        if self.pending.len() >= BATCH {
            if let Some(bad) = check_signatures(&mut self.pending) {
                self.report.failure = Some(bad);
                return true;
            }
        }
        false
    }

    /// Records the first failure; a bad signature on an earlier line wins.
    fn fail(&mut self, line: u64, reason: String) {
        self.report.failure =
            Some(check_signatures(&mut self.pending).unwrap_or(VerifyFailure { line, reason }));
    }

    fn finish(mut self) -> VerifyReport {
        if let Some(bad) = check_signatures(&mut self.pending) {
            self.report.failure = Some(bad);
            return self.report;
        }
        if let Some((_, (line, _))) = self.unsealed.iter().min_by_key(|(_, (line, _))| *line) {
            self.report.failure = Some(VerifyFailure {
                line: *line,
                reason: "record is covered by no signature: no checkpoint seals it (records \
                         after a writer's last checkpoint, or written without the key)"
                    .into(),
            });
            return self.report;
        }
        // Only the first UNFINISHED_LISTED ids are named (UUIDv7 byte order is
        // time order), so a log of a million `check()` calls does not make a
        // million strings.
        let mut open: Vec<IdKey> = self
            .decisions
            .iter()
            .filter(|(_, a)| a.open)
            .map(|(k, _)| *k)
            .collect();
        self.report.unfinished_count = open.len() as u64;
        if open.len() > UNFINISHED_LISTED {
            open.select_nth_unstable(UNFINISHED_LISTED);
            open.truncate(UNFINISHED_LISTED);
        }
        let mut unfinished: Vec<String> = open
            .iter()
            .map(|k| match k {
                IdKey::Uuid(b) => uuid::Uuid::from_bytes(*b).to_string(),
                IdKey::Hashed(_) => self.other_ids.get(k).cloned().unwrap_or_default(),
            })
            .collect();
        unfinished.sort();
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

    /// Checks one complete line (without its newline).
    fn record(
        &mut self,
        line_no: u64,
        raw: &[u8],
        keyring: &Keyring,
    ) -> std::result::Result<(), String> {
        let text = std::str::from_utf8(raw).map_err(|_| "line is not UTF-8".to_string())?;
        let receipt = Receipt::from_json(text).map_err(|e| e.to_string())?;
        if self.rows && receipt.seq() != line_no {
            return Err(format!(
                "the row stored as seq {line_no} holds the record of seq {} (a moved or copied row)",
                receipt.seq()
            ));
        }
        if self.report.records == 0 && receipt.kind() == "rotation" {
            // A later file of a rotated log, verified on its own: the chain
            // starts where its rotation record says (verify the set to
            // check the files before it).
            self.seq_base = receipt.seq().saturating_sub(1);
            self.prev = receipt
                .payload()
                .get("prev")
                .and_then(Json::as_str)
                .map(str::to_string);
        }
        check_record(
            &receipt,
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
        let payload_kid = payload.get("kid").and_then(Json::as_str).unwrap_or("");
        let signer = match receipt.signatures() {
            [] => {
                if payload.get("signing").and_then(Json::as_str) == Some("record") {
                    return Err("unsigned record in a log written with per-record signing \
                         (every record must carry a signature)"
                        .into());
                }
                let kid = self.kid_index(payload_kid);
                self.unsealed.insert(receipt.seq(), (line_no, kid));
                None
            }
            sigs => {
                let known = sigs.iter().find_map(|(kid, sig)| {
                    let key = keyring.get(kid)?;
                    let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
                    Some((kid.clone(), key.dalek().to_owned(), sig))
                });
                let Some((kid, key, signature)) = known else {
                    let kids: Vec<&str> = sigs.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(format!("signed by unknown key {}", kids.join(", ")));
                };
                if payload_kid != kid {
                    return Err(format!(
                        "payload kid {payload_kid:?} does not match the key that signed it ({kid})"
                    ));
                }
                self.report.keys.insert(kid.clone());
                self.pending.push(PendingSig {
                    line: line_no,
                    message: receipt.signing_input(),
                    signature,
                    key,
                });
                Some(kid)
            }
        };
        match receipt.kind() {
            "decision" => {
                let allowed = payload.get("decision").and_then(Json::as_str) == Some("allow");
                if allowed {
                    self.report.allowed += 1;
                } else {
                    self.report.denied += 1;
                }
                let key = id_key(receipt.id());
                let digest = digest_bytes(receipt.digest()).unwrap_or([0; 32]);
                if self
                    .decisions
                    .insert(
                        key,
                        Authorization {
                            digest,
                            open: allowed,
                        },
                    )
                    .is_some()
                {
                    return Err(format!("duplicate record id {}", receipt.id()));
                }
                if let IdKey::Hashed(_) = key {
                    self.other_ids.insert(key, receipt.id().to_string());
                }
            }
            "completion" => {
                let (id, sha) = authorization_link(payload);
                match self.link(id, sha) {
                    // Finished: forgotten, so memory follows the calls still
                    // open, not the length of the log. A second completion
                    // then links to nothing.
                    Some(auth) if auth.open => {
                        self.decisions.remove(&id_key(id));
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
                    Some(auth) => auth.open &= approved,
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
                self.seal(&receipt, &kid)?;
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
        let ts = payload.get("ts").and_then(Json::as_str).map(str::to_string);
        if self.report.first_ts.is_none() {
            self.report.first_ts.clone_from(&ts);
        }
        self.report.last_ts = ts;
        self.prev = Some(receipt.digest().to_string());
        self.report.records += 1;
        Ok(())
    }

    /// The decision a completion or approval names, when id and digest match.
    fn link(&mut self, id: &str, sha: &str) -> Option<&mut Authorization> {
        let digest = digest_bytes(sha)?;
        self.decisions
            .get_mut(&id_key(id))
            .filter(|a| a.digest == digest)
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
            let covered: Vec<(u64, usize)> = self
                .unsealed
                .range(pair.0..=pair.1)
                .map(|(seq, (_, k))| (*seq, *k))
                .collect();
            if covered.len() as u64 != pair.1 - pair.0 + 1 {
                return Err(format!(
                    "checkpoint claims to seal seq {}..{}, which are not all unsigned, \
                     unsealed records before it",
                    pair.0, pair.1
                ));
            }
            if let Some((seq, _)) = covered.iter().find(|(_, k)| *k != kid) {
                return Err(format!(
                    "checkpoint by key {} claims to seal seq {seq}, written under another key id",
                    self.kids.get(kid).map_or("?", String::as_str)
                ));
            }
            for (seq, _) in covered {
                self.unsealed.remove(&seq);
            }
        }
        Ok(())
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

/// Batch-verifies pending signatures; on failure finds the first bad line.
fn check_signatures(pending: &mut Vec<PendingSig>) -> Option<VerifyFailure> {
    if pending.is_empty() {
        return None;
    }
    let messages: Vec<&[u8]> = pending.iter().map(|p| p.message.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = pending.iter().map(|p| p.signature).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = pending.iter().map(|p| p.key).collect();
    // A batch check costs about half of one-by-one checks. It can accept a
    // second, malleated signature for a payload that was signed; that does not
    // matter here, because the chain binds payload digests, not signatures.
    // When the batch fails, the records are checked one by one (strictly) to
    // name the first bad line.
    let batch_ok = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    let bad = if batch_ok {
        None
    } else {
        pending
            .iter()
            .find(|p| p.key.verify_strict(&p.message, &p.signature).is_err())
            .map(|p| VerifyFailure {
                line: p.line,
                reason: "bad signature".into(),
            })
    };
    pending.clear();
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_bytes_never_verify_and_never_panic() {
        let dir = std::env::temp_dir().join(format!("execgate-verify-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
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
}
