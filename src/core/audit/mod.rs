//! The audit log: JSON Lines, one DSSE envelope per line, hash-chained.
//!
//! - [`writer`]: [`AuditLog`], which appends records under a thread mutex and
//!   an exclusive `flock`, and notices what happened to its file since it last
//!   held the lock (another writer, truncation, replacement, unlinking).
//! - [`handoff`]: the MAC'd note a writer leaves on the file as it lets the
//!   lock go, so the next process trusts the head without verifying it.
//! - [`recovery`]: the linear tail scan, moving a torn tail aside, and the
//!   signed `recovery` records that name what a writer found instead of
//!   silently starting or extending a chain it cannot vouch for.
//! - [`verify`]: [`verify_log`], a streaming verifier in bounded memory, and
//!   [`ChainVerifier`], the same checks over records fed as rows; both
//!   parse and batch-verify through [`parse`] and link decisions through
//!   [`links`].
//! - [`reader`]: [`LogReader`], the records from a given `seq` on, across
//!   rotated files, for copying them elsewhere (PostgreSQL).
//!
//! The rules a log obeys (also in the README):
//! - every payload names the writer's signing mode (`signing`: `"record"` or
//!   `"checkpoint"`);
//! - in per-record mode every record carries a valid signature; an unsigned
//!   record is a failure wherever it is;
//! - in checkpoint mode an unsigned record is vouched for only by a signed
//!   `checkpoint` whose `sealed` ranges name its `seq`, and a checkpoint
//!   names only records its own writer wrote;
//! - a writer never chains onto a record it cannot verify without first
//!   writing a signed `recovery` record that names it.

mod fork;
mod handoff;
mod later;
mod links;
mod parse;
mod reader;
mod recovery;
mod state;
#[cfg(test)]
mod test_support;
mod unsealed;
mod verify;
mod writer;

use std::path::Path;
use std::time::Duration;

use super::error::CoreError;

pub use reader::{LogReader, LogRecord};
pub use state::StateFold;
pub use verify::{
    verify_log, verify_log_with_progress, verify_logs_with_progress, ChainVerifier, Incident,
    Start, VerifyFailure, VerifyReport, UNFINISHED_LISTED,
};
pub use writer::AuditLog;

/// The longest line (record) a log may hold. The writer refuses to append a
/// longer record, and the verifier and the tail scan refuse to buffer one, so
/// a hostile file cannot make either hold more than this in memory.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

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
    /// Every record is chained; a signed checkpoint seals this writer's
    /// unsigned records every `every` records, every `interval`, and on close.
    Checkpoint {
        /// Unsigned records before a checkpoint is due.
        every: u64,
        /// Longest time an unsigned record waits for its checkpoint.
        interval: Duration,
    },
}

impl Signing {
    /// The value of the payload's `signing` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// How a log writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// fsync policy.
    pub durability: Durability,
    /// Signature policy.
    pub signing: Signing,
    /// With a [`StateFold`] attached (a gate's ledger), write a signed
    /// `state` record every this many records (and at the start of a rotated
    /// file; not on close); 0 never.
    pub state_every: u64,
    /// Rotate (see [`AuditLog::rotate`]) once the file reaches this many
    /// bytes; 0 never.
    pub rotate_bytes: u64,
}

/// Default for [`AuditOptions::state_every`].
pub const DEFAULT_STATE_EVERY: u64 = 10_000;

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            durability: Durability::None,
            signing: Signing::Record,
            state_every: DEFAULT_STATE_EVERY,
            rotate_bytes: 0,
        }
    }
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Audit {
        message: format!("{what}: {e}"),
        path: path.display().to_string(),
    }
}
