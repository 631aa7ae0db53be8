//! Starting, stopping and supervising workers: spawn, readiness, watchdog,
//! reaping with backoff, and the deadlines that go with them.

use super::pool::Role;
use super::UpgradeRole;
use super::{Master, Phase, QUICK_STOP_GRACE};
use crate::config::ReadyMode;
use crate::duration::Human;
use crate::error::{errno_reason, Error};
use crate::plan::{self, Action};
use crate::sys::{self, ChildStage, ERROR_RECORD_LEN};
use crate::timers::Timer;
use crate::worker::{KillReason, Worker, WorkerState};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// How a child ended, as waitpid reports it.
#[derive(Clone, Copy, Debug)]
pub enum ExitStatus {
    Code(i32),
    Signal(NixSignal, bool),
}

impl ExitStatus {
    /// As log fields: `status=1` or `signal=SIGSEGV core=yes`.
    pub fn fields(self) -> String {
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

impl Master {
    /// Fills and empties slots to reach the target.
    pub(super) fn scale_workers(&mut self, now: Instant) {
        let mut spawned = Vec::new();
        for action in self.pool.scale() {
            match action {
                Action::Spawn(slot) => spawned.extend(self.spawn_worker(slot, false, now)),
                Action::Stop(slot) => {
                    let s = self.pool.slot(slot).cloned().unwrap_or_default();
                    for pid in [s.active, s.incoming].into_iter().flatten() {
                        self.stop_worker(pid, false, now);
                    }
                }
            }
        }
        self.pool.trim();
        self.restart_ready_clocks(&spawned, now);
        self.log_if_all_ready();
    }

    /// The ready timeout counts from when the master can hear `READY=1`:
    /// while it forks a thousand workers in one pass, the first ones may be
    /// ready (their datagrams queued, or their senders blocked on a full
    /// queue) long before the master reads a single notification.
    pub(super) fn restart_ready_clocks(&mut self, pids: &[i32], pass_start: Instant) {
        let now = Instant::now();
        if now.duration_since(pass_start) < std::time::Duration::from_millis(10) {
            return;
        }
        let deadline = now + self.config.ready_timeout;
        for &pid in pids {
            if self.pool.restart_ready_clock(pid, deadline) {
                self.timers.add(deadline, Timer::ReadyTimeout(pid));
            }
        }
    }

    /// Starts a worker in `slot`: as its active worker, or as the incoming
    /// replacement of a rolling restart.
    pub(super) fn spawn_worker(
        &mut self,
        slot: usize,
        incoming: bool,
        now: Instant,
    ) -> Option<i32> {
        if self.config.preload {
            // Forked by the preloader; supervised once verified.
            self.request_spawn(slot, incoming, now);
            return None;
        }
        let spawned = self
            .logs
            .worker_pipes()
            .map_err(|e| ("pipe", e))
            .and_then(|pipes| {
                let mut exec = self.template.plan(
                    slot,
                    self.pool.target(),
                    self.exec_errors_write.as_raw_fd(),
                    pipes.stdio(),
                );
                let pid = sys::spawn(&mut exec).map_err(|e| ("fork", e))?;
                // The write ends close here: the worker holds its own copies.
                self.logs.attach(pid, pipes);
                Ok(pid)
            });
        let pid = match spawned {
            Ok(pid) => pid,
            Err((call, e)) => {
                let hint = match e {
                    Errno::EAGAIN => " (a process limit: RLIMIT_NPROC, pid_max or cgroup pids.max)",
                    Errno::EMFILE | Errno::ENFILE => {
                        " (each worker holds 1 or 2 of the master's fds)"
                    }
                    _ => "",
                };
                let why = format!("{call}: {}{hint}", errno_reason(e));
                self.on_spawn_failed(slot, incoming, why, now);
                return None;
            }
        };
        self.supervise_worker(slot, pid, incoming, self.generation, now);
        Some(pid)
    }

    /// A worker could not be started: a replacement fails the rollout,
    /// another is retried after its slot's backoff.
    pub(super) fn on_spawn_failed(
        &mut self,
        slot: usize,
        incoming: bool,
        why: String,
        now: Instant,
    ) {
        log::error!(
            "worker={slot} event=spawn-failed error=\"{why}\"",
            why = crate::logging::esc(&why)
        );
        if incoming {
            self.fail_rollout(format!("worker={slot} {why}"), now);
        } else {
            self.pool.count_spawn_failure(slot);
            self.schedule_respawn(slot, why, now);
        }
    }

    /// Takes a started worker (forked here, or by a preloader and
    /// verified) into the pool, with its ready deadline.
    pub(super) fn supervise_worker(
        &mut self,
        slot: usize,
        pid: i32,
        incoming: bool,
        generation: u32,
        now: Instant,
    ) {
        log::info!(
            "worker={slot} pid={pid} event=spawn generation={generation}{}",
            if incoming { " role=replacement" } else { "" }
        );
        let worker = Worker::new(slot, pid, now, self.config.ready_timeout, generation);
        if let WorkerState::Booting { deadline } = worker.state {
            self.timers.add(deadline, Timer::ReadyTimeout(pid));
        }
        self.pool.insert(worker, incoming);
        if let ReadyMode::Delay(delay) = self.config.ready {
            let at = now + delay;
            self.pool.set_ready_at(pid, at);
            self.timers.add(at, Timer::ReadyDelay(pid));
        }
    }

    /// Sends the stop signal (or SIGINT when quick) and arms the kill deadline.
    /// A worker already stopping is only hurried, never given more time.
    pub(super) fn stop_worker(&mut self, pid: i32, quick: bool, now: Instant) {
        let (signal, grace) = if quick {
            (NixSignal::SIGINT, QUICK_STOP_GRACE)
        } else {
            (self.config.stop_signal, self.config.graceful_timeout)
        };
        let Some((slot, kill_at)) = self.pool.mark_stopping(pid, now + grace, quick, now) else {
            return;
        };
        signal_group(pid, signal);
        log::info!(
            "worker={slot} pid={pid} event=stop signal={} grace={}",
            signal.as_str().trim_start_matches("SIG"),
            Human(grace)
        );
        self.timers.add(kill_at, Timer::Kill(pid));
    }

    /// Stops every worker, and what workers left behind.
    pub(super) fn stop_all_workers(&mut self, quick: bool, now: Instant) {
        for pid in self.pool.pids() {
            self.stop_worker(pid, quick, now);
        }
        self.stop_all_strays(quick, now);
    }

    /// Drains failure records written by children whose setup or exec failed.
    pub(super) fn read_exec_errors(&mut self) {
        let mut buf = [0u8; ERROR_RECORD_LEN];
        while let Ok(ERROR_RECORD_LEN) = nix::unistd::read(&self.exec_errors, &mut buf) {
            let (pid, stage, errno) = sys::decode_error_record(&buf);
            let slot = self.pool.get(pid).map(|w| w.slot);
            let is_upgrade = self.role.new_master() == Some(pid);
            let is_preloader = self.preload.owns(pid);
            if slot.is_none() && !is_upgrade && !is_preloader {
                continue;
            }
            let what = match stage {
                Some(ChildStage::Chdir) if is_upgrade => {
                    format!("chdir {}", self.launch.start_dir.display())
                }
                Some(ChildStage::Chdir) => format!(
                    "chdir {}",
                    self.config
                        .working_directory
                        .as_deref()
                        .unwrap_or_else(|| std::path::Path::new("?"))
                        .display()
                ),
                Some(ChildStage::Exec) if is_upgrade => {
                    format!("exec {}", self.launch.program().display())
                }
                Some(ChildStage::Exec) => {
                    format!("exec {}", self.template.program().to_string_lossy())
                }
                Some(ChildStage::Credentials) => match &self.config.user {
                    Some(user) => format!("switch to user {}", user.name),
                    None => "switch group".to_string(),
                },
                _ => "child setup".to_string(),
            };
            let why = format!("{what}: {}", errno.desc());
            match slot {
                Some(slot) => log::error!(
                    "worker={slot} {why} pid={pid} event=exec-failed",
                    why = crate::logging::esc(&why)
                ),
                None if is_preloader => log::error!(
                    "event=exec-failed role=preloader pid={pid} {why}",
                    why = crate::logging::esc(&why)
                ),
                None => log::error!(
                    "event=exec-failed role=new-master pid={pid} {why}",
                    why = crate::logging::esc(&why)
                ),
            }
            self.exec_failures.insert(pid, why);
        }
    }

    /// Handles notify datagrams; only our workers' are believed.
    pub(super) fn read_notifications(&mut self, now: Instant) {
        while let Some(received) = self.notify.receive() {
            let datagram = match received {
                Ok(d) => d,
                Err(why) => {
                    if let Some(suppressed) = self.notify_log_budget.take(now) {
                        log::warn!(
                            "event=notify-ignored reason=\"{why}\" suppressed_before={suppressed}",
                            why = crate::logging::esc(&why)
                        );
                    }
                    continue;
                }
            };
            let pid = datagram.pid;
            if self.role.new_master() == Some(pid) {
                self.on_new_master_message(datagram.message);
                continue;
            }
            if self.pool.get(pid).is_none() && self.preload.spawning() {
                // Perhaps a forked worker whose `spawned` came in since.
                self.serve_preload(now);
                if self.pool.get(pid).is_none()
                    && self.hold_early_ready(pid, &datagram.message, now)
                {
                    continue;
                }
            }
            let Some(worker) = self.pool.get(pid) else {
                if let Some(suppressed) = self.notify_log_budget.take(now) {
                    log::warn!(
                        "event=notify-ignored sender={pid} reason=\"not a worker\" suppressed_before={suppressed}"
                    );
                }
                continue;
            };
            let msg = datagram.message;
            if let Some(status) = &msg.status {
                log::debug!(
                    "worker={} pid={pid} event=status status=\"{}\"",
                    worker.slot,
                    crate::logging::esc(status)
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

    pub(super) fn on_ready(&mut self, pid: i32, now: Instant) {
        let watchdog = self.config.timeout.map(|t| now + t);
        let Some(readied) = self.pool.mark_ready(pid, now, watchdog) else {
            return;
        };
        if let Some(at) = watchdog {
            self.timers.add(at, Timer::Watchdog(pid));
        }
        log::info!(
            "worker={} pid={pid} event=ready boot_ms={}",
            readied.slot,
            readied.boot.as_millis()
        );
        self.note_ready_for_recycling(pid, readied.replaced, now);
        if readied.took_over {
            if let Some(old) = readied.replaced {
                self.stop_worker(old, false, now);
            }
            self.dirty = true;
        }
        let after_upgrade = matches!(self.role, UpgradeRole::New { .. });
        if !self.serving && (!after_upgrade || self.pool.ready() >= self.pool.target()) {
            self.serving = true;
            self.startup_failures = 0;
        }
        self.on_new_worker_ready();
        self.log_if_all_ready();
    }

    fn on_watchdog_ping(&mut self, pid: i32, now: Instant) {
        if let Some(timeout) = self.config.timeout {
            // The armed timer re-arms itself at the new deadline when it fires.
            self.pool.postpone_watchdog(pid, now + timeout);
        }
    }

    pub(super) fn log_if_all_ready(&mut self) {
        if !self.all_ready_logged
            && self.phase == Phase::Running
            && self.rollout.is_none()
            && self.pool.ready() == self.pool.target()
        {
            self.all_ready_logged = true;
            log::info!(
                "event=all-ready workers={} generation={}",
                self.pool.target(),
                self.generation
            );
            self.on_all_ready();
        }
    }

    /// Reaps every exited child and decides what each exit means.
    pub(super) fn reap_children(&mut self, now: Instant) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, core)) => {
                    (pid.as_raw(), ExitStatus::Signal(signal, core))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("event=waitpid-failed error=\"{}\"", errno_reason(e));
                    return;
                }
            };
            // The child wrote its failure record before exiting: read it now,
            // in case it exited after this pass's earlier read.
            self.read_exec_errors();
            let exec_failure = self.exec_failures.remove(&pid);
            // Reaped, its pid may be reused: out of the strays at once,
            // whatever else it was taken for.
            let stray = self.strays.remove(pid);
            if self.role.new_master() == Some(pid) {
                self.on_new_master_exit(status, exec_failure, now);
            } else if self.role.preflight() == Some(pid) {
                self.on_preflight_exit(status);
            } else if self.pool.get(pid).is_some() {
                self.on_worker_exit(pid, status, exec_failure, now);
            } else if self.preload.owns(pid) {
                self.on_preloader_exit(pid, status, exec_failure, now);
            } else {
                // Never a worker: an orphan handed to us (we are a subreaper).
                self.on_stray_exit(pid, stray, status.fields());
            }
        }
    }

    fn on_worker_exit(
        &mut self,
        pid: i32,
        status: ExitStatus,
        exec_failure: Option<String>,
        now: Instant,
    ) {
        // Its pipes drained to the end first: its last stderr lines explain
        // a failed boot.
        let stderr = self.logs.release(pid);
        let Some((worker, role)) = self.pool.remove(pid) else {
            return;
        };
        let slot = worker.slot;
        let reason = super::exit_reason(&worker, status, exec_failure.is_some());
        let reason = self.note_recycling_exit(pid, reason, now);
        self.counters.worker_exits.count(reason);
        // What is left of its process group (and any child it had) is ours
        // to stop now.
        let stopping = match worker.state {
            WorkerState::Stopping { kill_at } => Some(kill_at),
            _ => None,
        };
        self.strays.note_worker_group(
            pid,
            format!("worker={slot} pid={pid} generation={}", worker.generation),
            stopping,
        );
        if worker.is_stopping() {
            log::info!(
                "worker={slot} pid={pid} event=exit {} stopped=yes",
                status.fields()
            );
            // A rollout may be waiting for it to be gone.
            self.dirty = true;
            self.log_if_all_ready();
            return;
        }
        let exited_before_ready =
            worker.killed.is_none() && exec_failure.is_none() && worker.was_ready.is_none();
        let why = match (worker.killed, exec_failure) {
            (_, Some(exec)) => exec,
            (Some(KillReason::ReadyTimeout), _) => {
                format!("not ready within {}", Human(self.config.ready_timeout))
            }
            (Some(KillReason::Watchdog), _) => "watchdog timeout".to_string(),
            (None, None) if worker.was_ready.is_none() => format!("{status} before ready"),
            (None, None) => status.to_string(),
        };
        let why = match stderr {
            Some(lines) if exited_before_ready => format!("{why}; last stderr: \"{lines}\""),
            _ => why,
        };
        log::warn!(
            "worker={slot} pid={pid} event=exit {} reason=\"{}\"",
            status.fields(),
            crate::logging::esc(&why)
        );
        if role == Role::Incoming {
            self.fail_rollout(format!("worker={slot} {why}"), now);
            return;
        }
        if self.phase != Phase::Running {
            return;
        }
        if !self.serving && worker.was_ready.is_none() {
            self.startup_failures += 1;
            if self.startup_failures >= plan::STARTUP_ATTEMPTS {
                self.give_up(format!("worker={slot} {why}"), now);
                return;
            }
        }
        let ready_for = worker.was_ready.map(|at| now.duration_since(at));
        self.pool.count_death(slot, ready_for);
        self.schedule_respawn(slot, why, now);
    }

    /// Workers cannot boot: stop everything and exit non-zero with `reason`.
    pub(super) fn give_up(&mut self, reason: String, now: Instant) {
        log::error!(
            "event=startup-failed attempts={} reason=\"{}\"",
            self.startup_failures,
            crate::logging::esc(&reason)
        );
        self.failure = Some(match self.role.old_master() {
            Some(_) => {
                // Tell the old master why, for `forkmaster upgrade --wait`.
                let report = crate::protocol::upgrade_failed_message(&reason);
                self.tell_old_master(&report);
                self.upgrades.end(Some(reason.clone()));
                Error::UpgradeFailed(reason)
            }
            None => Error::StartupFailed(reason),
        });
        // Gracefully: after a failed upgrade, ready workers may be serving.
        self.phase = Phase::Stopping { quick: false };
        self.stop_all_workers(false, now);
    }

    /// Marks a slot to be filled after its backoff.
    fn schedule_respawn(&mut self, slot: usize, why: String, now: Instant) {
        let Some((delay, failures, retry_at)) = self.pool.schedule_respawn(slot, why, now) else {
            return;
        };
        self.counters.respawns += 1;
        if slot < self.pool.target() {
            log::info!(
                "worker={slot} event=respawn delay={} failures={failures}",
                Human(delay),
            );
        }
        if let Some(at) = retry_at {
            self.timers.add(at, Timer::Respawn(slot));
        }
        self.dirty = true;
    }

    /// When a queued timer should really fire, given the current state;
    /// `None` if it no longer applies (the worker moved on or is gone).
    fn timer_due(&self, at: Instant, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::ReadyDelay(pid) => {
                let w = self.pool.get(pid)?;
                (matches!(w.state, WorkerState::Booting { .. }) && w.ready_at == Some(at))
                    .then_some(at)
            }
            Timer::ReadyTimeout(pid) => match self.pool.get(pid)?.state {
                WorkerState::Booting { deadline } if deadline == at => Some(at),
                _ => None,
            },
            Timer::Watchdog(pid) => match self.pool.get(pid)?.state {
                WorkerState::Ready {
                    watchdog: Some(deadline),
                    ..
                } => Some(deadline),
                _ => None,
            },
            Timer::Kill(pid) => match self.pool.get(pid).map(|w| w.state) {
                Some(WorkerState::Stopping { kill_at }) if kill_at == at => Some(at),
                Some(_) => None,
                // A stray's deadline (a pid is never both).
                None => self.stray_due(pid, at),
            },
            Timer::Respawn(slot) => (self.pool.retry_at(slot)? == at).then_some(at),
            Timer::SystemdWatchdog => Some(at),
            Timer::ShutdownDelay => (self.phase == (Phase::Draining { until: at })).then_some(at),
            Timer::UpgradePreflight => self.role.preflight_deadline().filter(|d| *d == at),
            Timer::WorkerAge(_) | Timer::MemoryCheck => self.recycle_timer_due(at, timer),
        }
    }

    /// Drops stale timers and re-queues postponed ones (watchdog pings), so
    /// the earliest queued deadline is a real one.
    pub(super) fn settle_timers(&mut self) {
        let mut timers = std::mem::take(&mut self.timers);
        timers.settle(|at, timer| self.timer_due(at, timer));
        self.timers = timers;
    }

    /// Fires every due timer.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        loop {
            self.settle_timers();
            let Some((_, timer)) = self.timers.pop_due(now) else {
                return;
            };
            match timer {
                Timer::ReadyDelay(pid) => self.on_ready(pid, now),
                Timer::ReadyTimeout(pid) => {
                    let Some(slot) = self.pool.set_killed(pid, KillReason::ReadyTimeout) else {
                        continue;
                    };
                    log::warn!(
                        "worker={slot} pid={pid} event=ready-timeout after={}",
                        Human(self.config.ready_timeout)
                    );
                    kill_group(pid);
                }
                Timer::Watchdog(pid) => {
                    let Some(slot) = self.pool.set_killed(pid, KillReason::Watchdog) else {
                        continue;
                    };
                    log::warn!("worker={slot} pid={pid} event=watchdog-timeout action=kill");
                    kill_group(pid);
                }
                Timer::Kill(pid) => {
                    if let Some(worker) = self.pool.get(pid) {
                        log::warn!(
                            "worker={} pid={pid} event=kill reason=\"did not stop in time\"",
                            worker.slot
                        );
                        kill_group(pid);
                    } else {
                        self.kill_stray(pid, now);
                    }
                }
                Timer::Respawn(slot) => {
                    self.pool.end_backoff(slot, now);
                    self.dirty = true;
                }
                Timer::ShutdownDelay => self.end_shutdown_delay(now),
                Timer::UpgradePreflight => self.on_preflight_timeout(),
                Timer::WorkerAge(_) | Timer::MemoryCheck => self.fire_recycle_timer(timer, now),
                Timer::SystemdWatchdog => {
                    if let Some(systemd) = &self.systemd {
                        systemd.send("WATCHDOG=1\n");
                        if let Some(interval) = systemd.watchdog_interval {
                            self.timers.add(now + interval, Timer::SystemdWatchdog);
                        }
                    }
                }
            }
        }
    }
}

/// `signal` to a worker's process group (pgid = its pid: what it forked and
/// did not move elsewhere), and to the worker itself if it left that group.
/// The worker is our child not yet reaped, so its number, and the group of
/// that number, are still the ones it had.
fn signal_group(pid: i32, signal: NixSignal) {
    let target = Pid::from_raw(pid);
    let in_group = killpg(target, signal).is_ok()
        && nix::unistd::getpgid(Some(target)).is_ok_and(|g| g == target);
    if !in_group {
        let _ = kill(target, signal);
    }
}

/// SIGKILL to a worker and its process group (anything it forked).
fn kill_group(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = killpg(pid, NixSignal::SIGKILL);
    let _ = kill(pid, NixSignal::SIGKILL);
}
