//! Files at paths a person configured, read and written as if the path
//! could name anything: a FIFO (an open would block), a device, a directory,
//! a huge file, a symlink to a secret. Reads never block and are bounded;
//! errors name the path and what is wrong with it, never more of its
//! content than a short quoted prefix. Files are written through a
//! temporary file with an unpredictable name, created with `O_EXCL` and
//! `O_NOFOLLOW`, then renamed into place.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    /// It exists but is not a regular file: what it is instead.
    NotRegular(&'static str),
    /// Larger than the limit, in bytes.
    TooLarge(u64),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound => write!(f, "no such file or directory"),
            ReadError::NotRegular(what) => write!(f, "{what}, not a regular file"),
            ReadError::TooLarge(limit) => write!(f, "larger than {limit} bytes"),
            ReadError::Io(e) => write!(f, "{}", crate::error::io_reason(e)),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        }
    }
}

/// Reads the regular file at `path`, at most `limit` bytes. Opening never
/// blocks (`O_NONBLOCK`: a FIFO with no writer would); anything but a
/// regular file is refused before a byte is read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(describe_type(kind)));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(bytes)
}

fn describe_type(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// At most the first 20 characters of `bytes`, quoted and escaped, for an
/// error message that must say what a file holds without printing it.
pub fn quoted_prefix(bytes: &[u8]) -> String {
    const SHOWN: usize = 20;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut shown: String = text.chars().take(SHOWN).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// Writes `contents` to `path` atomically: readers see the old file or the
/// new one, never a partial write. The temporary file beside it has an
/// unpredictable name and is created exclusively, never through a link a
/// neighbour placed; `mode` is its permission bits (before the umask).
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut file: File| file.write_all(contents))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.<random>.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    // The standard library seeds each RandomState from the OS's randomness.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{random:016x}.tmp"));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fm-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let dir = scratch("odd");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_bounded(&fifo, 64).unwrap_err();
        assert_eq!(err.to_string(), "a FIFO, not a regular file");
        assert!(matches!(
            read_bounded(&dir, 64),
            Err(ReadError::NotRegular(_))
        ));
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 64),
            Err(ReadError::NotRegular("a device"))
        ));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'1'; 100]).unwrap();
        assert!(matches!(
            read_bounded(&big, 64),
            Err(ReadError::TooLarge(64))
        ));
        assert_eq!(read_bounded(&big, 100).unwrap().len(), 100);
        assert!(matches!(
            read_bounded(&dir.join("none"), 64),
            Err(ReadError::NotFound)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_through_no_planted_link() {
        let dir = scratch("write");
        let target = dir.join("app.pid");
        write_atomically(&target, b"42\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"42\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        assert_ne!(temp_path(&target), temp_path(&target));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quotes_only_a_prefix() {
        assert_eq!(quoted_prefix(b" 12x \n"), "\"12x\"");
        let long = quoted_prefix(&[b'a'; 100]);
        assert!(long.len() < 40, "{long}");
        assert!(quoted_prefix(b"a\nb").contains("\\n"));
    }
}
