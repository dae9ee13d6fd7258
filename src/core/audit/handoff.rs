//! Hand-off notes: how a writer that takes the file lock over from another
//! process trusts the head it finds without parsing and verifying it.
//!
//! Processes sharing a log take turns at the file lock. Without a note, each
//! turn starts by reading the other writer's last record, parsing it and
//! verifying its Ed25519 signature (a writer never chains onto a record it
//! cannot vouch for): with one record per turn, that is most of the cost of
//! a record. Instead, a writer that wrote records leaves, as it lets the lock
//! go, a note in an extended attribute of the file (`user.execgate.head`):
//! the file's device and inode, its length, the last record's `seq` and
//! digest, and the length and SHA-256 of the last line, under an
//! HMAC-SHA256 whose key is derived from the signing key
//! ([`crate::core::keys::SigningKey::derive`]). The next writer checks the
//! MAC, that the file is the one and as long as the note says, and that its
//! last line hashes as the note says; then it chains onto the note's head.
//!
//! What a note trusts: that whoever holds the signing key wrote that line at
//! that place, which is what verifying the line's signature established
//! before. Anything else (no note, a file system without user extended
//! attributes, another key's note, a note replayed from an earlier length,
//! copied to another file, or a line that is not the one the note names)
//! means no note, and the head is read and verified as without notes, so a
//! forged or foreign record after a genuine note is still reported. Truncation,
//! replacement and unlinking are checked as before, whatever the note says.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::MAX_RECORD_BYTES;

/// The extended attribute that holds the note.
const XATTR: &CStr = c"user.execgate.head";

/// Purpose of the MAC key derived from the signing key.
pub(super) const KEY_PURPOSE: &[u8] = b"execgate audit hand-off note v1";

const VERSION: u8 = 1;
/// version, dev, ino, length, seq, line length, line SHA-256, head digest.
const BODY_LEN: usize = 1 + 5 * 8 + 32 + 32;
const NOTE_LEN: usize = BODY_LEN + 32;

/// The head a note vouches for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub seq: u64,
    /// Lowercase hex SHA-256 of the record's payload (the next `prev`).
    pub digest: String,
}

/// Leaves a note: `line` (with its `'\n'`) is the last line of the file,
/// which is `len` bytes long, and holds record `seq` with payload digest
/// `digest` (hex). Best effort: an error (no extended attributes here) only
/// means the next writer verifies the head itself.
pub(super) fn leave(
    file: &File,
    key: &[u8; 32],
    identity: (u64, u64),
    len: u64,
    seq: u64,
    digest: &str,
    line: &[u8],
) -> std::io::Result<()> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(digest, &mut raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut note = [0u8; NOTE_LEN];
    note[0] = VERSION;
    let fields = [identity.0, identity.1, len, seq, line.len() as u64];
    for (i, v) in fields.iter().enumerate() {
        note[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    note[41..73].copy_from_slice(&Sha256::digest(line));
    note[73..BODY_LEN].copy_from_slice(&raw);
    let tag = mac(key, &note[..BODY_LEN])?.finalize().into_bytes();
    note[BODY_LEN..].copy_from_slice(&tag);
    // SAFETY: the name is NUL-terminated and the value is `note.len()` bytes
    // that live across the call; the descriptor is open (borrowed from `file`).
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            note.as_ptr().cast(),
            note.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The head the file's note vouches for, if there is a note made with `key`
/// for this file (`identity`) at this length (`len`) whose last line is the
/// line it names; `None` for anything else (the head must then be verified).
pub(super) fn vouched(file: &File, key: &[u8; 32], identity: (u64, u64), len: u64) -> Option<Head> {
    let mut note = [0u8; NOTE_LEN + 1];
    // SAFETY: the buffer is `note.len()` writable bytes that live across the
    // call; the name is NUL-terminated; the descriptor is open.
    let got = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            note.as_mut_ptr().cast(),
            note.len(),
        )
    };
    // Anything but exactly a note's length (an error, none, a longer value)
    // is not a note.
    if usize::try_from(got).ok()? != NOTE_LEN || note[0] != VERSION {
        return None;
    }
    mac(key, &note[..BODY_LEN])
        .ok()?
        .verify_slice(&note[BODY_LEN..NOTE_LEN])
        .ok()?;
    let field = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&note[1 + i * 8..9 + i * 8]);
        u64::from_le_bytes(b)
    };
    let line_len = field(4);
    if (field(0), field(1)) != identity
        || field(2) != len
        || line_len == 0
        || line_len > len.min(MAX_RECORD_BYTES + 1)
    {
        return None;
    }
    let mut line = vec![0u8; usize::try_from(line_len).ok()?];
    file.read_exact_at(&mut line, len - line_len).ok()?;
    if Sha256::digest(&line).as_slice() != &note[41..73] {
        return None;
    }
    Some(Head {
        seq: field(3),
        digest: hex::encode(&note[73..BODY_LEN]),
    })
}

fn mac(key: &[u8; 32], body: &[u8]) -> std::io::Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    mac.update(body);
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use serde_json::json;

    use super::super::test_support::{self, body, keyring};
    use super::super::{verify_log, AuditLog, AuditOptions};
    use super::*;
    use crate::core::keys::SigningKey;
    use crate::core::receipt::Receipt;

    fn tempdir() -> PathBuf {
        test_support::tempdir("handoff")
    }

    fn identity(file: &File) -> (u64, u64) {
        let m = file.metadata().unwrap();
        (m.dev(), m.ino())
    }

    fn note_key(key: &SigningKey) -> [u8; 32] {
        key.derive(KEY_PURPOSE)
    }

    /// What the file's note vouches for, read as the next writer reads it.
    fn vouched_at(path: &Path, key: &SigningKey) -> Option<Head> {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        vouched(&file, &note_key(key), identity(&file), len)
    }

    fn raw_note(path: &Path) -> Vec<u8> {
        let file = File::open(path).unwrap();
        let mut buf = vec![0u8; 256];
        let got = unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{e}");
            return Vec::new();
        }
        buf.truncate(usize::try_from(got).unwrap());
        buf
    }

    /// Leaves, with `key`, a note naming the file's last line as the record
    /// `(seq, digest)`, as a writer holding that key would.
    fn leave_for_last_line(path: &Path, key: &SigningKey, seq: u64, digest: &str) {
        let file = File::open(path).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let line = format!("{}\n", text.lines().last().unwrap());
        let len = text.len() as u64;
        leave(
            &file,
            &note_key(key),
            identity(&file),
            len,
            seq,
            digest,
            line.as_bytes(),
        )
        .unwrap();
    }

    fn set_raw_note(path: &Path, note: &[u8]) {
        let file = File::open(path).unwrap();
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                XATTR.as_ptr(),
                note.as_ptr().cast(),
                note.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    fn remove_note(path: &Path) {
        let file = File::open(path).unwrap();
        unsafe { libc::fremovexattr(file.as_raw_fd(), XATTR.as_ptr()) };
    }

    fn last_record(path: &Path) -> Receipt {
        let text = std::fs::read_to_string(path).unwrap();
        Receipt::from_json(text.lines().last().unwrap()).unwrap()
    }

    /// Appends, as someone without the key would, an unsigned record that
    /// chains correctly onto the last one.
    fn append_forged(path: &Path) {
        let last = last_record(path);
        let mut forged = last.payload().clone();
        forged.insert("decision".into(), json!("allow"));
        forged.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
        forged.insert("seq".into(), json!(last.seq() + 1));
        forged.insert("prev".into(), json!(last.digest()));
        let forged = Receipt::seal(&forged.into(), None).unwrap();
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "{}", forged.envelope()).unwrap();
    }

    fn recovery_causes(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| Receipt::from_json(l).unwrap())
            .filter(|r| r.kind() == "recovery")
            .map(|r| {
                r.payload()["recovered"]["cause"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Records the warm-up of [`two_writers`] writes.
    const WARM: u64 = 2;

    /// Two writers that have each seen the other's records, so both leave
    /// notes; `b` wrote the last one of the [`WARM`] records before.
    fn two_writers(path: &Path, key: &SigningKey) -> (AuditLog, AuditLog) {
        let b = AuditLog::open(path, key.clone(), AuditOptions::default()).unwrap();
        let a = AuditLog::open(path, key.clone(), AuditOptions::default()).unwrap();
        a.append(body(100)).unwrap();
        assert!(raw_note(path).is_empty(), "a writer alone leaves no note");
        b.append(body(101)).unwrap();
        assert!(vouched_at(path, key).is_some(), "b has seen a's record");
        (a, b)
    }

    /// A writer alone on its file leaves no note (nobody would read it), even
    /// when another process opened the log and never wrote.
    #[test]
    fn a_lone_writer_leaves_no_note() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let log = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        let reader = AuditLog::open(&path, key.clone(), AuditOptions::default()).unwrap();
        for n in 0..5 {
            log.append(body(n)).unwrap();
        }
        log.close().unwrap();
        reader.close().unwrap();
        assert!(raw_note(&path).is_empty());
        assert!(verify_log(&path, &keyring(&key)).unwrap().ok());
    }

    #[test]
    fn note_vouches_for_the_line_it_names_and_nothing_else() {
        let dir = tempdir();
        let path = dir.join("log");
        std::fs::write(&path, b"first\nsecond line\n").unwrap();
        const LEN: u64 = 18;
        let key = SigningKey::generate();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let id = identity(&file);
        let digest = hex::encode([7u8; 32]);
        leave(
            &file,
            &note_key(&key),
            id,
            LEN,
            2,
            &digest,
            b"second line\n",
        )
        .unwrap();
        let head = vouched(&file, &note_key(&key), id, LEN);
        assert_eq!(
            head,
            Some(Head {
                seq: 2,
                digest: digest.clone()
            })
        );
        // Another key, another file, another length.
        let other = SigningKey::generate();
        assert_eq!(vouched(&file, &note_key(&other), id, LEN), None);
        assert_eq!(vouched(&file, &note_key(&key), (id.0, id.1 + 1), LEN), None);
        assert_eq!(vouched(&file, &note_key(&key), id, LEN - 1), None);
        // A note naming another line than the last one.
        leave(
            &file,
            &note_key(&key),
            id,
            LEN,
            2,
            &digest,
            b"second lime\n",
        )
        .unwrap();
        assert_eq!(vouched(&file, &note_key(&key), id, LEN), None);
        // The note's bytes changed (here: the seq), or cut short.
        leave(
            &file,
            &note_key(&key),
            id,
            LEN,
            2,
            &digest,
            b"second line\n",
        )
        .unwrap();
        let mut note = raw_note(&path);
        assert_eq!(note.len(), NOTE_LEN);
        note[25] ^= 1;
        set_raw_note(&path, &note);
        assert_eq!(vouched(&file, &note_key(&key), id, LEN), None);
        note[25] ^= 1;
        set_raw_note(&path, &note[..NOTE_LEN - 1]);
        assert_eq!(vouched(&file, &note_key(&key), id, LEN), None);
        set_raw_note(&path, &note);
        assert!(vouched(&file, &note_key(&key), id, LEN).is_some());
        remove_note(&path);
        assert_eq!(vouched(&file, &note_key(&key), id, LEN), None);
    }

    /// Each writer leaves a note for the head it wrote, and the other one
    /// chains onto it: one chain, every record verified, nothing recovered.
    #[test]
    fn writers_hand_the_head_over_in_notes() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (a, b) = two_writers(&path, &key);
        for n in 0..10 {
            let log = if n % 2 == 0 { &a } else { &b };
            let r = log.append(body(n)).unwrap();
            assert_eq!(r.seq(), WARM + n + 1);
            let head = vouched_at(&path, &key).expect("a note for the head");
            assert_eq!((head.seq, head.digest.as_str()), (r.seq(), r.digest()));
        }
        a.close().unwrap();
        b.close().unwrap();
        let report = verify_log(&path, &keyring(&key)).unwrap();
        assert!(report.ok(), "{:?}", report.failure);
        assert_eq!((report.records, report.recoveries), (WARM + 10, 0));
    }

    /// What a note trusts: the key holder's word for the line it names. A
    /// note made with the key over an unsigned line is taken as is (the
    /// head is not verified), which shows the note is what the writer went
    /// by; the same line with the genuine note of the line before is not.
    #[test]
    fn a_note_is_the_key_holders_word_for_one_line() {
        for noted in [true, false] {
            let dir = tempdir();
            let path = dir.join("log.jsonl");
            let key = SigningKey::generate();
            let (a, b) = two_writers(&path, &key);
            a.append(body(1)).unwrap();
            append_forged(&path);
            if noted {
                let forged = last_record(&path);
                leave_for_last_line(&path, &key, forged.seq(), forged.digest());
            }
            let seq = b.append(body(3)).unwrap().seq();
            assert_eq!(seq, WARM + if noted { 3 } else { 4 });
            let causes = recovery_causes(&path);
            if noted {
                assert!(causes.is_empty(), "{causes:?}");
            } else {
                assert_eq!(causes, ["unverified_head"]);
            }
        }
    }

    /// A genuine note replayed after a forged record was appended (the
    /// note of the record before, or an older one) vouches for nothing: the
    /// writer verifies the head and records that it could not.
    #[test]
    fn replayed_note_does_not_vouch_for_a_forged_record() {
        let key = SigningKey::generate();
        for replay in [0usize, 1] {
            let dir = tempdir();
            let path = dir.join("log.jsonl");
            let (a, b) = two_writers(&path, &key);
            a.append(body(1)).unwrap();
            let older = raw_note(&path);
            a.append(body(2)).unwrap();
            let newer = raw_note(&path);
            append_forged(&path);
            set_raw_note(&path, if replay == 0 { &older } else { &newer });
            assert_eq!(b.append(body(4)).unwrap().seq(), WARM + 5);
            assert_eq!(recovery_causes(&path), ["unverified_head"]);
            let failure = verify_log(&path, &keyring(&key)).unwrap().failure.unwrap();
            assert_eq!(failure.line, WARM + 3, "{}", failure.reason);
        }
    }

    /// The last line replaced by a forged one of the same length (a
    /// signature altered) under the genuine note: the line is not the one the
    /// note names, so the head is verified, and fails.
    #[test]
    fn note_does_not_vouch_for_a_replaced_line_of_the_same_length() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (a, b) = two_writers(&path, &key);
        a.append(body(1)).unwrap();
        a.append(body(2)).unwrap();
        let note = raw_note(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.rfind("\"sig\":\"").unwrap() + 7;
        let mut bytes = text.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, &bytes).unwrap();
        set_raw_note(&path, &note);
        assert_eq!(b.append(body(3)).unwrap().seq(), WARM + 4);
        assert_eq!(recovery_causes(&path), ["unverified_head"]);
        let failure = verify_log(&path, &keyring(&key)).unwrap().failure.unwrap();
        assert_eq!(failure.line, WARM + 2, "{}", failure.reason);
    }

    /// A writer with another key leaves its own note (MAC'd with its own
    /// key): it does not vouch for its record to this key's writers.
    #[test]
    fn another_keys_note_does_not_vouch() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (a, b) = two_writers(&path, &key);
        a.append(body(1)).unwrap();
        let other = SigningKey::generate();
        let intruder = AuditLog::open(&path, other.clone(), AuditOptions::default()).unwrap();
        let theirs = intruder.append(body(2)).unwrap();
        intruder.close().unwrap();
        // The note it leaves once it has seen another writer's records.
        leave_for_last_line(&path, &other, theirs.seq(), theirs.digest());
        assert_eq!(vouched_at(&path, &other).map(|h| h.seq), Some(theirs.seq()));
        assert_eq!(vouched_at(&path, &key), None);
        // The intruder recorded that it could not vouch for our head
        // before its own record; we record the same of its record.
        assert_eq!(b.append(body(3)).unwrap().seq(), WARM + 5);
        assert_eq!(
            recovery_causes(&path),
            ["unverified_head", "unverified_head"]
        );
        assert_eq!(last_record(&path).payload()["n"], 3);
        let failure = verify_log(&path, &keyring(&key)).unwrap().failure.unwrap();
        assert_eq!(failure.line, WARM + 2);
        assert!(failure.reason.contains("unknown key"), "{}", failure.reason);
    }

    /// Without notes (a file system without user extended attributes, or
    /// someone removed them) writers verify the head as before: genuine
    /// records chain without recovery, a forged one is recorded.
    #[test]
    fn without_notes_the_head_is_verified() {
        let dir = tempdir();
        let path = dir.join("log.jsonl");
        let key = SigningKey::generate();
        let (a, b) = two_writers(&path, &key);
        for n in 0..4 {
            let log = if n % 2 == 0 { &a } else { &b };
            log.append(body(n)).unwrap();
            remove_note(&path);
        }
        assert!(recovery_causes(&path).is_empty());
        append_forged(&path);
        assert_eq!(a.append(body(9)).unwrap().seq(), WARM + 7);
        assert_eq!(recovery_causes(&path), ["unverified_head"]);
        let failure = verify_log(&path, &keyring(&key)).unwrap().failure.unwrap();
        assert_eq!(failure.line, WARM + 5, "{}", failure.reason);
    }
}
