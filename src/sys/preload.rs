//! What the master side of `--preload` needs from the kernel: handing the
//! preloader its end of the socketpair across exec, and checking that a pid
//! a preloader names has become the master's own child before the master
//! ever signals it.

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A copy of `fd` numbered `floor` or above, without close-on-exec, so the
/// next exec'd child inherits it at that number. Only valid until the next
/// fork: the master is single-threaded, and the caller drops the copy right
/// after spawning the one child meant to have it.
pub fn dup_inheritable(fd: BorrowedFd<'_>, floor: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD duplicates a descriptor we hold (borrowed for the call)
    // and touches no memory.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, floor) };
    if copy < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `copy` was just created by F_DUPFD and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Whether `pid` is this process's child (running or exited, not yet
/// reaped). Reaps nothing (`WNOWAIT`), blocks never (`WNOHANG`). While it is
/// an unreaped child its number cannot be reused, so a `true` is safe to act
/// on until the master itself reaps it.
pub fn is_own_child(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(_) => true,
            Err(Errno::EINTR) => continue,
            Err(_) => false,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn only_our_children_are_ours() {
        assert!(!is_own_child(1));
        assert!(!is_own_child(std::process::id() as i32));
        assert!(!is_own_child(0));
    }

    #[test]
    fn an_inheritable_copy_is_above_the_floor_and_kept_across_exec() {
        let (a, _b) = nix::unistd::pipe().unwrap();
        let copy = dup_inheritable(a.as_fd(), 40).unwrap();
        assert!(copy.as_raw_fd() >= 40);
        let flags = nix::fcntl::fcntl(&copy, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(flags & libc::FD_CLOEXEC, 0);
    }
}
