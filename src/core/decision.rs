//! What the pipeline carries: the request, the decision and its failure
//! kinds, and the gate's clock. The audit and receipt modules read these;
//! none of them imports the gate that produces them.

use std::sync::Arc;

use regorus::Value;

use super::args::Arg;
use super::error::{CoreError, Result};
use super::receipt::{Approval, Receipt};

/// Whether a deny blocks the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denied calls are blocked.
    Enforce,
    /// Every call proceeds; denials are recorded as "would deny" (for rolling
    /// out a policy).
    Audit,
}

impl Mode {
    /// `"enforce"` or `"audit"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "audit" => Ok(Self::Audit),
            other => Err(CoreError::InvalidArgument(format!(
                "mode must be \"enforce\" or \"audit\", not {other:?}"
            ))),
        }
    }
}

/// Why a decision is a fail-closed deny rather than the policy's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The entry point was undefined for this input.
    Undefined,
    /// The entry point yielded something other than a bool or a decision object.
    Type,
    /// Complete rules or functions produced conflicting values.
    Conflict,
    /// The instruction, time or memory budget ran out.
    Limit,
    /// Any other error raised while evaluating (builtin error, ...).
    Runtime,
    /// The decision could not be written to the audit log.
    Audit,
    /// An obligation is malformed, unknown, or cannot be met by this entry
    /// point (including a rate or budget limit that does not hold).
    Obligation,
    /// The policy requires human approval and none was given (pending,
    /// refused or timed out).
    Approval,
    /// The entry point refused the call before it was authorized, for a
    /// reason of its own protocol (a tool the policy's visibility rule hides).
    Refused,
    /// The shared state store (Redis) the call's limits or history live in
    /// cannot be used: unreachable, too slow, or it lost its data.
    State,
    /// The policy bundle in force is older than the gate's maximum age.
    Stale,
}

impl FailureKind {
    /// Stable lowercase name, used in `Decision.error` and receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undefined => "undefined",
            Self::Type => "type",
            Self::Conflict => "conflict",
            Self::Limit => "limit",
            Self::Runtime => "runtime",
            Self::Audit => "audit",
            Self::Obligation => "obligation",
            Self::Approval => "approval",
            Self::Refused => "refused",
            Self::State => "state",
            Self::Stale => "stale",
        }
    }
}

/// One call to authorize.
#[derive(Debug, Clone)]
pub struct Request {
    /// The action name, e.g. `fs.read`.
    pub action: String,
    /// The call's arguments bound to parameter names (an [`Arg::Map`]).
    pub args: Arg,
    /// Who is acting (an object).
    pub principal: Value,
    /// Why and where (purpose, session, tool_call_id, ...; an object).
    pub context: Value,
    /// The gate clock's reading to use instead of the system clock, as
    /// RFC 3339 UTC with a `Z` (for gates with an injected clock).
    pub time: Option<String>,
}

/// The outcome of one authorization. Immutable once the pipeline hands it out.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Whether the call may run now (in audit mode, a deny here does not block).
    pub allowed: bool,
    /// The gate's mode when deciding.
    pub mode: Mode,
    /// Reasons from the policy, or the cause of a fail-closed deny.
    pub reasons: Vec<String>,
    /// Obligations from the policy (an object; empty on failure).
    pub obligations: Value,
    /// The exact input document the policy saw.
    pub input: Value,
    /// Digest of the policy set that decided.
    pub policy_digest: Arc<str>,
    /// Entry point that was queried.
    pub entrypoint: Arc<str>,
    /// Revision of the bundle the policy came from, if it came from one.
    pub policy_revision: Option<Arc<str>>,
    /// Time spent building the input and evaluating, in nanoseconds.
    pub duration_ns: u64,
    /// Set when the deny is fail-closed rather than the policy's verdict.
    pub error: Option<FailureKind>,
    /// The human's answer, when the policy required approval and one was given.
    pub approval: Option<Approval>,
    /// The signed receipt, when the gate has a key.
    pub receipt: Option<Receipt>,
}

impl Decision {
    /// Whether the call must be stopped: denied and the gate enforces.
    pub fn blocks(&self) -> bool {
        !self.allowed && self.mode == Mode::Enforce
    }

    /// Turns the decision into a fail-closed deny. Obligations are kept for
    /// the record (they say what was asked) unless the failure is that they
    /// could not be understood.
    pub fn deny(&mut self, kind: FailureKind, reason: String) {
        self.allowed = false;
        self.reasons = vec![reason];
        self.error = Some(kind);
    }
}

/// The gate's clock: now, as RFC 3339 UTC with microseconds and a `Z`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
