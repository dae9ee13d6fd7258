//! Fuzz targets (bodies in `tests/fuzz/targets.rs`). Under `cargo test`
//! (`make fuzz-smoke`) each runs as a bolero property test over its
//! committed seed corpus plus generated inputs; the same bodies run
//! coverage-guided under libFuzzer from the `fuzz/` crate (`make fuzz`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate"
)]

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

/// The committed seed inputs for a target, one file each.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.push(Vec::new());
    out
}

macro_rules! fuzz_test {
    ($test:ident, $corpus:literal, $target:path) => {
        #[test]
        fn $test() {
            seeds($corpus).iter().for_each(|s| $target(s));
            bolero::check!().for_each($target);
        }
    };
}

fuzz_test!(fuzz_receipt, "receipt", targets::receipt);
fuzz_test!(fuzz_verify_log, "verify_log", targets::verify);
fuzz_test!(fuzz_jcs, "jcs", targets::jcs);
fuzz_test!(fuzz_obligations, "obligations", targets::obligations);
fuzz_test!(fuzz_redact, "redact", targets::redact);
fuzz_test!(fuzz_state, "state", targets::state);
fuzz_test!(fuzz_bundle, "bundle", targets::bundle);
