//! The preload socket: the master's end of the `SOCK_SEQPACKET` socketpair
//! it shares with a preloader (docs/PRELOAD.md, protocol version 1).
//!
//! | direction           | message (one JSON object per packet, ≤ 64 KiB)      |
//! |---------------------|-----------------------------------------------------|
//! | preloader -> master | `hello {version, pid, runtime}`                     |
//! | master -> preloader | `spawn {id, slot, generation, env}` + 2 fds (`SCM_RIGHTS`: stdout, stderr) |
//! | preloader -> master | `spawned {id, pid}` or `spawn_failed {id, message}` |
//!
//! The master's end is non-blocking: receiving stops at `EAGAIN`, and a
//! send that would block fails (the spawn is retried). Nothing here
//! decides what a message means; `master::preload` does.

use crate::protocol::{
    PRELOAD_HELLO, PRELOAD_MAX_PACKET, PRELOAD_SPAWN, PRELOAD_SPAWNED, PRELOAD_SPAWN_FAILED,
};
use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A message from a preloader, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromPreloader {
    Hello {
        version: u64,
        pid: i64,
        runtime: String,
    },
    Spawned {
        id: u64,
        pid: i64,
    },
    SpawnFailed {
        id: u64,
        message: String,
    },
}

/// What one receive found.
#[derive(Debug)]
pub enum Received {
    /// A packet: the message, or why it is malformed or unknown.
    Packet(Result<FromPreloader, String>),
    /// A packet over `PRELOAD_MAX_PACKET`, with its real length.
    Oversize(usize),
    /// The preloader's end is closed (or the socket failed): no more messages.
    Closed,
}

/// What the master asks of a preloader for one worker.
pub struct SpawnRequest<'a> {
    pub id: u64,
    pub slot: usize,
    pub generation: u32,
    pub env: &'a BTreeMap<String, String>,
}

/// A serving preloader as an in-place upgrade hands it to the new image
/// (`crate::inplace`): it stays the master's child across the exec, and
/// its socket and output pipes are handed by number.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handed {
    pub pid: i32,
    pub generation: u32,
    /// The master's end of the socketpair.
    pub socket: RawFd,
    /// Read ends of its stdout and stderr pipes.
    pub pipes: [Option<RawFd>; 2],
    pub age_ms: u64,
    pub runtime: Option<String>,
    pub spawns: u64,
    pub next_id: u64,
}

/// A handed preloader in the new image, its fds adopted (`sys::fd`), at
/// the start with the other handed fds, before stray ones are closed.
pub struct Adopted {
    pub handed: Handed,
    /// Our end, or why it could not be adopted.
    pub socket: Result<PreloadSocket, String>,
    pub pipes: [Option<OwnedFd>; 2],
}

/// Adopts the handed preloaders' sockets and pipes.
pub fn adopt_handed(handed: &[Handed]) -> Vec<Adopted> {
    use crate::sys::fd::{adopt_handed, HandedKind};
    handed
        .iter()
        .map(|h| Adopted {
            handed: h.clone(),
            socket: adopt_handed(h.socket, HandedKind::Socket)
                .map_err(|why| format!("socket fd {}: {why}", h.socket))
                .and_then(|fd| {
                    PreloadSocket::from_handed(fd).map_err(|e| format!("socket: {}", e.desc()))
                }),
            pipes: h
                .pipes
                .map(|fd| fd.and_then(|fd| adopt_handed(fd, HandedKind::Pipe).ok())),
        })
        .collect()
}

/// The master's end.
pub struct PreloadSocket {
    fd: OwnedFd,
    /// Room for one packet and one byte more (to see an oversize one).
    buf: Vec<u8>,
}

/// Makes the socketpair: the master's end (non-blocking) and the
/// preloader's (blocking; both close-on-exec, the spawn hands it on).
pub fn pair() -> Result<(PreloadSocket, OwnedFd), Errno> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((
        PreloadSocket {
            fd: ours,
            buf: vec![0u8; PRELOAD_MAX_PACKET + 1],
        },
        theirs,
    ))
}

impl PreloadSocket {
    /// Our end again, handed across an in-place upgrade (made non-blocking
    /// once more: the flag is the open file's, but cheap to be sure of).
    pub fn from_handed(fd: OwnedFd) -> Result<PreloadSocket, Errno> {
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(PreloadSocket {
            fd,
            buf: vec![0u8; PRELOAD_MAX_PACKET + 1],
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next packet, or `None` when nothing is pending.
    pub fn receive(&mut self) -> Option<Received> {
        let buf = &mut self.buf;
        loop {
            // MSG_TRUNC: the packet's real length even when longer than
            // the buffer (SOCK_SEQPACKET, Linux 3.4 and later).
            return match recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
                Ok(0) => Some(Received::Closed),
                Ok(n) if n > PRELOAD_MAX_PACKET => Some(Received::Oversize(n)),
                Ok(n) => Some(Received::Packet(decode(&buf[..n]))),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => None,
                Err(_) => Some(Received::Closed),
            };
        }
    }

    /// Sends a `spawn` with the worker's stdout and stderr write ends.
    pub fn send_spawn(&self, request: &SpawnRequest<'_>, fds: [RawFd; 2]) -> Result<(), String> {
        let packet = encode_spawn(request);
        if packet.len() > PRELOAD_MAX_PACKET {
            return Err(format!(
                "spawn message of {} bytes is over the {PRELOAD_MAX_PACKET}-byte limit (the environment is too large)",
                packet.len()
            ));
        }
        let iov = [IoSlice::new(&packet)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        loop {
            return match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => Err(format!("send spawn: {}", e.desc())),
            };
        }
    }
}

/// The `spawn` packet.
pub fn encode_spawn(request: &SpawnRequest<'_>) -> Vec<u8> {
    let message = json!({
        "type": PRELOAD_SPAWN,
        "id": request.id,
        "slot": request.slot,
        "generation": request.generation,
        "env": request.env,
    });
    message.to_string().into_bytes()
}

/// Decodes one packet; unknown members are ignored, as the protocol says.
pub fn decode(packet: &[u8]) -> Result<FromPreloader, String> {
    let value: Value =
        serde_json::from_slice(packet).map_err(|e| format!("not a JSON object: {e}"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or("no string member \"type\"")?;
    match kind {
        PRELOAD_HELLO => Ok(FromPreloader::Hello {
            version: number(&object, "version")?,
            pid: integer(&object, "pid")?,
            runtime: object
                .get("runtime")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        PRELOAD_SPAWNED => Ok(FromPreloader::Spawned {
            id: number(&object, "id")?,
            pid: integer(&object, "pid")?,
        }),
        PRELOAD_SPAWN_FAILED => Ok(FromPreloader::SpawnFailed {
            id: number(&object, "id")?,
            message: object
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        other => Err(format!("unknown type {other:?}")),
    }
}

fn number(object: &Map<String, Value>, key: &str) -> Result<u64, String> {
    object
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no unsigned integer member {key:?}"))
}

fn integer(object: &Map<String, Value>, key: &str) -> Result<i64, String> {
    object
        .get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("no integer member {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_three_messages_and_ignores_unknown_members() {
        assert_eq!(
            decode(br#"{"type":"hello","version":1,"pid":42,"runtime":"python 3.11","x":[1]}"#),
            Ok(FromPreloader::Hello {
                version: 1,
                pid: 42,
                runtime: "python 3.11".into()
            })
        );
        assert_eq!(
            decode(br#"{"type":"spawned","id":17,"pid":4250}"#),
            Ok(FromPreloader::Spawned { id: 17, pid: 4250 })
        );
        assert_eq!(
            decode(br#"{"type":"spawn_failed","id":17,"message":"fork: EAGAIN"}"#),
            Ok(FromPreloader::SpawnFailed {
                id: 17,
                message: "fork: EAGAIN".into()
            })
        );
    }

    #[test]
    fn malformed_and_unknown_messages_say_why() {
        assert!(decode(b"garbage").unwrap_err().contains("JSON"));
        assert!(decode(b"[1]").unwrap_err().contains("object"));
        assert!(decode(br#"{"id":1}"#).unwrap_err().contains("type"));
        assert!(decode(br#"{"type":"nope"}"#)
            .unwrap_err()
            .contains("unknown"));
        assert!(decode(br#"{"type":"spawned","id":-1,"pid":3}"#)
            .unwrap_err()
            .contains("id"));
    }

    #[test]
    fn spawn_carries_its_fds_and_an_oversize_packet_is_seen() {
        let (mut ours, theirs) = pair().unwrap();
        let env = BTreeMap::from([("FORKMASTER_WORKER".to_string(), "2".to_string())]);
        let request = SpawnRequest {
            id: 7,
            slot: 2,
            generation: 3,
            env: &env,
        };
        ours.send_spawn(&request, [1, 2]).unwrap();
        let mut buf = [0u8; 4096];
        let n = recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["type"], "spawn");
        assert_eq!(v["env"]["FORKMASTER_WORKER"], "2");
        assert!(ours.receive().is_none());
        let big = vec![b' '; PRELOAD_MAX_PACKET + 10];
        nix::sys::socket::send(theirs.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
        assert!(matches!(ours.receive(), Some(Received::Oversize(n)) if n == big.len()));
        drop(theirs);
        assert!(matches!(ours.receive(), Some(Received::Closed)));
    }
}
