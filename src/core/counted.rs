//! What the ledger counts of a record: the one reading of a record's fields
//! for [`crate::core::ledger::Ledger`] (kind, decision, session, time, action
//! name and arguments digest, and the `rate` and `budget` obligations).
//!
//! It reads either a record being written (any [`Fields`]) or a payload's
//! JSON bytes as the log holds them (on open, folding the records after the
//! last `state` snapshot). The second is the hot path of opening a gate, so it
//! borrows the fields straight from the bytes and builds no `serde_json` map
//! per record; the JSON of the `rate` and `budget` members alone is parsed
//! (small, and [`crate::core::obligation::limits_of`] is the one place their
//! rules live).
//!
//! Reading bytes is exactly as strict as parsing the whole payload into a
//! `serde_json` map and reading that: a payload that is not one JSON object
//! (invalid UTF-8, a number out of range, a lone surrogate, too deep, trailing
//! bytes) is not read at all; a later duplicate key replaces an earlier one;
//! a field of the wrong type reads as absent. The property test below holds
//! the two readings equal on random and hostile payloads.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

use super::receipt::Fields;

/// The fields of one record that the ledger counts; `None` where the record
/// has no such field or it is not a string.
#[derive(Debug, Default, PartialEq)]
pub struct Counted<'a> {
    /// `kind`.
    pub kind: Option<Cow<'a, str>>,
    /// `decision`.
    pub decision: Option<Cow<'a, str>>,
    /// `context.session`.
    pub session: Option<Cow<'a, str>>,
    /// `context.time`.
    pub time: Option<Cow<'a, str>>,
    /// `action.name`.
    pub name: Option<Cow<'a, str>>,
    /// `action.args_sha256`.
    pub args_sha256: Option<Cow<'a, str>>,
    /// `obligations`, when the record has that field (of any type).
    pub obligations: Option<Limits<'a>>,
}

/// The `rate` and `budget` members of a record's `obligations` (`None` when
/// absent, or when `obligations` is not an object).
#[derive(Debug, Default, PartialEq)]
pub struct Limits<'a> {
    /// `obligations.rate`.
    pub rate: Option<Cow<'a, Json>>,
    /// `obligations.budget`.
    pub budget: Option<Cow<'a, Json>>,
}

impl<'a> Counted<'a> {
    /// Reads a record as JSON fields (a record being written, or one parsed).
    pub fn from_fields(payload: &'a dyn Fields) -> Self {
        let text = |v: Option<&'a Json>| v.and_then(Json::as_str).map(Cow::Borrowed);
        let at = |outer: &str, inner: &str| payload.field(outer).and_then(|v| v.get(inner));
        Self {
            kind: text(payload.field("kind")),
            decision: text(payload.field("decision")),
            session: text(at("context", "session")),
            time: text(at("context", "time")),
            name: text(at("action", "name")),
            args_sha256: text(at("action", "args_sha256")),
            obligations: payload.field("obligations").map(|ob| Limits {
                rate: ob.get("rate").map(Cow::Borrowed),
                budget: ob.get("budget").map(Cow::Borrowed),
            }),
        }
    }

    /// Reads a payload's JSON bytes; `None` when they are not one JSON object
    /// (as parsing them into a map would fail).
    pub fn from_json(bytes: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl<'de> Deserialize<'de> for Counted<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CountedVisitor)
    }
}

struct CountedVisitor;

impl<'de> Visitor<'de> for CountedVisitor {
    type Value = Counted<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record payload (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Counted::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "kind" => out.kind = map.next_value::<Maybe<'de>>()?.0,
                "decision" => out.decision = map.next_value::<Maybe<'de>>()?.0,
                "context" => {
                    let v = map.next_value_seed(PairOf("session", "time"))?;
                    (out.session, out.time) = (v.first, v.second);
                }
                "action" => {
                    let v = map.next_value_seed(PairOf("name", "args_sha256"))?;
                    (out.name, out.args_sha256) = (v.first, v.second);
                }
                "obligations" => out.obligations = Some(map.next_value::<Limits<'de>>()?),
                _ => {
                    map.next_value::<Any>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, read to its end (every number, string and depth checked
/// as a `serde_json::Value` would be) and kept only if it is a string.
struct Maybe<'de>(Option<Cow<'de, str>>);

/// Generates the `visit_*` methods of a visitor that accepts any JSON value:
/// scalars and the items of lists and objects are read as [`Any`], then
/// `$done` gives the result (of type `$ty`).
macro_rules! accept_any {
    ($ty:ty, $done:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_none<E: de::Error>(self) -> Result<$ty, E> {
            Ok($done)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$ty, A::Error> {
            while seq.next_element::<Any>()?.is_some() {}
            Ok($done)
        }
    };
}

impl<'de> Deserialize<'de> for Maybe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Maybe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Maybe(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Maybe(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<Any, Any>()?.is_some() {}
                Ok(Maybe(None))
            }
            accept_any!(Self::Value, Maybe(None));
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, read to its end and dropped (unlike `serde::de::IgnoredAny`, which
/// skips numbers and strings without the checks a `serde_json::Value` makes).
struct Any;

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Any;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Any, E> {
                Ok(Any)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any, A::Error> {
                while map.next_entry::<Any, Any>()?.is_some() {}
                Ok(Any)
            }
            accept_any!(Any, Any);
        }
        d.deserialize_any(V)
    }
}

/// `context` (`session`, `time`) or `action` (`name`, `args_sha256`): the two
/// string members of an object, both `None` for any other value.
#[derive(Default)]
struct Pair<'de> {
    first: Option<Cow<'de, str>>,
    second: Option<Cow<'de, str>>,
}

/// Reads a [`Pair`] whose members have these two names.
struct PairOf(&'static str, &'static str);

impl<'de> DeserializeSeed<'de> for PairOf {
    type Value = Pair<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Pair<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PairOf {
    type Value = Pair<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Pair::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Pair::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let k = key.0.as_ref();
            if k == self.0 {
                out.first = map.next_value::<Maybe<'de>>()?.0;
            } else if k == self.1 {
                out.second = map.next_value::<Maybe<'de>>()?.0;
            } else {
                map.next_value::<Any>()?;
            }
        }
        Ok(out)
    }
    accept_any!(Self::Value, Pair::default());
}

impl<'de> Deserialize<'de> for Limits<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Limits<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Limits::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Limits::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match key.0.as_ref() {
                        "rate" => out.rate = Some(Cow::Owned(map.next_value::<Json>()?)),
                        "budget" => out.budget = Some(Cow::Owned(map.next_value::<Json>()?)),
                        _ => {
                            map.next_value::<Any>()?;
                        }
                    }
                }
                Ok(out)
            }
            accept_any!(Self::Value, Limits::default());
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Map;

    use super::*;
    use crate::core::audit::StateFold;
    use crate::core::ledger::Ledger;

    /// The reference reading: the whole payload parsed into a map.
    fn by_map(bytes: &[u8]) -> Option<Map<String, Json>> {
        serde_json::from_slice(bytes).ok()
    }

    /// Values a member may have: the ones the ledger counts, wrong types,
    /// escapes (an owned string), and what a map refuses (a number out of
    /// range, a lone surrogate, invalid UTF-8).
    fn leaf() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#""decision""#,
            r#""state""#,
            r#""allow""#,
            r#""deny""#,
            r#""\u0061llow""#,
            r#""s1""#,
            r#""2026-03-14T10:00:00Z""#,
            r#""2026-03-14T10:00:00.5+01:00""#,
            r#""not a time""#,
            r#""t""#,
            r#""00""#,
            "null",
            "true",
            "5",
            "-0",
            "1.5e3",
            "1e400",
            r#""\ud800""#,
            "\"\u{e9}\"",
            "\"\\\"quoted\\\"\"",
            "[]",
            r#"[1, "a", {"b": null}]"#,
            "{}",
            r#"{"key": "r", "limit": 3, "window_seconds": 60}"#,
            r#"{"key": "r", "limit": 1.5, "window_seconds": 60}"#,
            r#"{"key": "r", "limit": 3, "window_seconds": 60, "x": 1}"#,
            r#"[{"key": "r2", "limit": 9, "window_seconds": 1}, {"key": "r3", "limit": 1, "window_seconds": 9}]"#,
            r#"{"key": "b", "limit": 100, "cost": 2}"#,
            r#"{"key": "", "limit": 100, "cost": 2}"#,
            r#"{"key": "b", "limit": 100, "cost": -1}"#,
            r#"[{"key": "b", "limit": 100, "cost": 1}, 7]"#,
        ])
        .prop_map(|s| s.to_string())
    }

    /// Keys, some written with escapes, some the ledger does not read.
    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "kind",
            "decision",
            "context",
            "action",
            "obligations",
            "session",
            "time",
            "name",
            "args_sha256",
            "rate",
            "budget",
            r"kin\u0064",
            r"obligation\u0073",
            "other",
        ])
    }

    /// A JSON value: a leaf or an object of members (duplicates and any
    /// order allowed), nested up to three deep.
    fn value() -> impl Strategy<Value = String> {
        leaf().prop_recursive(3, 40, 8, |inner| {
            prop::collection::vec((key(), inner), 0..8).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                format!("{{{}}}", members.join(", "))
            })
        })
    }

    /// A decision-like payload, usually well formed, sometimes damaged
    /// (cut, a byte replaced, trailing bytes, nested too deep, not an object).
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let members = prop::collection::vec((key(), value()), 0..10);
        let decision = (
            members,
            prop::sample::select(vec!["allow", "deny"]),
            any::<u8>(),
        )
            .prop_map(|(mut members, decision, n)| {
                // Most records carry the fields, so the rules are exercised.
                members.insert(0, ("kind", r#""decision""#.into()));
                members.insert(1, ("decision", format!("\"{decision}\"")));
                members.insert(
                    2,
                    (
                        "context",
                        format!(r#"{{"session": "s{}", "time": "2026-03-14T10:00:{:02}Z"}}"#, n % 3, n % 60),
                    ),
                );
                members.insert(3, ("action", r#"{"name": "t", "args_sha256": "00"}"#.into()));
                members.insert(
                    4,
                    (
                        "obligations",
                        r#"{"rate": {"key": "r", "limit": 1000, "window_seconds": 100}, "budget": {"key": "b", "limit": 1e9, "cost": 1}}"#.into(),
                    ),
                );
                let n = usize::from(n) % (members.len() + 1);
                let members: Vec<String> = members
                    .into_iter()
                    .skip(n / 4)
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                format!("{{{}}}", members.join(",")).into_bytes()
            });
        let damage = prop_oneof![
            4 => Just(None::<(prop::sample::Index, Option<u8>)>),
            1 => (any::<prop::sample::Index>(), Just(None::<u8>)).prop_map(Some),
            1 => (any::<prop::sample::Index>(), any::<u8>().prop_map(Some)).prop_map(Some),
        ];
        let text = prop_oneof![
            8 => decision,
            1 => value().prop_map(String::into_bytes),
            1 => Just(format!("{}{{}}{}", "[".repeat(130), "]".repeat(130)).into_bytes()),
            1 => Just(br#"{"kind": "decision"} x"#.to_vec()),
            1 => Just(b"{\"kind\": \"decision\", \"other\": \"\xff\"}".to_vec()),
        ];
        (text, damage).prop_map(|(mut bytes, damage)| {
            match damage {
                Some((at, None)) => bytes.truncate(at.index(bytes.len() + 1)),
                Some((at, Some(b))) if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                _ => {}
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Reading the bytes gives what reading the parsed map gives, field
        /// by field, and a ledger folding either way ends the same.
        #[test]
        fn bytes_read_as_the_parsed_map_does(records in prop::collection::vec(payload(), 1..12)) {
            let typed = Ledger::new(4);
            let reference = Ledger::new(4);
            for bytes in &records {
                let map = by_map(bytes);
                let expected = map.as_ref().map(|m| Counted::from_fields(m));
                prop_assert_eq!(Counted::from_json(bytes), expected, "{}", String::from_utf8_lossy(bytes));
                typed.fold_json(bytes);
                if let Some(m) = &map {
                    reference.fold(m);
                }
            }
            prop_assert_eq!(typed.snapshot(), reference.snapshot());
        }
    }

    /// The cases a map refuses are refused, and fields of the wrong type,
    /// duplicates and escapes read as a map reads them.
    #[test]
    fn hostile_payloads() {
        for refused in [
            &br#"{"kind": "decision", "x": 1e400}"#[..],
            br#"{"kind": "decision", "x": "\ud800"}"#,
            b"{\"kind\": \"decision\", \"x\": \"\xff\"}",
            br#"{"kind": "decision"} {}"#,
            br#"["kind", "decision"]"#,
            br#"{"kind": "decision", "x": [1,]}"#,
        ] {
            assert!(by_map(refused).is_none());
            assert_eq!(
                Counted::from_json(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        let deep = format!(
            r#"{{"kind": "decision", "x": {}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(by_map(deep.as_bytes()).is_none());
        assert_eq!(Counted::from_json(deep.as_bytes()), None);
        let read = Counted::from_json(
            br#"{"kind": "state", "kin\u0064": "decision", "decision": 1, "context": {"session": "a"},
                "context": {"time": "t", "session": 5}, "obligations": {"rate": 1}, "obligations": null}"#,
        )
        .unwrap();
        assert_eq!(read.kind.as_deref(), Some("decision"));
        assert_eq!(read.decision, None);
        assert_eq!((read.session, read.time.as_deref()), (None, Some("t")));
        assert_eq!(read.obligations, Some(Limits::default()));
    }
}
