//! `--preload`: each generation's preloader, from its exec to its end, and
//! the spawn requests the master sends it (docs/PRELOAD.md).
//!
//! | preloader state | what moves it on                                        |
//! |-----------------|---------------------------------------------------------|
//! | `Booting`       | `hello` → `Serving`; exit, silence past `ready_timeout`, or a first packet that is not a valid `hello` → its generation's boot fails |
//! | `Serving`       | takes spawn requests; death → restarted with backoff, its workers keep serving; `CIRCUIT_BREAKER` failed spawns in a row → its generation fails |
//! | `Stopping`      | our end closed (EOF tells the helper to exit); SIGKILL at `kill_at` |
//!
//! A spawn request is `Queued` (no serving preloader of its generation
//! yet), `Sent` (waiting for `spawned`), then `Verifying` (the named pid is
//! believed only once it is our own child: reparenting to the subreaper
//! takes a moment). A verified worker joins the pool and is supervised as
//! an exec'd one; a failed request is a failed spawn, retried with the
//! slot's backoff. No pid a preloader names is signalled before it is
//! verified.
//!
//! What a preloader sends costs the master a bounded share of each loop
//! pass (`READ_PER_PASS` packets, then a `FULL_PASS_PAUSE`) and of its log (`event=preload_message_ignored`
//! lines through a `LogBudget`, the rest counted in a periodic
//! `event=preload_messages_suppressed`): junk is ignored, never fatal, as
//! the protocol leaves room for message types of later versions.

use super::{Master, Phase, QUICK_STOP_GRACE};
use crate::duration::Human;
use crate::error::errno_reason;
use crate::ipc::output::WorkerPipes;
use crate::ipc::preload::{self, FromPreloader, PreloadSocket, Received, SpawnRequest};
use crate::plan;
use crate::protocol::{PRELOAD_MAX_PACKET, PRELOAD_NOT_ANSWERED, PRELOAD_VERSION};
use crate::ratelimit::LogBudget;
use crate::status::PreloaderStatus;
use crate::sys;
use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Failed spawns in a row from one preloader that fail its generation.
pub const CIRCUIT_BREAKER: u32 = 5;
/// How often a pid named in `spawned` is checked until it is our child.
const VERIFY_EVERY: Duration = Duration::from_millis(2);
/// How long a preloader that closed its end of the socket has to exit
/// before it is killed (its exit, if it comes, says more).
const CLOSED_GRACE: Duration = Duration::from_secs(1);
/// Packets read from one preloader in one loop pass: a flooding one cannot
/// hold the loop (what is left is read on the next pass, after signals,
/// notifications, reaping and `status` had their turn).
const READ_PER_PASS: usize = 64;
/// A preloader that filled a pass is not read (nor polled) again for this
/// long: a flood costs the master a few percent of a core, not all it can
/// read, and the flooder blocks on the full socket meanwhile. A `spawned`
/// behind a full socket buffer waits a few of these pauses at most.
const FULL_PASS_PAUSE: Duration = Duration::from_millis(10);
/// `event=preload_message_ignored` lines logged in a burst, then per second.
const IGNORED_BURST: u32 = 10;
const IGNORED_PER_SECOND: u32 = 1;
/// How soon after a line is suppressed the count of suppressed ones is
/// logged (a flood that stops logs no further line that would carry it).
const SUPPRESSED_SUMMARY_AFTER: Duration = Duration::from_secs(1);
/// `READY=1` datagrams held from unknown pids while spawns are in flight:
/// a forked worker may be ready before its `spawned` is read (a preloader
/// reads at most `READ_PER_PASS` packets a pass).
const EARLY_READY_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Exec'd, no `hello` yet; must say it by `deadline` (`ready_timeout`).
    Booting {
        deadline: Instant,
    },
    Serving,
    /// Our end closed; SIGKILL at `kill_at` unless `killed` already.
    Stopping {
        kill_at: Instant,
        killed: bool,
    },
}

/// One preloader process.
struct Preloader {
    pid: i32,
    generation: u32,
    started: Instant,
    /// Our end; `None` once closed (stopping) or ended by the preloader.
    socket: Option<PreloadSocket>,
    state: State,
    /// It closed its end: killed at this time unless it exits first.
    closed_at: Option<Instant>,
    /// A packet came: an app that never sends one gets `PRELOAD_NOT_ANSWERED`.
    heard: bool,
    runtime: Option<String>,
    /// Workers forked from it and verified.
    spawns: u64,
    /// Failed spawns since its last verified one.
    failures_in_row: u32,
    next_id: u64,
    /// Its ignored messages' log lines.
    ignored: LogBudget,
    /// When to log how many of those were suppressed.
    summary_at: Option<Instant>,
    /// It filled its last pass: not read again before this.
    paused_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Queued,
    Sent {
        id: u64,
        preloader: i32,
        deadline: Instant,
    },
    Verifying {
        pid: i32,
        preloader: i32,
        deadline: Instant,
    },
}

/// A worker asked of a preloader, not yet in the pool.
struct Request {
    slot: usize,
    incoming: bool,
    generation: u32,
    stage: Stage,
    /// Its stdout and stderr pipes: the write ends go out with `spawn`, the
    /// read ends are attached once it is verified.
    pipes: WorkerPipes,
}

impl Request {
    fn preloader(&self) -> Option<i32> {
        match self.stage {
            Stage::Queued => None,
            Stage::Sent { preloader, .. } | Stage::Verifying { preloader, .. } => Some(preloader),
        }
    }
}

/// The preloaders of this master and the spawns asked of them.
#[derive(Default)]
pub struct Preloaders {
    list: Vec<Preloader>,
    requests: Vec<Request>,
    /// Boot failures and deaths in a row of the current generation's preloader.
    failures: u32,
    /// While backing off: when the current generation's preloader may start.
    retry_at: Option<Instant>,
    /// `READY=1` from pids not yet verified, with when it came: believed
    /// once the pid is verified, forgotten after `spawn_timeout`.
    early_ready: Vec<(i32, Instant)>,
}

impl Preloaders {
    /// Whether `pid` is one of our preloaders.
    pub fn owns(&self, pid: i32) -> bool {
        self.list.iter().any(|p| p.pid == pid)
    }

    /// A spawn is in flight: an unknown child of ours may be a worker not
    /// yet verified, and must not be taken for a stray.
    pub fn spawning(&self) -> bool {
        self.requests.iter().any(|r| r.stage != Stage::Queued)
    }

    /// Replacements asked for in a rolling restart, not yet in the pool.
    pub fn pending_incoming(&self) -> usize {
        self.requests.iter().filter(|r| r.incoming).count()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The open sockets, for poll(2): what arrives is read on the next
    /// pass. A paused one is left out (`next_deadline` wakes at its end).
    pub fn poll_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let now = Instant::now();
        self.list
            .iter()
            .filter(move |p| p.paused_until.is_none_or(|at| at <= now))
            .filter_map(|p| p.socket.as_ref().map(PreloadSocket::as_fd))
    }

    /// The sockets an in-place upgrade hands over: the serving preloaders'
    /// (see `export_preloaders`).
    pub fn handed_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list
            .iter()
            .filter(|p| p.state == State::Serving)
            .filter_map(|p| p.socket.as_ref().map(PreloadSocket::as_fd))
    }

    /// The next preloader or spawn deadline, or the next verification look.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let preloaders = self.list.iter().flat_map(|p| {
            let state = match p.state {
                State::Booting { deadline } => Some(deadline),
                State::Stopping {
                    kill_at,
                    killed: false,
                } => Some(kill_at),
                _ => None,
            };
            let closed = match p.state {
                State::Stopping { .. } => None,
                _ => p.closed_at.map(|at| at + CLOSED_GRACE),
            };
            [state, closed, p.summary_at, p.paused_until]
        });
        let requests = self.requests.iter().map(|r| match r.stage {
            Stage::Queued => None,
            Stage::Sent { deadline, .. } => Some(deadline),
            Stage::Verifying { deadline, .. } => Some(deadline.min(now + VERIFY_EVERY)),
        });
        // A backoff that ended is acted on when a preloader may start; it
        // wakes no one again (a stopping master starts none).
        let retry = self.retry_at.filter(|at| *at > now);
        preloaders.chain(requests).chain([retry]).flatten().min()
    }

    fn get_mut(&mut self, pid: i32) -> Option<&mut Preloader> {
        self.list.iter_mut().find(|p| p.pid == pid)
    }

    /// Takes the requests `pick` selects out of the list.
    fn take_requests(&mut self, pick: impl Fn(&Request) -> bool) -> Vec<Request> {
        let (taken, kept) = std::mem::take(&mut self.requests)
            .into_iter()
            .partition(|r| pick(r));
        self.requests = kept;
        taken
    }
}

impl Master {
    /// `spawn_worker` with `--preload`: asks the generation's preloader for
    /// the worker (queued until it serves). Once per slot and role.
    pub(super) fn request_spawn(&mut self, slot: usize, incoming: bool, now: Instant) {
        let asked =
            self.preload.requests.iter().any(|r| {
                r.slot == slot && r.incoming == incoming && r.generation == self.generation
            });
        if asked {
            return;
        }
        let pipes = match self.logs.worker_pipes() {
            Ok(pipes) => pipes,
            Err(e) => {
                let why = format!("pipe: {}", errno_reason(e));
                self.on_spawn_failed(slot, incoming, why, now);
                return;
            }
        };
        self.preload.requests.push(Request {
            slot,
            incoming,
            generation: self.generation,
            stage: Stage::Queued,
            pipes,
        });
        self.send_queued_requests(now);
    }

    /// Holds a `READY=1` from `pid`, not (yet) a worker, while spawns are
    /// in flight; whether it was held.
    pub(super) fn hold_early_ready(
        &mut self,
        pid: i32,
        message: &crate::ipc::notify::Message,
        now: Instant,
    ) -> bool {
        let spawning = self.preload.spawning();
        let early = &mut self.preload.early_ready;
        if !message.ready || !spawning || early.len() >= EARLY_READY_MAX {
            return false;
        }
        if !early.iter().any(|(p, _)| *p == pid) {
            early.push((pid, now));
        }
        true
    }

    /// One pass of preload work: messages, verifications, deadlines, which
    /// preloaders should run, and the queued requests they can take now.
    pub(super) fn serve_preload(&mut self, now: Instant) {
        if self.preload.list.is_empty() && self.preload.requests.is_empty() && !self.config.preload
        {
            return;
        }
        if matches!(self.phase, Phase::Stopping { .. }) {
            self.preload.requests.clear();
            let quick = self.phase == (Phase::Stopping { quick: true });
            for pid in self.preloader_pids() {
                self.stop_preloader(pid, quick, now);
            }
        }
        let spawn_timeout = self.config.spawn_timeout;
        self.preload
            .early_ready
            .retain(|(_, at)| *at + spawn_timeout > now);
        self.read_preload_messages(now);
        self.summarise_ignored(now);
        self.verify_spawns(now);
        self.check_preload_deadlines(now);
        self.stop_unwanted_preloaders(now);
        self.ensure_preloader(now);
        self.send_queued_requests(now);
    }

    fn preloader_pids(&self) -> Vec<i32> {
        self.preload.list.iter().map(|p| p.pid).collect()
    }

    fn read_preload_messages(&mut self, now: Instant) {
        let mut received = Vec::new();
        for p in &mut self.preload.list {
            if p.paused_until.is_some_and(|at| now < at) {
                continue;
            }
            p.paused_until = None;
            if let Some(socket) = &mut p.socket {
                let mut read = 0;
                while read < READ_PER_PASS {
                    let Some(r) = socket.receive() else {
                        break;
                    };
                    read += 1;
                    let closed = matches!(r, Received::Closed | Received::Oversize(_));
                    received.push((p.pid, r));
                    if closed {
                        break;
                    }
                }
                if read == READ_PER_PASS {
                    p.paused_until = Some(now + FULL_PASS_PAUSE);
                }
            }
        }
        for (pid, r) in received {
            self.on_preload_packet(pid, r, now);
        }
    }

    fn on_preload_packet(&mut self, pid: i32, received: Received, now: Instant) {
        let Some(p) = self.preload.get_mut(pid) else {
            return;
        };
        if p.socket.is_none() {
            // Closed since (a protocol error earlier in this batch).
            return;
        }
        let booting = matches!(p.state, State::Booting { .. });
        let generation = p.generation;
        let message = match received {
            Received::Closed => {
                p.socket = None;
                p.closed_at = Some(now);
                log::info!(
                    "event=preload-socket-closed role=preloader pid={pid} generation={generation}"
                );
                return;
            }
            Received::Oversize(n) => {
                p.heard = true;
                let why =
                    format!("sent a packet of {n} bytes, over the {PRELOAD_MAX_PACKET}-byte limit");
                return self.fail_preloader(pid, why, now);
            }
            Received::Packet(message) => message,
        };
        p.heard = true;
        match (message, booting) {
            (
                Ok(FromPreloader::Hello {
                    version,
                    pid: said,
                    runtime,
                }),
                true,
            ) => {
                if version != PRELOAD_VERSION {
                    let why = format!(
                        "speaks preload protocol version {version}; this master speaks version {PRELOAD_VERSION}"
                    );
                    return self.fail_preloader(pid, why, now);
                }
                if said != i64::from(pid) {
                    let why = format!("said hello as pid {said}; it is pid {pid}");
                    return self.fail_preloader(pid, why, now);
                }
                p.state = State::Serving;
                log::info!(
                    "event=preloader-ready role=preloader pid={pid} generation={generation} runtime=\"{}\" boot_ms={}",
                    crate::logging::esc(&runtime),
                    now.duration_since(p.started).as_millis()
                );
                p.runtime = Some(runtime);
                if generation == self.generation {
                    self.preload.failures = 0;
                }
                self.send_queued_requests(now);
            }
            (Ok(FromPreloader::Hello { .. }), false) => {
                self.fail_preloader(pid, "sent a second hello".into(), now)
            }
            (Ok(_), true) => {
                self.fail_preloader(pid, "its first message is not a hello".into(), now)
            }
            (Err(why), true) => {
                self.fail_preloader(pid, format!("its first message is not a hello: {why}"), now)
            }
            (Err(why), false) => self.ignore_message(pid, &why, now),
            (Ok(FromPreloader::Spawned { id, pid: worker }), false) => {
                let found = self.preload.requests.iter_mut().find(|r| {
                    matches!(r.stage, Stage::Sent { id: i, preloader, .. } if i == id && preloader == pid)
                });
                match (found, i32::try_from(worker)) {
                    (Some(request), Ok(worker)) => {
                        let Stage::Sent { deadline, .. } = request.stage else {
                            return;
                        };
                        request.stage = Stage::Verifying {
                            pid: worker,
                            preloader: pid,
                            deadline,
                        };
                    }
                    _ => self.ignore_message(
                        pid,
                        &format!("spawned: no spawn in flight with id {id}, or pid {worker} out of range"),
                        now,
                    ),
                }
            }
            (Ok(FromPreloader::SpawnFailed { id, message }), false) => {
                let taken = self.preload.take_requests(|r| {
                    matches!(r.stage, Stage::Sent { id: i, preloader, .. } if i == id && preloader == pid)
                });
                if taken.is_empty() {
                    let why = format!("spawn_failed: no spawn in flight with id {id}");
                    self.ignore_message(pid, &why, now);
                }
                for request in taken {
                    let why = format!("preloader pid={pid}: {message}");
                    self.fail_request(request, why, now);
                }
            }
        }
    }

    /// Logs an ignored message within the preloader's log budget.
    fn ignore_message(&mut self, pid: i32, why: &str, now: Instant) {
        let Some(p) = self.preload.get_mut(pid) else {
            return;
        };
        match p.ignored.take(now) {
            Some(suppressed) => log::warn!(
                "event=preload_message_ignored role=preloader pid={pid} reason=\"{}\" suppressed_before={suppressed}",
                crate::logging::esc(why)
            ),
            None => {
                p.summary_at.get_or_insert(now + SUPPRESSED_SUMMARY_AFTER);
            }
        }
    }

    /// Logs how many ignored messages went unlogged, once their summary is due.
    fn summarise_ignored(&mut self, now: Instant) {
        for p in &mut self.preload.list {
            if p.summary_at.is_some_and(|at| at <= now) {
                p.summary_at = None;
                log_suppressed(p);
            }
        }
    }

    /// Accepts each named pid that became our child; fails the ones past
    /// `spawn_timeout`, and any pid that is already something else of ours.
    fn verify_spawns(&mut self, now: Instant) {
        let verifying: Vec<(usize, i32)> = self
            .preload
            .requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.stage {
                Stage::Verifying { pid, .. } => Some((i, pid)),
                _ => None,
            })
            .collect();
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for (i, pid) in verifying {
            let taken = pid <= 1
                || self.preload.owns(pid)
                || self.pool.get(pid).is_some()
                || self.role.new_master() == Some(pid);
            if taken {
                refused.push((i, pid));
            } else if sys::preload::is_own_child(pid) {
                accepted.push(i);
            }
        }
        let mut indices: Vec<usize> = accepted
            .iter()
            .copied()
            .chain(refused.iter().map(|(i, _)| *i))
            .collect();
        indices.sort_unstable();
        let mut requests = Vec::new();
        for &i in indices.iter().rev() {
            requests.push((i, self.preload.requests.remove(i)));
        }
        for (i, request) in requests.into_iter().rev() {
            let Stage::Verifying { pid, preloader, .. } = request.stage else {
                continue;
            };
            if accepted.contains(&i) {
                self.adopt_preloaded_worker(request, pid, preloader, now);
            } else {
                let why =
                    format!("preloader pid={preloader} named pid {pid}, which is not a new worker");
                self.fail_request(request, why, now);
            }
        }
    }

    /// A verified worker: its pipes attached, supervised as an exec'd one.
    fn adopt_preloaded_worker(&mut self, request: Request, pid: i32, preloader: i32, now: Instant) {
        if let Some(p) = self.preload.get_mut(preloader) {
            p.spawns += 1;
            p.failures_in_row = 0;
        }
        self.logs.attach(pid, request.pipes);
        log::debug!(
            "worker={} pid={pid} event=preload-verified preloader={preloader}",
            request.slot
        );
        self.supervise_worker(request.slot, pid, request.incoming, request.generation, now);
        self.dirty = true;
        // Asked for by a rollout that ended, or of a generation left since:
        // not wanted any more, but ours to stop now that it is verified.
        let stale =
            request.generation != self.generation || (request.incoming && self.rollout.is_none());
        let early = self.preload.early_ready.iter().position(|(p, _)| *p == pid);
        let early = early.map(|i| self.preload.early_ready.swap_remove(i));
        if stale {
            self.stop_worker(pid, false, now);
        } else if early.is_some() && self.config.ready == crate::config::ReadyMode::Notify {
            // Its `READY=1` came before its `spawned` was read.
            self.on_ready(pid, now);
        }
    }

    /// A request that will not give a worker: a failed spawn of its slot,
    /// counted against the preloader that had it (the circuit breaker).
    fn fail_request(&mut self, request: Request, why: String, now: Instant) {
        let mut tripped = None;
        if let Some(p) = request
            .preloader()
            .and_then(|pid| self.preload.get_mut(pid))
        {
            p.failures_in_row += 1;
            if p.failures_in_row >= CIRCUIT_BREAKER && p.state == State::Serving {
                tripped = Some(p.pid);
            }
        }
        self.on_spawn_failed(request.slot, request.incoming, why.clone(), now);
        if let Some(pid) = tripped {
            let why = format!("{CIRCUIT_BREAKER} spawns in a row failed, the last: {why}");
            if !self.serving {
                // Before any worker served, more attempts only delay the
                // verdict: the generation cannot start.
                self.startup_failures = self.startup_failures.max(plan::STARTUP_ATTEMPTS - 1);
            }
            self.fail_preloader(pid, why, now);
        }
    }

    /// Forgets the replacements not yet sent to a preloader (the rollout
    /// ended); ones in flight are stopped once verified.
    pub(super) fn drop_queued_incoming(&mut self) {
        self.preload
            .take_requests(|r| r.incoming && r.stage == Stage::Queued);
    }

    /// Timeouts of spawns and preloaders, and the SIGKILL of stopping ones.
    fn check_preload_deadlines(&mut self, now: Instant) {
        let late = self.preload.take_requests(|r| match r.stage {
            Stage::Sent { deadline, .. } | Stage::Verifying { deadline, .. } => deadline <= now,
            Stage::Queued => false,
        });
        let timeout = Human(self.config.spawn_timeout);
        for request in late {
            let why = match request.stage {
                Stage::Verifying { pid, preloader, .. } => format!(
                    "preloader pid={preloader} named pid {pid}, which did not become our child within {timeout}"
                ),
                _ => format!(
                    "preloader pid={} did not answer within {timeout}",
                    request.preloader().unwrap_or(0)
                ),
            };
            self.fail_request(request, why, now);
        }
        let mut silent = Vec::new();
        let mut closed = Vec::new();
        for p in &mut self.preload.list {
            match p.state {
                State::Booting { deadline } if deadline <= now => silent.push(p.pid),
                State::Stopping {
                    kill_at,
                    killed: false,
                } if kill_at <= now => {
                    log::warn!(
                        "event=kill role=preloader pid={} reason=\"did not stop in time\"",
                        p.pid
                    );
                    kill_preloader(p.pid);
                    p.state = State::Stopping {
                        kill_at,
                        killed: true,
                    };
                }
                _ if p.closed_at.is_some_and(|at| at + CLOSED_GRACE <= now)
                    && !matches!(p.state, State::Stopping { .. }) =>
                {
                    closed.push(p.pid)
                }
                _ => {}
            }
        }
        let ready_timeout = Human(self.config.ready_timeout);
        for pid in silent {
            let heard = self.preload.get_mut(pid).is_some_and(|p| p.heard);
            let why = match heard {
                false => format!("no hello within {ready_timeout}: {PRELOAD_NOT_ANSWERED}"),
                true => format!("no hello within {ready_timeout}"),
            };
            self.fail_preloader(pid, why, now);
        }
        for pid in closed {
            let why = "closed its end of FORKMASTER_PRELOAD_FD and kept running".to_string();
            self.fail_preloader(pid, why, now);
        }
    }

    /// The generation a preloader may still be needed for: the current one
    /// (with `preload` on), or the one a rolling restart would go back to.
    fn wants_preloader(&self, generation: u32) -> bool {
        (self.config.preload && generation == self.generation)
            || self.rollout_fallback_generation() == Some(generation)
    }

    fn stop_unwanted_preloaders(&mut self, now: Instant) {
        let unwanted: Vec<i32> = self
            .preload
            .list
            .iter()
            .filter(|p| !matches!(p.state, State::Stopping { .. }))
            .filter(|p| !self.wants_preloader(p.generation))
            .map(|p| p.pid)
            .collect();
        for pid in unwanted {
            self.stop_preloader(pid, false, now);
        }
        let stale = self
            .preload
            .take_requests(|r| r.stage == Stage::Queued && r.generation != self.generation);
        if !stale.is_empty() {
            // Asked again, of the current generation, by the next scale.
            self.dirty = true;
        }
    }

    /// Starts the current generation's preloader unless it runs or backs off.
    fn ensure_preloader(&mut self, now: Instant) {
        if !self.config.preload || self.phase != Phase::Running {
            return;
        }
        let running =
            self.preload.list.iter().any(|p| {
                p.generation == self.generation && !matches!(p.state, State::Stopping { .. })
            });
        if running || self.preload.retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.preload.retry_at = None;
        if let Err(why) = self.start_preloader(now) {
            log::error!(
                "event=spawn-failed role=preloader error=\"{}\"",
                crate::logging::esc(&why)
            );
            self.fail_generation(self.generation, why, now);
        }
    }

    /// Execs `COMMAND ARGS` as this generation's preloader.
    fn start_preloader(&mut self, now: Instant) -> Result<(), String> {
        let (socket, theirs) =
            preload::pair().map_err(|e| format!("socketpair: {}", errno_reason(e)))?;
        // Inherited by the preloader alone: the copy lives until the fork,
        // and no other child is forked in between (one thread).
        let inherited =
            sys::preload::dup_inheritable(theirs.as_fd(), self.template.preload_fd_floor())
                .map_err(|e| format!("dup: {}", errno_reason(e)))?;
        drop(theirs);
        let pipes = self
            .logs
            .worker_pipes()
            .map_err(|e| format!("pipe: {}", errno_reason(e)))?;
        let mut exec = self.template.plan_preloader(
            self.pool.target(),
            self.exec_errors_write.as_raw_fd(),
            pipes.stdio(),
            inherited.as_raw_fd(),
        );
        let pid = sys::spawn(&mut exec).map_err(|e| format!("fork: {}", errno_reason(e)))?;
        drop(inherited);
        self.logs.attach(pid, pipes);
        log::info!(
            "event=spawn role=preloader pid={pid} generation={}",
            self.generation
        );
        self.preload.list.push(Preloader {
            pid,
            generation: self.generation,
            started: now,
            socket: Some(socket),
            state: State::Booting {
                deadline: now + self.config.ready_timeout,
            },
            closed_at: None,
            heard: false,
            runtime: None,
            spawns: 0,
            failures_in_row: 0,
            next_id: 1,
            ignored: LogBudget::new(IGNORED_BURST, IGNORED_PER_SECOND),
            summary_at: None,
            paused_until: None,
        });
        Ok(())
    }

    /// Sends each queued request its serving preloader can take.
    fn send_queued_requests(&mut self, now: Instant) {
        let workers = self.pool.target();
        let spawn_timeout = self.config.spawn_timeout;
        let mut failed = Vec::new();
        for (i, request) in self.preload.requests.iter_mut().enumerate() {
            if request.stage != Stage::Queued {
                continue;
            }
            let Some(p) = self.preload.list.iter_mut().find(|p| {
                p.generation == request.generation
                    && p.state == State::Serving
                    && p.socket.is_some()
            }) else {
                continue;
            };
            let Some(socket) = &p.socket else {
                continue;
            };
            let id = p.next_id;
            p.next_id += 1;
            let env = self.template.spawn_env(request.slot, workers);
            let (out, err) = request.pipes.stdio();
            // Not captured: the worker writes to the master's own fd, as an
            // exec'd worker inherits it.
            let fds = [out.unwrap_or(1), err.unwrap_or(2)];
            let message = SpawnRequest {
                id,
                slot: request.slot,
                generation: request.generation,
                env: &env,
            };
            match socket.send_spawn(&message, fds) {
                Ok(()) => {
                    log::debug!(
                        "worker={} event=preload-spawn id={id} preloader={}",
                        request.slot,
                        p.pid
                    );
                    request.stage = Stage::Sent {
                        id,
                        preloader: p.pid,
                        deadline: now + spawn_timeout,
                    };
                }
                Err(why) => failed.push((i, format!("preloader pid={}: {why}", p.pid))),
            }
        }
        // Out of the list before acting: a failure may end a rollout, which
        // edits the list.
        let failed: Vec<(Request, String)> = failed
            .into_iter()
            .rev()
            .map(|(i, why)| (self.preload.requests.remove(i), why))
            .collect();
        for (request, why) in failed {
            self.on_spawn_failed(request.slot, request.incoming, why, now);
        }
    }

    /// Closes our end (the helper exits on EOF); SIGKILL after the grace.
    fn stop_preloader(&mut self, pid: i32, quick: bool, now: Instant) {
        let grace = if quick {
            QUICK_STOP_GRACE
        } else {
            self.config.graceful_timeout
        };
        let Some(p) = self.preload.get_mut(pid) else {
            return;
        };
        if matches!(p.state, State::Stopping { .. }) {
            return;
        }
        p.socket = None;
        p.state = State::Stopping {
            kill_at: now + grace,
            killed: false,
        };
        log::info!(
            "event=stop role=preloader pid={pid} generation={} grace={}",
            p.generation,
            Human(grace)
        );
        let stranded = self.preload.take_requests(|r| r.preloader() == Some(pid));
        for request in stranded {
            self.fail_request(request, format!("preloader pid={pid} stopped"), now);
        }
    }

    /// A preloader broke the protocol or went silent: killed, and its
    /// generation fails (`fail_generation`).
    fn fail_preloader(&mut self, pid: i32, why: String, now: Instant) {
        let Some(p) = self.preload.get_mut(pid) else {
            return;
        };
        if matches!(p.state, State::Stopping { .. }) {
            return;
        }
        let generation = p.generation;
        p.socket = None;
        p.state = State::Stopping {
            kill_at: now,
            killed: true,
        };
        kill_preloader(pid);
        log::error!(
            "event=preloader-failed role=preloader pid={pid} generation={generation} reason=\"{}\" action=kill",
            crate::logging::esc(&why)
        );
        let stranded = self.preload.take_requests(|r| r.preloader() == Some(pid));
        for request in stranded {
            self.on_spawn_failed(
                request.slot,
                request.incoming,
                format!("preloader pid={pid} failed"),
                now,
            );
        }
        self.fail_generation(generation, format!("preloader pid={pid} {why}"), now);
    }

    /// A reaped preloader. One that was not being stopped fails its
    /// generation (a boot failure before `hello`; after it, a restart).
    pub(super) fn on_preloader_exit(
        &mut self,
        pid: i32,
        status: super::workers::ExitStatus,
        exec_failure: Option<String>,
        now: Instant,
    ) {
        let stderr = self.logs.release(pid);
        let Some(i) = self.preload.list.iter().position(|p| p.pid == pid) else {
            return;
        };
        let mut p = self.preload.list.remove(i);
        log_suppressed(&mut p);
        let stranded = self.preload.take_requests(|r| r.preloader() == Some(pid));
        for request in stranded {
            let why = format!("preloader pid={pid} exited");
            self.on_spawn_failed(request.slot, request.incoming, why, now);
        }
        if let State::Stopping { .. } = p.state {
            log::info!(
                "event=exit role=preloader pid={pid} generation={} {} stopped=yes",
                p.generation,
                status.fields()
            );
            return;
        }
        let booting = matches!(p.state, State::Booting { .. });
        let mut why = match &exec_failure {
            Some(exec) => exec.clone(),
            None if booting => format!("{status} before hello"),
            None => format!("{status} while serving"),
        };
        // An app that ran and never spoke: most likely no helper at all.
        if !p.heard && exec_failure.is_none() {
            why = format!("{why}: {PRELOAD_NOT_ANSWERED}");
        }
        if let Some(lines) = stderr.filter(|_| booting) {
            why = format!("{why}; last stderr: \"{lines}\"");
        }
        log::warn!(
            "event=exit role=preloader pid={pid} generation={} {} reason=\"{}\"",
            p.generation,
            status.fields(),
            crate::logging::esc(&why)
        );
        self.fail_generation(p.generation, format!("preloader pid={pid} {why}"), now);
    }

    /// A generation's preloader failed: as a worker that never became
    /// ready fails a boot. A rolling restart's new generation rolls back;
    /// at first start it counts towards giving up; otherwise the preloader
    /// is started again after a backoff while the workers keep serving.
    fn fail_generation(&mut self, generation: u32, why: String, now: Instant) {
        if generation != self.generation {
            return;
        }
        if self.rollout_fallback_generation().is_some() {
            self.fail_rollout(why, now);
            return;
        }
        if self.phase != Phase::Running {
            return;
        }
        if !self.serving {
            self.startup_failures += 1;
            if self.startup_failures >= plan::STARTUP_ATTEMPTS {
                self.give_up(why, now);
                return;
            }
        }
        self.preload.failures += 1;
        let delay = plan::backoff(self.preload.failures);
        self.preload.retry_at = Some(now + delay);
        log::info!(
            "event=respawn role=preloader generation={generation} delay={} failures={}",
            Human(delay),
            self.preload.failures
        );
    }

    /// In-place upgrade, old image: the serving preloaders, kept across the
    /// exec (their sockets are handed with the other fds). A booting or
    /// stopping one is not: its socket closes at the exec, and it exits.
    /// Requests in flight are not either: a worker forked for one is a
    /// stray of the new image.
    pub(super) fn export_preloaders(&self, now: Instant) -> Vec<preload::Handed> {
        self.preload
            .list
            .iter()
            .filter(|p| p.state == State::Serving)
            .filter_map(|p| {
                Some(preload::Handed {
                    pid: p.pid,
                    generation: p.generation,
                    socket: p.socket.as_ref()?.as_fd().as_raw_fd(),
                    pipes: self.logs.read_fds_of(p.pid),
                    age_ms: crate::inplace::ms_ago(now, p.started),
                    runtime: p.runtime.clone(),
                    spawns: p.spawns,
                    next_id: p.next_id,
                })
            })
            .collect()
    }

    /// In-place upgrade, new image: takes the old image's serving
    /// preloaders back (their fds adopted at the start, see
    /// `crate::inplace`). One whose socket could not be adopted is killed:
    /// it cannot be asked for anything; its exit is logged as a preloader's.
    pub(super) fn restore_preloaders(&mut self, adopted: Vec<preload::Adopted>, now: Instant) {
        for preload::Adopted {
            handed: h,
            socket,
            pipes,
        } in adopted
        {
            self.logs.adopt(h.pid, pipes);
            let (socket, state) = match socket {
                Ok(socket) => (Some(socket), State::Serving),
                Err(why) => {
                    log::warn!(
                        "event=inplace-preloader-lost role=preloader pid={} reason=\"{}\" action=kill",
                        h.pid,
                        crate::logging::esc(&why)
                    );
                    kill_preloader(h.pid);
                    let state = State::Stopping {
                        kill_at: now,
                        killed: true,
                    };
                    (None, state)
                }
            };
            log::info!(
                "event=preloader-resumed role=preloader pid={} generation={} spawns={}",
                h.pid,
                h.generation,
                h.spawns
            );
            self.preload.list.push(Preloader {
                pid: h.pid,
                generation: h.generation,
                started: crate::inplace::before(now, h.age_ms),
                socket,
                state,
                closed_at: None,
                heard: true,
                runtime: h.runtime,
                spawns: h.spawns,
                failures_in_row: 0,
                next_id: h.next_id,
                ignored: LogBudget::new(IGNORED_BURST, IGNORED_PER_SECOND),
                summary_at: None,
                paused_until: None,
            });
        }
    }

    /// Each preloader as `status` shows it, with its memory and CPU.
    pub(super) fn preloader_statuses(
        &self,
        sampling: &mut super::usage::Sampling<'_>,
        now: Instant,
    ) -> Vec<PreloaderStatus> {
        self.preload
            .list
            .iter()
            .map(|p| PreloaderStatus {
                pid: p.pid,
                generation: p.generation,
                state: match p.state {
                    State::Booting { .. } => "booting",
                    State::Serving => "serving",
                    State::Stopping { .. } => "stopping",
                }
                .to_string(),
                runtime: p.runtime.clone(),
                uptime_secs: now.duration_since(p.started).as_secs_f64(),
                spawns: p.spawns,
                usage: sampling.usage(p.pid, p.started),
            })
            .collect()
    }
}

/// The count of a preloader's ignored messages not logged since its last
/// line, if any.
fn log_suppressed(p: &mut Preloader) {
    let count = p.ignored.take_suppressed();
    if count > 0 {
        log::warn!(
            "event=preload_messages_suppressed role=preloader pid={} count={count}",
            p.pid
        );
    }
}

/// SIGKILL to a preloader and its process group. It is our child not yet
/// reaped (it leaves the list only when reaped), so neither number has been
/// reused; the workers it forked lead groups of their own.
fn kill_preloader(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = killpg(pid, NixSignal::SIGKILL);
    let _ = kill(pid, NixSignal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_that_ended_wakes_no_one() {
        let now = Instant::now();
        let mut preloaders = Preloaders {
            retry_at: Some(now),
            ..Preloaders::default()
        };
        assert_eq!(preloaders.next_deadline(now), None);
        let later = now + Duration::from_secs(1);
        preloaders.retry_at = Some(later);
        assert_eq!(preloaders.next_deadline(now), Some(later));
        assert!(!preloaders.spawning() && preloaders.is_empty());
    }
}
