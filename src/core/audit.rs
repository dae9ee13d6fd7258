//! The audit log: JSON Lines, one DSSE envelope per line, hash-chained.
//!
//! Writers in many threads (one mutex) and many processes (an exclusive
//! `flock` around reading the head and appending) produce one chain with
//! contiguous sequence numbers. Each line goes out in one `write` on an
//! `O_APPEND` descriptor. A torn last line left by a writer that died is moved
//! to a side file and replaced by a signed recovery record; complete records
//! are never rewritten. Verification is in [`verify_log`].

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Map, Value as Json};

use super::error::{CoreError, Result};
use super::gate::now_rfc3339;
use super::keys::{Keyring, SigningKey, VerifyKey};
use super::receipt::{Receipt, FORMAT_VERSION};

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Never fsync: records survive a process crash, not a power loss.
    None,
    /// fsync in the background at most every `interval`, and on close.
    Batch(Duration),
    /// fsync each record before its receipt is returned.
    Always,
}

/// Which records carry a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Every record is signed.
    Record,
    /// Every record is chained; a signed checkpoint seals the chain every
    /// `every` records, every `interval`, and on close.
    Checkpoint {
        /// Unsigned records before a checkpoint is due.
        every: u64,
        /// Longest time an unsigned record waits for its checkpoint.
        interval: Duration,
    },
}

/// How a log writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// fsync policy.
    pub durability: Durability,
    /// Signature policy.
    pub signing: Signing,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            durability: Durability::None,
            signing: Signing::Record,
        }
    }
}

/// The chain head as this writer last saw it.
struct State {
    /// `None` for an in-memory chain or after close.
    file: Option<File>,
    closed: bool,
    seq: u64,
    head: Option<String>,
    /// File length after this writer's last read or write; a different
    /// length under the lock means another writer moved the file.
    known_len: u64,
    unsigned: u64,
    last_signed: Instant,
    dirty: bool,
}

struct Inner {
    path: Option<PathBuf>,
    key: SigningKey,
    options: AuditOptions,
    state: Mutex<State>,
}

/// A hash-chained, signed, append-only log. Cheap to share (`Arc` inside).
pub struct AuditLog {
    inner: Arc<Inner>,
    ticker: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("kid", &self.inner.key.kid())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Audit {
        message: format!("{what}: {e}"),
        path: path.display().to_string(),
    }
}

/// Holds the exclusive file lock; released on drop.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn acquire(file: &'a File, path: &Path) -> Result<Self> {
        file.lock().map_err(|e| io_error(path, "cannot lock", e))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the descriptor would release it too; an error here leaves
        // nothing to undo.
        let _ = self.0.unlock();
    }
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path`, recovering a torn tail.
    pub fn open(path: &Path, key: SigningKey, options: AuditOptions) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error(path, "cannot open", e))?;
        // An impossible length, so the first lock reads the head from the file.
        let inner = Inner::new(Some(path.to_path_buf()), key, options, u64::MAX);
        {
            let mut st = inner.state.lock();
            let lock = FileLock::acquire(&file, path)?;
            inner.sync_head(&mut st, &file)?;
            drop(lock);
            st.file = Some(file);
        }
        let log = Self {
            inner,
            ticker: Mutex::new(None),
        };
        log.start_ticker();
        Ok(log)
    }

    /// A chain kept in memory only: receipts are signed and chained, nothing
    /// is written (for a gate with a key and no log file).
    pub fn in_memory(key: SigningKey, options: AuditOptions) -> Self {
        let inner = Inner::new(None, key, options, 0);
        Self {
            inner,
            ticker: Mutex::new(None),
        }
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The signing key's public half.
    pub fn verify_key(&self) -> VerifyKey {
        self.inner.key.verify_key()
    }

    /// A key derived from the signing key for another purpose.
    pub fn derived_key(&self, purpose: &[u8]) -> [u8; 32] {
        self.inner.key.derive(purpose)
    }

    /// The options the log writes with.
    pub fn options(&self) -> AuditOptions {
        self.inner.options
    }

    /// Appends a record with `body` and the chain fields; returns its receipt
    /// once it is written (and, with `Durability::Always`, synced).
    pub fn append(&self, body: Map<String, Json>) -> Result<Receipt> {
        self.inner.append(body, false)
    }

    /// Seals pending checkpoint-mode records, syncs, and closes the file.
    /// Later appends fail. Safe to call twice.
    pub fn close(&self) -> Result<()> {
        if let Some((stop, handle)) = self.ticker.lock().take() {
            drop(stop);
            let _ = handle.join();
        }
        let mut st = self.inner.state.lock();
        if st.closed {
            return Ok(());
        }
        let result = self.inner.seal_and_sync(&mut st);
        st.closed = true;
        st.file = None;
        result
    }

    /// Background fsync (batch durability) and checkpoint timer.
    fn start_ticker(&self) {
        let batch = match self.inner.options.durability {
            Durability::Batch(d) => Some(d),
            _ => None,
        };
        let checkpoint = match self.inner.options.signing {
            Signing::Checkpoint { interval, .. } => Some(interval),
            Signing::Record => None,
        };
        let Some(period) = [batch, checkpoint].into_iter().flatten().min() else {
            return;
        };
        let (tx, rx) = mpsc::channel::<()>();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("execgate-audit".into())
            .spawn(move || {
                // A message or a disconnect both mean stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.tick();
                }
            });
        if let Ok(handle) = spawned {
            *self.ticker.lock() = Some((tx, handle));
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Inner {
    fn new(
        path: Option<PathBuf>,
        key: SigningKey,
        options: AuditOptions,
        known_len: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            path,
            key,
            options,
            state: Mutex::new(State {
                file: None,
                closed: false,
                seq: 0,
                head: None,
                known_len,
                unsigned: 0,
                last_signed: Instant::now(),
                dirty: false,
            }),
        })
    }

    fn path_for_errors(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("<memory>"))
    }

    fn append(&self, body: Map<String, Json>, force_sign: bool) -> Result<Receipt> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(io_error(
                self.path_for_errors(),
                "cannot append",
                "the log is closed",
            ));
        }
        let receipt = self.write_record(&mut st, body, force_sign)?;
        if let Signing::Checkpoint { every, .. } = self.options.signing {
            if st.unsigned >= every {
                self.write_checkpoint(&mut st)?;
            }
        }
        Ok(receipt)
    }

    /// Adds the chain fields, seals, and writes one record under the file lock.
    fn write_record(
        &self,
        st: &mut State,
        mut body: Map<String, Json>,
        force_sign: bool,
    ) -> Result<Receipt> {
        let sign = force_sign || self.options.signing == Signing::Record;
        let Some(file) = st.file.take() else {
            // In-memory chain.
            let receipt = self.seal(st, &mut body, sign)?;
            self.advance(st, &receipt, 0);
            return Ok(receipt);
        };
        let result = (|| {
            let path = self.path_for_errors();
            let _lock = FileLock::acquire(&file, path)?;
            self.sync_head(st, &file)?;
            let receipt = self.seal(st, &mut body, sign)?;
            let mut line = Vec::with_capacity(receipt.envelope().len() + 1);
            line.extend_from_slice(receipt.envelope().as_bytes());
            line.push(b'\n');
            if let Err(e) = (&file).write_all(&line) {
                // Never leave a partial line behind: cut back to where we started.
                let _ = file.set_len(st.known_len);
                return Err(io_error(path, "cannot append", e));
            }
            if self.options.durability == Durability::Always {
                file.sync_data()
                    .map_err(|e| io_error(path, "cannot sync", e))?;
            } else {
                st.dirty = true;
            }
            self.advance(st, &receipt, line.len() as u64);
            Ok(receipt)
        })();
        st.file = Some(file);
        result
    }

    fn seal(&self, st: &State, body: &mut Map<String, Json>, sign: bool) -> Result<Receipt> {
        body.insert("v".into(), json!(FORMAT_VERSION));
        body.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
        body.insert("seq".into(), json!(st.seq + 1));
        body.insert("ts".into(), json!(now_rfc3339()));
        body.insert("kid".into(), json!(self.key.kid()));
        body.insert("prev".into(), json!(st.head));
        Receipt::seal(std::mem::take(body), sign.then_some(&self.key))
    }

    fn advance(&self, st: &mut State, receipt: &Receipt, written: u64) {
        st.seq = receipt.seq();
        st.head = Some(receipt.digest().to_string());
        st.known_len = st.known_len.saturating_add(written);
        if receipt.signatures().is_empty() {
            st.unsigned += 1;
        } else {
            st.unsigned = 0;
            st.last_signed = Instant::now();
        }
    }

    /// A signed record whose signature seals, through the `prev` chain, every
    /// record before it (including other writers' unsigned ones).
    fn write_checkpoint(&self, st: &mut State) -> Result<Receipt> {
        let mut body = Map::new();
        body.insert("kind".into(), json!("checkpoint"));
        self.write_record(st, body, true)
    }

    /// Re-reads the chain head if another writer moved the file; recovers a
    /// torn tail. Called with the file lock held.
    fn sync_head(&self, st: &mut State, file: &File) -> Result<()> {
        let path = self.path_for_errors();
        let len = file
            .metadata()
            .map_err(|e| io_error(path, "cannot stat", e))?
            .len();
        if len == st.known_len {
            return Ok(());
        }
        let (good_len, last) =
            read_tail(file, len).map_err(|e| io_error(path, "cannot read", e))?;
        match last {
            None => {
                st.seq = 0;
                st.head = None;
            }
            Some(line) => {
                let receipt = Receipt::from_json(&line).map_err(|e| CoreError::Audit {
                    message: format!(
                        "the last record cannot be read, refusing to extend the chain: {e}"
                    ),
                    path: path.display().to_string(),
                })?;
                st.seq = receipt.seq();
                st.head = Some(receipt.digest().to_string());
            }
        }
        st.known_len = good_len;
        if good_len < len {
            self.recover(st, file, good_len, len)?;
        }
        Ok(())
    }

    /// Moves the torn bytes after `good_len` to a side file, truncates, and
    /// appends a signed recovery record naming what was moved.
    fn recover(&self, st: &mut State, file: &File, good_len: u64, len: u64) -> Result<()> {
        let path = self.path_for_errors();
        let mut torn = Vec::new();
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(good_len))
            .and_then(|_| reader.take(len - good_len).read_to_end(&mut torn))
            .map_err(|e| io_error(path, "cannot read torn tail", e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let side = PathBuf::from(format!("{}.torn-{nanos}", path.display()));
        let mut side_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&side)
            .map_err(|e| io_error(&side, "cannot create side file", e))?;
        side_file
            .write_all(&torn)
            .and_then(|()| side_file.sync_all())
            .map_err(|e| io_error(&side, "cannot write side file", e))?;
        file.set_len(good_len)
            .map_err(|e| io_error(path, "cannot truncate torn tail", e))?;
        let mut body = Map::new();
        body.insert("kind".into(), json!("recovery"));
        body.insert(
            "recovered".into(),
            json!({
                "reason": "torn last line (a writer stopped mid-record)",
                "bytes": torn.len(),
                "sha256": super::receipt::sha256_hex(&torn),
                "side_file": side.display().to_string(),
            }),
        );
        let receipt = self.seal(st, &mut body, true)?;
        let mut line = receipt.envelope().as_bytes().to_vec();
        line.push(b'\n');
        (&*file)
            .write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(path, "cannot append recovery record", e))?;
        self.advance(st, &receipt, line.len() as u64);
        Ok(())
    }

    fn seal_and_sync(&self, st: &mut State) -> Result<()> {
        if st.unsigned > 0 {
            self.write_checkpoint(st)?;
        }
        if let Some(file) = &st.file {
            if st.dirty {
                file.sync_data()
                    .map_err(|e| io_error(self.path_for_errors(), "cannot sync", e))?;
                st.dirty = false;
            }
        }
        Ok(())
    }

    /// Periodic work: batch fsync and overdue checkpoints. Errors surface on
    /// the next append or on close, which fail closed.
    fn tick(&self) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        if let Signing::Checkpoint { interval, .. } = self.options.signing {
            if st.unsigned > 0 && st.last_signed.elapsed() >= interval {
                let _ = self.write_checkpoint(&mut st);
            }
        }
        if matches!(self.options.durability, Durability::Batch(_)) && st.dirty {
            // fsync a duplicate descriptor without the lock, so appends that
            // arrive meanwhile do not wait for the disk.
            let Some(dup) = st.file.as_ref().and_then(|f| f.try_clone().ok()) else {
                return;
            };
            st.dirty = false;
            drop(st);
            if dup.sync_data().is_err() {
                self.state.lock().dirty = true;
            }
        }
    }
}

/// Finds the end of the last complete line and that line's text.
/// Returns `(length up to and including the last '\n', last complete line)`.
fn read_tail(file: &File, len: u64) -> std::io::Result<(u64, Option<String>)> {
    // A record is about a kilobyte; read a little more than that at a time.
    const CHUNK: u64 = 4 * 1024;
    let mut reader = file;
    let mut end = len;
    let mut buf: Vec<u8> = Vec::new();
    // Walk back from the end until two newlines (or the start) bracket the
    // last complete line.
    loop {
        let start = end.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        let base = start;
        if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
            let good_len = base + last_nl as u64 + 1;
            let before = &buf[..last_nl];
            if let Some(prev_nl) = before.iter().rposition(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&before[prev_nl + 1..]).into_owned();
                return Ok((good_len, Some(line)));
            }
            if base == 0 {
                let line = String::from_utf8_lossy(before).into_owned();
                return Ok((good_len, Some(line)));
            }
        } else if base == 0 {
            // No complete line at all.
            return Ok((0, None));
        }
        end = start;
        if end == 0 {
            return Ok((0, None));
        }
    }
}

/// Where verification stopped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
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
    /// Recovery records (torn tails that were repaired).
    pub recoveries: u64,
    /// Approval records (answers to decisions that required approval).
    pub approvals: u64,
    /// Signed checkpoint records.
    pub checkpoints: u64,
    /// Earliest and latest record time.
    pub first_ts: Option<String>,
    /// Latest record time.
    pub last_ts: Option<String>,
    /// Key ids that signed records.
    pub keys: BTreeSet<String>,
    /// Ids of decisions that let a call run (allowed, or in audit mode) with
    /// no completion record: authorized but never finished.
    pub unfinished: Vec<String>,
    /// The first problem, or `None` when the log is valid.
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
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

/// Verifies every signature (batched), the hash chain, sequence numbers,
/// checkpoints and completion links of the log at `path`.
pub fn verify_log(path: &Path, keyring: &Keyring) -> Result<VerifyReport> {
    let data = std::fs::read(path).map_err(|e| io_error(path, "cannot read", e))?;
    let mut report = VerifyReport::default();
    let mut pending: Vec<PendingSig> = Vec::with_capacity(BATCH);
    let fail =
        |report: &mut VerifyReport, pending: &mut Vec<PendingSig>, line: u64, reason: String| {
            // A bad signature on an earlier line is the first failure.
            if let Some(bad) = check_signatures(pending) {
                report.failure = Some(bad);
            } else {
                report.failure = Some(VerifyFailure { line, reason });
            }
        };
    let mut prev: Option<String> = None;
    let mut decisions: HashMap<String, (String, bool)> = HashMap::new();
    let mut seen_ids: BTreeSet<String> = BTreeSet::new();
    let mut unsealed_from: Option<u64> = None;
    let mut offset = 0usize;
    let mut line_no = 0u64;
    while offset < data.len() {
        line_no += 1;
        let Some(nl) = data[offset..].iter().position(|&b| b == b'\n') else {
            fail(
                &mut report,
                &mut pending,
                line_no,
                "torn tail: the last line is incomplete".into(),
            );
            return Ok(report);
        };
        let raw = &data[offset..offset + nl];
        offset += nl + 1;
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                fail(
                    &mut report,
                    &mut pending,
                    line_no,
                    "line is not UTF-8".into(),
                );
                return Ok(report);
            }
        };
        let receipt = match Receipt::from_json(text) {
            Ok(r) => r,
            Err(e) => {
                fail(&mut report, &mut pending, line_no, e.to_string());
                return Ok(report);
            }
        };
        if let Err(reason) = check_record(&receipt, report.records, prev.as_deref()) {
            fail(&mut report, &mut pending, line_no, reason);
            return Ok(report);
        }
        if !seen_ids.insert(receipt.id().to_string()) {
            fail(
                &mut report,
                &mut pending,
                line_no,
                format!("duplicate record id {}", receipt.id()),
            );
            return Ok(report);
        }
        match receipt.signatures() {
            [] => {
                unsealed_from.get_or_insert(line_no);
            }
            sigs => {
                let mut known = None;
                for (kid, sig) in sigs {
                    if let (Some(key), Ok(sig)) =
                        (keyring.get(kid), ed25519_dalek::Signature::from_slice(sig))
                    {
                        known = Some((kid.clone(), key.dalek().to_owned(), sig));
                        break;
                    }
                }
                let Some((kid, key, signature)) = known else {
                    let kids: Vec<&str> = sigs.iter().map(|(k, _)| k.as_str()).collect();
                    fail(
                        &mut report,
                        &mut pending,
                        line_no,
                        format!("signed by unknown key {}", kids.join(", ")),
                    );
                    return Ok(report);
                };
                report.keys.insert(kid);
                pending.push(PendingSig {
                    line: line_no,
                    message: receipt.signing_input(),
                    signature,
                    key,
                });
                unsealed_from = None;
                if pending.len() >= BATCH {
                    if let Some(bad) = check_signatures(&mut pending) {
                        report.failure = Some(bad);
                        return Ok(report);
                    }
                }
            }
        }
        let payload = receipt.payload();
        match receipt.kind() {
            "decision" => {
                let allowed = payload.get("decision").and_then(Json::as_str) == Some("allow");
                if allowed {
                    report.allowed += 1;
                } else {
                    report.denied += 1;
                }
                decisions.insert(
                    receipt.id().to_string(),
                    (receipt.digest().to_string(), allowed),
                );
            }
            "completion" => {
                let (id, sha) = authorization_link(payload);
                match decisions.get_mut(id) {
                    Some((digest, open)) if digest == sha && *open => *open = false,
                    Some((digest, _)) if digest == sha => {
                        fail(&mut report, &mut pending, line_no, format!("second completion for authorization {id}, or completion of a denied call"));
                        return Ok(report);
                    }
                    _ => {
                        fail(
                            &mut report,
                            &mut pending,
                            line_no,
                            format!("completion links to unknown authorization {id:?}"),
                        );
                        return Ok(report);
                    }
                }
                report.completions += 1;
            }
            "approval" => {
                let (id, sha) = authorization_link(payload);
                let approved = payload
                    .get("approval")
                    .and_then(|a| a.get("approved"))
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                match decisions.get_mut(id) {
                    // A refused (or timed-out) approval means the call never runs.
                    Some((digest, open)) if digest == sha => *open &= approved,
                    _ => {
                        fail(
                            &mut report,
                            &mut pending,
                            line_no,
                            format!("approval links to unknown decision {id:?}"),
                        );
                        return Ok(report);
                    }
                }
                report.approvals += 1;
            }
            "recovery" => report.recoveries += 1,
            "checkpoint" => report.checkpoints += 1,
            other => {
                fail(
                    &mut report,
                    &mut pending,
                    line_no,
                    format!("unknown record kind {other:?}"),
                );
                return Ok(report);
            }
        }
        let ts = payload.get("ts").and_then(Json::as_str).map(str::to_string);
        if report.first_ts.is_none() {
            report.first_ts.clone_from(&ts);
        }
        report.last_ts = ts;
        prev = Some(receipt.digest().to_string());
        report.records += 1;
    }
    if let Some(bad) = check_signatures(&mut pending) {
        report.failure = Some(bad);
        return Ok(report);
    }
    if let Some(line) = unsealed_from {
        report.failure = Some(VerifyFailure {
            line,
            reason: "records from here to the end are covered by no signature (checkpoint missing)"
                .into(),
        });
        return Ok(report);
    }
    let mut unfinished: Vec<String> = decisions
        .into_iter()
        .filter(|(_, (_, open))| *open)
        .map(|(id, _)| id)
        .collect();
    unfinished.sort();
    report.unfinished = unfinished;
    Ok(report)
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

    fn body(n: u64) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("kind".into(), json!("decision"));
        m.insert("decision".into(), json!("deny"));
        m.insert("n".into(), json!(n));
        m
    }

    fn keyring(key: &SigningKey) -> Keyring {
        let mut k = Keyring::new();
        k.add(key.verify_key());
        k
    }

    #[test]
    fn appends_chain_and_verify() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        for n in 0..10 {
            log.append(body(n)).unwrap();
        }
        log.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        assert_eq!(report.records, 10);
        // Reopening continues the chain.
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        assert_eq!(log.append(body(10)).unwrap().seq(), 11);
    }

    #[test]
    fn torn_tail_is_moved_aside_and_recorded() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(1)).unwrap();
        log.close().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"payloadType\":\"appl").unwrap();
        assert_eq!(
            verify_log(&path, &keyring(&key))
                .unwrap()
                .failure
                .unwrap()
                .line,
            2
        );
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(2)).unwrap();
        log.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        assert_eq!((report.records, report.recoveries), (3, 1));
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("execgate-audit-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
