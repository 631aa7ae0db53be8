//! The control socket: a Unix stream socket in the abstract namespace,
//! `@forkmaster/<master pid>/control`, where the master answers each
//! connection with its `Status` as one line of JSON and closes it.
//!
//! Actions stay signals; this only tells. Only the master's own user (or
//! root) is answered, checked with the peer's credentials. Abstract sockets
//! leave nothing on disk when a master is killed, and the address follows
//! from the pid in the pid file, so a pid file naming some unrelated process
//! is recognised: nothing answers there.

use crate::status::Status;
use nix::sys::socket::{getsockopt, sockopt};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

pub fn address(pid: i32) -> String {
    format!("forkmaster/{pid}/control")
}

pub struct ControlSocket {
    listener: UnixListener,
}

impl ControlSocket {
    pub fn bind() -> std::io::Result<ControlSocket> {
        let name = address(std::process::id() as i32);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket { listener })
    }

    /// Answers every pending connection with `status()`; never blocks: a
    /// client that does not read its answer loses it.
    pub fn serve(&self, status: impl Fn() -> Status) {
        while let Ok((mut stream, _)) = self.listener.accept() {
            let allowed = getsockopt(&stream, sockopt::PeerCredentials)
                .map(|c| c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw())
                .unwrap_or(false);
            if !allowed {
                log::warn!("event=control-refused reason=\"another user\"");
                continue;
            }
            let mut json = serde_json::to_vec(&status()).unwrap_or_default();
            json.push(b'\n');
            let _ = stream.set_nonblocking(true);
            let _ = nix::sys::socket::setsockopt(&stream, sockopt::SndBuf, &(json.len() + 4096));
            let _ = stream.write_all(&json);
        }
    }
}

impl AsFd for ControlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Why a pid did not give its status.
#[derive(Debug, PartialEq, Eq)]
pub enum QueryError {
    /// Nothing listens: no forkmaster master has this pid.
    NoMaster,
    /// A master listens but does not answer us (another user).
    Refused,
}

/// Asks the master with this pid for its status.
pub fn query(pid: i32) -> Result<Status, QueryError> {
    let addr = SocketAddr::from_abstract_name(address(pid).as_bytes())
        .map_err(|_| QueryError::NoMaster)?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|_| QueryError::NoMaster)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|_| QueryError::NoMaster)?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    if text.trim().is_empty() {
        return Err(QueryError::Refused);
    }
    let status: Status = serde_json::from_str(text.trim()).map_err(|_| QueryError::NoMaster)?;
    if status.pid == pid {
        Ok(status)
    } else {
        Err(QueryError::NoMaster)
    }
}
