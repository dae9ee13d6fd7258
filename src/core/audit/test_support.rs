//! Helpers shared by the audit module's unit tests.

use std::path::PathBuf;

use serde_json::{json, Map, Value as Json};

use crate::core::keys::{Keyring, SigningKey};

/// A fresh directory under the system's temporary directory.
pub fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("execgate-{prefix}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A denied decision record numbered `n`.
pub fn body(n: u64) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("kind".into(), json!("decision"));
    m.insert("decision".into(), json!("deny"));
    m.insert("n".into(), json!(n));
    m
}

/// A keyring holding `key`'s public half.
pub fn keyring(key: &SigningKey) -> Keyring {
    let mut k = Keyring::new();
    k.add(key.verify_key());
    k
}
