//! Rego unit tests (`test_*` rules, the `opa test` convention), run with the
//! interpreter because tests use `with`, which the RVM does not compile.

use std::sync::OnceLock;

use regorus::Value;

use super::diagnose::parse_diagnostic;
use super::{PolicySet, DEFAULT_TIMEOUT};
use crate::core::error::Result;

/// One Rego unit test: a rule named `test_*` (the `opa test` convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoTest {
    /// The file that defines it.
    pub file: String,
    /// Its full rule path, e.g. `data.execgate.test_reads_allowed`.
    pub rule: String,
}

/// The outcome of one Rego unit test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoTestOutcome {
    /// The rule evaluated to `true`.
    Passed,
    /// The rule was undefined or not `true`; the text says what it was.
    Failed(String),
    /// Evaluation raised an error.
    Error(String),
}

impl PolicySet {
    /// The `test_*` rules of the set's modules, in file order.
    #[allow(
        clippy::expect_used,
        reason = "constant patterns, compiled by the tests"
    )]
    pub fn rego_tests(&self) -> Result<Vec<RegoTest>> {
        static PACKAGE: OnceLock<regex::Regex> = OnceLock::new();
        static TEST: OnceLock<regex::Regex> = OnceLock::new();
        let package = PACKAGE.get_or_init(|| {
            regex::Regex::new(r"(?m)^\s*package\s+([A-Za-z0-9_.]+)").expect("valid pattern")
        });
        let test = TEST.get_or_init(|| {
            regex::Regex::new(r"(?m)^(test_[A-Za-z0-9_]+)\b").expect("valid pattern")
        });
        let mut out = Vec::new();
        for (file, text) in self.load()?.modules {
            let Some(pkg) = package.captures(&text).map(|c| c[1].to_string()) else {
                continue;
            };
            let mut seen = std::collections::BTreeSet::new();
            for c in test.captures_iter(&text) {
                if seen.insert(c[1].to_string()) {
                    out.push(RegoTest {
                        file: file.clone(),
                        rule: format!("data.{pkg}.{}", &c[1]),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Runs one test rule with the interpreter (tests use `with`, which the
    /// RVM does not compile). Load errors are returned as errors.
    pub fn run_rego_test(&self, rule: &str) -> Result<RegoTestOutcome> {
        let mut engine = self.load()?.engine(DEFAULT_TIMEOUT * 10)?;
        Ok(match engine.eval_rule(rule.to_string()) {
            Ok(Value::Bool(true)) => RegoTestOutcome::Passed,
            Ok(Value::Undefined) => {
                RegoTestOutcome::Failed(format!("{rule} is undefined (a condition failed)"))
            }
            Ok(other) => RegoTestOutcome::Failed(format!("{rule} is {other}, not true")),
            Err(e) => RegoTestOutcome::Error(parse_diagnostic(&e).to_string()),
        })
    }
}
