//! What a master counts over its life, for `metrics`: worker exits by
//! reason, respawns, recycles by reason, upgrades and reloads by outcome.
//!
//! One serializable struct, `Counters`, so a dashboard survives a deploy:
//! an old master passes its totals to the new master it execs (USR2) in
//! `FORKMASTER_UPGRADE_COUNTERS`, as compact JSON, and the new master
//! starts from them. The value is bounded and parsed strictly; a malformed
//! one is logged and the new master starts from zero, never failing the
//! upgrade for it. Any other handoff of a master's state carries the same
//! struct.

use crate::protocol::UPGRADE_COUNTERS;
use crate::status::{ExitReason, RecycleReason};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;

/// The longest `FORKMASTER_UPGRADE_COUNTERS` value read: totals in JSON
/// take a few hundred bytes, whatever the counts.
const ENCODED_LIMIT: usize = 4096;

/// Counters over a master's life, and those of the masters it upgraded
/// from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Counters {
    pub worker_exits: ExitCounts,
    /// Respawns scheduled: after a worker died unasked, or failed to spawn.
    pub respawns: u64,
    pub upgrades: Outcomes,
    pub reloads: Outcomes,
    /// Workers replaced for going over a limit, by which.
    pub recycles: RecycleCounts,
}

/// Worker exits by reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ExitCounts {
    pub stopped: u64,
    pub crash: u64,
    pub exit: u64,
    pub ready_timeout: u64,
    pub watchdog: u64,
    pub exec_failed: u64,
    pub recycled: u64,
}

/// Upgrades or reloads that ended, by outcome.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Outcomes {
    pub done: u64,
    pub failed: u64,
}

/// Recycles done (the replacement ready, the old worker stopped), by reason.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RecycleCounts {
    pub memory: u64,
    pub age: u64,
}

impl ExitCounts {
    fn field(&mut self, reason: ExitReason) -> &mut u64 {
        match reason {
            ExitReason::Stopped => &mut self.stopped,
            ExitReason::Crash => &mut self.crash,
            ExitReason::Exit => &mut self.exit,
            ExitReason::ReadyTimeout => &mut self.ready_timeout,
            ExitReason::Watchdog => &mut self.watchdog,
            ExitReason::ExecFailed => &mut self.exec_failed,
            ExitReason::Recycled => &mut self.recycled,
        }
    }

    pub fn count(&mut self, reason: ExitReason) {
        *self.field(reason) += 1;
    }

    pub fn get(&self, reason: ExitReason) -> u64 {
        match reason {
            ExitReason::Stopped => self.stopped,
            ExitReason::Crash => self.crash,
            ExitReason::Exit => self.exit,
            ExitReason::ReadyTimeout => self.ready_timeout,
            ExitReason::Watchdog => self.watchdog,
            ExitReason::ExecFailed => self.exec_failed,
            ExitReason::Recycled => self.recycled,
        }
    }
}

impl RecycleCounts {
    pub fn count(&mut self, reason: RecycleReason) {
        match reason {
            RecycleReason::Memory => self.memory += 1,
            RecycleReason::Age => self.age += 1,
        }
    }

    pub fn get(&self, reason: RecycleReason) -> u64 {
        match reason {
            RecycleReason::Memory => self.memory,
            RecycleReason::Age => self.age,
        }
    }
}

impl Counters {
    /// The value of `FORKMASTER_UPGRADE_COUNTERS` for a new master.
    pub fn encode(&self) -> String {
        // Plain integers and names: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Totals passed by an old master; why not, if they cannot be read.
    pub fn decode(text: &str) -> Result<Counters, String> {
        if text.len() > ENCODED_LIMIT {
            return Err(format!("{} bytes, more than {ENCODED_LIMIT}", text.len()));
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The totals an old master passed in `env` (a new master's start
    /// environment); zero, logged, if they are malformed.
    pub fn inherited(env: &[(OsString, OsString)]) -> Counters {
        let Some((_, value)) = env.iter().find(|(k, _)| k == UPGRADE_COUNTERS) else {
            return Counters::default();
        };
        match Counters::decode(&value.to_string_lossy()) {
            Ok(counters) => counters,
            Err(why) => {
                log::warn!(
                    "event=counters-unreadable var={UPGRADE_COUNTERS} error=\"{}\" action=\"start from zero\"",
                    crate::logging::esc(&why)
                );
                Counters::default()
            }
        }
    }

    /// Sets `FORKMASTER_UPGRADE_COUNTERS` in `env`, the environment a new
    /// master is started with, replacing any inherited value.
    pub fn pass_on(&self, env: &mut Vec<(OsString, OsString)>) {
        env.retain(|(k, _)| k != UPGRADE_COUNTERS);
        env.push((UPGRADE_COUNTERS.into(), self.encode().into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Counters {
        let mut c = Counters::default();
        c.worker_exits.count(ExitReason::Crash);
        c.worker_exits.count(ExitReason::Recycled);
        c.respawns = 7;
        c.upgrades.done = 2;
        c.reloads.failed = 1;
        c.recycles.count(RecycleReason::Memory);
        c
    }

    #[test]
    fn round_trips_through_the_environment() {
        let mut env = vec![(OsString::from(UPGRADE_COUNTERS), OsString::from("stale"))];
        sample().pass_on(&mut env);
        assert_eq!(env.len(), 1);
        assert_eq!(Counters::inherited(&env), sample());
        assert!(sample().encode().len() < 400, "{}", sample().encode());
    }

    #[test]
    fn malformed_or_oversized_totals_start_from_zero() {
        for bad in [
            "",
            "{",
            "[1,2]",
            "{\"respawns\":-1}",
            "{\"respawns\":\"x\"}",
        ] {
            let env = vec![(OsString::from(UPGRADE_COUNTERS), OsString::from(bad))];
            assert_eq!(Counters::inherited(&env), Counters::default(), "{bad}");
        }
        let huge = format!("{{\"respawns\":1{}}}", " ".repeat(ENCODED_LIMIT));
        assert!(Counters::decode(&huge).unwrap_err().contains("more than"));
        assert_eq!(Counters::inherited(&[]), Counters::default());
    }

    #[test]
    fn fields_of_a_newer_or_older_release_are_tolerated() {
        let older = Counters::decode("{\"respawns\":3}").unwrap();
        assert_eq!(older.respawns, 3);
        let newer = Counters::decode("{\"respawns\":3,\"later\":1}").unwrap();
        assert_eq!(newer.respawns, 3);
    }
}
