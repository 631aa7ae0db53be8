//! The master: one single-threaded event loop that owns the configuration,
//! the listeners, the workers and the pid file.
//!
//! Each pass of `run` handles queued signals (one method per signal), reads
//! exec failures, notify datagrams and status requests, reaps exited
//! children, fires due timers and tops up the workers; then it sleeps in
//! poll(2) until the next event or deadline. With nothing to do it never wakes.
//!
//! `pool` owns the workers and their slots; `workers` starts, stops and
//! supervises them; `strays` stops what they leave behind; `reload` is the
//! HUP rolling restart; `upgrade` is both sides of the USR2 re-exec, with
//! this master's part in it as an `UpgradeRole`; `usage` reads the memory
//! and CPU figures `status` shows; `preload` runs each generation's
//! preloader with `--preload`; `recycle` replaces workers over their
//! memory or age limit; `counters` are the totals `metrics` shows.

pub(crate) mod counters;
mod inplace;
mod pool;
mod preload;
mod recycle;
mod reload;
mod strays;
mod upgrade;
mod usage;
mod workers;

use crate::config::{Config, ConfigError};
use crate::error::{errno_reason, Error, Result};
use crate::ipc::control::ControlSocket;
use crate::ipc::health::{self, Answers, HealthServer, Readiness};
use crate::ipc::notify::NotifySocket;
use crate::ipc::output::LogFiles;
use crate::ipc::rundir::RunDir;
use crate::ipc::signals::{Signal, SignalPipe};
use crate::ipc::systemd::{self, Notifier};
use crate::launch::Launch;
use crate::pidfile;
use crate::sockets::Listener;
use crate::spawn::WorkerTemplate;
use crate::status::{
    self, Counters, ExitReason, ListenerStatus, Operation, OperationState, Outcomes, SlotState,
    SlotStatus, Status, WorkerRollout, WorkerStatus,
};
use crate::sys;
use crate::timers::{Timer, Timers};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::kill;
use nix::unistd::{pipe2, Pid};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

pub use inplace::{Resume, UpgradeMode};
use pool::Pool;
pub use reload::Rollout;
use strays::Strays;
pub use upgrade::UpgradeRole;

/// Binds the notify socket in `rundir`, given to the workers' user when
/// they run as another one.
fn bind_notify(
    rundir: &RunDir,
    pid: i32,
    config: &Config,
) -> std::result::Result<NotifySocket, String> {
    let notify = NotifySocket::bind(&rundir.notify_path(pid))?;
    let (uid, gid) = crate::start::worker_owner(config);
    if uid.is_some_and(|uid| uid != nix::unistd::geteuid().as_raw()) {
        rundir.share_with_workers(pid, uid, gid);
    }
    Ok(notify)
}

/// How often a new master tries to bind `health_listen` while its old
/// master holds it.
const HEALTH_RETRY: Duration = Duration::from_secs(1);

/// Why a worker exited, for `metrics`: asked for, or what killed it.
fn exit_reason(
    worker: &crate::worker::Worker,
    status: workers::ExitStatus,
    exec_failed: bool,
) -> ExitReason {
    use crate::worker::KillReason;
    match (worker.is_stopping(), exec_failed, worker.killed, status) {
        (true, _, _, _) => ExitReason::Stopped,
        (_, true, _, _) => ExitReason::ExecFailed,
        (_, _, Some(KillReason::ReadyTimeout), _) => ExitReason::ReadyTimeout,
        (_, _, Some(KillReason::Watchdog), _) => ExitReason::Watchdog,
        (_, _, None, workers::ExitStatus::Signal(..)) => ExitReason::Crash,
        (_, _, None, workers::ExitStatus::Code(_)) => ExitReason::Exit,
    }
}

/// How long a quick stop waits for workers after SIGINT before SIGKILL.
pub const QUICK_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// A graceful stop waits out `shutdown_delay`: not ready, still serving.
    Draining {
        until: Instant,
    },
    Stopping {
        quick: bool,
    },
}

/// What TERM means (`term`): Unicorn's quick stop, or a graceful one for
/// orchestrators that stop with TERM (Kubernetes, `docker stop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    Quick,
    Graceful,
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Term::Quick => "quick",
            Term::Graceful => "graceful",
        })
    }
}

/// The outcome of the last upgrade or reload, for `status`.
#[derive(Clone, Debug, Default)]
struct Record {
    attempts: u32,
    state: OperationState,
    reason: Option<String>,
    started: Option<Instant>,
    took: Option<Duration>,
    /// Ended ones, by outcome, for `metrics`.
    outcomes: Outcomes,
}

impl Record {
    /// A new master's record of the upgrade that started it: in progress
    /// until its workers are all ready. Not an attempt of its own (a client
    /// counts attempts to see that its USR2 was taken).
    fn started_by_upgrade(now: Instant) -> Record {
        Record {
            state: OperationState::InProgress,
            started: Some(now),
            ..Record::default()
        }
    }

    fn begin(&mut self, now: Instant) {
        self.attempts += 1;
        self.state = OperationState::InProgress;
        self.reason = None;
        self.started = Some(now);
        self.took = None;
    }

    fn end(&mut self, failure: Option<String>) {
        // Counted once, whichever path ends it first.
        if self.state == OperationState::InProgress {
            match failure {
                Some(_) => self.outcomes.failed += 1,
                None => self.outcomes.done += 1,
            }
        }
        self.state = if failure.is_some() {
            OperationState::Failed
        } else {
            OperationState::Done
        };
        self.reason = failure;
        self.took = self.started.map(|s| s.elapsed());
    }

    fn operation(&self, new_master: Option<i32>) -> Operation {
        Operation {
            attempts: self.attempts,
            state: self.state,
            reason: self.reason.clone(),
            new_master,
            secs: self.took.map(|d| d.as_secs_f64()),
        }
    }
}

pub struct Master {
    launch: Launch,
    config: Config,
    listeners: Vec<Listener>,
    signals: SignalPipe,
    notify: NotifySocket,
    control: ControlSocket,
    /// `health_listen`: the probes' HTTP endpoint.
    health: Option<HealthServer>,
    /// When to try binding `health_listen` again: a new master of an
    /// upgrade finds it held by the old master until that one exits.
    health_retry: Option<Instant>,
    /// A new master of a fork upgrade: the health listener the old master
    /// handed over, served once we take over (until then the old master
    /// answers on it, from its own state).
    health_held: Option<HealthServer>,
    /// An old master: the health listener went to the new master we
    /// started, which serves it once we stop.
    health_handed: bool,
    /// Where `notify` and `control` are bound.
    rundir: RunDir,
    /// Children write a record here when their setup or exec fails.
    exec_errors: OwnedFd,
    exec_errors_write: OwnedFd,
    /// Exec failures read but not yet matched with the child's exit.
    exec_failures: HashMap<i32, String>,
    template: WorkerTemplate,
    /// The workers, their slots and how many are wanted.
    pool: Pool,
    /// Processes workers left behind, being stopped.
    strays: Strays,
    timers: Timers,
    phase: Phase,
    /// Set when a worker slot may need filling or emptying.
    dirty: bool,
    generation: u32,
    /// The highest generation ever used here: never reused, even after a
    /// failed rollout went back to an older one.
    generations_issued: u32,
    /// Boot failures no longer stop us: some worker was ready (at first
    /// start), or all were (after an upgrade).
    serving: bool,
    all_ready_logged: bool,
    startup_failures: u32,
    /// Why the master is stopping on its own (startup or upgrade failure).
    failure: Option<Error>,
    pid: i32,
    started: Instant,
    /// Old or new master of an upgrade, or neither.
    role: UpgradeRole,
    upgrades: Record,
    /// A HUP rolling restart in progress.
    rollout: Option<Rollout>,
    /// A HUP came during an in-place upgrade's rollover: it runs when the
    /// rollover ends (it would otherwise abandon a good upgrade).
    hup_after_upgrade: bool,
    reloads: Record,
    /// systemd's notify socket, when it started us with one.
    systemd: Option<Notifier>,
    /// `stdout_path`/`stderr_path` and the pipes workers write into.
    logs: LogFiles,
    /// `--daemonize`: tells the launching process once all workers are ready.
    ready_report: Option<OwnedFd>,
    /// Datagrams from non-workers: logged in bursts, summarised in floods.
    notify_log_budget: crate::ratelimit::LogBudget,
    /// Each process's memory and CPU as last read for a status request.
    usage_readings: usage::Readings,
    /// Worker exits by reason, respawns and recycles, for `metrics`; the
    /// upgrades and reloads are counted by their `Record`.
    counters: Counters,
    /// `--preload`: the preloaders and the spawns asked of them.
    preload: preload::Preloaders,
    /// Workers over their memory or age limit, being replaced.
    recycler: recycle::Recycler,
}

impl Master {
    /// Takes over bound listeners; installs signal handling, the notify and
    /// control sockets (in `rundir`, the notify socket given to the workers'
    /// user when they run as another one). `resume`: what the old image of
    /// an in-place upgrade handed over (the notify socket, the exec-error
    /// pipe, the workers).
    // Each argument is one thing `start` opened for this master.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        launch: Launch,
        config: Config,
        listeners: Vec<Listener>,
        logs: LogFiles,
        ready_report: Option<OwnedFd>,
        rundir: RunDir,
        resume: &mut Option<Resume>,
        handed_health: Option<OwnedFd>,
    ) -> Result<Master> {
        let io_err = |call| {
            move |e: std::io::Error| Error::Sys {
                call,
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            }
        };
        let pid = std::process::id() as i32;
        let invalid = |why| Error::Config(ConfigError::Invalid(why));
        let in_place = resume.is_some();
        // Our own socket files live on across an in-place upgrade.
        if !in_place {
            rundir.prepare(pid).map_err(invalid)?;
        }
        // In place, every step that may fail comes before the handover is
        // taken: a failure leaves it to `start` to try the old
        // configuration with (and the signals blocked, still pending).
        let control = ControlSocket::bind(&rundir.control_path(pid)).map_err(invalid)?;
        let mut health_retry = None;
        let mut health_held = None;
        let health = match (&config.health_listen, handed_health) {
            (None, _) => None,
            // In place, our own socket from before the exec: served on at
            // once when the address is the same (never closed, so no probe
            // is refused); another address is bound anew, and one that
            // cannot be is a failure of the new configuration.
            (Some(addr), Some(fd)) if in_place => match HealthServer::adopt(fd, addr) {
                Ok(server) => Some(server),
                Err(_) => Some(HealthServer::bind(addr).map_err(invalid)?),
            },
            (Some(addr), handed_health @ Some(_)) => {
                // The old master's socket: never closed, so no probe is
                // refused across the upgrade.
                let adopted = handed_health
                    .ok_or_else(|| "no fd".to_string())
                    .and_then(|fd| HealthServer::adopt(fd, addr));
                match adopted {
                    Ok(server) => health_held = Some(server),
                    Err(why) => {
                        log::warn!(
                            "event=health-unavailable error=\"{}\" action=retry",
                            crate::logging::esc(&why)
                        );
                        health_retry = Some(Instant::now() + HEALTH_RETRY);
                    }
                }
                None
            }
            (Some(addr), None) => match HealthServer::bind(addr) {
                Ok(server) => Some(server),
                // The old master still holds it during a fork upgrade:
                // serve without (retrying) rather than fail the upgrade. In
                // place nobody of ours holds it (the exec closed it): it is
                // the new configuration that cannot start, and the old one
                // starts instead.
                Err(why) if launch.predecessor.is_some() && !in_place => {
                    log::warn!("event=health-unavailable error=\"{why}\" action=retry");
                    health_retry = Some(Instant::now() + HEALTH_RETRY);
                    None
                }
                Err(why) => return Err(invalid(why)),
            },
        };
        let predecessor = launch.predecessor;
        let generation = predecessor.map_or(1, |p| p.generation + 1);
        let notify_path = rundir.notify_path(pid);
        let template = WorkerTemplate::new(
            &config,
            &listeners,
            &launch.env,
            &notify_path.display().to_string(),
            generation,
        )
        .map_err(|e| Error::Config(ConfigError::Invalid(e)))?;
        let notify = match resume.as_ref() {
            Some(_) => None,
            None => Some(bind_notify(&rundir, pid, &config).map_err(invalid)?),
        };
        let exec_pipe = match resume.as_ref() {
            Some(_) => None,
            None => Some(
                pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|source| Error::Sys {
                    call: "pipe",
                    source,
                })?,
            ),
        };
        let signals = SignalPipe::install().map_err(io_err("install signal handlers"))?;
        inplace::unblock_after_exec();
        // From here on nothing fails before the handover is ours.
        let mut resume = resume.take();
        let (handed_notify, handed_errors) = resume
            .as_mut()
            .map(Resume::take_fds)
            .unwrap_or((None, None));
        let notify = match (notify, handed_notify) {
            (Some(notify), _) => notify,
            (None, Some(fd)) => NotifySocket::adopt(fd, &notify_path),
            (None, None) => bind_notify(&rundir, pid, &config).map_err(invalid)?,
        };
        let (exec_errors, exec_errors_write) = match (exec_pipe, handed_errors) {
            (Some(pair), _) | (None, Some(pair)) => pair,
            (None, None) => {
                pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|source| Error::Sys {
                    call: "pipe",
                    source,
                })?
            }
        };
        let systemd = Notifier::from_env(&launch.env, &[pid, predecessor.map_or(pid, |p| p.pid)]);
        let pool = Pool::new(config.workers, Instant::now());
        // Orphans of our workers' descendants come back to us, to be stopped.
        if let Err(e) = sys::become_subreaper() {
            log::warn!("event=subreaper-failed error=\"{}\"", errno_reason(e));
        }
        let role = predecessor.map_or(UpgradeRole::None, UpgradeRole::new_master_of);
        let now = Instant::now();
        // The old master's totals go on (`FORKMASTER_UPGRADE_COUNTERS`).
        let counters = match predecessor {
            Some(_) => Counters::inherited(&launch.env),
            None => Counters::default(),
        };
        let mut upgrades = match predecessor {
            Some(_) => Record::started_by_upgrade(now),
            None => Record::default(),
        };
        upgrades.outcomes = counters.upgrades;
        let reloads = Record {
            outcomes: counters.reloads,
            ..Record::default()
        };
        let mut master = Master {
            launch,
            config,
            listeners,
            signals,
            notify,
            control,
            health,
            health_retry,
            health_held,
            health_handed: false,
            rundir,
            exec_errors,
            exec_errors_write,
            exec_failures: HashMap::new(),
            template,
            pool,
            strays: Strays::default(),
            timers: Timers::default(),
            phase: Phase::Running,
            dirty: true,
            generation,
            generations_issued: generation,
            serving: false,
            all_ready_logged: false,
            startup_failures: 0,
            failure: None,
            pid,
            started: now,
            role,
            upgrades,
            rollout: None,
            hup_after_upgrade: false,
            reloads,
            systemd,
            logs,
            ready_report,
            notify_log_budget: crate::ratelimit::LogBudget::new(20, 5),
            usage_readings: usage::Readings::default(),
            counters,
            recycler: recycle::Recycler::default(),
            preload: preload::Preloaders::default(),
        };
        if let Some(resume) = resume {
            master.resume(resume)?;
        }
        Ok(master)
    }

    /// Runs until stopped. `Err` if the workers could not start at all.
    pub fn run(mut self) -> Result<()> {
        log::info!(
            "event=start workers={} generation={} command=\"{}\"",
            self.pool.target(),
            self.generation,
            crate::logging::esc(crate::config::shell_words(&self.config.command))
        );
        if let Some(old) = self.role.old_master() {
            log::info!(
                "event=upgrade-start role=new old_master={} retire={}",
                old.pid,
                self.config.retire
            );
        }
        if let Some(interval) = self.systemd.as_ref().and_then(|s| s.watchdog_interval) {
            self.timers
                .add(Instant::now() + interval, Timer::SystemdWatchdog);
        }
        loop {
            let now = Instant::now();
            for signal in self.signals.drain() {
                self.on_signal(signal, now);
            }
            self.read_exec_errors();
            // Before notifications: a forked worker's `READY=1` is believed
            // only once it is verified.
            self.serve_preload(now);
            self.read_notifications(now);
            self.reap_children(now);
            self.find_strays(now);
            self.fire_timers(now);
            if self.phase == Phase::Running && self.dirty {
                self.dirty = false;
                self.scale_workers(now);
                self.advance_rollout(now);
            }
            self.advance_recycles(now);
            self.serve_status();
            self.retry_health(now);
            self.serve_health(Instant::now());
            self.logs.drain();
            // Strays too: once `stop --wait` returns, nothing we started is left.
            if matches!(self.phase, Phase::Stopping { .. })
                && self.pool.is_empty()
                && self.strays.is_empty()
                && self.preload.is_empty()
            {
                return self.finish();
            }
            self.sleep();
        }
    }

    /// Blocks in poll(2) until a signal, a datagram, an exec error, a status
    /// request, a worker's output, or the next deadline; then notes which
    /// workers' pipes have something to copy.
    fn sleep(&mut self) {
        self.settle_timers();
        let health_deadline = match &self.health {
            Some(health) => health.next_deadline(),
            None => self.health_retry,
        };
        let deadline = [
            self.timers.next_deadline(),
            health_deadline,
            self.preload.next_deadline(Instant::now()),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                // Round up: waking a little early would only spin.
                let ms = wait.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.exec_errors.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
        ];
        // Read on every pass: only the wakeup matters here.
        fds.extend(
            self.preload
                .poll_fds()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        let own = fds.len();
        let probes = self.health.as_ref().map_or(0, |h| h.poll_fds().count());
        if let Some(health) = &self.health {
            fds.extend(
                health
                    .poll_fds()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
            );
        }
        fds.extend(
            self.logs
                .poll_fds()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => log::error!("event=poll-failed error=\"{}\"", errno_reason(e)),
        }
        let pending = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let mut readable: Vec<bool> = fds[own..]
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| r.intersects(pending)))
            .collect();
        drop(fds);
        let logs = readable.split_off(probes);
        if let Some(health) = &mut self.health {
            health.note_readable(readable);
        }
        self.logs.note_readable(logs);
    }

    fn on_signal(&mut self, signal: Signal, now: Instant) {
        log::debug!("event=signal signal={}", signal.name());
        match signal {
            Signal::Quit => self.on_quit(signal, now),
            Signal::Term | Signal::Int => self.on_term(signal, now),
            Signal::Hup => self.on_hup(now),
            Signal::Usr1 => self.on_usr1(),
            Signal::Usr2 => self.on_usr2(now),
            Signal::Winch => self.on_winch(),
            Signal::Ttin => self.on_ttin(),
            Signal::Ttou => self.on_ttou(),
            Signal::Chld => {} // reaped on every pass
        }
    }

    /// QUIT (and TERM with `term: graceful`): graceful stop, after
    /// `shutdown_delay` not ready but still serving; a second one makes it
    /// quick.
    fn on_quit(&mut self, signal: Signal, now: Instant) {
        match self.phase {
            Phase::Running if self.config.shutdown_delay.is_zero() => {
                self.stop_gracefully(&format!("signal={}", signal.name()), now)
            }
            Phase::Running => self.delay_shutdown(signal, now),
            Phase::Draining { .. } | Phase::Stopping { quick: false } => {
                self.stop_quickly(signal, now)
            }
            Phase::Stopping { quick: true } => {}
        }
    }

    /// TERM: quick stop, or graceful with `term: graceful`. INT: quick stop.
    fn on_term(&mut self, signal: Signal, now: Instant) {
        if signal == Signal::Term && self.config.term == Term::Graceful {
            self.on_quit(signal, now);
        } else {
            self.stop_quickly(signal, now);
        }
    }

    /// Not ready from now on (`/readyz` 503), but the workers keep serving
    /// for `shutdown_delay`, while load balancers stop sending; then the
    /// graceful stop (`Timer::ShutdownDelay`).
    fn delay_shutdown(&mut self, signal: Signal, now: Instant) {
        let delay = self.config.shutdown_delay;
        log::info!(
            "event=shutdown-delay signal={} delay={} workers={}",
            signal.name(),
            crate::duration::Human(delay),
            self.pool.len()
        );
        self.notify_stopping();
        self.abandon_rollout("stopping", now);
        let until = now + delay;
        self.phase = Phase::Draining { until };
        self.timers.add(until, Timer::ShutdownDelay);
    }

    /// `shutdown_delay` is over: the graceful stop begins.
    pub(super) fn end_shutdown_delay(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Draining { .. }) {
            self.stop_gracefully("after=shutdown-delay", now);
        }
    }

    /// Every worker gets its stop signal and `graceful_timeout`.
    fn stop_gracefully(&mut self, cause: &str, now: Instant) {
        log::info!(
            "event=stop mode=graceful {cause} workers={}",
            self.pool.len()
        );
        if self.phase == Phase::Running {
            self.notify_stopping();
        }
        self.phase = Phase::Stopping { quick: false };
        self.abandon_rollout("stopping", now);
        self.stop_all_workers(false, now);
    }

    /// Every worker gets SIGINT and `QUICK_STOP_GRACE`.
    fn stop_quickly(&mut self, signal: Signal, now: Instant) {
        if self.phase == (Phase::Stopping { quick: true }) {
            return;
        }
        log::info!(
            "event=stop mode=quick signal={} workers={}",
            signal.name(),
            self.pool.len()
        );
        if self.phase == Phase::Running {
            self.notify_stopping();
        }
        self.phase = Phase::Stopping { quick: true };
        self.abandon_rollout("stopping", now);
        self.stop_all_workers(true, now);
    }

    /// USR1: reopen our log files; workers get `reopen_signal` only if
    /// they asked for it (most servers die of USR1 or restart on it, and
    /// their output already follows the files through the master).
    fn on_usr1(&mut self) {
        log::info!("event=reopen-logs workers={}", self.pool.len());
        self.logs.reopen();
        self.restore_sockets();
        let Some(signal) = self.config.reopen_signal else {
            return;
        };
        // Not to booting workers: an app that has not yet installed its
        // handler would die of the signal's default action.
        for worker in self.pool.workers().filter(|w| w.is_ready()) {
            let _ = kill(Pid::from_raw(worker.pid), signal);
        }
    }

    /// Binds our socket files again if someone removed them (a cleaned
    /// runtime directory): without them no client finds us, and workers
    /// cannot report. The base directory itself is never made again.
    fn restore_sockets(&mut self) {
        if self.control.file_exists() && self.notify.file_exists() {
            return;
        }
        let restored = self.rundir.reopen().and_then(|rundir| {
            if !self.notify.file_exists() {
                self.notify = bind_notify(&rundir, self.pid, &self.config)?;
            }
            if !self.control.file_exists() {
                self.control = ControlSocket::bind(&rundir.control_path(self.pid))?;
            }
            self.rundir = rundir;
            Ok(())
        });
        match restored {
            Ok(()) => log::info!(
                "event=sockets-restored dir={}",
                self.rundir.path().display()
            ),
            Err(why) => log::error!("event=sockets-lost error=\"{why}\""),
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
        let target = (self.pool.target() + 1).min(crate::config::MAX_WORKERS);
        self.set_target(target, "TTIN");
    }

    fn on_ttou(&mut self) {
        self.set_target(self.pool.target().saturating_sub(1), "TTOU");
    }

    fn set_target(&mut self, target: usize, signal: &str) {
        if self.phase != Phase::Running {
            log::info!("event=signal signal={signal} action=ignored reason=stopping");
            return;
        }
        log::info!(
            "event=scale signal={signal} workers={} previous={}",
            target,
            self.pool.target()
        );
        self.change_target(target);
    }

    /// Wants `target` workers from the next pass of the loop on.
    fn change_target(&mut self, target: usize) {
        self.pool.set_target(target, Instant::now());
        self.all_ready_logged = false;
        self.dirty = true;
    }

    /// Tells systemd (if it listens) something about the master.
    fn notify_systemd(&self, message: &str) {
        if let Some(systemd) = &self.systemd {
            log::debug!("event=sd-notify message={message:?}");
            systemd.send(message);
        }
    }

    /// `STATUS=` as systemd shows it: `4/4 workers ready, generation 3`.
    fn status_line(&self) -> String {
        format!(
            "STATUS={}/{} workers ready, generation {}\n",
            self.pool.ready(),
            self.pool.target(),
            self.generation
        )
    }

    /// `READY=1`: serving with every worker ready (again). The first time,
    /// a launching process waiting on `--daemonize` hears it too.
    fn notify_ready(&mut self) {
        if let Some(report) = self.ready_report.take() {
            let _ = nix::unistd::write(&report, b"ready\n");
        }
        self.notify_systemd(&format!("READY=1\n{}", self.status_line()));
    }

    fn notify_reloading(&self, what: &str) {
        self.notify_systemd(&systemd::reloading_message(what));
    }

    /// `STOPPING=1`, unless a new master we started is taking over: then
    /// systemd follows it (`MAINPID`), and our stop is not the service's.
    /// The same holds for a new master stopped while its old master still
    /// serves (a rollback): the old one takes the service back.
    fn notify_stopping(&self) {
        if self.role.new_master().is_none() && !self.role.old_master_runs() {
            self.notify_systemd("STOPPING=1\n");
        }
    }

    /// Answers status requests on the control socket.
    fn serve_status(&self) {
        self.control.serve(|| self.status());
    }

    /// Binds `health_listen` once the old master let it go.
    fn retry_health(&mut self, now: Instant) {
        let (Some(at), Some(addr)) = (self.health_retry, &self.config.health_listen) else {
            return;
        };
        if now < at {
            return;
        }
        match HealthServer::bind(addr) {
            Ok(server) => {
                self.health = Some(server);
                self.health_retry = None;
            }
            Err(_) => self.health_retry = Some(now + HEALTH_RETRY),
        }
    }

    /// Reads and answers probes on the health endpoint, if there is one.
    fn serve_health(&mut self, now: Instant) {
        let Some(mut health) = self.health.take() else {
            return;
        };
        // Stopping after a new master took the socket: it answers from now
        // on (a probe waits in the backlog, never refused).
        if self.health_handed
            && self.role.new_master().is_some()
            && matches!(self.phase, Phase::Stopping { .. })
        {
            health.hand_over();
            log::info!("event=health-handed-over");
            return;
        }
        // Rendered only when `/metrics` is asked for: it reads /proc.
        let metrics = || crate::metrics::render(&self.status());
        health.serve(now, || Answers {
            readiness: self.readiness(),
            metrics: &metrics,
        });
        self.health = Some(health);
    }

    /// What `/readyz` says: serving with `min_ready` workers ready.
    fn readiness(&self) -> Readiness {
        let stopping = match self.phase {
            Phase::Running => None,
            Phase::Draining { .. } => Some("draining"),
            Phase::Stopping { .. } => Some("stopping"),
        };
        Readiness::of(
            stopping,
            self.pool.ready(),
            self.pool.target(),
            self.config.min_ready.unwrap_or(0),
        )
    }

    /// The state as `status` shows it. Reads each worker's memory and CPU
    /// from /proc (O(workers), at most once a second, the costly figures
    /// within a time budget; see `usage`).
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let mut sampling = self.usage_readings.begin(now);
        let mut workers: Vec<WorkerStatus> = self
            .pool
            .workers()
            .map(|w| {
                let slot = self.pool.slot(w.slot);
                let rollout = slot.and_then(|s| match s.incoming? {
                    pid if pid == w.pid => Some(WorkerRollout::Incoming),
                    _ if s.active == Some(w.pid) => Some(WorkerRollout::Replaced),
                    _ => None,
                });
                WorkerStatus {
                    slot: w.slot,
                    pid: w.pid,
                    state: w.phase(),
                    generation: w.generation,
                    uptime_secs: now.duration_since(w.started).as_secs_f64(),
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: slot.and_then(|s| s.last_exit.clone()),
                    rollout,
                    recycle: self.recycler.reason_of(w.pid),
                    usage: sampling.usage(w.pid, w.started),
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, w.pid));
        let preloaders = self.preloader_statuses(&mut sampling, now);
        let usage = sampling.usage_in_full(self.pid, self.started);
        sampling.finish();
        Status {
            pid: self.pid,
            pid_file: self
                .config
                .pid_file
                .as_deref()
                .and_then(pidfile::canonical)
                .map(|p| p.display().to_string()),
            generation: self.generation,
            uptime_secs: now.duration_since(self.started).as_secs_f64(),
            phase: self.shown_phase(),
            target: self.pool.target(),
            ready: self.pool.ready(),
            min_ready: health::needed(self.config.min_ready.unwrap_or(0), self.pool.target()),
            old_master: self
                .role
                .old_master()
                .map(|p| p.pid)
                .filter(|_| self.role.old_master_runs()),
            upgrade: self.upgrades.operation(self.role.new_master()),
            reload: self.reloads.operation(None),
            retire: Some(self.config.retire),
            rollout: self.rollout_status(),
            workers,
            slots: self.slot_statuses(now),
            preloaders,
            strays: self.strays.statuses(now),
            usage,
            counters: self.counters_now(),
            listeners: self.listener_statuses(),
        }
    }

    /// Every total this master counted, and those it inherited.
    fn counters_now(&self) -> Counters {
        Counters {
            upgrades: self.upgrades.outcomes,
            reloads: self.reloads.outcomes,
            ..self.counters.clone()
        }
    }

    /// Each listener, and a TCP one's accept queue now (one getsockopt).
    fn listener_statuses(&self) -> Vec<ListenerStatus> {
        self.listeners
            .iter()
            .map(|l| {
                let queue = crate::sockets::accept_queue(l);
                ListenerStatus {
                    address: l.bound.to_string(),
                    accept_queue: queue.map(|(queued, _)| queued),
                    backlog: queue.map(|(_, backlog)| backlog),
                }
            })
            .collect()
    }

    /// The phase as `status` shows it: what is in progress, if anything.
    fn shown_phase(&self) -> status::Phase {
        match self.phase {
            Phase::Draining { .. } | Phase::Stopping { .. } => status::Phase::Stopping,
            Phase::Running if self.upgrade_in_progress() => status::Phase::Upgrading,
            Phase::Running if self.rollout.is_some() => status::Phase::Reloading,
            Phase::Running => status::Phase::Running,
        }
    }

    /// Every slot below the target or still in the pool, with or without a
    /// worker: a slot backing off shows when it is filled again.
    fn slot_statuses(&self, now: Instant) -> Vec<SlotStatus> {
        let count = self.pool.slots().len().max(self.pool.target());
        (0..count)
            .map(|i| {
                let empty = pool::Slot::default();
                let s = self.pool.slot(i).unwrap_or(&empty);
                let pid = s.active.or(s.incoming);
                let state = match (pid, s.retry_at) {
                    (Some(_), _) => SlotState::Occupied,
                    (None, Some(_)) => SlotState::Backoff,
                    (None, None) => SlotState::Empty,
                };
                SlotStatus {
                    slot: i,
                    state,
                    pid,
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    retry_in_secs: s
                        .retry_at
                        .filter(|_| pid.is_none())
                        .map(|at| at.saturating_duration_since(now).as_secs_f64()),
                }
            })
            .collect()
    }

    /// Leaves: pid file and socket files removed if still ours.
    fn finish(mut self) -> Result<()> {
        self.logs.drain_all();
        if let Some(path) = &self.config.pid_file {
            pidfile::remove_if_ours(path, self.pid);
            pidfile::remove_if_ours(&pidfile::oldbin_path(path), self.pid);
        }
        // Another generation may serve on the same socket files: the new
        // master we started, or the old master whose upgrade we failed.
        let shared = self.role.new_master().is_some() || self.role.old_master_runs();
        if !shared {
            for listener in &self.listeners {
                listener.unlink_if_ours();
            }
        }
        match self.failure {
            Some(e) => Err(e),
            None => {
                log::info!("event=exit status=0");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_counted_once_by_its_outcome() {
        let mut record = Record::default();
        record.begin(Instant::now());
        record.end(None);
        record.end(Some("late".into()));
        record.begin(Instant::now());
        record.end(Some("failed".into()));
        assert_eq!(record.outcomes, Outcomes { done: 1, failed: 1 });
        assert_eq!(record.state, OperationState::Failed);
    }
}
