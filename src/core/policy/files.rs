//! Reading policy, data and key files without trusting what is at the path.
//!
//! A path handed to the gate may name a FIFO (an `open` that blocks until a
//! writer appears), a device (`/dev/zero` never ends), a directory, or a file
//! far larger than any policy. Each of those must be a quick, clear error, not
//! a hang or a multi-gigabyte read. So a file is opened with `O_NONBLOCK` (an
//! open of a FIFO returns at once), its type and size are checked on the open
//! descriptor (no race with a rename), and at most the cap plus one byte is
//! read, so a file that grows after the check is still refused.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest Rego file the gate reads: 4 MiB, far above any hand-written policy.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 << 20;

/// Largest JSON/YAML data file the gate reads: 64 MiB (allowlists of a few
/// hundred thousand entries fit; a data file larger than that belongs in a
/// bundle or a store, not in every agent's memory).
pub const MAX_DATA_FILE_BYTES: u64 = 64 << 20;

/// Largest key file the gate reads: 64 KiB (an Ed25519 PEM is under 1 KiB; a
/// keyring directory holds one key per file).
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// Reads the whole regular file at `path`, refusing anything else.
///
/// The error is a sentence without the path (callers put the path in their
/// own error type): "is a FIFO, not a regular file", "is 3000000000 bytes,
/// over the 4194304-byte limit", or the OS error.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes));
    }
    read_capped(file, max_bytes)
}

/// Reads at most `max_bytes`; one byte more means the file grew past the cap.
fn read_capped(file: File, max_bytes: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > max_bytes {
        return Err(too_large(out.len() as u64, max_bytes));
    }
    Ok(out)
}

fn too_large(size: u64, max_bytes: u64) -> String {
    format!("is {size} bytes or more, over the {max_bytes}-byte limit")
}

/// [`read_regular_file`] as UTF-8 text.
pub fn read_regular_text(path: &Path, max_bytes: u64) -> Result<String, String> {
    String::from_utf8(read_regular_file(path, max_bytes)?)
        .map_err(|_| "is not valid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("execgate-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn reads_a_regular_file() {
        let p = tmp("ok.rego");
        std::fs::write(&p, "package x\n").unwrap();
        assert_eq!(read_regular_text(&p, 100).unwrap(), "package x\n");
    }

    #[test]
    fn refuses_fifo_directory_device_and_oversized() {
        let fifo = tmp("fifo.rego");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_regular_file(&fifo, 100).unwrap_err().contains("FIFO"));
        let dir = tmp("adir");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_regular_file(&dir, 100)
            .unwrap_err()
            .contains("directory"));
        let dev = read_regular_file(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(dev.contains("character device"), "{dev}");
        let big = tmp("big.json");
        std::fs::write(&big, vec![b' '; 101]).unwrap();
        assert!(read_regular_file(&big, 100)
            .unwrap_err()
            .contains("over the 100-byte"));
    }
}
