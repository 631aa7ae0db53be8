//! The control socket: a Unix stream socket in the abstract namespace,
//! `@forkmaster/<master pid>/control`, where the master answers each
//! connection with its `Status` as one line of JSON and closes it.
//!
//! Actions stay signals; this only tells. Only the master's own user (or
//! root) is answered, checked with the peer's credentials. Abstract sockets
//! leave nothing on disk when a master is killed, and the address follows
//! from the pid in the pid file, so a pid file naming some unrelated process
//! is recognised: nothing answers there.

use crate::protocol;
use crate::status::Status;
use nix::sys::socket::{getsockopt, sockopt};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The answer to another user: tells the client why, and nothing else.
const REFUSED: &[u8] = b"{\"error\":\"permission denied\"}\n";

pub struct ControlSocket {
    listener: UnixListener,
    /// Kept open to be given up when the master runs out of descriptors: a
    /// pending connection that cannot be accepted keeps the socket readable,
    /// and the loop would spin. Closing the spare makes room to accept it
    /// and close it at once.
    spare: std::cell::RefCell<Option<std::fs::File>>,
    /// When running out of descriptors was last logged (rate limit).
    last_emfile_log: std::cell::Cell<Option<std::time::Instant>>,
}

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl ControlSocket {
    pub fn bind() -> std::io::Result<ControlSocket> {
        let name = protocol::control_address(std::process::id() as i32);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            spare: std::cell::RefCell::new(open_spare()),
            last_emfile_log: std::cell::Cell::new(None),
        })
    }

    /// Answers every pending connection with `status()`; never blocks: a
    /// client that does not read its answer loses it.
    pub fn serve(&self, status: impl Fn() -> Status) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.shed_connection(&e) {
                        continue;
                    }
                    return;
                }
                Err(_) => return,
            };
            let allowed = getsockopt(&stream, sockopt::PeerCredentials)
                .map(|c| c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw())
                .unwrap_or(false);
            if !allowed {
                log::warn!("event=control-refused reason=\"another user\"");
                let _ = stream.set_nonblocking(true);
                let _ = stream.write_all(REFUSED);
                continue;
            }
            let mut json = serde_json::to_vec(&status()).unwrap_or_default();
            json.push(b'\n');
            let _ = stream.set_nonblocking(true);
            let _ = nix::sys::socket::setsockopt(&stream, sockopt::SndBuf, &(json.len() + 4096));
            let _ = stream.write_all(&json);
        }
    }

    /// Out of descriptors: accept the pending connection with the spare's
    /// slot and drop it, so poll(2) does not report it again and again.
    fn shed_connection(&self, e: &std::io::Error) -> bool {
        if self.spare.borrow_mut().take().is_none() {
            // No spare to give up: stop for this pass; the next event retries.
            return false;
        }
        // accept(2) fails with EMFILE before it looks for a connection, so
        // this also tells whether one was pending at all.
        let shed = self.listener.accept().is_ok();
        *self.spare.borrow_mut() = open_spare();
        let now = std::time::Instant::now();
        let quiet = self
            .last_emfile_log
            .get()
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(10));
        if shed && !quiet {
            self.last_emfile_log.set(Some(now));
            log::error!(
                "event=control-unavailable error=\"{}\" action=\"status request dropped\"",
                crate::error::io_reason(e)
            );
        }
        shed
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
    /// A master listens but did not answer in time (busy, out of fds).
    NoAnswer,
}

/// Asks the master with this pid for its status.
pub fn query(pid: i32) -> Result<Status, QueryError> {
    let addr = SocketAddr::from_abstract_name(protocol::control_address(pid).as_bytes())
        .map_err(|_| QueryError::NoMaster)?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|_| QueryError::NoMaster)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|_| QueryError::NoMaster)?;
    let mut text = String::new();
    if let Err(e) = stream.read_to_string(&mut text) {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            return Err(QueryError::NoAnswer);
        }
    }
    if text.trim().is_empty() {
        // Accepted and closed unanswered: the master is short of fds.
        return Err(QueryError::NoAnswer);
    }
    if text.as_bytes() == REFUSED {
        return Err(QueryError::Refused);
    }
    let status: Status = serde_json::from_str(text.trim()).map_err(|_| QueryError::NoMaster)?;
    if status.pid == pid {
        Ok(status)
    } else {
        Err(QueryError::NoMaster)
    }
}
