//! How [`super::verify_log`] reads a log: in chunks of lines, each parsed
//! (envelope, base64, payload, canonical form, digest) with its signer found
//! and the chunk's signatures batch-verified, then handed to the verifier,
//! which checks the chain over the parsed lines in order. One chunk at a
//! time, in one reused buffer, so memory stays bounded whatever the log's
//! length. (Parsing on worker threads was measured slower on 2 cores: 1.6x
//! the CPU time of parsing in place, and more wall time; `benches/soak_verify.py`.)

use std::fs::{File, TryLockError};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{io_error, MAX_RECORD_BYTES};
use crate::core::error::Result;
use crate::core::keys::Keyring;
use crate::core::receipt::Receipt;

/// Lines and bytes per chunk (a longer record makes a chunk of its own).
pub(super) const CHUNK_LINES: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;
/// How long a reader waits for the writer of a line it found being written.
const WRITER_WAIT: Duration = Duration::from_millis(if cfg!(test) { 500 } else { 10_000 });
/// How often (in bytes read) the progress callback is called.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;

/// Who signed a record, as far as its own line tells: `Ok(None)` unsigned
/// (sealed later by a checkpoint), `Ok(Some(kid))` signed by a known key
/// that the payload names, `Err` why the line cannot be accepted.
pub(super) type Signer = std::result::Result<Option<String>, String>;

/// One line, parsed: its 1-based number and the record or why it is not one.
pub(super) struct ParsedLine {
    pub line: u64,
    pub outcome: std::result::Result<(Receipt, Signer), String>,
}

/// A chunk of lines, parsed, in file order.
pub(super) struct Parsed {
    pub lines: Vec<ParsedLine>,
    /// The first of these lines whose signature does not verify.
    pub bad_signature: Option<u64>,
    /// The file ends here with a line that is not a complete record (torn,
    /// or longer than a record may be): its number and why.
    pub end: Option<(u64, String)>,
}

/// Where a (possibly multi-file) verification is.
#[derive(Default)]
pub(super) struct Position {
    pub line: u64,
    pub read: u64,
    reported: u64,
}

/// Lines read from the file, not yet parsed.
struct Chunk {
    first_line: u64,
    data: Vec<u8>,
    /// End offset (past the `'\n'`) of each line in `data`.
    ends: Vec<usize>,
    end: Option<(u64, String)>,
}

/// A signature waiting for batch verification.
struct PendingSig {
    line: u64,
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
    key: ed25519_dalek::VerifyingKey,
}

/// Reads and parses the lines of `path`, handing each chunk to `apply` in
/// file order; `apply` returns `true` to stop (a failure). `Ok(true)` when
/// it stopped, `Ok(false)` at the end of the file.
pub(super) fn read_parsed(
    path: &Path,
    keyring: &Keyring,
    at: &mut Position,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
    apply: &mut dyn FnMut(Parsed) -> bool,
) -> Result<bool> {
    let file = File::open(path).map_err(|e| io_error(path, "cannot read", e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut chunk = Chunk {
        first_line: 0,
        data: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
        ends: Vec::with_capacity(CHUNK_LINES),
        end: None,
    };
    loop {
        read_chunk(&mut reader, at, &mut chunk).map_err(|e| io_error(path, "cannot read", e))?;
        if at.read - at.reported >= PROGRESS_EVERY {
            progress(at.read, total);
            at.reported = at.read;
        }
        let last = chunk.end.is_some()
            || (chunk.ends.len() < CHUNK_LINES && chunk.data.len() < CHUNK_BYTES);
        if chunk.ends.is_empty() && chunk.end.is_none() {
            return Ok(false);
        }
        if apply(parse_chunk(&mut chunk, keyring)) {
            return Ok(true);
        }
        if last {
            return Ok(false);
        }
    }
}

/// The next lines of the file, up to a chunk's worth, into `chunk`; a line
/// that does not end with `'\n'` ends the file (`end`).
fn read_chunk(
    reader: &mut BufReader<File>,
    at: &mut Position,
    chunk: &mut Chunk,
) -> std::io::Result<()> {
    chunk.first_line = at.line + 1;
    chunk.data.clear();
    chunk.ends.clear();
    chunk.end = None;
    while chunk.ends.len() < CHUNK_LINES && chunk.data.len() < CHUNK_BYTES {
        let start = chunk.data.len();
        let mut n = (&mut *reader)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', &mut chunk.data)?;
        if n == 0 {
            break;
        }
        if chunk.data.last() != Some(&b'\n') && n as u64 <= MAX_RECORD_BYTES {
            chunk.data.truncate(start);
            n = reread_line(reader, n, &mut chunk.data)?;
            if n == 0 {
                break;
            }
        }
        at.read += n as u64;
        at.line += 1;
        if chunk.data.last() != Some(&b'\n') {
            let reason = if n as u64 > MAX_RECORD_BYTES {
                format!("line is longer than a record may be ({MAX_RECORD_BYTES} bytes)")
            } else {
                "torn tail: the last line is incomplete".into()
            };
            chunk.data.truncate(start);
            chunk.end = Some((at.line, reason));
            break;
        }
        chunk.ends.push(chunk.data.len());
    }
    Ok(())
}

/// The line of `n` bytes just read, which ended at the end of the file,
/// read again under a shared `flock`: a writer appends under the exclusive
/// one, so a live log read while a record is being written shows a part of
/// it, and once the shared lock is held the line is whole, or torn for good
/// (by a writer that crashed). A holder that keeps the lock past
/// [`WRITER_WAIT`] is not waited for: the line is read again as it stands.
/// Returns its length.
fn reread_line(
    reader: &mut BufReader<File>,
    n: usize,
    data: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let start = reader.stream_position()?.saturating_sub(n as u64);
    let locked = lock_shared_within(reader.get_ref(), WRITER_WAIT)?;
    let line = reader.seek(SeekFrom::Start(start)).and_then(|_| {
        (&mut *reader)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', data)
    });
    if locked {
        // Closing the file would release it too; nothing to undo.
        let _ = reader.get_ref().unlock();
    }
    line
}

/// Takes a shared `flock` on `file` if it comes within `wait`.
fn lock_shared_within(file: &File, wait: Duration) -> std::io::Result<bool> {
    let start = Instant::now();
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) if start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn parse_chunk(chunk: &mut Chunk, keyring: &Keyring) -> Parsed {
    let mut start = 0;
    let data = &chunk.data;
    let first = chunk.first_line;
    let lines = chunk.ends.iter().enumerate().map(|(i, &end)| {
        let raw = &data[start..end - 1];
        start = end;
        (first + i as u64, raw)
    });
    parse_lines(lines, chunk.end.take(), keyring)
}

/// Parses complete lines (without their newlines), each with the number a
/// failure names (a line of a file, or the `seq` a row is stored under),
/// and batch-verifies their signatures; `end` as in [`Parsed`].
pub(super) fn parse_lines<'a>(
    lines: impl Iterator<Item = (u64, &'a [u8])>,
    end: Option<(u64, String)>,
    keyring: &Keyring,
) -> Parsed {
    let mut batch = Vec::new();
    let lines = lines
        .map(|(line, raw)| ParsedLine {
            line,
            outcome: parse_line(line, raw, keyring, &mut batch),
        })
        .collect();
    Parsed {
        lines,
        bad_signature: check_signatures(&batch),
        end,
    }
}

/// Parses one complete line (without its newline) and finds its signer;
/// a signature to check joins `batch`.
fn parse_line(
    line: u64,
    raw: &[u8],
    keyring: &Keyring,
    batch: &mut Vec<PendingSig>,
) -> std::result::Result<(Receipt, Signer), String> {
    let receipt = Receipt::from_line(raw).map_err(|e| e.to_string())?;
    let payload = receipt.payload();
    let payload_kid = payload.get("kid").and_then(Json::as_str).unwrap_or("");
    let signer = match receipt.signatures() {
        [] if payload.get("signing").and_then(Json::as_str) == Some("record") => Err(
            "unsigned record in a log written with per-record signing (every record must carry \
             a signature)"
                .into(),
        ),
        [] => Ok(None),
        sigs => {
            let known = sigs.iter().find_map(|(kid, sig)| {
                let key = keyring.get(kid)?;
                let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
                Some((kid, key.dalek().to_owned(), sig))
            });
            match known {
                None => {
                    let kids: Vec<&str> = sigs.iter().map(|(k, _)| k.as_str()).collect();
                    Err(format!("signed by unknown key {}", kids.join(", ")))
                }
                Some((kid, _, _)) if payload_kid != kid => Err(format!(
                    "payload kid {payload_kid:?} does not match the key that signed it ({kid})"
                )),
                Some((kid, key, signature)) => {
                    batch.push(PendingSig {
                        line,
                        message: receipt.signing_input(),
                        signature,
                        key,
                    });
                    Ok(Some(kid.clone()))
                }
            }
        }
    };
    Ok((receipt, signer))
}

/// Batch-verifies signatures; when the batch fails, the first bad line.
fn check_signatures(pending: &[PendingSig]) -> Option<u64> {
    if pending.is_empty() {
        return None;
    }
    let messages: Vec<&[u8]> = pending.iter().map(|p| p.message.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = pending.iter().map(|p| p.signature).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = pending.iter().map(|p| p.key).collect();
    // A batch check costs about half of one-by-one checks. It can accept a
    // second, malleated signature for a payload that was signed; that does not
    // matter here, because the chain binds payload digests, not signatures.
    // When the batch fails, the records are checked one by one (strictly) to
    // name the first bad line.
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return None;
    }
    pending
        .iter()
        .find(|p| p.key.verify_strict(&p.message, &p.signature).is_err())
        .map(|p| p.line)
}
