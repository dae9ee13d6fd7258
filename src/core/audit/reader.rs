//! [`LogReader`]: a log's records in chain order from a given `seq`, across
//! rotated files, for a process that copies them elsewhere (the PostgreSQL
//! shipper). It never takes the writers' lock: it reads only complete lines,
//! so a record being written is picked up on a later read.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{io_error, MAX_RECORD_BYTES};
use crate::core::error::{CoreError, Result};
use crate::core::receipt::Receipt;

/// One record as read: its `seq`, the digest of its payload (the next
/// record's `prev`), and its line without the newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The record's `seq`.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the payload.
    pub digest: String,
    /// The envelope, byte for byte as in the file.
    pub envelope: String,
}

/// How many files one [`LogReader::read_from`] moves through.
const FILES_PER_READ: usize = 8;

/// Where the last read stopped: the next line of an open file.
struct Cursor {
    reader: BufReader<File>,
    offset: u64,
    next_seq: u64,
    /// Device and inode, to notice that the path was rotated away.
    identity: (u64, u64),
    /// An archive (`PATH.<seq>`): no writer appends to it any more.
    archived: bool,
}

/// Reads the records of the log at `path` (and its archives `PATH.<last
/// seq, 20 digits>`, see [`super::AuditLog::rotate`]) by `seq`.
pub struct LogReader {
    path: PathBuf,
    cursor: Option<Cursor>,
}

impl LogReader {
    /// A reader of the log at `path` (which need not exist yet).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            cursor: None,
        }
    }

    /// The log's id: the digest of its first record (`seq` 1), which every
    /// later record chains back to, so it names this chain and no other.
    /// `None` while the log has no record; an error when the file that held
    /// the first record is gone.
    pub fn log_id(&mut self) -> Result<Option<String>> {
        let Some((path, archived)) = self.file_holding(1)? else {
            return Ok(None);
        };
        let Some(file) = open_if_exists(&path)? else {
            return Ok(None);
        };
        let mut reader = BufReader::new(file);
        let first = match read_record(&mut reader, &path)? {
            Some((record, _)) => record,
            None => return Ok(None),
        };
        if first.seq != 1 {
            let what = if archived { "archive" } else { "file" };
            return Err(io_error(
                &path,
                "cannot name the log",
                format!(
                    "its first record (seq 1) is not here: the oldest {what} starts at seq {}",
                    first.seq
                ),
            ));
        }
        Ok(Some(first.digest))
    }

    /// Up to `max_records` complete records (and about `max_bytes`) from
    /// `seq` on, in order; fewer (or none) when the log ends sooner. Goes on
    /// into the next file when a rotated one ends.
    pub fn read_from(
        &mut self,
        seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = seq;
        for _ in 0..FILES_PER_READ {
            let stale = match &self.cursor {
                Some(c) => c.next_seq != next || self.shrank(c)?,
                None => true,
            };
            if stale {
                self.cursor = self.locate(next)?;
            }
            let Some(cursor) = self.cursor.as_mut() else {
                break;
            };
            // Looked at before reading: when the path already names another
            // file, every record of this one was written before the rename,
            // so reading it to the end reads it all.
            let rotated = cursor.archived || !same_file(&self.path, cursor.identity)?;
            while out.len() < max_records && bytes < max_bytes {
                let Some((record, len)) = read_record(&mut cursor.reader, &self.path)? else {
                    break;
                };
                if record.seq != cursor.next_seq {
                    // Rewritten under the cursor: find the seq again next time.
                    self.cursor = None;
                    return Ok(out);
                }
                cursor.offset += len;
                cursor.next_seq += 1;
                bytes += record.envelope.len();
                out.push(record);
            }
            next = cursor.next_seq;
            if out.len() >= max_records || bytes >= max_bytes || !rotated {
                break;
            }
            self.cursor = None;
        }
        Ok(out)
    }

    /// Whether the cursor's file is now shorter than where it stands (cut
    /// back): its position must be found again.
    fn shrank(&self, cursor: &Cursor) -> Result<bool> {
        let len = cursor
            .reader
            .get_ref()
            .metadata()
            .map_err(|e| io_error(&self.path, "cannot stat", e))?
            .len();
        Ok(len < cursor.offset)
    }

    /// The file that holds `seq` (an archive whose last seq is at least
    /// `seq`, else the live file), and whether it is an archive.
    fn file_holding(&self, seq: u64) -> Result<Option<(PathBuf, bool)>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Err(io_error(
                &self.path,
                "cannot read",
                "the path has no file name",
            ));
        };
        let prefix = format!("{name}.");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&dir, "cannot list", e)),
        };
        let mut best: Option<u64> = None;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir, "cannot list", e))?;
            let file_name = entry.file_name();
            let Some(last) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if last >= seq && best.is_none_or(|b| last < b) {
                best = Some(last);
            }
        }
        Ok(Some(match best {
            Some(last) => (dir.join(format!("{name}.{last:020}")), true),
            None => (self.path.clone(), false),
        }))
    }

    /// A cursor at the line holding `seq` (or at the end of the live file
    /// when the log has not reached it yet).
    fn locate(&self, seq: u64) -> Result<Option<Cursor>> {
        let Some((path, archived)) = self.file_holding(seq)? else {
            return Ok(None);
        };
        let Some(file) = open_if_exists(&path)? else {
            return Ok(None);
        };
        let meta = file
            .metadata()
            .map_err(|e| io_error(&path, "cannot stat", e))?;
        let identity = (meta.dev(), meta.ino());
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut offset = 0u64;
        loop {
            let Some((record, len)) = read_record(&mut reader, &path)? else {
                // Not written yet: wait at the end for it.
                return Ok(Some(Cursor {
                    reader,
                    offset,
                    next_seq: seq,
                    identity,
                    archived,
                }));
            };
            if record.seq >= seq {
                if record.seq > seq {
                    return Err(io_error(
                        &path,
                        "cannot read",
                        format!(
                            "record seq {seq} is not in the log (the file goes from seq {} on)",
                            record.seq
                        ),
                    ));
                }
                reader
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| io_error(&path, "cannot read", e))?;
                return Ok(Some(Cursor {
                    reader,
                    offset,
                    next_seq: seq,
                    identity,
                    archived,
                }));
            }
            offset += len;
        }
    }
}

fn open_if_exists(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, "cannot read", e)),
    }
}

/// Whether `path` still names the file with `identity`.
fn same_file(path: &Path, identity: (u64, u64)) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) => Ok((m.dev(), m.ino()) == identity),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, "cannot stat", e)),
    }
}

/// The next complete line as a record, and its length with the newline.
/// `None` at the end or before an incomplete last line (left unread: the
/// reader is put back to its start).
fn read_record(reader: &mut BufReader<File>, path: &Path) -> Result<Option<(LogRecord, u64)>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_RECORD_BYTES + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error(path, "cannot read", e))?;
    if n == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        if n as u64 > MAX_RECORD_BYTES {
            return Err(io_error(
                path,
                "cannot read",
                "a line is longer than a record may be",
            ));
        }
        reader
            .seek_relative(-(n as i64))
            .map_err(|e| io_error(path, "cannot read", e))?;
        return Ok(None);
    }
    let text = String::from_utf8(line)
        .map_err(|_| io_error(path, "cannot read", "a line is not UTF-8"))?;
    let (seq, digest) = Receipt::chain_head(&text).map_err(|e| match e {
        CoreError::Signature(m) => io_error(path, "a line is not a record", m),
        other => other,
    })?;
    Ok(Some((
        LogRecord {
            seq,
            digest,
            envelope: text,
        },
        n as u64,
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::core::audit::{AuditLog, AuditOptions, ChainVerifier};
    use crate::core::keys::{Keyring, SigningKey};

    fn body(n: u64) -> Map<String, serde_json::Value> {
        let mut m = Map::new();
        m.insert("kind".into(), json!("decision"));
        m.insert("decision".into(), json!("deny"));
        m.insert("n".into(), json!(n));
        m
    }

    fn rotating_log(records: u64) -> (PathBuf, SigningKey) {
        let dir = std::env::temp_dir().join(format!("execgate-reader-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let key = SigningKey::generate();
        let options = AuditOptions {
            rotate_bytes: 2048,
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, key.clone(), options).unwrap();
        for n in 0..records {
            log.append(body(n)).unwrap();
        }
        log.close().unwrap();
        (path, key)
    }

    #[test]
    fn reads_every_record_in_order_across_rotated_files_from_any_seq() {
        let (path, key) = rotating_log(40);
        let archives = std::fs::read_dir(path.parent().unwrap()).unwrap().count() - 1;
        assert!(archives >= 3, "{archives} archives");
        let mut reader = LogReader::new(&path);
        let mut all: Vec<LogRecord> = Vec::new();
        loop {
            let next = all.last().map_or(1, |r| r.seq + 1);
            let batch = reader.read_from(next, 7, usize::MAX).unwrap();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert!(seqs.len() as u64 > 40, "rotation records too");
        assert_eq!(reader.log_id().unwrap(), Some(all[0].digest.clone()));
        // From the middle, with a fresh reader (a shipper resuming).
        let mid = LogReader::new(&path).read_from(17, 5, usize::MAX).unwrap();
        assert_eq!(mid, all[16..21].to_vec());
        // The chain verifies as rows, and a gap or a moved row is named.
        let mut ring = Keyring::new();
        ring.add(key.verify_key());
        let mut v = ChainVerifier::new(ring.clone(), Some(all[0].digest.clone()));
        assert!(v.push(all.iter().map(|r| (r.seq, r.envelope.as_bytes()))));
        assert!(v.finish().ok());
        let mut v = ChainVerifier::new(ring.clone(), Some(all[0].digest.clone()));
        let gap = all.iter().filter(|r| r.seq != 9);
        assert!(!v.push(gap.map(|r| (r.seq, r.envelope.as_bytes()))));
        let failure = v.finish().failure.unwrap();
        assert_eq!(failure.line, 10);
        assert!(
            failure.reason.contains("where 9 was expected"),
            "{}",
            failure.reason
        );
        let mut v = ChainVerifier::new(ring, Some(all[0].digest.clone()));
        assert!(v.push([(1, all[0].envelope.as_bytes())]));
        assert!(!v.push([(2, all[2].envelope.as_bytes())]));
        assert!(v
            .finish()
            .failure
            .unwrap()
            .reason
            .contains("holds the record of seq 3"));
    }

    #[test]
    fn an_incomplete_last_line_waits_and_a_missing_log_is_empty() {
        let (path, _) = rotating_log(3);
        let missing = path.with_file_name("nothing-here");
        assert_eq!(LogReader::new(&missing).log_id().unwrap(), None);
        assert!(LogReader::new(&missing)
            .read_from(1, 10, usize::MAX)
            .unwrap()
            .is_empty());
        let mut reader = LogReader::new(&path);
        let n = reader.read_from(1, 100, usize::MAX).unwrap().len() as u64;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"payloadType\":").unwrap();
        assert!(reader.read_from(n + 1, 100, usize::MAX).unwrap().is_empty());
    }
}
