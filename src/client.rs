//! The client commands: signal a running master and, with `--wait`, watch
//! its control socket until the outcome is known. A sent signal proves
//! nothing, so success is only reported once the master itself says so.
//!
//! | exit | meaning                                                    |
//! |------|------------------------------------------------------------|
//! | 0    | done                                                       |
//! | 1    | failed: the upgrade or reload did not take, old one serves |
//! | 2    | usage: bad flags, no pid file named                        |
//! | 3    | no master running (no pid file, stale pid, not ours), or   |
//! |      | what answers cannot be verified to be the pid named        |
//! | 4    | timed out; the message says what state things are in      |

use crate::cli::{ClientCommand, Locate, StatusArgs, StopArgs, WaitArgs};
use crate::config::{self, Retire};
use crate::duration::parse_duration;
use crate::ipc::control::{self, QueryError, Search};
use crate::ipc::health::Readiness;
use crate::ipc::rundir;
use crate::pidfile::{is_alive, read_pid};
use crate::status::{OperationState, Phase, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// A master acts on a signal at once; if nothing shows within this, it refused.
const NOTICE: Duration = Duration::from_secs(5);
/// How long a master's control socket may be missing while it re-execs
/// itself (an in-place upgrade) before the client concludes.
const EXEC_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Outcome {
    Done(String),
    Failed(String),
    Usage(String),
    NotRunning(String),
    TimedOut(String),
}

pub fn run(command: &ClientCommand) -> ExitCode {
    let outcome = match command {
        ClientCommand::Upgrade(args) => upgrade(args),
        ClientCommand::Reload(args) => reload(args),
        ClientCommand::Stop(args) => stop(args),
        ClientCommand::Status(args) => status(args),
        ClientCommand::ReopenLogs(locate) => reopen_logs(locate),
        ClientCommand::Ready(locate) => ready(locate),
        ClientCommand::Metrics(locate) => metrics(locate),
    };
    let outcome = outcome.unwrap_or_else(|o| o);
    let (code, text) = match &outcome {
        Outcome::Done(text) => (0, text),
        Outcome::Failed(text) => (1, text),
        Outcome::Usage(text) => (2, text),
        Outcome::NotRunning(text) => (3, text),
        Outcome::TimedOut(text) => (4, text),
    };
    if code == 0 {
        let newline = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        // A reader that went away (`status | head -1`) is not a failure.
        let _ = write!(std::io::stdout().lock(), "{text}{newline}");
    } else {
        eprintln!("forkmaster: {text}");
    }
    ExitCode::from(code)
}

type Step<T> = Result<T, Outcome>;

/// The pid file named by `-p`, or by the `pid:` key of `-c`. Also says
/// where the master's control socket is looked for: the runtime directory
/// given (`--runtime-dir`, else the config's `runtime_dir:`), else the same
/// candidates the master chose from.
fn pid_file(locate: &Locate) -> Step<PathBuf> {
    let usage = |e: config::ConfigError| Outcome::Usage(e.to_string());
    let path = match (&locate.pid, &locate.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config_path)) => config::pid_file_of(config_path)
            .map_err(usage)?
            .ok_or_else(|| {
                Outcome::Usage(format!(
                    "config {}: no `pid:` key, so the master cannot be found",
                    config_path.display()
                ))
            })?,
        (None, None) => {
            return Err(Outcome::Usage(
                "which master? give -p PIDFILE or -c CONFIG".into(),
            ))
        }
    };
    let runtime_dir = match (&locate.runtime_dir, &locate.config) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(config_path)) => config::read_file(config_path).map_err(usage)?.runtime_dir,
        (None, None) => None,
    };
    control::search_in(search_for(&path, runtime_dir.as_deref()));
    Ok(path)
}

/// Where the control sockets of the master of `pid_file` may be: under the
/// master's candidate bases, in our own private directory first, then in
/// the one of the pid file's owner (another user's master refuses us
/// there, and we say so).
fn search_for(pid_file: &Path, runtime_dir: Option<&Path>) -> Search {
    use std::os::unix::fs::MetadataExt;
    let bases = rundir::candidates(
        runtime_dir,
        std::env::var_os(crate::protocol::RUNTIME_DIRECTORY),
        Some(pid_file),
    );
    let mut uids = vec![nix::unistd::geteuid().as_raw()];
    let owner = [
        pid_file.to_path_buf(),
        crate::pidfile::oldbin_path(pid_file),
    ]
    .iter()
    .find_map(|p| std::fs::symlink_metadata(p).ok().map(|m| m.uid()));
    if let Some(owner) = owner.filter(|o| !uids.contains(o)) {
        uids.push(owner);
    }
    Search { bases, uids }
}

/// The master a pid file names, verified to be a forkmaster master. While
/// an upgrade has renamed the pid file to `.oldbin` and the new master has
/// not written its own yet, the old master (still serving) is the answer.
fn find_master(path: &Path) -> Step<(i32, Status)> {
    match master_in(path, path) {
        Err(Outcome::NotRunning(why)) => {
            let oldbin = crate::pidfile::oldbin_path(path);
            match master_in(&oldbin, path) {
                Ok(found) => Ok(found),
                Err(_) => Err(Outcome::NotRunning(why)),
            }
        }
        other => other,
    }
}

/// The master named in `path`, which must be the master of `pid_file`: a
/// stale pid file whose pid another app's master reuses is not ours.
fn master_in(path: &Path, pid_file: &Path) -> Step<(i32, Status)> {
    let pid = match read_pid(path) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            return Err(Outcome::NotRunning(format!(
                "not running: no pid file at {}",
                path.display()
            )))
        }
        Err(e) => return Err(Outcome::NotRunning(format!("not running: {e}"))),
    };
    if !is_alive(pid) {
        return Err(Outcome::NotRunning(format!(
            "not running: stale pid file {} (pid {pid} is gone)",
            path.display()
        )));
    }
    match query_through_exec(pid) {
        Ok(status) => {
            if is_master_of(&status, pid_file) {
                Ok((pid, status))
            } else {
                Err(Outcome::NotRunning(format!(
                    "not running: pid {pid} from {} is the forkmaster master of {} (a stale pid file whose pid was reused)",
                    path.display(),
                    status.pid_file.as_deref().unwrap_or("no pid file")
                )))
            }
        }
        Err(QueryError::NoAnswer) => Err(Outcome::Failed(format!(
            "pid {pid} from {} is a forkmaster master that did not answer in time (busy, or out of file descriptors: see its log)",
            path.display()
        ))),
        Err(QueryError::Refused) => Err(Outcome::Failed(format!(
            "pid {pid} from {} is a forkmaster master that answers only its own user (or root): run this as that user",
            path.display()
        ))),
        Err(QueryError::NoMaster) => Err(Outcome::NotRunning(format!(
            "not running: pid {pid} from {} is not a forkmaster master (no control socket answers for it in {}; a master started with another runtime directory needs --runtime-dir)",
            path.display(),
            control::searched_bases()
                .iter()
                .map(|b| b.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Err(QueryError::Unverified(why)) => Err(Outcome::NotRunning(format!(
            "refusing pid {pid} from {}: {why}; nothing was signalled",
            path.display()
        ))),
    }
}

/// `control::query`, tried again for a moment while nothing listens for
/// `pid` but the process is still the same one (same pid, same start
/// time): an in-place upgrade binds the control socket again after its
/// exec. Only a verified answer is believed, as always.
fn query_through_exec(pid: i32) -> Result<Status, QueryError> {
    let started = crate::sys::process::start_time(pid);
    let deadline = Instant::now() + EXEC_WINDOW;
    loop {
        match control::query(pid) {
            Err(QueryError::NoMaster)
                if started.is_some()
                    && Instant::now() < deadline
                    && crate::sys::process::start_time(pid) == started =>
            {
                std::thread::sleep(POLL);
            }
            answer => return answer,
        }
    }
}

/// Whether `status` is that of the master of `pid_file`: its pid file is
/// `pid_file`, or `pid_file` is that pid file's `.oldbin` (an old master
/// during an upgrade, found through the name it moved its pid to).
fn is_master_of(status: &Status, pid_file: &Path) -> bool {
    let Some(theirs) = status.pid_file.as_deref().map(PathBuf::from) else {
        return false;
    };
    let ours = crate::pidfile::canonical(pid_file);
    ours.as_deref() == Some(theirs.as_path())
        || ours.as_deref() == Some(crate::pidfile::oldbin_path(&theirs).as_path())
}

fn send(pid: i32, signal: Signal) -> Step<()> {
    kill(Pid::from_raw(pid), signal).map_err(|e| {
        Outcome::Failed(format!(
            "signal {} to pid {pid}: {}",
            signal.as_str(),
            e.desc()
        ))
    })
}

fn timeout_of(args: &WaitArgs) -> Step<Duration> {
    match &args.timeout {
        None => Ok(DEFAULT_TIMEOUT),
        Some(text) => parse_duration(text).map_err(|w| Outcome::Usage(format!("--timeout {w}"))),
    }
}

/// Calls `check` every `POLL` until it decides, or times out with `state()`.
fn watch(
    timeout: Duration,
    mut check: impl FnMut(Duration) -> Option<Step<String>>,
) -> Step<String> {
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if let Some(result) = check(elapsed) {
            return result;
        }
        if elapsed >= timeout {
            return Err(Outcome::TimedOut(String::new()));
        }
        std::thread::sleep(POLL);
    }
}

/// `ready`: the verdict of `/readyz`, from the master's status. During a
/// fork-mode upgrade the pid file names the new master while its workers
/// boot and the old one still serves: then the service is ready if either
/// is, the old master found through the `.oldbin` pid file and verified to
/// be the one the new master names (and that names it back).
fn ready(locate: &Locate) -> Step<Outcome> {
    let path = pid_file(locate)?;
    let (pid, status) = find_master(&path)?;
    let verdict = readiness(&status);
    if verdict.ready {
        return Ok(Outcome::Done(verdict.why));
    }
    let Some(old_pid) = status.old_master else {
        return Err(Outcome::Failed(verdict.why));
    };
    let oldbin = crate::pidfile::oldbin_path(&path);
    let old = master_in(&oldbin, &path)
        .ok()
        .filter(|(found, old)| *found == old_pid && old.upgrade.new_master == Some(pid))
        .map(|(_, old)| readiness(&old));
    if let Some(old) = old.as_ref().filter(|old| old.ready) {
        return Ok(Outcome::Done(format!(
            "old master pid {old_pid}: {}; new master pid {pid}: {}",
            old.why, verdict.why
        )));
    }
    // The old master retires once the new one is ready, which may have
    // happened since the new one answered: ask it again, after the old one.
    let verdict = match master_in(&path, &path) {
        Ok((again, status)) if again == pid => readiness(&status),
        _ => verdict,
    };
    match (verdict.ready, old) {
        (true, _) => Ok(Outcome::Done(verdict.why)),
        (false, Some(old)) => Err(Outcome::Failed(format!(
            "old master pid {old_pid}: {}; new master pid {pid}: {}",
            old.why, verdict.why
        ))),
        (false, None) => Err(Outcome::Failed(verdict.why)),
    }
}

/// What `/readyz` of the master with `status` says.
fn readiness(status: &Status) -> Readiness {
    let stopping = (status.phase == Phase::Stopping).then_some("stopping");
    Readiness::of(stopping, status.ready, status.target, status.min_ready)
}

fn upgrade(args: &WaitArgs) -> Step<Outcome> {
    let path = pid_file(&args.locate)?;
    let timeout = timeout_of(args)?;
    let (old, before) = find_master(&path)?;
    if let Some(new) = before.upgrade.new_master {
        return Err(Outcome::Failed(format!(
            "an upgrade is already in progress: pid {old} -> {new}"
        )));
    }
    if let Some(older) = before.old_master {
        return Err(Outcome::Failed(format!(
            "the previous upgrade is not finished: old master pid {older} still runs"
        )));
    }
    send(old, Signal::SIGUSR2)?;
    if !args.wait {
        return Ok(Outcome::Done(format!("sent USR2 to pid {old}")));
    }
    let mut state = String::from("no change seen");
    if before.retire == Some(Retire::Manual) {
        // Say it before the wait: the old master will not go away.
        eprintln!(
            "forkmaster: retire: manual: waiting for the new master to have all its workers ready; pid {old} will be left running"
        );
    }
    let result = watch(timeout, |elapsed| {
        let old_alive = is_alive(old);
        let old_status = old_alive.then(|| control::query(old).ok()).flatten();
        if let Some(s) = &old_status {
            if s.upgrade.attempts > before.upgrade.attempts
                && s.upgrade.state == OperationState::Failed
            {
                let why = s.upgrade.reason.clone().unwrap_or_default();
                return Some(Err(Outcome::Failed(format!(
                    "upgrade failed: {why}; pid {old} keeps serving"
                ))));
            }
            if s.upgrade.attempts == before.upgrade.attempts && elapsed > NOTICE {
                return Some(Err(Outcome::Failed(format!(
                    "pid {old} did not start an upgrade (see its log for why it refused)"
                ))));
            }
            if let Some(done) = in_place_outcome(&before, s, elapsed, &mut state) {
                return Some(done);
            }
        }
        let new = read_pid(&path).ok().flatten().filter(|p| *p != old);
        match new.and_then(|p| control::query(p).ok().map(|s| (p, s))) {
            Some((new, s)) => {
                // With `retire: manual` the old master stays: the upgrade is
                // done once the new master says so, with every worker ready.
                let manual = s.retire == Some(Retire::Manual);
                state = format!(
                    "new master pid {new} has {}/{} workers ready; old master pid {old} {}",
                    s.ready,
                    s.target,
                    match (old_alive, manual) {
                        (false, _) => "is gone",
                        (true, false) => "still runs",
                        (true, true) => "will be left running (retire: manual)",
                    }
                );
                let serving = s.phase == Phase::Running && s.ready == s.target;
                if serving && !old_alive {
                    return Some(Ok(format!(
                        "upgraded: pid {old} -> {new}, {} workers ready in {:.2}s",
                        s.ready,
                        elapsed.as_secs_f64()
                    )));
                }
                let done = s.upgrade.state == OperationState::Done && s.old_master == Some(old);
                if serving && manual && done {
                    return Some(Ok(format!(
                        "new master pid {new} serves with {} workers ready; old master pid {old} left running (retire: manual): send it QUIT",
                        s.ready
                    )));
                }
            }
            None if !old_alive => {
                return Some(Err(Outcome::Failed(format!(
                    "master pid {old} exited and no new master serves"
                ))))
            }
            None => state = format!("waiting for the new master; pid {old} serves"),
        }
        None
    });
    finish(result, &state, timeout)
}

/// An in-place upgrade (the pid stays): done once the master records the
/// upgrade begun after our signal as done, with every worker ready and none
/// of an older generation left. (A fork upgrade's old master never records
/// one done: it exits.)
fn in_place_outcome(
    before: &Status,
    s: &Status,
    elapsed: Duration,
    state: &mut String,
) -> Option<Step<String>> {
    if s.upgrade.attempts <= before.upgrade.attempts || s.upgrade.state != OperationState::Done {
        return None;
    }
    let older = s
        .workers
        .iter()
        .filter(|w| w.generation != s.generation)
        .count();
    *state = format!(
        "upgraded in place: pid {}, generation {}, {}/{} workers ready, {older} of the old generation still stopping",
        s.pid, s.generation, s.ready, s.target
    );
    (older == 0 && s.ready == s.target && s.phase == Phase::Running).then(|| {
        Ok(format!(
            "upgraded in place: pid {} (unchanged), generation {} -> {}, {} workers ready in {:.2}s",
            s.pid,
            before.generation,
            s.generation,
            s.ready,
            elapsed.as_secs_f64()
        ))
    })
}

fn reload(args: &WaitArgs) -> Step<Outcome> {
    let path = pid_file(&args.locate)?;
    let timeout = timeout_of(args)?;
    let (pid, before) = find_master(&path)?;
    send(pid, Signal::SIGHUP)?;
    if !args.wait {
        return Ok(Outcome::Done(format!("sent HUP to pid {pid}")));
    }
    let mut state = String::from("no change seen");
    let result = watch(timeout, |elapsed| {
        let Ok(s) = control::query(pid) else {
            return Some(Err(Outcome::Failed(format!(
                "master pid {pid} exited during the reload"
            ))));
        };
        if s.reload.attempts == before.reload.attempts {
            if elapsed > NOTICE {
                return Some(Err(Outcome::Failed(format!(
                    "pid {pid} did not start a reload (an upgrade in progress restores workers instead; see its log)"
                ))));
            }
            return None;
        }
        state = format!(
            "reload {}: {}/{} workers ready",
            s.reload.state.name(),
            s.ready,
            s.target
        );
        match s.reload.state {
            OperationState::Failed => Some(Err(Outcome::Failed(format!(
                "reload failed: {}; the rollout stopped and the previous configuration stays in force",
                s.reload.reason.unwrap_or_default()
            )))),
            OperationState::Done if s.ready == s.target => Some(Ok(format!(
                "reloaded: pid {pid} generation {}, {} workers ready in {:.2}s",
                s.generation,
                s.ready,
                elapsed.as_secs_f64()
            ))),
            _ => None,
        }
    });
    finish(result, &state, timeout)
}

fn stop(args: &StopArgs) -> Step<Outcome> {
    let path = pid_file(&args.wait.locate)?;
    let timeout = timeout_of(&args.wait)?;
    let (pid, status) = find_master(&path)?;
    if let Some(new) = status.upgrade.new_master {
        // Stopping the old master now would only hand over to the new one.
        return Err(Outcome::Failed(format!(
            "an upgrade is in progress (pid {pid} -> {new}): stop again once it is done"
        )));
    }
    let signal = if args.quick {
        Signal::SIGTERM
    } else {
        Signal::SIGQUIT
    };
    send(pid, signal)?;
    if !args.wait.wait {
        return Ok(Outcome::Done(format!(
            "sent {} to pid {pid}",
            signal.as_str()
        )));
    }
    let result = watch(timeout, |elapsed| {
        (!is_alive(pid)).then(|| {
            Ok(format!(
                "stopped: pid {pid} in {:.2}s",
                elapsed.as_secs_f64()
            ))
        })
    });
    finish(result, &format!("pid {pid} still runs"), timeout)
}

fn status(args: &StatusArgs) -> Step<Outcome> {
    let path = pid_file(&args.locate)?;
    let (_, status) = find_master(&path)?;
    if args.json {
        let json = serde_json::to_string_pretty(&status)
            .map_err(|e| Outcome::Failed(format!("status: {e}")))?;
        return Ok(Outcome::Done(json));
    }
    Ok(Outcome::Done(status.render()))
}

/// The master's status rendered as its `/metrics` renders it.
fn metrics(locate: &Locate) -> Step<Outcome> {
    let path = pid_file(locate)?;
    let (_, status) = find_master(&path)?;
    Ok(Outcome::Done(crate::metrics::render(&status)))
}

fn reopen_logs(locate: &Locate) -> Step<Outcome> {
    let path = pid_file(locate)?;
    let (pid, _) = find_master(&path)?;
    send(pid, Signal::SIGUSR1)?;
    Ok(Outcome::Done(format!("sent USR1 to pid {pid}")))
}

fn finish(result: Step<String>, state: &str, timeout: Duration) -> Step<Outcome> {
    match result {
        Ok(text) => Ok(Outcome::Done(text)),
        Err(Outcome::TimedOut(_)) => Err(Outcome::TimedOut(format!(
            "timed out after {}: {state}",
            crate::duration::Human(timeout)
        ))),
        Err(other) => Err(other),
    }
}
