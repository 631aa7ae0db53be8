//! `forkmaster-demo`: the demo worker that forkmaster runs in the README, and the probe the
//! integration tests use.
//!
//! A small HTTP/1.1 server: keep-alive by default, `Connection: close` honoured, HTTP/1.0
//! closes unless it asks for keep-alive, `Content-Length` always sent, bodies are text/plain.
//!
//! * `GET /` → `pid=<pid> worker=<FORKMASTER_WORKER> generation=<FORKMASTER_GENERATION> token=<token>`
//! * `GET /sleep?ms=N` → the same after sleeping N ms
//! * `GET /crash` → `abort()`; `GET /exit?code=N` → `exit(N)` (neither sends a response)
//! * `GET /hang-watchdog` → stop the `WATCHDOG=1` pings
//! * `GET /env` → the environment, sorted; `GET /fds` → the fds open when `main` started
//! * `GET /info` → `/` plus `ppid=`, `pgid=` and `pdeathsig=` lines; anything else → 404
//!
//! Listeners: the inherited fds `3..3+LISTEN_FDS` (TCP or Unix, when `LISTEN_PID` is unset or
//! ours), else `--listen ADDR` (repeatable; `HOST:PORT` or `unix:/path`; default `127.0.0.1:8080`).
//!
//! Boot: the token comes from `--token-file`/`DEMO_TOKEN_FILE` (read once), else `DEMO_TOKEN`,
//! else `none`. After `--boot-delay`/`DEMO_BOOT_DELAY` it exits with `DEMO_FAIL_BOOT` if that is
//! set (only in slot `DEMO_FAIL_WORKER` if that is set too), else starts serving and sends `READY=1` to `NOTIFY_SOCKET` (unless `DEMO_NO_READY=1`).
//! With `WATCHDOG_USEC` it sends `WATCHDOG=1` every third of that interval.
//!
//! Signals: TERM/QUIT stop gracefully (no new connections, in-flight requests finish, keep-alive
//! connections are closed, exit 0); INT exits 0 at once; HUP and USR1 are only logged.
//! Logging is one `demo pid=.. worker=.. event=..` line per event on stderr.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use std::{env, fs, mem, process, ptr, thread};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// Read timeout of connections: how quickly an idle keep-alive connection notices a stop.
const READ_POLL: Duration = Duration::from_millis(100);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// During a stop, how long a connection that has not sent its first request is waited for.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// Longest time spent draining a client after our final response (avoids RST on close).
const LINGER: Duration = Duration::from_secs(1);
const MAX_HEAD: usize = 64 * 1024;
const USAGE: &str = "usage: forkmaster-demo [--listen HOST:PORT|unix:/path]... \
                     [--token-file FILE] [--boot-delay DURATION]\n";

static PREFIX: OnceLock<String> = OnceLock::new();

/// Logs `demo pid=.. worker=.. <message>` on stderr.
macro_rules! log {
    ($($arg:tt)*) => { log_line(&format!($($arg)*)) };
}

/// Prints `forkmaster-demo: <message>` on stderr and exits 1 (bad startup input).
macro_rules! fatal {
    ($($arg:tt)*) => { fatal_line(&format!($($arg)*)) };
}

/// Writes one log line with a single `write` so lines of concurrent workers do not interleave.
fn log_line(msg: &str) {
    let prefix = PREFIX.get().map_or("demo", String::as_str);
    let _ = io::stderr().write_all(format!("{prefix} {msg}\n").as_bytes());
}

fn fatal_line(msg: &str) -> ! {
    let _ = io::stderr().write_all(format!("forkmaster-demo: {msg}\n").as_bytes());
    process::exit(1);
}

fn env_nonempty(key: &str) -> Option<String> {
    env::var_os(key)
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}

struct State {
    stopping: bool,
    inflight: usize,
    /// Accept threads inside accept(2), which may still hand us a connection.
    accepting: usize,
    /// Accept threads still running, to interrupt with SIGUSR2 on a stop.
    acceptors: Vec<libc::pthread_t>,
}

struct App {
    /// The body of `GET /`.
    body: String,
    fds: String,
    /// The parent-death signal as read on the main thread at start.
    pdeathsig: libc::c_int,
    notify_socket: Option<String>,
    stopping: AtomicBool,
    hang_watchdog: AtomicBool,
    state: Mutex<State>,
    cond: Condvar,
    /// A byte written here makes `stop_rx` readable for every accept thread's poll().
    stop_tx: UnixStream,
    stop_rx: UnixStream,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn begin_stop(&self, signal: &str) {
        let mut st = self.lock();
        if st.stopping {
            return;
        }
        st.stopping = true;
        self.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.stop_tx).write_all(b"x");
        log!("event=stopping signal={signal} inflight={}", st.inflight);
        self.cond.notify_all();
    }

    /// Blocks until a stop was requested and no connection is left, then exits 0.
    ///
    /// An accept thread blocked in accept(2) (it lost a race for a connection
    /// to another worker) could still be handed one; exiting then would reset
    /// it. So it is interrupted with SIGUSR2, again until it has left accept.
    fn exit_when_stopped(&self) -> ! {
        let mut st = self.lock();
        while !(st.stopping && st.inflight == 0 && st.accepting == 0) {
            if st.stopping && st.accepting > 0 {
                for &thread in &st.acceptors {
                    // SAFETY: threads remove themselves from `acceptors` (under this
                    // lock) before they end, so each id names a live thread.
                    unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
                }
                st = self
                    .cond
                    .wait_timeout(st, Duration::from_millis(10))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            } else {
                st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
        log!("event=exit status=0");
        process::exit(0);
    }

    fn notify(&self, msg: &str) -> io::Result<()> {
        let Some(target) = self.notify_socket.as_deref() else {
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

/// Counts an open connection; dropping it wakes the main thread when the last one ends.
struct Inflight(&'static App);

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.inflight -= 1;
        if st.inflight == 0 {
            self.0.cond.notify_all();
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    fn describe(&self) -> String {
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
    fn accept(&self) -> io::Result<Conn> {
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

/// An accepted TCP or Unix stream connection.
trait Stream: Read + Write + Send {
    fn set_timeouts(&self) -> io::Result<()>;
    fn shutdown_write(&self);
}

type Conn = Box<dyn Stream>;

macro_rules! impl_stream {
    ($($t:ty),*) => {$(
        impl Stream for $t {
            fn set_timeouts(&self) -> io::Result<()> {
                self.set_read_timeout(Some(READ_POLL))?;
                self.set_write_timeout(Some(WRITE_TIMEOUT))
            }

            fn shutdown_write(&self) {
                let _ = self.shutdown(Shutdown::Write);
            }
        }
    )*};
}

impl_stream!(TcpStream, UnixStream);

/// Lists /proc/self/fd as `<fd> <target>` lines, skipping the fd used to read the directory.
fn snapshot_fds() -> String {
    // The directory handle will take the lowest free descriptor: find it to skip it.
    // SAFETY: F_GETFD only queries the flags of a descriptor number; no memory is involved.
    let dir_fd = (0..RawFd::MAX).find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1);
    let mut fds: Vec<(RawFd, String)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(fd) = name.to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
                continue;
            };
            if Some(fd) != dir_fd {
                let target = fs::read_link(entry.path())
                    .map_or_else(|_| "?".to_string(), |p| p.to_string_lossy().into_owned());
                fds.push((fd, target));
            }
        }
    }
    fds.sort();
    fds.iter().map(|(fd, t)| format!("{fd} {t}\n")).collect()
}

fn prepare_signals() {
    // SAFETY: the set is initialised by sigemptyset before being read; pthread_sigmask only
    // reads it; SIG_IGN installs no handler code. An exec'ing master may have left signals
    // blocked, and threads spawned later inherit this mask.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // SIGUSR2 interrupts a blocked accept(2) on a stop: a handler that does
        // nothing, installed without SA_RESTART so the call fails with EINTR.
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = interrupt as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR2, &action, ptr::null_mut());
    }
}

extern "C" fn interrupt(_: libc::c_int) {}

/// Wraps an inherited listening socket.
fn adopt(fd: RawFd) -> Result<Listener, String> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable and `len` holds its exact size.
    let rc = unsafe { libc::getsockname(fd, ptr::addr_of_mut!(ss).cast(), &mut len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(format!("inherited fd {fd} is not a socket: {err}"));
    }
    let mut listening: libc::c_int = 0;
    let mut optlen = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening` is a writable c_int and `optlen` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            ptr::addr_of_mut!(listening).cast(),
            &mut optlen,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(format!("inherited fd {fd} is not a listening socket"));
    }
    // SAFETY: F_GETFD/F_SETFD only change this descriptor's own flags (not the shared ones).
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags != -1 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != -1
    };
    if !ok {
        let err = io::Error::last_os_error();
        return Err(format!("cannot set FD_CLOEXEC on fd {fd}: {err}"));
    }
    let family = libc::c_int::from(ss.ss_family);
    if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family) {
        return Err(format!("inherited fd {fd} has unsupported family {family}"));
    }
    // SAFETY: fd is an open listening socket handed over to this process by the LISTEN_FDS
    // protocol; nothing else in the process owns or wraps it, so we may take ownership.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(if family == libc::AF_UNIX {
        Listener::Unix(UnixListener::from(owned))
    } else {
        Listener::Tcp(TcpListener::from(owned))
    })
}

fn inherited_listeners() -> Result<Option<Vec<Listener>>, String> {
    let Some(count) = env_nonempty("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Some(pid) = env_nonempty("LISTEN_PID") {
        if pid.trim().parse::<u32>().ok() != Some(process::id()) {
            return Ok(None);
        }
    }
    let count: u16 = count
        .trim()
        .parse()
        .map_err(|_| format!("invalid LISTEN_FDS={count:?}"))?;
    if count == 0 {
        return Ok(None);
    }
    (3..3 + RawFd::from(count))
        .map(adopt)
        .collect::<Result<_, _>>()
        .map(Some)
}

fn bind(addr: &str) -> Result<Listener, String> {
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

/// Accepts connections until a stop is requested. Never shuts the shared listener down.
fn accept_loop(app: &'static App, listener: Listener) {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    app.lock().acceptors.push(me);
    accept_until_stopped(app, &listener);
    // SAFETY: as above.
    app.lock()
        .acceptors
        .retain(|t| unsafe { libc::pthread_equal(*t, me) } == 0);
    app.cond.notify_all();
}

fn accept_until_stopped(app: &'static App, listener: &Listener) {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [pollfd(listener.fd()), pollfd(app.stop_rx.as_raw_fd())];
    while !app.is_stopping() {
        // SAFETY: `fds` is a valid, writable array of exactly 2 pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log!("event=poll-error error={err:?}");
                thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if fds[1].revents != 0 || fds[0].revents & libc::POLLNVAL != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // Another worker may win the race and this accept then blocks until the next
        // connection; a stop interrupts it (see `exit_when_stopped`).
        {
            let mut st = app.lock();
            if st.stopping {
                return;
            }
            st.accepting += 1;
        }
        let accepted = listener.accept();
        let guard = {
            let mut st = app.lock();
            st.accepting -= 1;
            app.cond.notify_all();
            if accepted.is_ok() {
                st.inflight += 1;
                Some(Inflight(app))
            } else {
                None
            }
        };
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                use io::ErrorKind::{ConnectionAborted, Interrupted, WouldBlock};
                if !matches!(e.kind(), WouldBlock | Interrupted | ConnectionAborted) {
                    log!("event=accept-error error={e:?}");
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK)
                    ) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let Some(guard) = guard else {
            return;
        };
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            let _guard = guard;
            if conn.set_timeouts().is_ok() {
                serve(app, conn);
            }
        });
        if let Err(e) = spawned {
            log!("event=spawn-error error={e:?}");
        }
    }
}

enum Got {
    Data,
    Timeout,
    Closed,
}

fn read_some(conn: &mut Conn, buf: &mut Vec<u8>) -> Got {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return Got::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Got::Data;
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Got::Timeout,
                _ => return Got::Closed,
            },
        }
    }
}

/// Half-closes after the last response and drains the client briefly, so that unread
/// pipelined bytes do not turn our close into a RST that could destroy the response.
fn linger_close(mut conn: Conn) {
    conn.shutdown_write();
    let start = Instant::now();
    let mut sink = Vec::new();
    while start.elapsed() < LINGER {
        sink.clear();
        if !matches!(read_some(&mut conn, &mut sink), Got::Data) {
            break;
        }
    }
}

/// Finds the end of the request head: (length of the head without the blank line, total).
fn find_head(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some((i, i + 2)),
        [b'\n', b'\r', b'\n', ..] => Some((i, i + 3)),
        _ => None,
    })
}

struct Request {
    method: String,
    target: String,
    http10: bool,
    keep_alive: bool,
    content_length: usize,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || target.is_empty()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return None,
    };
    let (mut close, mut keep, mut length) = (false, false, None);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None; // no request bodies other than Content-Length framed ones
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        keep_alive: !close && (keep || !http10),
        content_length: length.unwrap_or(0),
    })
}

fn response(status: u16, body: &str, keep_alive: bool, http10: bool, head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let connection = match (keep_alive, http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn route(app: &App, method: &str, target: &str) -> (u16, String) {
    if method != "GET" && method != "HEAD" {
        return (404, "not found\n".into());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |key: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    };
    match path {
        "/" => (200, app.body.clone()),
        "/sleep" => match param("ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => {
                thread::sleep(Duration::from_millis(ms));
                (200, app.body.clone())
            }
            None => (400, "bad or missing ms\n".into()),
        },
        "/crash" => {
            log!("event=crash");
            process::abort();
        }
        "/exit" => match param("code").and_then(|v| v.parse::<i32>().ok()) {
            Some(code) => {
                log!("event=exit reason=request status={code}");
                process::exit(code);
            }
            None => (400, "bad or missing code\n".into()),
        },
        "/hang-watchdog" => {
            app.hang_watchdog.store(true, Ordering::SeqCst);
            log!("event=hang-watchdog");
            (200, "ok\n".into())
        }
        "/env" => {
            let mut vars: Vec<String> = env::vars_os()
                .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            vars.sort();
            (200, vars.concat())
        }
        "/fds" => (200, app.fds.clone()),
        "/info" => {
            let pdeathsig = app.pdeathsig;
            // SAFETY: getpgrp takes no arguments and cannot fail.
            let pgid = unsafe { libc::getpgrp() };
            let ppid = std::os::unix::process::parent_id();
            let body = &app.body;
            (
                200,
                format!("{body}ppid={ppid}\npgid={pgid}\npdeathsig={pdeathsig}\n"),
            )
        }
        _ => (404, "not found\n".into()),
    }
}

fn serve(app: &App, mut conn: Conn) {
    let accepted = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut served = 0u64;
    loop {
        let (head_len, total) = loop {
            let blank = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            buf.drain(..blank);
            if let Some(found) = find_head(&buf) {
                break found;
            }
            if buf.len() > MAX_HEAD {
                let _ = conn.write_all(&response(400, "bad request\n", false, false, false));
                return linger_close(conn);
            }
            match read_some(&mut conn, &mut buf) {
                Got::Data => {}
                Got::Closed => return,
                Got::Timeout => {
                    let idle =
                        buf.is_empty() && (served > 0 || accepted.elapsed() >= FIRST_REQUEST_GRACE);
                    if idle && app.is_stopping() {
                        return linger_close(conn);
                    }
                }
            }
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            let _ = conn.write_all(&response(400, "bad request\n", false, false, false));
            return linger_close(conn);
        };
        buf.drain(..total);
        let mut remaining = req.content_length;
        loop {
            let take = remaining.min(buf.len());
            buf.drain(..take);
            remaining -= take;
            if remaining == 0 {
                break;
            }
            if let Got::Closed = read_some(&mut conn, &mut buf) {
                return;
            }
        }
        let (status, body) = route(app, &req.method, &req.target);
        let keep_alive = req.keep_alive && !app.is_stopping();
        let out = response(status, &body, keep_alive, req.http10, req.method == "HEAD");
        if conn.write_all(&out).and_then(|()| conn.flush()).is_err() {
            return;
        }
        served += 1;
        if !keep_alive {
            return linger_close(conn);
        }
    }
}

fn signal_loop(app: &'static App, mut signals: Signals) {
    for sig in signals.forever() {
        match sig {
            SIGTERM => app.begin_stop("TERM"),
            SIGQUIT => app.begin_stop("QUIT"),
            SIGINT => {
                log!("event=exit signal=INT status=0");
                process::exit(0);
            }
            SIGUSR1 => log!("event=usr1"),
            SIGHUP => log!("event=hup"),
            _ => {}
        }
    }
}

fn watchdog_loop(app: &'static App, interval: Duration) {
    while !app.hang_watchdog.load(Ordering::SeqCst) {
        if let Err(e) = app.notify("WATCHDOG=1") {
            log!("event=notify-error error={e:?}");
        }
        thread::sleep(interval);
    }
    log!("event=watchdog-stopped");
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        ms.trim().parse().ok().map(Duration::from_millis)
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::try_from_secs_f64(secs.trim().parse().ok()?).ok()
    } else {
        s.parse().ok().map(Duration::from_millis)
    }
}

#[derive(Default)]
struct Args {
    listen: Vec<String>,
    token_file: Option<String>,
    boot_delay: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args::default();
    let mut it = env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .unwrap_or_else(|a| fatal!("argument is not UTF-8: {a:?}"));
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--listen" => None,
            "--token-file" => Some(&mut args.token_file),
            "--boot-delay" => Some(&mut args.boot_delay),
            _ => fatal!("unknown argument {flag:?}\n{USAGE}"),
        };
        let value = inline
            .or_else(|| it.next().and_then(|v| v.into_string().ok()))
            .unwrap_or_else(|| fatal!("{flag} needs a value"));
        match slot {
            Some(slot) => *slot = Some(value),
            None => args.listen.push(value),
        }
    }
    args
}

fn main() {
    let fds = snapshot_fds(); // first, before anything else opens a descriptor
                              // The parent-death signal is per thread; read it on the main thread.
    let mut pdeathsig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one c_int through the valid pointer given.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, ptr::addr_of_mut!(pdeathsig)) };
    prepare_signals();
    let signals = Signals::new([SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1])
        .unwrap_or_else(|e| fatal!("cannot install signal handlers: {e}"));
    let args = parse_args();
    let pid = process::id();
    let worker = env_nonempty("FORKMASTER_WORKER").unwrap_or_else(|| "-".into());
    let generation = env_nonempty("FORKMASTER_GENERATION").unwrap_or_else(|| "-".into());
    let _ = PREFIX.set(format!("demo pid={pid} worker={worker}"));

    let token = match args.token_file.or_else(|| env_nonempty("DEMO_TOKEN_FILE")) {
        Some(file) => fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| fatal!("cannot read token file {file}: {e}")),
        None => env_nonempty("DEMO_TOKEN").unwrap_or_else(|| "none".into()),
    };
    let boot_delay = match args.boot_delay.or_else(|| env_nonempty("DEMO_BOOT_DELAY")) {
        Some(d) => parse_duration(&d).unwrap_or_else(|| fatal!("invalid boot delay {d:?}")),
        None => Duration::ZERO,
    };
    let fail_boot = env_nonempty("DEMO_FAIL_BOOT")
        .map(|v| {
            v.trim()
                .parse::<i32>()
                .unwrap_or_else(|_| fatal!("invalid DEMO_FAIL_BOOT={v:?}"))
        })
        // DEMO_FAIL_WORKER=N limits the failure to the worker in slot N.
        .filter(|_| env_nonempty("DEMO_FAIL_WORKER").is_none_or(|w| w.trim() == worker));
    let no_ready = env_nonempty("DEMO_NO_READY").is_some_and(|v| v.trim() != "0");
    let listeners = match inherited_listeners() {
        Ok(Some(listeners)) => listeners,
        Ok(None) if args.listen.is_empty() => {
            vec![bind("127.0.0.1:8080").unwrap_or_else(|e| fatal!("{e}"))]
        }
        Ok(None) => args
            .listen
            .iter()
            .map(|a| bind(a).unwrap_or_else(|e| fatal!("{e}")))
            .collect(),
        Err(e) => fatal!("{e}"),
    };
    let (stop_tx, stop_rx) =
        UnixStream::pair().unwrap_or_else(|e| fatal!("cannot create stop pipe: {e}"));

    let app: &'static App = Box::leak(Box::new(App {
        body: format!("pid={pid} worker={worker} generation={generation} token={token}\n"),
        fds,
        pdeathsig,
        notify_socket: env_nonempty("NOTIFY_SOCKET"),
        stopping: AtomicBool::new(false),
        hang_watchdog: AtomicBool::new(false),
        state: Mutex::new(State {
            stopping: false,
            inflight: 0,
            accepting: 0,
            acceptors: Vec::new(),
        }),
        cond: Condvar::new(),
        stop_tx,
        stop_rx,
    }));
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(app, signals))
        .unwrap_or_else(|e| fatal!("cannot spawn signal thread: {e}"));

    let watchdog_pid_ok =
        env_nonempty("WATCHDOG_PID").is_none_or(|p| p.trim().parse().ok() == Some(pid));
    let watchdog_usec = env_nonempty("WATCHDOG_USEC").and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(usec) =
        watchdog_usec.filter(|u| *u > 0 && watchdog_pid_ok && app.notify_socket.is_some())
    {
        let interval = Duration::from_micros((usec / 3).max(1000));
        thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog_loop(app, interval))
            .unwrap_or_else(|e| fatal!("cannot spawn watchdog thread: {e}"));
    }
    for l in &listeners {
        log!("event=listen fd={} addr={}", l.fd(), l.describe());
    }

    if !boot_delay.is_zero() {
        log!("event=booting delay_ms={}", boot_delay.as_millis());
        let st = app.lock();
        drop(app.cond.wait_timeout_while(st, boot_delay, |s| !s.stopping));
    }
    if app.is_stopping() {
        app.exit_when_stopped();
    }
    if let Some(status) = fail_boot {
        log!("event=boot-failed status={status} error=DEMO_FAIL_BOOT");
        process::exit(status);
    }
    for l in listeners {
        thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(app, l))
            .unwrap_or_else(|e| fatal!("cannot spawn accept thread: {e}"));
    }
    if !no_ready {
        if let Err(e) = app.notify("READY=1\nSTATUS=serving\n") {
            log!("event=notify-error error={e:?}");
        }
    }
    log!(
        "event=ready token={token} notified={}",
        !no_ready && app.notify_socket.is_some()
    );
    app.exit_when_stopped();
}
