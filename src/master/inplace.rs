//! The in-place upgrade (USR2 with `upgrade_mode: in-place`, or `auto` as
//! PID 1 or under a single-child init): the master `execve`s the new binary
//! in its own process, so its pid, its pid file and its children stay.
//!
//! Old image: open the new binary once and check that file with `-t` (an
//! asynchronous child, reaped by the loop, with a deadline), which must
//! also say it reads the state version we write (exit 0 alone proves
//! nothing: `/bin/true`); then write the state (`crate::inplace`), clear
//! close-on-exec on what it hands over, block the signals it handles and
//! exec the same open file. An exec that returns changed nothing: the
//! upgrade failed.
//!
//! New image (`resume`): takes the old workers back as the serving
//! generation, with the configuration they were started with, and rolls
//! them over to the new generation as a rollout with every slot at once
//! (the shape of a fork upgrade: all new workers boot, each old one gets
//! its graceful stop when its replacement is ready). A failing new
//! generation is stopped and the old configuration stays (`fail_rollout`).

use super::upgrade::exec_env;
use super::{Master, Record, UpgradeRole};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::inplace::{self as state, Handover, State};
use crate::spawn::WorkerTemplate;
use crate::sys::{self, fd::set_inherited};
use crate::timers::Timer;
use crate::worker::{KillReason, Worker, WorkerState};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// How long the new binary's `-t` may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);

/// Inits that run one child and only forward signals and reap: a master
/// under one is, for an upgrade, as PID 1 (it must not change pid).
const SINGLE_CHILD_INITS: &[&str] = &[
    "tini",
    "tini-static",
    "dumb-init",
    "docker-init",
    "catatonit",
];

/// `upgrade_mode`: how USR2 upgrades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeMode {
    /// The master execs the new binary itself: same pid, same workers.
    InPlace,
    /// A new master with a new pid (the `.oldbin` handoff).
    Fork,
    /// In-place as PID 1 or under a single-child init, fork otherwise.
    Auto,
}

impl std::fmt::Display for UpgradeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpgradeMode::InPlace => "in-place",
            UpgradeMode::Fork => "fork",
            UpgradeMode::Auto => "auto",
        })
    }
}

/// Whether USR2 upgrades in place, and why (`Ok`) or why not (`Err`):
/// `pid` is ours, `parent_comm` our parent's command name.
pub fn choose(
    mode: UpgradeMode,
    pid: i32,
    parent_comm: Option<&str>,
) -> std::result::Result<String, String> {
    match mode {
        UpgradeMode::InPlace => Ok("configured".into()),
        UpgradeMode::Fork => Err("configured".into()),
        UpgradeMode::Auto if pid == 1 => Ok("pid1".into()),
        UpgradeMode::Auto => match parent_comm {
            Some(comm) if SINGLE_CHILD_INITS.contains(&comm) => Ok(format!("init={comm}")),
            _ => Err("not-pid1".into()),
        },
    }
}

/// Our parent's command name, from /proc.
fn parent_comm() -> Option<String> {
    let ppid = nix::unistd::getppid().as_raw();
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// What a new image resumes from: the old image's handover, and why the
/// new configuration could not be loaded, if it could not (the old one
/// then runs on).
pub struct Resume {
    pub handover: Handover,
    /// The configuration the old workers were started with, read from the
    /// state (`None` if this binary cannot read it).
    pub old_config: Option<Config>,
    pub config_failure: Option<String>,
}

impl Resume {
    /// The notify socket and the exec-error pipe, for `Master::new`.
    #[allow(clippy::type_complexity)]
    pub fn take_fds(&mut self) -> (Option<OwnedFd>, Option<(OwnedFd, OwnedFd)>) {
        (
            self.handover.notify.take(),
            self.handover.exec_errors.take(),
        )
    }
}

/// The new binary's `-t`, running.
pub struct Preflight {
    pub pid: i32,
    pub deadline: Instant,
    /// Its stderr: why it failed.
    stderr: Option<OwnedFd>,
    /// Its stdout: the state version it reads.
    stdout: Option<OwnedFd>,
    /// Why in-place was chosen.
    reason: String,
    /// The program checked, open: the one the exec runs.
    program: Program,
}

/// The new binary, opened once: checked and exec'd through this fd.
struct Program {
    path: std::path::PathBuf,
    file: OwnedFd,
}

impl Master {
    /// USR2's first step: in place (with why), or fork.
    pub(super) fn upgrade_in_place(&self) -> Option<String> {
        let comm = parent_comm();
        match choose(self.config.upgrade_mode, self.pid, comm.as_deref()) {
            Ok(reason) => {
                log::info!("event=upgrade mode=in-place reason={reason}");
                Some(reason)
            }
            Err(reason) => {
                log::info!("event=upgrade mode=fork reason={reason}");
                None
            }
        }
    }

    /// Starts the new binary's `-t` with our arguments, from the start
    /// directory and with the start environment, as the exec would run it.
    pub(super) fn begin_in_place(&mut self, reason: String, now: Instant) {
        self.upgrades.begin(now);
        // A recycle's booting replacement would come back as a second
        // worker of its slot; the new generation replaces every worker.
        self.cancel_recycles(now);
        self.notify_reloading("upgrading in place (USR2)");
        let program = self.launch.program();
        let fail_check = |e: &std::io::Error| {
            format!(
                "check {}: {}",
                program.display(),
                crate::error::io_reason(e)
            )
        };
        // Opened once: the check runs this file and the exec runs it too.
        let file = match sys::reexec::open_program(&self.launch.start_dir.join(&program)) {
            Ok(file) => file,
            Err(e) => return self.fail_in_place(fail_check(&e)),
        };
        // The check runs it through a copy of the fd it inherits.
        let inheritable = match file.try_clone().and_then(|fd| {
            set_inherited(fd.as_fd(), true)?;
            Ok(fd)
        }) {
            Ok(fd) => fd,
            Err(e) => return self.fail_in_place(fail_check(&e)),
        };
        let mut command =
            std::process::Command::new(format!("/proc/self/fd/{}", inheritable.as_raw_fd()));
        if let Some(argv0) = self.launch.args.first() {
            command.arg0(argv0);
        }
        // `-t` first: after `--` it would be the app's.
        command
            .arg("-t")
            .args(self.launch.args.iter().skip(1))
            .env_clear()
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env(crate::protocol::INPLACE_PREFLIGHT, "1")
            .current_dir(&self.launch.start_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let spawned = command.spawn();
        drop(inheritable);
        let child = match spawned {
            Ok(child) => child,
            Err(e) => return self.fail_in_place(fail_check(&e)),
        };
        let pid = child.id() as i32;
        // Reaped by the loop (`waitpid(-1)`), never through `child`.
        let stderr = child.stderr.map(OwnedFd::from);
        let stdout = child.stdout.map(OwnedFd::from);
        for fd in stderr.iter().chain(stdout.iter()) {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        }
        let deadline = now + PREFLIGHT_TIMEOUT;
        log::info!(
            "event=upgrade-check pid={pid} program={}",
            crate::logging::esc(program.display())
        );
        self.timers.add(deadline, Timer::UpgradePreflight);
        self.role = UpgradeRole::Preflight(Preflight {
            pid,
            deadline,
            stderr,
            stdout,
            reason,
            program: Program {
                path: program,
                file,
            },
        });
    }

    /// The `-t` exited (we reaped it): exec if it passed.
    pub(super) fn on_preflight_exit(&mut self, status: super::workers::ExitStatus) {
        let UpgradeRole::Preflight(check) = std::mem::replace(&mut self.role, UpgradeRole::None)
        else {
            return;
        };
        if self.phase != super::Phase::Running {
            self.fail_in_place("stopping".into());
            return;
        }
        // A HUP taken meanwhile: its replacements are no state to hand over.
        if self.rollout.is_some() {
            self.fail_in_place("a rolling restart (HUP) began during the check".into());
            return;
        }
        match status {
            super::workers::ExitStatus::Code(0) => {
                let said = check
                    .stdout
                    .map(|fd| read_output(fd, 1 << 16))
                    .unwrap_or_default();
                // Exit 0 alone proves nothing (`/bin/true`): the new binary
                // must say it reads the state we write.
                if crate::protocol::inplace_version_of(&said) == Some(state::VERSION) {
                    self.exec_in_place(&check.reason, &check.program);
                } else {
                    self.fail_in_place(format!(
                        "{} is not a forkmaster that reads in-place state version {}",
                        check.program.path.display(),
                        state::VERSION
                    ));
                }
            }
            _ => {
                let said = check.stderr.map(read_said).unwrap_or_default();
                let said = said.trim();
                let why = if said.is_empty() {
                    format!("check of the new binary {status}")
                } else {
                    format!("check of the new binary {status}: {said}")
                };
                self.fail_in_place(why);
            }
        }
    }

    /// The `-t` took too long: killed (reaped later as a stray).
    pub(super) fn on_preflight_timeout(&mut self) {
        let UpgradeRole::Preflight(check) = std::mem::replace(&mut self.role, UpgradeRole::None)
        else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(check.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.fail_in_place(format!(
            "check of the new binary: no answer within {}",
            crate::duration::Human(PREFLIGHT_TIMEOUT)
        ));
    }

    /// Records a failed in-place upgrade; nothing changed, we keep serving.
    /// (No `MAINPID=`: the pid never changed.)
    pub(super) fn fail_in_place(&mut self, why: String) {
        log::error!(
            "upgrade failed: {why} event=upgrade-failed mode=in-place action=\"kept serving\"",
            why = crate::logging::esc(&why)
        );
        self.upgrades.end(Some(why));
        self.notify_ready();
    }

    /// Replaces this process's image with the new binary, handing over the
    /// state. Returns only if the exec failed.
    fn exec_in_place(&mut self, reason: &str, program: &Program) {
        let now = Instant::now();
        self.read_exec_errors();
        self.logs.drain_all();
        let state = self.export_state(reason, now);
        match self.exec_with(&state, program) {
            Ok(never) => match never {},
            Err(why) => self.fail_in_place(why),
        }
    }

    fn exec_with(
        &mut self,
        state: &State,
        program: &Program,
    ) -> std::result::Result<std::convert::Infallible, String> {
        let json = serde_json::to_vec(state).map_err(|e| format!("state: {e}"))?;
        let memfd = sys::reexec::memfd_with(c"forkmaster-state", &json)
            .map_err(|e| format!("memfd: {}", crate::error::io_reason(&e)))?;
        let program_path = &program.path;
        let argv = self.exec_argv()?;
        let listeners = self.handed_listeners();
        let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = self
            .launch
            .env
            .iter()
            .filter(|(k, _)| k != crate::protocol::UPGRADE_HEALTH_FD)
            .cloned()
            .collect();
        // The health listener stays open across the exec: no probe refused.
        if let Some(health) = &self.health {
            env.push((
                crate::protocol::UPGRADE_HEALTH_FD.into(),
                health.listener_fd().to_string().into(),
            ));
        }
        env.push((
            crate::protocol::INHERIT_FDS.into(),
            crate::handoff::encode_listeners(&listeners).into(),
        ));
        env.push((
            crate::protocol::INPLACE_STATE.into(),
            memfd.as_raw_fd().to_string().into(),
        ));
        let env = exec_env(env)?;
        // Everything handed over, close-on-exec cleared for the exec only.
        let mut handed: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.fd.as_fd()).collect();
        handed.push(self.notify.as_fd());
        handed.push(self.exec_errors.as_fd());
        handed.push(self.exec_errors_write.as_fd());
        handed.push(memfd.as_fd());
        handed.extend(self.logs.read_fds());
        handed.extend(self.preload.handed_fds());
        handed.extend(self.health.as_ref().map(|h| h.listener()));
        let cwd = std::env::current_dir().ok();
        let cleared = handed.iter().all(|fd| set_inherited(*fd, true).is_ok());
        let signals = handled_signals();
        let failure = if !cleared {
            "clear close-on-exec on a handed fd".to_string()
        } else if let Err(e) = std::env::set_current_dir(&self.launch.start_dir) {
            format!(
                "chdir {}: {}",
                self.launch.start_dir.display(),
                crate::error::io_reason(&e)
            )
        } else {
            match sys::reexec::block_signals(&signals) {
                Err(e) => format!("block signals: {}", e.desc()),
                Ok(mask) => {
                    // Signals already in the self-pipe (it closes at the
                    // exec) are raised again: blocked, they stay pending for
                    // the new image (or, if the exec fails, for us).
                    for signal in self.signals.drain() {
                        if let Ok(signal) = nix::sys::signal::Signal::try_from(signal.number()) {
                            let _ = nix::sys::signal::raise(signal);
                        }
                    }
                    log::info!(
                        "event=upgrade-exec mode=in-place program={} workers={} generation={}",
                        crate::logging::esc(program_path.display()),
                        self.pool.len(),
                        self.generation
                    );
                    let errno = sys::reexec::exec_program(&program.file, &argv, &env);
                    sys::reexec::restore_mask(&mask);
                    format!("exec {}: {}", program_path.display(), errno.desc())
                }
            }
        };
        for fd in &handed {
            let _ = set_inherited(*fd, false);
        }
        if let Some(dir) = cwd {
            let _ = std::env::set_current_dir(dir);
        }
        Err(failure)
    }

    /// What the new image needs to take over: see `crate::inplace`.
    fn export_state(&self, reason: &str, now: Instant) -> State {
        let workers = self
            .pool
            .workers()
            .map(|w| state::Worker {
                slot: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: match w.state {
                    WorkerState::Booting { deadline } => state::WorkerState::Booting {
                        deadline_in_ms: state::ms_until(now, deadline),
                    },
                    WorkerState::Ready { since, watchdog } => state::WorkerState::Ready {
                        since_ms_ago: state::ms_ago(now, since),
                        watchdog_in_ms: watchdog.map(|at| state::ms_until(now, at)),
                    },
                    WorkerState::Stopping { kill_at } => state::WorkerState::Stopping {
                        kill_in_ms: state::ms_until(now, kill_at),
                    },
                },
                age_ms: state::ms_ago(now, w.started),
                ready_ms_ago: w.was_ready.map(|at| state::ms_ago(now, at)),
                ready_in_ms: w.ready_at.map(|at| state::ms_until(now, at)),
                killed: w.killed.map(|k| {
                    match k {
                        KillReason::ReadyTimeout => "ready-timeout",
                        KillReason::Watchdog => "watchdog",
                    }
                    .to_string()
                }),
                pipes: self.logs.read_fds_of(w.pid),
            })
            .collect();
        State {
            version: state::VERSION,
            reason: reason.to_string(),
            config_text: self.config.config_text.clone(),
            generation: self.generation,
            generations_issued: self.generations_issued,
            uptime_ms: state::ms_ago(now, self.started),
            target: self.pool.target(),
            serving: self.serving,
            notify_fd: self.notify.as_fd().as_raw_fd(),
            exec_errors: [
                self.exec_errors.as_raw_fd(),
                self.exec_errors_write.as_raw_fd(),
            ],
            workers,
            preloaders: self.export_preloaders(now),
            slots: self
                .pool
                .slots()
                .iter()
                .map(|s| state::Slot {
                    failures: s.failures,
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                })
                .collect(),
            upgrades: export_record(&self.upgrades, now),
            reloads: export_record(&self.reloads, now),
            counters: self.counters.clone(),
        }
    }

    /// New image: takes the old image's workers back and starts the new
    /// generation. `config_failure`: the new configuration could not be
    /// loaded, so `self.config` is the old one and the old workers stay.
    pub(super) fn resume(&mut self, resume: Resume) -> Result<()> {
        let now = Instant::now();
        let Resume {
            handover,
            old_config,
            config_failure,
        } = resume;
        let Handover {
            state,
            mut pipes,
            preloaders,
            ..
        } = handover;
        let old_config = old_config.unwrap_or_else(|| {
            log::warn!(
                "event=inplace-old-config reason=\"unreadable by this binary\" action=\"old workers respawn with the new configuration\""
            );
            self.config.clone()
        });
        let old_template = WorkerTemplate::new(
            &old_config,
            &self.listeners,
            &self.launch.env,
            &self.notify.env_value,
            state.generation,
        )
        .map_err(|e| Error::Config(crate::config::ConfigError::Invalid(e)))?;
        self.generation = state.generation;
        self.generations_issued = state.generations_issued;
        self.started = state::before(now, state.uptime_ms);
        self.serving = state.serving;
        self.upgrades = import_record(&state.upgrades, now);
        self.reloads = import_record(&state.reloads, now);
        self.counters = state.counters.clone();
        self.restore_workers(&state, &mut pipes, now);
        self.restore_preloaders(preloaders, now);
        log::info!(
            "event=upgrade-resumed mode=in-place reason={} workers={} generation={}",
            state.reason,
            self.pool.len(),
            self.generation
        );
        let new_config = std::mem::replace(&mut self.config, old_config);
        self.template = old_template;
        // The old configuration's recycling limits go on for its workers
        // (they keep serving if the new generation fails).
        for pid in self.pool.pids() {
            if self.pool.get(pid).is_some_and(|w| w.is_ready()) {
                self.note_ready_for_recycling(pid, None, now);
            }
        }
        if let Some(why) = config_failure {
            self.fail_in_place(format!("the new configuration: {why}"));
            return Ok(());
        }
        match WorkerTemplate::new(
            &new_config,
            &self.listeners,
            &self.launch.env,
            &self.notify.env_value,
            self.generations_issued + 1,
        ) {
            Ok(template) => self.start_rollout(new_config, template, true, now),
            Err(why) => self.fail_in_place(format!("the new configuration: {why}")),
        }
        Ok(())
    }

    /// The old image's workers, their slots' history and their deadlines.
    fn restore_workers(
        &mut self,
        state: &State,
        pipes: &mut std::collections::HashMap<i32, [Option<OwnedFd>; 2]>,
        now: Instant,
    ) {
        self.pool.set_target(state.target, now);
        for (i, slot) in state.slots.iter().enumerate() {
            self.pool
                .restore_history(i, slot.failures, slot.restarts, slot.last_exit.clone());
        }
        // Stopping ones first: each leaves the slot it is put in, which its
        // successor then takes.
        let (stopping, others): (Vec<_>, Vec<_>) = state
            .workers
            .iter()
            .partition(|w| matches!(w.state, state::WorkerState::Stopping { .. }));
        for w in stopping.into_iter().chain(others) {
            let mut worker = Worker::new(
                w.slot,
                w.pid,
                state::before(now, w.age_ms),
                Duration::ZERO,
                w.generation,
            );
            worker.ready_at = w.ready_in_ms.map(|ms| state::after(now, ms));
            worker.killed = match w.killed.as_deref() {
                Some("ready-timeout") => Some(KillReason::ReadyTimeout),
                Some("watchdog") => Some(KillReason::Watchdog),
                _ => None,
            };
            let pid = w.pid;
            if let Some(read) = pipes.remove(&pid) {
                self.logs.adopt(pid, read);
            }
            match w.state {
                state::WorkerState::Booting { deadline_in_ms } => {
                    let deadline = state::after(now, deadline_in_ms);
                    worker.state = WorkerState::Booting { deadline };
                    self.pool.insert(worker, false);
                    self.timers.add(deadline, Timer::ReadyTimeout(pid));
                    if let Some(at) = self.pool.get(pid).and_then(|w| w.ready_at) {
                        self.timers.add(at, Timer::ReadyDelay(pid));
                    }
                }
                state::WorkerState::Ready {
                    since_ms_ago,
                    watchdog_in_ms,
                } => {
                    self.pool.insert(worker, false);
                    let watchdog = watchdog_in_ms.map(|ms| state::after(now, ms));
                    self.pool
                        .mark_ready(pid, state::before(now, since_ms_ago), watchdog);
                    if let Some(at) = watchdog {
                        self.timers.add(at, Timer::Watchdog(pid));
                    }
                }
                state::WorkerState::Stopping { kill_in_ms } => {
                    self.pool.insert(worker, false);
                    let kill_at = state::after(now, kill_in_ms);
                    self.pool.mark_stopping(pid, kill_at, false, now);
                    self.timers.add(kill_at, Timer::Kill(pid));
                }
            }
        }
        // `mark_ready` took "now" for the time of readiness; the first one
        // is what a crash loop's backoff reads.
        for w in &state.workers {
            if let Some(ms) = w.ready_ms_ago {
                self.pool.set_was_ready(w.pid, state::before(now, ms));
            }
        }
    }
}

/// An in-place upgrade's new image, its handlers installed: the signals
/// that came during the exec (the old image blocked them) are delivered
/// now, into the pipe the loop drains first. Also when the handover could
/// not be read: the mask must not stay.
pub fn unblock_after_exec() {
    if crate::inplace::is_inplace() {
        sys::reexec::unblock_signals(&handled_signals());
    }
}

/// The signals the master handles: blocked across the exec.
fn handled_signals() -> Vec<nix::sys::signal::Signal> {
    crate::ipc::signals::Signal::ALL
        .iter()
        .filter_map(|s| nix::sys::signal::Signal::try_from(s.number()).ok())
        .collect()
}

/// Reads what a failed `-t` said (it is short, and it has exited).
fn read_said(fd: OwnedFd) -> String {
    read_output(fd, 4096).replace('\n', " ")
}

/// Up to `limit` bytes a `-t` wrote (it has exited).
fn read_output(fd: OwnedFd, limit: u64) -> String {
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    let _ = (&mut file).take(limit).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn export_record(record: &Record, now: Instant) -> state::Record {
    state::Record {
        attempts: record.attempts,
        state: record.state,
        reason: record.reason.clone(),
        started_ms_ago: record.started.map(|at| state::ms_ago(now, at)),
        took_ms: record.took.map(|d| d.as_millis() as u64),
        outcomes: record.outcomes,
    }
}

fn import_record(record: &state::Record, now: Instant) -> Record {
    Record {
        attempts: record.attempts,
        state: record.state,
        reason: record.reason.clone(),
        started: record.started_ms_ago.map(|ms| state::before(now, ms)),
        took: record.took_ms.map(Duration::from_millis),
        outcomes: record.outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_in_place_as_pid_1_or_under_a_single_child_init() {
        assert_eq!(
            choose(UpgradeMode::Auto, 1, Some("bash")),
            Ok("pid1".into())
        );
        assert_eq!(
            choose(UpgradeMode::Auto, 7, Some("tini")),
            Ok("init=tini".into())
        );
        assert_eq!(
            choose(UpgradeMode::Auto, 7, Some("dumb-init")),
            Ok("init=dumb-init".into())
        );
        assert!(choose(UpgradeMode::Auto, 7, Some("systemd")).is_err());
        assert!(choose(UpgradeMode::Auto, 7, None).is_err());
        assert!(choose(UpgradeMode::Fork, 1, Some("tini")).is_err());
        assert!(choose(UpgradeMode::InPlace, 7, Some("bash")).is_ok());
    }
}
