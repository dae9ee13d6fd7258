//! OPA-format signed bundles: policies and data pushed to every runtime.
//!
//! A bundle is a gzipped tarball laid out as OPA expects
//! (`.rego` modules, `data.json` / `data.yaml` documents placed at their
//! directory's path, an optional `.manifest` with `revision` and `roots`) and
//! a `.signatures.json` holding exactly one JWT whose `files` claim lists every
//! other file of the bundle with its SHA-256. Structured files (`data.json`,
//! `data.yaml`, `.manifest`) are hashed as OPA hashes them: over their parsed
//! value, object keys sorted, no whitespace, so the signature does not depend
//! on formatting (see OPA's `bundle/hash.go` for the reference).
//!
//! Reading a bundle is reading input from the network: entry count, entry
//! sizes and the total unpacked size are capped, only regular files and
//! directories are accepted, and a name with a `..`, `.` or empty component
//! is refused. Nothing is ever written to disk from a bundle, so a name is
//! only a key; one leading `/` or `./` (OPA's own tarballs begin names with
//! `/`) means the bundle root. A bundle is usable only once its signature,
//! its exact file list and every file hash verify; its policy then compiles
//! through the ordinary [`PolicySet`] path, so a bundle that does not compile
//! is refused the same way a local policy is. Signatures and keys are in
//! [`signature`], OPA's file hashes in [`hash`].

mod hash;
mod signature;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use regorus::Value;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

pub use self::signature::BundleKey;
use super::error::{CoreError, PolicyLoadError, Result};
use super::keys::SigningKey;
use super::policy::files::read_regular_file;
use super::policy::PolicySet;

/// Most entries (files and directories) a bundle may hold.
pub const MAX_ENTRIES: usize = 4096;
/// Largest single file in a bundle, unpacked.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Largest bundle, unpacked (all entries together).
pub const MAX_UNPACKED_BYTES: u64 = 64 << 20;
/// Largest bundle file as transferred (compressed).
pub const MAX_BUNDLE_BYTES: u64 = 32 << 20;

const SIGNATURES: &str = ".signatures.json";
const MANIFEST: &str = ".manifest";
const HASH_ALGORITHM: &str = "SHA-256";

/// A verified bundle: its manifest and the policy set it holds.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest's `revision` (empty when the bundle has no manifest).
    pub revision: String,
    /// The manifest's `roots`: the data and package paths the bundle owns.
    pub roots: Vec<String>,
    set: PolicySet,
}

impl Bundle {
    /// Reads and verifies a bundle file (see [`Bundle::from_bytes`]).
    pub fn from_file(path: &Path, key: &BundleKey) -> Result<Self> {
        let bytes = read_regular_file(path, MAX_BUNDLE_BYTES)
            .map_err(|m| PolicyLoadError::in_file(path, m))?;
        Self::from_bytes(&bytes, key).map_err(|e| match e {
            CoreError::Signature(m) => CoreError::Signature(format!("{}: {m}", path.display())),
            CoreError::Policy(mut p) if p.file.is_none() => {
                p.file = Some(path.display().to_string());
                CoreError::Policy(p)
            }
            other => other,
        })
    }

    /// Unpacks `bytes` (a `.tar.gz`), verifies its `.signatures.json` with
    /// `key` and collects its modules and data. A bad signature, a file not
    /// listed, a listed file missing or a hash mismatch is a
    /// [`CoreError::Signature`]; a malformed archive, manifest or document
    /// is a [`CoreError::Policy`]. Compiling is left to the caller.
    pub fn from_bytes(bytes: &[u8], key: &BundleKey) -> Result<Self> {
        let files = unpack(bytes)?;
        let signatures = files.get(SIGNATURES).ok_or_else(|| {
            CoreError::Signature("bundle is not signed: no .signatures.json".into())
        })?;
        let listed = signature::verify(signatures, key)?;
        signature::check_files(&files, &listed)?;
        let (revision, roots) = match files.get(MANIFEST) {
            Some(m) => manifest(m)?,
            None => (String::new(), vec![String::new()]),
        };
        let mut set = PolicySet::new();
        for (name, content) in &files {
            let base = name.rsplit('/').next().unwrap_or(name);
            let dir = name.strip_suffix(base).unwrap_or("").trim_end_matches('/');
            if name.ends_with(".rego") {
                if name.ends_with("_test.rego") {
                    continue; // Rego unit tests travel with the bundle, never run as policy.
                }
                let text = utf8(name, content)?;
                check_package_root(name, text, &roots)?;
                set.add_source(format!("bundle:/{name}"), text);
            } else if base == "data.json" || base == "data.yaml" || base == "data.yml" {
                let text = utf8(name, content)?;
                let value = if base == "data.json" {
                    Value::from_json_str(text)
                } else {
                    Value::from_yaml_str(text)
                }
                .map_err(|e| PolicyLoadError::in_file(format!("bundle:/{name}"), format!("{e}")))?;
                check_data_root(name, dir, &value, &roots)?;
                set.add_data(format!("bundle:/{name}"), nest(dir, value)?);
            } else if name.ends_with(".wasm") || base == "patch.json" {
                return Err(PolicyLoadError::new(format!(
                    "bundle file {name}: wasm modules and delta bundles are not supported"
                ))
                .into());
            }
            // Any other signed file (.manifest, a README) is carried, not loaded.
        }
        if !revision.is_empty() {
            set.set_revision(revision.clone());
        }
        Ok(Self {
            revision,
            roots,
            set,
        })
    }

    /// The bundle's modules and data (with its revision), ready to compile.
    pub fn policy_set(&self) -> PolicySet {
        self.set.clone()
    }
}

/// Builds and signs a bundle from `dir`: every `*.rego`, `data.json` and
/// `data.yaml` below it (sorted; symlinks and other files skipped), a
/// `.manifest` with `revision` (by default the first 16 hex digits of a
/// digest over the files) and root `""`, and a `.signatures.json` whose JWT
/// (EdDSA, `kid` = the key id) lists every file with its SHA-256.
pub fn build(dir: &Path, key: &SigningKey, revision: Option<&str>) -> Result<Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| PolicyLoadError::in_file(dir, e.to_string()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let name = path
            .strip_prefix(dir)
            .ok()
            .and_then(|p| p.to_str())
            .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"))
            .ok_or_else(|| PolicyLoadError::in_file(path, "file name is not UTF-8"))?;
        let base = name.rsplit('/').next().unwrap_or(&name);
        let wanted = name.ends_with(".rego") || matches!(base, "data.json" | "data.yaml");
        if !wanted || name.split('/').any(|c| c.starts_with('.')) {
            continue;
        }
        let bytes = read_regular_file(path, MAX_FILE_BYTES)
            .map_err(|m| PolicyLoadError::in_file(path, m))?;
        total += bytes.len() as u64;
        if files.len() >= MAX_ENTRIES || total > MAX_UNPACKED_BYTES {
            return Err(
                PolicyLoadError::in_file(dir, "too many or too large files for a bundle").into(),
            );
        }
        files.insert(name, bytes);
    }
    if !files.keys().any(|n| n.ends_with(".rego")) {
        return Err(PolicyLoadError::in_file(dir, "no .rego file to bundle").into());
    }
    let revision = match revision {
        Some(r) => r.to_string(),
        None => {
            let mut h = Sha256::new();
            for (name, bytes) in &files {
                h.update(name.as_bytes());
                h.update([0]);
                h.update(Sha256::digest(bytes));
            }
            hex::encode(h.finalize())[..16].to_string()
        }
    };
    let manifest = serde_json::to_vec(&json!({"revision": revision, "roots": [""]}))
        .map_err(|e| PolicyLoadError::new(e.to_string()))?;
    files.insert(MANIFEST.to_string(), manifest);
    let signatures = signature::sign(&files, key)?;

    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, bytes)
            .map_err(|e| CoreError::InvalidArgument(format!("writing bundle: {e}")))
    };
    add(SIGNATURES, &signatures)?;
    for (name, bytes) in &files {
        add(name, bytes)?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| CoreError::InvalidArgument(format!("writing bundle: {e}")))?;
    let mut out = gz
        .finish()
        .map_err(|e| CoreError::InvalidArgument(format!("writing bundle: {e}")))?;
    out.flush()
        .map_err(|e| CoreError::InvalidArgument(format!("writing bundle: {e}")))?;
    Ok(out)
}

fn bad(message: impl Into<String>) -> CoreError {
    PolicyLoadError::new(format!("bundle: {}", message.into())).into()
}

/// The bundle's regular files by normalized name, within the caps.
fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(bad("larger than the maximum bundle size"));
    }
    // The cap on the decompressed stream bounds a gzip bomb however the
    // tar headers lie about sizes.
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_UNPACKED_BYTES + 64 * 1024);
    let mut archive = tar::Archive::new(gz);
    let mut files = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar.gz archive: {e}")))?;
    let mut total = 0u64;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("not a tar.gz archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw).map_err(|_| bad("an entry name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("{name:?} is not a regular file ({kind:?})")));
        }
        let name = normalize(&name)?;
        let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
        if size > MAX_FILE_BYTES {
            return Err(bad(format!("{name} is larger than {MAX_FILE_BYTES} bytes")));
        }
        total += size;
        if total > MAX_UNPACKED_BYTES {
            return Err(bad(format!(
                "unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut content)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if content.len() as u64 != size {
            return Err(bad(format!("{name}: truncated entry")));
        }
        if files.insert(name.clone(), content).is_some() {
            return Err(bad(format!("{name} appears twice")));
        }
    }
    Ok(files)
}

/// `name` relative to the bundle root, or an error for anything that could
/// name a place outside it.
fn normalize(name: &str) -> Result<String> {
    let rest = name
        .strip_prefix("./")
        .or_else(|| name.strip_prefix('/'))
        .unwrap_or(name);
    let refused = rest.is_empty()
        || rest.contains('\\')
        || rest.contains('\0')
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if refused {
        return Err(bad(format!("refused entry name {name:?}")));
    }
    Ok(rest.to_string())
}

fn utf8<'a>(name: &str, content: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(content).map_err(|_| bad(format!("{name} is not UTF-8")))
}

/// `(revision, roots)` from `.manifest`.
fn manifest(content: &[u8]) -> Result<(String, Vec<String>)> {
    let m: Json = serde_json::from_slice(content).map_err(|e| bad(format!(".manifest: {e}")))?;
    if !m.is_object() {
        return Err(bad(".manifest is not an object"));
    }
    let revision = match m.get("revision") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(r)) => r.clone(),
        Some(_) => return Err(bad(".manifest revision is not a string")),
    };
    let roots = match m.get("roots") {
        None | Some(Json::Null) => vec![String::new()],
        Some(Json::Array(items)) => items
            .iter()
            .map(|r| r.as_str().map(|s| s.trim_matches('/').to_string()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(".manifest roots must be strings"))?,
        Some(_) => return Err(bad(".manifest roots is not a list")),
    };
    if m.get("wasm")
        .and_then(Json::as_array)
        .is_some_and(|w| !w.is_empty())
    {
        return Err(bad("wasm modules are not supported"));
    }
    Ok((revision, roots))
}

/// Whether `path` (slash-separated, no leading slash) lies under one of `roots`.
fn under_roots(path: &str, roots: &[String]) -> bool {
    roots.iter().any(|r| {
        r.is_empty()
            || path == r
            || path
                .strip_prefix(r.as_str())
                .is_some_and(|t| t.starts_with('/'))
    })
}

fn check_data_root(name: &str, dir: &str, value: &Value, roots: &[String]) -> Result<()> {
    let outside = if dir.is_empty() {
        // Root data: each top-level key is a path of its own.
        match value {
            Value::Object(map) => map.keys().any(|k| match k {
                Value::String(k) => !under_roots(k, roots),
                _ => true,
            }),
            _ => return Err(bad(format!("{name}: root data must be an object"))),
        }
    } else {
        !under_roots(dir, roots)
    };
    if outside {
        return Err(bad(format!(
            "{name}: data outside the manifest roots {roots:?}"
        )));
    }
    Ok(())
}

fn check_package_root(name: &str, text: &str, roots: &[String]) -> Result<()> {
    if roots.iter().any(String::is_empty) {
        return Ok(());
    }
    let package = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| l.strip_prefix("package "))
        .map(|p| p.trim().replace('.', "/"))
        .unwrap_or_default();
    if package.is_empty() || !under_roots(&package, roots) {
        return Err(bad(format!(
            "{name}: package {package:?} outside the manifest roots {roots:?}"
        )));
    }
    Ok(())
}

/// `value` placed at the data path `dir` (`a/b` -> `{"a": {"b": value}}`).
fn nest(dir: &str, value: Value) -> Result<Value> {
    let mut v = value;
    for part in dir.rsplit('/').filter(|p| !p.is_empty()) {
        let mut obj = Value::new_object();
        obj.as_object_mut()
            .map_err(|e| bad(e.to_string()))?
            .insert(Value::from(part), v);
        v = obj;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::hash::file_hash;
    use super::*;
    use crate::core::policy::PolicyOptions;

    fn tree() -> (tempdir::Dir, SigningKey) {
        let dir = tempdir::Dir::new();
        std::fs::create_dir_all(dir.0.join("app/limits")).unwrap();
        std::fs::write(
            dir.0.join("app/policy.rego"),
            "package execgate\nimport rego.v1\ndefault decision := false\ndecision if input.action.name in data.app.limits.allowed\n",
        )
        .unwrap();
        std::fs::write(
            dir.0.join("app/limits/data.json"),
            r#"{"allowed": ["fs.read"]}"#,
        )
        .unwrap();
        (dir, SigningKey::generate())
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("execgate-bundle-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn entries(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        unpack(bytes).unwrap()
    }

    fn repack(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, bytes.as_slice()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn built_bundle_verifies_and_compiles() {
        let (dir, key) = tree();
        let bytes = build(&dir.0, &key, Some("r1")).unwrap();
        let b = Bundle::from_bytes(&bytes, &key.verify_key().into()).unwrap();
        assert_eq!(b.revision, "r1");
        let policy = b.policy_set().compile(&PolicyOptions::default()).unwrap();
        assert_eq!(policy.revision(), Some("r1"));
        assert_eq!(
            policy.data()["app"]["limits"]["allowed"][0],
            Value::from("fs.read")
        );
    }

    #[test]
    fn tampering_is_refused() {
        let (dir, key) = tree();
        let files = entries(&build(&dir.0, &key, None).unwrap());
        let vk: BundleKey = key.verify_key().into();
        let mut tampered = files.clone();
        tampered.insert(
            "app/policy.rego".into(),
            b"package execgate\ndecision := true\n".to_vec(),
        );
        let mut extra = files.clone();
        extra.insert("app/extra.rego".into(), b"package x\n".to_vec());
        let mut missing = files.clone();
        missing.remove("app/limits/data.json");
        for (what, f) in [
            ("tampered", tampered),
            ("extra", extra),
            ("missing", missing),
        ] {
            let e = Bundle::from_bytes(&repack(&f), &vk).unwrap_err();
            assert!(matches!(e, CoreError::Signature(_)), "{what}: {e}");
        }
        let other: BundleKey = SigningKey::generate().verify_key().into();
        assert!(matches!(
            Bundle::from_bytes(&repack(&files), &other),
            Err(CoreError::Signature(_))
        ));
        // Reformatting a JSON document keeps its OPA hash.
        let mut reformatted = files.clone();
        reformatted.insert(
            "app/limits/data.json".into(),
            b"{ \"allowed\" : [ \"fs.read\" ] }\n".to_vec(),
        );
        Bundle::from_bytes(&repack(&reformatted), &vk).unwrap();
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in [
            "../x.rego",
            "a/../../x.rego",
            "a//b.rego",
            "a/./b.rego",
            "//etc/x.rego",
        ] {
            assert!(normalize(name).is_err(), "{name}");
        }
        assert_eq!(normalize("/a/b.rego").unwrap(), "a/b.rego");
        assert_eq!(normalize("./a.rego").unwrap(), "a.rego");
        assert!(matches!(
            Bundle::from_bytes(b"not gzip", &SigningKey::generate().verify_key().into()),
            Err(CoreError::Policy(_))
        ));
    }

    #[test]
    fn caps_bound_what_a_bundle_can_make_the_reader_do() {
        let vk: BundleKey = SigningKey::generate().verify_key().into();
        let many: BTreeMap<String, Vec<u8>> = (0..=MAX_ENTRIES)
            .map(|i| (format!("f{i}"), Vec::new()))
            .collect();
        let e = Bundle::from_bytes(&repack(&many), &vk).unwrap_err();
        assert!(e.to_string().contains("entries"), "{e}");
        // A gzip bomb: a few hundred KB that unpack past the cap.
        let big: BTreeMap<String, Vec<u8>> = (0..5)
            .map(|i| {
                (
                    format!("d{i}/data.json"),
                    vec![b' '; (MAX_FILE_BYTES - 1) as usize],
                )
            })
            .collect();
        let bomb = repack(&big);
        assert!((bomb.len() as u64) < MAX_UNPACKED_BYTES / 16);
        let e = Bundle::from_bytes(&bomb, &vk).unwrap_err();
        assert!(e.to_string().contains("unpacks to more than"), "{e}");
        let mut huge = BTreeMap::new();
        huge.insert(
            "p.rego".to_string(),
            vec![b' '; (MAX_FILE_BYTES + 1) as usize],
        );
        let e = Bundle::from_bytes(&repack(&huge), &vk).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn symlinks_and_links_are_refused() {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "policy.rego", "/etc/passwd")
            .unwrap();
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        let e =
            Bundle::from_bytes(&bytes, &SigningKey::generate().verify_key().into()).unwrap_err();
        assert!(
            matches!(e, CoreError::Policy(_)) && e.to_string().contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn number_literals_are_hashed_as_written() {
        // OPA decodes numbers as json.Number: 10.50 and 1e3 keep their text.
        let got = file_hash(
            "data.json",
            br#"{"p": 10.50, "q": [1e3, -0], "s": "a\u00e9\n"}"#,
        )
        .unwrap();
        let want = "{\"p\":10.50,\"q\":[1e3,-0],\"s\":\"a\u{e9}\\n\"}";
        assert_eq!(got, hex::encode(Sha256::digest(want.as_bytes())));
        // Repeated keys: the last one counts.
        assert_eq!(
            file_hash("data.json", br#"{"a": 1, "a": 2}"#).unwrap(),
            hex::encode(Sha256::digest(br#"{"a":2}"#))
        );
    }

    #[test]
    fn structured_hash_is_opas() {
        // {"a": [1, "x<&>"], "b": {}} in OPA's canonical form, keys sorted.
        let got = file_hash("data.json", br#"{"b": {}, "a": [1, "x<&>"]}"#).unwrap();
        assert_eq!(
            got,
            hex::encode(Sha256::digest(br#"{"a":[1,"x<&>"],"b":{}}"#))
        );
        assert_eq!(
            file_hash("p.rego", b"abc").unwrap(),
            hex::encode(Sha256::digest(b"abc"))
        );
    }

    #[test]
    fn data_outside_roots_is_refused() {
        assert!(
            check_data_root("data.json", "other", &Value::new_object(), &["app".into()]).is_err()
        );
        assert!(
            check_data_root("data.json", "app/x", &Value::new_object(), &["app".into()]).is_ok()
        );
        assert!(check_package_root("p.rego", "package other.x\n", &["app".into()]).is_err());
        assert!(check_package_root("p.rego", "# c\npackage app.x\n", &["app".into()]).is_ok());
    }
}
