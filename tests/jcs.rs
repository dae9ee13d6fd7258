//! The RFC 8785 writer (`execgate::core::jcs`) against `serde_jcs`, the
//! canonicalizer receipts were written with before it: on random documents
//! the bytes must be identical, so old and new receipts verify alike.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use execgate::core::jcs;
use proptest::prelude::*;
use serde_json::{Map, Value as Json};

/// Strings that exercise escaping and UTF-16 ordering: ASCII, controls,
/// quotes and backslashes, BMP characters on both sides of U+E000, and
/// characters outside the BMP (surrogate pairs in UTF-16).
fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'e'),
        1 => proptest::char::range('\u{0}', '\u{1f}'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('\u{7f}'),
        1 => proptest::char::range('\u{80}', '\u{7ff}'),
        1 => proptest::char::range('\u{d7f0}', '\u{d7ff}'),
        1 => proptest::char::range('\u{e000}', '\u{e00f}'),
        1 => proptest::char::range('\u{fff0}', '\u{fffd}'),
        1 => proptest::char::range('\u{10000}', '\u{1000f}'),
        1 => proptest::char::range('\u{1f600}', '\u{1f60f}'),
    ];
    proptest::collection::vec(ch, 0..6).prop_map(|cs| cs.into_iter().collect())
}

fn number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        (-1000i64..1000).prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        (-1e6f64..1e6).prop_map(Json::from),
        (0u32..64).prop_map(|e| Json::from(2f64.powi(i32::try_from(e).unwrap()))),
        prop_oneof![Just(1e21), Just(1e-7), Just(9007199254740993.0), Just(-0.0)]
            .prop_map(Json::from),
    ]
}

fn document() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number(),
        text().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((text(), inner), 0..6)
                .prop_map(|members| Json::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn json_matches_serde_jcs(doc in document()) {
        prop_assert_eq!(jcs::to_vec(&doc).unwrap(), serde_jcs::to_vec(&doc).unwrap());
    }

    /// The same document as the policy engine holds it: canonicalizing the
    /// policy value directly gives what canonicalizing its JSON gave.
    #[test]
    fn policy_values_match_serde_jcs(doc in document()) {
        let value = regorus::Value::from_json_str(&doc.to_string()).unwrap();
        let expected = serde_jcs::to_vec(&serde_json::to_value(&value).unwrap()).unwrap();
        prop_assert_eq!(jcs::value_to_vec(&value).unwrap(), expected);
    }

    #[test]
    fn members_sort_in_the_order_of_utf16_code_units(keys in prop::collection::vec(text(), 0..8)) {
        // Indices ride along: the sort is stable for equal keys too.
        let mut sorted: Vec<(String, usize)> = keys.iter().cloned().zip(0..).collect();
        jcs::sort_members(&mut sorted, |(k, _)| k);
        let mut expected = sorted.clone();
        expected.sort_by_key(|(k, i)| (k.encode_utf16().collect::<Vec<_>>(), *i));
        prop_assert_eq!(sorted, expected);
    }
}
