//! Pid files: written atomically (temp file + rename), removed only while they
//! still hold our pid. A pid file naming a live forkmaster master of this
//! pid file means another master runs; one naming a dead process, or a live
//! process that is not that master (a pid reused after a reboot or a
//! container restart), is stale and taken over.
//!
//! Reading never blocks and is bounded (see `files`): a FIFO or a directory
//! at the path is refused, a huge file or a symlink to a secret is never
//! copied into a message beyond a short quoted prefix.

use crate::error::{Error, Result};
use crate::files::{self, ReadError};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A pid and a newline take a few bytes; anything much larger is not a pid file.
const PID_FILE_LIMIT: u64 = 128;

/// Reads the pid a pid file names; `Ok(None)` if there is no such file.
/// Errors name the file: what is not a regular file (`InvalidInput`), or
/// content that is not a pid (`InvalidData`, quoting at most a prefix).
pub fn read_pid(path: &Path) -> Result<Option<i32>> {
    let fail = |kind, why: String| Error::PidFile {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, why),
    };
    let bytes = match files::read_bounded(path, PID_FILE_LIMIT) {
        Ok(bytes) => bytes,
        Err(ReadError::NotFound) => return Ok(None),
        Err(ReadError::Io(source)) => {
            return Err(Error::PidFile {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(e @ ReadError::TooLarge(_)) => {
            return Err(fail(ErrorKind::InvalidData, format!("not a pid: {e}")))
        }
        Err(e) => return Err(fail(ErrorKind::InvalidInput, e.to_string())),
    };
    let text = String::from_utf8_lossy(&bytes);
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ if text.trim().is_empty() => Ok(None),
        _ => Err(fail(
            ErrorKind::InvalidData,
            format!("not a pid: {}", files::quoted_prefix(&bytes)),
        )),
    }
}

/// Whether a process with this pid exists and has not exited (a zombie
/// waiting for its parent to reap it counts as gone).
pub fn is_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself hold spaces or parentheses.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Refuses to go on if `path` names a live process other than us that
/// `is_master_of_this_file` confirms is the master of this pid file.
pub fn ensure_not_running(path: &Path, is_master_of_this_file: impl Fn(i32) -> bool) -> Result<()> {
    let pid = match read_pid(path) {
        Ok(Some(pid)) => pid,
        Ok(None) => return Ok(()),
        Err(Error::PidFile { source, .. }) if source.kind() == ErrorKind::InvalidData => {
            log::warn!(
                "event=stale-pid-file path={} reason=\"{}\" action=take-over",
                crate::logging::esc(path.display()),
                crate::logging::esc(&source)
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if pid == std::process::id() as i32 || !is_alive(pid) {
        log::info!(
            "event=stale-pid-file path={} pid={pid} action=take-over",
            crate::logging::esc(path.display())
        );
        return Ok(());
    }
    if is_master_of_this_file(pid) {
        return Err(Error::AlreadyRunning {
            pid,
            pid_file: path.to_path_buf(),
        });
    }
    log::warn!(
        "event=stale-pid-file path={} pid={pid} reason=\"a live process that is not the master of this pid file\" action=take-over",
        crate::logging::esc(path.display())
    );
    Ok(())
}

/// Writes `pid` to `path` atomically: readers see the old file or the new
/// one, never a partial write.
pub fn write_pid(path: &Path, pid: i32) -> Result<()> {
    // No fsync: the rename alone makes the change atomic for readers, and a
    // pid file need not survive a power cut. Under I/O load an fsync can
    // stall for seconds, and an upgrading master writes this before it
    // starts its workers.
    files::write_atomically(path, format!("{pid}\n").as_bytes(), 0o644).map_err(|source| {
        Error::PidFile {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Removes the pid file if it still names `pid`; reports whether it did.
pub fn remove_if_ours(path: &Path, pid: i32) -> bool {
    match read_pid(path) {
        Ok(Some(found)) if found == pid => match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "event=pid-file-not-removed path={} error=\"{}\"",
                    crate::logging::esc(path.display()),
                    crate::logging::esc(crate::error::io_reason(&e))
                );
                false
            }
        },
        _ => false,
    }
}

/// The pid file's path with its directory resolved, to tell whether two
/// spellings name the same file (the file itself need not exist).
pub fn canonical(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// `PIDFILE.oldbin`: where an old master keeps its pid while a new master
/// (USR2) takes over the pid file.
pub fn oldbin_path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_os_string();
    name.push(".oldbin");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fm-pid-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("app.pid")
    }

    #[test]
    fn write_read_remove() {
        let path = scratch("wrr");
        write_pid(&path, 4242).unwrap();
        assert_eq!(read_pid(&path).unwrap(), Some(4242));
        assert!(!remove_if_ours(&path, 1));
        assert!(path.exists());
        assert!(remove_if_ours(&path, 4242));
        assert_eq!(read_pid(&path).unwrap(), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn live_refuses_stale_is_taken_over() {
        let path = scratch("live");
        // Our parent (the test runner's parent) is alive: refused when it
        // is this pid file's master, taken over when it is not.
        write_pid(&path, nix::unistd::getppid().as_raw()).unwrap();
        assert!(matches!(
            ensure_not_running(&path, |_| true),
            Err(Error::AlreadyRunning { .. })
        ));
        assert!(ensure_not_running(&path, |_| false).is_ok());
        // pid_max is at most 2^22, so this pid cannot exist.
        write_pid(&path, 1 << 23).unwrap();
        assert!(ensure_not_running(&path, |_| true).is_ok());
        std::fs::write(&path, "garbage").unwrap();
        let err = read_pid(&path).unwrap_err().to_string();
        assert!(err.contains("not a pid"), "{err}");
        assert!(ensure_not_running(&path, |_| true).is_ok());
        std::fs::write(&path, vec![b'7'; 1 << 20]).unwrap();
        let err = read_pid(&path).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(ensure_not_running(&path, |_| true).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
