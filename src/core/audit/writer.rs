//! [`AuditLog`]: appends records to one hash chain.
//!
//! Writers in many threads (one mutex) and many processes (an exclusive
//! `flock` around reading the head and appending) produce one chain with
//! contiguous sequence numbers. Each line goes out in one `write` on an
//! `O_APPEND` descriptor. Under the lock, before each append, the writer
//! checks that the path still names the file it holds (same device and
//! inode) and that the file is not shorter than what it last saw; when the
//! file moved, it reads and checks the new head before chaining onto it
//! (see [`super::recovery`]).
//!
//! A record is chained and written in two steps, so threads sign at once:
//! under the thread mutex (and the file lock) a record takes the next `seq`
//! and the head as `prev`, its canonical payload is written and hashed (the
//! next record's `prev`), and the mutex is released; the signature, which
//! covers `seq` and `prev` (the format leaves no other way), is made outside
//! the mutex; then, back under it, records are written in chain order. The
//! file lock is held from the first record taken to the last one written:
//! another process must not chain onto a head whose next record is still
//! being signed, so processes take turns per batch of at most
//! [`MAX_BATCH`] records, while this process's threads sign together.
//!
//! A writer that wrote records leaves a hand-off note as it lets the file
//! lock go, so the next process trusts the head by a MAC instead of parsing
//! and verifying it (see [`super::handoff`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use serde_json::{json, Map, Value as Json};

use super::fork;
use super::handoff;
use super::later::{Later, Thread};
use super::recovery::{first_broken_link, move_aside, recovery_body, scan_tail, Tail};
use super::state::{fold_range, rebuild, search_limit, StateFold};
use super::{io_error, AuditOptions, Durability, Signing, MAX_RECORD_BYTES};
use crate::core::decision::now_rfc3339;
use crate::core::error::{CoreError, Result};
use crate::core::keys::{SigningKey, VerifyKey};
use crate::core::receipt::{new_id, Body, Receipt, Unsigned, FORMAT_VERSION};

/// Records chained under one hold of the file lock, at most: further appends
/// wait until they are written and the lock released, which bounds how long
/// one process keeps the file from others (and how many records a checkpoint
/// or a `state` record that falls due waits for).
const MAX_BATCH: u64 = 16;

/// The chain head as this writer last saw it.
struct State {
    /// `None` for an in-memory chain or after close.
    file: Option<Arc<File>>,
    /// This writer holds the file lock: from the first record chained to the
    /// last one written (see the module notes).
    locked: bool,
    /// Records chained (`seq` and `prev` taken) and not yet written.
    in_flight: u64,
    /// Records chained since this writer took the file lock.
    batch: u64,
    /// The last record in the file as this writer knows it, `(seq, digest)`:
    /// records are written in chain order, the one after this is next.
    written: (u64, Option<String>),
    /// A write failed: the records chained after `.0` cannot be written
    /// (their `prev` is not in the file) and fail with `.1` until the ones
    /// in flight are done; the head went back to `written`.
    failed: Option<(u64, String)>,
    closed: bool,
    /// Why the log closed when no one closed it (see [`Inner::adopt`]).
    closed_why: Option<String>,
    /// The fork generation this state is this process's in (see
    /// [`super::fork`]).
    generation: u64,
    seq: u64,
    head: Option<String>,
    /// File length after this writer's last read or write (`None` before the
    /// first read); a different length under the lock means someone else
    /// changed the file.
    known_len: Option<u64>,
    /// The file's change time (ctime, seconds and nanoseconds) when this
    /// writer last read it or let the lock go after writing: the same length
    /// with another change time means the file was written in place (see
    /// [`Inner::sync_head`]).
    known_ctime: Option<(i64, i64)>,
    /// The last line this writer wrote (with its `'\n'`) while it is the
    /// file's last line as this writer knows it: the hand-off note it leaves
    /// names it.
    last_line: Option<Vec<u8>>,
    /// This writer has found the file changed by another writer since it
    /// opened it: from then on it leaves hand-off notes. A lone writer leaves
    /// none, so it pays nothing for them.
    shared: bool,
    /// Device and inode of the file this writer holds.
    identity: (u64, u64),
    /// `seq` ranges of this writer's unsigned records not yet sealed by one of
    /// its checkpoints (checkpoint mode).
    pending: Vec<(u64, u64)>,
    unsigned: u64,
    last_signed: Instant,
    dirty: bool,
    /// The state kept in step with the records (see [`super::state`]).
    fold: Option<Arc<dyn StateFold>>,
    /// Records since the last `state` record (or since the fold's start).
    since_state: u64,
    /// Seq of the `state` record the fold was rebuilt from.
    rebuilt_from: Option<u64>,
    /// Bytes of the last `state` record, and of the log since it.
    state_bytes: u64,
    bytes_since_state: u64,
}

pub(super) struct Inner {
    path: Option<PathBuf>,
    key: SigningKey,
    verify_key: VerifyKey,
    /// The MAC key of hand-off notes (derived from `key`).
    handoff_key: [u8; 32],
    options: AuditOptions,
    state: Mutex<State>,
    /// Signalled when a record is written (or fails) and when none is in flight.
    progress: Condvar,
    /// Records to append after their call returned (see [`super::later`]).
    later: Later,
    /// A record was written since the ticker last found nothing to do: an
    /// idle log's ticker takes no lock (so a fork finds none held by it).
    tick_due: AtomicBool,
}

/// A hash-chained, signed, append-only log. Cheap to share (`Arc` inside).
pub struct AuditLog {
    inner: Arc<Inner>,
    ticker: Mutex<Option<(mpsc::Sender<()>, Thread)>>,
    /// The fork generation the ticker was started in (see [`AuditLog::ticking`]).
    ticking_in: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("kid", &self.inner.key.kid())
            .finish_non_exhaustive()
    }
}

/// How long a writer tries for the file lock before it sleeps in `flock`.
const LOCK_SPIN: Duration = Duration::from_micros(100);

/// Takes the exclusive `flock`. Another process holds it for a record or a
/// few (tens of microseconds): trying again for [`LOCK_SPIN`] first spares
/// waking a process asleep in flock(2), which on a virtual machine costs
/// more than the wait.
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    let start = Instant::now();
    while start.elapsed() < LOCK_SPIN {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => std::thread::yield_now(),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    file.lock()
}

/// Opens the log file for appending and reading (with `create`, creating
/// it, mode 0600), without following a symbolic link at `path`.
fn open_log(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(create)
        .append(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Holds the exclusive file lock; released on drop.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn acquire(file: &'a File, path: &Path) -> Result<Self> {
        lock_exclusive(file).map_err(|e| io_error(path, "cannot lock", e))?;
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
    /// A symbolic link at `path` is refused, not followed.
    pub fn open(path: &Path, key: SigningKey, options: AuditOptions) -> Result<Self> {
        let file = open_log(path, true).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io_error(
                    path,
                    "cannot open",
                    "the path is a symbolic link, which the log does not follow",
                )
            } else {
                io_error(path, "cannot open", e)
            }
        })?;
        let meta = file
            .metadata()
            .map_err(|e| io_error(path, "cannot stat", e))?;
        if !meta.is_file() {
            return Err(io_error(path, "cannot open", "not a regular file"));
        }
        let inner = Inner::new(Some(path.to_path_buf()), key, options, None);
        {
            let mut st = inner.lock();
            st.identity = (meta.dev(), meta.ino());
            let lock = FileLock::acquire(&file, path)?;
            inner.sync_head(&mut st, &file)?;
            inner.hand_off(&mut st, &file);
            drop(lock);
            st.file = Some(Arc::new(file));
        }
        let log = Self {
            inner,
            ticker: Mutex::new(None),
            ticking_in: AtomicU64::new(fork::generation()),
        };
        *log.ticker.lock() = log.spawn_ticker();
        Ok(log)
    }

    /// A chain kept in memory only: receipts are signed and chained, nothing
    /// is written (for a gate with a key and no log file).
    pub fn in_memory(key: SigningKey, options: AuditOptions) -> Self {
        let inner = Inner::new(None, key, options, Some(0));
        Self {
            inner,
            ticker: Mutex::new(None),
            ticking_in: AtomicU64::new(fork::generation()),
        }
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The signing key's public half.
    pub fn verify_key(&self) -> VerifyKey {
        self.inner.verify_key.clone()
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
    pub fn append(&self, body: impl Into<Body>) -> Result<Receipt> {
        self.ticking();
        self.inner.append(&body.into())
    }

    /// Appends `body` after the caller has gone on (see [`super::later`]):
    /// returns the id its record will have. With `Durability::Always`, or in
    /// memory, appends it now. Fails when an earlier queued record could not
    /// be written, or the log is closed.
    pub fn append_later(&self, body: Body) -> Result<String> {
        if self.inner.options.durability == Durability::Always || self.inner.path.is_none() {
            return self.append(body).map(|r| r.id().to_string());
        }
        self.ticking();
        let id = new_id();
        self.inner
            .later()
            .push(&self.inner, body, id.clone())
            .map_err(|why| io_error(self.inner.path_for_errors(), "cannot append", why))?;
        Ok(id)
    }

    /// Waits until every record [`AuditLog::append_later`] queued is written;
    /// fails when one could not be.
    pub fn flush(&self) -> Result<()> {
        self.inner
            .later()
            .flush()
            .map_err(|why| io_error(self.inner.path_for_errors(), "cannot append", why))
    }

    /// Like [`AuditLog::append`], but first asks the attached fold whether
    /// the record is admitted ([`StateFold::admits`]), under the file lock
    /// and after folding what other writers appended: a decision that takes
    /// a rate or budget is written only if the limit still holds over every
    /// record in the file, so processes sharing one log share its limits
    /// exactly. `Ok(Err(reason))`: refused, nothing written.
    pub fn append_admitted(&self, body: &Body) -> Result<std::result::Result<Receipt, String>> {
        self.ticking();
        self.inner.append_checked(body, true, None)
    }

    /// Keeps `fold` in step with the log's records and writes it out in
    /// signed `state` records (see [`StateFold`]); rebuilds it first from the
    /// last trusted `state` record and the records after it. A log holds one
    /// fold: when one is already attached, that one is returned instead.
    pub fn attach_state(&self, fold: Arc<dyn StateFold>) -> Result<Arc<dyn StateFold>> {
        self.inner.attach_state(fold)
    }

    /// Rotates the log: seals this writer's unsigned records, renames the
    /// file to `PATH.<last seq, 20 digits>`, and starts a new file at the path
    /// whose first record, a signed `rotation` record, continues the chain
    /// (its `prev` is the old file's last digest, `rotated` names the old
    /// file, its last seq and digest), followed by a `state` record when a
    /// gate's ledger is attached. `verify` over the set checks the chain
    /// across files. Returns the archived file's path. Other processes
    /// writing the same log refuse to write (the path names another file)
    /// until they reopen it.
    pub fn rotate(&self) -> Result<PathBuf> {
        let mut st = self.inner.lock();
        self.inner.rotate(&mut st)
    }

    /// The `seq` of the last record this writer wrote or read at the head
    /// (other processes' records show up once it next takes the lock).
    pub fn seq(&self) -> u64 {
        self.inner.lock().seq
    }

    /// The `seq` of the `state` record the attached fold was rebuilt from
    /// (`None`: rebuilt from the start of the file, or none attached).
    pub fn rebuilt_from(&self) -> Option<u64> {
        self.inner.lock().rebuilt_from
    }

    /// Writes the records [`AuditLog::append_later`] queued, seals pending
    /// checkpoint-mode records, syncs, and closes the file. Later appends
    /// fail. Safe to call twice.
    pub fn close(&self) -> Result<()> {
        let queued = self
            .inner
            .later()
            .stop()
            .map_err(|why| io_error(self.inner.path_for_errors(), "cannot append", why));
        if let Some((stop, handle)) = self.ticker.lock().take() {
            drop(stop);
            let _ = handle.join();
        }
        let mut st = self.inner.lock();
        self.inner.drain(&mut st);
        if st.closed {
            return queued;
        }
        let result = queued.and(self.inner.seal_and_sync(&mut st));
        st.closed = true;
        st.file = None;
        // Appends waiting for a turn see the log closed.
        self.inner.progress.notify_all();
        result
    }

    /// Background fsync (batch durability) and checkpoint timer, if the
    /// options need one.
    fn spawn_ticker(&self) -> Option<(mpsc::Sender<()>, Thread)> {
        let batch = match self.inner.options.durability {
            Durability::Batch(d) => Some(d),
            _ => None,
        };
        let checkpoint = match self.inner.options.signing {
            Signing::Checkpoint { interval, .. } => Some(interval),
            Signing::Record => None,
        };
        let period = [batch, checkpoint].into_iter().flatten().min()?;
        let (tx, rx) = mpsc::channel::<()>();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = Thread::spawn("execgate-audit", move || {
            // A message or a disconnect both mean stop.
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                let Some(inner) = weak.upgrade() else { return };
                inner.tick();
            }
        });
        spawned.ok().map(|handle| (tx, handle))
    }

    /// In the child of a `fork` the ticker thread is the parent's: the
    /// child's first append starts one of its own, so a long-lived forked
    /// worker's batch fsyncs and `interval` checkpoints keep their time.
    fn ticking(&self) {
        let now = fork::generation();
        if self.ticking_in.load(Ordering::Relaxed) == now || self.inner.path.is_none() {
            return;
        }
        let mut ticker = self.ticker.lock();
        if self.ticking_in.swap(now, Ordering::Relaxed) == now {
            return;
        }
        if let Some((stop, parents)) = ticker.take() {
            // Nothing to stop or wait for here (the channel is the parent's
            // thread's too).
            std::mem::forget(stop);
            parents.join();
        }
        *ticker = self.spawn_ticker();
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// What kind of record [`Inner::write_record`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seal {
    /// As the signing mode says.
    Mode,
    /// Signed whatever the mode (recovery records).
    Signed,
    /// A `state` record: signed, holding the fold and its own offset.
    State,
    /// A checkpoint: signed, and naming this writer's unsealed records.
    Checkpoint,
}

impl Inner {
    fn new(
        path: Option<PathBuf>,
        key: SigningKey,
        options: AuditOptions,
        known_len: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            path,
            verify_key: key.verify_key(),
            handoff_key: key.derive(handoff::KEY_PURPOSE),
            key,
            options,
            state: Mutex::new(State {
                file: None,
                locked: false,
                in_flight: 0,
                batch: 0,
                written: (0, None),
                failed: None,
                closed: false,
                closed_why: None,
                generation: fork::generation(),
                seq: 0,
                head: None,
                known_len,
                known_ctime: None,
                last_line: None,
                shared: false,
                identity: (0, 0),
                pending: Vec::new(),
                unsigned: 0,
                last_signed: Instant::now(),
                dirty: false,
                fold: None,
                since_state: 0,
                rebuilt_from: None,
                state_bytes: 0,
                bytes_since_state: 0,
            }),
            progress: Condvar::new(),
            later: Later::default(),
            tick_due: AtomicBool::new(false),
        })
    }

    fn path_for_errors(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("<memory>"))
    }

    fn append(&self, body: &Body) -> Result<Receipt> {
        self.append_as(body, None)
    }

    /// Appends `body` as a record with `id` (else a new one).
    pub(super) fn append_as(&self, body: &Body, id: Option<String>) -> Result<Receipt> {
        self.append_checked(body, false, id)?
            .map_err(|reason| io_error(self.path_for_errors(), "cannot append", reason))
    }

    pub(super) fn later(&self) -> &Later {
        &self.later
    }

    fn closed_error(&self, st: &State) -> CoreError {
        let why = st.closed_why.as_deref().unwrap_or("the log is closed");
        io_error(self.path_for_errors(), "cannot append", why)
    }

    /// The writer's state, this process's: in the child of a fork, first
    /// [`Inner::adopt`]ed.
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock();
        if st.generation != fork::generation() {
            self.adopt(&mut st);
        }
        st
    }

    /// Makes a forked child's copy of the writer its own (see
    /// [`super::fork`]): a file description of its own (so the file lock
    /// excludes the parent), nothing of the parent's in flight, locked or
    /// left to seal (the parent seals its records), and the head as last
    /// written (the parent's later records are found under the lock, as
    /// another writer's). A child that cannot reopen the file finds the log
    /// closed, saying why.
    fn adopt(&self, st: &mut State) {
        st.generation = fork::generation();
        st.locked = false;
        st.in_flight = 0;
        st.batch = 0;
        st.failed = None;
        (st.seq, st.head) = st.written.clone();
        st.pending.clear();
        st.unsigned = 0;
        st.last_line = None;
        st.shared = true;
        let (Some(path), Some(_)) = (&self.path, &st.file) else {
            return;
        };
        let reopened = open_log(path, false).and_then(|file| {
            let meta = file.metadata()?;
            if (meta.dev(), meta.ino()) == st.identity {
                Ok(file)
            } else {
                Err(std::io::Error::other(
                    "the path names another file than the one the parent wrote",
                ))
            }
        });
        match reopened {
            Ok(file) => st.file = Some(Arc::new(file)),
            Err(e) => {
                st.file = None;
                st.closed = true;
                st.closed_why = Some(format!(
                    "a forked process could not reopen the log it inherited: {e}"
                ));
            }
        }
    }

    /// Chains `body` under the mutex, signs it outside, writes it in chain
    /// order (see the module notes), then does what falls due once no record
    /// is in flight (a checkpoint, a `state` record, a rotation).
    fn append_checked(
        &self,
        body: &Body,
        admit: bool,
        id: Option<String>,
    ) -> Result<std::result::Result<Receipt, String>> {
        if id.is_none() {
            // A queued record that failed fails the next record appended
            // for a caller (not the writer thread's own next one).
            if let Some(why) = self.later.take_failure() {
                return Err(io_error(self.path_for_errors(), "cannot append", why));
            }
        }
        let mut st = self.lock();
        // After a failed write, the records in flight must fail before the
        // chain continues from the file's real head.
        while !st.closed && (st.failed.is_some() || st.batch >= MAX_BATCH) {
            self.progress.wait(&mut st);
        }
        if st.closed {
            return Err(self.closed_error(&st));
        }
        let unsigned = match self.reserve(&mut st, body, Seal::Mode, admit, id)? {
            Ok(unsigned) => unsigned,
            Err(reason) => return Ok(Err(reason)),
        };
        let seq = unsigned.seq();
        let key = self.signs(Seal::Mode).then_some(&self.key);
        let sealed = MutexGuard::unlocked(&mut st, || unsigned.seal(key));
        let receipt = self.finish(&mut st, seq, sealed, Seal::Mode)?;
        if st.in_flight == 0 {
            self.after_append(&mut st)?;
        }
        Ok(Ok(receipt))
    }

    /// What falls due after appends, with no record in flight.
    fn after_append(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        if let Signing::Checkpoint { every, .. } = self.options.signing {
            if st.unsigned >= every {
                self.write_checkpoint(st)?;
            }
        }
        if self.state_due(st) {
            // A snapshot only saves time on the next open: failing to write
            // one (the line is cut back) never fails the record it follows.
            let _ = self.write_state(st);
        }
        let limit = self.options.rotate_bytes;
        if limit > 0 && st.file.is_some() && st.known_len.unwrap_or(0) >= limit {
            // The record is written; a rotation that fails is tried again
            // on the next append.
            let _ = self.rotate(st);
        }
        Ok(())
    }

    /// Waits until no record is in flight (for work that reads or replaces
    /// the file, or names this writer's records).
    fn drain(&self, st: &mut MutexGuard<'_, State>) {
        while st.in_flight > 0 {
            self.progress.wait(st);
        }
    }

    /// Whether a record of this kind is signed.
    fn signs(&self, seal: Seal) -> bool {
        seal != Seal::Mode || self.options.signing == Signing::Record
    }

    /// Chains, signs and writes one record without letting go of the mutex
    /// (checkpoints, `state`, rotation records: the rare ones).
    fn write_record(
        &self,
        st: &mut MutexGuard<'_, State>,
        body: &Body,
        seal: Seal,
    ) -> Result<Receipt> {
        self.drain(st);
        let unsigned = self
            .reserve(st, body, seal, false, None)?
            .map_err(|reason| io_error(self.path_for_errors(), "cannot append", reason))?;
        let seq = unsigned.seq();
        let sealed = unsigned.seal(self.signs(seal).then_some(&self.key));
        self.finish(st, seq, sealed, seal)
    }

    /// Takes the next `seq` and the head for `body`: under the file lock
    /// (taken, and the head checked, when this writer does not hold it yet).
    /// With `admit`, the fold (caught up with other writers' records and
    /// holding every record chained before) may refuse the record first.
    /// The record must then be passed to [`Inner::finish`].
    fn reserve(
        &self,
        st: &mut State,
        body: &Body,
        seal: Seal,
        admit: bool,
        id: Option<String>,
    ) -> Result<std::result::Result<Unsigned, String>> {
        if let Some(file) = st.file.clone() {
            if !st.locked {
                let path = self.path_for_errors();
                lock_exclusive(&file).map_err(|e| io_error(path, "cannot lock", e))?;
                st.locked = true;
                if let Err(e) = self.sync_head(st, &file) {
                    self.unlock_if_idle(st);
                    return Err(e);
                }
            }
        }
        let result = (|| {
            if admit {
                if let Some(Err(reason)) = st.fold.as_ref().map(|f| f.admits(body)) {
                    return Ok(Err(reason));
                }
            }
            let unsigned = self.prepare(st, body, seal, id)?;
            let bound = unsigned.envelope_len_bound() as u64 + 1;
            if bound > MAX_RECORD_BYTES {
                return Err(io_error(
                    self.path_for_errors(),
                    "cannot append",
                    format!(
                        "the record is about {bound} bytes, more than a record may be \
                         ({MAX_RECORD_BYTES})"
                    ),
                ));
            }
            self.advance_chain(st, &unsigned, seal);
            if let Some(fold) = &st.fold {
                fold.fold(body);
            }
            if st.file.is_some() {
                st.in_flight += 1;
                st.batch += 1;
            }
            Ok(Ok(unsigned))
        })();
        if !matches!(result, Ok(Ok(_))) {
            self.unlock_if_idle(st);
        }
        result
    }

    /// Writes a record [`Inner::reserve`] chained (`sealed`: signed, or the
    /// error that stopped it) when its turn comes; a failure fails the
    /// records chained after it too. Releases the file lock when no record
    /// is left in flight.
    fn finish(
        &self,
        st: &mut MutexGuard<'_, State>,
        seq: u64,
        sealed: Result<Receipt>,
        seal: Seal,
    ) -> Result<Receipt> {
        let Some(file) = st.file.clone() else {
            return sealed; // in memory: nothing to write
        };
        let doomed = |st: &State| st.failed.as_ref().filter(|(from, _)| *from <= seq).cloned();
        while st.written.0 + 1 != seq && doomed(st).is_none() {
            self.progress.wait(st);
        }
        let result = match (doomed(st), sealed) {
            (Some((_, why)), _) => Err(io_error(self.path_for_errors(), "cannot append", why)),
            (None, Ok(receipt)) => self.write_line(st, &file, &receipt, seal).map(|()| receipt),
            (None, Err(e)) => Err(e),
        };
        if let Err(e) = &result {
            if st.failed.is_none() {
                self.fail_from(st, seq, e.to_string());
            }
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        self.unlock_if_idle(st);
        self.progress.notify_all();
        result
    }

    /// Record `seq` could not be written: it and the records chained after
    /// it are lost, and the chain goes back to the last record written.
    fn fail_from(&self, st: &mut State, seq: u64, why: String) {
        st.failed = Some((
            seq,
            format!("a record chained before this one was not written: {why}"),
        ));
        let (last, head) = st.written.clone();
        st.seq = last;
        st.head = head;
        forget_unsealed_after(st, last);
    }

    /// Releases the file lock once no record is in flight; after a failed
    /// write, first brings the fold back to the file (see [`Inner::refold`]).
    fn unlock_if_idle(&self, st: &mut State) {
        if st.in_flight > 0 || !st.locked {
            return;
        }
        if st.failed.take().is_some() {
            self.refold(st);
        }
        if let Some(file) = st.file.clone() {
            self.hand_off(st, &file);
            // Closing the descriptor would release it too; an error here
            // leaves nothing to undo.
            let _ = file.unlock();
        }
        st.locked = false;
        st.batch = 0;
    }

    /// Before the file lock is let go: after writing, leaves the hand-off
    /// note for the next writer (see [`super::handoff`]) once another writer
    /// has been seen, and remembers the change time this writer's writes and
    /// the note left.
    fn hand_off(&self, st: &mut State, file: &File) {
        let Some(line) = st.last_line.take() else {
            return;
        };
        if let (true, Some(len), Some(digest)) = (st.shared, st.known_len, &st.written.1) {
            // Best effort: without a note the next writer verifies the head.
            let _ = handoff::leave(
                file,
                &self.handoff_key,
                st.identity,
                len,
                st.written.0,
                digest,
                &line,
            );
        }
        note_own_change(st, file);
    }

    /// The fold took every record as it was chained, so after a failed write
    /// it holds records the file does not (a limit would stay spent by calls
    /// that were denied): it is rebuilt from the file, still under the lock.
    /// If that fails it keeps what it had: limits err towards refusing.
    fn refold(&self, st: &mut State) {
        let (Some(fold), Some(file)) = (st.fold.clone(), st.file.clone()) else {
            return;
        };
        let before = fold.snapshot();
        let limit = search_limit(self.options.state_every);
        match rebuild(
            &file,
            st.known_len.unwrap_or(0),
            &self.verify_key,
            fold.as_ref(),
            limit,
        ) {
            Ok(rebuilt) => {
                st.since_state = rebuilt.folded;
                st.rebuilt_from = rebuilt.from_seq;
            }
            Err(_) => {
                let _ = fold.restore(&before);
            }
        }
    }

    /// Chains, signs and writes one record at once (the file lock held, no
    /// record in flight): the recovery records [`Inner::sync_head`] writes.
    fn write_now(&self, st: &mut State, file: &File, body: &Body, seal: Seal) -> Result<()> {
        let unsigned = self.prepare(st, body, seal, None)?;
        self.advance_chain(st, &unsigned, seal);
        if let Some(fold) = &st.fold {
            fold.fold(body);
        }
        let receipt = unsigned.seal(self.signs(seal).then_some(&self.key))?;
        self.write_line(st, file, &receipt, seal)
    }

    /// Appends `receipt` as one line (the file lock held).
    fn write_line(&self, st: &mut State, file: &File, receipt: &Receipt, seal: Seal) -> Result<()> {
        let path = self.path_for_errors();
        let mut line = Vec::with_capacity(receipt.envelope().len() + 1);
        line.extend_from_slice(receipt.envelope().as_bytes());
        line.push(b'\n');
        let start = st.known_len.unwrap_or(0);
        if let Err(e) = (&*file).write_all(&line) {
            // Never leave a partial line behind: cut back to where we started.
            let _ = file.set_len(start);
            note_own_change(st, file);
            return Err(io_error(path, "cannot append", e));
        }
        if self.options.durability == Durability::Always || seal == Seal::Signed {
            file.sync_data()
                .map_err(|e| io_error(path, "cannot sync", e))?;
        } else {
            st.dirty = true;
        }
        let written = line.len() as u64;
        st.known_len = Some(start.saturating_add(written));
        self.tick_due.store(true, Ordering::Relaxed);
        // The change time is taken once the lock is let go (`hand_off`).
        st.last_line = Some(line);
        if seal == Seal::State {
            st.state_bytes = written;
            st.bytes_since_state = 0;
        } else {
            st.bytes_since_state += written;
        }
        st.written = (receipt.seq(), Some(receipt.digest().to_string()));
        Ok(())
    }

    /// The record's canonical payload: `body` with the chain fields (its
    /// `id` given, or a new one).
    fn prepare(&self, st: &State, body: &Body, seal: Seal, id: Option<String>) -> Result<Unsigned> {
        let id = id.unwrap_or_else(new_id);
        let seq = st.seq + 1;
        let mut chain = Body::new();
        chain
            .set_u64("v", FORMAT_VERSION)
            .set_str("id", &id)
            .set_u64("seq", seq)
            .set_str("ts", &now_rfc3339())
            .set_str("kid", self.key.kid())
            .set_str("signing", self.options.signing.as_str());
        match &st.head {
            Some(head) => chain.set_str("prev", head),
            None => chain.set("prev", Json::Null),
        };
        if seal == Seal::Checkpoint {
            // Computed here, after the head was re-read under the lock: only
            // records this writer wrote and that are still in the chain.
            chain.set_canonical("sealed", &json!(st.pending))?;
        }
        if seal == Seal::State {
            // Also after the head was re-read, with no record in flight: the
            // fold holds every record before this one, and `offset` is where
            // this one starts.
            chain
                .set_canonical_with("state", |out| match &st.fold {
                    Some(fold) => fold.write_snapshot(out),
                    None => {
                        out.extend_from_slice(b"null");
                        Ok(())
                    }
                })?
                .set_u64("offset", st.known_len.unwrap_or(0));
        }
        Unsigned::new(body, &chain, id, seq)
    }

    /// Moves the head to a record just chained.
    fn advance_chain(&self, st: &mut State, record: &Unsigned, seal: Seal) {
        let seq = record.seq();
        st.seq = seq;
        st.head = Some(record.digest().to_string());
        if seal == Seal::State {
            st.since_state = 0;
        } else {
            st.since_state += 1;
        }
        if !self.signs(seal) {
            st.unsigned += 1;
            match st.pending.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ => st.pending.push((seq, seq)),
            }
        } else if seal == Seal::Checkpoint {
            st.unsigned = 0;
            st.pending.clear();
            st.last_signed = Instant::now();
        }
    }

    /// Closes this file's part of the chain and starts the next file (see
    /// [`AuditLog::rotate`]). Returns the archived file's path.
    fn rotate(&self, st: &mut MutexGuard<'_, State>) -> Result<PathBuf> {
        self.drain(st);
        let path = self.path_for_errors().to_path_buf();
        if st.closed || st.file.is_none() {
            return Err(io_error(
                &path,
                "cannot rotate",
                "the log is closed or in memory",
            ));
        }
        // Seal this writer's unsigned records inside the file they are in.
        if st.unsigned > 0 {
            self.write_checkpoint(st)?;
        }
        let Some(old) = st.file.take() else {
            return Err(io_error(&path, "cannot rotate", "the log is closed"));
        };
        let result = (|| {
            let _lock = FileLock::acquire(&old, &path)?;
            self.sync_head(st, &old)?;
            let archive = PathBuf::from(format!("{}.{:020}", path.display(), st.seq));
            old.sync_all()
                .map_err(|e| io_error(&path, "cannot sync", e))?;
            if std::fs::symlink_metadata(&archive).is_ok() {
                return Err(io_error(
                    &archive,
                    "cannot rotate",
                    "the archive name is taken",
                ));
            }
            std::fs::rename(&path, &archive).map_err(|e| io_error(&path, "cannot rotate", e))?;
            let new = OpenOptions::new()
                .create_new(true)
                .append(true)
                .read(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| io_error(&path, "cannot create the next file", e))?;
            let meta = new
                .metadata()
                .map_err(|e| io_error(&path, "cannot stat", e))?;
            Ok((archive, new, meta.dev(), meta.ino(), ctime(&meta)))
        })();
        let (archive, new, dev, ino, changed) = match result {
            Ok(r) => r,
            Err(e) => {
                st.file = Some(old);
                return Err(e);
            }
        };
        let bytes = st.known_len.unwrap_or(0);
        st.file = Some(Arc::new(new));
        st.identity = (dev, ino);
        st.known_len = Some(0);
        st.known_ctime = Some(changed);
        st.last_line = None;
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut body = Body::new();
        body.set("kind", json!("rotation")).set(
            "rotated",
            json!({"from": name, "seq": st.seq, "sha256": st.head, "bytes": bytes}),
        );
        self.write_record(st, &body, Seal::Signed)?;
        if st.fold.is_some() && self.options.state_every > 0 {
            // The next file opens on its own: it starts with the ledger.
            let _ = self.write_state(st);
        }
        Ok(archive)
    }

    /// Every `state_every` records, and never before the log has grown by
    /// the last snapshot's size since it: a large state (long rate windows)
    /// is written less often, so snapshots stay at most half of the log and
    /// opening reads at most about twice the state.
    fn state_due(&self, st: &State) -> bool {
        st.fold.is_some()
            && self.options.state_every > 0
            && st.since_state >= self.options.state_every
            && st.bytes_since_state >= st.state_bytes
    }

    /// A signed `state` record holding the fold (see [`super::state`]).
    fn write_state(&self, st: &mut MutexGuard<'_, State>) -> Result<Receipt> {
        let mut body = Body::new();
        body.set("kind", json!("state"));
        self.write_record(st, &body, Seal::State)
    }

    /// Attaches `fold` (or returns the one already attached): rebuilds it
    /// from the last trusted `state` record and the records after it, under
    /// the file lock, and keeps it in step from then on.
    fn attach_state(&self, fold: Arc<dyn StateFold>) -> Result<Arc<dyn StateFold>> {
        let mut st = self.lock();
        self.drain(&mut st);
        if let Some(existing) = &st.fold {
            return Ok(existing.clone());
        }
        let Some(file) = st.file.clone() else {
            if st.closed {
                return Err(io_error(
                    self.path_for_errors(),
                    "cannot read",
                    "the log is closed",
                ));
            }
            // In-memory chain: nothing to rebuild from.
            st.fold = Some(fold.clone());
            return Ok(fold);
        };
        let result: Result<()> = (|| {
            let path = self.path_for_errors();
            let _lock = FileLock::acquire(&file, path)?;
            self.sync_head(&mut st, &file)?;
            let len = st.known_len.unwrap_or(0);
            let limit = search_limit(self.options.state_every);
            let rebuilt = rebuild(&file, len, &self.verify_key, fold.as_ref(), limit)
                .map_err(|e| io_error(path, "cannot read to rebuild state", e))?;
            st.since_state = rebuilt.folded;
            st.rebuilt_from = rebuilt.from_seq;
            st.fold = Some(fold.clone());
            self.hand_off(&mut st, &file);
            Ok(())
        })();
        result?;
        if self.state_due(&st) {
            let _ = self.write_state(&mut st);
        }
        Ok(fold)
    }

    /// A signed record whose signature vouches for this writer's unsigned
    /// records since its last checkpoint, which it names in `sealed`.
    fn write_checkpoint(&self, st: &mut MutexGuard<'_, State>) -> Result<Receipt> {
        let mut body = Body::new();
        body.set("kind", json!("checkpoint"));
        self.write_record(st, &body, Seal::Checkpoint)
    }

    /// Checks that the path still names this writer's file; when the file's
    /// length is not what this writer left, re-reads and checks the head and
    /// recovers what it finds. Called with the file lock held.
    fn sync_head(&self, st: &mut State, file: &File) -> Result<()> {
        let path = self.path_for_errors();
        let audit = |message: String| CoreError::Audit {
            message,
            path: path.display().to_string(),
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == st.identity => {}
            Ok(m) => {
                return Err(audit(format!(
                    "the log path now names another file (inode {} where this writer opened \
                     inode {}): it was replaced or rotated away; refusing to write \
                     (reopen the log to continue)",
                    m.ino(),
                    st.identity.1
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(audit(
                    "the log file was unlinked or moved away since this writer opened it; \
                     refusing to write where no one will read (reopen the log to continue)"
                        .into(),
                ))
            }
            Err(e) => return Err(io_error(path, "cannot stat", e)),
        }
        let meta = file
            .metadata()
            .map_err(|e| io_error(path, "cannot stat", e))?;
        let len = meta.len();
        let in_place = Some(len) == st.known_len;
        if in_place && st.known_ctime == Some(ctime(&meta)) {
            return Ok(());
        }
        let expected = st.known_len.map(|known| (known, st.seq, st.head.clone()));
        // The file changed under this writer: someone else writes it too.
        st.shared |= expected.is_some();
        // Another writer's note vouches for the head: nothing to parse or
        // verify (not for a file written in place, whose lines are re-linked).
        let vouched = (!in_place)
            .then(|| handoff::vouched(file, &self.handoff_key, st.identity, len))
            .flatten();
        let tail = match vouched {
            Some(_) => Tail {
                good_len: len,
                last: None,
            },
            None => scan_tail(file, len).map_err(|e| io_error(path, "cannot read", e))?,
        };
        let mut notes: Vec<Body> = Vec::new();
        let mut rewritten = false;
        if in_place {
            // Written without growing: an in-place rewrite (or only a chmod or
            // a touch). The whole chain is re-linked to find a rewritten
            // record; a rewritten last record is caught below.
            if let Some(broken) =
                first_broken_link(file, len).map_err(|e| io_error(path, "cannot read", e))?
            {
                rewritten = true;
                forget_unsealed_after(st, broken.before.saturating_sub(1));
                notes.push(Body::from(recovery_body(
                    "rewritten",
                    format!(
                        "the log was written in place (its length, {len} bytes, did not change): \
                         line {} no longer chains to the record before it ({})",
                        broken.line, broken.why
                    ),
                    json_map(
                        json!({"line": broken.line, "after_seq": broken.before, "bytes": len}),
                    ),
                )));
            }
        }
        if tail.good_len < len {
            let moved = move_aside(file, path, tail.good_len, len)
                .map_err(|(p, what, e)| io_error(&p, &what, e))?;
            notes.push(Body::from(recovery_body(
                "torn_tail",
                "torn last line (a writer stopped mid-record)".into(),
                json_map(json!({
                    "bytes": moved.bytes,
                    "sha256": moved.sha256,
                    "side_file": moved.side_file.display().to_string(),
                })),
            )));
        }
        let head = match &tail.last {
            None => None,
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    audit("the last record is not UTF-8, refusing to extend the chain".into())
                })?;
                Some(Receipt::from_json(text).map_err(|e| {
                    audit(format!(
                        "the last record cannot be read, refusing to extend the chain: {e}"
                    ))
                })?)
            }
        };
        let (found_seq, found_digest) = match vouched {
            Some(v) => (v.seq, Some(v.digest)),
            None => (
                head.as_ref().map_or(0, Receipt::seq),
                head.as_ref().map(|h| h.digest().to_string()),
            ),
        };
        // Shorter than this writer left it: records it wrote or saw are gone.
        if let Some((known, seq, digest)) = &expected {
            if tail.good_len < *known {
                notes.push(Body::from(recovery_body(
                    "truncated",
                    format!(
                        "the log was cut from {known} to {} bytes below this writer's head: \
                         records after seq {found_seq} up to seq {seq} are missing",
                        tail.good_len
                    ),
                    json_map(json!({
                        "expected": {"seq": seq, "sha256": digest, "bytes": known},
                        "found": {"seq": found_seq, "sha256": found_digest, "bytes": tail.good_len},
                    })),
                )));
                // Unsealed records past the cut are not this writer's to seal
                // any more: their seq numbers will be reused.
                forget_unsealed_after(st, found_seq);
            } else if found_seq <= *seq && found_digest != *digest {
                rewritten = true;
                // The records from the replaced one on are not what this
                // writer wrote: its checkpoint must not vouch for them.
                forget_unsealed_after(st, found_seq.saturating_sub(1));
                notes.push(Body::from(recovery_body(
                    "rewritten",
                    format!(
                        "the log's last record is seq {found_seq} with another digest than \
                         this writer's head seq {seq}: records were replaced"
                    ),
                    json_map(json!({
                        "expected": {"seq": seq, "sha256": digest, "bytes": known},
                        "found": {"seq": found_seq, "sha256": found_digest, "bytes": tail.good_len},
                    })),
                )));
            }
        }
        if let Some(receipt) = &head {
            if found_digest != st.head {
                if let Some(problem) = self.unverifiable(receipt) {
                    notes.push(Body::from(recovery_body(
                        "unverified_head",
                        format!("the last record (seq {found_seq}) {problem}; chained over, not vouched for"),
                        json_map(json!({
                            "seq": found_seq,
                            "sha256": found_digest,
                            "kids": receipt.signatures().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                        })),
                    )));
                }
            }
        }
        // Records other writers appended since this one last looked: folded,
        // so this writer's next snapshot holds them too. After a truncation
        // or a rewrite the fold keeps what it had (counters never go down
        // because someone cut the file).
        if let (Some(fold), Some((known, _, _))) = (&st.fold, &expected) {
            if !rewritten && tail.good_len > *known {
                st.since_state += fold_range(file, *known, tail.good_len, fold.as_ref())
                    .map_err(|e| io_error(path, "cannot read", e))?;
                st.bytes_since_state += tail.good_len - *known;
            }
        }
        st.seq = found_seq;
        st.head = found_digest.clone();
        st.written = (found_seq, found_digest);
        st.last_line = None;
        st.known_len = Some(tail.good_len);
        st.known_ctime = (tail.good_len == len).then(|| ctime(&meta));
        for body in notes {
            self.write_now(st, file, &body, Seal::Signed)?;
        }
        Ok(())
    }

    /// Why this writer cannot vouch for a head another writer left, or `None`
    /// when it can (signed by this writer's key, or unsigned in checkpoint
    /// mode, where it is its writer's checkpoint that must seal it).
    fn unverifiable(&self, receipt: &Receipt) -> Option<String> {
        if receipt.signatures().is_empty() {
            return match self.options.signing {
                Signing::Checkpoint { .. }
                    if receipt.payload().get("signing").and_then(Json::as_str)
                        != Some("record") =>
                {
                    None
                }
                _ => Some("carries no signature (per-record signing)".into()),
            };
        }
        match receipt.verify(&self.verify_key) {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    fn seal_and_sync(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
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
        if !self.tick_due.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if let Signing::Checkpoint { interval, .. } = self.options.signing {
            // With records in flight the checkpoint waits for the next tick
            // (it must follow them in the file).
            if st.in_flight == 0 && st.unsigned > 0 && st.last_signed.elapsed() >= interval {
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
            self.idle_unless_unsealed(&st);
            drop(st);
            if dup.sync_data().is_err() {
                self.lock().dirty = true;
                self.tick_due.store(true, Ordering::Relaxed);
            }
            return;
        }
        self.idle_unless_unsealed(&st);
    }

    /// The ticker has nothing to do until the next record, unless records
    /// wait for a checkpoint or an fsync (`st` held, as writes set it).
    fn idle_unless_unsealed(&self, st: &State) {
        if st.unsigned == 0 && !st.dirty {
            self.tick_due.store(false, Ordering::Relaxed);
        }
    }
}

/// Unsealed records after `seq` are not this writer's to seal any more (cut
/// from the file, replaced, or never written): its checkpoints must not seal
/// them, and their seq numbers may be reused.
fn forget_unsealed_after(st: &mut State, seq: u64) {
    st.pending.retain(|(start, _)| *start <= seq);
    if let Some((_, end)) = st.pending.last_mut() {
        *end = (*end).min(seq);
    }
    st.unsigned = st.pending.iter().map(|(a, b)| b - a + 1).sum();
}

/// Remembers the change time this writer's own write (or cut-back) left, to
/// tell a later in-place rewrite from it; unknown (so the next append
/// re-checks the file) when the length is not what this writer made it.
fn note_own_change(st: &mut State, file: &File) {
    st.known_ctime = file
        .metadata()
        .ok()
        .filter(|m| Some(m.len()) == st.known_len)
        .map(|m| ctime(&m));
}

/// A file's change time, which every write moves (and nothing but the clock
/// can set back).
fn ctime(meta: &std::fs::Metadata) -> (i64, i64) {
    (meta.ctime(), meta.ctime_nsec())
}

fn json_map(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{self, body, keyring};
    use super::super::verify_log;
    use super::*;

    fn tempdir() -> PathBuf {
        test_support::tempdir("audit")
    }

    fn checkpoints(every: u64) -> AuditOptions {
        AuditOptions {
            durability: Durability::None,
            signing: Signing::Checkpoint {
                every,
                interval: std::time::Duration::from_secs(3600),
            },
            ..AuditOptions::default()
        }
    }

    /// The ticker of a log with nothing left to seal or sync takes no lock
    /// (a fork then finds none of the log's held by it); a new record gives
    /// it work again.
    #[test]
    fn an_idle_logs_ticker_takes_no_lock() {
        let path = tempdir().join("log.jsonl");
        let options = AuditOptions {
            durability: Durability::Batch(Duration::from_secs(3600)),
            signing: Signing::Checkpoint {
                every: 1000,
                interval: Duration::from_secs(3600),
            },
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, SigningKey::generate(), options).unwrap();
        log.append(body(1)).unwrap();
        // What a ticker would do is done: sealed, not yet synced.
        log.inner.write_checkpoint(&mut log.inner.lock()).unwrap();
        let tick_while_locked = |log: &AuditLog| {
            let held = log.inner.state.lock();
            let inner = Arc::clone(&log.inner);
            let (done, ticked) = mpsc::channel();
            std::thread::spawn(move || {
                inner.tick();
                let _ = done.send(());
            });
            let finished = ticked.recv_timeout(Duration::from_millis(300)).is_ok();
            drop(held);
            finished
        };
        assert!(
            !tick_while_locked(&log),
            "a dirty log's tick needs the lock"
        );
        log.inner.tick(); // the fsync: nothing left
        assert!(tick_while_locked(&log), "an idle log's tick took the lock");
        log.append(body(2)).unwrap();
        assert!(!tick_while_locked(&log));
        log.close().unwrap();
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

    /// Threads sign outside the mutex and two writers (two open file
    /// descriptions, as two processes have) share the file lock: one chain,
    /// every seq once, in order, every record verified, in both modes.
    #[test]
    fn threads_and_writers_append_one_chain() {
        for options in [AuditOptions::default(), checkpoints(7)] {
            let dir = tempdir();
            let path = dir.join("log.jsonl");
            let key = SigningKey::generate();
            let a = Arc::new(AuditLog::open(&path, key.clone(), options).unwrap());
            let b = Arc::new(AuditLog::open(&path, key.clone(), options).unwrap());
            let handles: Vec<_> = (0..6)
                .map(|t| {
                    let log = if t % 2 == 0 { a.clone() } else { b.clone() };
                    std::thread::spawn(move || {
                        for n in 0..40 {
                            log.append(body(n)).unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            a.close().unwrap();
            b.close().unwrap();
            let report = verify_log(&path, &keyring(&key)).unwrap();
            assert!(report.ok(), "{:?}", report.failure);
            let text = std::fs::read_to_string(&path).unwrap();
            let seqs: Vec<u64> = text
                .lines()
                .map(|l| Receipt::from_json(l).unwrap().seq())
                .collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            let decisions = text
                .lines()
                .filter(|l| Receipt::from_json(l).unwrap().kind() == "decision")
                .count();
            assert_eq!(decisions, 240);
            assert_eq!(report.recoveries, 0);
        }
    }

    /// However many threads keep appending, one hold of the file lock chains
    /// at most `MAX_BATCH` records: then the lock is let go (other processes
    /// get their turn) and what fell due is written; here, a checkpoint.
    #[test]
    fn batches_are_bounded_under_many_threads() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = Arc::new(AuditLog::open(&path, key.clone(), checkpoints(4)).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..150 {
                        log.append(body(n)).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        log.close().unwrap();
        let mut run = 0u64;
        let mut longest = 0u64;
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            if Receipt::from_json(line).unwrap().kind() == "checkpoint" {
                run = 0;
            } else {
                run += 1;
                longest = longest.max(run);
            }
        }
        assert!(
            longest <= 4 - 1 + MAX_BATCH,
            "{longest} records without a checkpoint"
        );
        assert!(verify_log(&path, &keyring(&key)).unwrap().ok());
    }

    /// A write that fails after later records were chained onto it: the
    /// record and every one chained after it fail (their callers get the
    /// error), nothing of them is in the file, the chain goes back to the
    /// last record written, the fold forgets them (a limit they took is not
    /// spent), and the next append continues the chain.
    #[test]
    fn failed_write_fails_the_records_chained_after_it() {
        use crate::core::ledger::{Ledger, DEFAULT_HISTORY};
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        let fold: Arc<dyn StateFold> = Arc::new(Ledger::new(DEFAULT_HISTORY));
        let fold = log.attach_state(fold).unwrap();
        let calls = |fold: &Arc<dyn StateFold>| fold.snapshot()["sessions"][0][1].as_u64();
        let first = log.append(body(0)).unwrap();
        let inner = &log.inner;
        let mut st = inner.state.lock();
        let chained: Vec<Unsigned> = (1..=3)
            .map(|n| {
                let body = Body::from(body(n));
                inner
                    .reserve(&mut st, &body, Seal::Mode, false, None)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!((st.seq, st.in_flight, st.locked), (4, 3, true));
        assert_eq!(calls(&fold), Some(4));
        // The next write fails: a descriptor that cannot write.
        let real = st.file.replace(Arc::new(File::open(&path).unwrap()));
        let mut results = Vec::new();
        for (i, unsigned) in chained.into_iter().enumerate() {
            let seq = unsigned.seq();
            let sealed = unsigned.seal(Some(&inner.key));
            results.push(inner.finish(&mut st, seq, sealed, Seal::Mode));
            if i == 0 {
                st.file = real.clone();
            }
        }
        let errors: Vec<String> = results
            .into_iter()
            .map(|r| r.unwrap_err().to_string())
            .collect();
        assert!(errors[0].contains("Bad file descriptor"), "{errors:?}");
        for e in &errors[1..] {
            assert!(
                e.contains("a record chained before this one was not written"),
                "{e}"
            );
        }
        assert_eq!((st.seq, st.in_flight, st.locked), (1, 0, false));
        assert_eq!(st.head.as_deref(), Some(first.digest()));
        assert!(st.failed.is_none());
        drop(st);
        assert_eq!(
            calls(&fold),
            Some(1),
            "the fold still counts records not written"
        );
        assert_eq!(log.append(body(4)).unwrap().seq(), 2);
        log.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        let ns: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| Receipt::from_json(l).unwrap())
            .filter(|r| r.kind() == "decision")
            .map(|r| r.payload()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, [0, 4]);
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

    /// A correctly chained record without a signature, appended by someone
    /// without the key, is never vouched for by the next genuine record.
    #[test]
    fn unsigned_record_is_not_sealed_by_the_next_signed_one() {
        let key = SigningKey::generate();
        for signing in [json!("checkpoint"), json!("record"), Json::Null] {
            let dir = tempdir();
            let path = dir.join("log.jsonl");
            let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
            let first = log.append(body(1)).unwrap();
            let mut forged = first.payload().clone();
            forged.insert("decision".into(), json!("allow"));
            forged.insert("id".into(), json!("forged"));
            forged.insert("seq".into(), json!(2));
            forged.insert("prev".into(), json!(first.digest()));
            forged.insert("signing".into(), signing.clone());
            let forged = Receipt::seal(&forged.into(), None).unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            writeln!(f, "{}", forged.envelope()).unwrap();
            // The writer notices it cannot verify the head and says so.
            assert_eq!(log.append(body(3)).unwrap().seq(), 4);
            log.close().unwrap();
            let report = verify_log(&path, &keyring(&key)).unwrap();
            let failure = report.failure.expect("forged record must fail");
            assert_eq!(failure.line, 2, "{signing}: {}", failure.reason);
            let text = std::fs::read_to_string(&path).unwrap();
            let recovery = Receipt::from_json(text.lines().nth(2).unwrap()).unwrap();
            assert_eq!(recovery.kind(), "recovery");
            assert_eq!(recovery.payload()["recovered"]["cause"], "unverified_head");
        }
    }

    #[test]
    fn record_signed_by_an_unknown_key_in_the_middle_fails() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(1)).unwrap();
        log.close().unwrap();
        let intruder = SigningKey::generate();
        let other = AuditLog::open(&path, intruder, AuditOptions::default()).unwrap();
        other.append(body(2)).unwrap();
        other.close().unwrap();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(3)).unwrap();
        log.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        let failure = report.failure.expect("unknown key must fail");
        assert_eq!(failure.line, 2);
        assert!(failure.reason.contains("unknown key"), "{}", failure.reason);
    }

    /// In checkpoint mode a forged unsigned record between the writer's own
    /// records is not named by the writer's checkpoint, so it stays unsealed.
    #[test]
    fn checkpoint_seals_only_its_writers_records() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), checkpoints(100)).unwrap();
        let a = log.append(body(1)).unwrap();
        let mut forged = a.payload().clone();
        forged.insert("seq".into(), json!(2));
        forged.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
        forged.insert("prev".into(), json!(a.digest()));
        forged.insert("decision".into(), json!("allow"));
        let forged = Receipt::seal(&forged.into(), None).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{}", forged.envelope()).unwrap();
        log.append(body(3)).unwrap();
        log.close().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last = Receipt::from_json(text.lines().last().unwrap()).unwrap();
        assert_eq!(last.kind(), "checkpoint");
        assert_eq!(last.payload()["sealed"], json!([[1, 1], [3, 3]]));
        let report = verify_log(&path, &keyring(&key)).unwrap();
        let failure = report.failure.expect("forged record must stay unsealed");
        assert_eq!(failure.line, 2, "{}", failure.reason);
        assert!(failure.reason.contains("covered by no signature"));
    }

    #[test]
    fn truncation_below_the_head_is_recorded() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        let mut cut = 0;
        for n in 0..5 {
            log.append(body(n)).unwrap();
            if n == 1 {
                cut = std::fs::metadata(&path).unwrap().len();
            }
        }
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let r = log.append(body(9)).unwrap();
        assert_eq!(r.seq(), 4); // 2 kept, the recovery record is 3
        log.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert!(!report.ok());
        assert_eq!(report.incidents.len(), 1);
        assert_eq!(report.incidents[0].line, 3);
        assert!(report.incidents[0]
            .reason
            .contains("up to seq 5 are missing"));
        // Truncated to nothing: a new chain, but one that starts by saying so.
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        std::fs::File::create(&path).unwrap();
        assert_eq!(log.append(body(0)).unwrap().seq(), 2);
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert_eq!(report.incidents.len(), 1);
    }

    #[test]
    fn replaced_or_unlinked_file_denies() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(1)).unwrap();
        std::fs::rename(&path, dir.join("rotated")).unwrap();
        let e = log.append(body(2)).unwrap_err().to_string();
        assert!(e.contains("unlinked or moved away"), "{e}");
        std::fs::write(&path, b"").unwrap();
        let e = log.append(body(2)).unwrap_err().to_string();
        assert!(e.contains("names another file"), "{e}");
        std::fs::rename(dir.join("rotated"), &path).unwrap();
        assert_eq!(log.append(body(2)).unwrap().seq(), 2);
    }

    #[test]
    fn symlink_at_the_path_is_refused() {
        let dir = tempdir();
        let target = dir.join("target");
        std::fs::write(&target, b"").unwrap();
        let path = dir.join("log.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = AuditLog::open(&path, SigningKey::generate(), AuditOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn large_torn_tail_opens_in_linear_time() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(1)).unwrap();
        log.close().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let junk = vec![b'x'; 32 * 1024 * 1024];
        f.write_all(&junk).unwrap();
        let start = Instant::now();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        let took = start.elapsed();
        // Quadratic took 74 s here; linear is well under a second. Generous bound.
        assert!(took.as_secs() < 20, "{took:?}");
        assert_eq!(log.append(body(2)).unwrap().seq(), 3);
    }
}
