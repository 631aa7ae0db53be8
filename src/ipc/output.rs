//! `stdout_path` and `stderr_path`: the files the master's and the workers'
//! output go to, reopened on USR1 (logrotate's `postrotate`).
//!
//! Workers never hold the files. Each stream has one pipe: every worker
//! writes into its write end (as its fd 1 or 2), and the master drains the
//! read end into the file it currently has open. So after a rotation and
//! USR1 every new line, from the master and from every worker, lands in the
//! new file and nobody keeps writing to the rotated one. A line written in a
//! single write(2) of at most PIPE_BUF (4096) bytes is never interleaved with
//! another worker's.

use crate::error::Error;
use nix::fcntl::OFlag;
use nix::unistd::{dup2_stderr, dup2_stdout, pipe2};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How much one pass of the loop drains from one pipe, so a flood of output
/// cannot starve signal handling.
const DRAIN_PER_PASS: usize = 1 << 20;

/// One stream (stdout or stderr): the file, and the pipe workers write into.
pub struct Sink {
    path: PathBuf,
    file: File,
    /// 1 or 2: the master's own descriptor that follows the file.
    own_fd: RawFd,
    read: OwnedFd,
    write: OwnedFd,
}

pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl Sink {
    fn open(key: &'static str, path: &Path, own_fd: RawFd) -> Result<Sink, Error> {
        let file = open_append(path).map_err(|source| Error::LogFile {
            key,
            path: path.to_path_buf(),
            source,
        })?;
        let pipe_failed = |source| Error::Sys {
            call: "pipe",
            source,
        };
        let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_failed)?;
        nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(pipe_failed)?;
        let sink = Sink {
            path: path.to_path_buf(),
            file,
            own_fd,
            read,
            write,
        };
        sink.redirect_own_fd();
        Ok(sink)
    }

    /// Points the master's own fd 1 or 2 at the current file.
    fn redirect_own_fd(&self) {
        let _ = match self.own_fd {
            1 => dup2_stdout(&self.file),
            _ => dup2_stderr(&self.file),
        };
    }

    /// Opens the path anew (after a rotation); keeps the old file on failure.
    fn reopen(&mut self) -> Result<(), String> {
        let file = open_append(&self.path)
            .map_err(|e| format!("{}: {}", self.path.display(), crate::error::io_reason(&e)))?;
        self.drain();
        self.file = file;
        self.redirect_own_fd();
        Ok(())
    }

    /// Copies what the workers wrote into the file; returns bytes copied.
    fn drain(&mut self) -> usize {
        let mut buf = [0u8; 65536];
        let mut total = 0;
        while total < DRAIN_PER_PASS {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // A full disk loses output, never the master.
                    let _ = self.file.write_all(&buf[..n]);
                    total += n;
                }
            }
        }
        total
    }
}

/// The configured output files.
#[derive(Default)]
pub struct LogFiles {
    sinks: Vec<Sink>,
    /// Owner given to the files, again after each reopen.
    owner: (Option<u32>, Option<u32>),
}

impl LogFiles {
    /// Opens the files (creating them) and points the master's own stdout and
    /// stderr at them. Fails naming the file.
    pub fn open(stdout: Option<&Path>, stderr: Option<&Path>) -> Result<LogFiles, Error> {
        let mut sinks = Vec::new();
        if let Some(path) = stdout {
            sinks.push(Sink::open("stdout_path", path, 1)?);
        }
        if let Some(path) = stderr {
            sinks.push(Sink::open("stderr_path", path, 2)?);
        }
        Ok(LogFiles {
            sinks,
            owner: (None, None),
        })
    }

    /// The write ends a worker gets as fd 1 and 2 (`None`: inherit ours).
    pub fn worker_stdio(&self) -> (Option<RawFd>, Option<RawFd>) {
        let find = |fd| {
            self.sinks
                .iter()
                .find(|s| s.own_fd == fd)
                .map(|s| s.write.as_raw_fd())
        };
        (find(1), find(2))
    }

    /// Reopens every file (USR1); a file that cannot be reopened keeps being
    /// written where it was, and the error is logged.
    pub fn reopen(&mut self) {
        let (uid, gid) = self.owner;
        for sink in &mut self.sinks {
            match sink.reopen() {
                Ok(()) => {
                    if uid.is_some() || gid.is_some() {
                        let _ = std::os::unix::fs::chown(&sink.path, uid, gid);
                    }
                    log::info!("event=log-reopened path={}", sink.path.display())
                }
                Err(why) => log::error!(
                    "event=log-reopen-failed error=\"{why}\" action=\"kept the old file\""
                ),
            }
        }
    }

    /// Copies pending worker output into the files.
    pub fn drain(&mut self) {
        for sink in &mut self.sinks {
            sink.drain();
        }
    }

    /// The pipes' read ends, for poll(2).
    pub fn poll_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.sinks.iter().map(|s| s.read.as_fd())
    }

    /// Gives the files to `uid`/`gid` (workers' user), so rotation tools that
    /// copy ownership keep it sensible.
    pub fn chown(&mut self, uid: Option<u32>, gid: Option<u32>) {
        self.owner = (uid, gid);
        if uid.is_none() && gid.is_none() {
            return;
        }
        for sink in &self.sinks {
            let _ = std::os::unix::fs::chown(&sink.path, uid, gid);
        }
    }
}
