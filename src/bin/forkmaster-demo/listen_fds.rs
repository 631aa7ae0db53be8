//! The inherited listeners (the `LISTEN_FDS` protocol): fds `3..3+LISTEN_FDS`
//! when `LISTEN_PID` is unset or ours, each checked to be a listening TCP or
//! Unix socket. This is the one place that trusts fd numbers from the environment.

use crate::config::env_nonempty;
use crate::listener::Listener;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::{io, mem, process, ptr};

/// The listeners handed over by the master; `None` if there are none for us.
/// Fails, naming the fd, if one is not a listening socket of a known family.
pub fn inherited_listeners() -> Result<Option<Vec<Listener>>, String> {
    let Some(count) = env_nonempty("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Some(pid) = env_nonempty("LISTEN_PID") {
        if pid.trim().parse::<u32>().ok() != Some(process::id()) {
            return Ok(None);
        }
    }
    let count: u16 = count
        .trim()
        .parse()
        .map_err(|_| format!("invalid LISTEN_FDS={count:?}"))?;
    if count == 0 {
        return Ok(None);
    }
    (3..3 + RawFd::from(count))
        .map(adopt)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Wraps an inherited listening socket.
fn adopt(fd: RawFd) -> Result<Listener, String> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable and `len` holds its exact size.
    let rc = unsafe { libc::getsockname(fd, ptr::addr_of_mut!(ss).cast(), &mut len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(format!("inherited fd {fd} is not a socket: {err}"));
    }
    let mut listening: libc::c_int = 0;
    let mut optlen = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening` is a writable c_int and `optlen` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            ptr::addr_of_mut!(listening).cast(),
            &mut optlen,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(format!("inherited fd {fd} is not a listening socket"));
    }
    // SAFETY: F_GETFD/F_SETFD only change this descriptor's own flags (not the shared ones).
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags != -1 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != -1
    };
    if !ok {
        let err = io::Error::last_os_error();
        return Err(format!("cannot set FD_CLOEXEC on fd {fd}: {err}"));
    }
    let family = libc::c_int::from(ss.ss_family);
    if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family) {
        return Err(format!("inherited fd {fd} has unsupported family {family}"));
    }
    // SAFETY: fd is an open listening socket handed over to this process by the LISTEN_FDS
    // protocol; nothing else in the process owns or wraps it, so we may take ownership.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(if family == libc::AF_UNIX {
        Listener::Unix(UnixListener::from(owned))
    } else {
        Listener::Tcp(TcpListener::from(owned))
    })
}
