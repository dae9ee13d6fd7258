//! Receipts: canonical JSON (RFC 8785) payloads in DSSE envelopes signed with
//! Ed25519, and the payload bodies for decisions and completions.
//!
//! A receipt can be checked by anyone with the public key and stock crypto:
//! base64-decode `payload`, compute the DSSE pre-authentication encoding
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, verify the
//! Ed25519 signature over it. The chain fields (`seq`, `prev`) are filled in
//! by the audit log ([`crate::core::audit`]).

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use super::decision::Decision;
use super::error::{CoreError, Result};
use super::jcs;
use super::keys::{Keyring, SigningKey, VerifyKey};
use super::redact::{Redactor, Transform};

/// The DSSE payload type of every execgate record.
pub const PAYLOAD_TYPE: &str = "application/vnd.execgate.receipt.v1+json";

/// Version of the payload format (`v`).
pub const FORMAT_VERSION: u64 = 1;

/// RFC 8785 canonical JSON bytes.
pub fn canonical_json(value: &Json) -> Result<Vec<u8>> {
    jcs::to_vec(value)
}

/// A new record (or sandboxed run) id: a UUIDv7, ordered by its
/// millisecond, whose other 74 bits come from the operating system's random
/// source for each id. Not `Uuid::now_v7`: its generator's state is memory
/// that `fork` copies, and two children of one parent then made the same ids
/// in the same millisecond (a log that verify rightly refused).
pub fn new_id() -> String {
    use rand_core::RngCore;
    let mut random = [0u8; 10];
    if rand_core::OsRng.try_fill_bytes(&mut random).is_err() {
        return uuid::Uuid::now_v7().to_string(); // no random source: the crate's own
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    // `hex::encode` collects chars one at a time; a digest is always 64
    // ASCII bytes, written in place.
    let mut out = [0u8; 64];
    match hex::encode_to_slice(Sha256::digest(bytes), &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => hex::encode(Sha256::digest(bytes)),
    }
}

/// SHA-256 of the canonical JSON of `value`.
pub fn json_sha256(value: &Json) -> Result<String> {
    Ok(sha256_hex(&canonical_json(value)?))
}

/// SHA-256 of the canonical JSON of a policy value (the same digest as
/// [`json_sha256`] of its JSON), without building the JSON.
pub fn value_sha256(value: &regorus::Value) -> Result<String> {
    Ok(sha256_hex(&jcs::value_to_vec(value)?))
}

const PAE_PREFIX: &[u8] = b"DSSEv1 ";

/// The DSSE v1 pre-authentication encoding, the bytes that are signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(PAE_PREFIX);
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The envelope line for `payload` and its signatures, byte for byte what
/// `serde_json` writes for [`EnvelopeJson`] (the format readers parse).
fn envelope_line(payload: &[u8], signatures: &[(String, Vec<u8>)]) -> Result<String> {
    const HEAD: &str = concat!(
        "{\"payloadType\":\"",
        "application/vnd.execgate.receipt.v1+json",
        "\",\"payload\":\""
    );
    let mut line =
        String::with_capacity(HEAD.len() + payload.len() * 4 / 3 + 40 + 140 * signatures.len());
    line.push_str(HEAD);
    B64.encode_string(payload, &mut line);
    line.push_str("\",\"signatures\":[");
    for (i, (keyid, sig)) in signatures.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str("{\"keyid\":");
        let mut quoted = Vec::with_capacity(keyid.len() + 2);
        jcs::write_str(&mut quoted, keyid);
        line.push_str(
            std::str::from_utf8(&quoted)
                .map_err(|e| CoreError::Signature(format!("cannot encode envelope: {e}")))?,
        );
        line.push_str(",\"sig\":\"");
        B64.encode_string(sig, &mut line);
        line.push_str("\"}");
    }
    line.push_str("]}");
    Ok(line)
}

/// Borrowed from the line where it holds no escapes (parsing a log line
/// copies only the decoded payload).
#[derive(Serialize, Deserialize)]
struct EnvelopeJson<'a> {
    #[serde(rename = "payloadType", borrow)]
    payload_type: Cow<'a, str>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
    #[serde(borrow)]
    signatures: Vec<SignatureJson<'a>>,
}

#[derive(Serialize, Deserialize)]
struct SignatureJson<'a> {
    #[serde(borrow)]
    keyid: Cow<'a, str>,
    #[serde(borrow)]
    sig: Cow<'a, str>,
}

/// A record whose canonical payload is written and hashed (its digest, the
/// next record's `prev`, is known) but not yet signed: the log chains it
/// under its lock and signs it outside.
#[derive(Debug)]
pub struct Unsigned {
    payload_bytes: Vec<u8>,
    digest: String,
    id: String,
    kind: String,
    seq: u64,
}

impl Unsigned {
    /// The canonical payload `body` and then `chain` (whose members win)
    /// write; `id`, `kind` and `seq` are what they hold.
    pub fn new(body: &Body, chain: &Body, id: String, seq: u64) -> Result<Self> {
        let mut payload_bytes = Vec::with_capacity(1024);
        body.write_with(chain, &mut payload_bytes)?;
        let kind = [chain, body]
            .iter()
            .find_map(|b| b.field("kind").and_then(Json::as_str))
            .unwrap_or("")
            .to_string();
        Ok(Self {
            digest: sha256_hex(&payload_bytes),
            payload_bytes,
            id,
            kind,
            seq,
        })
    }

    /// Lowercase hex SHA-256 of the payload bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The payload's `seq`.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The length of the envelope line [`Unsigned::seal`] writes, at most.
    pub fn envelope_len_bound(&self) -> usize {
        self.payload_bytes.len().div_ceil(3) * 4 + 256
    }

    /// Signs (with `key`, when one is given: else a chained, unsigned
    /// record) and writes the envelope: the DSSE PAE is signed and the
    /// payload base64'd once.
    pub fn seal(self, key: Option<&SigningKey>) -> Result<Receipt> {
        let signatures = key
            .map(|k| {
                vec![(
                    k.kid().to_string(),
                    k.sign(&pae(PAYLOAD_TYPE, &self.payload_bytes)).to_vec(),
                )]
            })
            .unwrap_or_default();
        let envelope = envelope_line(&self.payload_bytes, &signatures)?;
        Ok(Receipt {
            payload_bytes: self.payload_bytes,
            payload: OnceLock::new(),
            id: self.id,
            kind: self.kind,
            seq: self.seq,
            signatures,
            envelope,
            digest: self.digest,
        })
    }
}

/// One signed (or, in checkpoint mode, chained but unsigned) record.
#[derive(Debug, Clone)]
pub struct Receipt {
    payload_bytes: Vec<u8>,
    /// Parsed from `payload_bytes` when first asked for (a record this
    /// process sealed is rarely read back).
    payload: OnceLock<Map<String, Json>>,
    id: String,
    kind: String,
    seq: u64,
    signatures: Vec<(String, Vec<u8>)>,
    envelope: String,
    digest: String,
}

impl Receipt {
    /// Canonicalizes `body` and wraps it in an envelope, signed by `key`
    /// when one is given (`id`, `kind` and `seq` are read from the body).
    pub fn seal(body: &Body, key: Option<&SigningKey>) -> Result<Self> {
        let text = |k: &str| body.field(k).and_then(Json::as_str).unwrap_or("");
        let seq = body.field("seq").and_then(Json::as_u64).unwrap_or(0);
        Unsigned::new(body, &Body::new(), text("id").to_string(), seq)?.seal(key)
    }

    /// Parses a DSSE envelope (one log line). Checks the structure, not the
    /// signature: call [`Receipt::verify`] for that.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut receipt = Self::from_line(text.as_bytes())?;
        receipt.envelope = text.trim_end_matches('\n').to_string();
        Ok(receipt)
    }

    /// [`Receipt::from_json`] of a line's bytes (UTF-8 is checked as the
    /// JSON is parsed), without keeping a copy of the line: `envelope()` is
    /// empty. For a reader that checks records and never writes them out.
    pub fn from_line(line: &[u8]) -> Result<Self> {
        let bad = |m: String| CoreError::Signature(m);
        let env: EnvelopeJson =
            serde_json::from_slice(line).map_err(|e| match std::str::from_utf8(line) {
                Ok(_) => bad(format!("malformed JSON envelope: {e}")),
                Err(_) => bad("the line is not UTF-8".into()),
            })?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(bad(format!(
                "unexpected payloadType {:?}",
                env.payload_type
            )));
        }
        let payload_bytes = B64
            .decode(env.payload.as_bytes())
            .map_err(|e| bad(format!("payload is not base64: {e}")))?;
        let payload: Map<String, Json> = serde_json::from_slice(&payload_bytes)
            .map_err(|e| bad(format!("payload is not a JSON object: {e}")))?;
        let mut canonical = Vec::with_capacity(payload_bytes.len());
        jcs::write_map(&mut canonical, &payload)?;
        if canonical != payload_bytes {
            return Err(bad("payload is not RFC 8785 canonical JSON".into()));
        }
        let signatures = env
            .signatures
            .into_iter()
            .map(|s| {
                B64.decode(s.sig.as_bytes())
                    .map(|sig| (s.keyid.into_owned(), sig))
                    .map_err(|e| bad(format!("signature is not base64: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let member = |k: &str| {
            payload
                .get(k)
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string()
        };
        Ok(Self {
            digest: sha256_hex(&payload_bytes),
            id: member("id"),
            kind: member("kind"),
            seq: payload.get("seq").and_then(Json::as_u64).unwrap_or(0),
            payload_bytes,
            payload: OnceLock::from(payload),
            signatures,
            envelope: String::new(),
        })
    }

    /// The `seq` and digest of an envelope line, for continuing the chain
    /// after another writer: no signature or canonical-form check (the log
    /// writer only needs to link to the bytes that are there; verification
    /// checks them).
    pub fn chain_head(text: &str) -> Result<(u64, String)> {
        #[derive(Deserialize)]
        struct Envelope {
            payload: String,
        }
        #[derive(Deserialize)]
        struct Head {
            seq: u64,
        }
        let bad = |m: String| CoreError::Signature(m);
        let env: Envelope =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON envelope: {e}")))?;
        let payload = B64
            .decode(env.payload.as_bytes())
            .map_err(|e| bad(format!("payload is not base64: {e}")))?;
        let head: Head = serde_json::from_slice(&payload)
            .map_err(|e| bad(format!("payload has no seq: {e}")))?;
        Ok((head.seq, sha256_hex(&payload)))
    }

    /// Succeeds when a signature by `key` verifies over the payload.
    pub fn verify(&self, key: &VerifyKey) -> Result<()> {
        let mut keyring = Keyring::new();
        keyring.add(key.clone());
        self.verify_with(&keyring).map(|_| ()).map_err(|e| {
            let signers: Vec<&str> = self.signatures.iter().map(|(k, _)| k.as_str()).collect();
            match e {
                CoreError::Signature(m) if m.starts_with("signed by unknown key") => {
                    CoreError::Signature(format!(
                        "not signed by key {} (signed by {})",
                        key.kid(),
                        signers.join(", ")
                    ))
                }
                other => other,
            }
        })
    }

    /// Succeeds when a signature by a key in `keyring` verifies; returns its key id.
    pub fn verify_with(&self, keyring: &Keyring) -> Result<String> {
        if self.signatures.is_empty() {
            return Err(CoreError::Signature(
                "record is unsigned (checkpoint mode): verify the log up to its checkpoint".into(),
            ));
        }
        let message = self.signing_input();
        let mut unknown = Vec::new();
        for (kid, sig) in &self.signatures {
            match keyring.get(kid) {
                Some(key) if key.verify(&message, sig) => {
                    // The payload names its signer; a record signed by one key
                    // but claiming another is not what either key vouched for.
                    let claimed = self.payload().get("kid").and_then(Json::as_str);
                    if claimed != Some(kid.as_str()) {
                        return Err(CoreError::Signature(format!(
                            "payload kid {} does not match the key that signed it ({kid})",
                            claimed.unwrap_or("(none)")
                        )));
                    }
                    return Ok(kid.clone());
                }
                Some(_) => return Err(CoreError::Signature(format!("bad signature by key {kid}"))),
                None => unknown.push(kid.as_str()),
            }
        }
        Err(CoreError::Signature(format!(
            "signed by unknown key {}",
            unknown.join(", ")
        )))
    }

    /// The bytes the signature covers (the DSSE PAE of the payload).
    pub fn signing_input(&self) -> Vec<u8> {
        pae(PAYLOAD_TYPE, &self.payload_bytes)
    }

    /// The decoded payload.
    pub fn payload(&self) -> &Map<String, Json> {
        // The bytes are canonical JSON this process wrote or already parsed.
        self.payload
            .get_or_init(|| serde_json::from_slice(&self.payload_bytes).unwrap_or_default())
    }

    /// The canonical payload bytes.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload_bytes
    }

    /// The signatures as (key id, raw signature).
    pub fn signatures(&self) -> &[(String, Vec<u8>)] {
        &self.signatures
    }

    /// The envelope as one line of JSON (no newline).
    pub fn envelope(&self) -> &str {
        &self.envelope
    }

    /// Lowercase hex SHA-256 of the payload bytes; the next record's `prev`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The payload's `id`, or "" when absent.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The payload's `kind` (`decision`, `completion`, `recovery`, `checkpoint`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The payload's `seq`, or 0 when absent.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Something a record's fields can be read from by name: a parsed payload,
/// or a [`Body`] before it is written (the JSON members it holds).
pub trait Fields {
    /// The member `key`, when it is there as JSON.
    fn field(&self, key: &str) -> Option<&Json>;
}

impl Fields for Map<String, Json> {
    fn field(&self, key: &str) -> Option<&Json> {
        self.get(key)
    }
}

/// A member of a [`Body`]: JSON (canonicalized when the record is sealed, and
/// readable before), or bytes that already are canonical JSON (strings and
/// digests written once, in place).
#[derive(Debug, Clone)]
enum Member {
    Json(Json),
    Canonical(std::ops::Range<usize>),
}

/// The body of a record, written straight to RFC 8785 bytes when it is
/// sealed: members are kept as they are set (a later member replaces an
/// earlier one of the same key) and sorted once, at sealing, with the chain
/// fields the log adds. No `serde_json` object is built for the parts that
/// are already canonical (digests, names, the redacted parts written once).
#[derive(Debug, Clone, Default)]
pub struct Body {
    members: Vec<(Cow<'static, str>, Member)>,
    canonical: Vec<u8>,
}

impl Body {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to a JSON value.
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: Json) -> &mut Self {
        self.members.push((key.into(), Member::Json(value)));
        self
    }

    /// Sets `key` to a string.
    pub fn set_str(&mut self, key: &'static str, value: &str) -> &mut Self {
        let start = self.canonical.len();
        jcs::write_str(&mut self.canonical, value);
        self.push_canonical(key, start)
    }

    /// Sets `key` to an unsigned integer.
    pub fn set_u64(&mut self, key: &'static str, value: u64) -> &mut Self {
        let start = self.canonical.len();
        jcs::write_u64(&mut self.canonical, value);
        self.push_canonical(key, start)
    }

    /// Sets `key` to a JSON value, canonicalized now (it cannot be read back
    /// with [`Fields::field`]).
    pub fn set_canonical(&mut self, key: &'static str, value: &Json) -> Result<&mut Self> {
        let start = self.canonical.len();
        jcs::write_json(&mut self.canonical, value)?;
        Ok(self.push_canonical(key, start))
    }

    /// Sets `key` to the canonical JSON `write` appends (which must append
    /// one canonical value, or fail leaving the bytes as they were).
    pub fn set_canonical_with(
        &mut self,
        key: &'static str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<&mut Self> {
        let start = self.canonical.len();
        write(&mut self.canonical)?;
        Ok(self.push_canonical(key, start))
    }

    fn push_canonical(&mut self, key: &'static str, start: usize) -> &mut Self {
        let end = self.canonical.len();
        self.members
            .push((Cow::Borrowed(key), Member::Canonical(start..end)));
        self
    }

    /// Appends the canonical JSON object of this body's members and then
    /// `more`'s (which win over this body's for the same key).
    pub fn write_with(&self, more: &Body, out: &mut Vec<u8>) -> Result<()> {
        let mut members: Vec<(&str, &Member, &[u8])> = self
            .members
            .iter()
            .map(|(k, m)| (&**k, m, &self.canonical[..]))
            .chain(
                more.members
                    .iter()
                    .map(|(k, m)| (&**k, m, &more.canonical[..])),
            )
            .collect();
        // Stable: of equal keys the one set last ends up last.
        jcs::sort_members(&mut members, |m| m.0);
        // One allocation, not a doubling series (a `state` record is megabytes).
        out.reserve(self.canonical.len() + more.canonical.len() + 32 * members.len());
        out.push(b'{');
        let mut first = true;
        for (i, (key, member, canonical)) in members.iter().enumerate() {
            if members.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            jcs::write_str(out, key);
            out.push(b':');
            match member {
                Member::Json(value) => jcs::write_json(out, value)?,
                Member::Canonical(span) => out.extend_from_slice(&canonical[span.clone()]),
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl Fields for Body {
    fn field(&self, key: &str) -> Option<&Json> {
        match self.members.iter().rev().find(|(k, _)| k == key) {
            Some((_, Member::Json(value))) => Some(value),
            _ => None,
        }
    }
}

impl From<Map<String, Json>> for Body {
    fn from(map: Map<String, Json>) -> Self {
        let mut body = Body::new();
        for (key, value) in map {
            body.set(key, value);
        }
        body
    }
}

/// A policy value as JSON: what `serde_json::to_value` makes of it, built
/// directly (no decimal round trip for integers) for the common shapes.
fn to_json(value: &regorus::Value) -> Result<Json> {
    use regorus::Value;
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.to_string()),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(i)) => Json::from(i),
            // Doubles and big integers go through their decimal form, as
            // regorus serializes them.
            (None, None) => jcs::policy_json(value)?,
        },
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect::<Result<_>>()?),
        Value::Set(items) => Json::Array(items.iter_sorted().map(to_json).collect::<Result<_>>()?),
        Value::Object(fields) => {
            let mut map = Map::new();
            for (k, v) in fields.iter_sorted() {
                let Value::String(k) = k else {
                    // serde_json stringifies such keys, which may then collide.
                    return jcs::policy_json(value);
                };
                map.insert(k.to_string(), to_json(v)?);
            }
            Json::Object(map)
        }
        Value::Undefined => Json::String("<undefined>".into()),
    })
}

/// The lowercase hex SHA-256 of the input document's canonical JSON and of
/// its `action.args` (of `null` when absent), from one canonical pass: the
/// arguments' canonical bytes are a slice of the document's.
fn input_digests(input: &regorus::Value) -> Result<(String, String)> {
    let mut bytes = Vec::with_capacity(512);
    let args = match jcs::write_value(&mut bytes, input, &["action", "args"]) {
        Ok(span) => span,
        Err(_) => {
            // Shapes the direct writer refuses (a non-string key): through JSON.
            let json = jcs::policy_json(input)?;
            bytes = canonical_json(&json)?;
            let args = json.pointer("/action/args").unwrap_or(&Json::Null);
            return Ok((sha256_hex(&bytes), json_sha256(args)?));
        }
    };
    let args = args.map_or(&b"null"[..], |span| &bytes[span]);
    Ok((sha256_hex(&bytes), sha256_hex(args)))
}

/// The JSON of a member of the input document (`null` when absent).
fn member(value: &regorus::Value, key: &str) -> Result<Json> {
    match &value[key] {
        regorus::Value::Undefined => Ok(Json::Null),
        v => to_json(v),
    }
}

/// The payload body of a decision receipt (the chain fields are added by the
/// log). Arguments appear only as a digest, so secrets in them stay out,
/// unless `record_input` asks for the whole input document (for `replay`).
///
/// Whatever the policy says, nothing a detector recognises is written: the
/// principal, context, reasons (and a recorded input) pass through `redactor`
/// with keyed pseudonyms, and the record lists what was replaced where.
///
/// The input document is canonicalized once, for both `input_sha256` and
/// `action.args_sha256`; only the parts the record holds (principal,
/// context, obligations) become JSON, and of those only what the log's
/// ledger reads (`kind`, `decision`, `action`, `context`, `obligations`, see
/// [`crate::core::ledger`]) stays JSON until the record is sealed: the rest
/// is written to canonical bytes once, here.
pub fn decision_body(decision: &Decision, record_input: bool, redactor: &Redactor) -> Result<Body> {
    let input = &decision.input;
    let (input_sha256, args_sha256) = input_digests(input)?;
    let mut body = Body::new();
    body.set("kind", json!("decision"))
        .set(
            "decision",
            json!(if decision.allowed { "allow" } else { "deny" }),
        )
        .set_str("mode", decision.mode.as_str())
        .set(
            "action",
            json!({"name": member(&input["action"], "name")?, "args_sha256": args_sha256}),
        );
    let mut findings = Vec::new();
    let mut clean = |value: Json, path: &str| -> Result<Json> {
        let (out, found) = redactor.redact_json(value, None, Transform::Hash, path)?;
        findings.extend(found);
        Ok(out)
    };
    let principal = clean(member(input, "principal")?, "principal")?;
    // context.time is the gate's own clock, not caller data: kept as it is.
    let mut context = member(input, "context")?;
    let time = context.as_object_mut().and_then(|c| c.remove("time"));
    let mut context = clean(context, "context")?;
    if let (Some(c), Some(t)) = (context.as_object_mut(), time) {
        c.insert("time".into(), t);
    }
    let reasons = clean(json!(decision.reasons), "reasons")?;
    // Obligations carry policy-built keys (a rate key from an email) and
    // rewrites (a token): they pass the router like everything recorded.
    let obligations = clean(to_json(&decision.obligations)?, "obligations")?;
    let recorded = if record_input {
        Some(clean(to_json(input)?, "input")?)
    } else {
        None
    };
    let approval = match &decision.approval {
        Some(a) => {
            let comment = match &a.comment {
                Some(c) => clean(json!(c), "approval.comment")?,
                None => Json::Null,
            };
            Some(
                json!({"approved": a.approved && !a.timed_out, "approver": a.approver,
                        "comment": comment, "timed_out": a.timed_out}),
            )
        }
        None => None,
    };
    body.set_canonical("principal", &principal)?
        .set("context", context)
        .set_canonical("reasons", &reasons)?
        .set("obligations", obligations);
    if let Some(approval) = &approval {
        body.set_canonical("approval", approval)?;
    }
    let mut policy =
        json!({"entrypoint": &*decision.entrypoint, "sha256": &*decision.policy_digest});
    if let (Some(revision), Some(p)) = (&decision.policy_revision, policy.as_object_mut()) {
        // Only a policy from a bundle has a revision; others keep the two keys.
        p.insert("revision".into(), json!(&**revision));
    }
    body.set_canonical("policy", &policy)?
        .set_str("input_sha256", &input_sha256);
    if let Some(kind) = decision.error {
        body.set_str("error", kind.as_str());
    }
    if let Some(recorded) = &recorded {
        body.set_canonical("input", recorded)?;
    }
    if !findings.is_empty() {
        body.set_canonical("redacted", &json!(findings))?;
    }
    Ok(body)
}

/// What happened when an authorized call ran.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `ok` or `error`.
    pub status: String,
    /// The exception type (or error class) when the status is `error`.
    pub error_type: Option<String>,
    /// Wall time of the call in nanoseconds.
    pub duration_ns: u64,
    /// SHA-256 of the output (see the README for how outputs are digested).
    pub output_sha256: Option<String>,
    /// Further outcome fields (exit code, usage, protections, ...).
    pub extra: Map<String, Json>,
}

/// A human's answer to a decision that required approval.
#[derive(Debug, Clone, Default)]
pub struct Approval {
    /// Whether the call may go ahead.
    pub approved: bool,
    /// Who answered (identity as the approver reported it).
    pub approver: String,
    /// Free text from the approver.
    pub comment: Option<String>,
    /// True when nobody answered in time (then `approved` is false).
    pub timed_out: bool,
}

/// The payload body of a completion record, linked to its authorization.
pub fn completion_body(authorization: &Receipt, outcome: &Outcome) -> Result<Body> {
    if authorization.kind() != "decision" {
        return Err(CoreError::InvalidArgument(format!(
            "a completion must name a decision receipt, not a {:?} record",
            authorization.kind()
        )));
    }
    if !matches!(outcome.status.as_str(), "ok" | "error") {
        return Err(CoreError::InvalidArgument(format!(
            "status must be \"ok\" or \"error\", not {:?}",
            outcome.status
        )));
    }
    let mut result = outcome.extra.clone();
    result.insert("status".into(), json!(outcome.status));
    result.insert("error_type".into(), json!(outcome.error_type));
    result.insert("duration_ns".into(), json!(outcome.duration_ns));
    result.insert("output_sha256".into(), json!(outcome.output_sha256));
    let mut body = Body::new();
    body.set("kind", json!("completion"))
        .set(
            "authorization",
            json!({"id": authorization.id(), "sha256": authorization.digest()}),
        )
        .set_canonical("outcome", &Json::Object(result))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_float_that_needs_exact_parsing_round_trips_through_a_record() {
        // A CPU time a sandboxed run reported; the fast float parser reads it
        // one ulp off, so the record would fail its own canonical check.
        let value = 1.993_758_000_000_000_1_f64;
        let mut payload = Map::new();
        payload.insert("user_cpu".into(), json!(value));
        let receipt = Receipt::seal(&payload.into(), None).unwrap();
        assert!(Receipt::from_json(receipt.envelope()).is_ok());
    }

    /// RFC 8785 §3.2.2 and appendix examples: literals, numbers, strings.
    #[test]
    fn jcs_matches_rfc_8785_examples() {
        let input = r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#;
        let v: Json = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 §3.2.3: properties sorted by UTF-16 code units.
    #[test]
    fn jcs_sorts_by_utf16_code_units() {
        let input = "{\"\\u20ac\":\"Euro Sign\",\"\\r\":\"Carriage Return\",\"\\ufb33\":\"Hebrew Letter Dalet With Dagesh\",\"1\":\"One\",\"\\ud83d\\ude00\":\"Emoji: Grinning Face\",\"\\u0080\":\"Control\",\"\\u00f6\":\"Latin Small Letter O With Diaeresis\"}";
        let v: Json = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    /// RFC 8785 appendix B: IEEE 754 to ECMAScript number serialization.
    #[test]
    fn jcs_number_formatting() {
        for (bits, expected) in [
            (0x0000000000000000u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x41b3de4355555556, "333333333.3333334"),
        ] {
            let v = json!(f64::from_bits(bits));
            assert_eq!(
                String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
                expected
            );
        }
    }

    /// The one-pass seal writes what the serde path wrote: payload bytes as
    /// `serde_jcs` canonicalizes them, the envelope as `serde_json` encodes
    /// [`EnvelopeJson`].
    #[test]
    fn seal_writes_the_bytes_serde_wrote() {
        let key = SigningKey::generate();
        let body = json!({"kind": "decision", "id": "r1", "kid": key.kid(), "seq": 3,
                          "z\u{e000}": "\u{1f600}", "\u{1f600}": [1.5, -0.0, 1e21, "a\"\n"],
                          "prev": null, "n": u64::MAX});
        let Json::Object(body) = body else {
            unreachable!()
        };
        let r = Receipt::seal(&body.clone().into(), Some(&key)).unwrap();
        assert_eq!(r.payload_bytes(), serde_jcs::to_vec(&body).unwrap());
        let expected = serde_json::to_string(&EnvelopeJson {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(r.payload_bytes()).into(),
            signatures: vec![SignatureJson {
                keyid: key.kid().into(),
                sig: B64.encode(&r.signatures()[0].1).into(),
            }],
        })
        .unwrap();
        assert_eq!(r.envelope(), expected);
        let unsigned = Receipt::seal(&body.into(), None).unwrap();
        assert!(unsigned.envelope().ends_with(r#""signatures":[]}"#));
        assert_eq!(
            pae(PAYLOAD_TYPE, b"{}"),
            format!("DSSEv1 {} {PAYLOAD_TYPE} 2 {{}}", PAYLOAD_TYPE.len()).as_bytes()
        );
    }

    /// A body and the chain fields, members set as JSON or as canonical
    /// bytes, in any order and some twice, write what `serde_jcs` writes for
    /// the object with the last value of each key.
    #[test]
    fn body_writes_the_canonical_object_of_its_last_members() {
        let mut body = Body::new();
        body.set("kind", json!("decision"))
            .set_str("zeta", "a\"\u{1}\u{e000}")
            .set("\u{1f600}", json!([1.5, -0.0, {"b": 1, "a": null}]))
            .set_u64("seq", 1)
            .set_canonical("obj", &json!({"y": [true], "x": "é"}))
            .unwrap()
            .set("zeta", json!(7));
        let mut chain = Body::new();
        chain
            .set_u64("seq", 9)
            .set_str("id", "r")
            .set("prev", Json::Null);
        let mut out = Vec::new();
        body.write_with(&chain, &mut out).unwrap();
        let expected = json!({"kind": "decision", "zeta": 7, "\u{1f600}": [1.5, -0.0, {"b": 1, "a": null}],
                              "obj": {"y": [true], "x": "é"}, "seq": 9, "id": "r", "prev": null});
        assert_eq!(out, serde_jcs::to_vec(&expected).unwrap());
        assert_eq!(body.field("zeta"), Some(&json!(7)));
        assert_eq!(
            body.field("obj"),
            None,
            "canonical members are not read back"
        );
        let sealed = Unsigned::new(&body, &chain, "r".into(), 9).unwrap();
        assert_eq!((sealed.kind.as_str(), sealed.seq()), ("decision", 9));
        let receipt = sealed.seal(None).unwrap();
        // Parsed back from the canonical bytes (where -0 is 0).
        let parsed: Json = serde_json::from_slice(&out).unwrap();
        assert_eq!(Json::Object(receipt.payload().clone()), parsed);
        assert_eq!(
            (receipt.id(), receipt.kind(), receipt.seq()),
            ("r", "decision", 9)
        );
    }

    /// One canonical pass over the input gives the digests two passes gave.
    #[test]
    fn input_digests_match_separate_canonicalization() {
        let doc = r#"{"action": {"name": "fs.read", "args": {"path": "/w", "n": [1, 2.5, -3]}},
                      "principal": {"id": "a"}, "context": {"time": "t"}}"#;
        let input = regorus::Value::from_json_str(doc).unwrap();
        let json: Json = serde_json::from_str(doc).unwrap();
        let (all, args) = input_digests(&input).unwrap();
        assert_eq!(all, sha256_hex(&serde_jcs::to_vec(&json).unwrap()));
        assert_eq!(
            args,
            sha256_hex(&serde_jcs::to_vec(&json["action"]["args"]).unwrap())
        );
        let no_args = regorus::Value::from_json_str(r#"{"action": {"name": "x"}}"#).unwrap();
        assert_eq!(input_digests(&no_args).unwrap().1, sha256_hex(b"null"));
        assert_eq!(to_json(&input).unwrap(), json);
    }

    #[test]
    fn seal_verify_and_parse_round_trip() {
        let key = SigningKey::generate();
        let mut body = Map::new();
        body.insert("kind".into(), json!("decision"));
        body.insert("id".into(), json!("r1"));
        body.insert("kid".into(), json!(key.kid()));
        let r = Receipt::seal(&body.clone().into(), Some(&key)).unwrap();
        r.verify(&key.verify_key()).unwrap();
        let again = Receipt::from_json(r.envelope()).unwrap();
        again.verify(&key.verify_key()).unwrap();
        assert_eq!(again.digest(), r.digest());
        assert!(r.verify(&SigningKey::generate().verify_key()).is_err());
        let tampered = r.envelope().replacen(&r.envelope()[40..44], "AAAA", 1);
        assert!(Receipt::from_json(&tampered)
            .and_then(|t| t.verify(&key.verify_key()))
            .is_err());
        // Signed by `key` but claiming another signer: not what the key vouched for.
        body.insert("kid".into(), json!(SigningKey::generate().kid()));
        let e = Receipt::seal(&body.into(), Some(&key))
            .unwrap()
            .verify(&key.verify_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match the key that signed it"), "{e}");
    }
}
