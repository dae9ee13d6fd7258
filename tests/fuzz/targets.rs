//! The fuzz targets' bodies, shared by the bolero property run
//! (`tests/fuzz.rs`, `make fuzz-smoke`) and the coverage-guided libFuzzer
//! binaries (`fuzz/fuzz_targets/*.rs`, `make fuzz`). Each takes arbitrary
//! bytes, must never panic, and asserts what must hold of what it accepts.

use std::path::PathBuf;

use execgate::core::audit::{verify_log, ChainVerifier, StateFold};
use execgate::core::keys::{Keyring, SigningKey};
use execgate::core::receipt::{canonical_json, Receipt};

/// A fixed key for targets that need signed inputs (seed bundles are signed
/// with it). Test-only: it signs nothing outside the fuzz targets.
const FUZZ_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEILr0NvmAGU5a5JE3YZ8RpFq0bx8vTxj5tv+G3qBbJO4i\n\
-----END PRIVATE KEY-----\n";

fn fuzz_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_pem(FUZZ_KEY_PEM.as_bytes(), None).expect("fuzz key"))
}

/// A scratch path private to this process and thread.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("execgate-fuzz-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{:?}", std::thread::current().id()))
}

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Envelope/receipt parsing: what parses re-parses to the same record.
pub fn receipt(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(r) = Receipt::from_json(&text) {
        let again = Receipt::from_json(r.envelope()).expect("envelope re-parses");
        assert_eq!(again.digest(), r.digest());
        let _ = r.verify(&SigningKey::generate().verify_key());
    }
    let _ = Receipt::chain_head(&text);
}

/// The log verifier on arbitrary bytes, as a file and as rows: without a
/// key nothing is vouched for.
pub fn verify(bytes: &[u8]) {
    let path = scratch("log");
    std::fs::write(&path, bytes).expect("write");
    let report = verify_log(&path, &Keyring::new()).expect("a readable file verifies to a report");
    assert!(!report.ok() || report.records == 0, "{bytes:?}");
    // The same lines as rows (the PostgreSQL verifier's path).
    let mut rows = ChainVerifier::new(Keyring::new(), None);
    let lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    rows.push(lines.enumerate().map(|(i, l)| (i as u64 + 1, l)));
    let report = rows.finish();
    assert!(!report.ok() || report.records == 0, "{bytes:?}");
}

/// JCS: canonical output parses and is a fixed point.
pub fn jcs(bytes: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Ok(canon) = canonical_json(&value) {
            let back: serde_json::Value =
                serde_json::from_slice(&canon).expect("canonical JSON parses");
            assert_eq!(canonical_json(&back).expect("canonicalizes"), canon);
        }
    }
}

/// Obligations as a policy returns them: parsing never panics, and what the
/// pipeline accepts, the ledger's replay of the recorded obligations reads too.
pub fn obligations(bytes: &[u8]) {
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
/// keeps the value's shape (unless it rewrote a key), and dropping is
/// idempotent.
pub fn redact(bytes: &[u8]) {
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
        if let Ok((out, found)) = router.redact(&value, None, t, "args") {
            // Keys are rewritten too (a finding at `path (key)`), and that
            // changes the shape by design.
            let keys_kept = !found.iter().any(|f| f.path.ends_with(" (key)"));
            if !matches!(value, Json::String(_)) && keys_kept {
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
pub fn state(bytes: &[u8]) {
    use execgate::core::audit::{AuditLog, AuditOptions};
    use execgate::core::ledger::Ledger;
    let ledger = Ledger::new(4);
    if ledger.restore(&json_of(bytes)).is_ok() {
        let snap = ledger.snapshot();
        let copy = Ledger::new(4);
        copy.restore(&snap).expect("a snapshot restores");
        assert_eq!(copy.snapshot(), snap);
    }
    let path = scratch("state");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, bytes).expect("write");
    if let Ok(log) = AuditLog::open(&path, fuzz_key().clone(), AuditOptions::default()) {
        let _ = log.attach_state(std::sync::Arc::new(Ledger::new(4)));
    }
}

/// Bundle parsing. The bytes as a bundle (a `.tar.gz`) verified with the
/// fuzz key: refused or accepted, never a panic. Then the bytes as one file
/// of a bundle (the first byte picks which) that is built and signed with
/// that key: the reader must accept the builder's signature and hashes, so
/// a bundle that builds never fails as unsigned or tampered.
pub fn bundle(bytes: &[u8]) {
    use execgate::core::bundle::{build, Bundle, BundleKey};
    use execgate::core::error::CoreError;
    let key = fuzz_key();
    let public = BundleKey::from(key.verify_key());
    if let Ok(b) = Bundle::from_bytes(bytes, &public) {
        assert!(!b.roots.is_empty());
    }
    let Some((&pick, content)) = bytes.split_first() else {
        return;
    };
    let name = ["data.json", "a/b/data.json", "data.yaml", "x/p.rego"][usize::from(pick % 4)];
    let dir = scratch("bundle");
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join(name);
    std::fs::create_dir_all(file.parent().expect("a parent")).expect("bundle dir");
    std::fs::write(dir.join("p.rego"), "package fuzz\n\nallow := true\n").expect("write");
    std::fs::write(&file, content).expect("write");
    if let Ok(built) = build(&dir, key, Some("r1")) {
        match Bundle::from_bytes(&built, &public) {
            Err(CoreError::Signature(m)) => panic!("a built bundle fails its signature: {m}"),
            Ok(b) => assert_eq!(b.revision, "r1"),
            Err(_) => {}
        }
    }
}
