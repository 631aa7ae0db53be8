//! The harness: temp dirs, the running master (started by `fixture`,
//! killed by its `guard`) whose waits fail fast once it has exited, waiting
//! on conditions with deadlines (never sleeping to synchronise), a tiny HTTP
//! client over TCP or Unix sockets, and /proc readers. It re-exports the
//! builder, the guard and the src/-checked absence asserts (`source`), so a
//! test needs only `use crate::support::*`.
//!
//! Deadlines scale with `FORKMASTER_TEST_TIMEOUT_SCALE` for slow machines.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::fixture::Fixture;
pub use crate::guard::{oldbin_of, processes_naming, Guard};
pub use crate::source::{
    assert_no_event, assert_no_panic, assert_not_logged, event_in_source, in_source,
};
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

/// A running master. Its [`Guard`] kills it, its descendants and every
/// master its pid file names (later generations are not our children) when
/// dropped; the master itself is then reaped.
///
/// Every wait on the master fails fast: once the master has exited (and no
/// master its pid file names lives on), the wait checks its condition one
/// last time and then panics at once with the exit status and the tail of
/// the log, instead of running out its deadline.
pub struct Master {
    pub child: Child,
    pub log_path: PathBuf,
    status: Option<ExitStatus>,
    /// Where the master writes its pid, if it does.
    pub pid_file: Option<PathBuf>,
    guard: Guard,
}

impl Master {
    /// Watches `path` for masters started by upgrades: they are killed with
    /// this one, and a wait does not fail while one of them lives.
    pub fn watch_pid_file(&mut self, path: &Path) {
        self.pid_file = Some(path.to_path_buf());
        self.guard.watch_pid_file(path);
    }

    /// The guard, to hand it more processes that die with this master.
    pub fn guard(&mut self) -> &mut Guard {
        &mut self.guard
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

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// How the master exited, without reaping it; `None` while it runs.
    pub fn exited(&self) -> Option<String> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        if let Some(status) = self.status {
            return Some(status.to_string());
        }
        if is_running(self.pid()) {
            return None;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(nix::unistd::Pid::from_raw(self.pid())), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status: {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(format!("killed by {signal}")),
            Ok(WaitStatus::StillAlive) => None,
            Ok(other) => Some(format!("{other:?}")),
            // Already reaped (by `child.try_wait` in the test).
            Err(_) => Some("exited, already reaped".to_string()),
        }
    }

    /// `Some(how)` once the master has exited and no master its pid file
    /// names (a later generation) lives on.
    fn dead(&self) -> Option<String> {
        let how = self.exited()?;
        let others: Vec<i32> = self
            .guard
            .pid_file_masters()
            .into_iter()
            .filter(|p| *p != self.pid())
            .collect();
        others.is_empty().then_some(how)
    }

    /// Panics with how the master exited and the tail of its log.
    #[track_caller]
    fn panic_dead(&self, how: &str, what: &str) -> ! {
        panic!(
            "master {} exited ({how}) while waiting for {what}; last lines of its log:\n{}",
            self.pid(),
            self.log_tail()
        );
    }

    /// Waits until the log holds `needle` at least `count` times.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let what = format!("{count} x {needle:?} in the master log");
        self.wait_for(&what, timeout, |m| {
            let log = m.log();
            (log.matches(needle).count() >= count).then_some(log)
        })
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until every configured worker is ready (the `all-ready` line).
    pub fn wait_ready(&self) -> String {
        self.wait_log("event=all-ready", secs(20))
    }

    /// Polls `check` until `Some`; `None` if the deadline passes. If the
    /// master exits first, `check` gets one last look (the log is complete
    /// now) and then the wait panics with the exit status and the log.
    #[track_caller]
    pub fn try_wait_for<T>(
        &self,
        timeout: Duration,
        check: impl FnMut(&Master) -> Option<T>,
    ) -> Option<T> {
        self.poll(timeout, "a condition", check)
    }

    #[track_caller]
    fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Master) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return Some(value);
            }
            if let Some(how) = self.dead() {
                if let Some(value) = check(self) {
                    return Some(value);
                }
                self.panic_dead(&how, what);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `check` until `Some`; panics naming `what` with the log tail at
    /// the deadline, or at once if the master exits first (see
    /// `try_wait_for`).
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&Master) -> Option<T>,
    ) -> T {
        self.poll(timeout, what, check).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last lines of the log:\n{}",
                self.log_tail()
            )
        })
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
        // The guard watches this master too (see `spawn_master`), so it is
        // killed with its descendants; reaping it is ours.
        self.guard.kill_all();
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns `cmd` as a guarded master: stdin from /dev/null, both output
/// streams into `<dir>/master-<n>.log`, no `RUST_LOG`; `setup` has the last
/// say (`Fixture::start` is the way in).
pub fn spawn_master(dir: &TempDir, mut cmd: Command, setup: impl FnOnce(&mut Command)) -> Master {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let log_path = dir.join(&format!("master-{n}.log"));
    let log = std::fs::File::create(&log_path).expect("create log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .env_remove("RUST_LOG");
    setup(&mut cmd);
    let child = cmd.spawn().expect("spawn forkmaster");
    let mut guard = Guard::new();
    guard.watch_pid(child.id() as i32);
    Master {
        child,
        log_path,
        status: None,
        pid_file: None,
        guard,
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

/// The `key=value` fields of a line. A value in quotes (`reason="a b"`,
/// `\"` and `\\` escaped in it) is one value: `key=value` text inside it
/// (a worker's stderr in a reason) is no field of the line.
pub fn fields(text: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return fields;
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..end];
        rest = &rest[end..];
        let Some(after) = rest.strip_prefix('=') else {
            continue; // a bare word
        };
        let value = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut consumed = quoted.len();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        consumed = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[consumed..];
            value
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            rest = &after[end..];
            after[..end].to_string()
        };
        if !key.is_empty() {
            fields.insert(key.to_string(), value);
        }
    }
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

/// The pid in a pid file, if any.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs a forkmaster client command to completion: (exit code, stdout, stderr).
pub fn client(args: &[&str], timeout: Duration) -> (i32, String, String) {
    let out = run(args, timeout);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs any command to completion with its output captured, killing it and
/// its descendants if it outlives `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
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
                "{cmd:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("wait_with_output")
}

/// A file's content as text (lossy), empty if it cannot be read.
pub fn file_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until the file holds `needle` at least `count` times; its content.
pub fn wait_file_count(path: &Path, needle: &str, count: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = file_text(path);
        if text.matches(needle).count() >= count {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {count} x {needle:?} in {}:\n{text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_file(path: &Path, needle: &str, timeout: Duration) -> String {
    wait_file_count(path, needle, 1, timeout)
}

/// What `/proc/<pid>/fd/<fd>` points at (`/dev/null`, `pipe:[123]`, a path).
pub fn fd_target(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// A field of `/proc/<pid>/status` (`Uid`, `Gid`, `Groups`, `Umask`), trimmed.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Waits until `pid` sleeps, then asserts it does not wake once (no
/// voluntary or forced context switch) in `window`: a measuring window, not
/// synchronisation. For an idle master that must sleep in poll(2).
pub fn assert_never_wakes(pid: i32, window: Duration) {
    wait_for("the master asleep", secs(10), || {
        proc_stat(pid)
            .filter(|(state, _, _)| *state == 'S')
            .map(|_| ())
    });
    let switches = || {
        ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
            .iter()
            .map(|field| {
                proc_status(pid, field)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{field} of pid {pid}"))
            })
            .sum::<u64>()
    };
    let before = switches();
    std::thread::sleep(window);
    let woke = switches() - before;
    assert_eq!(woke, 0, "the idle master woke {woke} times in {window:?}");
}

/// A bounded HTTP load: threads sending `GET /` until stopped, counting
/// answers (by the generation that gave them) and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    generations: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(target: &Target, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let generations = Arc::new(Mutex::new(BTreeMap::new()));
        let deadline = Instant::now() + secs(300);
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, errors, generations, target) = (
                    stop.clone(),
                    ok.clone(),
                    errors.clone(),
                    generations.clone(),
                    target.clone(),
                );
                std::thread::spawn(move || {
                    // Bounded in count and time, whatever the test does.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            return;
                        }
                        match get(&target, "/") {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let generation =
                                    r.fields().remove("generation").unwrap_or_default();
                                *generations.lock().unwrap().entry(generation).or_default() += 1;
                            }
                            Ok(r) => errors.lock().unwrap().push(format!("status {}", r.status)),
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            errors,
            generations,
            threads,
        }
    }

    /// Waits until at least `n` more requests have been answered.
    pub fn wait_answers(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_for(&format!("{n} more answers under load"), secs(20), || {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Answers so far, by the `generation` that gave them.
    pub fn generations(&self) -> BTreeMap<String, u64> {
        self.generations.lock().unwrap().clone()
    }

    /// Stops the load; (requests answered 200, failures).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), errors)
    }

    /// Stops the load and panics unless every request was answered 200;
    /// the answers by generation.
    pub fn finish_without_failures(self) -> BTreeMap<String, u64> {
        let generations = self.generations();
        let (ok, errors) = self.finish();
        assert!(
            errors.is_empty(),
            "{} requests failed, {ok} answered: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        assert!(ok > 0, "no request was answered");
        generations
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A test that panics must not leave load threads hammering on.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A config file for the demo app behind a Unix socket, with a token file.
pub struct App {
    pub dir: TempDir,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    pub token: PathBuf,
    pub target: Target,
}

impl App {
    pub fn new(workers: usize, extra: &str) -> App {
        let dir = TempDir::new();
        let config = dir.join("forkmaster.yml");
        let pid_file = dir.join("app.pid");
        let token = dir.join("token");
        let socket = dir.join("app.sock");
        std::fs::write(&token, "boot-0").unwrap();
        let app = App {
            target: Target::unix(&socket),
            config,
            pid_file,
            token,
            dir,
        };
        app.write_config(workers, extra);
        app
    }

    /// Rewrites the config file; `extra` holds more YAML lines, which may
    /// replace base keys (`listen`, `env`, `command`, ...).
    pub fn write_config(&self, workers: usize, extra: &str) {
        std::fs::write(&self.config, self.config_text(workers, extra)).unwrap();
    }

    /// The config file text `write_config` writes: the base keys, less the
    /// ones `extra` gives itself, then `extra`.
    pub fn config_text(&self, workers: usize, extra: &str) -> String {
        let base = [
            ("pid", format!("{}", self.pid_file.display())),
            ("listen", format!("['unix:{}']", self.socket().display())),
            ("workers", workers.to_string()),
            ("ready", "notify".to_string()),
            ("graceful_timeout", "10s".to_string()),
            (
                "env",
                format!("{{DEMO_TOKEN_FILE: '{}'}}", self.token.display()),
            ),
            ("command", format!("['{}']", demo())),
        ];
        let mut text = String::new();
        for (key, value) in base {
            if !extra.lines().any(|l| l.starts_with(&format!("{key}:"))) {
                text.push_str(&format!("{key}: {value}\n"));
            }
        }
        text.push_str(extra);
        text
    }

    /// `env:` with the token file and these extra `KEY: 'value'` pairs.
    pub fn env_line(&self, extra: &[(&str, &str)]) -> String {
        let mut pairs = vec![format!("DEMO_TOKEN_FILE: '{}'", self.token.display())];
        pairs.extend(extra.iter().map(|(k, v)| format!("{k}: '{v}'")));
        format!("env: {{{}}}\n", pairs.join(", "))
    }

    pub fn socket(&self) -> PathBuf {
        match &self.target {
            Target::Unix(p) => p.clone(),
            Target::Tcp(a) => panic!("App serves on a Unix socket, not {a}"),
        }
    }

    pub fn start(&self) -> Master {
        self.start_program(Path::new(forkmaster()))
    }

    /// Starts the master as `program -c CONFIG` and waits until all ready.
    pub fn start_program(&self, program: &Path) -> Master {
        let master = self.fixture().program(program).start();
        master.wait_ready();
        master
    }

    /// `forkmaster -c CONFIG`, its pid file watched; not started.
    pub fn fixture(&self) -> Fixture<'_> {
        Fixture::config(&self.dir, &self.config).watch_pid_file(&self.pid_file)
    }

    pub fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    pub fn set_token(&self, token: &str) {
        std::fs::write(&self.token, token).unwrap();
    }

    pub fn token_served(&self) -> String {
        let r = get(&self.target, "/").expect("GET /");
        r.fields()["token"].clone()
    }

    pub fn master_pid(&self) -> i32 {
        read_pid(&self.pid_file).expect("pid file")
    }

    pub fn oldbin(&self) -> PathBuf {
        oldbin_of(&self.pid_file)
    }

    /// `forkmaster status -p PIDFILE --json`, parsed; `None` unless it
    /// exits 0. (By pid file: the config file may be broken on purpose.)
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let pid_file = self.pid_file.to_str().unwrap();
        let (code, out, _) = client(&["status", "-p", pid_file, "--json"], secs(10));
        (code == 0).then(|| serde_json::from_str(&out).expect("status --json is JSON"))
    }

    pub fn status(&self) -> serde_json::Value {
        let pid_file = self.pid_file.to_str().unwrap();
        let (code, out, err) = client(&["status", "-p", pid_file, "--json"], secs(10));
        assert_eq!(code, 0, "status: {out}{err}");
        serde_json::from_str(&out).expect("status --json is JSON")
    }

    /// Polls the status until `check` holds; panics with the last status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.try_status();
            if let Some(s) = status.as_ref().filter(|s| check(s)) {
                return s.clone();
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; last status: {status:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker pids in a status, by slot.
    pub fn worker_pids(status: &serde_json::Value) -> Vec<(u64, i64)> {
        status["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| (w["slot"].as_u64().unwrap(), w["pid"].as_i64().unwrap()))
            .collect()
    }
}

/// Asserts `path` does not exist.
pub fn assert_no_file(path: &Path) {
    assert!(!path.exists(), "{} should not exist", path.display());
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
    master.wait_for(&format!("{n} workers"), secs(20), |master| {
        let children = master.children();
        (children.len() == n).then_some(children)
    })
}

/// Panics with the log if the master has exited.
pub fn assert_master_running(master: &mut Master) {
    if let Some(how) = master.exited() {
        panic!("master exited ({how}); log:\n{}", master.log());
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

// Helpers for the fault-injection tests.

/// CPU time `pid` has used so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks))
}

/// Resident memory of `pid` in kB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kb(pid: i32) -> Option<u64> {
    proc_status(pid, "VmRSS")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The children of `pid` that have exited and wait to be reaped.
pub fn zombie_children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| matches!(proc_stat(*p), Some(('Z', ppid, _)) if ppid == pid))
        .collect();
    out.sort_unstable();
    out
}

/// Sets a resource limit (soft and hard) in the child between fork and exec.
pub fn limit_in_child(cmd: &mut Command, resource: nix::sys::resource::Resource, value: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit(2) is async-signal-safe and the closure allocates
    // nothing: an error is built from the raw errno.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(resource, value, value)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
}

/// Sets the soft limit of `resource` of the running process `pid` (its hard
/// limit stays, so the soft one can be raised again), as `prlimit --pid`
/// does; panics if the kernel refuses. Without CAP_SYS_RESOURCE only a
/// process's own user may change its limits, so for another user's process
/// the call is made by a helper process running as that user.
pub fn set_soft_limit(pid: i32, resource: nix::sys::resource::Resource, value: u64) {
    fn apply(pid: i32, resource: nix::sys::resource::Resource, value: u64) -> std::io::Result<()> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit(2) reads or writes one valid rlimit; a null
        // pointer is allowed for the other. Async-signal-safe, no allocation.
        unsafe {
            if libc::prlimit(pid, resource as _, std::ptr::null(), &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = (value as libc::rlim_t).min(limit.rlim_max);
            if libc::prlimit(pid, resource as _, &limit, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    let id = |field| {
        proc_status(pid, field)
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no {field} of process {pid}"))
    };
    let (uid, gid) = (id("Uid"), id("Gid"));
    let result = if uid == nix::unistd::geteuid().as_raw() && gid == nix::unistd::getegid().as_raw()
    {
        apply(pid, resource, value)
    } else {
        use std::os::unix::process::CommandExt;
        let mut helper = Command::new("/bin/true");
        helper.uid(uid).gid(gid);
        // SAFETY: `apply` only makes syscalls on stack memory.
        unsafe {
            helper.pre_exec(move || apply(pid, resource, value));
        }
        helper.status().and_then(|status| {
            status
                .success()
                .then_some(())
                .ok_or_else(|| std::io::Error::other(format!("helper: {status}")))
        })
    };
    if let Err(e) = result {
        panic!("prlimit({pid}, {resource:?}, {value}): {e}");
    }
}

/// Whether the tests run as root (some need to, some must drop it first).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sends `signal` to `pid`; panics naming both if it cannot.
pub fn send_signal(pid: i32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

/// The `NOTIFY_SOCKET` value of the master `pid`: the path of its notify
/// socket file (`<base>/.forkmaster-<uid>/<pid>.notify`).
pub fn master_notify_socket(pid: i32) -> String {
    master_socket(pid, "notify").display().to_string()
}

/// The socket file `<pid>.<kind>` (`control` or `notify`) the master `pid`
/// has bound, found among the bound Unix sockets the kernel lists. The
/// kernel lists the name a socket was bound at: the control socket is bound
/// as `<pid>.tmp` and renamed into place once it listens.
pub fn master_socket(pid: i32, kind: &str) -> PathBuf {
    let name = format!("{pid}.{kind}");
    let bound_as = if kind == "control" {
        format!("{pid}.tmp")
    } else {
        name.clone()
    };
    let table = std::fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .map(PathBuf::from)
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n == name.as_str() || n == bound_as.as_str())
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|d| d.to_string_lossy().starts_with(".forkmaster-"))
        })
        .map(|path| path.with_file_name(&name))
        .unwrap_or_else(|| panic!("master {pid} has no {kind} socket bound"))
}

/// Returns once the master `pid`, logging into `master`'s log, has acted on
/// every signal sent to it before the call.
///
/// A signal sent before datagram 1 is delivered (its byte is in the
/// self-pipe) at the latest when the master returns from the recvmsg that
/// reads datagram 1. Datagram 2 is sent only once datagram 1 shows in the
/// log, after the master's read loop of that pass moved on, so the master
/// reads it in a later pass, after draining the pipe: once datagram 2 is
/// logged, every earlier signal has been handled.
pub fn wait_signals_handled(master: &mut Master, pid: i32) {
    let socket = master_notify_socket(pid);
    let needle = format!("event=notify-ignored sender={} ", std::process::id());
    let before = master.log().matches(&needle).count();
    for n in 1..=2 {
        // Resent until logged: the master rate-limits the log of ignored
        // datagrams, so one may go unlogged after a flood.
        let deadline = Instant::now() + secs(10);
        loop {
            if let Err(e) = send_notify(&socket, "STATUS=fence\n") {
                panic!("notify {socket}: {e}; log:\n{}", master.log());
            }
            let logged = master.try_wait_for(Duration::from_millis(200), |m| {
                (m.log().matches(&needle).count() >= before + n).then_some(())
            });
            if logged.is_some() {
                break;
            }
            if Instant::now() > deadline {
                panic!("the master never logged fence {n}; log:\n{}", master.log());
            }
        }
    }
}

/// The health endpoint's TCP address, from `event=health-listen addr=...`.
pub fn health_addr(master: &Master) -> SocketAddr {
    let log = master.wait_log("event=health-listen", secs(10));
    log.lines()
        .filter_map(|l| l.split("event=health-listen addr=").nth(1))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no health address in log:\n{log}"))
}

/// A test whose real peer (`message` says which) is missing: skipped with a
/// message that shows, unless `FORKMASTER_REQUIRE_REAL_SERVERS=1` (CI) makes
/// it fail.
pub fn skip_unless_required(message: &str) {
    if std::env::var("FORKMASTER_REQUIRE_REAL_SERVERS").as_deref() == Ok("1") {
        panic!("{message}, and FORKMASTER_REQUIRE_REAL_SERVERS=1 requires it");
    }
    // Written to stderr directly, not with `eprintln!`: the test harness
    // captures that for a passing test, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**********\nSKIPPED {message}\n**********\n"
    );
}
