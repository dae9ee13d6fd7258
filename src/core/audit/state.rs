//! State snapshots: opening a log costs the same on day 1 and day 300.
//!
//! A writer with a [`StateFold`] attached (a gate's ledger) folds every record
//! it writes, and every record other writers appended that it finds under the
//! lock, so the fold is always the fold of every record before the file's
//! end. Every `state_every` records (not on close), and at the start of a
//! rotated file, it appends a signed `state` record holding the fold
//! (`state`) and the byte offset at which the record starts (`offset`).
//! Opening therefore folds at most about `state_every` records after the
//! snapshot, whatever the log's length.
//!
//! Opening reads the file backwards from the end to the last `state` record
//! that (1) parses, (2) carries a valid signature of this writer's key, and
//! (3) names its own offset; restores it; and folds the records after it.
//! Without one within a bounded distance from the end, it folds the whole
//! file forwards (in bounded memory) as before snapshots existed.
//!
//! Folding is the cost of opening that grows with the distance to the last
//! snapshot, so each record after it is read as cheaply as it can be: its
//! payload is base64-decoded into one buffer reused across records and
//! handed to [`StateFold::fold_json`] as bytes, which the ledger reads
//! without building a JSON map (see [`crate::core::counted`]).
//!
//! Why a crash cannot reset a budget: a snapshot is only a summary of the
//! records before it, never the only place a spend is written. A torn state
//! record is a torn tail like any other (moved aside on open), and the
//! previous snapshot plus the records after it give the same counters. A
//! replayed old snapshot (a genuine signed record copied to the end) names an
//! offset that is not where it stands, so it is ignored.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value as Json;

use super::recovery::Backwards;
use super::MAX_RECORD_BYTES;
use crate::core::keys::VerifyKey;
use crate::core::receipt::{Fields, Receipt};

/// State kept in step with a log's records, so it can be written out in
/// `state` records and rebuilt from the last one (the gate's ledger).
pub trait StateFold: Send + Sync {
    /// Takes one record (every kind; a fold ignores what it does not count).
    fn fold(&self, payload: &dyn Fields);
    /// Appends the state's canonical JSON (RFC 8785), for a `state` record;
    /// on an error `out` is as it was.
    fn write_snapshot(&self, out: &mut Vec<u8>) -> crate::core::error::Result<()>;
    /// The state as JSON ([`StateFold::write_snapshot`] parsed; `Null` when
    /// it cannot be written).
    fn snapshot(&self) -> Json {
        let mut bytes = Vec::new();
        self.write_snapshot(&mut bytes)
            .ok()
            .and_then(|()| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Json::Null)
    }
    /// Replaces the state with a snapshot; `Err` (and nothing replaced) when
    /// it is malformed.
    fn restore(&self, state: &Json) -> std::result::Result<(), String>;
    /// Takes one record as its payload's JSON bytes (the records a log holds,
    /// folded on open): the same as parsing them into a map and passing it to
    /// [`StateFold::fold`] (nothing when they are not a JSON object), but a
    /// fold may read only what it counts, as strictly, and build no map.
    fn fold_json(&self, payload: &[u8]);
    /// Forgets everything.
    fn reset(&self);
    /// Whether a record with this body may be appended now, given the fold
    /// of every record before the file's end (`Err` with the reason when
    /// not): how limits stay exact across processes sharing one log (see
    /// [`super::AuditLog::append_admitted`]). Every record is admitted by
    /// default.
    fn admits(&self, _body: &dyn Fields) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// How far back from the end the rebuild looks for a `state` record before
/// folding the whole file instead, in records.
pub(super) fn search_limit(state_every: u64) -> u64 {
    state_every.saturating_mul(2).max(20_000)
}

/// The base64 of `{"id":`, how every non-decision record's canonical payload
/// starts (its keys sort `id`, `kid`, `kind`, ...), unlike a decision's
/// (`{"action":`): a cheap filter before a full parse.
const STATE_PREFIX: &[u8] = b"\"payload\":\"eyJpZCI6";

/// What the rebuild did.
pub(super) struct Rebuilt {
    /// Records folded after the snapshot (or from the start).
    pub folded: u64,
    /// Seq of the snapshot used, if any.
    pub from_seq: Option<u64>,
}

/// Rebuilds `fold` from the log's first `len` bytes (which end with a
/// newline, or are empty).
pub(super) fn rebuild(
    file: &File,
    len: u64,
    key: &VerifyKey,
    fold: &dyn StateFold,
    limit: u64,
) -> std::io::Result<Rebuilt> {
    fold.reset();
    if let Some((end, receipt)) = find_snapshot(file, len, key, limit)? {
        if let Some(state) = receipt.payload().get("state") {
            if fold.restore(state).is_ok() {
                let folded = fold_range(file, end, len, fold)?;
                return Ok(Rebuilt {
                    folded,
                    from_seq: Some(receipt.seq()),
                });
            }
        }
        fold.reset();
    }
    Ok(Rebuilt {
        folded: fold_range(file, 0, len, fold)?,
        from_seq: None,
    })
}

/// The last trusted `state` record within `limit` records of the end:
/// `(the offset after its line, the record)`.
fn find_snapshot(
    file: &File,
    len: u64,
    key: &VerifyKey,
    limit: u64,
) -> std::io::Result<Option<(u64, Receipt)>> {
    let mut back = Backwards::new(file);
    let mut end = len; // the line is [start, end - 1), end - 1 is its '\n'
    let mut seen = 0u64;
    let mut head_buf = Vec::with_capacity(256);
    while end > 0 && seen < limit {
        let nl = end - 1;
        let start = back.rfind_newline(nl)?.map_or(0, |p| p + 1);
        seen += 1;
        let line_len = nl - start;
        if line_len <= MAX_RECORD_BYTES {
            // Only the head of the line decides whether it is worth parsing.
            let head_len = usize::try_from(line_len.min(256)).unwrap_or(256);
            let head = match back.buffered(start, head_len) {
                Some(bytes) => bytes,
                None => {
                    head_buf.resize(head_len, 0);
                    file.read_exact_at(&mut head_buf, start)?;
                    &head_buf
                }
            };
            if memchr::memmem::find(head, STATE_PREFIX).is_some() {
                let mut line = vec![0u8; usize::try_from(line_len).unwrap_or(0)];
                file.read_exact_at(&mut line, start)?;
                if let Some(receipt) = trusted_state(&line, start, key) {
                    return Ok(Some((end, receipt)));
                }
            }
        }
        end = start;
    }
    Ok(None)
}

/// A `state` record this writer can restore from: signed by `key`, and
/// standing at the offset it names.
fn trusted_state(line: &[u8], at: u64, key: &VerifyKey) -> Option<Receipt> {
    let receipt = Receipt::from_json(std::str::from_utf8(line).ok()?).ok()?;
    if receipt.kind() != "state" {
        return None;
    }
    receipt.verify(key).ok()?;
    (receipt.payload().get("offset").and_then(Json::as_u64) == Some(at)).then_some(receipt)
}

/// Folds the complete lines in `[from, to)` (lines that do not parse are
/// skipped, as they say nothing the ledger could count). Returns how many
/// lines it read.
pub(super) fn fold_range(
    file: &File,
    from: u64,
    to: u64,
    fold: &dyn StateFold,
) -> std::io::Result<u64> {
    if to <= from {
        return Ok(0);
    }
    // A duplicate descriptor: its offset is its own to move (reads only; the
    // writer appends with O_APPEND and reads with pread).
    let mut dup = file.try_clone()?;
    dup.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::with_capacity(1 << 20, dup.take(to - from));
    let mut line = Vec::with_capacity(4096);
    let mut payload = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if line.len() as u64 > MAX_RECORD_BYTES {
                // Skip the rest of an over-long line.
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest)?;
                n += 1;
                continue;
            }
            break; // an incomplete last line is not a record
        }
        n += 1;
        if decode_payload(&line, &mut payload) {
            fold.fold_json(&payload);
        }
    }
    Ok(n)
}

/// Decodes the payload of an envelope line into `out` (a buffer reused
/// across lines), without the canonical-form and signature checks (the
/// ledger counts what the log says; `verify` judges it). `false` when the
/// line is not an envelope with a base64 payload.
pub(super) fn decode_payload(line: &[u8], out: &mut Vec<u8>) -> bool {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: Cow<'a, str>,
    }
    out.clear();
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(line) else {
        return false;
    };
    B64.decode_vec(env.payload.as_bytes(), out).is_ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use serde_json::{json, Map};

    use super::super::test_support;
    use super::super::{verify_log, AuditLog, AuditOptions};
    use super::*;
    use crate::core::keys::{Keyring, SigningKey};
    use crate::core::ledger::Ledger;

    fn tempdir() -> PathBuf {
        test_support::tempdir("state")
    }

    fn options(state_every: u64) -> AuditOptions {
        AuditOptions {
            state_every,
            ..AuditOptions::default()
        }
    }

    /// An allowed decision spending 1 from budget `b` (limit 1e9), at second
    /// `n` of a fixed day, in session `s{n % 3}`, with a rate on `r`.
    fn decision(n: u64) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("kind".into(), json!("decision"));
        m.insert("decision".into(), json!("allow"));
        m.insert("action".into(), json!({"name": "t", "args_sha256": "00"}));
        m.insert(
            "context".into(),
            json!({"session": format!("s{}", n % 3),
                   "time": format!("2026-03-14T10:{:02}:{:02}Z", n / 60 % 60, n % 60)}),
        );
        m.insert(
            "obligations".into(),
            json!({"budget": {"key": "b", "limit": 1e9, "cost": 1},
                   "rate": {"key": "r", "limit": 1_000_000, "window_seconds": 86400}}),
        );
        m
    }

    fn open(path: &Path, key: &SigningKey, every: u64) -> (AuditLog, Arc<Ledger>) {
        let log = AuditLog::open(path, key.clone(), options(every)).unwrap();
        let ledger = Arc::new(Ledger::new(4));
        log.attach_state(ledger.clone()).unwrap();
        (log, ledger)
    }

    fn spent(ledger: &Ledger) -> f64 {
        let (_, usage) = ledger.view("", &[("b".into(), "b".into())]);
        usage["budgets"]["b"].as_f64().unwrap_or(0.0)
    }

    /// What a full replay of the file gives (the reference).
    fn full_replay(path: &Path) -> Ledger {
        let ledger = Ledger::new(4);
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if let Ok(r) = Receipt::from_json(line) {
                ledger.replay(r.payload());
            }
        }
        ledger
    }

    fn lines(path: &Path) -> Vec<(u64, u64, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut at = 0u64;
        text.lines()
            .map(|l| {
                let start = at;
                at += l.len() as u64 + 1;
                let kind = Receipt::from_json(l).unwrap().kind().to_string();
                (start, at, kind)
            })
            .collect()
    }

    #[test]
    fn state_records_are_written_signed_and_rebuild_the_same_ledger() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (log, ledger) = open(&path, &key, 10);
        for n in 0..25 {
            log.append(decision(n)).unwrap();
        }
        assert_eq!(spent(&ledger), 25.0);
        log.close().unwrap();
        let kinds: Vec<String> = lines(&path).into_iter().map(|l| l.2).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "state").count(), 2); // after 10, 20
        assert_eq!(kinds[10], "state");
        let mut ring = Keyring::new();
        ring.add(key.verify_key());
        let report = verify_log(&path, &ring).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        let (log, rebuilt) = open(&path, &key, 10);
        assert_eq!(log.rebuilt_from(), Some(22));
        assert_eq!(rebuilt.snapshot(), full_replay(&path).snapshot());
        assert_eq!(spent(&rebuilt), 25.0);
    }

    /// A crash at any byte of a state record's line (a torn tail) loses no
    /// spend: the log opens, and the budget is what the records say.
    #[test]
    fn torn_state_record_never_resets_a_budget() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (log, _) = open(&path, &key, 4);
        for n in 0..10 {
            log.append(decision(n)).unwrap();
        }
        log.close().unwrap();
        let all = std::fs::read(&path).unwrap();
        let layout = lines(&path);
        let states: Vec<&(u64, u64, String)> = layout.iter().filter(|l| l.2 == "state").collect();
        assert!(states.len() >= 2);
        let mut cuts: Vec<u64> = Vec::new();
        for (start, end, _) in &states {
            // Every byte of the first state line, a stride through the others.
            let step = if *start == states[0].0 { 1 } else { 7 };
            cuts.extend((*start..*end).step_by(step));
            cuts.push(end - 1);
        }
        let trial = dir.join("trial.jsonl");
        for cut in cuts {
            let _ = std::fs::remove_file(&trial);
            std::fs::write(&trial, &all[..usize::try_from(cut).unwrap()]).unwrap();
            let decisions_before = layout
                .iter()
                .filter(|l| l.1 <= cut && l.2 == "decision")
                .count() as f64;
            let (log, ledger) = open(&trial, &key, 4);
            assert_eq!(spent(&ledger), decisions_before, "cut at {cut}");
            // And it goes on from there.
            log.append(decision(99)).unwrap();
            assert_eq!(spent(&ledger), decisions_before + 1.0, "cut at {cut}");
            log.close().unwrap();
            let (_, again) = open(&trial, &key, 4);
            assert_eq!(
                spent(&again),
                decisions_before + 1.0,
                "reopen after cut at {cut}"
            );
        }
    }

    /// A genuine but old state record copied to the end, or a forged one, is
    /// not restored from: the budget is not rolled back.
    #[test]
    fn replayed_or_forged_state_records_are_ignored() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (log, _) = open(&path, &key, 3);
        for n in 0..10 {
            log.append(decision(n)).unwrap();
        }
        log.close().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let old_state = text
            .lines()
            .find(|l| Receipt::from_json(l).unwrap().kind() == "state")
            .unwrap()
            .to_string();
        // Replayed: signed, but not at the offset it names.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{old_state}").unwrap();
        // Forged: an empty ledger, unsigned, or signed by another key, at the right offset.
        let intruder = SigningKey::generate();
        for signer in [None, Some(&intruder)] {
            let at = std::fs::metadata(&path).unwrap().len();
            let mut forged = Receipt::from_json(&old_state).unwrap().payload().clone();
            forged.insert("offset".into(), json!(at));
            forged.insert(
                "state".into(),
                json!({"v": 1, "sessions": [], "rates": [], "budgets": []}),
            );
            writeln!(
                f,
                "{}",
                Receipt::seal(&forged.into(), signer).unwrap().envelope()
            )
            .unwrap();
        }
        drop(f);
        let (_, ledger) = open(&path, &key, 3);
        assert_eq!(spent(&ledger), 10.0);
    }

    /// Two writers on one log: each folds what the other appended, so either's
    /// snapshot holds both.
    #[test]
    fn records_of_other_writers_are_folded() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (a, la) = open(&path, &key, 5);
        let (b, lb) = open(&path, &key, 5);
        for n in 0..3 {
            a.append(decision(n)).unwrap();
        }
        for n in 3..7 {
            b.append(decision(n)).unwrap();
        }
        a.append(decision(7)).unwrap();
        assert_eq!(spent(&la), 8.0);
        assert_eq!(spent(&lb), 7.0); // b has not looked since
        b.append(decision(8)).unwrap(); // b folds a's last record first
        assert_eq!(spent(&lb), 9.0);
        a.close().unwrap();
        b.close().unwrap();
        let (log, ledger) = open(&path, &key, 5);
        assert!(log.rebuilt_from().is_some());
        assert_eq!(spent(&ledger), 9.0);
        assert_eq!(ledger.snapshot(), full_replay(&path).snapshot());
    }

    /// A log written before state records existed (or whose last snapshot is
    /// far back) is folded from the start, and a snapshot is written at once.
    #[test]
    fn a_log_without_snapshots_is_folded_and_gets_one() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), options(0)).unwrap();
        for n in 0..30 {
            log.append(decision(n)).unwrap();
        }
        log.close().unwrap();
        let (log, ledger) = open(&path, &key, 10);
        assert_eq!(log.rebuilt_from(), None);
        assert_eq!(spent(&ledger), 30.0);
        log.close().unwrap();
        let (log, ledger) = open(&path, &key, 10);
        assert_eq!(log.rebuilt_from(), Some(31));
        assert_eq!(spent(&ledger), 30.0);
    }

    /// Lines that are not records (and a shifted file, whose state records
    /// no longer stand where they say) are folded past, never trusted.
    #[test]
    fn hostile_bytes_rebuild_without_panicking() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (log, _) = open(&path, &key, 3);
        for n in 0..10 {
            log.append(decision(n)).unwrap();
        }
        log.close().unwrap();
        let mut junk = Vec::new();
        junk.extend_from_slice(b"{\"payload\":\"eyJpZCI6\"}\n\xff\xfe\n\n{}\n");
        junk.extend(vec![b'x'; 300]);
        junk.push(b'\n');
        junk.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, &junk).unwrap();
        let (log, ledger) = open(&path, &key, 3);
        assert_eq!(log.rebuilt_from(), None);
        assert_eq!(spent(&ledger), 10.0);
    }

    /// Rotation: the chain continues across files, each later file opens on
    /// its own with the ledger, and the set verifies only whole and in order.
    #[test]
    fn rotation_keeps_the_chain_and_the_budget() {
        use super::super::{verify_log_with_progress, verify_logs_with_progress, Start};
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let mut ring = Keyring::new();
        ring.add(key.verify_key());
        let log = AuditLog::open(
            &path,
            key.clone(),
            AuditOptions {
                rotate_bytes: 6000,
                ..options(1000)
            },
        )
        .unwrap();
        log.attach_state(Arc::new(Ledger::new(4))).unwrap();
        for n in 0..20 {
            log.append(decision(n)).unwrap();
        }
        let first = log.rotate().unwrap();
        log.append(decision(20)).unwrap();
        log.close().unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        assert!(files.contains(&first));
        // Whole, in any order given.
        files.reverse();
        let report =
            verify_logs_with_progress(&files, &ring, &Start::Genesis, &mut |_, _| {}).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        assert_eq!(report.allowed, 21);
        assert_eq!(report.rotations as usize, files.len() - 1);
        // The newest file alone is not the whole log: it says what is
        // missing, and verifies from the digest the files before it end with.
        let report = verify_log(&path, &ring).unwrap();
        let failure = report
            .failure
            .expect("a later file alone is not a whole log");
        assert_eq!(failure.line, 1);
        assert!(
            failure
                .reason
                .contains("does not start at a genesis record"),
            "{}",
            failure.reason
        );
        let mut before: Vec<PathBuf> = files.iter().filter(|f| **f != path).cloned().collect();
        before.sort();
        let earlier =
            verify_logs_with_progress(&before, &ring, &Start::Genesis, &mut |_, _| {}).unwrap();
        assert!(earlier.ok(), "{:?}", earlier.failure);
        let after = Start::After(earlier.head.clone().unwrap());
        let report = verify_log_with_progress(&path, &ring, &after, &mut |_, _| {}).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        // The same set without its first file fails the same way.
        let mut no_first = files.clone();
        no_first.sort();
        no_first.remove(1); // after "log.jsonl": the oldest archive
        let report =
            verify_logs_with_progress(&no_first, &ring, &Start::Genesis, &mut |_, _| {}).unwrap();
        let failure = report
            .failure
            .expect("a set without its first file is not whole");
        assert!(
            failure
                .reason
                .contains("does not start at a genesis record"),
            "{}",
            failure.reason
        );
        let (_, ledger) = open(&path, &key, 1000);
        assert_eq!(spent(&ledger), 21.0);
        // A file missing from the middle breaks the chain, and says where.
        let mut gap = files.clone();
        gap.sort(); // "log.jsonl", then the archives in chain order
        gap.remove(2); // the second archive: the chain's second file
        let report =
            verify_logs_with_progress(&gap, &ring, &Start::Genesis, &mut |_, _| {}).unwrap();
        let failure = report.failure.expect("a missing file must fail");
        assert!(
            failure.reason.contains("sequence gap"),
            "{}",
            failure.reason
        );
        assert!(failure.reason.contains("line 1"), "{}", failure.reason);
    }

    /// A state larger than the records between snapshots is written less
    /// often: snapshots never make up more than about half of the log.
    #[test]
    fn large_states_are_written_less_often() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (log, ledger) = open(&path, &key, 1);
        for n in 0..300 {
            log.append(decision(n)).unwrap(); // the rate window keeps every call
        }
        log.close().unwrap();
        let layout = lines(&path);
        let state_bytes: u64 = layout
            .iter()
            .filter(|l| l.2 == "state")
            .map(|l| l.1 - l.0)
            .sum();
        let total = std::fs::metadata(&path).unwrap().len();
        assert!(state_bytes * 100 <= total * 55, "{state_bytes} of {total}");
        let (_, again) = open(&path, &key, 1);
        assert_eq!(again.snapshot(), ledger.snapshot());
    }
}
