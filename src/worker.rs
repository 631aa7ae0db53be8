//! One worker process as the master sees it.

use crate::status::WorkerPhase;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Started, not yet ready; must be by `deadline` (the ready timeout).
    Booting { deadline: Instant },
    /// Ready since `since`; with a watchdog, must ping by `watchdog`.
    Ready {
        since: Instant,
        watchdog: Option<Instant>,
    },
    /// Asked to stop; SIGKILLed at `kill_at`.
    Stopping { kill_at: Instant },
}

/// Why the master ended a worker that did not stop of its own accord.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    ReadyTimeout,
    Watchdog,
}

#[derive(Clone, Debug)]
pub struct Worker {
    pub slot: usize,
    pub pid: i32,
    pub started: Instant,
    pub state: WorkerState,
    /// `ready: delay:...`: when it counts as ready.
    pub ready_at: Option<Instant>,
    pub killed: Option<KillReason>,
    /// Whether it was ever ready (a stopping worker may have been).
    pub was_ready: Option<Instant>,
    /// The master generation (config revision) it was started with.
    pub generation: u32,
}

impl Worker {
    pub fn new(
        slot: usize,
        pid: i32,
        now: Instant,
        ready_timeout: Duration,
        generation: u32,
    ) -> Worker {
        Worker {
            slot,
            pid,
            started: now,
            state: WorkerState::Booting {
                deadline: now + ready_timeout,
            },
            ready_at: None,
            killed: None,
            was_ready: None,
            generation,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { .. })
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready { .. })
    }

    pub fn phase(&self) -> WorkerPhase {
        match self.state {
            WorkerState::Booting { .. } => WorkerPhase::Booting,
            WorkerState::Ready { .. } => WorkerPhase::Ready,
            WorkerState::Stopping { .. } => WorkerPhase::Stopping,
        }
    }
}
