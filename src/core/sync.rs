//! Locks that survive `fork`.
//!
//! `parking_lot` keeps the threads waiting on any of its locks in one table
//! per process. The child of a `fork` inherits that table with the parent's
//! waiting threads in it, threads that do not exist in the child, and the
//! child's own waits and wake-ups then go to them: a log whose writer thread
//! was asleep when the process forked hung the child's next `flush` or
//! `close` (Python's `multiprocessing` forks by default on Linux). The
//! standard library's locks keep their waiters in the kernel (a futex in the
//! lock itself), so a child starts with none.
//!
//! These wrappers give the standard locks the style the code is written in:
//! no poisoning (a panic while a lock is held leaves it usable, as with
//! `parking_lot`: the holders keep the state consistent), a condition
//! variable that waits on a `&mut` guard, and a guard that can let go of its
//! lock for a while ([`MutexGuard::unlocked`]).
//!
//! A lock that another thread of the parent *held* at the fork stays held in
//! the child, with every kind of lock: fork while the gate is busy in
//! another thread and the child can wait forever on it.

use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::PoisonError;
use std::time::Duration;

pub use std::sync::{RwLockReadGuard, RwLockWriteGuard};

/// A mutual-exclusion lock (see the module notes).
#[derive(Debug, Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            guard: self.0.lock().unwrap_or_else(PoisonError::into_inner),
            mutex: &self.0,
        }
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The lock of a [`Mutex`], held until dropped.
pub struct MutexGuard<'a, T> {
    guard: std::sync::MutexGuard<'a, T>,
    mutex: &'a std::sync::Mutex<T>,
}

impl<T> MutexGuard<'_, T> {
    /// Lets go of the lock while `f` runs, then takes it again (also when
    /// `f` panics, before the panic goes on).
    pub fn unlocked<R>(this: &mut Self, f: impl FnOnce() -> R) -> R {
        let mutex = this.mutex;
        let result = replace(&mut this.guard, |guard| {
            drop(guard);
            let result = catch_unwind(AssertUnwindSafe(f));
            (mutex.lock().unwrap_or_else(PoisonError::into_inner), result)
        });
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A condition variable, used with one [`Mutex`].
#[derive(Debug, Default)]
pub struct Condvar(std::sync::Condvar);

impl Condvar {
    pub const fn new() -> Self {
        Self(std::sync::Condvar::new())
    }

    /// Lets go of `guard`'s lock until notified, then takes it again.
    pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        replace(&mut guard.guard, |g| {
            (self.0.wait(g).unwrap_or_else(PoisonError::into_inner), ())
        });
    }

    /// Like [`Condvar::wait`], for at most `timeout`.
    pub fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) {
        replace(&mut guard.guard, |g| {
            let (g, _) = self
                .0
                .wait_timeout(g, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            (g, ())
        });
    }

    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A reader-writer lock (see the module notes).
#[derive(Debug, Default)]
pub struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(value))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Replaces `*slot` with what `f` makes of it (the standard guards are
/// passed by value to wait). If `f` unwinds, the process aborts: `*slot`
/// was moved out and must not be dropped again.
fn replace<G, R>(slot: &mut G, f: impl FnOnce(G) -> (G, R)) -> R {
    struct AbortOnUnwind;
    impl Drop for AbortOnUnwind {
        fn drop(&mut self) {
            std::process::abort();
        }
    }
    let bomb = AbortOnUnwind;
    // SAFETY: the value read out of `slot` is moved into `f`, and `slot` is
    // written before anything can read it again; if `f` unwinds instead of
    // returning, `bomb` aborts the process before `slot` is dropped twice.
    let result = unsafe {
        let (value, result) = f(std::ptr::read(slot));
        std::ptr::write(slot, value);
        result
    };
    std::mem::forget(bomb);
    result
}

#[cfg(test)]
mod tests {
    use super::{Condvar, Mutex, MutexGuard};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_guard_lets_go_while_unlocked_and_holds_again_after_a_panic() {
        let m = Arc::new(Mutex::new(0));
        let mut g = m.lock();
        let other = Arc::clone(&m);
        MutexGuard::unlocked(&mut g, move || {
            std::thread::spawn(move || *other.lock() += 1)
                .join()
                .unwrap();
        });
        assert_eq!(*g, 1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            MutexGuard::unlocked(&mut g, || panic!("in the closure"));
        }));
        assert!(caught.is_err());
        *g += 1; // held again, and not poisoned
        drop(g);
        assert_eq!(*m.lock(), 2);
    }

    #[test]
    fn a_waiter_wakes_on_notify_and_on_timeout() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let other = Arc::clone(&pair);
        let t = std::thread::spawn(move || {
            *other.0.lock() = true;
            other.1.notify_all();
        });
        let mut g = pair.0.lock();
        while !*g {
            pair.1.wait(&mut g);
        }
        t.join().unwrap();
        pair.1.wait_for(&mut g, Duration::from_millis(1)); // nobody notifies
        assert!(*g);
    }
}
