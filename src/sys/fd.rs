//! Raw fd numbers where they cannot be avoided: sweeping what the master
//! inherited to close-on-exec, and adopting the listening sockets whose
//! numbers a previous master (`FORKMASTER_INHERIT_FDS`) or systemd
//! (`LISTEN_FDS`) named to us. `adopt_inherited` is the only way a number
//! becomes an `OwnedFd`; `inspect_inherited` only lends one for a call.

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};
use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Every fd number adopted so far. Never shrinks: adoption happens once, at
/// startup, and a number is never adopted twice even after it was closed.
static ADOPTED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Why an fd number named to us is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAdoptable {
    NotOpen,
    /// fstat failed.
    Unreadable(Errno),
    NotSocket,
    NotListening,
    /// Close-on-exec is set, so it did not reach us through exec: it is one
    /// of ours (every descriptor we create is close-on-exec), or adopted.
    NotInherited,
    AdoptedAlready,
    /// Not the kind of descriptor (pipe, socket, file) it was handed as.
    WrongKind,
}

impl fmt::Display for NotAdoptable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAdoptable::NotOpen => f.write_str("not open"),
            NotAdoptable::Unreadable(e) => f.write_str(e.desc()),
            NotAdoptable::NotSocket => f.write_str("not a socket"),
            NotAdoptable::NotListening => f.write_str("not a listening socket"),
            NotAdoptable::NotInherited => f.write_str("not inherited (close-on-exec is set)"),
            NotAdoptable::AdoptedAlready => f.write_str("adopted already"),
            NotAdoptable::WrongKind => f.write_str("not the kind of descriptor handed"),
        }
    }
}

/// Shows `inspect` the inherited listening socket numbered `fd`, borrowed for
/// this call only (to read its address, say). Fails, without calling
/// `inspect`, if `fd` is not an open, inherited, not yet adopted listening
/// socket. `inspect` must not adopt: no fd is adopted while it runs.
pub fn inspect_inherited<T>(
    fd: RawFd,
    inspect: impl FnOnce(BorrowedFd<'_>) -> T,
) -> Result<T, NotAdoptable> {
    let adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    check_inherited(fd, &adopted)?;
    // SAFETY: `fd` is open (checked just now) and owned by nothing in this
    // process (inherited, not adopted, and none can be while we hold the
    // lock), so nothing closes it during the call; the borrow cannot outlive
    // `inspect`.
    let result = inspect(unsafe { BorrowedFd::borrow_raw(fd) });
    drop(adopted);
    Ok(result)
}

/// The one place a raw fd number becomes an `OwnedFd`: takes the listening
/// socket numbered `fd` that whoever started us named in the environment.
/// Fails if `fd` is not an open listening socket, was not inherited across
/// exec, or was adopted before.
///
/// Taking ownership is sound because the descriptor is open (checked), is
/// owned by nothing else in this process (close-on-exec is clear, so it came
/// through exec, while every descriptor this process creates is
/// close-on-exec), and is adopted at most once (every adopted number is
/// recorded here and a second adoption refused), so no two `OwnedFd`s share it.
pub fn adopt_inherited(fd: RawFd) -> Result<OwnedFd, NotAdoptable> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    check_inherited(fd, &adopted)?;
    adopted.insert(fd);
    // SAFETY: see above: open, inherited, a listening socket, and recorded
    // as adopted (under the lock) so that this happens once per number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a descriptor handed across an in-place upgrade must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandedKind {
    /// A pipe end (a worker's output, the exec-error pipe).
    Pipe,
    /// A socket (the notify socket).
    Socket,
    /// A regular file (the memfd holding the state).
    File,
}

/// Takes a descriptor our own previous image handed us across an in-place
/// upgrade (`FORKMASTER_INPLACE_STATE`): an open pipe, socket or file as
/// `kind` says, close-on-exec clear, never adopted before. Sound for the
/// same reasons as `adopt_inherited`: open (checked), owned by nothing in
/// this process (it came through exec), and recorded so it is taken once.
pub fn adopt_handed(fd: RawFd, kind: HandedKind) -> Result<OwnedFd, NotAdoptable> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    let flags = fd_flags(fd).ok_or(NotAdoptable::NotOpen)?;
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(NotAdoptable::NotInherited);
    }
    if adopted.contains(&fd) {
        return Err(NotAdoptable::AdoptedAlready);
    }
    // SAFETY: `fd` is open and owned by nothing in this process (checked
    // just now, under the lock); the borrow ends with this statement.
    let stat = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).map_err(NotAdoptable::Unreadable)?;
    let wanted = match kind {
        HandedKind::Pipe => SFlag::S_IFIFO,
        HandedKind::Socket => SFlag::S_IFSOCK,
        HandedKind::File => SFlag::S_IFREG,
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != wanted {
        return Err(NotAdoptable::WrongKind);
    }
    adopted.insert(fd);
    // SAFETY: open, inherited through exec, of the kind expected, and
    // recorded as adopted under the lock, so this happens once per number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Ours now: no later child may inherit it.
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(owned)
}

/// Clears close-on-exec on `fd` so that an exec of this process keeps it
/// (an in-place upgrade), or sets it again if the exec failed.
pub fn set_inherited(fd: BorrowedFd<'_>, inherited: bool) -> nix::Result<()> {
    let flags = if inherited {
        nix::fcntl::FdFlag::empty()
    } else {
        nix::fcntl::FdFlag::FD_CLOEXEC
    };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// Checks `fd` is open, without close-on-exec, not in `adopted`, and a
/// listening socket. The first three make borrowing it sound: nothing in
/// this process owns it, so nothing closes it while it is borrowed.
fn check_inherited(fd: RawFd, adopted: &BTreeSet<RawFd>) -> Result<(), NotAdoptable> {
    let flags = fd_flags(fd).ok_or(NotAdoptable::NotOpen)?;
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(NotAdoptable::NotInherited);
    }
    if adopted.contains(&fd) {
        return Err(NotAdoptable::AdoptedAlready);
    }
    // SAFETY: `fd` is open and owned by nothing in this process (checked
    // just now); the borrow ends with this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(NotAdoptable::Unreadable)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(NotAdoptable::NotSocket);
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false) {
        return Err(NotAdoptable::NotListening);
    }
    Ok(())
}

/// The descriptor flags of `fd`, or `None` if it is not open.
fn fd_flags(fd: RawFd) -> Option<libc::c_int> {
    // SAFETY: F_GETFD only reads the descriptor table; a number that is not
    // open fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags)
}

/// Marks every open descriptor from 3 up close-on-exec, except `keep`, so
/// nothing the master inherited leaks into workers. Best effort: does
/// nothing if `/proc/self/fd` cannot be read.
pub fn set_cloexec_from_3(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3 && !keep.contains(fd))
        .collect();
    for fd in fds {
        if let Some(flags) = fd_flags(fd) {
            // SAFETY: fcntl on a descriptor number that may since have closed
            // only fails with EBADF; setting close-on-exec touches no memory.
            unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::SockaddrIn;
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    use std::os::fd::{AsRawFd, IntoRawFd};

    /// A listening TCP socket on a free loopback port, without close-on-exec
    /// (as if inherited), at a number of its own.
    fn listening_socket() -> OwnedFd {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        listen(&fd, Backlog::new(1).unwrap()).unwrap();
        fd
    }

    #[test]
    fn adopts_a_listening_socket_once() {
        let fd = listening_socket().into_raw_fd();
        assert_eq!(inspect_inherited(fd, |_| 7), Ok(7));
        let owned = adopt_inherited(fd).unwrap();
        assert_eq!(owned.as_raw_fd(), fd);
        assert_eq!(
            adopt_inherited(fd).err(),
            Some(NotAdoptable::AdoptedAlready)
        );
        assert_eq!(
            inspect_inherited(fd, |_| ()).err(),
            Some(NotAdoptable::AdoptedAlready)
        );
        // Left open: a recorded number reused by another test's fd would
        // make that test see "adopted already".
        std::mem::forget(owned);
    }

    #[test]
    fn refuses_what_is_not_an_inherited_listener() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert_eq!(
            adopt_inherited(read.as_raw_fd()).err(),
            Some(NotAdoptable::NotSocket)
        );
        let unlistened = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        assert_eq!(
            adopt_inherited(unlistened.as_raw_fd()).err(),
            Some(NotAdoptable::NotListening)
        );
        let ours = listening_socket();
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
        assert_eq!(
            adopt_inherited(ours.as_raw_fd()).err(),
            Some(NotAdoptable::NotInherited)
        );
        assert_eq!(adopt_inherited(-1).err(), Some(NotAdoptable::NotOpen));
    }
}
