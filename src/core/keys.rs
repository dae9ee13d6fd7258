//! Ed25519 keys: generation, PKCS#8 / SPKI PEM files, key ids, keyrings.
//!
//! Private keys are PKCS#8 PEM (optionally encrypted with a password), the
//! format `openssl` and Python's `cryptography` read; public keys are SPKI PEM.
//! A private key file must not be readable by group or others.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

use super::error::{CoreError, Result};

/// PBKDF2 rounds for password-protected key files.
const PBKDF2_ITERATIONS: u32 = 200_000;

/// The id of a public key: the first 16 bytes of SHA-256 over the raw 32-byte
/// public key, as lowercase hex. Receipts name their signer by it.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

fn key_error(path: Option<&Path>, message: impl Into<String>) -> CoreError {
    CoreError::Key {
        message: message.into(),
        path: path.map(|p| p.display().to_string()),
    }
}

/// Reads a key file, refusing a private key readable by group or others, and
/// anything that is not a regular file of at most
/// [`MAX_KEY_FILE_BYTES`](super::policy::MAX_KEY_FILE_BYTES) (a FIFO, a
/// device or a huge file is refused without blocking or reading it whole).
pub(crate) fn read_key_file(path: &Path, private: bool) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| key_error(Some(path), format!("cannot read key file: {e}")))?;
    if !meta.is_file() {
        return Err(key_error(Some(path), "key path is not a file"));
    }
    if private && meta.permissions().mode() & 0o077 != 0 {
        return Err(key_error(
            Some(path),
            format!(
                "private key file is accessible by group or others (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    super::policy::files::read_regular_file(path, super::policy::MAX_KEY_FILE_BYTES)
        .map_err(|e| key_error(Some(path), format!("cannot read key file: key file {e}")))
}

/// An Ed25519 private key and its key id.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(kid={})", self.kid)
    }
}

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> Self {
        let kid = key_id(&inner.verifying_key());
        Self { inner, kid }
    }

    /// Parses PKCS#8 PEM, decrypting it with `password` when given.
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>) -> Result<Self> {
        Self::parse_pem(pem, password, None)
    }

    /// Reads a PKCS#8 PEM file (mode 0600 or stricter).
    pub fn from_pem_file(path: &Path, password: Option<&[u8]>) -> Result<Self> {
        let pem = read_key_file(path, true)?;
        Self::parse_pem(&pem, password, Some(path))
    }

    fn parse_pem(pem: &[u8], password: Option<&[u8]>, path: Option<&Path>) -> Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| key_error(path, "key is not PEM text"))?;
        let encrypted = text.contains("BEGIN ENCRYPTED PRIVATE KEY");
        let inner = match (encrypted, password) {
            (true, None) => {
                return Err(key_error(
                    path,
                    "private key is encrypted; a password is needed",
                ))
            }
            (true, Some(pw)) => ed25519_dalek::SigningKey::from_pkcs8_encrypted_pem(text, pw)
                .map_err(|e| {
                    key_error(
                        path,
                        format!("cannot decrypt private key (wrong password?): {e}"),
                    )
                })?,
            (false, _) if text.contains("BEGIN PUBLIC KEY") => {
                return Err(key_error(
                    path,
                    "this is a public key; a private key is needed",
                ))
            }
            (false, _) => ed25519_dalek::SigningKey::from_pkcs8_pem(text)
                .map_err(|e| key_error(path, format!("not an Ed25519 PKCS#8 private key: {e}")))?,
        };
        Ok(Self::from_dalek(inner))
    }

    /// PKCS#8 PEM, encrypted with `password` when given.
    pub fn to_pem(&self, password: Option<&[u8]>) -> Result<String> {
        // PKCS#8 v1 (no embedded public key): OpenSSL 3.0 rejects the v2 form.
        let keypair = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.inner.to_bytes(),
            public_key: None,
        };
        let pem = match password {
            None => keypair
                .to_pkcs8_pem(pkcs8::LineEnding::LF)
                .map_err(|e| e.to_string()),
            Some(pw) => (|| {
                let der = keypair.to_pkcs8_der().map_err(|e| e.to_string())?;
                let info =
                    pkcs8::PrivateKeyInfo::try_from(der.as_bytes()).map_err(|e| e.to_string())?;
                // PBES2 with PBKDF2-SHA256 and AES-256-CBC: readable by OpenSSL and
                // `cryptography` (pkcs8's default, scrypt, exceeds OpenSSL's memory cap).
                let mut salt = [0u8; 16];
                let mut iv = [0u8; 16];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut iv);
                let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
                    PBKDF2_ITERATIONS,
                    &salt,
                    &iv,
                )
                .map_err(|e| e.to_string())?;
                info.encrypt_with_params(params, pw)
                    .map_err(|e| e.to_string())?
                    .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
                    .map_err(|e| e.to_string())
            })(),
        }
        .map_err(|e| key_error(None, format!("cannot encode private key: {e}")))?;
        Ok(pem.to_string())
    }

    /// Writes the key as PEM to a new file with mode 0600. Refuses to
    /// overwrite an existing file.
    pub fn write_pem_file(&self, path: &Path, password: Option<&[u8]>) -> Result<()> {
        let pem = self.to_pem(password)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| key_error(Some(path), format!("cannot create key file: {e}")))?;
        // The umask cannot widen 0600, but make the mode exact regardless.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(pem.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| key_error(Some(path), format!("cannot write key file: {e}")))
    }

    /// The key id (see [`key_id`]).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The matching public key.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::from_dalek(self.inner.verifying_key())
    }

    /// A 32-byte key for another purpose, derived from this one (SHA-256 of
    /// the purpose and the secret key), so it is stable wherever this key is.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(purpose);
        h.update(self.inner.to_bytes());
        h.finalize().into()
    }

    /// Signs `message` (64-byte Ed25519 signature).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.inner.sign(message).to_bytes()
    }
}

/// An Ed25519 public key and its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey {
    inner: ed25519_dalek::VerifyingKey,
    kid: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey(kid={})", self.kid)
    }
}

impl VerifyKey {
    fn from_dalek(inner: ed25519_dalek::VerifyingKey) -> Self {
        let kid = key_id(&inner);
        Self { inner, kid }
    }

    /// Parses SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        Self::parse_pem(pem, None)
    }

    /// Reads an SPKI PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let pem = read_key_file(path, false)?;
        Self::parse_pem(&pem, Some(path))
    }

    fn parse_pem(pem: &[u8], path: Option<&Path>) -> Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| key_error(path, "key is not PEM text"))?;
        if text.contains("PRIVATE KEY") {
            return Err(key_error(
                path,
                "this is a private key; give the public key",
            ));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map(Self::from_dalek)
            .map_err(|e| key_error(path, format!("not an Ed25519 public key: {e}")))
    }

    /// SPKI PEM text.
    pub fn to_pem(&self) -> Result<String> {
        self.inner
            .to_public_key_pem(pkcs8::LineEnding::LF)
            .map_err(|e| key_error(None, format!("cannot encode public key: {e}")))
    }

    /// The raw 32-byte public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// The key id (see [`key_id`]).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks an Ed25519 signature (strict: rejects non-canonical encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.inner.verify_strict(message, &sig).is_ok()
    }

    pub(crate) fn dalek(&self) -> &ed25519_dalek::VerifyingKey {
        &self.inner
    }
}

/// Public keys by key id, for verifying logs signed by rotated keys.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, VerifyKey>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn add(&mut self, key: VerifyKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// Adds every `*.pub` and `*.pem` public key file in `dir` (not recursive).
    /// Private key files there are skipped, never read as public keys.
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| key_error(Some(dir), format!("cannot read keyring directory: {e}")))?;
        let mut found = 0;
        for entry in entries {
            let path = entry
                .map_err(|e| key_error(Some(dir), format!("cannot read keyring directory: {e}")))?
                .path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "pub" | "pem") {
                continue;
            }
            let text = read_key_file(&path, false)?;
            if text.windows(11).any(|w| w == b"PRIVATE KEY") {
                continue;
            }
            self.add(VerifyKey::parse_pem(&text, Some(&path))?);
            found += 1;
        }
        if found == 0 {
            return Err(key_error(
                Some(dir),
                "no public keys (*.pub, *.pem) in directory",
            ));
        }
        Ok(())
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_signatures_verify() {
        let key = SigningKey::generate();
        let pem = key.to_pem(None).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(again.kid(), key.kid());
        let sig = key.sign(b"msg");
        let vk = VerifyKey::from_pem(key.verify_key().to_pem().unwrap().as_bytes()).unwrap();
        assert!(vk.verify(b"msg", &sig));
        assert!(!vk.verify(b"msh", &sig));
        assert!(!SigningKey::generate().verify_key().verify(b"msg", &sig));
    }

    #[test]
    fn encrypted_pem_needs_the_right_password() {
        let key = SigningKey::generate();
        let pem = key.to_pem(Some(b"hunter2")).unwrap();
        assert!(pem.contains("ENCRYPTED PRIVATE KEY"));
        assert!(SigningKey::from_pem(pem.as_bytes(), None).is_err());
        assert!(SigningKey::from_pem(pem.as_bytes(), Some(b"wrong")).is_err());
        let k = SigningKey::from_pem(pem.as_bytes(), Some(b"hunter2")).unwrap();
        assert_eq!(k.kid(), key.kid());
    }
}
