//! The master's errors, each carrying the context a person needs to act:
//! which address, file or flag, and why. Printed once, on one line, as
//! `forkmaster: <error>`.

use crate::config::ConfigError;
use crate::listen::Address;
use nix::errno::Errno;
use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// Bad flags or config file; the text names the origin and value.
    Config(ConfigError),
    Bind {
        addr: Address,
        source: Errno,
    },
    UnixSocketInUse {
        path: PathBuf,
    },
    NotASocket {
        path: PathBuf,
    },
    AlreadyRunning {
        pid: i32,
        pid_file: PathBuf,
    },
    PidFile {
        path: PathBuf,
        source: io::Error,
    },
    /// `stdout_path` or `stderr_path` could not be opened.
    LogFile {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Workers could not boot at first start.
    StartupFailed(String),
    /// A new master's workers could not boot; the old master keeps serving.
    UpgradeFailed(String),
    Sys {
        call: &'static str,
        source: Errno,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Bind { addr, source } => write!(f, "listen {addr}: {}", errno_reason(*source)),
            Error::UnixSocketInUse { path } => write!(
                f,
                "listen unix:{}: a live server accepts on this socket",
                path.display()
            ),
            Error::NotASocket { path } => write!(
                f,
                "listen unix:{}: the path exists and is not a socket",
                path.display()
            ),
            Error::AlreadyRunning { pid, pid_file } => write!(
                f,
                "already running: pid file {} names live process {pid}",
                pid_file.display()
            ),
            Error::PidFile { path, source } => {
                write!(f, "pid file {}: {}", path.display(), io_reason(source))
            }
            Error::LogFile { key, path, source } => {
                write!(f, "{key} {}: {}", path.display(), io_reason(source))
            }
            Error::StartupFailed(why) => write!(f, "startup failed: {why}"),
            Error::UpgradeFailed(why) => write!(f, "upgrade failed: {why}"),
            Error::Sys { call, source } => write!(f, "{call}: {}", errno_reason(*source)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Sys { source, .. } => Some(source),
            Error::PidFile { source, .. } | Error::LogFile { source, .. } => Some(source),
            Error::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// The master's exit code for this error: 1 for every failure to start
    /// or to keep running (2, a usage error, is clap's before we run).
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::FAILURE
    }
}

/// `Permission denied (os error 13)` as `permission denied`.
pub fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => errno_reason(Errno::from_raw(code)),
        None => e.to_string(),
    }
}

/// `EACCES` as `permission denied`.
pub fn errno_reason(e: Errno) -> String {
    let mut text = e.desc().to_string();
    if let Some(first) = text.get(..1) {
        let lower = first.to_ascii_lowercase();
        text.replace_range(..1, &lower);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_a_sentence() {
        let e = Error::Bind {
            addr: Address::Tcp("0.0.0.0:80".parse().unwrap()),
            source: Errno::EACCES,
        };
        assert_eq!(e.to_string(), "listen 0.0.0.0:80: permission denied");
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_reason(&e), "no such file or directory");
    }
}
