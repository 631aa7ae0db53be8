//! The control socket: a Unix stream socket file in the master's private
//! runtime directory (see `rundir`), `<dir>/<master pid>.control`, where the
//! master answers each connection with its `Status` as one line of JSON and
//! closes it.
//!
//! Actions stay signals; this only tells. Only the master's own user (or
//! root) is answered, checked with the peer's credentials, and only they can
//! enter the directory. A client believes an answer only from the process
//! it would signal: the kernel's credentials of the listening end must name
//! exactly the pid the pid file names, a process of root or of the client's
//! own user, in the client's own pid namespace (`query`).

use crate::ipc::rundir;
use crate::protocol;
use crate::status::Status;
use nix::sys::socket::{getsockopt, sockopt};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The answer to another user: tells the client why, and nothing else.
const REFUSED: &[u8] = b"{\"error\":\"permission denied\"}\n";

pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The inode of the file bound, so that only it is removed.
    inode: Option<u64>,
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
    /// Binds a fresh socket file at `path`, mode 0600. Fails naming the path.
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        let fail = |e: std::io::Error| {
            format!(
                "bind control socket {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            )
        };
        rundir::check_length(path)?;
        // Bound and listening under a name of its own first, then renamed
        // into place: a master starting beside us takes a socket file that
        // refuses connections for stale, and one between bind(2) and
        // listen(2) does.
        // `<pid>.tmp`: no longer than the final name, ignored as stale.
        let binding = path.with_extension("tmp");
        let _ = std::fs::remove_file(&binding);
        let listener = UnixListener::bind(&binding).map_err(fail)?;
        std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&binding, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&binding);
                fail(e)
            })?;
        let control = ControlSocket {
            listener,
            path: path.to_path_buf(),
            inode: rundir::socket_inode(path),
            spare: std::cell::RefCell::new(open_spare()),
            last_emfile_log: std::cell::Cell::new(None),
        };
        control.listener.set_nonblocking(true).map_err(fail)?;
        Ok(control)
    }

    /// Whether the socket file we bound is still there.
    pub fn file_exists(&self) -> bool {
        self.inode.is_some() && rundir::socket_inode(&self.path) == self.inode
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

impl Drop for ControlSocket {
    /// The master leaves: its socket file goes with it.
    fn drop(&mut self) {
        rundir::remove_socket(&self.path, self.inode);
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
    /// Something answers, but it is not the process the pid names (another
    /// pid namespace, another user, an impostor): what did not match.
    Unverified(String),
}

/// Where this process looks for masters' control sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    /// Base directories, most likely first (see `rundir::candidates`).
    pub bases: Vec<PathBuf>,
    /// Whose private directories: ours first, then e.g. the pid file's owner.
    pub uids: Vec<u32>,
}

impl Search {
    /// Whose master we believe: root's and our own; as root also those
    /// whose directories we search (the pid file's owner: root manages a
    /// master that runs as an app's user, and signals only the very process
    /// that answered, which that user could signal anyway).
    fn trusted_uids(&self) -> Vec<u32> {
        let euid = nix::unistd::geteuid().as_raw();
        let mut uids = vec![0, euid];
        if euid == 0 {
            uids.extend(&self.uids);
        }
        uids
    }

    /// The control socket paths of the master `pid`, in the order tried.
    fn paths(&self, pid: i32) -> impl Iterator<Item = PathBuf> + '_ {
        self.bases.iter().flat_map(move |base| {
            self.uids
                .iter()
                .map(move |&uid| rundir::private_dir(base, uid).join(protocol::control_file(pid)))
        })
    }
}

static SEARCH: OnceLock<Search> = OnceLock::new();

/// Says once, for this process, where `query` looks (a client command sets
/// it from its pid file and flags before it queries anything).
pub fn search_in(search: Search) {
    let _ = SEARCH.set(search);
}

/// The base directories `query` looks in, for messages.
pub fn searched_bases() -> Vec<PathBuf> {
    SEARCH.get_or_init(Search::default).bases.clone()
}

/// Asks the master with this pid for its status, where `search_in` said.
pub fn query(pid: i32) -> Result<Status, QueryError> {
    query_in(SEARCH.get_or_init(Search::default), pid)
}

/// Asks the master with this pid for its status. The answer is believed
/// only once the socket's listening end is verified to be that pid (see
/// `verify_peer`); nothing else is trusted.
pub fn query_in(search: &Search, pid: i32) -> Result<Status, QueryError> {
    let mut stream = connect(search, pid)?;
    verify_peer(&stream, pid, &search.trusted_uids()).map_err(QueryError::Unverified)?;
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
        Err(QueryError::Unverified(format!(
            "its control socket answers for pid {}",
            status.pid
        )))
    }
}

/// The first control socket of `pid` that accepts us. A directory or socket
/// we may not enter is another user's master: `Refused` if nothing else
/// answers.
fn connect(search: &Search, pid: i32) -> Result<UnixStream, QueryError> {
    let mut refused = false;
    for path in search.paths(pid) {
        match UnixStream::connect(&path) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => refused = true,
            Err(_) => {}
        }
    }
    Err(if refused {
        QueryError::Refused
    } else {
        QueryError::NoMaster
    })
}

/// Whether the process listening at the other end of `stream` is `pid`,
/// as the kernel tells it: its pid (translated into our pid namespace)
/// must be `pid`, its user one of `trusted` (root or ours), and `pid` must
/// be in our pid namespace. `Err` says what did not match.
fn verify_peer(stream: &UnixStream, pid: i32, trusted: &[u32]) -> Result<(), String> {
    let creds = getsockopt(stream, sockopt::PeerCredentials)
        .map_err(|e| format!("its credentials cannot be read: {}", e.desc()))?;
    if !trusted.contains(&creds.uid()) {
        return Err(format!(
            "its control socket is held by uid {}, neither root nor us (uid {})",
            creds.uid(),
            nix::unistd::geteuid()
        ));
    }
    if creds.pid() != pid {
        let seen = match creds.pid() {
            0 => "a process outside our pid namespace".to_string(),
            other => format!("pid {other}"),
        };
        return Err(format!(
            "its control socket is held by {seen}, not by pid {pid} (a master of another pid namespace, or an impostor)"
        ));
    }
    let ours = std::fs::read_link("/proc/self/ns/pid");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) if ours == theirs => Ok(()),
        (Ok(ours), Ok(theirs)) => Err(format!(
            "pid {pid} is in another pid namespace ({} is not ours, {})",
            theirs.display(),
            ours.display()
        )),
        (Err(e), _) | (_, Err(e)) => Err(format!(
            "the pid namespace of pid {pid} cannot be told: {}",
            crate::error::io_reason(&e)
        )),
    }
}
