//! Telling the child of a `fork` from its parent without a system call.
//!
//! A process that forks with a log open gives the child a copy of the
//! writer: its state, its background threads' handles (the threads
//! themselves stay in the parent) and its file descriptor, which shares one
//! open file description, and so one `flock`, with the parent's. A child
//! that appended through it would take the "exclusive" lock its parent
//! already holds and chain onto the same head at the same time (a
//! `multiprocessing` pool of two workers broke the chain within a few
//! hundred calls). So the writer notes the fork generation it runs in; in a
//! later one it reopens the file and forgets what was the parent's (see
//! `Inner::adopt`), and the log's threads know they are not there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

/// Forks between the process that first asked for [`generation`] and this one.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The fork handler is registered (else [`generation`] is the process id).
static COUNTED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// A number that differs in the child of a fork from the parent's: the count
/// of forks since the first call, kept by a `pthread_atfork` handler
/// registered then (a log calls this as it opens, before any fork it is to
/// survive). If the handler could not be registered, the process id (a
/// system call each time).
pub(super) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic counter
        // (async-signal-safe, as a fork handler must be); nothing to free.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(in_child)) } == 0;
        COUNTED.store(registered, Ordering::Relaxed);
    });
    if COUNTED.load(Ordering::Relaxed) {
        FORKS.load(Ordering::Relaxed)
    } else {
        u64::from(std::process::id())
    }
}
