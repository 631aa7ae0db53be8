//! A listening socket, TCP or Unix: bound from `--listen ADDR` (`HOST:PORT`,
//! `unix:/path`, `unix:@abstract`) or adopted from the master, described for
//! the log, and accepted from one accept(2) at a time.

use crate::conn::Conn;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::{fs, io, ptr};

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    /// `HOST:PORT`, `unix:/path` or `unix:@name`; `?` if the address cannot be read.
    pub fn describe(&self) -> String {
        let unix = |a: UnixAddr| match (a.as_pathname(), a.as_abstract_name()) {
            (Some(p), _) => format!("unix:{}", p.display()),
            (None, Some(n)) => format!("unix:@{}", String::from_utf8_lossy(n)),
            (None, None) => "unix:?".to_string(),
        };
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()),
            Listener::Unix(l) => l.local_addr().map(unix),
        }
        .unwrap_or_else(|_| "?".to_string())
    }

    /// std's accept uses accept4(SOCK_CLOEXEC); the listener's own flags are left alone.
    /// One accept(2), returning EINTR to the caller (std's accept retries on
    /// EINTR, which would defeat the interrupt a stop relies on).
    pub fn accept(&self) -> io::Result<Conn> {
        // SAFETY: null address arguments are allowed; the fd is our listener.
        let fd = unsafe {
            libc::accept4(
                self.fd(),
                ptr::null_mut(),
                ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(match self {
            Listener::Tcp(_) => {
                let s = TcpStream::from(owned);
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Listener::Unix(_) => Box::new(UnixStream::from(owned)),
        })
    }
}

/// Listens on `addr` (replacing a stale Unix socket file); the error names the address.
pub fn bind(addr: &str) -> Result<Listener, String> {
    let result = match addr.strip_prefix("unix:") {
        Some(name) if name.starts_with('@') => UnixAddr::from_abstract_name(&name.as_bytes()[1..])
            .and_then(|a| UnixListener::bind_addr(&a))
            .map(Listener::Unix),
        Some(path) => {
            if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = fs::remove_file(path);
            }
            UnixListener::bind(path).map(Listener::Unix)
        }
        None => TcpListener::bind(addr).map(Listener::Tcp),
    };
    result.map_err(|e| format!("cannot listen on {addr}: {e}"))
}
