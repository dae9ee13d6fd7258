//! A call's arguments as one tree that serves both sides of the gate: the
//! policy's view (`input.action.args`) and the values the tool receives.
//!
//! An entry point converts its arguments once into an [`Arg`]; the policy
//! judges [`Arg::to_value`], the privacy router rewrites the same tree, and
//! the tool receives what is left of it. So what the policy saw and what the
//! tool gets cannot drift apart (no second conversion, no `__str__` of a
//! subclass, no container changed after the check).

use regorus::Value;
use serde_json::{Map, Value as Json};

use super::receipt::sha256_hex;

/// Text in an argument tree: shared with the policy's values, so the policy's
/// view holds the same characters without copying them.
pub type Text = regorus::Rc<str>;

/// One argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// JSON null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A finite float.
    Float(f64),
    /// Text.
    Str(Text),
    /// Binary data. The policy sees `{"bytes_sha256", "size"}`, never the
    /// content; the privacy router reads the content when it is text.
    Bytes {
        /// The content.
        data: Vec<u8>,
        /// Whether the caller's value was mutable (a `bytearray`).
        mutable: bool,
    },
    /// A sequence; `tuple` records that the caller passed an immutable one.
    List {
        /// The items.
        items: Vec<Arg>,
        /// Whether the caller passed a tuple.
        tuple: bool,
    },
    /// An object with string keys, in the caller's order.
    Map(Vec<(Text, Arg)>),
    /// A value the entry point hands to the tool as it is (a datetime, a
    /// dataclass, ...): `view` is what the policy sees of it, `handle` lets
    /// the entry point find the original again.
    Opaque {
        /// The policy's view, built by the conversion rules.
        view: Box<Arg>,
        /// The entry point's reference to the original value.
        handle: usize,
    },
}

impl Arg {
    /// An empty object.
    pub fn empty() -> Self {
        Self::Map(Vec::new())
    }

    /// What the policy sees.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::from(*b),
            Self::Int(i) => Value::from(*i),
            Self::UInt(u) => Value::from(*u),
            Self::Float(f) => Value::from(*f),
            Self::Str(s) => Value::String(s.clone()),
            Self::Bytes { data, .. } => bytes_view(data).to_value(),
            Self::List { items, .. } => {
                Value::from(items.iter().map(Arg::to_value).collect::<Vec<_>>())
            }
            Self::Map(entries) => {
                let mut out = Value::new_object();
                if let Ok(map) = out.as_object_mut() {
                    for (k, v) in entries {
                        map.insert(Value::String(k.clone()), v.to_value());
                    }
                }
                out
            }
            Self::Opaque { view, .. } => view.to_value(),
        }
    }

    /// What the policy sees, as JSON (for digests and records).
    pub fn to_json(&self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Bool(b) => Json::Bool(*b),
            Self::Int(i) => Json::from(*i),
            Self::UInt(u) => Json::from(*u),
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Self::Str(s) => Json::String(s.to_string()),
            Self::Bytes { data, .. } => bytes_view(data).to_json(),
            Self::List { items, .. } => Json::Array(items.iter().map(Arg::to_json).collect()),
            Self::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
            Self::Opaque { view, .. } => view.to_json(),
        }
    }

    /// A tree of plain values from JSON (an obligation's rewrite, a record).
    pub fn from_json(json: &Json) -> Self {
        match json {
            Json::Null => Self::Null,
            Json::Bool(b) => Self::Bool(*b),
            Json::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Self::Int(i),
                (None, Some(u)) => Self::UInt(u),
                _ => Self::Float(n.as_f64().unwrap_or(0.0)),
            },
            Json::String(s) => Self::Str(s.as_str().into()),
            Json::Array(a) => Self::List {
                items: a.iter().map(Self::from_json).collect(),
                tuple: false,
            },
            Json::Object(o) => Self::Map(
                o.iter()
                    .map(|(k, v)| (k.as_str().into(), Self::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The SHA-256 an outcome record gives an output: bytes as they are, text
    /// as UTF-8, anything else as the RFC 8785 JSON of the policy's view.
    pub fn digest(&self) -> super::error::Result<String> {
        match self {
            Self::Bytes { data, .. } => Ok(sha256_hex(data)),
            Self::Str(s) => Ok(sha256_hex(s.as_bytes())),
            other => super::receipt::json_sha256(&other.to_json()),
        }
    }

    /// The entries of an object (None for anything else).
    pub fn entries(&self) -> Option<&[(Text, Arg)]> {
        match self {
            Self::Map(entries) => Some(entries),
            _ => None,
        }
    }
}

/// The policy's view of binary data.
fn bytes_view(data: &[u8]) -> Arg {
    Arg::Map(vec![
        ("bytes_sha256".into(), Arg::Str(sha256_hex(data).into())),
        ("size".into(), Arg::UInt(data.len() as u64)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_view_hides_bytes_and_keeps_opaque_views() {
        let arg = Arg::Map(vec![
            (
                "blob".into(),
                Arg::Bytes {
                    data: b"secret".to_vec(),
                    mutable: false,
                },
            ),
            (
                "when".into(),
                Arg::Opaque {
                    view: Box::new(Arg::Str("2026-01-01T00:00:00+00:00".into())),
                    handle: 0,
                },
            ),
        ]);
        let json = arg.to_json();
        assert_eq!(json["blob"]["size"], 6);
        assert_eq!(json["blob"]["bytes_sha256"], sha256_hex(b"secret"));
        assert_eq!(json["when"], "2026-01-01T00:00:00+00:00");
        assert_eq!(
            serde_json::to_value(arg.to_value()).unwrap(),
            json,
            "the policy's value and the recorded JSON agree"
        );
    }

    #[test]
    fn json_round_trip() {
        let json = serde_json::json!({"a": [1, -2, 1.5, "x", null, true], "b": {"c": 18446744073709551615u64}});
        assert_eq!(Arg::from_json(&json).to_json(), json);
    }
}
