//! The harness: temp dirs, a guard around each master we start, waiting on
//! conditions with deadlines (never sleeping to synchronise), a tiny HTTP
//! client over TCP or Unix sockets, and /proc readers.
//!
//! Deadlines scale with `FORKMASTER_TEST_TIMEOUT_SCALE` for slow machines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

pub fn forkmaster() -> &'static str {
    env!("CARGO_BIN_EXE_forkmaster")
}

pub fn demo() -> &'static str {
    env!("CARGO_BIN_EXE_forkmaster-demo")
}

/// `secs` seconds, scaled for slow machines.
pub fn secs(secs: u64) -> Duration {
    let scale: f64 = std::env::var("FORKMASTER_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs as f64 * scale)
}

/// Polls `check` until it returns `Some`, or panics naming `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory, removed when dropped. Paths stay short for Unix sockets.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/fmt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `unix:<dir>/<name>` for `--listen`.
    pub fn unix(&self, name: &str) -> String {
        format!("unix:{}", self.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running master, killed with all its descendants and reaped when dropped.
pub struct Master {
    pub child: Child,
    pub log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Master {
    /// Starts `forkmaster ARGS` with stdin from /dev/null and both output
    /// streams into `<dir>/<name>.log`.
    pub fn start(dir: &TempDir, args: &[&str]) -> Master {
        Master::start_with(dir, args, |_| {})
    }

    pub fn start_with(dir: &TempDir, args: &[&str], setup: impl FnOnce(&mut Command)) -> Master {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log_path = dir.join(&format!("master-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("create log");
        let mut cmd = Command::new(forkmaster());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .env_remove("RUST_LOG");
        setup(&mut cmd);
        let child = cmd.spawn().expect("spawn forkmaster");
        Master {
            child,
            log_path,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal master");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log holds `needle` at least `count` times.
    pub fn wait_log_count(&mut self, needle: &str, count: usize, timeout: Duration) -> String {
        let what = format!("{count} x {needle:?} in the master log");
        let result = self.try_wait_for(timeout, |m| {
            let log = m.log();
            (log.matches(needle).count() >= count).then_some(log)
        });
        result.unwrap_or_else(|| panic!("timed out waiting for {what}; log:\n{}", self.log()))
    }

    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until every configured worker is ready (the `all-ready` line).
    pub fn wait_ready(&mut self) -> String {
        self.wait_log("event=all-ready", secs(20))
    }

    /// Polls `check` until `Some`; `None` if the deadline passes or the
    /// master exits first (then the caller's panic shows the log).
    pub fn try_wait_for<T>(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&Master) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return Some(value);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the master to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "master did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The master's live child processes (its workers).
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.status.is_none() {
            let doomed = descendants_of(self.pid());
            let _ = self.child.kill();
            for pid in doomed {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs forkmaster to completion (for `--check` and startup errors), killing
/// it if it outlives `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(forkmaster())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn forkmaster");
    let pid = child.id() as i32;
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            for p in descendants_of(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "forkmaster {args:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("wait_with_output")
}

/// Reads `/proc/<pid>/stat`: (state, ppid, pgid).
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid, _)) = proc_stat(pid) {
            if ppid == parent && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

pub fn descendants_of(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children_of(pid) {
            out.push(child);
            queue.push(child);
        }
    }
    out
}

/// Number of open fds of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Where to send requests.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    pub fn unix(path: impl AsRef<Path>) -> Target {
        Target::Unix(path.as_ref().to_path_buf())
    }
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body's `key=value` fields (the demo app's answer).
    pub fn fields(&self) -> HashMap<String, String> {
        fields(&self.body)
    }
}

pub fn fields(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One `GET` on a fresh connection with `Connection: close`.
pub fn get(target: &Target, path: &str) -> Result<Response, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let timeout = Some(secs(10));
    let raw = match target {
        Target::Tcp(addr) => {
            let mut s =
                TcpStream::connect_timeout(addr, secs(5)).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            exchange(&mut s, &request)?
        }
        Target::Unix(path) => {
            let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            exchange(&mut s, &request)?
        }
    };
    parse_response(&raw)
}

fn exchange(stream: &mut (impl Read + Write), request: &str) -> Result<Vec<u8>, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// `GET /` until it answers 200; the demo's fields.
pub fn wait_serving(target: &Target) -> HashMap<String, String> {
    wait_for(&format!("{target:?} to serve"), secs(20), || {
        get(target, "/")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.fields())
    })
}

/// The address in the master's `event=listen addr=...` line number `index`.
pub fn listen_addr(log: &str, index: usize) -> SocketAddr {
    log.lines()
        .filter_map(|l| l.split("event=listen addr=").nth(1))
        .nth(index)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listen line {index} in log:\n{log}"))
}

// Helpers for the signal and supervision tests.

/// The master's own log lines (never the demo's) whose `event=` is `event`,
/// as their `key=value` fields, oldest first. Quoted values with spaces are
/// cut at the first space; use the raw line for those.
pub fn master_events(log: &str, event: &str) -> Vec<HashMap<String, String>> {
    log.lines()
        .filter(|line| line.contains(" forkmaster["))
        .map(fields)
        .filter(|f| f.get("event").map(String::as_str) == Some(event))
        .collect()
}

/// The `pid=` field of an event, as a pid.
pub fn event_pid(event: &HashMap<String, String>) -> i32 {
    event
        .get("pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {event:?}"))
}

/// Waits until the master has exactly `n` live children; returns their pids.
pub fn wait_children(master: &Master, n: usize) -> Vec<i32> {
    wait_for(&format!("{n} workers"), secs(20), || {
        let children = master.children();
        (children.len() == n).then_some(children)
    })
}

/// Panics with the log if the master has exited.
pub fn assert_master_running(master: &mut Master) {
    if let Some(status) = master.child.try_wait().expect("try_wait") {
        panic!("master exited ({status}); log:\n{}", master.log());
    }
}

/// The environment `pid` was exec'd with (`/proc/<pid>/environ`).
pub fn proc_environ(pid: i32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// How many connections the demo app `pid` holds open (one `conn` thread each).
pub fn open_connections(pid: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "conn")
        })
        .count()
}

/// Sends one sd_notify datagram from this process to `socket`, a
/// `NOTIFY_SOCKET` value (`@name` is the abstract namespace).
pub fn send_notify(socket: &str, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let client = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
            client.send_to_addr(message.as_bytes(), &addr)
        }
        None => client.send_to(message.as_bytes(), socket),
    }
    .map(drop)
}
