//! The health endpoint: a small HTTP/1.x listener (`health_listen`, TCP or
//! a Unix socket file) served by the master's own loop, for orchestrators'
//! probes.
//!
//! | request        | answer                                                   |
//! |----------------|----------------------------------------------------------|
//! | `GET /livez`   | 200 `alive`: the event loop runs                          |
//! | `GET /readyz`  | 200 `ready 4/4`, or 503 `not ready: ...` (`Readiness`)    |
//! | `GET /metrics` | 200, Prometheus text format (`metrics`), read when asked  |
//! | another path   | 404                                                      |
//! | another method | 405                                                      |
//!
//! It never blocks the loop: the listener and every connection are
//! non-blocking and polled; a request is at most `MAX_REQUEST` bytes and a
//! connection lives at most `CONNECTION_DEADLINE` (checked when the loop
//! wakes for it: with no connection open there is no deadline, and an idle
//! master sleeps); at most `MAX_CONNECTIONS` are open: a new one beyond
//! that closes the oldest, so a flood of idle or slow connections cannot
//! keep a real probe out (it holds a slot for one pass at most). Every answer says `Connection: close`; after it the
//! connection only waits for the client to close (what it still sends is
//! discarded, so the answer is not lost to a reset).

use crate::ipc::rundir;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A request line and headers larger than this get 431.
pub const MAX_REQUEST: usize = 4096;
/// A connection open longer than this is closed (408 if nothing was asked).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Open connections beyond this close the oldest.
pub const MAX_CONNECTIONS: usize = 64;

/// Where the health endpoint listens: `HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for HealthAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthAddr::Tcp(addr) => write!(f, "{addr}"),
            HealthAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `127.0.0.1:9001`, `[::1]:9001` or `unix:PATH` (no name lookup: an IP).
pub fn parse_addr(text: &str) -> Result<HealthAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("{text:?}: unix: needs a path"));
        }
        return Ok(HealthAddr::Unix(PathBuf::from(path)));
    }
    text.parse::<SocketAddr>()
        .map(HealthAddr::Tcp)
        .map_err(|_| format!("{text:?}: expected IP:PORT (e.g. 127.0.0.1:9001) or unix:PATH"))
}

/// What `/readyz` says: whether traffic may come, and why in a few words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub why: String,
}

impl Readiness {
    /// Serving with at least `needed(min_ready, target)` of the `target`
    /// workers ready; never while `stopping` (named in the answer).
    pub fn of(stopping: Option<&str>, ready: usize, target: usize, min_ready: usize) -> Readiness {
        if let Some(what) = stopping {
            return Readiness {
                ready: false,
                why: format!("not ready: {what}"),
            };
        }
        let needed = needed(min_ready, target);
        if target > 0 && ready >= needed {
            Readiness {
                ready: true,
                why: format!("ready {ready}/{target}"),
            }
        } else {
            Readiness {
                ready: false,
                why: format!("not ready: {ready}/{target} workers ready, {needed} needed"),
            }
        }
    }
}

/// Workers that must be ready: `min_ready` (0: all), never more than the
/// target (TTOU may lower it below `min_ready`).
pub fn needed(min_ready: usize, target: usize) -> usize {
    match min_ready {
        0 => target,
        n => n.min(target),
    }
}

/// What the master answers with; one line per path.
pub struct Answers<'a> {
    pub readiness: Readiness,
    /// The metrics text, rendered only for a request that asks for it.
    pub metrics: &'a dyn Fn() -> String,
}

/// An answer: status code, `Content-Type` and body.
type Reply = (u16, &'static str, String);

type Route = fn(&Answers) -> Reply;

const TEXT: &str = "text/plain";

/// The router: adding a path is one line.
const ROUTES: &[(&str, Route)] = &[
    ("/livez", |_| (200, TEXT, "alive\n".to_string())),
    ("/readyz", |a| {
        let code = if a.readiness.ready { 200 } else { 503 };
        (code, TEXT, format!("{}\n", a.readiness.why))
    }),
    ("/metrics", |a| {
        (200, crate::metrics::CONTENT_TYPE, (a.metrics)())
    }),
];

/// A plain-text answer of one line.
fn plain(code: u16, text: &str) -> Reply {
    (code, TEXT, format!("{text}\n"))
}

/// The answer to one request head (request line and headers).
fn respond(head: &[u8], answers: &Answers) -> Reply {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return plain(400, "bad request");
    };
    let path = target.split('?').next().unwrap_or(target);
    let Some((_, route)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return plain(404, "not found");
    };
    if method != "GET" {
        return plain(405, "method not allowed");
    }
    route(answers)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn response((code, content_type, body): &Reply) -> Vec<u8> {
    let allow = if *code == 405 { "Allow: GET\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        reason(*code),
        body.len()
    )
    .into_bytes()
}

enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        inode: Option<u64>,
    },
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Connection {
    stream: Stream,
    head: Vec<u8>,
    deadline: Instant,
    /// Answered: only waiting for the client to close.
    answered: bool,
}

/// The health listener and its open connections.
pub struct HealthServer {
    listener: Listener,
    connections: Vec<Connection>,
    /// Which connections poll(2) found readable (in `poll_fds` order).
    readable: Vec<bool>,
    /// Given up when out of descriptors, as the control socket does.
    spare: Option<std::fs::File>,
    last_emfile_log: Option<Instant>,
    /// Handed to a new master that serves it on: its socket file is not
    /// ours to remove.
    handed: bool,
}

impl HealthServer {
    /// Binds `addr` non-blocking. A Unix socket file left by a master that
    /// is gone is replaced; one that answers is not. Fails naming `addr`.
    pub fn bind(addr: &HealthAddr) -> Result<HealthServer, String> {
        let fail = |e: std::io::Error| {
            format!(
                "bind health listener {addr}: {}",
                crate::error::io_reason(&e)
            )
        };
        let listener = match addr {
            HealthAddr::Tcp(sock) => {
                let l = TcpListener::bind(sock).map_err(fail)?;
                l.set_nonblocking(true).map_err(fail)?;
                // The port bound, when 0 asked for any.
                let bound = l.local_addr().map_or(addr.to_string(), |a| a.to_string());
                log::info!("event=health-listen addr={bound}");
                Listener::Tcp(l)
            }
            HealthAddr::Unix(path) => {
                if rundir::socket_inode(path).is_some() && UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(fail)?;
                l.set_nonblocking(true).map_err(fail)?;
                log::info!("event=health-listen addr={addr}");
                Listener::Unix {
                    listener: l,
                    path: path.clone(),
                    inode: rundir::socket_inode(path),
                }
            }
        };
        Ok(HealthServer::serving(listener))
    }

    fn serving(listener: Listener) -> HealthServer {
        HealthServer {
            listener,
            connections: Vec::new(),
            readable: Vec::new(),
            spare: open_spare(),
            last_emfile_log: None,
            handed: false,
        }
    }

    /// Takes the listener an old master handed over (an upgrade), verified
    /// by the caller as an inherited listening socket; it must be bound
    /// where `addr` says.
    pub fn adopt(fd: OwnedFd, addr: &HealthAddr) -> Result<HealthServer, String> {
        let fail = |e: std::io::Error| {
            format!(
                "adopt health listener {addr}: {}",
                crate::error::io_reason(&e)
            )
        };
        let listener = match addr {
            HealthAddr::Tcp(want) => {
                let l = TcpListener::from(fd);
                let bound = l.local_addr().map_err(fail)?;
                if bound != *want && !(want.port() == 0 && bound.ip() == want.ip()) {
                    return Err(format!("adopt health listener {addr}: bound to {bound}"));
                }
                l.set_nonblocking(true).map_err(fail)?;
                log::info!("event=health-listen addr={bound} how=inherited");
                Listener::Tcp(l)
            }
            HealthAddr::Unix(path) => {
                let l = UnixListener::from(fd);
                let bound = l.local_addr().map_err(fail)?;
                if bound.as_pathname() != Some(path.as_path()) {
                    return Err(format!("adopt health listener {addr}: bound elsewhere"));
                }
                l.set_nonblocking(true).map_err(fail)?;
                log::info!("event=health-listen addr={addr} how=inherited");
                Listener::Unix {
                    listener: l,
                    path: path.clone(),
                    inode: rundir::socket_inode(path),
                }
            }
        };
        Ok(HealthServer::serving(listener))
    }

    /// A new master of a fork upgrade: the old master's health listener
    /// (`UPGRADE_HEALTH_FD`), verified an inherited listening socket. Taken
    /// before anything sets close-on-exec on what we inherited.
    pub fn take_handed() -> Option<OwnedFd> {
        let fd = std::env::var(crate::protocol::UPGRADE_HEALTH_FD).ok()?;
        let adopted = fd
            .parse::<i32>()
            .map_err(|_| format!("{fd:?} is no fd number"))
            .and_then(|n| crate::sys::fd::adopt_inherited(n).map_err(|e| e.to_string()));
        match adopted {
            Ok(fd) => Some(fd),
            Err(why) => {
                log::warn!(
                    "event=inherit-ignored what=health reason=\"{}\"",
                    crate::logging::esc(&why)
                );
                None
            }
        }
    }

    /// The listening socket, kept open across an in-place exec.
    pub fn listener(&self) -> BorrowedFd<'_> {
        match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }

    /// The listening socket, to hand to a new master.
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.listener {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }

    /// A new master serves this socket on: closing ours leaves its file.
    pub fn hand_over(&mut self) {
        self.handed = true;
    }

    /// The listener, then every open connection, for poll(2).
    pub fn poll_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let listener = match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        };
        std::iter::once(listener).chain(self.connections.iter().map(|c| c.stream.as_fd()))
    }

    /// What poll(2) said of `poll_fds`, in that order.
    pub fn note_readable(&mut self, readable: Vec<bool>) {
        self.readable = readable;
    }

    /// The earliest connection deadline; `None` with no connection open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections.iter().map(|c| c.deadline).min()
    }

    /// Reads what readable connections sent, answers complete requests,
    /// closes expired and finished ones, accepts new ones. Never blocks.
    pub fn serve<'a>(&mut self, now: Instant, answers: impl Fn() -> Answers<'a>) {
        let readable = std::mem::take(&mut self.readable);
        let mut i = 0;
        self.connections.retain_mut(|conn| {
            i += 1;
            let keep = if readable.get(i).copied().unwrap_or(false) {
                advance(conn, &answers)
            } else {
                true
            };
            if keep && now >= conn.deadline {
                if !conn.answered {
                    let _ = conn
                        .stream
                        .io()
                        .write(&response(&plain(408, "request timeout")));
                }
                return false;
            }
            keep
        });
        if readable.first().copied().unwrap_or(false) {
            self.accept(now, &answers);
        }
    }

    /// Accepts every pending connection; beyond the cap each is closed at once.
    fn accept<'a>(&mut self, now: Instant, answers: &impl Fn() -> Answers<'a>) {
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.shed_connection(&e) {
                        continue;
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                // In accept order: the first is the oldest.
                self.connections.remove(0);
            }
            let nonblocking = match &stream {
                Stream::Tcp(s) => s.set_nonblocking(true),
                Stream::Unix(s) => s.set_nonblocking(true),
            };
            if nonblocking.is_err() {
                continue;
            }
            let mut conn = Connection {
                stream,
                head: Vec::new(),
                deadline: now + CONNECTION_DEADLINE,
                answered: false,
            };
            // The request is usually there already: answer without a wake.
            if advance(&mut conn, answers) {
                self.connections.push(conn);
            }
        }
    }

    /// Out of descriptors: accept the pending connection with the spare's
    /// slot and drop it, so poll(2) does not report it again and again.
    fn shed_connection(&mut self, e: &std::io::Error) -> bool {
        if self.spare.take().is_none() {
            return false;
        }
        let shed = match &self.listener {
            Listener::Tcp(l) => l.accept().is_ok(),
            Listener::Unix { listener, .. } => listener.accept().is_ok(),
        };
        self.spare = open_spare();
        let now = Instant::now();
        let quiet = self
            .last_emfile_log
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(10));
        if shed && !quiet {
            self.last_emfile_log = Some(now);
            log::error!(
                "event=health-unavailable error=\"{}\" action=\"probe dropped\"",
                crate::error::io_reason(e)
            );
        }
        shed
    }
}

/// Reads what `conn` sent; answers once the head is complete (or too
/// large). `false`: the connection is done, close it.
fn advance<'a>(conn: &mut Connection, answers: &impl Fn() -> Answers<'a>) -> bool {
    let mut buf = [0u8; 4096];
    // Bounded per pass: a client that floods cannot hold the loop; poll(2)
    // reports it again.
    for _ in 0..16 {
        match conn.stream.io().read(&mut buf) {
            Ok(0) => return false,
            Ok(n) if conn.answered => {
                let _ = n; // discarded: the answer is out
            }
            Ok(n) => {
                conn.head.extend_from_slice(&buf[..n]);
                let end = find_head_end(&conn.head);
                let answer = match end {
                    Some(end) if end <= MAX_REQUEST => Some(respond(&conn.head[..end], &answers())),
                    _ if conn.head.len() > MAX_REQUEST => Some(plain(431, "request too large")),
                    _ => None,
                };
                if let Some(reply) = answer {
                    send_answer(&mut conn.stream, &response(&reply));
                    conn.stream.shutdown_write();
                    conn.answered = true;
                    conn.head = Vec::new();
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Writes `bytes` without blocking. A fresh socket's send buffer holds a
/// probe's answer; a larger one (`/metrics` of many workers) gets a buffer
/// as large first (capped by `net.core.wmem_max`): what still does not fit
/// is cut off, and the client sees a short body (Content-Length).
fn send_answer(stream: &mut Stream, bytes: &[u8]) {
    const FRESH_BUFFER: usize = 16 * 1024;
    if bytes.len() > FRESH_BUFFER {
        let _ = nix::sys::socket::setsockopt(
            &stream.as_fd(),
            nix::sys::socket::sockopt::SndBuf,
            &bytes.len(),
        );
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.io().write(rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Where the head ends (after the blank line), if it does.
fn find_head_end(head: &[u8]) -> Option<usize> {
    let crlf = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Drop for HealthServer {
    /// The master leaves: its socket file goes with it.
    fn drop(&mut self) {
        if let Listener::Unix { path, inode, .. } = &self.listener {
            if self.handed {
                return;
            }
            rundir::remove_socket(path, *inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(ready: bool) -> Answers<'static> {
        Answers {
            readiness: Readiness {
                ready,
                why: "why".into(),
            },
            metrics: &|| "forkmaster_generation 1\n".to_string(),
        }
    }

    #[test]
    fn routes_paths_and_methods() {
        let a = answers(true);
        assert_eq!(respond(b"GET /livez HTTP/1.1\r\n\r\n", &a).0, 200);
        assert_eq!(respond(b"GET /readyz?x=1 HTTP/1.1\r\n\r\n", &a).0, 200);
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n\r\n", &answers(false)).0,
            503
        );
        assert_eq!(respond(b"GET /nope HTTP/1.1\r\n\r\n", &a).0, 404);
        assert_eq!(respond(b"POST /livez HTTP/1.1\r\n\r\n", &a).0, 405);
        assert_eq!(respond(b"\r\n\r\n", &a).0, 400);
        let (code, kind, body) = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &a);
        assert_eq!((code, kind), (200, crate::metrics::CONTENT_TYPE));
        assert_eq!(body, "forkmaster_generation 1\n");
    }

    #[test]
    fn readiness_needs_min_ready_of_the_target() {
        assert!(Readiness::of(None, 4, 4, 0).ready);
        assert!(!Readiness::of(None, 3, 4, 0).ready);
        assert!(Readiness::of(None, 2, 4, 2).ready);
        assert!(Readiness::of(None, 1, 1, 3).ready, "capped at the target");
        assert!(
            !Readiness::of(None, 0, 0, 0).ready,
            "no workers, no traffic"
        );
        let stopping = Readiness::of(Some("stopping"), 4, 4, 0);
        assert_eq!(stopping.why, "not ready: stopping");
        assert_eq!(Readiness::of(None, 4, 4, 0).why, "ready 4/4");
    }

    #[test]
    fn parses_addresses() {
        assert!(matches!(
            parse_addr("127.0.0.1:9001"),
            Ok(HealthAddr::Tcp(_))
        ));
        assert!(matches!(parse_addr("[::1]:9001"), Ok(HealthAddr::Tcp(_))));
        assert_eq!(
            parse_addr("unix:/run/h.sock"),
            Ok(HealthAddr::Unix("/run/h.sock".into()))
        );
        assert!(parse_addr("localhost:9001").is_err());
        assert!(parse_addr("unix:").is_err());
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n\r\n"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n"), None);
    }
}
