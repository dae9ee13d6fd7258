//! Records appended after the call that made them has returned
//! ([`super::AuditLog::append_later`]): a guarded call's completion record.
//!
//! The caller gets its record's id at once; one writer thread per log takes
//! the queue in order and appends each record through the same path as any
//! other append (chained, signed as the mode says, written under the file
//! lock), so nothing about the log's format or its verification changes:
//! only when the record is written.
//!
//! - **Waking.** A caller never wakes the writer thread while it is busy or
//!   was busy lately: it looks at the queue every [`POLL`], so a burst of
//!   calls costs the callers no system call (waking a thread that sleeps on
//!   another CPU costs the waker more than the record's signature saves it).
//!   After [`PARK_AFTER`] with nothing to write it sleeps until a record
//!   comes; `flush` and `close` wake it at once.
//! - **Order.** Queued records are written in the order they were queued;
//!   other records may come between them. Each completion follows its
//!   decision, which was written before the tool ran.
//! - **Flushing.** [`super::AuditLog::flush`] waits until every record queued
//!   before it is written; `close()` (and so a `Gate`'s close and Python's
//!   exit) flushes before its last checkpoint and sync.
//! - **Crashes.** A process killed before the writer thread got to a record
//!   (about [`POLL`] after the call returned, in a burst) loses it: the
//!   call shows in `verify`'s `unfinished` (authorized, never completed), as
//!   a call killed mid-run does. At most [`MAX_QUEUED`] records wait; a
//!   caller that finds the queue full waits for room.
//! - **Failures.** A queued record that cannot be written fails the next
//!   append of any kind (so the next decision is denied with
//!   `error="audit"`, naming it), the next `append_later`, `flush` or
//!   `close`: once, for each failure.
//! - **Fork.** The child of a `fork` starts a writer thread of its own on its
//!   first record; what was queued at the fork is the parent's to write. The
//!   queue's lock and condition variable are the standard library's, not
//!   `parking_lot`'s: `parking_lot` keeps waiting threads in one table per
//!   process, which a child inherits with the parent's writer thread asleep
//!   in it, and the child's own waits and wake-ups then went to that thread
//!   (which does not exist there) and hung; a futex keeps its waiters in the
//!   kernel, so a child starts with none. With nothing queued the writer
//!   thread holds no lock at all (it looks at an atomic count and sleeps in
//!   `park`), so a fork after `flush()` finds the queue's lock free; a fork
//!   while a record is being queued or written may find it held, as with
//!   any lock another thread holds at a fork.
//!
//! With `durability="always"` a record is on disk before the call returns,
//! so `append_later` appends at once, as does a log kept in memory.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fork;
use super::writer::Inner;
use crate::core::receipt::{Body, Fields};

/// Records queued and not yet written, at most.
pub const MAX_QUEUED: usize = 1024;

/// How often the writer thread looks at the queue while records come.
pub const POLL: Duration = Duration::from_millis(1);

/// After this long with nothing to write, the writer thread sleeps until a
/// record is queued (and the caller queuing it wakes it).
pub const PARK_AFTER: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Queue {
    /// Bodies and the ids their records take.
    items: VecDeque<(Body, String)>,
    /// The writer thread holds a record taken from `items` and not yet
    /// written.
    writing: bool,
    /// Why the first queued record since the last report could not be
    /// written.
    failed: Option<String>,
    /// The thread is to write what is queued and end.
    stop: bool,
    thread: Option<Thread>,
}

/// A log's background thread, and the process that started it (its fork
/// generation).
pub(super) struct Thread {
    handle: JoinHandle<()>,
    generation: u64,
}

impl Queue {
    /// Ends the writer thread's sleep, if it has one.
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.handle.thread().unpark();
        }
    }
}

impl Thread {
    pub(super) fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new().name(name.into()).spawn(run)?;
        Ok(Self {
            handle,
            generation: fork::generation(),
        })
    }

    /// Whether the thread runs in this process: in the child of a `fork`,
    /// the parent's threads do not.
    fn here(&self) -> bool {
        self.generation == fork::generation()
    }

    /// Waits for the thread to end; false if it panicked. In a fork's child
    /// there is nothing to wait for (nor to detach: the handle is forgotten).
    pub(super) fn join(self) -> bool {
        if !self.here() {
            std::mem::forget(self.handle);
            return true;
        }
        self.handle.join().is_ok()
    }
}

/// The queue and its writer thread.
#[derive(Default)]
pub(super) struct Later {
    queue: Mutex<Queue>,
    /// Signalled when a record is written or failed, and on stop.
    changed: Condvar,
    /// Records queued and not yet taken, plus one once stopped: what the
    /// writer thread looks at, without the lock, while it has nothing to do.
    waiting: AtomicUsize,
    /// The writer thread sleeps until unparked (see [`PARK_AFTER`]).
    parked: AtomicBool,
}

/// A panic while the queue is locked leaves it consistent (the writer
/// thread catches its own): the lock is not treated as poisoned.
type Guard<'a> = MutexGuard<'a, Queue>;

impl Later {
    fn lock(&self) -> Guard<'_> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: Guard<'a>) -> Guard<'a> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue as this process sees it. In the child of a `fork` the
    /// writer thread and the records queued are the parent's (which writes
    /// them): the child forgets both and starts its own thread on its first
    /// record.
    fn mine<'a>(&self, q: &'a mut Queue) -> &'a mut Queue {
        if let Some(thread) = q.thread.take_if(|t| !t.here()) {
            thread.join();
            q.items.clear();
            q.writing = false;
            self.waiting.store(usize::from(q.stop), Ordering::SeqCst);
            self.parked.store(false, Ordering::SeqCst);
        }
        q
    }

    /// Queues `body` (its record to have `id`), starting the writer thread
    /// on first use; waits while the queue is full.
    pub(super) fn push(&self, inner: &Arc<Inner>, body: Body, id: String) -> Result<(), String> {
        let mut guard = self.lock();
        let q = self.mine(&mut guard);
        if let Some(why) = q.failed.take() {
            return Err(why);
        }
        if q.stop {
            return Err("the log is closed".into());
        }
        if q.thread.is_none() {
            let inner = Arc::clone(inner);
            let thread = Thread::spawn("execgate-audit-later", move || inner.later().run(&inner))
                .map_err(|e| format!("cannot start the log's writer thread: {e}"))?;
            q.thread = Some(thread);
        }
        while guard.items.len() >= MAX_QUEUED && !guard.stop {
            guard = self.wait(guard);
        }
        let q = &mut *guard;
        if q.stop {
            // Closed while this caller waited for room: the thread is gone.
            return Err("the log is closed".into());
        }
        q.items.push_back((body, id));
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            q.wake();
        }
        Ok(())
    }

    /// The writer thread: appends queued records in order until stopped,
    /// then what is left. With nothing to do it takes no lock: it looks at
    /// `waiting`, and sleeps in `park` (a futex of its own), so a process
    /// that forks after a flush leaves no lock of the log held in the child.
    fn run(&self, inner: &Inner) {
        let mut busy = Instant::now();
        loop {
            if self.waiting.load(Ordering::SeqCst) == 0 {
                if busy.elapsed() < PARK_AFTER {
                    std::thread::park_timeout(POLL);
                } else {
                    self.parked.store(true, Ordering::SeqCst);
                    // A record queued after this look unparks the thread (or
                    // leaves the token that ends the next park at once).
                    if self.waiting.load(Ordering::SeqCst) == 0 {
                        std::thread::park();
                    }
                    self.parked.store(false, Ordering::SeqCst);
                }
                continue;
            }
            let mut q = self.lock();
            let Some((body, id)) = q.items.pop_front() else {
                if q.stop {
                    return;
                }
                continue;
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            q.writing = true;
            drop(q);
            // A panic would leave `writing` set and flush waiting: it is
            // reported as this record's failure instead.
            let written = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                inner.append_as(&body, Some(id))
            })) {
                Ok(appended) => appended.map(drop).map_err(|e| e.to_string()),
                Err(_) => Err("the log's writer thread panicked".to_string()),
            };
            let mut q = self.lock();
            q.writing = false;
            if let Err(e) = written {
                let kind = body.field("kind").and_then(|k| k.as_str()).unwrap_or("a");
                q.failed.get_or_insert(format!(
                    "a {kind} record queued earlier could not be written: {e}"
                ));
            }
            busy = Instant::now();
            self.changed.notify_all();
        }
    }

    /// Takes the failure of a queued record, if one is to be reported.
    pub(super) fn take_failure(&self) -> Option<String> {
        self.lock().failed.take()
    }

    /// Waits until every record queued so far is written (or failed).
    pub(super) fn flush(&self) -> Result<(), String> {
        let mut q = self.lock();
        self.mine(&mut q).wake(); // the writer thread need not wait for its next look
        while (!q.items.is_empty() || q.writing) && q.thread.is_some() {
            q = self.wait(q);
        }
        q.failed.take().map_or(Ok(()), Err)
    }

    /// Writes what is queued and ends the writer thread; later pushes fail.
    pub(super) fn stop(&self) -> Result<(), String> {
        let thread = {
            let mut guard = self.lock();
            let q = self.mine(&mut guard);
            if !q.stop {
                q.stop = true;
                self.waiting.fetch_add(1, Ordering::SeqCst);
            }
            q.wake();
            self.changed.notify_all(); // callers waiting for room
            q.thread.take()
        };
        if let Some(thread) = thread {
            if !thread.join() {
                return Err("the log's writer thread panicked".into());
            }
        }
        self.take_failure().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{body, keyring, tempdir};
    use super::super::{verify_log, AuditLog, AuditOptions, Durability};
    use super::{MAX_QUEUED, PARK_AFTER};
    use crate::core::keys::SigningKey;
    use crate::core::receipt::Receipt;
    use std::time::{Duration, Instant};

    fn records(path: &std::path::Path) -> Vec<Receipt> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| Receipt::from_line(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn queued_records_are_written_in_order_with_the_ids_given() {
        let path = tempdir("later").join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        log.append(body(0)).unwrap();
        // More than the queue holds: the caller waits for room, nothing is lost.
        let n = MAX_QUEUED as u64 + 200;
        let ids: Vec<String> = (1..=n)
            .map(|i| log.append_later(body(i).into()).unwrap())
            .collect();
        log.flush().unwrap();
        let written = records(&path);
        assert_eq!(written.len() as u64, n + 1);
        let got: Vec<&str> = written[1..].iter().map(|r| r.id()).collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
        for (i, r) in written.iter().enumerate() {
            assert_eq!(r.payload()["n"], i as u64);
        }
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
    }

    #[test]
    fn the_writer_thread_takes_records_without_a_flush_busy_or_parked() {
        let path = tempdir("later").join("log.jsonl");
        let log = AuditLog::open(&path, SigningKey::generate(), AuditOptions::default()).unwrap();
        let written_within = |n: usize, limit: Duration| {
            let start = Instant::now();
            while records(&path).len() < n {
                assert!(
                    start.elapsed() < limit,
                    "{n} records not written in {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        log.append_later(body(0).into()).unwrap();
        written_within(1, Duration::from_secs(5));
        log.append_later(body(1).into()).unwrap(); // the thread looks again within POLL
        written_within(2, Duration::from_secs(5));
        std::thread::sleep(PARK_AFTER * 3); // now it sleeps until woken
        log.append_later(body(2).into()).unwrap();
        written_within(3, Duration::from_secs(5));
        log.close().unwrap();
    }

    #[test]
    fn close_writes_what_is_queued_and_later_appends_fail() {
        let path = tempdir("later").join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        for i in 0..50 {
            log.append_later(body(i).into()).unwrap();
        }
        log.close().unwrap();
        assert_eq!(records(&path).len(), 50);
        let e = log.append_later(body(50).into()).unwrap_err().to_string();
        assert!(e.contains("closed"), "{e}");
        assert_eq!(records(&path).len(), 50);
    }

    #[test]
    fn durability_always_and_memory_append_at_once() {
        let path = tempdir("later").join("log.jsonl");
        let options = AuditOptions {
            durability: Durability::Always,
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, SigningKey::generate(), options).unwrap();
        let id = log.append_later(body(1).into()).unwrap();
        // On disk before append_later returned: no flush.
        assert_eq!(records(&path)[0].id(), id);
        let memory = AuditLog::in_memory(SigningKey::generate(), AuditOptions::default());
        assert!(!memory.append_later(body(1).into()).unwrap().is_empty());
        assert_eq!(memory.seq(), 1);
    }

    #[test]
    fn a_queued_record_that_fails_is_reported_once() {
        let dir = tempdir("later");
        let path = dir.join("log.jsonl");
        let log = AuditLog::open(&path, SigningKey::generate(), AuditOptions::default()).unwrap();
        log.append(body(0)).unwrap();
        // The path no longer names the writer's file: its appends fail.
        std::fs::rename(&path, dir.join("moved")).unwrap();
        log.append_later(body(1).into()).unwrap();
        let e = log.flush().unwrap_err().to_string();
        assert!(
            e.contains("a decision record queued earlier could not be written")
                && e.contains("unlinked or moved away"),
            "{e}"
        );
        log.flush().unwrap(); // reported once
                              // Each queued failure is reported again (by flush, and by close).
        log.append_later(body(2).into()).unwrap();
        let e = log.flush().unwrap_err().to_string();
        assert!(e.contains("queued earlier"), "{e}");
        log.append_later(body(3).into()).unwrap();
        let e = log.close().unwrap_err().to_string();
        assert!(e.contains("queued earlier"), "{e}");
        assert_eq!(records(&dir.join("moved")).len(), 1);
    }
}
