//! Where a master's control and notify sockets live: socket files in a
//! directory only the master's user can enter.
//!
//! | path                                   | mode | owner                       |
//! |----------------------------------------|------|-----------------------------|
//! | `<base>/.forkmaster-<euid>/`           | 0700 | the master's user (0711 when workers run as another user) |
//! | `<base>/.forkmaster-<euid>/<pid>.control` | 0600 | the master's user        |
//! | `<base>/.forkmaster-<euid>/<pid>.notify`  | 0600 | the master's user, or the workers' user |
//!
//! The base is `runtime_dir` if set, else systemd's `$RUNTIME_DIRECTORY`,
//! else the pid file's directory, else `$XDG_RUNTIME_DIR` or `/tmp`. The
//! private directory is shared by the user's masters under one base (an
//! upgrade's old and new master live in it side by side). It is made with
//! mkdir and then checked through an `O_NOFOLLOW` open: a symlink, or a
//! directory another user owns or may write, is refused, so nothing is
//! ever created through something someone else placed there.
//!
//! Unlike abstract socket names (which belong to the network namespace, and
//! which anyone may bind first), these files belong to the file system: two
//! masters that are each PID 1 of their own pid namespace do not collide
//! unless they share the directory, and no other user can take the names.

use crate::protocol;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, fstat, Mode, SFlag};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes, the terminating NUL included.
pub const MAX_SOCKET_PATH: usize = 107;

/// The base directories a master's sockets may be under, most specific
/// first: the configured one alone if there is one, else systemd's
/// runtime directory and the pid file's directory.
pub fn candidates(
    runtime_dir: Option<&Path>,
    systemd_runtime: Option<OsString>,
    pid_file: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(dir) = runtime_dir {
        return vec![dir.to_path_buf()];
    }
    let mut bases = Vec::new();
    if let Some(first) = systemd_runtime
        .as_ref()
        .and_then(|v| v.as_bytes().split(|&b| b == b':').next())
        .filter(|first| !first.is_empty())
    {
        bases.push(PathBuf::from(std::ffi::OsStr::from_bytes(first)));
    }
    if let Some(pid_file) = pid_file {
        let parent = pid_file.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if !bases.contains(&dir) {
            bases.push(dir);
        }
    }
    bases
}

/// The base a master puts its sockets under: the first candidate, else
/// `$XDG_RUNTIME_DIR` or `/tmp`.
pub fn master_base(
    runtime_dir: Option<&Path>,
    env: &[(OsString, OsString)],
    pid_file: Option<&Path>,
) -> PathBuf {
    let var = |key: &str| {
        env.iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    candidates(runtime_dir, var(protocol::RUNTIME_DIRECTORY), pid_file)
        .into_iter()
        .next()
        .or_else(|| var("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The private directory of user `euid` under `base`.
pub fn private_dir(base: &Path, euid: u32) -> PathBuf {
    base.join(protocol::private_dir_name(euid))
}

/// A master's private socket directory, checked to be ours alone.
pub struct RunDir {
    path: PathBuf,
    /// Kept open so the sockets' owner can be set relative to it.
    dir: OwnedFd,
    /// What it was created from, to create it again (`reopen`).
    base: PathBuf,
    traversable: bool,
}

impl RunDir {
    /// Creates (or takes) `<base>/.forkmaster-<euid>`, mode 0700, or 0711
    /// when `traversable` (workers of another user must reach the notify
    /// socket). Refuses a symlink, a non-directory, or a directory owned by
    /// someone else or writable by group or others, naming the path.
    pub fn create(base: &Path, traversable: bool) -> Result<RunDir, String> {
        let base = std::fs::canonicalize(base).map_err(|e| {
            format!(
                "runtime directory {}: {} (use --runtime-dir)",
                base.display(),
                crate::error::io_reason(&e)
            )
        })?;
        let euid = nix::unistd::geteuid().as_raw();
        let path = private_dir(&base, euid);
        let fail = |why: &str| format!("runtime directory {}: {why}", path.display());
        let mode = if traversable { 0o711 } else { 0o700 };
        match nix::unistd::mkdir(&path, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(&crate::error::errno_reason(e))),
        }
        let dir = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                fail("not a directory (a symlink or another file was placed there): refusing it")
            }
            e => fail(&crate::error::errno_reason(e)),
        })?;
        let stat = fstat(&dir).map_err(|e| fail(&crate::error::errno_reason(e)))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            return Err(fail("not a directory: refusing it"));
        }
        if stat.st_uid != euid {
            return Err(fail(&format!(
                "owned by uid {}, not by us (uid {euid}): refusing it",
                stat.st_uid
            )));
        }
        if stat.st_mode & 0o022 != 0 {
            return Err(fail(&format!(
                "mode {:04o} lets others write in it: refusing it",
                stat.st_mode & 0o7777
            )));
        }
        // Widen to 0711 only when needed; never narrow what another master
        // of ours under this base may rely on.
        let current = stat.st_mode & 0o7777;
        if current | mode != current {
            fchmod(&dir, Mode::from_bits_truncate(current | mode))
                .map_err(|e| fail(&crate::error::errno_reason(e)))?;
        }
        Ok(RunDir {
            path,
            dir,
            base,
            traversable,
        })
    }

    /// Creates and checks the directory again, as `create` did: after
    /// someone removed it (a cleaned runtime directory). The base is not
    /// made again.
    pub fn reopen(&self) -> Result<RunDir, String> {
        RunDir::create(&self.base, self.traversable)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the control socket of the master `pid` is.
    pub fn control_path(&self, pid: i32) -> PathBuf {
        self.path.join(protocol::control_file(pid))
    }

    /// Where the notify socket of the master `pid` is.
    pub fn notify_path(&self, pid: i32) -> PathBuf {
        self.path.join(protocol::notify_file(pid))
    }

    /// Makes way for this master's sockets: removes socket files nobody
    /// listens on any more (their masters were killed), and fails if a live
    /// socket holds one of our names (a master of another pid namespace
    /// with our pid shares this directory).
    pub fn prepare(&self, pid: i32) -> Result<(), String> {
        for path in [self.control_path(pid), self.notify_path(pid)] {
            check_length(&path)?;
            if is_stale(&path) == Some(false) {
                return Err(format!(
                    "socket {}: a live process listens there (a master with our pid in another pid namespace?): give each its own --runtime-dir",
                    path.display()
                ));
            }
        }
        self.remove_stale();
        Ok(())
    }

    /// Removes every socket file here that nothing is bound to any more.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((pid, suffix)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let ours = [protocol::CONTROL_SUFFIX, protocol::NOTIFY_SUFFIX].contains(&suffix);
            if !ours || pid.parse::<i32>().is_err() {
                continue;
            }
            let path = entry.path();
            if is_stale(&path) == Some(true) && std::fs::remove_file(&path).is_ok() {
                log::info!("event=stale-socket-removed path={}", path.display());
            }
        }
    }

    /// Gives the notify socket to the workers' user and group, so that
    /// workers running as them can send to it.
    pub fn share_with_workers(&self, pid: i32, uid: Option<u32>, gid: Option<u32>) {
        let name = protocol::notify_file(pid);
        let result = nix::unistd::fchownat(
            &self.dir,
            name.as_str(),
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(e) = result {
            log::warn!(
                "event=chown-failed path={} error=\"{}\"",
                self.notify_path(pid).display(),
                crate::error::errno_reason(e)
            );
        }
    }
}

/// Fails with a message naming the path if it does not fit in `sun_path`.
pub fn check_length(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "socket {}: {len} bytes, longer than the {MAX_SOCKET_PATH} a socket path may have: use --runtime-dir with a shorter directory",
            path.display()
        ));
    }
    Ok(())
}

/// Whether the socket file at `path` is left over: `Some(true)` if nothing
/// is bound to it, `Some(false)` if something is, `None` if there is no
/// such socket (or it cannot be told).
fn is_stale(path: &Path) -> Option<bool> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return None;
    }
    let refused = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Some(true),
        _ => None,
    };
    let is_notify = path
        .extension()
        .is_some_and(|e| e == protocol::NOTIFY_SUFFIX);
    if is_notify {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(path).map_or_else(refused, |()| Some(false))
    } else {
        UnixStream::connect(path).map_or_else(refused, |_| Some(false))
    }
}

/// The inode of the socket file at `path`: what a socket bound there
/// remembers, to remove its own file and no other.
pub fn socket_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| m.ino())
}

/// Removes the socket file at `path` if it is still the one bound (`ino`).
pub fn remove_socket(path: &Path, ino: Option<u64>) {
    if ino.is_some() && socket_inode(path) == ino {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_base_wins_then_systemd_then_the_pid_file() {
        let pid = Path::new("/srv/app/app.pid");
        assert_eq!(
            candidates(Some(Path::new("/r")), Some("/s".into()), Some(pid)),
            vec![PathBuf::from("/r")]
        );
        assert_eq!(
            candidates(None, Some("/s:/t".into()), Some(pid)),
            vec![PathBuf::from("/s"), PathBuf::from("/srv/app")]
        );
        assert_eq!(
            candidates(None, None, Some(Path::new("app.pid"))),
            vec![PathBuf::from(".")]
        );
        let env = vec![("XDG_RUNTIME_DIR".into(), "/run/user/5".into())];
        assert_eq!(master_base(None, &env, None), PathBuf::from("/run/user/5"));
        assert_eq!(master_base(None, &[], None), PathBuf::from("/tmp"));
    }

    #[test]
    fn a_long_path_is_refused_naming_the_way_out() {
        let long = PathBuf::from(format!("/{}/1.control", "x".repeat(120)));
        assert!(check_length(&long)
            .unwrap_err()
            .contains("use --runtime-dir"));
        assert!(check_length(Path::new("/run/1.control")).is_ok());
    }
}
