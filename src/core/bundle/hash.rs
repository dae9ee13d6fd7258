//! OPA's file hashes for bundle signatures: structured files (`data.json`,
//! `data.yaml`, `.manifest`) over their parsed value, object keys sorted, no
//! whitespace, so a signature does not depend on formatting (OPA's
//! `bundle/hash.go` is the reference); every other file over its bytes.

use std::collections::BTreeMap;

use regorus::Value;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::{bad, utf8, MANIFEST, SIGNATURES};
use crate::core::error::Result;

/// Deepest nesting of a structured document that is hashed.
const MAX_DEPTH: usize = 128;

/// OPA's file hash: structured files over their value, the rest over bytes.
pub(super) fn file_hash(name: &str, content: &[u8]) -> Result<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let structured = matches!(base, "data.json" | MANIFEST | "data.yaml" | SIGNATURES);
    if !structured {
        return Ok(hex::encode(Sha256::digest(content)));
    }
    let mut h = Sha256::new();
    if base == "data.yaml" {
        let text = utf8(name, content)?;
        let v = Value::from_yaml_str(text).map_err(|e| bad(format!("{name}: {e}")))?;
        let value = serde_json::to_value(&v).map_err(|e| bad(format!("{name}: {e}")))?;
        walk(&value, &mut h, 0)?;
    } else {
        // Validated (and depth-bounded) by serde_json first; then walked over
        // its own text so numbers keep their literal form, as OPA's hash
        // keeps them (Go's json.Number).
        let _: serde::de::IgnoredAny =
            serde_json::from_slice(content).map_err(|e| bad(format!("{name}: {e}")))?;
        let text = utf8(name, content)?;
        let mut literal = Literal { text, pos: 0 };
        let value = literal.value(0)?;
        value.hash(&mut h);
    }
    Ok(hex::encode(h.finalize()))
}

/// A JSON value with its numbers as written.
enum Canon {
    Object(BTreeMap<String, Canon>),
    Array(Vec<Canon>),
    String(String),
    /// A number, `true`, `false` or `null`, as written.
    Literal(String),
}

impl Canon {
    fn hash(&self, h: &mut Sha256) {
        match self {
            Canon::Object(map) => {
                h.update(b"{");
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        h.update(b",");
                    }
                    h.update(go_string(k).as_bytes());
                    h.update(b":");
                    v.hash(h);
                }
                h.update(b"}");
            }
            Canon::Array(items) => {
                h.update(b"[");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        h.update(b",");
                    }
                    v.hash(h);
                }
                h.update(b"]");
            }
            Canon::String(s) => h.update(go_string(s).as_bytes()),
            Canon::Literal(l) => h.update(l.as_bytes()),
        }
    }
}

/// A reader over JSON text already known to be valid.
struct Literal<'a> {
    text: &'a str,
    pos: usize,
}

impl Literal<'_> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t', '\n', '\r']).len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Canon> {
        if depth > MAX_DEPTH {
            return Err(bad("a document is nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Canon::Object(map));
                        }
                        Some(b',') => self.pos += 1,
                        Some(b'"') => {
                            let key = self.string()?;
                            self.skip_ws();
                            self.pos += 1; // ':'
                                           // A repeated key keeps its last value, as Go's decoder does.
                            map.insert(key, self.value(depth + 1)?);
                        }
                        _ => return Err(bad("malformed JSON object")),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Canon::Array(items));
                        }
                        Some(b',') => self.pos += 1,
                        Some(_) => items.push(self.value(depth + 1)?),
                        None => return Err(bad("malformed JSON array")),
                    }
                }
            }
            Some(b'"') => Ok(Canon::String(self.string()?)),
            Some(_) => {
                let rest = &self.text[self.pos..];
                let end = rest
                    .find([',', '}', ']', ' ', '\t', '\n', '\r'])
                    .unwrap_or(rest.len());
                self.pos += end;
                Ok(Canon::Literal(rest[..end].to_string()))
            }
            None => Err(bad("malformed JSON")),
        }
    }

    /// The string starting at `pos` (a `"`), decoded.
    fn string(&mut self) -> Result<String> {
        let bytes = self.text.as_bytes();
        let mut end = self.pos + 1;
        while let Some(&b) = bytes.get(end) {
            match b {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let raw = self
            .text
            .get(self.pos..=end)
            .ok_or_else(|| bad("malformed JSON string"))?;
        self.pos = end + 1;
        serde_json::from_str(raw).map_err(|e| bad(format!("malformed JSON string: {e}")))
    }
}

/// Feeds OPA's canonical form of `v` to the hash: objects with keys in byte
/// order, `{k:v,...}`, arrays `[v,...]`, primitives as Go's JSON encoder
/// writes them without HTML escaping.
fn walk(v: &Json, h: &mut Sha256, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad("a document is nested too deeply"));
    }
    match v {
        Json::Object(map) => {
            h.update(b"{");
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(go_string(k).as_bytes());
                h.update(b":");
                walk(&map[k], h, depth + 1)?;
            }
            h.update(b"}");
        }
        Json::Array(items) => {
            h.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                walk(item, h, depth + 1)?;
            }
            h.update(b"]");
        }
        Json::String(s) => h.update(go_string(s).as_bytes()),
        other => h.update(other.to_string().as_bytes()),
    }
    Ok(())
}

/// A string as Go's `encoding/json` encodes it with `SetEscapeHTML(false)`.
fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
