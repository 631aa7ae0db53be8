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

    /// Takes the earliest timer due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

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
}
