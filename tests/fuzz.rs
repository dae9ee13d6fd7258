//! Fuzz targets (bolero). Under `cargo test` each runs as a randomized
//! property test over its seed corpus plus generated inputs; with
//! `cargo bolero test fuzz_<name> --engine libfuzzer --sanitizer NONE` the
//! same target runs coverage-guided. `make fuzz-smoke` runs them briefly.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate"
)]

use std::path::PathBuf;

use execgate::core::audit::verify_log;
use execgate::core::keys::{Keyring, SigningKey};
use execgate::core::receipt::{canonical_json, Receipt};

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

fn receipt_target(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(r) = Receipt::from_json(&text) {
        // What parses re-parses to the same record.
        let again = Receipt::from_json(r.envelope()).expect("envelope re-parses");
        assert_eq!(again.digest(), r.digest());
        let _ = r.verify(&SigningKey::generate().verify_key());
    }
    let _ = Receipt::chain_head(&text);
}

fn verify_target(bytes: &[u8]) {
    let dir = std::env::temp_dir().join(format!("execgate-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("log-{:?}", std::thread::current().id()));
    std::fs::write(&path, bytes).expect("write");
    let report = verify_log(&path, &Keyring::new()).expect("a readable file verifies to a report");
    // Without a key nothing can be vouched for.
    assert!(!report.ok() || report.records == 0, "{bytes:?}");
}

fn jcs_target(bytes: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Ok(canon) = canonical_json(&value) {
            let back: serde_json::Value =
                serde_json::from_slice(&canon).expect("canonical JSON parses");
            assert_eq!(canonical_json(&back).expect("canonicalizes"), canon);
        }
    }
}

#[test]
fn fuzz_receipt() {
    seeds("receipt").iter().for_each(|s| receipt_target(s));
    bolero::check!().for_each(receipt_target);
}

#[test]
fn fuzz_verify_log() {
    seeds("verify_log").iter().for_each(|s| verify_target(s));
    bolero::check!().for_each(verify_target);
}

#[test]
fn fuzz_jcs() {
    seeds("jcs").iter().for_each(|s| jcs_target(s));
    bolero::check!().for_each(jcs_target);
}
