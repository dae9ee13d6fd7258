//! Turning regorus diagnostics into located load errors, and finding out why
//! an entry point came out undefined.

use std::sync::OnceLock;

use regorus::Value;

use super::eval::{EvalFailure, Policy};
use super::FailureKind;
use crate::core::error::PolicyLoadError;

///
/// regorus renders errors as `--> file:line:col`, a source excerpt, then
/// `error: message`, sometimes followed by further located notes; the first
/// location and message are kept and the excerpts dropped.
#[allow(
    clippy::expect_used,
    reason = "a constant pattern, compiled by the tests"
)]
pub(super) fn parse_diagnostic(err: &dyn std::fmt::Display) -> PolicyLoadError {
    static LOCATION: OnceLock<regex::Regex> = OnceLock::new();
    let text = format!("{err:#}");
    let re = LOCATION.get_or_init(|| {
        regex::Regex::new(r"--> (.+?):(\d+):(\d+)").expect("location pattern is valid")
    });
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let message = last.trim().trim_start_matches("error: ").to_string();
    let location = re.captures(&text);
    PolicyLoadError {
        message,
        file: location.as_ref().map(|c| c[1].to_string()),
        line: location.as_ref().and_then(|c| c[2].parse().ok()),
        column: location.as_ref().and_then(|c| c[3].parse().ok()),
    }
}

pub(super) fn load_error(name: &str, err: &dyn std::fmt::Display) -> PolicyLoadError {
    let mut e = parse_diagnostic(err);
    e.file.get_or_insert_with(|| name.to_string());
    e
}

pub(super) fn entrypoint_error(entrypoint: &str, err: &dyn std::fmt::Display) -> PolicyLoadError {
    let mut e = parse_diagnostic(err);
    if e.line.is_none() {
        e.message = format!("cannot compile entrypoint {entrypoint}: {}", e.message);
    }
    e
}

impl Policy {
    /// Finds out why the entry point was undefined; returns the failure to report.
    ///
    /// The interpreter names causes best, but its builtins are not bounded (see
    /// [`super::bounds`]); a policy that calls a builtin which could exhaust
    /// memory is diagnosed by the guarded RVM with strict builtin errors instead.
    pub(super) fn diagnose(&self, input: &Value, undefined: EvalFailure) -> EvalFailure {
        let found = if self.guarded {
            self.run_vm(input, true)
        } else {
            self.interpret_with(input, true)
        };
        match found {
            Err(f) if f.kind != FailureKind::Undefined => f,
            Ok(v) if v.allow => EvalFailure {
                kind: FailureKind::Runtime,
                message: format!(
                    "policy error: {} is undefined in the compiled policy but allows in the \
                     interpreter; denying",
                    self.options.entrypoint
                ),
            },
            _ => undefined,
        }
    }
}
