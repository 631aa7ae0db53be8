//! The sd_notify client: one datagram per message to `NOTIFY_SOCKET` (a path,
//! or `@name` for the abstract namespace); nothing is sent without it.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    pub fn new(socket: Option<String>) -> Notifier {
        Notifier { socket }
    }

    /// Whether `NOTIFY_SOCKET` was given, i.e. whether `send` reaches anyone.
    pub fn is_connected(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `msg` (e.g. `READY=1`); fails only if a socket was given and the send failed.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        let Some(target) = self.socket.as_deref() else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        match target.strip_prefix('@') {
            Some(name) => sock.send_to_addr(
                msg.as_bytes(),
                &UnixAddr::from_abstract_name(name.as_bytes())?,
            )?,
            None => sock.send_to(msg.as_bytes(), target)?,
        };
        Ok(())
    }
}
