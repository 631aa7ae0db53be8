//! Binding the configured listeners, once, for every generation of workers.
//!
//! Every socket is created close-on-exec; the spawn code hands each one to a
//! worker as fd 3, 4, ... explicitly. A Unix socket file left behind by a dead
//! server (connect refused) is replaced; a live one is an error.

use crate::error::{Error, Result};
use crate::listen::{Address, ListenSpec};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr,
};
use nix::sys::stat::Mode;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A bound, listening socket and what it was configured as.
#[derive(Debug)]
pub struct Listener {
    pub spec: ListenSpec,
    /// The address actually bound (port 0 resolved to the real port).
    pub bound: Address,
    pub fd: OwnedFd,
    /// For a Unix socket: the identity of the file we bound.
    pub socket_file: Option<(u64, u64)>,
    /// Owned by systemd (socket activation): never unlinked by us.
    pub external: bool,
    /// Its systemd name (`LISTEN_FDNAMES`), handed on at upgrades.
    pub systemd_name: Option<String>,
}

impl Listener {
    /// Binds and listens; errors name the address and the reason.
    pub fn bind(spec: &ListenSpec) -> Result<Listener> {
        let fd = match &spec.address {
            Address::Tcp(addr) => bind_tcp(*addr, spec.backlog),
            Address::Unix(path) => bind_unix(path, spec),
        }?;
        let bound = bound_address(&fd).unwrap_or_else(|| spec.address.clone());
        let socket_file = match &bound {
            Address::Unix(path) => file_identity(path),
            Address::Tcp(_) => None,
        };
        Ok(Listener {
            spec: spec.clone(),
            bound,
            fd,
            socket_file,
            external: false,
            systemd_name: None,
        })
    }

    /// Gives our Unix socket file to the workers' user and group.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) {
        if let (Address::Unix(path), false) = (&self.bound, uid.is_none() && gid.is_none()) {
            // lchown: a link planted in the socket's place is not followed.
            if let Err(e) = std::os::unix::fs::lchown(path, uid, gid) {
                log::warn!(
                    "event=chown-failed path={} error=\"{}\"",
                    crate::logging::esc(path.display()),
                    crate::logging::esc(&e)
                );
            }
        }
    }

    /// Wraps a socket inherited from a previous master or from systemd.
    pub fn adopt(
        spec: &ListenSpec,
        bound: Address,
        fd: OwnedFd,
        external: bool,
        systemd_name: Option<String>,
    ) -> Listener {
        let socket_file = match &bound {
            Address::Unix(path) => file_identity(path),
            Address::Tcp(_) => None,
        };
        Listener {
            spec: spec.clone(),
            bound,
            fd,
            socket_file,
            external,
            systemd_name,
        }
    }

    /// Removes our Unix socket file, but only if the path still is the file we
    /// bound (a newer server may have replaced it).
    pub fn unlink_if_ours(&self) {
        let (Address::Unix(path), Some(ours)) = (&self.bound, self.socket_file) else {
            return;
        };
        if self.external {
            return;
        }
        if file_identity(path) == Some(ours) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Device and inode of a path, to tell our socket file from a newer one.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

fn bind_tcp(addr: SocketAddr, backlog: u32) -> Result<OwnedFd> {
    let fail = |source| Error::Bind {
        addr: Address::Tcp(addr),
        source,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(fail)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail)?;
    match addr {
        SocketAddr::V4(v4) => bind(fd.as_raw_fd(), &SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => {
            // As nginx does: [::]:80 takes IPv6 only, so 0.0.0.0:80 can sit beside it.
            setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(fail)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))
        }
    }
    .map_err(fail)?;
    listen(&fd, backlog_of(backlog)).map_err(fail)?;
    Ok(fd)
}

fn bind_unix(path: &Path, spec: &ListenSpec) -> Result<OwnedFd> {
    let fail = |source| Error::Bind {
        addr: spec.address.clone(),
        source,
    };
    remove_stale_socket(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(fail)?;
    let addr = UnixAddr::new(path).map_err(fail)?;
    // The file is created with its mode (bind applies the umask to 0777):
    // a chmod by path afterwards could be sent through a link planted in
    // its place. The master is single-threaded, so the umask is ours alone.
    let umask = spec
        .mode
        .map(|mode| nix::sys::stat::umask(Mode::from_bits_truncate(!mode & 0o777)));
    let bound = bind(fd.as_raw_fd(), &addr);
    if let Some(previous) = umask {
        nix::sys::stat::umask(previous);
    }
    bound.map_err(fail)?;
    listen(&fd, backlog_of(spec.backlog)).map_err(fail)?;
    Ok(fd)
}

/// A socket file nobody accepts on is left by a dead server: remove it.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Bind {
                addr: Address::Unix(path.to_path_buf()),
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::UnixSocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            log::info!(
                "event=stale-socket path={} action=replace",
                crate::logging::esc(path.display())
            );
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// A TCP listener's accept queue now and its limit: for a listening
/// socket the kernel's `tcp_get_info` puts the queue (`sk_ack_backlog`) in
/// `tcpi_unacked` and the backlog (`sk_max_ack_backlog`, the `listen(2)`
/// backlog capped by `somaxconn`) in `tcpi_sacked`. `None` for a Unix
/// socket, or one not listening.
pub fn accept_queue(listener: &Listener) -> Option<(u32, u32)> {
    if !matches!(listener.bound, Address::Tcp(_)) {
        return None;
    }
    let info = crate::sys::tcp::tcp_info(&listener.fd)?;
    // `TCP_LISTEN` in the kernel's `enum tcp_state` (libc does not name it).
    const TCP_LISTEN: u8 = 10;
    (info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

fn backlog_of(n: u32) -> Backlog {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    Backlog::new(n).unwrap_or(Backlog::MAXCONN)
}

/// The address a socket is bound to, as an `Address`.
pub fn bound_address(fd: &impl AsRawFd) -> Option<Address> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(Address::Tcp(SocketAddr::V4((*v4).into())));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(Address::Tcp(SocketAddr::V6((*v6).into())));
    }
    let path = addr.as_unix_addr()?.path()?;
    Some(Address::Unix(path.to_path_buf()))
}
