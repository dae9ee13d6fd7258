//! `.signatures.json`: one JWT whose `files` claim lists every other file of
//! the bundle with its hash, and the keys it is verified with.
//!
//! The algorithm follows the key, never the token: an execgate (Ed25519) key
//! verifies `EdDSA` only, an RSA key `RS256` only, a P-256 key `ES256` only.
//! A JWT whose header names anything else (`none`, `HS256` with the public
//! key as an HMAC secret, `RS256` against an Ed25519 key, ...) is refused
//! before any signature is checked, so there is no algorithm confusion to
//! exploit. Layout and claims are OPA's (`bundle/sign.go`, `verify.go`):
//! header `{"alg", "kid"}`, payload `{"files": [{"name", "hash",
//! "algorithm"}], "keyid"?, "scope"?, "iat"?, "iss"?}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use pkcs8::der::{Decode as _, Document};
use pkcs8::spki::SubjectPublicKeyInfoRef;
use pkcs8::ObjectIdentifier;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use super::hash::file_hash;
use super::{normalize, HASH_ALGORITHM, SIGNATURES};
use crate::core::error::{CoreError, Result};
use crate::core::keys::{read_key_file, SigningKey, VerifyKey};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// Smallest RSA modulus accepted (NIST SP 800-131A; OPA's Go refuses < 1024).
const MIN_RSA_BITS: usize = 2048;

fn sig(message: impl Into<String>) -> CoreError {
    CoreError::Signature(format!("bundle signature: {}", message.into()))
}

fn key_error(path: Option<&Path>, message: impl Into<String>) -> CoreError {
    CoreError::Key {
        message: message.into(),
        path: path.map(|p| p.display().to_string()),
    }
}

#[derive(Clone)]
enum Kind {
    Ed25519(VerifyKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    P256(p256::ecdsa::VerifyingKey),
}

/// The public key a bundle's signature is verified with, and with it the one
/// JWT algorithm it admits.
#[derive(Clone)]
pub struct BundleKey {
    kind: Kind,
    /// The execgate key id for an Ed25519 key; otherwise the first 16 bytes
    /// of SHA-256 over the key's SPKI DER, as hex.
    id: String,
}

impl std::fmt::Debug for BundleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleKey({} {})", self.algorithm(), self.id)
    }
}

impl From<VerifyKey> for BundleKey {
    fn from(key: VerifyKey) -> Self {
        let id = key.kid().to_string();
        Self {
            kind: Kind::Ed25519(key),
            id,
        }
    }
}

impl BundleKey {
    /// Parses a public key PEM: SPKI (`BEGIN PUBLIC KEY`) holding an Ed25519
    /// (execgate), RSA (2048 bits or more) or P-256 key, or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        Self::parse(pem, None)
    }

    /// Reads a public key PEM file (see [`BundleKey::from_pem`]).
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let pem = read_key_file(path, false)?;
        Self::parse(&pem, Some(path))
    }

    fn parse(pem: &[u8], path: Option<&Path>) -> Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| key_error(path, "key is not PEM text"))?;
        let (label, doc) = Document::from_pem(text)
            .map_err(|e| key_error(path, format!("not a PEM public key: {e}")))?;
        let der = doc.as_bytes();
        let id = hex::encode(&Sha256::digest(der)[..16]);
        let kind = match label {
            "PUBLIC KEY" => {
                let info = SubjectPublicKeyInfoRef::from_der(der)
                    .map_err(|e| key_error(path, format!("not an SPKI public key: {e}")))?;
                match info.algorithm.oid {
                    ED25519 => {
                        let key = VerifyKey::from_pem(pem).map_err(|_| {
                            key_error(path, "not a valid Ed25519 public key".to_string())
                        })?;
                        return Ok(key.into());
                    }
                    RSA_ENCRYPTION => rsa_key(
                        rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| e.to_string()),
                        path,
                    )?,
                    EC_PUBLIC_KEY => {
                        let curve = info.algorithm.parameters_oid().ok();
                        if curve != Some(PRIME256V1) {
                            return Err(key_error(
                                path,
                                format!(
                                    "EC key on curve {}: only P-256 (ES256) is accepted",
                                    curve.map_or("?".to_string(), |c| c.to_string())
                                ),
                            ));
                        }
                        Kind::P256(p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(
                            |e| key_error(path, format!("not a valid P-256 public key: {e}")),
                        )?)
                    }
                    other => {
                        return Err(key_error(
                            path,
                            format!(
                                "unsupported public key algorithm {other}: \
                                 an Ed25519, RSA or P-256 key is needed"
                            ),
                        ))
                    }
                }
            }
            "RSA PUBLIC KEY" => rsa_key(
                rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|e| e.to_string()),
                path,
            )?,
            l if l.contains("PRIVATE KEY") => {
                return Err(key_error(
                    path,
                    "this is a private key; give the public key",
                ))
            }
            other => {
                return Err(key_error(
                    path,
                    format!("PEM {other:?} is not a public key (BEGIN PUBLIC KEY)"),
                ))
            }
        };
        Ok(Self { kind, id })
    }

    /// The one JWT algorithm this key verifies: `EdDSA`, `RS256` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            Kind::Ed25519(_) => "EdDSA",
            Kind::Rsa(_) => "RS256",
            Kind::P256(_) => "ES256",
        }
    }

    /// The key's id (see the field's documentation).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            Kind::Ed25519(k) => k.verify(message, signature),
            Kind::Rsa(k) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            // JWS carries ES256 signatures as the raw 64 bytes r || s.
            Kind::P256(k) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
}

fn rsa_key(
    key: std::result::Result<rsa::RsaPublicKey, String>,
    path: Option<&Path>,
) -> Result<Kind> {
    let key = key.map_err(|e| key_error(path, format!("not a valid RSA public key: {e}")))?;
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(key_error(
            path,
            format!("RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"),
        ));
    }
    Ok(Kind::Rsa(rsa::pkcs1v15::VerifyingKey::new(key)))
}

/// The signed file list: name -> (hash algorithm, hex hash).
pub(super) type Listed = BTreeMap<String, (String, String)>;

/// Verifies the one JWT of `.signatures.json` with `key` and returns its
/// files claim.
pub(super) fn verify(signatures: &[u8], key: &BundleKey) -> Result<Listed> {
    let doc: Json =
        serde_json::from_slice(signatures).map_err(|e| sig(format!(".signatures.json: {e}")))?;
    let tokens = doc
        .get("signatures")
        .and_then(Json::as_array)
        .ok_or_else(|| sig(".signatures.json has no \"signatures\" list"))?;
    let [token] = tokens.as_slice() else {
        return Err(sig(format!(
            ".signatures.json must hold exactly one JWT, not {}",
            tokens.len()
        )));
    };
    let token = token
        .as_str()
        .ok_or_else(|| sig("the JWT is not a string"))?;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(sig("the JWT is not header.payload.signature"));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| sig(format!("JWT {what} is not base64url: {e}")))
    };
    let header: Json = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|e| sig(format!("JWT header: {e}")))?;
    let alg = header.get("alg").and_then(Json::as_str).unwrap_or("");
    if alg != key.algorithm() {
        return Err(sig(format!(
            "the JWT's algorithm {alg:?} is not the key's: {} key {} verifies {} only",
            match key.kind {
                Kind::Ed25519(_) => "the Ed25519",
                Kind::Rsa(_) => "the RSA",
                Kind::P256(_) => "the P-256",
            },
            key.id(),
            key.algorithm()
        )));
    }
    if header.get("crit").is_some() {
        return Err(sig("JWT header has critical extensions"));
    }
    let signature = decode(s, "signature")?;
    if !key.verify(format!("{h}.{p}").as_bytes(), &signature) {
        return Err(sig(format!(
            "does not verify with {} key {} (wrong key or altered .signatures.json)",
            key.algorithm(),
            key.id()
        )));
    }
    let claims: Json = serde_json::from_slice(&decode(p, "payload")?)
        .map_err(|e| sig(format!("JWT payload: {e}")))?;
    // OPA requires the token's scope to equal the configured one; execgate
    // configures none, so only an unscoped token is accepted.
    if claims
        .get("scope")
        .and_then(Json::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(sig(
            "the JWT has a scope; execgate verifies unscoped bundles",
        ));
    }
    let files = claims
        .get("files")
        .and_then(Json::as_array)
        .ok_or_else(|| sig("the JWT has no files claim"))?;
    let mut listed = BTreeMap::new();
    for f in files {
        let field = |k: &str| f.get(k).and_then(Json::as_str).map(str::to_string);
        let (Some(name), Some(hash)) = (field("name"), field("hash")) else {
            return Err(sig("a files entry lacks name or hash"));
        };
        let algorithm = field("algorithm").unwrap_or_default();
        let name = normalize(&name).map_err(|_| sig(format!("refused file name {name:?}")))?;
        if listed.insert(name.clone(), (algorithm, hash)).is_some() {
            return Err(sig(format!("{name} is listed twice")));
        }
    }
    Ok(listed)
}

/// The file set must match the signed list exactly, and every hash must match.
pub(super) fn check_files(files: &BTreeMap<String, Vec<u8>>, listed: &Listed) -> Result<()> {
    let present: BTreeSet<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|n| *n != SIGNATURES)
        .collect();
    let signed: BTreeSet<&str> = listed.keys().map(String::as_str).collect();
    if let Some(extra) = present.difference(&signed).next() {
        return Err(sig(format!(
            "file {extra} is not included in the signature"
        )));
    }
    if let Some(missing) = signed.difference(&present).next() {
        return Err(sig(format!(
            "signed file {missing} is missing from the bundle"
        )));
    }
    for (name, (algorithm, want)) in listed {
        if algorithm != HASH_ALGORITHM {
            return Err(sig(format!(
                "{name}: hash algorithm {algorithm:?} is not accepted (SHA-256)"
            )));
        }
        let content = files
            .get(name)
            .ok_or_else(|| sig(format!("{name} is missing")))?;
        let got = file_hash(name, content)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(sig(format!(
                "{name}: digest mismatch (signed {want}, found {got})"
            )));
        }
    }
    Ok(())
}

/// `.signatures.json` for `files` (every file of the bundle but itself):
/// one EdDSA JWT, `kid` = the execgate key id.
pub(super) fn sign(files: &BTreeMap<String, Vec<u8>>, key: &SigningKey) -> Result<Vec<u8>> {
    let mut listed = Vec::new();
    for (name, bytes) in files {
        listed.push(
            json!({"name": name, "hash": file_hash(name, bytes)?, "algorithm": HASH_ALGORITHM}),
        );
    }
    let header = json!({"alg": "EdDSA", "kid": key.kid(), "typ": "JWT"});
    let claims = json!({"files": listed});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let jwt = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()))
    );
    serde_json::to_vec(&json!({"signatures": [jwt]})).map_err(|e| sig(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OPA's own RS256 test vector (`v1/bundle/verify_test.go`,
    /// `signedTokenRS256` and `publicKeyValid`): a token its tooling signed.
    const OPA_RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZvbyJ9.eyJmaWxlcyI6W3sibmFtZSI6ImRiL3VhbTIvZW50aXRsZW1lbnRzL2RhdGEuanNvbiIsImhhc2giOiJjMjEzMTU0NGM3MTZhMjVhNWUzMWY1MDQzMDBmNTI0MGU4MjM1Y2FkYjlhNTdmMGJkMWI2ZjRiZDc0YjI2NjEyIiwiYWxnb3JpdGhtIjoic2hhMjU2In0seyJuYW1lIjoiZGIvdWFtMi9wb2xpY3kvb3BhLXBvbGljeS5yZWdvIiwiaGFzaCI6IjQyY2ZlNjc2OGI1N2JiNWY3NTAzYzE2NWMyOGRkMDdhYzViODEzNTU0ZWJjODUwZjJjYzM1ODQzZTcxMzdiMWQifV0sImlhdCI6MTU5MjI1MTQwNiwiaXNzIjoiSldUU2VydmljZSIsInNjb3BlIjoid3JpdGUifQ.UZcX_Qj29o213nwZ5mysiyNcgAp1AOqCkDLkj1KGZ7Cw3l17TbkF8t3FJd654sf762NGcABA0WQ2zxq-labXl_d5TKQmq23lurO3qLHI1cKQPyoxPbddGo78sJpMwWsiMyEYcyyKC9FpNUpa8cT81GPo4q9Zui8TAD0wtHh2YxBL7E8QYLJxcLMJTJxVBgrQGLXFT7vYRc6hJz9Vu-i0SWuLBGxOCmYoHr4DWFfy0IhAbhiUFyLRpukfBPjCJNYY5LgaZdN6LaYivtIEUms5jUuXubBimLJm7KOT5-bgJMXTcUsbrbl2Ma7PwG5IOKjjgyEvH8KVfGFZSzNrpuxKmA";
    const OPA_RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA9KaakMv1XKKDaSch3PFR
3a27oaHp1GNTTNqvb1ZaHZXp+wuhYDwc/MTE67x9GCifvQBWzEGorgTq7aisiOyl
vKifwz6/wQ+62WHKG/sqKn2Xikp3P63aBIPlZcHbkyyRmL62yeyuzYoGvLEYel+m
z5SiKGBwviSY0Th2L4e5sGJuk2HOut6emxDi+E2Fuuj5zokFJvIT6Urlq8f3h6+l
GeR6HUOXqoYVf7ff126GP7dticTVBgibxkkuJFmpvQSW6xmxruT4k6iwjzbZHY7P
ypZ/TdlnuGC1cOpAVyU7k32IJ9CRbt3nwEf5U54LRXLLQjFixWZHwKdDiMTF4ws0
+wIDAQAB
-----END PUBLIC KEY-----
";
    /// OPA's `publicKeyInvalid`: a 1024-bit RSA key.
    const OPA_RSA_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDMYfnvWtC8Id5bPKae5yXSxQTt
+Zpul6AnnZWfI2TtIarvjHBFUtXRo96y7hoL4VWOPKGCsRqMFDkrbeUjRrx8iL91
4/srnyf6sh9c8Zk04xEOpK1ypvBz+Ks4uZObtjnnitf0NBGdjMKxveTq+VE7BWUI
yQjtQ8mbDOsiLLvh7wIDAQAB
-----END PUBLIC KEY-----
";

    fn doc(token: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({ "signatures": [token] })).unwrap()
    }

    fn with_header(token: &str, header: &Json) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
        parts.join(".")
    }

    #[test]
    fn opas_rs256_vector_verifies() {
        let key = BundleKey::from_pem(OPA_RSA_PUBLIC.as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "RS256");
        // The signature verifies; the token is then refused for its scope
        // ("write"), as OPA refuses it without a configured scope.
        let e = verify(&doc(OPA_RS256_TOKEN), &key).unwrap_err();
        assert!(e.to_string().contains("has a scope"), "{e}");
        // One changed byte in the payload and it no longer verifies.
        let mut parts: Vec<&str> = OPA_RS256_TOKEN.split('.').collect();
        let mut payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        payload[20] ^= 1;
        let payload = URL_SAFE_NO_PAD.encode(payload);
        parts[1] = &payload;
        let e = verify(&doc(&parts.join(".")), &key).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        let e = BundleKey::from_pem(OPA_RSA_1024.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("1024 bits"), "{e}");
    }

    #[test]
    fn the_algorithm_follows_the_key() {
        let rsa = BundleKey::from_pem(OPA_RSA_PUBLIC.as_bytes()).unwrap();
        let ed: BundleKey = SigningKey::generate().verify_key().into();
        for (alg, key) in [
            ("none", &rsa),
            ("HS256", &rsa),
            ("RS512", &rsa),
            ("PS256", &rsa),
            ("ES256", &rsa),
            ("RS256", &ed),
            ("none", &ed),
        ] {
            let token = with_header(OPA_RS256_TOKEN, &json!({"alg": alg, "kid": "foo"}));
            let e = verify(&doc(&token), key).unwrap_err();
            assert!(
                matches!(e, CoreError::Signature(_)) && e.to_string().contains("is not the key's"),
                "{alg}: {e}"
            );
        }
        // `none` with an empty signature part, and a missing alg.
        let parts: Vec<&str> = OPA_RS256_TOKEN.split('.').collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(verify(&doc(&none), &rsa).is_err());
        let no_alg = with_header(OPA_RS256_TOKEN, &json!({"kid": "foo"}));
        assert!(verify(&doc(&no_alg), &rsa).is_err());
    }

    #[test]
    fn keys_are_parsed_by_their_algorithm() {
        let ed = SigningKey::generate();
        let pem = ed.verify_key().to_pem().unwrap();
        let key = BundleKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!((key.algorithm(), key.id()), ("EdDSA", ed.kid()));
        let private = ed.to_pem(None).unwrap();
        let e = BundleKey::from_pem(private.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        assert!(BundleKey::from_pem(b"not pem").is_err());
    }
}
