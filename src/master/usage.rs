//! The memory and CPU figures `status` shows for the master and each
//! worker, read from /proc when a status is asked for (no timer: an idle
//! master still never wakes), and kept per process for "recent CPU %".
//!
//! Figures are read at most once per `REFRESH` per process: a client that
//! polls (`reload --wait` asks every 50 ms) gets the figures of the last
//! read meanwhile. Reading costs about 70 µs per process, mostly the
//! kernel building `smaps_rollup`; without the limit, polling a master of
//! a thousand workers would keep it busy reading /proc.

use crate::procfs;
use crate::status::Usage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How old figures may be before a status request reads them again. Also
/// the shortest window recent CPU % is measured over: CPU time comes in
/// 10 ms ticks, so a much shorter window would show 0% or several hundred.
const REFRESH: Duration = Duration::from_secs(1);

/// A process's figures as last read.
#[derive(Clone, Debug)]
struct Reading {
    /// When the process started: a pid reused by a later worker does not
    /// inherit the reading.
    started: Instant,
    at: Instant,
    usage: Usage,
}

/// The last reading of each process shown. Filled in by `status`, which
/// answers through a shared reference (the control socket's callback), so
/// it sits in a `RefCell`; the master is single-threaded.
#[derive(Default)]
pub struct Readings {
    last: RefCell<HashMap<i32, Reading>>,
}

/// One status request's readings: takes the previous ones, and keeps only
/// those of the processes shown this time once `finish`ed.
pub struct Sampling<'a> {
    readings: &'a Readings,
    previous: HashMap<i32, Reading>,
    next: HashMap<i32, Reading>,
    now: Instant,
}

impl Readings {
    pub fn begin(&self, now: Instant) -> Sampling<'_> {
        Sampling {
            readings: self,
            previous: self.last.take(),
            next: HashMap::new(),
            now,
        }
    }
}

impl Sampling<'_> {
    /// The figures of `pid`, a process started at `started`: as read less
    /// than `REFRESH` ago, or read now. A figure that cannot be read (the
    /// process vanished since it was listed) is `None`; nothing here fails.
    pub fn usage(&mut self, pid: i32, started: Instant) -> Usage {
        self.usage_with(pid, started, |pid| {
            (procfs::memory(pid), procfs::cpu_secs(pid))
        })
    }

    fn usage_with(
        &mut self,
        pid: i32,
        started: Instant,
        read: impl FnOnce(i32) -> (Option<procfs::Memory>, Option<f64>),
    ) -> Usage {
        let previous = self.previous.remove(&pid).filter(|r| r.started == started);
        if let Some(fresh) = previous
            .as_ref()
            .filter(|r| self.now.duration_since(r.at) < REFRESH)
        {
            let usage = fresh.usage.clone();
            self.next.insert(pid, fresh.clone());
            return usage;
        }
        let (memory, cpu_secs) = read(pid);
        // Since the last reading, or since the process started.
        let (since, cpu_then) = match previous {
            Some(Reading {
                at,
                usage:
                    Usage {
                        cpu_secs: Some(cpu),
                        ..
                    },
                ..
            }) => (at, cpu),
            _ => (started, 0.0),
        };
        let window = self.now.saturating_duration_since(since).as_secs_f64();
        let cpu_percent = cpu_secs
            .filter(|_| window > 0.0)
            .map(|cpu| 100.0 * (cpu - cpu_then).max(0.0) / window);
        let usage = Usage {
            rss_bytes: memory.map(|m| m.rss),
            pss_bytes: memory.map(|m| m.pss),
            private_bytes: memory.map(|m| m.private),
            shared_bytes: memory.map(|m| m.shared),
            cpu_secs,
            cpu_percent,
        };
        self.next.insert(
            pid,
            Reading {
                started,
                at: self.now,
                usage: usage.clone(),
            },
        );
        usage
    }

    /// Keeps this request's readings for the next one; the processes not
    /// shown this time (reaped) are forgotten.
    pub fn finish(self) {
        self.readings.last.replace(self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(secs: f64) -> impl FnOnce(i32) -> (Option<procfs::Memory>, Option<f64>) {
        move |_| (None, Some(secs))
    }

    #[test]
    fn recent_cpu_is_measured_from_the_previous_reading() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let mut first = readings.begin(t0 + Duration::from_secs(10));
        // Since start: 1 s of CPU over 10 s.
        assert_eq!(first.usage_with(7, t0, cpu(1.0)).cpu_percent, Some(10.0));
        first.finish();

        // Too soon after: the same figures, not read again.
        let mut soon = readings.begin(t0 + Duration::from_millis(10_100));
        let usage = soon.usage_with(7, t0, |_| panic!("read again"));
        assert_eq!((usage.cpu_secs, usage.cpu_percent), (Some(1.0), Some(10.0)));
        soon.finish();

        // A second later: measured from the reading at 10 s.
        let mut later = readings.begin(t0 + Duration::from_secs(11));
        let p = later.usage_with(7, t0, cpu(1.5)).cpu_percent.unwrap();
        assert!((p - 50.0).abs() < 1e-6, "{p}");
        later.finish();
        assert_eq!(readings.last.borrow()[&7].usage.cpu_secs, Some(1.5));
    }

    #[test]
    fn a_reused_pid_or_an_unlisted_process_starts_afresh() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let mut first = readings.begin(t0 + Duration::from_secs(10));
        first.usage_with(7, t0, cpu(5.0));
        first.usage_with(8, t0, cpu(5.0));
        first.finish();
        let t1 = t0 + Duration::from_secs(9);
        let mut next = readings.begin(t0 + Duration::from_secs(10));
        // Pid 7 is a new process now: read, and measured since its start.
        assert_eq!(next.usage_with(7, t1, cpu(0.5)).cpu_percent, Some(50.0));
        next.finish();
        assert!(!readings.last.borrow().contains_key(&8), "8 was not shown");
    }

    #[test]
    fn a_vanished_process_shows_no_figures() {
        let readings = Readings::default();
        let now = Instant::now();
        let mut sampling = readings.begin(now + Duration::from_secs(1));
        let usage = sampling.usage_with(7, now, |_| (None, None));
        assert_eq!(usage, Usage::default());
    }
}
