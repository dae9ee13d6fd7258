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

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Obligations as a policy returns them: parsing never panics, and what the
/// pipeline accepts, the ledger's replay of the recorded obligations reads too.
fn obligations_target(bytes: &[u8]) {
    use execgate::core::obligation::{limits, Obligations};
    let value = json_of(bytes);
    let parsed = Obligations::parse(&value, &["email", "card"]);
    if parsed.is_ok() && value.is_object() {
        assert!(
            limits(&value).is_ok(),
            "accepted but not replayable: {value}"
        );
    }
}

/// The privacy router over arbitrary JSON (and arbitrary text): never panics,
/// keeps the value's shape, and dropping is idempotent.
fn redact_target(bytes: &[u8]) {
    use execgate::core::redact::{Redactor, Transform};
    use serde_json::Value as Json;
    fn shape(v: &Json) -> Json {
        match v {
            Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
            Json::Array(a) => Json::Array(a.iter().map(shape).collect()),
            _ => Json::Null,
        }
    }
    static ROUTER: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    let router =
        ROUTER.get_or_init(|| Redactor::new(&Default::default(), b"fuzz").expect("builtin router"));
    let value = json_of(bytes);
    for t in [
        Transform::Mask,
        Transform::Hash,
        Transform::Drop,
        Transform::Deny,
    ] {
        if let Ok((out, _)) = router.redact(&value, None, t, "args") {
            if !matches!(value, Json::String(_)) {
                assert_eq!(shape(&out), shape(&value));
            }
            if t == Transform::Drop {
                let (again, found) = router.redact(&out, None, t, "args").expect("re-redacts");
                assert_eq!(again, out, "dropping twice changed {value}: {found:?}");
            }
        }
    }
}

/// The ledger snapshot and the rebuild on open: arbitrary JSON restores or
/// is refused (restore then snapshot is a fixed point), and a gate's log
/// attached over arbitrary bytes never panics.
fn state_target(bytes: &[u8]) {
    use execgate::core::audit::{AuditLog, AuditOptions};
    use execgate::core::ledger::Ledger;
    let ledger = Ledger::new(4);
    if ledger.restore(&json_of(bytes)).is_ok() {
        let snap = ledger.snapshot();
        let copy = Ledger::new(4);
        copy.restore(&snap).expect("a snapshot restores");
        assert_eq!(copy.snapshot(), snap);
    }
    let dir = std::env::temp_dir().join(format!("execgate-fuzz-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("log-{:?}", std::thread::current().id()));
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, bytes).expect("write");
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(SigningKey::generate).clone();
    if let Ok(log) = AuditLog::open(&path, key, AuditOptions::default()) {
        let _ = log.attach_state(std::sync::Arc::new(Ledger::new(4)));
    }
}

#[test]
fn fuzz_obligations() {
    seeds("obligations")
        .iter()
        .for_each(|s| obligations_target(s));
    bolero::check!().for_each(obligations_target);
}

#[test]
fn fuzz_redact() {
    seeds("redact").iter().for_each(|s| redact_target(s));
    bolero::check!().for_each(redact_target);
}

#[test]
fn fuzz_state() {
    seeds("state").iter().for_each(|s| state_target(s));
    bolero::check!().for_each(state_target);
}
