//! Deadlines the loop sleeps until, in a heap: the next one is found in
//! O(1) and each is added or fired in O(log n), however many workers there are.
//!
//! Entries are never removed early. When one fires, the master checks it
//! against the worker's current deadline of that kind and ignores it if the
//! worker moved on (lazy deletion), so cancelling costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// `ready: delay:...` has passed for this worker.
    ReadyDelay(i32),
    /// This worker had until now to become ready.
    ReadyTimeout(i32),
    /// This worker had until now to send `WATCHDOG=1`.
    Watchdog(i32),
    /// This stopping worker had until now to exit.
    Kill(i32),
    /// This slot's backoff is over.
    Respawn(usize),
    /// Time to tell systemd we are alive (`WATCHDOG=1`).
    SystemdWatchdog,
    /// `shutdown_delay` is over: the graceful stop begins.
    ShutdownDelay,
    /// The new binary's `-t` of an in-place upgrade had until now.
    UpgradePreflight,
    /// This worker reached its `max_worker_age` (or its recycle is retried).
    WorkerAge(i32),
    /// Time to read the ready workers' private memory (`max_worker_memory`).
    MemoryCheck,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn add(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Brings the earliest entry up to date: `refresh` says when a timer should
    /// really fire (`None`: never). Stale entries are dropped and moved ones
    /// re-queued until the earliest is real, so the loop wakes only at real
    /// deadlines.
    pub fn settle(&mut self, mut refresh: impl FnMut(Instant, Timer) -> Option<Instant>) {
        while let Some(&Reverse((at, timer))) = self.heap.peek() {
            match refresh(at, timer) {
                Some(real) if real == at => return,
                Some(real) => {
                    self.heap.pop();
                    self.heap.push(Reverse((real, timer)));
                }
                None => {
                    self.heap.pop();
                }
            }
        }
    }

    /// Takes the earliest timer due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.add(t0 + Duration::from_secs(2), Timer::Kill(2));
        timers.add(t0 + Duration::from_secs(1), Timer::Respawn(0));
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(Timer::Respawn(0)));
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(Timer::Kill(2)));
        assert!(timers.is_empty());
    }

    #[test]
    fn settle_drops_stale_and_moves_postponed() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut timers = Timers::default();
        timers.add(t0, Timer::Kill(1));
        timers.add(t0 + Duration::from_secs(1), Timer::Watchdog(2));
        timers.add(t0 + Duration::from_secs(2), Timer::Respawn(3));
        timers.settle(|at, timer| match timer {
            Timer::Kill(_) => None,
            Timer::Watchdog(_) => Some(later),
            _ => Some(at),
        });
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(timers.len(), 2);
    }
}
