//! A token bucket for log lines that outsiders can trigger (datagrams on the
//! notify socket from processes that are not workers, junk from a
//! preloader): a burst is logged in full, a flood is summarised instead of
//! filling the disk.

use std::time::{Duration, Instant};

pub struct LogBudget {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Option<Instant>,
    /// Lines suppressed since the last one logged.
    suppressed: u64,
}

impl LogBudget {
    pub fn new(capacity: u32, per_second: u32) -> LogBudget {
        LogBudget {
            tokens: capacity as f64,
            capacity: capacity as f64,
            per_second: per_second as f64,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log a line now; `Some(n)`: yes, and `n` were suppressed
    /// before it (to be said in it).
    pub fn take(&mut self, now: Instant) -> Option<u64> {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// The lines suppressed since the last one logged, now said in a
    /// summary of their own (a flood that ended logs no line to carry them).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_counted() {
        let t0 = Instant::now();
        let mut budget = LogBudget::new(3, 10);
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), None);
        assert_eq!(budget.take(t0), None);
        // 100 ms later one token is back, and the line says what it missed.
        assert_eq!(budget.take(t0 + Duration::from_millis(100)), Some(2));
        assert_eq!(budget.take(t0 + Duration::from_millis(100)), None);
        // Never more than the capacity, however long the quiet.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(budget.take(later), Some(1));
        assert_eq!(budget.take(later), Some(0));
        assert_eq!(budget.take(later), Some(0));
        assert_eq!(budget.take(later), None);
        assert_eq!(budget.take_suppressed(), 1);
        assert_eq!(budget.take_suppressed(), 0);
        assert_eq!(budget.take(later), None);
        assert_eq!(budget.take(later + Duration::from_millis(100)), Some(1));
    }
}
