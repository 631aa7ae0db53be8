//! The memory and CPU figures `status` shows for the master and each
//! worker, and the last CPU sample per process that "recent CPU %" is
//! measured from. Sampled only when a status is asked for: no timer, so an
//! idle master still never wakes.

use crate::procfs;
use crate::status::Usage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// CPU time comes in 10 ms ticks: a window much shorter than this would
/// show 0% or several hundred. Requests closer together than this are
/// measured from the same, older sample.
const MIN_WINDOW: Duration = Duration::from_millis(250);

/// A process's CPU time at one moment, and the earlier moment its CPU %
/// was measured from.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// When the process started: a pid reused by a later worker does not
    /// inherit the sample.
    started: Instant,
    at: Instant,
    cpu_secs: f64,
    base: (Instant, f64),
}

/// The last CPU sample of each process shown. Filled in by `status`, which
/// answers through a shared reference (the control socket's callback), so
/// it sits in a `RefCell`; the master is single-threaded.
#[derive(Default)]
pub struct CpuSamples {
    last: RefCell<HashMap<i32, Sample>>,
}

/// One status request's sampling: takes the previous samples, and keeps
/// only those of the processes shown this time once `finish`ed.
pub struct Sampling<'a> {
    samples: &'a CpuSamples,
    previous: HashMap<i32, Sample>,
    next: HashMap<i32, Sample>,
    now: Instant,
}

impl CpuSamples {
    pub fn begin(&self, now: Instant) -> Sampling<'_> {
        Sampling {
            samples: self,
            previous: self.last.take(),
            next: HashMap::new(),
            now,
        }
    }
}

impl Sampling<'_> {
    /// The figures of `pid`, a process started at `started`. A figure
    /// that cannot be read (the process vanished since it was listed) is
    /// `None`; nothing here fails.
    pub fn usage(&mut self, pid: i32, started: Instant) -> Usage {
        let memory = procfs::memory(pid);
        let cpu_secs = procfs::cpu_secs(pid);
        let cpu_percent = cpu_secs.and_then(|cpu| self.cpu_percent(pid, started, cpu));
        Usage {
            rss_bytes: memory.map(|m| m.rss),
            pss_bytes: memory.map(|m| m.pss),
            private_bytes: memory.map(|m| m.private),
            shared_bytes: memory.map(|m| m.shared),
            cpu_secs,
            cpu_percent,
        }
    }

    /// CPU % since the previous sample of `pid`, which this one replaces;
    /// if that is younger than `MIN_WINDOW`, it is kept and the CPU % is
    /// measured from where it was measured from. With no sample: since the
    /// process started.
    fn cpu_percent(&mut self, pid: i32, started: Instant, cpu_secs: f64) -> Option<f64> {
        let previous = self
            .previous
            .get(&pid)
            .copied()
            .filter(|s| s.started == started && s.cpu_secs <= cpu_secs);
        let base = match previous {
            Some(s) if self.now.duration_since(s.at) < MIN_WINDOW => {
                self.next.insert(pid, s);
                s.base
            }
            Some(s) => (s.at, s.cpu_secs),
            None => (started, 0.0),
        };
        self.next.entry(pid).or_insert(Sample {
            started,
            at: self.now,
            cpu_secs,
            base,
        });
        let window = self.now.duration_since(base.0).as_secs_f64();
        (window > 0.0).then(|| 100.0 * (cpu_secs - base.1).max(0.0) / window)
    }

    /// Keeps this request's samples for the next one; the processes not
    /// shown this time (reaped) are forgotten.
    pub fn finish(self) {
        self.samples.last.replace(self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_cpu_is_measured_from_the_previous_request() {
        let samples = CpuSamples::default();
        let t0 = Instant::now();
        let mut first = samples.begin(t0 + Duration::from_secs(10));
        // Since start: 1 s of CPU over 10 s.
        assert_eq!(first.cpu_percent(7, t0, 1.0), Some(10.0));
        first.finish();

        // Too soon after: measured as that sample was, since start.
        let mut soon = samples.begin(t0 + Duration::from_millis(10_100));
        let p = soon.cpu_percent(7, t0, 1.01).unwrap();
        assert!((p - 10.0).abs() < 1e-6, "{p}");
        soon.finish();

        // A second later: from the sample at 10 s, which it replaces.
        let mut later = samples.begin(t0 + Duration::from_secs(11));
        let p = later.cpu_percent(7, t0, 1.5).unwrap();
        assert!((p - 50.0).abs() < 1e-6, "{p}");
        later.finish();
        assert_eq!(samples.last.borrow()[&7].cpu_secs, 1.5);

        // And soon after that: still from the sample at 10 s.
        let mut soon = samples.begin(t0 + Duration::from_millis(11_100));
        let p = soon.cpu_percent(7, t0, 1.55).unwrap();
        assert!((p - 50.0).abs() < 1e-6, "{p}");
        soon.finish();
    }

    #[test]
    fn a_reused_pid_or_an_unlisted_process_starts_afresh() {
        let samples = CpuSamples::default();
        let t0 = Instant::now();
        let mut first = samples.begin(t0 + Duration::from_secs(10));
        first.cpu_percent(7, t0, 5.0);
        first.cpu_percent(8, t0, 5.0);
        first.finish();
        let t1 = t0 + Duration::from_secs(9);
        let mut next = samples.begin(t0 + Duration::from_secs(11));
        // Pid 7 is a new process now: measured since its start.
        assert_eq!(next.cpu_percent(7, t1, 0.5), Some(25.0));
        next.finish();
        assert!(!samples.last.borrow().contains_key(&8), "8 was not shown");
    }
}
