//! What an old image hands its new one across an in-place upgrade (the
//! master `execve`s the new binary itself and keeps its pid): the workers,
//! still its children, with their slots, states and deadlines; the fds it
//! holds for them; its records and counters; and the configuration it ran
//! them with. As versioned JSON in a memfd whose number is in
//! `FORKMASTER_INPLACE_STATE`; the listeners go as in a fork upgrade, in
//! `FORKMASTER_INHERIT_FDS` (see `handoff`).
//!
//! Every fd number in the state is adopted through `sys::fd::adopt_handed`,
//! checked to be open, inherited across the exec and of the kind expected.
//! Times are kept relative to the moment of the exec (the monotonic clock
//! goes on across it).

use crate::protocol::INPLACE_STATE;
use crate::status::{Counters, OperationState, Outcomes};
use crate::sys::fd::{adopt_handed, HandedKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Bumped on any change a new image could misread.
pub const VERSION: u32 = 1;

/// A state larger than this is not ours (1000 workers take about 300 KiB).
const STATE_LIMIT: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    /// Why in-place was chosen (`pid1`, `init=tini`, `configured`).
    pub reason: String,
    /// The configuration file's text the old workers were started from
    /// (`None`: no file; flags and command are the same across the exec).
    pub config_text: Option<String>,
    pub generation: u32,
    pub generations_issued: u32,
    pub uptime_ms: u64,
    pub target: usize,
    pub serving: bool,
    pub notify_fd: RawFd,
    /// The exec-error pipe, read and write ends.
    pub exec_errors: [RawFd; 2],
    pub workers: Vec<Worker>,
    /// `--preload`: the serving preloaders (adopted by `master::preload`).
    #[serde(default)]
    pub preloaders: Vec<crate::ipc::preload::Handed>,
    pub slots: Vec<Slot>,
    pub upgrades: Record,
    pub reloads: Record,
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Worker {
    pub slot: usize,
    pub pid: i32,
    pub generation: u32,
    pub state: WorkerState,
    pub age_ms: u64,
    /// When it was first ready, if ever.
    pub ready_ms_ago: Option<u64>,
    /// `ready: delay:...` still running.
    pub ready_in_ms: Option<u64>,
    /// The master was killing it (`ready-timeout`, `watchdog`).
    pub killed: Option<String>,
    /// Read ends of its stdout and stderr pipes.
    pub pipes: [Option<RawFd>; 2],
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum WorkerState {
    Booting {
        deadline_in_ms: u64,
    },
    Ready {
        since_ms_ago: u64,
        watchdog_in_ms: Option<u64>,
    },
    Stopping {
        kill_in_ms: u64,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Slot {
    pub failures: u32,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub attempts: u32,
    pub state: OperationState,
    pub reason: Option<String>,
    pub started_ms_ago: Option<u64>,
    pub took_ms: Option<u64>,
    pub outcomes: Outcomes,
}

/// Milliseconds from `now` back to `then`.
pub fn ms_ago(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

/// Milliseconds from `now` until `at` (0 if past).
pub fn ms_until(now: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(now).as_millis() as u64
}

/// The instant `ms` before `now`.
pub fn before(now: Instant, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

/// The instant `ms` after `now`.
pub fn after(now: Instant, ms: u64) -> Instant {
    now + Duration::from_millis(ms)
}

/// The state, read and its fds adopted, in the new image.
pub struct Handover {
    pub state: State,
    pub notify: Option<OwnedFd>,
    pub exec_errors: Option<(OwnedFd, OwnedFd)>,
    /// Each worker's pipes' read ends, by pid.
    pub pipes: HashMap<i32, [Option<OwnedFd>; 2]>,
    pub preloaders: Vec<crate::ipc::preload::Adopted>,
}

/// The handover of the old image, if this process was started by an
/// in-place upgrade. `Err` says why it cannot be used (logged by the
/// caller: the workers it named are then not known).
pub fn take_from_env() -> Option<Result<Handover, String>> {
    let value = std::env::var(INPLACE_STATE).ok()?;
    Some(read(&value))
}

/// Whether an in-place upgrade started this process.
pub fn is_inplace() -> bool {
    std::env::var_os(INPLACE_STATE).is_some()
}

fn read(value: &str) -> Result<Handover, String> {
    let adopt = |fd: RawFd, kind, what: &str| {
        adopt_handed(fd, kind).map_err(|why| format!("{INPLACE_STATE}: {what} fd {fd}: {why}"))
    };
    let fd: RawFd = value
        .parse()
        .map_err(|_| format!("{INPLACE_STATE}: {value:?} is not an fd number"))?;
    let memfd = adopt(fd, HandedKind::File, "state")?;
    let bytes = crate::sys::reexec::read_all(memfd, STATE_LIMIT)
        .map_err(|e| format!("{INPLACE_STATE}: read: {e}"))?;
    let state = decode(&bytes)?;
    let notify = adopt(state.notify_fd, HandedKind::Socket, "notify socket")?;
    let exec_errors = (
        adopt(state.exec_errors[0], HandedKind::Pipe, "exec-error pipe")?,
        adopt(state.exec_errors[1], HandedKind::Pipe, "exec-error pipe")?,
    );
    let (notify, exec_errors) = (Some(notify), Some(exec_errors));
    let mut pipes = HashMap::new();
    for worker in &state.workers {
        let [out, err] = worker.pipes.map(|fd| {
            fd.and_then(|fd| match adopt(fd, HandedKind::Pipe, "worker pipe") {
                Ok(fd) => Some(fd),
                Err(why) => {
                    log::warn!(
                        "worker={} pid={} event=inplace-pipe-lost reason=\"{}\"",
                        worker.slot,
                        worker.pid,
                        crate::logging::esc(&why)
                    );
                    None
                }
            })
        });
        pipes.insert(worker.pid, [out, err]);
    }
    let preloaders = crate::ipc::preload::adopt_handed(&state.preloaders);
    Ok(Handover {
        state,
        notify,
        exec_errors,
        pipes,
        preloaders,
    })
}

/// Parses the JSON, refusing another version.
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| format!("{INPLACE_STATE}: {e}"))?;
    if versioned.version != VERSION {
        return Err(format!(
            "{INPLACE_STATE}: state version {} (this binary reads {VERSION})",
            versioned.version
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("{INPLACE_STATE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: VERSION,
            reason: "configured".into(),
            config_text: Some("workers: 2\n".into()),
            generation: 3,
            generations_issued: 4,
            uptime_ms: 1000,
            target: 2,
            serving: true,
            notify_fd: 5,
            exec_errors: [6, 7],
            workers: vec![Worker {
                slot: 0,
                pid: 100,
                generation: 3,
                state: WorkerState::Ready {
                    since_ms_ago: 10,
                    watchdog_in_ms: None,
                },
                age_ms: 20,
                ready_ms_ago: Some(10),
                ready_in_ms: None,
                killed: None,
                pipes: [None, Some(8)],
            }],
            preloaders: Vec::new(),
            slots: vec![Slot::default()],
            upgrades: Record {
                attempts: 1,
                state: OperationState::InProgress,
                ..Record::default()
            },
            reloads: Record::default(),
            counters: Counters::default(),
        }
    }

    #[test]
    fn the_state_survives_its_json() {
        let state = sample();
        let bytes = serde_json::to_vec(&state).unwrap();
        assert_eq!(decode(&bytes).unwrap(), state);
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut state = sample();
        state.version = VERSION + 1;
        let bytes = serde_json::to_vec(&state).unwrap();
        let err = decode(&bytes).unwrap_err();
        assert!(err.contains("state version"), "{err}");
    }
}
