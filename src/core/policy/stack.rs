//! The second line against recursion: a rule call the load-time check could
//! not see must not overflow the native stack.
//!
//! In its default (run-to-completion) mode the RVM calls rules by native
//! recursion, so unbounded recursion overflows the thread's stack and kills
//! the process. Its suspendable mode keeps rule frames on a heap stack
//! instead, where the instruction and time limits bound recursion like any
//! other work: it becomes a `limit` deny. That mode costs about a third more
//! per evaluation, so it is used only where the static check
//! ([`super::cycles`]) is blind: programs whose compiler flagged a dynamic
//! `data[...]` lookup that may call rules chosen at run time.

use regorus::rvm::Program;

/// Which load-time protections a compile applies (tests turn them off to
/// exercise the next line of defence).
#[derive(Debug, Clone, Copy)]
pub(super) struct Checks {
    /// Refuse dependency cycles at load.
    pub cycles: bool,
    /// Run every program with the explicit (heap) stack.
    pub explicit_stack: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            cycles: true,
            explicit_stack: false,
        }
    }
}

/// Whether a program may call rules the static check cannot see.
pub(super) fn needs_explicit_stack(program: &Program) -> bool {
    program.needs_runtime_recursion_check
}
