//! The master's sd_notify socket: workers send `READY=1`, `WATCHDOG=1`,
//! `STATUS=...` datagrams to the address in their `NOTIFY_SOCKET`.
//!
//! The sender is known by the kernel-supplied credentials (`SO_PASSCRED`),
//! never by anything the message claims. The socket lives in the abstract
//! namespace, so nothing is left on disk if the master is killed.

use crate::protocol;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// sd_notify messages are small; anything larger is malformed.
const MAX_DATAGRAM: usize = 4096;

/// What a notify message asks, reduced to what the master acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub watchdog: bool,
    pub stopping: bool,
    pub status: Option<String>,
    /// From a new master to the old one: why the upgrade failed.
    pub upgrade_failed: Option<String>,
    /// From a new master to the old one: how many of its workers are ready
    /// (gradual retirement; a count, unlike repeated TTOU signals, cannot
    /// be merged by the kernel).
    pub retire: Option<usize>,
}

/// Parses `KEY=VALUE` lines; unknown keys are ignored as systemd does.
pub fn parse_message(bytes: &[u8]) -> Message {
    let mut msg = Message::default();
    for line in bytes.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let text = || String::from_utf8_lossy(value).into_owned();
        match std::str::from_utf8(key).unwrap_or_default() {
            protocol::NOTIFY_READY => msg.ready |= value == b"1",
            protocol::NOTIFY_WATCHDOG => msg.watchdog |= value == b"1",
            protocol::NOTIFY_STOPPING => msg.stopping |= value == b"1",
            protocol::NOTIFY_STATUS => msg.status = Some(text()),
            protocol::NOTIFY_RETIRE => msg.retire = text().parse().ok(),
            protocol::NOTIFY_UPGRADE_FAILED => msg.upgrade_failed = Some(text()),
            _ => {}
        }
    }
    msg
}

/// A datagram received, with its sender's pid as the kernel reports it.
pub struct Datagram {
    pub pid: i32,
    pub message: Message,
}

/// Sends one datagram to the notify socket of the master `pid`.
pub fn send_to_master(pid: i32, message: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from_abstract_name(protocol::notify_address(pid).as_bytes())?;
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

pub struct NotifySocket {
    socket: UnixDatagram,
    /// The value workers get as `NOTIFY_SOCKET` (`@` marks the abstract namespace).
    pub env_value: String,
}

impl NotifySocket {
    /// Binds a fresh abstract socket with credentials passing on.
    pub fn bind() -> std::io::Result<NotifySocket> {
        let name = protocol::notify_address(std::process::id() as i32);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let socket = UnixDatagram::bind_addr(&addr)?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        // Room for a burst of pings from many workers.
        let _ = setsockopt(&socket, sockopt::RcvBuf, &(1 << 20));
        Ok(NotifySocket {
            socket,
            env_value: format!("@{name}"),
        })
    }

    /// Receives one datagram, `None` when there is none left. Datagrams
    /// without credentials or larger than any real notification are dropped.
    pub fn receive(&self) -> Option<Result<Datagram, &'static str>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(_) => return None,
        };
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        let len = msg.bytes;
        let pid = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
            _ => None,
        });
        if truncated {
            return Some(Err("oversized datagram"));
        }
        let Some(pid) = pid else {
            return Some(Err("datagram without credentials"));
        };
        Some(Ok(Datagram {
            pid,
            message: parse_message(&buf[..len]),
        }))
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_matters() {
        let m = parse_message(b"READY=1\nSTATUS=serving 4 clients\nMAINPID=1\n");
        assert!(m.ready && !m.watchdog);
        assert_eq!(m.status.as_deref(), Some("serving 4 clients"));
        assert!(parse_message(b"WATCHDOG=1").watchdog);
        assert!(!parse_message(b"READY=0\n").ready);
        assert_eq!(parse_message(b"\xff\x00garbage\n=\n=="), Message::default());
    }

    #[test]
    fn knows_the_sender() {
        let socket = NotifySocket::bind().unwrap();
        let name = socket.env_value.strip_prefix('@').unwrap();
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to_addr(b"READY=1\n", &addr).unwrap();
        let got = socket.receive().unwrap().unwrap();
        assert_eq!(got.pid, std::process::id() as i32);
        assert!(got.message.ready);
        client
            .send_to_addr(&[b'x'; MAX_DATAGRAM + 1], &addr)
            .unwrap();
        assert!(matches!(socket.receive(), Some(Err(_))));
        assert!(socket.receive().is_none());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::proptests::config;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    /// Valid datagrams with a stretch cut out and random bytes put in, or
    /// random bytes alone, not only valid UTF-8.
    fn datagrams() -> impl Strategy<Value = Vec<u8>> {
        const SAMPLES: &[&str] = &[
            "READY=1\nSTATUS=serving\n",
            "WATCHDOG=1",
            "STOPPING=1\nFORKMASTER_RETIRE=3\n",
            "FORKMASTER_UPGRADE_FAILED=worker=0 exec ./app: No such file\n",
        ];
        let piece = prop::collection::vec(
            prop_oneof![select(&b"READYWTCHOGS=01\n\0\xff_"[..]), any::<u8>()],
            0..6,
        );
        prop_oneof![
            (select(SAMPLES), any::<Index>(), any::<Index>(), piece).prop_map(
                |(sample, a, b, piece)| {
                    let sample = sample.as_bytes();
                    let (a, b) = (a.index(sample.len() + 1), b.index(sample.len() + 1));
                    [&sample[..a.min(b)], &piece[..], &sample[a.max(b)..]].concat()
                }
            ),
            prop::collection::vec(any::<u8>(), 0..256),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn parse_message_never_panics(bytes in datagrams()) {
            let _ = parse_message(&bytes);
        }
    }
}
