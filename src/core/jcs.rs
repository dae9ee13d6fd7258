//! An RFC 8785 (JSON Canonicalization Scheme) writer that emits canonical
//! bytes straight from the values a record is made of: `serde_json` values,
//! the policy engine's `regorus::Value`s, and typed fields written by hand
//! (object keys given in canonical order by the caller).
//!
//! Why not `serde_jcs`: it serializes every object member into its own
//! buffer, re-parses each key to sort it, and formats through `dyn Write`
//! boxes, which made canonical JSON a large part of a receipt's cost. The
//! output here is byte for byte what `serde_jcs` produces for the same value
//! (a property test holds it to that), so receipts written before and after
//! verify the same way:
//!
//! - numbers as ECMAScript prints an IEEE 754 double (`ryu-js`); integers are
//!   converted to doubles first, as `serde_jcs` does (so above 2^53 they
//!   round, as in every JCS implementation);
//! - strings with only `"`, `\` and the C0 controls escaped (`\b \t \n \f \r`
//!   by name, the rest as lowercase `\u00xx`);
//! - object members sorted by the UTF-16 code units of their keys.

use regorus::Value;
use serde_json::{Map, Value as Json};

use super::error::{CoreError, Result};

fn not_canonical(why: impl std::fmt::Display) -> CoreError {
    CoreError::Signature(format!("cannot canonicalize: {why}"))
}

/// Sorts `items` stably into the order RFC 8785 gives object members, by
/// `key`: UTF-16 code units. Whether any key needs that (a character at
/// U+E000 or above) is checked once; below it the UTF-8 byte order, the code
/// point order and the UTF-16 order agree, and bytes are compared.
pub fn sort_members<T>(items: &mut [T], key: impl Fn(&T) -> &str) {
    if items.iter().any(|item| needs_utf16_order(key(item))) {
        items.sort_by(|a, b| key(a).encode_utf16().cmp(key(b).encode_utf16()));
    } else {
        items.sort_by(|a, b| key(a).as_bytes().cmp(key(b).as_bytes()));
    }
}

/// Whether `key` holds a character whose UTF-16 order differs from its byte
/// order (U+E000 and above: lead bytes 0xEE to 0xF4).
fn needs_utf16_order(key: &str) -> bool {
    key.bytes().any(|b| b >= 0xEE)
}

/// Which bytes a canonical string escapes: `"`, `\\` and the C0 controls.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The index of the first byte [`write_str`] escapes. Eight bytes at a time
/// while there is none (most strings are hex digests, ids and names), then
/// byte by byte from the word that holds one.
fn first_escaped(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether a byte of `w` is below `n` (exact for n <= 0x80; a byte with
    // its high bit set is never below).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH != 0;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        if below(w, 0x20)
            || below(w ^ (ONES * u64::from(b'"')), 1)
            || below(w ^ (ONES * u64::from(b'\\')), 1)
        {
            break;
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| ESCAPED[b as usize])
        .map(|i| at + i)
}

/// Appends `s` as a canonical JSON string (quoted, escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = first_escaped(rest) {
        out.extend_from_slice(&rest[..i]);
        let b = rest[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Appends a double as ECMAScript's `Number.prototype.toString` prints it.
/// Non-finite values have no JSON form and are an error.
pub fn write_f64(out: &mut Vec<u8>, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(not_canonical(format!("{value} is not a JSON number")));
    }
    // Integers below 2^53 print as their digits (the common case: counters,
    // sizes, durations); everything else goes through ryu-js.
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation, reason = "exact: |value| < 2^53")]
        write_i64(out, value as i64);
        return Ok(());
    }
    out.extend_from_slice(ryu_js::Buffer::new().format_finite(value).as_bytes());
    Ok(())
}

fn write_i64(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends an unsigned integer as JCS prints it (as the double it rounds to).
pub fn write_u64(out: &mut Vec<u8>, value: u64) {
    #[allow(clippy::cast_precision_loss, reason = "JCS numbers are doubles")]
    let _ = write_f64(out, value as f64);
}

/// Appends the canonical form of a JSON number.
fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) -> Result<()> {
    if let Some(u) = n.as_u64() {
        write_u64(out, u);
        return Ok(());
    }
    if let Some(i) = n.as_i64() {
        #[allow(clippy::cast_precision_loss, reason = "JCS numbers are doubles")]
        return write_f64(out, i as f64);
    }
    match n.as_f64() {
        Some(f) => write_f64(out, f),
        None => Err(not_canonical(format!("{n} is not a JSON number"))),
    }
}

/// Appends the canonical form of `value`.
pub fn write_json(out: &mut Vec<u8>, value: &Json) -> Result<()> {
    match value {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Number(n) => write_number(out, n)?,
        Json::String(s) => write_str(out, s),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item)?;
            }
            out.push(b']');
        }
        Json::Object(map) => write_map(out, map)?,
    }
    Ok(())
}

/// Appends the canonical form of an object.
pub fn write_map(out: &mut Vec<u8>, map: &Map<String, Json>) -> Result<()> {
    out.push(b'{');
    if in_canonical_order(map.keys().map(String::as_str)) {
        for (i, (k, v)) in map.iter().enumerate() {
            member(out, i, k);
            write_json(out, v)?;
        }
    } else {
        let mut members: Vec<(&String, &Json)> = map.iter().collect();
        sort_members(&mut members, |m| m.0);
        for (i, (k, v)) in members.into_iter().enumerate() {
            member(out, i, k);
            write_json(out, v)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// Whether `keys` are strictly increasing in canonical order, checked the
/// cheap way (bytes, and no character whose UTF-16 order differs).
fn in_canonical_order<'a>(keys: impl Iterator<Item = &'a str>) -> bool {
    let mut prev: Option<&str> = None;
    for key in keys {
        if needs_utf16_order(key) || prev.is_some_and(|p| p.as_bytes() >= key.as_bytes()) {
            return false;
        }
        prev = Some(key);
    }
    true
}

fn member(out: &mut Vec<u8>, index: usize, key: &str) {
    if index > 0 {
        out.push(b',');
    }
    write_str(out, key);
    out.push(b':');
}

/// RFC 8785 bytes of `value`.
pub fn to_vec(value: &Json) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_json(&mut out, value)?;
    Ok(out)
}

/// Appends the canonical form of the JSON a policy value serializes to
/// (sets as sorted arrays, `undefined` as the string `"<undefined>"`, numbers
/// through their decimal form), the same bytes as canonicalizing
/// `serde_json::to_value(value)`.
///
/// When `capture` names a path of object keys, the byte range of the value
/// at that path is returned, so a digest of that part needs no second pass.
///
/// Fails on a number that is not a finite double and on an object with a
/// key that is not a string (whose JSON form `serde_json` builds by
/// stringifying it, which may collide with another key): callers fall back
/// to converting the value first.
pub fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    capture: &[&str],
) -> Result<Option<std::ops::Range<usize>>> {
    let mut found = None;
    value_inner(out, value, Some(capture), &mut found)?;
    Ok(found)
}

/// A JSON array of policy values (an array's items, or a set's members).
fn policy_array<'a>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = &'a Value>,
    found: &mut Option<std::ops::Range<usize>>,
) -> Result<()> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        value_inner(out, item, None, found)?;
    }
    out.push(b']');
    Ok(())
}

fn value_inner(
    out: &mut Vec<u8>,
    value: &Value,
    capture: Option<&[&str]>,
    found: &mut Option<std::ops::Range<usize>>,
) -> Result<()> {
    let start = out.len();
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(_) => write_policy_number(out, value)?,
        Value::String(s) => write_str(out, s),
        Value::Undefined => write_str(out, "<undefined>"),
        Value::Array(items) => policy_array(out, items.iter(), found)?,
        // A set is written as the array of its members, in their order.
        Value::Set(items) => policy_array(out, items.iter_sorted(), found)?,
        Value::Object(fields) => {
            let mut members: Vec<(&str, &Value)> = Vec::with_capacity(fields.len());
            for (k, v) in fields.iter_sorted() {
                match k {
                    Value::String(k) => members.push((k, v)),
                    _ => return Err(not_canonical("an object key is not a string")),
                }
            }
            if !in_canonical_order(members.iter().map(|(k, _)| *k)) {
                sort_members(&mut members, |m| m.0);
            }
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                member(out, i, k);
                let next = match capture {
                    Some([first, rest @ ..]) if *first == k => Some(rest),
                    _ => None,
                };
                value_inner(out, v, next, found)?;
            }
            out.push(b'}');
        }
    }
    if capture.is_some_and(<[&str]>::is_empty) {
        *found = Some(start..out.len());
    }
    Ok(())
}

/// A policy number as JSON has it: `regorus` serializes a number by parsing
/// its decimal form into a `serde_json::Number` (an integer when it is one),
/// which JCS then prints as a double. Integers and finite doubles are
/// printed directly (their decimal forms parse back to the same double);
/// the rest (big integers, NaN) take regorus's route.
fn write_policy_number(out: &mut Vec<u8>, value: &Value) -> Result<()> {
    let Value::Number(n) = value else {
        return Err(not_canonical("not a number"));
    };
    if let Some(u) = n.as_u64() {
        write_u64(out, u);
        return Ok(());
    }
    if let Some(i) = n.as_i64() {
        #[allow(clippy::cast_precision_loss, reason = "JCS numbers are doubles")]
        return write_f64(out, i as f64);
    }
    if let Some(f) = n.as_f64() {
        return write_f64(out, f);
    }
    let decimal = n.format_decimal();
    let parsed: serde_json::Number = decimal
        .parse()
        .map_err(|e| not_canonical(format!("number {decimal}: {e}")))?;
    write_number(out, &parsed)
}

/// RFC 8785 bytes of a policy value (see [`write_value`]), falling back to
/// converting it to JSON first for the shapes the direct writer refuses.
pub fn value_to_vec(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    if write_value(&mut out, value, &[]).is_ok() {
        return Ok(out);
    }
    to_vec(&policy_json(value)?)
}

/// A policy value as `serde_json` has it.
pub fn policy_json(value: &Value) -> Result<Json> {
    serde_json::to_value(value).map_err(|e| not_canonical(format!("cannot encode value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jcs(v: &Json) -> String {
        String::from_utf8(to_vec(v).unwrap()).unwrap()
    }

    /// RFC 8785 §3.2.2 and appendix examples: literals, numbers, strings.
    #[test]
    fn rfc_8785_example() {
        let input = r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#;
        let v: Json = serde_json::from_str(input).unwrap();
        assert_eq!(
            jcs(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 §3.2.3: properties sorted by UTF-16 code units (the
    /// emoji, a surrogate pair, sorts before U+FB33 though its code point
    /// is higher).
    #[test]
    fn rfc_8785_sorts_by_utf16_code_units() {
        let input = "{\"\\u20ac\":\"Euro Sign\",\"\\r\":\"Carriage Return\",\"\\ufb33\":\"Hebrew Letter Dalet With Dagesh\",\"1\":\"One\",\"\\ud83d\\ude00\":\"Emoji: Grinning Face\",\"\\u0080\":\"Control\",\"\\u00f6\":\"Latin Small Letter O With Diaeresis\"}";
        let v: Json = serde_json::from_str(input).unwrap();
        assert_eq!(
            jcs(&v),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        let policy = Value::from_json_str(input).unwrap();
        assert_eq!(
            String::from_utf8(value_to_vec(&policy).unwrap()).unwrap(),
            jcs(&v)
        );
    }

    /// RFC 8785 appendix B: IEEE 754 to ECMAScript number serialization.
    #[test]
    fn rfc_8785_numbers() {
        for (bits, expected) in [
            (0x0000000000000000u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ] {
            assert_eq!(jcs(&json!(f64::from_bits(bits))), expected, "{bits:#x}");
        }
        let mut out = Vec::new();
        assert!(write_f64(&mut out, f64::NAN).is_err());
        assert!(write_f64(&mut out, f64::INFINITY).is_err());
        // Integers are doubles: above 2^53 they print as the double they round to.
        assert_eq!(jcs(&json!(u64::MAX)), "18446744073709552000");
        assert_eq!(jcs(&json!(i64::MIN)), "-9223372036854776000");
        assert_eq!(jcs(&json!(-17)), "-17");
    }

    /// The word-at-a-time search finds what a byte-by-byte one finds, for
    /// every byte value at every position of a word and after it.
    #[test]
    fn first_escaped_matches_a_byte_by_byte_search() {
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = b;
                let expected = s.iter().position(|&c| ESCAPED[c as usize]);
                assert_eq!(first_escaped(&s), expected, "byte {b:#x} at {at}");
                // Bytes around a high-bit byte must not hide an escape.
                let mut t = vec![0xc3u8; 20];
                t[at] = b;
                let expected = t.iter().position(|&c| ESCAPED[c as usize]);
                assert_eq!(
                    first_escaped(&t),
                    expected,
                    "byte {b:#x} at {at} among 0xc3"
                );
            }
        }
        assert_eq!(first_escaped(b""), None);
    }

    #[test]
    fn strings_escape_only_what_rfc_8785_escapes() {
        assert_eq!(
            jcs(&json!(
                "a\"b\\c\u{8}\u{9}\n\u{c}\r\u{0}\u{1f}\u{7f}\u{2028}/é😀"
            )),
            "\"a\\\"b\\\\c\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}\u{2028}/é😀\""
        );
    }

    #[test]
    fn policy_values_match_their_json() {
        let doc = r#"{"action": {"name": "fs.read", "args": {"path": "/w/a", "n": [1, -2, 2.5, 1e300, 12345678901234567890123]}},
                     "z": null, "b": true, "e": {}, "\u00e9": "x"}"#;
        let value = Value::from_json_str(doc).unwrap();
        let mut out = Vec::new();
        let span = write_value(&mut out, &value, &["action", "args"])
            .unwrap()
            .unwrap();
        let json = policy_json(&value).unwrap();
        assert_eq!(out, to_vec(&json).unwrap());
        assert_eq!(
            &out[span],
            to_vec(&json["action"]["args"]).unwrap().as_slice()
        );
        // A set is a sorted array; undefined is a string.
        let mut set = Value::new_set();
        set.as_set_mut().unwrap().insert(Value::from("b"));
        set.as_set_mut().unwrap().insert(Value::from("a"));
        assert_eq!(value_to_vec(&set).unwrap(), b"[\"a\",\"b\"]");
        assert_eq!(value_to_vec(&Value::Undefined).unwrap(), b"\"<undefined>\"");
        // No capture when the path is absent.
        let mut out = Vec::new();
        assert_eq!(write_value(&mut out, &value, &["nope"]).unwrap(), None);
    }

    #[test]
    fn non_string_keys_fall_back_to_serde_json() {
        let mut obj = Value::new_object();
        let map = obj.as_object_mut().unwrap();
        map.insert(Value::from(1u64), Value::from("number key"));
        map.insert(Value::from("a"), Value::from("string key"));
        assert!(write_value(&mut Vec::new(), &obj, &[]).is_err());
        assert_eq!(
            value_to_vec(&obj).unwrap(),
            to_vec(&policy_json(&obj).unwrap()).unwrap()
        );
    }
}
