//! The master's sd_notify socket: workers send `READY=1`, `WATCHDOG=1`,
//! `STATUS=...` datagrams to the address in their `NOTIFY_SOCKET`.
//!
//! The sender is known by the kernel-supplied credentials (`SO_PASSCRED`),
//! never by anything the message claims. The socket is a file in the
//! master's private runtime directory (see `rundir`), so `NOTIFY_SOCKET` is a
//! plain absolute path that every sd_notify client library can send to; the
//! master removes it when it exits, and a later master removes it if the
//! master was killed.

use crate::ipc::rundir;
use crate::protocol;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

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

/// Sends one datagram to the master's notify socket at `path`.
pub fn send_to_master(path: &Path, message: &str) -> std::io::Result<()> {
    UnixDatagram::unbound()?.send_to(message.as_bytes(), path)?;
    Ok(())
}

pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// The inode of the file bound, so that only it is removed.
    inode: Option<u64>,
    /// The value workers get as `NOTIFY_SOCKET`: the socket's absolute path.
    pub env_value: String,
}

impl NotifySocket {
    /// Binds a fresh socket file at `path` (mode 0600) with credentials
    /// passing on. Fails naming the path.
    pub fn bind(path: &Path) -> Result<NotifySocket, String> {
        let fail = |e: std::io::Error| {
            format!(
                "bind notify socket {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            )
        };
        rundir::check_length(path)?;
        let socket = UnixDatagram::bind(path).map_err(fail)?;
        let notify = NotifySocket {
            socket,
            path: path.to_path_buf(),
            inode: rundir::socket_inode(path),
            env_value: path.display().to_string(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        notify.socket.set_nonblocking(true).map_err(fail)?;
        setsockopt(&notify.socket, sockopt::PassCred, &true).map_err(|e| fail(e.into()))?;
        // Room for a burst of pings from many workers.
        let _ = setsockopt(&notify.socket, sockopt::RcvBuf, &(1 << 20));
        Ok(notify)
    }

    /// The socket an old image handed over across an in-place upgrade,
    /// still bound at `path` (credentials passing stays on).
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> NotifySocket {
        let socket = UnixDatagram::from(fd);
        let _ = socket.set_nonblocking(true);
        NotifySocket {
            socket,
            path: path.to_path_buf(),
            inode: rundir::socket_inode(path),
            env_value: path.display().to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the socket file we bound is still there.
    pub fn file_exists(&self) -> bool {
        self.inode.is_some() && rundir::socket_inode(&self.path) == self.inode
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

impl Drop for NotifySocket {
    /// The master leaves: its socket file goes with it. (Only the master
    /// runs destructors: workers and a new master exec without unwinding.)
    fn drop(&mut self) {
        rundir::remove_socket(&self.path, self.inode);
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
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1.notify");
        let socket = NotifySocket::bind(&path).unwrap();
        assert_eq!(socket.env_value, path.display().to_string());
        let addr = path.clone();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\n", &addr).unwrap();
        let got = socket.receive().unwrap().unwrap();
        assert_eq!(got.pid, std::process::id() as i32);
        assert!(got.message.ready);
        client.send_to(&[b'x'; MAX_DATAGRAM + 1], &addr).unwrap();
        assert!(matches!(socket.receive(), Some(Err(_))));
        assert!(socket.receive().is_none());
        drop(socket);
        assert!(!path.exists(), "the socket file goes with the socket");
        std::fs::remove_dir(&dir).unwrap();
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
