//! The one error type of the core. The Python binding maps each variant to one
//! exception class (`src/python/errors.rs`), so callers can catch by kind.

use std::path::PathBuf;

/// Everything that can go wrong in the core outside of a policy decision.
///
/// Evaluation failures are *not* errors: they become deny decisions
/// (see [`crate::core::policy::EvalFailure`]) so the gate fails closed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A policy or data document could not be loaded or compiled.
    #[error("{}", .0)]
    Policy(#[from] PolicyLoadError),

    /// A caller passed an option or value the core cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A call argument cannot be turned into policy input; the tool does not run.
    #[error("{message}")]
    Argument {
        /// What is wrong with it.
        message: String,
        /// The dotted path of the value at fault, e.g. `args.items[2]`.
        argument: String,
    },

    /// A key cannot be read, parsed or used.
    #[error("{}{message}", .path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Key {
        /// What is wrong with the key.
        message: String,
        /// The key file, when the key came from one.
        path: Option<String>,
    },

    /// A receipt or envelope is malformed or its signature does not verify.
    #[error("{0}")]
    Signature(String),

    /// A sandboxed run could not be set up as requested.
    #[error("sandbox: {0}")]
    Sandbox(String),

    /// The shared state store (Redis) cannot be reached, answered too late,
    /// or lost its data.
    #[error("shared state {0}")]
    State(String),

    /// The audit log cannot be opened, read or written.
    #[error("audit log {path}: {message}")]
    Audit {
        /// What failed.
        message: String,
        /// The log file.
        path: String,
    },
}

/// A policy or data load failure, with the location when one is known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_location(.file.as_deref(), *.line, *.column, .message))]
pub struct PolicyLoadError {
    /// What went wrong, without the location prefix.
    pub message: String,
    /// The file (or the synthetic name of a source string) at fault.
    pub file: Option<String>,
    /// 1-based line, when the parser or compiler reported one.
    pub line: Option<u32>,
    /// 1-based column, when the parser or compiler reported one.
    pub column: Option<u32>,
}

impl PolicyLoadError {
    /// A failure with no location (for example a bad option).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            file: None,
            line: None,
            column: None,
        }
    }

    /// A failure that concerns a whole file (unreadable, not JSON, ...).
    pub fn in_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            file: Some(path.into().display().to_string()),
            line: None,
            column: None,
        }
    }
}

fn render_location(
    file: Option<&str>,
    line: Option<u32>,
    column: Option<u32>,
    msg: &str,
) -> String {
    match (file, line, column) {
        (Some(f), Some(l), Some(c)) => format!("{f}:{l}:{c}: {msg}"),
        (Some(f), Some(l), None) => format!("{f}:{l}: {msg}"),
        (Some(f), _, _) => format!("{f}: {msg}"),
        _ => msg.to_string(),
    }
}

/// Result alias for the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
