//! The master's state as `forkmaster status` shows it, and as the client
//! commands read it to know how an upgrade or reload ended. Serialised as
//! JSON on the control socket (see `control`).

use serde::{Deserialize, Serialize};

/// Whether the master serves or is stopping.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Running,
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
    /// Set when this master was started by an upgrade and the old one may still run.
    pub old_master: Option<i32>,
    pub upgrade: Operation,
    pub reload: Operation,
    pub workers: Vec<WorkerStatus>,
    /// Processes a worker left behind, being stopped; a stopping master
    /// exits only once they are gone. Absent from an older master's answer.
    #[serde(default)]
    pub strays: Vec<StrayStatus>,
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
    /// Deaths of this slot's workers not asked for by the master.
    pub restarts: u32,
    pub last_exit: Option<String>,
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
    /// A table for people, in the spirit of passenger-status.
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
        if let Some(old) = self.old_master {
            out.push_str(&format!("old master: pid={old} (still running)\n"));
        }
        for (name, op) in [("upgrade", &self.upgrade), ("reload", &self.reload)] {
            if op.attempts == 0 {
                continue;
            }
            out.push_str(&format!("{name}: {}", op.state.name()));
            if let Some(pid) = op.new_master {
                out.push_str(&format!(" new_master={pid}"));
            }
            if let Some(reason) = &op.reason {
                out.push_str(&format!(" reason=\"{reason}\""));
            }
            out.push('\n');
        }
        out.push_str("SLOT  PID      STATE     GEN  UPTIME    RESTARTS  LAST EXIT\n");
        for w in &self.workers {
            out.push_str(&format!(
                "{:<5} {:<8} {:<9} {:<4} {:<9} {:<9} {}\n",
                w.slot,
                w.pid,
                w.state.name(),
                w.generation,
                secs(w.uptime_secs),
                w.restarts,
                w.last_exit.as_deref().unwrap_or("-")
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
