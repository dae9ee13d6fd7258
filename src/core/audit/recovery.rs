//! What a writer does with a file it did not leave that way: find the last
//! complete record (in time linear in the bytes scanned), move a torn tail
//! aside, and describe what it found in a signed `recovery` record.
//!
//! `recovered.cause` says which situation a recovery record names:
//! - `torn_tail`: a writer stopped mid-line; the bytes were moved to a side
//!   file. A crash, not an attack.
//! - `truncated`: the file became shorter than this writer's known head; the
//!   records past the cut are gone. The record names the head the writer
//!   expected and the one it found.
//! - `unverified_head`: the last record is unsigned in per-record mode, has a
//!   bad signature, or is signed by a key this writer cannot check (for
//!   example the key before a rotation). The writer chains on, and says so.
//! - `rewritten`: records were replaced: the last record is not the head this
//!   writer left, or the file was written in place (same length, a new change
//!   time) and a record no longer chains to the one before it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use super::MAX_RECORD_BYTES;

/// Scan and copy granularity.
const CHUNK: usize = 64 * 1024;

/// The end of the file as the tail scan found it.
pub(super) struct Tail {
    /// Length up to and including the last `'\n'` (0 when there is none).
    pub good_len: u64,
    /// The bytes of the last complete line (without its `'\n'`).
    pub last: Option<Vec<u8>>,
}

/// Reads a file backwards, one fixed-size chunk at a time, for the lines
/// before a point: however many lines are asked for, each byte is read and
/// searched once (a chunk stays buffered for the lines it holds).
pub(super) struct Backwards<'a> {
    file: &'a File,
    /// The bytes `[lo, lo + buf.len())` of the file.
    buf: Vec<u8>,
    lo: u64,
}

impl<'a> Backwards<'a> {
    pub fn new(file: &'a File) -> Self {
        Self {
            file,
            buf: Vec::with_capacity(CHUNK),
            lo: 0,
        }
    }

    /// The position of the last `'\n'` in `[0, end)`.
    pub fn rfind_newline(&mut self, end: u64) -> std::io::Result<Option<u64>> {
        let mut hi = end;
        loop {
            let buffered_end = self.lo + self.buf.len() as u64;
            if hi > self.lo && hi <= buffered_end {
                let part = &self.buf[..usize::try_from(hi - self.lo).unwrap_or(0)];
                if let Some(i) = memchr::memrchr(b'\n', part) {
                    return Ok(Some(self.lo + i as u64));
                }
                hi = self.lo;
            }
            if hi == 0 {
                return Ok(None);
            }
            let lo = hi.saturating_sub(CHUNK as u64);
            self.buf
                .resize(usize::try_from(hi - lo).unwrap_or(CHUNK), 0);
            self.file.read_exact_at(&mut self.buf, lo)?;
            self.lo = lo;
        }
    }

    /// The bytes `[start, start + len)` when they are in the current chunk.
    pub fn buffered(&self, start: u64, len: usize) -> Option<&[u8]> {
        let from = usize::try_from(start.checked_sub(self.lo)?).ok()?;
        self.buf.get(from..from.checked_add(len)?)
    }
}

/// Finds the last complete line of a file of length `len`. Linear in the
/// bytes after the second-to-last newline; the last line itself is read only
/// when it is no longer than [`MAX_RECORD_BYTES`].
pub(super) fn scan_tail(file: &File, len: u64) -> std::io::Result<Tail> {
    let mut back = Backwards::new(file);
    let Some(last_nl) = back.rfind_newline(len)? else {
        return Ok(Tail {
            good_len: 0,
            last: None,
        });
    };
    let start = back.rfind_newline(last_nl)?.map_or(0, |p| p + 1);
    let line_len = last_nl - start;
    if line_len > MAX_RECORD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the last record is {line_len} bytes long, more than a record may be ({MAX_RECORD_BYTES})"),
        ));
    }
    let mut line = vec![0u8; usize::try_from(line_len).unwrap_or(0)];
    file.read_exact_at(&mut line, start)?;
    Ok(Tail {
        good_len: last_nl + 1,
        last: Some(line),
    })
}

/// Where the chain in a file stops linking (see [`first_broken_link`]).
pub(super) struct BrokenLink {
    /// 1-based line number.
    pub line: u64,
    /// The seq of the record before it (0 for none): that record or this
    /// one was rewritten.
    pub before: u64,
    /// What does not link there.
    pub why: String,
}

/// The first complete line in `[0, len)` of `file` that is not a record, or
/// whose `prev` is not the digest of the record before it: one linear pass
/// that checks the links only (no signatures, no canonical form; `verify`
/// judges those), for a writer that found the file written in place.
pub(super) fn first_broken_link(file: &File, len: u64) -> std::io::Result<Option<BrokenLink>> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: std::borrow::Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
        prev: Option<String>,
    }
    let mut dup = file.try_clone()?;
    dup.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, dup.take(len));
    let mut line = Vec::with_capacity(4096);
    let mut prev: Option<String> = None;
    let (mut n, mut before) = (0u64, 0u64);
    loop {
        line.clear();
        if (&mut reader)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', &mut line)?
            == 0
            || line.last() != Some(&b'\n')
        {
            return Ok(None);
        }
        n += 1;
        let payload = serde_json::from_slice::<Envelope<'_>>(&line)
            .ok()
            .and_then(|e| B64.decode(e.payload.as_bytes()).ok());
        let Some(payload) = payload else {
            return Ok(Some(BrokenLink {
                line: n,
                before,
                why: "it is not a record envelope".into(),
            }));
        };
        let Ok(link) = serde_json::from_slice::<Link>(&payload) else {
            return Ok(Some(BrokenLink {
                line: n,
                before,
                why: "its payload has no readable seq and prev".into(),
            }));
        };
        // The first record may continue a rotated file's chain.
        if n > 1 && link.prev != prev {
            return Ok(Some(BrokenLink {
                line: n,
                before,
                why: format!(
                    "its prev is {}, the digest before it is {}",
                    link.prev.as_deref().unwrap_or("null"),
                    prev.as_deref().unwrap_or("null")
                ),
            }));
        }
        prev = Some(hex::encode(Sha256::digest(&payload)));
        before = link.seq;
    }
}

/// What was moved out of the log.
pub(super) struct MovedAside {
    pub bytes: u64,
    pub sha256: String,
    pub side_file: PathBuf,
}

/// Copies `[from, to)` of `file` to a new side file beside `path` (streamed,
/// hashed on the way), syncs it, then truncates the log to `from`.
pub(super) fn move_aside(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> std::result::Result<MovedAside, (PathBuf, String, std::io::Error)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let side = PathBuf::from(format!("{}.torn-{nanos}", path.display()));
    let fail = |p: &Path, what: &str, e: std::io::Error| (p.to_path_buf(), what.to_string(), e);
    let mut side_file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&side)
        .map_err(|e| fail(&side, "cannot create side file", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).unwrap_or(CHUNK).min(CHUNK);
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, at)
            .map_err(|e| fail(path, "cannot read torn tail", e))?;
        hasher.update(&*chunk);
        side_file
            .write_all(chunk)
            .map_err(|e| fail(&side, "cannot write side file", e))?;
        at += n as u64;
    }
    side_file
        .sync_all()
        .map_err(|e| fail(&side, "cannot write side file", e))?;
    file.set_len(from)
        .map_err(|e| fail(path, "cannot truncate torn tail", e))?;
    Ok(MovedAside {
        bytes: to - from,
        sha256: hex::encode(hasher.finalize()),
        side_file: side,
    })
}

/// The body of a recovery record: `cause`, a human `reason`, and the facts.
pub(super) fn recovery_body(
    cause: &str,
    reason: String,
    facts: Map<String, Json>,
) -> Map<String, Json> {
    let mut recovered = facts;
    recovered.insert("cause".into(), json!(cause));
    recovered.insert("reason".into(), json!(reason));
    let mut body = Map::new();
    body.insert("kind".into(), json!("recovery"));
    body.insert("recovered".into(), Json::Object(recovered));
    body
}

/// Whether a recovery `cause` records something done to the log by someone
/// other than a crashing writer (the verifier reports those as incidents).
pub(super) fn is_incident(cause: Option<&str>) -> bool {
    !matches!(cause, None | Some("torn_tail" | "unverified_head"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("execgate-tail-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(bytes).unwrap();
        (path, f)
    }

    #[test]
    fn finds_the_last_complete_line() {
        for (text, good, last) in [
            (&b""[..], 0, None),
            (b"abc", 0, None),
            (b"a\n", 2, Some(&b"a"[..])),
            (b"a\nbb\n", 5, Some(b"bb")),
            (b"a\nbb\ntorn", 5, Some(b"bb")),
            (b"\n\n", 2, Some(b"")),
        ] {
            let (_, f) = file_with(text);
            let tail = scan_tail(&f, text.len() as u64).unwrap();
            assert_eq!(tail.good_len, good, "{text:?}");
            assert_eq!(tail.last.as_deref(), last, "{text:?}");
        }
    }

    #[test]
    fn lines_across_chunk_boundaries() {
        let mut text = vec![b'x'; 3 * CHUNK + 17];
        text.push(b'\n');
        text.extend(vec![b'y'; 2 * CHUNK + 5]);
        text.push(b'\n');
        text.extend(vec![b'z'; CHUNK + 1]);
        let (path, f) = file_with(&text);
        let tail = scan_tail(&f, text.len() as u64).unwrap();
        assert_eq!(tail.good_len, (5 * CHUNK + 17 + 5 + 2) as u64);
        assert_eq!(tail.last.unwrap(), vec![b'y'; 2 * CHUNK + 5]);
        let moved = move_aside(&f, &path, tail.good_len, text.len() as u64)
            .map_err(|e| e.2)
            .unwrap();
        assert_eq!(moved.bytes, (CHUNK + 1) as u64);
        assert_eq!(
            std::fs::read(&moved.side_file).unwrap(),
            vec![b'z'; CHUNK + 1]
        );
        assert_eq!(f.metadata().unwrap().len(), tail.good_len);
    }

    /// Walking a file's lines from the end finds every line start, with
    /// lines shorter and longer than a chunk and newlines on its edges.
    #[test]
    fn backwards_finds_every_line_and_buffers_its_chunk() {
        let mut text = Vec::new();
        for len in [0, 5, CHUNK - 1, 3, CHUNK, 0, 2 * CHUNK + 7, 1, 100] {
            text.extend(vec![b'a'; len]);
            text.push(b'\n');
        }
        let (_, f) = file_with(&text);
        let expected: Vec<u64> = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i as u64)
            .rev()
            .collect();
        let mut back = Backwards::new(&f);
        let mut found = Vec::new();
        let mut end = text.len() as u64;
        while let Some(nl) = back.rfind_newline(end).unwrap() {
            found.push(nl);
            end = nl;
            assert_eq!(back.buffered(nl, 1), Some(&b"\n"[..]));
            let from = nl.saturating_sub(4);
            if let Some(bytes) = back.buffered(from, 5) {
                assert_eq!(bytes, &text[from as usize..from as usize + 5]);
            }
        }
        assert_eq!(found, expected);
        assert_eq!(back.buffered(0, text.len()), None, "one chunk at a time");
    }
}
