//! The master: one single-threaded event loop that owns the configuration,
//! the listeners, the workers and the pid file.
//!
//! Each pass of `run` handles queued signals (one method per signal), reads
//! exec failures and notify datagrams, reaps exited children, fires due
//! timers and tops up the workers; then it sleeps in poll(2) until the next
//! event or deadline. With nothing to do it never wakes.

use crate::config::{Config, ReadyMode};
use crate::duration::Human;
use crate::error::{errno_reason, Error, Result};
use crate::notify::NotifySocket;
use crate::pidfile;
use crate::plan::{self, Action, Slot};
use crate::signals::{Signal, SignalPipe};
use crate::sockets::Listener;
use crate::spawn::WorkerTemplate;
use crate::sys::{self, ChildStage, ERROR_RECORD_LEN};
use crate::timers::{Timer, Timers};
use crate::worker::{KillReason, Worker, WorkerState};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long a quick stop waits for workers after SIGINT before SIGKILL.
pub const QUICK_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { quick: bool },
}

pub struct Master {
    config: Config,
    listeners: Vec<Listener>,
    signals: SignalPipe,
    notify: NotifySocket,
    /// Children write a record here when their setup or exec fails.
    exec_errors: OwnedFd,
    exec_errors_write: OwnedFd,
    /// Exec failures read but not yet matched with the child's exit.
    exec_failures: HashMap<i32, String>,
    template: WorkerTemplate,
    workers: HashMap<i32, Worker>,
    slots: Vec<Slot>,
    /// How many workers we want (config, then TTIN/TTOU/WINCH).
    target: usize,
    /// Active workers (in a slot) that are ready.
    ready_count: usize,
    timers: Timers,
    phase: Phase,
    /// Set when a worker slot may need filling or emptying.
    dirty: bool,
    generation: u32,
    /// Some worker has been ready since start: boot failures no longer stop us.
    serving: bool,
    all_ready_logged: bool,
    startup_failures: u32,
    /// Why the master is stopping on its own (startup failure).
    failure: Option<String>,
    pid: i32,
}

impl Master {
    /// Takes over bound listeners; installs signal handling and the notify socket.
    pub fn new(
        config: Config,
        listeners: Vec<Listener>,
        base_env: &[(OsString, OsString)],
        generation: u32,
    ) -> Result<Master> {
        let sys_err = |call| move |source| Error::Sys { call, source };
        let signals = SignalPipe::install().map_err(|e| Error::Sys {
            call: "install signal handlers",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let notify = NotifySocket::bind().map_err(|e| Error::Sys {
            call: "bind notify socket",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let (exec_errors, exec_errors_write) =
            pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(sys_err("pipe"))?;
        let template =
            WorkerTemplate::new(&config, &listeners, base_env, &notify.env_value, generation)
                .map_err(Error::Config)?;
        Ok(Master {
            target: config.workers,
            config,
            listeners,
            signals,
            notify,
            exec_errors,
            exec_errors_write,
            exec_failures: HashMap::new(),
            template,
            workers: HashMap::new(),
            slots: Vec::new(),
            ready_count: 0,
            timers: Timers::default(),
            phase: Phase::Running,
            dirty: true,
            generation,
            serving: false,
            all_ready_logged: false,
            startup_failures: 0,
            failure: None,
            pid: std::process::id() as i32,
        })
    }

    /// Runs until stopped. `Err` if the workers could not start at all.
    pub fn run(mut self) -> Result<()> {
        log::info!(
            "event=start workers={} generation={} command=\"{}\"",
            self.target,
            self.generation,
            crate::config::shell_words(&self.config.command)
        );
        loop {
            let now = Instant::now();
            for signal in self.signals.drain() {
                self.on_signal(signal);
            }
            self.read_exec_errors();
            self.read_notifications(now);
            self.reap_workers(now);
            self.fire_timers(now);
            if self.phase == Phase::Running && self.dirty {
                self.dirty = false;
                self.scale_workers(now);
            }
            if matches!(self.phase, Phase::Stopping { .. }) && self.workers.is_empty() {
                return self.finish();
            }
            self.sleep();
        }
    }

    /// Blocks in poll(2) until a signal, a datagram, an exec error, or the next deadline.
    fn sleep(&mut self) {
        let timeout = match self.timers.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                // Round up: waking a little early would only spin.
                let ms = wait.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.exec_errors.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => log::error!("event=poll-failed error=\"{}\"", errno_reason(e)),
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        log::debug!("event=signal signal={}", signal.name());
        match signal {
            Signal::Quit => self.on_quit(),
            Signal::Term | Signal::Int => self.on_term(signal),
            Signal::Hup => self.on_hup(),
            Signal::Usr1 => self.on_usr1(),
            Signal::Usr2 => self.on_usr2(),
            Signal::Winch => self.on_winch(),
            Signal::Ttin => self.on_ttin(),
            Signal::Ttou => self.on_ttou(),
            Signal::Chld => {} // reaped on every pass
        }
    }

    /// QUIT: graceful stop; a second one makes it quick.
    fn on_quit(&mut self) {
        match self.phase {
            Phase::Running => {
                log::info!(
                    "event=stop mode=graceful signal=QUIT workers={}",
                    self.workers.len()
                );
                self.phase = Phase::Stopping { quick: false };
                self.stop_all_workers(false);
            }
            Phase::Stopping { quick: false } => self.on_term(Signal::Quit),
            Phase::Stopping { quick: true } => {}
        }
    }

    /// TERM, INT: quick stop.
    fn on_term(&mut self, signal: Signal) {
        if self.phase == (Phase::Stopping { quick: true }) {
            return;
        }
        log::info!(
            "event=stop mode=quick signal={} workers={}",
            signal.name(),
            self.workers.len()
        );
        self.phase = Phase::Stopping { quick: true };
        self.stop_all_workers(true);
    }

    fn on_hup(&mut self) {
        log::warn!("event=signal signal=HUP action=ignored reason=\"reload is not yet supported\"");
    }

    fn on_usr2(&mut self) {
        log::warn!(
            "event=signal signal=USR2 action=ignored reason=\"upgrade is not yet supported\""
        );
    }

    /// USR1: reopen our log files and pass the signal on to every worker.
    fn on_usr1(&mut self) {
        log::info!("event=reopen-logs workers={}", self.workers.len());
        for pid in self.workers.keys() {
            let _ = kill(Pid::from_raw(*pid), NixSignal::SIGUSR1);
        }
    }

    /// WINCH: stop every worker gracefully but stay (TTIN brings them back).
    fn on_winch(&mut self) {
        if sys::stdin_is_terminal() {
            log::info!("event=signal signal=WINCH action=ignored reason=\"stdin is a terminal\"");
            return;
        }
        self.set_target(0, "WINCH");
    }

    fn on_ttin(&mut self) {
        self.set_target((self.target + 1).min(crate::config::MAX_WORKERS), "TTIN");
    }

    fn on_ttou(&mut self) {
        self.set_target(self.target.saturating_sub(1), "TTOU");
    }

    fn set_target(&mut self, target: usize, signal: &str) {
        if self.phase != Phase::Running {
            log::info!("event=signal signal={signal} action=ignored reason=stopping");
            return;
        }
        log::info!(
            "event=scale signal={signal} workers={} previous={}",
            target,
            self.target
        );
        self.target = target;
        self.all_ready_logged = false;
        self.dirty = true;
    }

    /// Fills and empties slots to reach the target.
    fn scale_workers(&mut self, now: Instant) {
        for action in plan::scale(self.target, &self.slots, now) {
            match action {
                Action::Spawn(slot) => self.spawn_worker(slot, now),
                Action::Stop(slot) => {
                    if let Some(pid) = self.slots[slot].active {
                        self.stop_worker(pid, false, now);
                    }
                }
            }
        }
        self.slots.truncate(self.target.max(self.last_busy_slot()));
        self.log_if_all_ready();
    }

    /// One past the highest slot still holding an active worker.
    fn last_busy_slot(&self) -> usize {
        self.slots
            .iter()
            .rposition(|s| s.active.is_some())
            .map_or(0, |i| i + 1)
    }

    fn spawn_worker(&mut self, slot: usize, now: Instant) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        let mut exec = self
            .template
            .plan(slot, self.target, self.exec_errors_write.as_raw_fd());
        let pid = match sys::spawn_worker(&mut exec) {
            Ok(pid) => pid,
            Err(e) => {
                let why = format!("fork: {}", errno_reason(e));
                log::error!("worker={slot} event=spawn-failed error=\"{why}\"");
                self.schedule_respawn(slot, why, now);
                return;
            }
        };
        log::info!("worker={slot} pid={pid} event=spawn");
        let mut worker = Worker::new(slot, pid, now, self.config.ready_timeout);
        if let WorkerState::Booting { deadline } = worker.state {
            self.timers.add(deadline, Timer::ReadyTimeout(pid));
        }
        if let ReadyMode::Delay(delay) = self.config.ready {
            let at = now + delay;
            worker.ready_at = Some(at);
            self.timers.add(at, Timer::ReadyDelay(pid));
        }
        self.slots[slot].active = Some(pid);
        self.slots[slot].retry_at = None;
        self.workers.insert(pid, worker);
    }

    /// Sends the stop signal (or SIGINT when quick) and arms the kill deadline.
    /// A worker already stopping is only hurried, never given more time.
    fn stop_worker(&mut self, pid: i32, quick: bool, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        let (signal, grace) = if quick {
            (NixSignal::SIGINT, QUICK_STOP_GRACE)
        } else {
            (self.config.stop_signal, self.config.graceful_timeout)
        };
        let mut kill_at = now + grace;
        match worker.state {
            WorkerState::Stopping { .. } if !quick => return,
            WorkerState::Stopping { kill_at: earlier } => kill_at = kill_at.min(earlier),
            WorkerState::Ready { .. } => self.ready_count -= 1,
            WorkerState::Booting { .. } => {}
        }
        let _ = kill(Pid::from_raw(pid), signal);
        log::info!(
            "worker={} pid={pid} event=stop signal={} grace={}",
            worker.slot,
            signal.as_str().trim_start_matches("SIG"),
            Human(grace)
        );
        worker.state = WorkerState::Stopping { kill_at };
        self.timers.add(kill_at, Timer::Kill(pid));
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            if slot.active == Some(pid) {
                slot.active = None;
            }
        }
    }

    fn stop_all_workers(&mut self, quick: bool) {
        let now = Instant::now();
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.stop_worker(pid, quick, now);
        }
    }

    /// Drains failure records written by children whose setup or exec failed.
    fn read_exec_errors(&mut self) {
        let mut buf = [0u8; ERROR_RECORD_LEN];
        while let Ok(ERROR_RECORD_LEN) = nix::unistd::read(&self.exec_errors, &mut buf) {
            let (pid, stage, errno) = sys::decode_error_record(&buf);
            let Some(worker) = self.workers.get(&pid) else {
                continue;
            };
            let what = match stage {
                Some(ChildStage::Chdir) => format!(
                    "chdir {}",
                    self.config
                        .working_directory
                        .as_deref()
                        .unwrap_or_else(|| std::path::Path::new("?"))
                        .display()
                ),
                Some(ChildStage::Exec) => {
                    format!("exec {}", self.template.program().to_string_lossy())
                }
                _ => "worker setup".to_string(),
            };
            let why = format!("{what}: {}", errno.desc());
            log::error!("worker={} {why} pid={pid} event=exec-failed", worker.slot);
            self.exec_failures.insert(pid, why);
        }
    }

    /// Handles notify datagrams; only our workers' are believed.
    fn read_notifications(&mut self, now: Instant) {
        while let Some(received) = self.notify.receive() {
            let datagram = match received {
                Ok(d) => d,
                Err(why) => {
                    log::warn!("event=notify-ignored reason=\"{why}\"");
                    continue;
                }
            };
            let pid = datagram.pid;
            let Some(worker) = self.workers.get_mut(&pid) else {
                log::warn!("event=notify-ignored sender={pid} reason=\"not a worker\"");
                continue;
            };
            let msg = datagram.message;
            if let Some(status) = &msg.status {
                log::debug!(
                    "worker={} pid={pid} event=status status=\"{status}\"",
                    worker.slot
                );
            }
            if msg.ready && self.config.ready == ReadyMode::Notify {
                self.on_ready(pid, now);
            }
            if msg.watchdog {
                self.on_watchdog_ping(pid, now);
            }
        }
    }

    fn on_ready(&mut self, pid: i32, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        if !matches!(worker.state, WorkerState::Booting { .. }) {
            return;
        }
        let watchdog = self.config.timeout.map(|t| now + t);
        worker.state = WorkerState::Ready {
            since: now,
            watchdog,
        };
        worker.was_ready = Some(now);
        let slot = worker.slot;
        let boot = now.duration_since(worker.started);
        if let Some(at) = watchdog {
            self.timers.add(at, Timer::Watchdog(pid));
        }
        self.ready_count += 1;
        self.serving = true;
        self.startup_failures = 0;
        log::info!(
            "worker={slot} pid={pid} event=ready boot_ms={}",
            boot.as_millis()
        );
        self.log_if_all_ready();
    }

    fn on_watchdog_ping(&mut self, pid: i32, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        if let (
            WorkerState::Ready {
                watchdog: Some(deadline),
                ..
            },
            Some(timeout),
        ) = (&mut worker.state, self.config.timeout)
        {
            // The armed timer re-arms itself at the new deadline when it fires.
            *deadline = now + timeout;
        }
    }

    fn log_if_all_ready(&mut self) {
        if !self.all_ready_logged && self.phase == Phase::Running && self.ready_count == self.target
        {
            self.all_ready_logged = true;
            log::info!(
                "event=all-ready workers={} generation={}",
                self.target,
                self.generation
            );
        }
    }

    /// Reaps every exited child and decides what each exit means.
    fn reap_workers(&mut self, now: Instant) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_worker_exit(pid.as_raw(), ExitStatus::Code(code), now)
                }
                Ok(WaitStatus::Signaled(pid, signal, core)) => {
                    self.on_worker_exit(pid.as_raw(), ExitStatus::Signal(signal, core), now)
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("event=waitpid-failed error=\"{}\"", errno_reason(e));
                    return;
                }
            }
        }
    }

    fn on_worker_exit(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let exec_failure = self.exec_failures.remove(&pid);
        let Some(worker) = self.workers.remove(&pid) else {
            return;
        };
        let slot = worker.slot;
        if worker.is_stopping() {
            log::info!(
                "worker={slot} pid={pid} event=exit {} stopped=yes",
                status.fields()
            );
            self.log_if_all_ready();
            return;
        }
        if matches!(worker.state, WorkerState::Ready { .. }) {
            self.ready_count -= 1;
        }
        if let Some(s) = self.slots.get_mut(slot) {
            if s.active == Some(pid) {
                s.active = None;
            }
        }
        let why = match (worker.killed, exec_failure) {
            (_, Some(exec)) => exec,
            (Some(KillReason::ReadyTimeout), _) => {
                format!("not ready within {}", Human(self.config.ready_timeout))
            }
            (Some(KillReason::Watchdog), _) => "watchdog timeout".to_string(),
            (None, None) if worker.was_ready.is_none() => format!("{status} before ready"),
            (None, None) => status.to_string(),
        };
        log::warn!(
            "worker={slot} pid={pid} event=exit {} reason=\"{why}\"",
            status.fields()
        );
        if self.phase != Phase::Running {
            return;
        }
        if !self.serving && worker.was_ready.is_none() {
            self.startup_failures += 1;
            if self.startup_failures >= plan::STARTUP_ATTEMPTS {
                let reason = format!("worker={slot} {why}");
                log::error!(
                    "event=startup-failed attempts={} reason=\"{reason}\"",
                    self.startup_failures
                );
                self.failure = Some(reason);
                self.phase = Phase::Stopping { quick: true };
                self.stop_all_workers(true);
                return;
            }
        }
        let ready_for = worker.was_ready.map(|at| now.duration_since(at));
        if let Some(s) = self.slots.get_mut(slot) {
            s.failures = plan::failures_after_exit(s.failures, ready_for);
            s.restarts += 1;
        }
        self.schedule_respawn(slot, why, now);
    }

    /// Marks a slot to be filled after its backoff.
    fn schedule_respawn(&mut self, slot: usize, why: String, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.last_exit = Some(why);
        let delay = plan::backoff(s.failures);
        if slot < self.target {
            log::info!(
                "worker={slot} event=respawn delay={} failures={}",
                Human(delay),
                s.failures
            );
        }
        if delay.is_zero() {
            s.retry_at = None;
        } else {
            let at = now + delay;
            s.retry_at = Some(at);
            self.timers.add(at, Timer::Respawn(slot));
        }
        self.dirty = true;
    }

    /// Fires every due timer that still means something.
    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::ReadyDelay(pid) => {
                    let due = self
                        .workers
                        .get(&pid)
                        .is_some_and(|w| w.ready_at == Some(at));
                    if due {
                        self.on_ready(pid, now);
                    }
                }
                Timer::ReadyTimeout(pid) => {
                    let Some(worker) = self.workers.get_mut(&pid) else {
                        continue;
                    };
                    if worker.state == (WorkerState::Booting { deadline: at }) {
                        log::warn!(
                            "worker={} pid={pid} event=ready-timeout after={}",
                            worker.slot,
                            Human(self.config.ready_timeout)
                        );
                        worker.killed = Some(KillReason::ReadyTimeout);
                        kill_group(pid);
                    }
                }
                Timer::Watchdog(pid) => {
                    let Some(worker) = self.workers.get_mut(&pid) else {
                        continue;
                    };
                    let WorkerState::Ready {
                        watchdog: Some(deadline),
                        ..
                    } = worker.state
                    else {
                        continue;
                    };
                    if deadline > at {
                        self.timers.add(deadline, Timer::Watchdog(pid));
                    } else {
                        log::warn!(
                            "worker={} pid={pid} event=watchdog-timeout action=kill",
                            worker.slot
                        );
                        worker.killed = Some(KillReason::Watchdog);
                        kill_group(pid);
                    }
                }
                Timer::Kill(pid) => {
                    let Some(worker) = self.workers.get(&pid) else {
                        continue;
                    };
                    if worker.state == (WorkerState::Stopping { kill_at: at }) {
                        log::warn!(
                            "worker={} pid={pid} event=kill reason=\"did not stop in time\"",
                            worker.slot
                        );
                        kill_group(pid);
                    }
                }
                Timer::Respawn(slot) => {
                    if let Some(s) = self.slots.get_mut(slot) {
                        if s.retry_at == Some(at) {
                            s.retry_at = None;
                            self.dirty = true;
                        }
                    }
                }
            }
        }
    }

    /// Leaves: pid file and socket files removed if still ours.
    fn finish(self) -> Result<()> {
        if let Some(path) = &self.config.pid_file {
            pidfile::remove_if_ours(path, self.pid);
        }
        for listener in &self.listeners {
            listener.unlink_if_ours();
        }
        match self.failure {
            Some(reason) => Err(Error::StartupFailed(reason)),
            None => {
                log::info!("event=exit status=0");
                Ok(())
            }
        }
    }
}

/// SIGKILL to a worker and its process group (anything it forked).
fn kill_group(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = killpg(pid, NixSignal::SIGKILL);
    let _ = kill(pid, NixSignal::SIGKILL);
}

/// How a child ended, as waitpid reports it.
#[derive(Clone, Copy, Debug)]
enum ExitStatus {
    Code(i32),
    Signal(NixSignal, bool),
}

impl ExitStatus {
    /// As log fields: `status=1` or `signal=SIGSEGV core=yes`.
    fn fields(self) -> String {
        match self {
            ExitStatus::Code(code) => format!("status={code}"),
            ExitStatus::Signal(signal, true) => format!("signal={} core=yes", signal.as_str()),
            ExitStatus::Signal(signal, false) => format!("signal={}", signal.as_str()),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal(signal, _) => write!(f, "killed by {}", signal.as_str()),
        }
    }
}
