//! The master's state as `forkmaster status` shows it, and as the client
//! commands read it to know how an upgrade or reload ended. Serialised as
//! JSON on the control socket (see `control`).
//!
//! Fields added since the first release are `#[serde(default)]`: a client
//! may ask a master of the previous release (the old side of an upgrade).

use crate::config::Retire;
use serde::{Deserialize, Serialize};

/// What the master is doing: the single truth clients compare against.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Serving, nothing in progress.
    #[default]
    Running,
    /// A HUP rolling restart (or its rollback) is replacing workers.
    Reloading,
    /// A USR2 upgrade: the old master while its new one runs, the new
    /// master until all its workers are ready.
    Upgrading,
    Stopping,
}

/// Where the last upgrade or reload stands.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OperationState {
    /// None was started.
    #[default]
    None,
    InProgress,
    Done,
    Failed,
}

/// A slot's state: it holds a worker, waits out its respawn backoff, or
/// waits to be filled.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// A worker serves it or boots in it (see `workers` for its state).
    #[default]
    Occupied,
    /// Its last worker died; it is filled again after `retry_in_secs`.
    Backoff,
    /// No worker, to be filled on the next pass (or being emptied).
    Empty,
}

/// A worker's state, as shown.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerPhase {
    #[default]
    Booting,
    Ready,
    Stopping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Reloading => "reloading",
            Phase::Upgrading => "upgrading",
            Phase::Stopping => "stopping",
        }
    }
}

impl OperationState {
    pub fn name(self) -> &'static str {
        match self {
            OperationState::None => "none",
            OperationState::InProgress => "in-progress",
            OperationState::Done => "done",
            OperationState::Failed => "failed",
        }
    }
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Occupied => "occupied",
            SlotState::Backoff => "backoff",
            SlotState::Empty => "empty",
        }
    }
}

impl WorkerPhase {
    pub fn name(self) -> &'static str {
        match self {
            WorkerPhase::Booting => "booting",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Stopping => "stopping",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: i32,
    /// The master's pid file, its directory resolved (clients check that a
    /// pid they found is the master of the pid file they were given).
    pub pid_file: Option<String>,
    pub generation: u32,
    pub uptime_secs: f64,
    pub phase: Phase,
    /// Workers wanted, and how many of those are ready.
    pub target: usize,
    pub ready: usize,
    /// Ready workers needed to serve (`min_ready`, at most `target`); 0 in
    /// an older master's answer: all of them.
    #[serde(default)]
    pub min_ready: usize,
    /// Set when this master was started by an upgrade and the old one may still run.
    pub old_master: Option<i32>,
    pub upgrade: Operation,
    pub reload: Operation,
    /// How the old master is retired after an upgrade this master made.
    #[serde(default)]
    pub retire: Option<Retire>,
    /// The rolling restart in progress, while `phase` is `reloading`.
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    pub workers: Vec<WorkerStatus>,
    /// Processes a worker left behind, being stopped; a stopping master
    /// exits only once they are gone. Absent from an older master's answer.
    #[serde(default)]
    pub strays: Vec<StrayStatus>,
    /// Every slot below the target (and any still being emptied), with or
    /// without a worker, and its history.
    #[serde(default)]
    pub slots: Vec<SlotStatus>,
    /// With `--preload`: the preloaders (the current generation's, and an
    /// older one still wanted). Absent from an older master's answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preloaders: Vec<PreloaderStatus>,
    /// The master's own memory and CPU.
    #[serde(flatten)]
    pub usage: Usage,
    /// What this master counted over its life, and before it the masters
    /// it upgraded from (each passes its totals on at a USR2). Zero in an
    /// older master's answer.
    #[serde(default)]
    pub counters: Counters,
    /// The listeners and, for TCP, their accept queues, read when the
    /// status is asked for. Empty in an older master's answer.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// Why a worker exited, as the master tells the cases apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The master asked it to stop (reload, scale down, stop, upgrade).
    Stopped,
    /// Killed by a signal the master did not send (SIGSEGV, SIGABRT, the
    /// OOM killer's SIGKILL, ...).
    Crash,
    /// Exited on its own with a status (0 too), ready or not.
    Exit,
    /// Killed for not reporting ready within `ready_timeout`.
    ReadyTimeout,
    /// Killed for missing its sd_notify watchdog pings.
    Watchdog,
    /// Its setup or exec failed in the child (the command not found, ...).
    ExecFailed,
    /// Stopped once its replacement was ready: over `max_worker_memory`
    /// or `max_worker_age`.
    Recycled,
}

impl ExitReason {
    pub const ALL: [ExitReason; 7] = [
        ExitReason::Stopped,
        ExitReason::Crash,
        ExitReason::Exit,
        ExitReason::ReadyTimeout,
        ExitReason::Watchdog,
        ExitReason::ExecFailed,
        ExitReason::Recycled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitReason::Stopped => "stopped",
            ExitReason::Crash => "crash",
            ExitReason::Exit => "exit",
            ExitReason::ReadyTimeout => "ready_timeout",
            ExitReason::Watchdog => "watchdog",
            ExitReason::ExecFailed => "exec_failed",
            ExitReason::Recycled => "recycled",
        }
    }
}

pub use crate::master::counters::{Counters, Outcomes};

/// A listening socket and, for TCP, its accept queue (`TCP_INFO`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ListenerStatus {
    /// `127.0.0.1:8080` or `unix:/run/app.sock`.
    pub address: String,
    /// Connections waiting for a worker's accept(2).
    pub accept_queue: Option<u32>,
    /// The most the kernel queues (the backlog, capped by somaxconn).
    pub backlog: Option<u32>,
}

/// A process's memory and CPU, read from /proc when the status is asked
/// for (see `master::usage`): CPU (`/proc/PID/stat`) at most a second
/// old; RSS, PSS, private and shared from `/proc/PID/smaps_rollup`, which
/// costs far more to read, as old as `memory_age_secs` says (a status reads
/// it within a time budget, stalest first); a process with no such reading
/// yet shows the RSS of `stat` alone. Each is `None` when the process could not be read (gone, a
/// zombie, not read yet, or an older master).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Usage {
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    /// Pages only this process maps (`Private_Clean + Private_Dirty`).
    pub private_bytes: Option<u64>,
    /// Pages others map too (`Shared_Clean + Shared_Dirty`): mostly what a
    /// worker still shares with the code and libraries of its siblings.
    pub shared_bytes: Option<u64>,
    /// How long ago `rss_bytes`, `pss_bytes`, `private_bytes` and
    /// `shared_bytes` were read (`None`: RSS is of now, from `stat`).
    pub memory_age_secs: Option<f64>,
    /// User and system CPU time over the process's life.
    pub cpu_secs: Option<f64>,
    /// CPU used between the previous reading (at least a second back) and
    /// this one, or since the process started: 100 is one core busy.
    pub cpu_percent: Option<f64>,
}

/// A worker's part in a rolling restart in progress.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerRollout {
    /// Booting to replace its slot's worker.
    Incoming,
    /// Still serving its slot while its replacement boots.
    Replaced,
}

impl WorkerRollout {
    pub fn name(self) -> &'static str {
        match self {
            WorkerRollout::Incoming => "incoming",
            WorkerRollout::Replaced => "replaced",
        }
    }
}

/// Why a worker is being recycled: replaced, its replacement ready first.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RecycleReason {
    /// Its private memory went over `max_worker_memory`.
    Memory,
    /// It reached its `max_worker_age`.
    Age,
}

impl RecycleReason {
    pub const ALL: [RecycleReason; 2] = [RecycleReason::Memory, RecycleReason::Age];

    pub fn name(self) -> &'static str {
        match self {
            RecycleReason::Memory => "memory",
            RecycleReason::Age => "age",
        }
    }
}

/// How far a rolling restart has come.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    /// Slots done (replaced, or emptied meanwhile) out of `total`.
    pub replaced: usize,
    pub total: usize,
    /// Going back to the previous configuration after a failed reload.
    pub rollback: bool,
}

/// A worker position and its history, which outlives its workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub slot: usize,
    pub state: SlotState,
    /// The worker serving it, if any.
    pub pid: Option<i32>,
    /// Deaths of this slot's workers not asked for by the master, over the
    /// master's life: not reset when a new worker (respawn, reload) takes
    /// the slot.
    pub restarts: u32,
    /// How the last of them ended.
    pub last_exit: Option<String>,
    /// While backing off: seconds until the slot is filled again.
    pub retry_in_secs: Option<f64>,
}

/// Progress of the USR2 upgrades or HUP reloads this master has run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Operation {
    /// How many were started; a client compares before and after its signal.
    pub attempts: u32,
    pub state: OperationState,
    /// Why the last one failed.
    pub reason: Option<String>,
    /// The new master of an upgrade in progress.
    pub new_master: Option<i32>,
    pub secs: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: i32,
    pub state: WorkerPhase,
    pub generation: u32,
    pub uptime_secs: f64,
    /// Its slot's history (as in `slots`), not this worker's own: a
    /// brand-new worker in a slot whose previous worker crashed shows 1.
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Its part in a rolling restart in progress, if any.
    #[serde(default)]
    pub rollout: Option<WorkerRollout>,
    /// Being recycled (`rollout` says whether as the old worker or its
    /// replacement), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle: Option<RecycleReason>,
    #[serde(flatten)]
    pub usage: Usage,
}

/// A preloader (`--preload`): the process the workers are forked from. Its
/// memory, next to the workers' PSS and shared figures, shows what sharing
/// the loaded app copy-on-write saves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PreloaderStatus {
    pub pid: i32,
    pub generation: u32,
    /// `booting` (no `hello` yet), `serving` or `stopping`.
    pub state: String,
    /// What its `hello` said it runs, e.g. `python 3.11.7`.
    pub runtime: Option<String>,
    pub uptime_secs: f64,
    /// Workers forked from it and verified.
    pub spawns: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

/// A process a worker left behind, as the master stops it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StrayStatus {
    pub pid: i32,
    pub pgid: i32,
    /// What it was part of: `worker=2 pid=1234 generation=1`, or a process
    /// that left its worker's process group.
    pub of: String,
    /// Whether it was sent SIGKILL already.
    pub killed: bool,
    /// Seconds until it is sent SIGKILL (or, once killed, no longer waited for).
    pub deadline_secs: f64,
}

impl Status {
    /// A table for people, in the spirit of passenger-status: one row per
    /// worker, and one per slot that has none (backing off, or empty).
    pub fn render(&self) -> String {
        let mut out = format!(
            "master: pid={} generation={} uptime={} phase={} workers={}/{} ready\n",
            self.pid,
            self.generation,
            secs(self.uptime_secs),
            self.phase.name(),
            self.ready,
            self.target
        );
        out.push_str(&format!("master usage: {}\n", self.usage.fields()));
        if let Some(old) = self.old_master {
            out.push_str(&format!("old master: pid={old} (still running)"));
            if self.retire == Some(Retire::Manual) {
                out.push_str(" retire=manual: send it QUIT");
            }
            out.push('\n');
        }
        for (name, op) in [("upgrade", &self.upgrade), ("reload", &self.reload)] {
            if op.state == OperationState::None {
                continue;
            }
            out.push_str(&format!("{name}: {}", op.state.name()));
            if let Some(pid) = op.new_master {
                out.push_str(&format!(" new_master={pid}"));
            }
            if let Some(took) = op.secs {
                out.push_str(&format!(" took={}", secs(took)));
            }
            if let Some(reason) = &op.reason {
                out.push_str(&format!(" reason=\"{reason}\""));
            }
            out.push('\n');
        }
        if let Some(r) = &self.rollout {
            let what = if r.rollback {
                "rolling back"
            } else {
                "reloading"
            };
            out.push_str(&format!("{what}: {}/{} replaced\n", r.replaced, r.total));
        }
        // The history columns are the slot's: a new worker inherits them.
        out.push_str(
            "SLOT  PID      STATE     GEN  UPTIME    RSS      PSS      PRIVATE  SHARED   \
             CPU      CPU%    ROLLOUT          SLOT-RESTARTS  SLOT-LAST-EXIT\n",
        );
        let mut rows: Vec<(usize, i32, String)> = self
            .workers
            .iter()
            .map(|w| {
                let row = format!(
                    "{:<5} {:<8} {:<9} {:<4} {:<9} {} {:<16} {:<14} {}\n",
                    w.slot,
                    w.pid,
                    w.state.name(),
                    w.generation,
                    secs(w.uptime_secs),
                    w.usage.cells(),
                    w.rollout_cell(),
                    w.restarts,
                    w.last_exit.as_deref().unwrap_or("-")
                );
                (w.slot, w.pid, row)
            })
            .collect();
        for s in self.slots.iter().filter(|s| s.state != SlotState::Occupied) {
            let mut last = s.last_exit.clone().unwrap_or_else(|| "-".into());
            if let Some(retry) = s.retry_in_secs {
                last.push_str(&format!(" (retry in {})", secs(retry)));
            }
            let row = format!(
                "{:<5} {:<8} {:<9} {:<4} {:<9} {} {:<16} {:<14} {last}\n",
                s.slot,
                "-",
                s.state.name(),
                "-",
                "-",
                Usage::default().cells(),
                "-",
                s.restarts
            );
            rows.push((s.slot, 0, row));
        }
        rows.sort_by_key(|(slot, pid, _)| (*slot, *pid));
        for (_, _, row) in rows {
            out.push_str(&row);
        }
        for p in &self.preloaders {
            out.push_str(&format!(
                "preloader: pid={} generation={} state={} runtime=\"{}\" uptime={} spawns={} usage: {}\n",
                p.pid,
                p.generation,
                p.state,
                p.runtime.as_deref().unwrap_or("-"),
                secs(p.uptime_secs),
                p.spawns,
                p.usage.fields()
            ));
        }
        // The costly figures may be older than the rest: say how old.
        let oldest = (self.workers.iter().map(|w| &w.usage))
            .chain(self.preloaders.iter().map(|p| &p.usage))
            .chain([&self.usage])
            .filter_map(|u| u.memory_age_secs)
            .fold(None, |max: Option<f64>, age| {
                Some(max.map_or(age, |m| m.max(age)))
            });
        if let Some(age) = oldest.filter(|age| *age >= 1.0) {
            out.push_str(&format!(
                "RSS, PSS, PRIVATE and SHARED read up to {} ago; CPU within 1s\n",
                secs(age)
            ));
        }
        if !self.strays.is_empty() {
            out.push_str("STRAY PID  PGID     DEADLINE           OF\n");
            for s in &self.strays {
                let deadline = if s.killed {
                    format!("killed, waits {}", secs(s.deadline_secs))
                } else {
                    format!("SIGKILL in {}", secs(s.deadline_secs))
                };
                out.push_str(&format!(
                    "{:<10} {:<8} {:<18} {}\n",
                    s.pid, s.pgid, deadline, s.of
                ));
            }
        }
        out
    }
}

impl WorkerStatus {
    /// The ROLLOUT cell: `incoming` or `replaced` in a rolling restart;
    /// `recycling:memory` for a worker being recycled, its replacement
    /// `incoming:memory`.
    fn rollout_cell(&self) -> String {
        match (self.rollout, self.recycle) {
            (None, _) => "-".into(),
            (Some(r), None) => r.name().into(),
            (Some(WorkerRollout::Replaced), Some(why)) => format!("recycling:{}", why.name()),
            (Some(WorkerRollout::Incoming), Some(why)) => format!("incoming:{}", why.name()),
        }
    }
}

impl Usage {
    /// The table's RSS, PSS, PRIVATE, SHARED, CPU and CPU% cells, `-` for
    /// what could not be read.
    fn cells(&self) -> String {
        let [rss, pss, private, shared, cpu, percent] = self.shown();
        format!("{rss:<8} {pss:<8} {private:<8} {shared:<8} {cpu:<8} {percent:<7}")
    }

    /// As `key=value` fields, for the master's line.
    fn fields(&self) -> String {
        let [rss, pss, private, shared, cpu, percent] = self.shown();
        format!("rss={rss} pss={pss} private={private} shared={shared} cpu={cpu} cpu%={percent}")
    }

    /// RSS, PSS, private, shared, CPU time and CPU %, as shown.
    fn shown(&self) -> [String; 6] {
        [
            opt(self.rss_bytes, bytes),
            opt(self.pss_bytes, bytes),
            opt(self.private_bytes, bytes),
            opt(self.shared_bytes, bytes),
            opt(self.cpu_secs, secs),
            opt(self.cpu_percent, percent),
        ]
    }
}

fn opt<T>(value: Option<T>, show: fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// Bytes in binary units with one decimal: `512B`, `12.3M`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1}h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1}m", s / 60.0)
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_kebab_case_json() {
        for phase in [
            Phase::Running,
            Phase::Reloading,
            Phase::Upgrading,
            Phase::Stopping,
        ] {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.name()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
    }

    #[test]
    fn a_status_of_the_previous_release_still_reads() {
        let mut old = serde_json::to_value(Status::default()).unwrap();
        let new_keys = [
            "rss_bytes",
            "pss_bytes",
            "private_bytes",
            "shared_bytes",
            "memory_age_secs",
            "cpu_secs",
            "cpu_percent",
        ];
        for key in ["retire", "rollout", "slots"].iter().chain(&new_keys) {
            old.as_object_mut().unwrap().remove(*key);
        }
        let mut worker = serde_json::to_value(WorkerStatus::default()).unwrap();
        for key in ["rollout"].iter().chain(&new_keys) {
            worker.as_object_mut().unwrap().remove(*key);
        }
        old["workers"] = serde_json::json!([worker]);
        let status: Status = serde_json::from_value(old).unwrap();
        assert_eq!(
            status,
            Status {
                workers: vec![WorkerStatus::default()],
                ..Status::default()
            }
        );
    }

    #[test]
    fn render_shows_slots_without_workers_and_the_rollout() {
        let status = Status {
            phase: Phase::Reloading,
            target: 2,
            ready: 1,
            rollout: Some(RolloutStatus {
                replaced: 1,
                total: 2,
                rollback: false,
            }),
            reload: Operation {
                attempts: 1,
                state: OperationState::InProgress,
                ..Operation::default()
            },
            upgrade: Operation {
                state: OperationState::Done,
                secs: Some(1.5),
                ..Operation::default()
            },
            workers: vec![WorkerStatus {
                slot: 0,
                pid: 42,
                state: WorkerPhase::Ready,
                generation: 2,
                ..WorkerStatus::default()
            }],
            slots: vec![
                SlotStatus {
                    slot: 0,
                    pid: Some(42),
                    ..SlotStatus::default()
                },
                SlotStatus {
                    slot: 1,
                    state: SlotState::Backoff,
                    restarts: 3,
                    last_exit: Some("exited with status 1".into()),
                    retry_in_secs: Some(1.6),
                    ..SlotStatus::default()
                },
            ],
            ..Status::default()
        };
        let text = status.render();
        assert!(
            text.contains(" phase=reloading workers=1/2 ready\n"),
            "{text}"
        );
        assert!(text.contains("\nupgrade: done took=1.5s\n"), "{text}");
        assert!(text.contains("\nreload: in-progress\n"), "{text}");
        assert!(text.contains("\nreloading: 1/2 replaced\n"), "{text}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("SLOT"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(rows[0][..3], ["0", "42", "ready"], "{text}");
        assert_eq!(rows[1][..3], ["1", "-", "backoff"], "{text}");
        assert_eq!(rows[0][11], "-", "{text}");
        assert_eq!(rows[1][12], "3", "{text}");
        assert!(
            text.ends_with("exited with status 1 (retry in 1.6s)\n"),
            "{text}"
        );
    }

    #[test]
    fn render_shows_memory_and_cpu_and_dashes_for_what_was_unreadable() {
        let read = Usage {
            rss_bytes: Some(12_897_484),
            pss_bytes: Some(700 * 1024),
            private_bytes: Some(512),
            shared_bytes: Some(3 * 1024 * 1024 * 1024),
            memory_age_secs: Some(4.0),
            cpu_secs: Some(90.0),
            cpu_percent: Some(12.25),
        };
        let status = Status {
            usage: read.clone(),
            workers: vec![
                WorkerStatus {
                    pid: 42,
                    usage: read,
                    rollout: Some(WorkerRollout::Replaced),
                    ..WorkerStatus::default()
                },
                WorkerStatus {
                    pid: 43,
                    ..WorkerStatus::default()
                },
            ],
            ..Status::default()
        };
        let text = status.render();
        assert!(
            text.contains(
                "\nmaster usage: rss=12.3M pss=700.0K private=512B shared=3.0G cpu=1.5m cpu%=12.2%\n"
            ),
            "{text}"
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("SLOT"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0][5..12],
            ["12.3M", "700.0K", "512B", "3.0G", "1.5m", "12.2%", "replaced"],
            "{text}"
        );
        assert_eq!(rows[1][5..12], ["-"; 7], "{text}");
        assert!(
            text.ends_with("RSS, PSS, PRIVATE and SHARED read up to 4.0s ago; CPU within 1s\n"),
            "{text}"
        );
    }

    #[test]
    fn render_lists_strays_only_when_there_are_some() {
        let mut status = Status::default();
        assert!(!status.render().contains("STRAY"));
        status.strays.push(StrayStatus {
            pid: 4321,
            pgid: 1234,
            of: "worker=0 pid=1234 generation=1".into(),
            killed: false,
            deadline_secs: 2.5,
        });
        let text = status.render();
        assert!(text.contains("STRAY"), "{text}");
        assert!(
            text.contains("4321       1234     SIGKILL in 2.5s    worker=0 pid=1234"),
            "{text}"
        );
    }

    #[test]
    fn an_answer_without_strays_reads_as_none() {
        let mut json = serde_json::to_value(Status::default()).unwrap();
        json.as_object_mut().unwrap().remove("strays");
        let status: Status = serde_json::from_value(json).unwrap();
        assert!(status.strays.is_empty());
    }
}
