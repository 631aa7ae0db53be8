//! Worker arithmetic as pure functions: which slots to fill or empty, and how
//! long a crash-looping slot waits. The master executes what these return, so
//! the rules are unit-tested without forking anything.

use std::time::Duration;

/// The first respawn after a failure waits this long; each further failure
/// in a row doubles it, up to `BACKOFF_CAP`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A worker ready for this long was healthy: its slot's failure count resets.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Boot failures in a row, before any worker was ever ready, that make the
/// master give up at first start.
pub const STARTUP_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn(usize),
    /// Gracefully stop the slot's worker (the slot is beyond the target).
    Stop(usize),
}

/// What brings the slots to the target: stop the workers of the `occupied`
/// slots at or above it, highest first; fill the `fillable` slots below it,
/// lowest first. The pool keeps both sets, so this costs O(actions).
pub fn scale(
    occupied: impl DoubleEndedIterator<Item = usize>,
    fillable: impl Iterator<Item = usize>,
) -> Vec<Action> {
    occupied
        .rev()
        .map(Action::Stop)
        .chain(fillable.map(Action::Spawn))
        .collect()
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

    #[test]
    fn stops_highest_first_then_fills_lowest_first() {
        assert_eq!(
            scale([3, 5].into_iter(), [0, 2].into_iter()),
            vec![
                Action::Stop(5),
                Action::Stop(3),
                Action::Spawn(0),
                Action::Spawn(2)
            ]
        );
        assert_eq!(scale([].into_iter(), [].into_iter()), vec![]);
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
