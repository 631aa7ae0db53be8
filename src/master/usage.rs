//! The memory and CPU figures `status` (and `/metrics`) shows for the
//! master and each worker, read from /proc when a status is asked for (no
//! timer: an idle master still never wakes), and kept per process for
//! "recent CPU %".
//!
//! Two kinds of figures, of two costs:
//!
//! | figures | source | cost | read again when |
//! |-|-|-|-|
//! | CPU time, CPU % | `stat` | a few us | older than `REFRESH` (1 s) |
//! | RSS, PSS, private, shared | `smaps_rollup` | about 70 us (the kernel walks every mapping) | older than `MEMORY_REFRESH` (10 s), within `MEMORY_BUDGET` (20 ms) a second |
//!
//! A process with no `smaps_rollup` reading yet shows the RSS of `stat`
//! (the kernel's counters, read with the CPU time) and no PSS, private or
//! shared.
//!
//! So a status of a thousand workers reads every worker's CPU but
//! spends at most `MEMORY_BUDGET` on `smaps_rollup`: on processes with no
//! such figures yet, and on stale ones only if no request had that budget
//! within the last second; the others show their last such figures with
//! their age (`memory_age_secs`), or none yet. The memory check of `max_worker_memory` reads
//! `smaps_rollup` anyway: its figures are kept here too (`note_memory`).
//! A client that polls (`reload --wait` asks every 50 ms) gets the figures
//! of the last read meanwhile.

use crate::procfs::{self, Memory};
use crate::status::Usage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How old RSS and CPU figures may be before a status request reads them
/// again. Also the shortest window recent CPU % is measured over: CPU time
/// comes in 10 ms ticks, so a much shorter window would show 0% or several
/// hundred.
const REFRESH: Duration = Duration::from_secs(1);
/// How old `smaps_rollup` figures may be before a status request reads
/// them again (budget permitting).
const MEMORY_REFRESH: Duration = Duration::from_secs(10);
/// The most a status request spends reading `smaps_rollup`: about 300
/// processes' worth, so that a status of a thousand workers stays well
/// under 50 ms. Figures grown stale are read again only by one request per
/// `MEMORY_BUDGET_EVERY`, so a client polling every 50 ms costs the master
/// at most 2% of a core once every process has figures; a process with
/// none yet (a new worker) is read by any request, within the budget.
const MEMORY_BUDGET: Duration = Duration::from_millis(20);
const MEMORY_BUDGET_EVERY: Duration = Duration::from_secs(1);

/// Where the figures come from: /proc, or a test's fakes.
#[derive(Clone, Copy)]
struct Sources {
    stat: fn(i32) -> Option<procfs::Stat>,
    memory: fn(i32) -> Option<Memory>,
}

const PROC: Sources = Sources {
    stat: procfs::stat,
    memory: procfs::memory,
};

/// RSS and CPU as last read.
#[derive(Clone, Copy, Debug)]
struct Cheap {
    at: Instant,
    rss: Option<u64>,
    cpu_secs: Option<f64>,
    cpu_percent: Option<f64>,
}

/// A process's figures as last read.
#[derive(Clone, Debug)]
struct Reading {
    /// When the process started: a pid reused by a later worker does not
    /// inherit the reading.
    started: Instant,
    cheap: Option<Cheap>,
    /// `smaps_rollup` as last read, and when.
    memory: Option<(Instant, Memory)>,
}

/// The last reading of each process shown. Filled in by `status`, which
/// answers through a shared reference (the control socket's callback), so
/// it sits in a `RefCell`; the master is single-threaded.
#[derive(Default)]
pub struct Readings {
    last: RefCell<HashMap<i32, Reading>>,
    /// When a request last had the `smaps_rollup` budget.
    budget_given: std::cell::Cell<Option<Instant>>,
}

/// One status request's readings: takes the previous ones, and keeps only
/// those of the processes shown this time once `finish`ed.
pub struct Sampling<'a> {
    readings: &'a Readings,
    previous: HashMap<i32, Reading>,
    next: HashMap<i32, Reading>,
    now: Instant,
    /// Stale `smaps_rollup` figures are read again only until then.
    memory_until: Instant,
    /// A process with none yet is read until then, whatever the second.
    first_until: Instant,
}

impl Readings {
    pub fn begin(&self, now: Instant) -> Sampling<'_> {
        let budget = match self.budget_given.get() {
            Some(at) if now.saturating_duration_since(at) < MEMORY_BUDGET_EVERY => Duration::ZERO,
            _ => {
                self.budget_given.set(Some(now));
                MEMORY_BUDGET
            }
        };
        Sampling {
            readings: self,
            previous: self.last.take(),
            next: HashMap::new(),
            now,
            memory_until: now + budget,
            first_until: now + MEMORY_BUDGET,
        }
    }

    /// Keeps `smaps_rollup` figures read at `at` for another purpose (the
    /// memory check), for the next status to show.
    pub fn note_memory(&self, pid: i32, started: Instant, memory: Memory, at: Instant) {
        let mut last = self.last.borrow_mut();
        let reading = last.entry(pid).or_insert_with(|| Reading {
            started,
            cheap: None,
            memory: None,
        });
        if reading.started != started {
            *reading = Reading {
                started,
                cheap: None,
                memory: None,
            };
        }
        reading.memory = Some((at, memory));
    }
}

impl Sampling<'_> {
    /// The figures of `pid`, a process started at `started`: RSS and CPU
    /// as read less than `REFRESH` ago, or read now; PSS, private and
    /// shared as read less than `MEMORY_REFRESH` ago, or read now if the
    /// request's budget allows, else older ones with their age. A figure
    /// that cannot be read (the process vanished since it was listed) is
    /// `None`; nothing here fails.
    pub fn usage(&mut self, pid: i32, started: Instant) -> Usage {
        self.usage_with(pid, started, PROC, false)
    }

    /// As `usage`, but `smaps_rollup` is read whatever the budget (the
    /// master's own figures: one process).
    pub fn usage_in_full(&mut self, pid: i32, started: Instant) -> Usage {
        self.usage_with(pid, started, PROC, true)
    }

    fn usage_with(&mut self, pid: i32, started: Instant, read: Sources, full: bool) -> Usage {
        let previous = self.previous.remove(&pid).filter(|r| r.started == started);
        let (previous_cheap, previous_memory) = match previous {
            Some(r) => (r.cheap, r.memory),
            None => (None, None),
        };
        let cheap = match previous_cheap.filter(|c| self.now.duration_since(c.at) < REFRESH) {
            Some(fresh) => fresh,
            None => self.read_cheap(pid, started, previous_cheap, read),
        };
        let stale = previous_memory
            .is_none_or(|(at, _)| self.now.saturating_duration_since(at) >= MEMORY_REFRESH);
        let mut memory = previous_memory;
        let until = match previous_memory {
            None => self.first_until,
            Some(_) => self.memory_until,
        };
        if stale && (full || Instant::now() < until) {
            if let Some(read) = (read.memory)(pid) {
                memory = Some((self.now, read));
            }
        }
        self.next.insert(
            pid,
            Reading {
                started,
                cheap: Some(cheap),
                memory,
            },
        );
        Usage {
            // Of the same reading as PSS, private and shared, so that they
            // add up (stat's is the kernel's per-CPU estimate, of another
            // moment); stat's only for a process with no such reading yet.
            rss_bytes: memory.map(|(_, m)| m.rss).or(cheap.rss),
            pss_bytes: memory.map(|(_, m)| m.pss),
            private_bytes: memory.map(|(_, m)| m.private),
            shared_bytes: memory.map(|(_, m)| m.shared),
            memory_age_secs: memory
                .map(|(at, _)| self.now.saturating_duration_since(at).as_secs_f64()),
            cpu_secs: cheap.cpu_secs,
            cpu_percent: cheap.cpu_percent,
        }
    }

    /// RSS and CPU read now; CPU % since the last reading, or since the
    /// process started.
    fn read_cheap(
        &self,
        pid: i32,
        started: Instant,
        previous: Option<Cheap>,
        read: Sources,
    ) -> Cheap {
        let stat = (read.stat)(pid);
        let cpu_secs = stat.map(|s| s.cpu_secs);
        let (since, cpu_then) = match previous {
            Some(Cheap {
                at,
                cpu_secs: Some(cpu),
                ..
            }) => (at, cpu),
            _ => (started, 0.0),
        };
        let window = self.now.saturating_duration_since(since).as_secs_f64();
        Cheap {
            at: self.now,
            rss: stat.map(|s| s.rss),
            cpu_secs,
            cpu_percent: cpu_secs
                .filter(|_| window > 0.0)
                .map(|cpu| 100.0 * (cpu - cpu_then).max(0.0) / window),
        }
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
    use std::cell::Cell;

    thread_local! {
        static CPU: Cell<f64> = const { Cell::new(0.0) };
        static MEMORY_READS: Cell<u32> = const { Cell::new(0) };
    }

    fn fake_stat(_: i32) -> Option<procfs::Stat> {
        Some(procfs::Stat {
            cpu_secs: CPU.get(),
            rss: 12,
        })
    }

    fn fake_memory(_: i32) -> Option<Memory> {
        MEMORY_READS.set(MEMORY_READS.get() + 1);
        Some(Memory {
            rss: 10,
            pss: 5,
            private: 3,
            shared: 7,
        })
    }

    const FAKE: Sources = Sources {
        stat: fake_stat,
        memory: fake_memory,
    };

    fn usage(sampling: &mut Sampling, pid: i32, started: Instant, cpu: f64) -> Usage {
        CPU.set(cpu);
        sampling.usage_with(pid, started, FAKE, false)
    }

    #[test]
    fn recent_cpu_is_measured_from_the_previous_reading() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let mut first = readings.begin(t0 + Duration::from_secs(10));
        // Since start: 1 s of CPU over 10 s.
        assert_eq!(usage(&mut first, 7, t0, 1.0).cpu_percent, Some(10.0));
        first.finish();

        // Too soon after: the same figures, not read again.
        let mut soon = readings.begin(t0 + Duration::from_millis(10_100));
        let u = usage(&mut soon, 7, t0, 99.0);
        assert_eq!((u.cpu_secs, u.cpu_percent), (Some(1.0), Some(10.0)));
        soon.finish();

        // A second later: measured from the reading at 10 s.
        let mut later = readings.begin(t0 + Duration::from_secs(11));
        let p = usage(&mut later, 7, t0, 1.5).cpu_percent.unwrap();
        assert!((p - 50.0).abs() < 1e-6, "{p}");
        later.finish();
    }

    #[test]
    fn smaps_figures_are_kept_with_their_age_until_stale() {
        let readings = Readings::default();
        let t0 = Instant::now();
        MEMORY_READS.set(0);
        let mut first = readings.begin(t0);
        let u = usage(&mut first, 7, t0, 0.0);
        assert_eq!((u.pss_bytes, u.memory_age_secs), (Some(5), Some(0.0)));
        assert_eq!(u.rss_bytes, Some(10), "smaps_rollup's Rss, read with them");
        first.finish();
        let mut later = readings.begin(t0 + Duration::from_secs(4));
        let u = usage(&mut later, 7, t0, 0.0);
        assert_eq!((u.private_bytes, u.memory_age_secs), (Some(3), Some(4.0)));
        assert_eq!(u.rss_bytes, Some(10), "of the same reading as private");
        later.finish();
        assert_eq!(MEMORY_READS.get(), 1, "read once within MEMORY_REFRESH");
        let mut stale = readings.begin(t0 + MEMORY_REFRESH);
        assert_eq!(usage(&mut stale, 7, t0, 0.0).memory_age_secs, Some(0.0));
        assert_eq!(MEMORY_READS.get(), 2);
    }

    #[test]
    fn the_budget_is_given_once_a_second() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let first = readings.begin(t0);
        assert_eq!(first.memory_until, t0 + MEMORY_BUDGET);
        first.finish();
        let soon = readings.begin(t0 + Duration::from_millis(50));
        assert_eq!(soon.memory_until, t0 + Duration::from_millis(50));
        // New processes are read all the same.
        assert_eq!(
            soon.first_until,
            t0 + Duration::from_millis(50) + MEMORY_BUDGET
        );
        soon.finish();
        let later = readings.begin(t0 + MEMORY_BUDGET_EVERY);
        assert_eq!(later.memory_until, t0 + MEMORY_BUDGET_EVERY + MEMORY_BUDGET);
    }

    #[test]
    fn past_the_budget_smaps_waits_for_a_later_request() {
        let readings = Readings::default();
        let t0 = Instant::now();
        MEMORY_READS.set(0);
        let mut spent = readings.begin(t0);
        spent.memory_until = t0;
        spent.first_until = t0;
        let u = usage(&mut spent, 7, t0, 0.0);
        assert_eq!(
            (u.rss_bytes, u.pss_bytes, u.memory_age_secs),
            (Some(12), None, None)
        );
        assert_eq!(MEMORY_READS.get(), 0);
        // The master's own figures are read whatever the budget.
        let u = spent.usage_with(8, t0, FAKE, true);
        assert_eq!(u.pss_bytes, Some(5));
    }

    #[test]
    fn a_memory_check_feeds_the_next_status() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let memory = Memory {
            rss: 1,
            pss: 2,
            private: 99,
            shared: 4,
        };
        readings.note_memory(7, t0, memory, t0);
        MEMORY_READS.set(0);
        let mut next = readings.begin(t0 + Duration::from_secs(2));
        let u = usage(&mut next, 7, t0, 0.0);
        assert_eq!((u.private_bytes, u.memory_age_secs), (Some(99), Some(2.0)));
        assert_eq!(MEMORY_READS.get(), 0);
    }

    #[test]
    fn a_reused_pid_or_an_unlisted_process_starts_afresh() {
        let readings = Readings::default();
        let t0 = Instant::now();
        let mut first = readings.begin(t0 + Duration::from_secs(10));
        usage(&mut first, 7, t0, 5.0);
        usage(&mut first, 8, t0, 5.0);
        first.finish();
        let t1 = t0 + Duration::from_secs(9);
        let mut next = readings.begin(t0 + Duration::from_secs(10));
        // Pid 7 is a new process now: read, and measured since its start.
        assert_eq!(usage(&mut next, 7, t1, 0.5).cpu_percent, Some(50.0));
        next.finish();
        assert!(!readings.last.borrow().contains_key(&8), "8 was not shown");
    }

    #[test]
    fn a_vanished_process_shows_no_figures() {
        let readings = Readings::default();
        let now = Instant::now();
        let mut sampling = readings.begin(now + Duration::from_secs(1));
        let gone = Sources {
            stat: |_| None,
            memory: |_| None,
        };
        let usage = sampling.usage_with(7, now, gone, false);
        assert_eq!(usage, Usage::default());
    }
}
