//! Worker arithmetic as pure functions: which slots to fill or empty, and how
//! long a crash-looping slot waits. The master executes what these return, so
//! the rules are unit-tested without forking anything.

use std::time::{Duration, Instant};

/// The first respawn after a failure waits this long; each further failure
/// in a row doubles it, up to `BACKOFF_CAP`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A worker ready for this long was healthy: its slot's failure count resets.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Boot failures in a row, before any worker was ever ready, that make the
/// master give up at first start.
pub const STARTUP_ATTEMPTS: u32 = 3;

/// A worker position (`FORKMASTER_WORKER`), stable across respawns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slot {
    /// The worker serving this slot, not counting ones being stopped.
    pub active: Option<i32>,
    /// Its replacement, booting during a rolling restart.
    pub incoming: Option<i32>,
    /// Failures in a row; 0 after a healthy run.
    pub failures: u32,
    /// While backing off: when the slot may be filled again.
    pub retry_at: Option<Instant>,
    /// Workers that died on their own in this slot.
    pub restarts: u32,
    pub last_exit: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn(usize),
    /// Gracefully stop the slot's worker (the slot is beyond the target).
    Stop(usize),
}

/// What brings the slots to `target` workers: fill empty slots below it that
/// are not backing off, lowest first; stop workers at or above it, highest first.
pub fn scale(target: usize, slots: &[Slot], now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for (i, slot) in slots.iter().enumerate().rev() {
        if i >= target && slot.active.is_some() {
            actions.push(Action::Stop(i));
        }
    }
    for i in 0..target {
        let vacant = slots.get(i).is_none_or(|s| s.active.is_none());
        let waiting = slots
            .get(i)
            .and_then(|s| s.retry_at)
            .is_some_and(|at| at > now);
        if vacant && !waiting {
            actions.push(Action::Spawn(i));
        }
    }
    actions
}

/// How long a slot waits after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 1).min(16);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP)
}

/// A worker's exit counts as a failure unless it had been ready and healthy
/// for `HEALTHY_AFTER`; the slot's new failure count.
pub fn failures_after_exit(previous: u32, ready_for: Option<Duration>) -> u32 {
    match ready_for {
        Some(d) if d >= HEALTHY_AFTER => 1,
        _ => previous.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(active: Option<i32>) -> Slot {
        Slot {
            active,
            ..Slot::default()
        }
    }

    #[test]
    fn fills_from_empty() {
        let now = Instant::now();
        assert_eq!(
            scale(3, &[], now),
            vec![Action::Spawn(0), Action::Spawn(1), Action::Spawn(2)]
        );
    }

    #[test]
    fn shrinks_highest_first() {
        let now = Instant::now();
        let slots = [slot(Some(10)), slot(Some(11)), slot(Some(12)), slot(None)];
        assert_eq!(
            scale(1, &slots, now),
            vec![Action::Stop(2), Action::Stop(1)]
        );
        assert_eq!(
            scale(0, &slots, now),
            vec![Action::Stop(2), Action::Stop(1), Action::Stop(0)]
        );
        assert_eq!(scale(3, &slots, now), vec![]);
    }

    #[test]
    fn waits_out_backoff() {
        let now = Instant::now();
        let mut s = slot(None);
        s.retry_at = Some(now + Duration::from_secs(1));
        assert_eq!(scale(1, &[s.clone()], now), vec![]);
        assert_eq!(
            scale(1, &[s], now + Duration::from_secs(1)),
            vec![Action::Spawn(0)]
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(20), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn healthy_run_resets_failures() {
        assert_eq!(failures_after_exit(5, Some(HEALTHY_AFTER)), 1);
        assert_eq!(failures_after_exit(5, Some(Duration::from_secs(1))), 6);
        assert_eq!(failures_after_exit(5, None), 6);
        assert_eq!(failures_after_exit(u32::MAX, None), u32::MAX);
    }
}
