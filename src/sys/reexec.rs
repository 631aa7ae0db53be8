//! The raw calls of an in-place upgrade: the master replaces its own image
//! with `execve(2)`, keeping its pid and its children. Signals it handles
//! are blocked across the exec (the mask survives `execve`, dispositions do
//! not), so one arriving meanwhile waits, pending, for the new image's
//! handlers instead of meeting the default action; the state goes in a
//! memfd, whose number the new image finds in its environment.

use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use std::ffi::{CStr, CString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};

/// Blocks `signals`; returns the mask before, to restore if the exec fails.
pub fn block_signals(signals: &[Signal]) -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    Ok(old)
}

/// Puts back a mask `block_signals` returned.
pub fn restore_mask(old: &SigSet) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None);
}

/// Unblocks `signals` (the new image, once its handlers are installed):
/// those that arrived during the exec are delivered now.
pub fn unblock_signals(signals: &[Signal]) {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}

/// The program an in-place upgrade checks and then execs, opened once
/// (read-only, close-on-exec) so that the file checked is the file exec'd,
/// whatever happens to its path meanwhile.
pub fn open_program(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(path)?))
}

/// Replaces this process's image with the open `program` (`execveat` with
/// `AT_EMPTY_PATH`). Returns only on failure. A script (`#!`) is read by
/// its interpreter through `/dev/fd/N`, which close-on-exec would have
/// closed (`ENOENT`): then it is run again with the fd inherited.
pub fn exec_program(program: &OwnedFd, argv: &[CString], env: &[CString]) -> Errno {
    use nix::fcntl::AtFlags;
    let exec = || match nix::unistd::execveat(program, c"", argv, env, AtFlags::AT_EMPTY_PATH) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    match exec() {
        Errno::ENOENT => match super::fd::set_inherited(program.as_fd(), true) {
            Ok(()) => {
                let errno = exec();
                let _ = super::fd::set_inherited(program.as_fd(), false);
                errno
            }
            Err(_) => Errno::ENOENT,
        },
        errno => errno,
    }
}

/// A memfd holding `bytes`, read from its start; close-on-exec until the
/// caller clears it for the exec.
pub fn memfd_with(name: &CStr, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// Everything in a file (a memfd) from its start, at most `limit` bytes.
pub fn read_all(fd: OwnedFd, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}
