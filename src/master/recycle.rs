//! Recycling: a worker whose private memory went over `max_worker_memory`,
//! or that reached its `max_worker_age`, is replaced surge-first, as one
//! slot of a rolling restart: its replacement boots into the same slot as
//! the slot's incoming worker, and only once that one is ready does the old
//! worker get its stop signal. Capacity never drops: a replacement that
//! fails leaves the old worker serving, and its recycle is tried again
//! after a backoff.
//!
//! | limit | noticed by | cost |
//! |-|-|-|
//! | `max_worker_age` | a deadline per worker in the timer heap, drawn when it is ready, in `[age*(1-jitter), age]` from its start | nothing until due |
//! | `max_worker_memory` | a check every `memory_check_interval`: `smaps_rollup` of the ready workers | one read per ready worker |
//!
//! Nothing is armed unless a limit is set: without one, an idle master
//! still never wakes. At most `max_surge` recycles boot at once; none
//! starts during a HUP rolling restart or a USR2 upgrade (those due wait
//! for its end), and a HUP cancels those booting (it replaces every worker
//! anyway, with the new configuration; their old workers stay due). Limits
//! a fresh worker cannot meet never loop: an age deadline is at least
//! `Config::MIN_SERVE` after ready, and a memory limit that a worker
//! exceeds at its first check is logged once and backs memory recycles off.

use super::{Master, Phase};
use crate::config::Config;
use crate::duration::Human;
use crate::procfs;
use crate::status::{ExitReason, RecycleReason};
use crate::timers::Timer;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// The first retry after a failed replacement waits this long; each
/// further failure in a row doubles it, up to `RETRY_CAP`.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// A worker found due, waiting for its recycle to start.
#[derive(Clone, Copy, Debug)]
struct Due {
    reason: RecycleReason,
    /// Its private memory when found over the limit.
    private: Option<u64>,
}

/// A recycle under way: the replacement boots.
#[derive(Clone, Copy, Debug)]
struct Recycling {
    old: i32,
    slot: usize,
    due: Due,
}

/// What recycling keeps between events; the master's `recycler`.
pub struct Recycler {
    /// Each ready worker's age deadline, drawn once (moved by a retry).
    deadlines: HashMap<i32, Instant>,
    /// Workers due, in the order found, waiting for a place in the surge
    /// or for a rollout or upgrade to end; `queued` holds the same pids.
    due: VecDeque<(i32, Due)>,
    queued: HashSet<i32>,
    /// Replacement booting -> the recycle it carries out.
    booting: HashMap<i32, Recycling>,
    /// Old worker -> its replacement booting.
    replacing: HashMap<i32, i32>,
    /// Old workers stopped once replaced: their exit is `recycled`.
    retired: HashSet<i32>,
    /// Old workers whose replacement failed: failures in a row, and when
    /// they may be tried again.
    failures: HashMap<i32, (u32, Instant)>,
    /// The next memory check, while one is armed.
    memory_check: Option<Instant>,
    /// Ready workers whose memory has not been checked yet: one over the
    /// limit at its first check shows the limit below what a fresh worker
    /// needs.
    unchecked: HashSet<i32>,
    /// While the memory limit is too low for a fresh worker: how many times
    /// in a row that was found, and until when memory recycles wait.
    too_low: Option<(u32, Instant)>,
    jitter: Jitter,
}

impl Default for Recycler {
    fn default() -> Recycler {
        Recycler {
            deadlines: HashMap::new(),
            due: VecDeque::new(),
            queued: HashSet::new(),
            booting: HashMap::new(),
            replacing: HashMap::new(),
            retired: HashSet::new(),
            failures: HashMap::new(),
            memory_check: None,
            unchecked: HashSet::new(),
            too_low: None,
            jitter: Jitter::seeded(),
        }
    }
}

impl Recycler {
    /// Why `pid` is being recycled, as the old worker or its replacement.
    pub fn reason_of(&self, pid: i32) -> Option<RecycleReason> {
        let replacement = self.replacing.get(&pid).copied().unwrap_or(pid);
        self.booting.get(&replacement).map(|r| r.due.reason)
    }
}

/// A small non-cryptographic random source (xorshift64*), seeded per
/// master from the clock and the pid: jitter only has to differ between
/// workers, not be unpredictable.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A worker's age limit: `age` less up to `jitter_percent` of it, by
/// `unit` in [0, 1).
fn age_limit(age: Duration, jitter_percent: u32, unit: f64) -> Duration {
    let jitter = f64::from(jitter_percent.min(100)) / 100.0;
    age.mul_f64((1.0 - jitter * unit.clamp(0.0, 1.0)).max(0.0))
}

/// How long after its `failures`-th failed replacement in a row a worker
/// is tried again.
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(factor).min(RETRY_CAP)
}

impl Master {
    /// A worker became ready, before the worker it replaced (if any) is
    /// stopped: a recycle done is counted, and the limits are armed for
    /// the new worker.
    pub(super) fn note_ready_for_recycling(
        &mut self,
        pid: i32,
        replaced: Option<i32>,
        now: Instant,
    ) {
        if let Some(recycle) = self.recycler.booting.remove(&pid) {
            self.recycler.replacing.remove(&recycle.old);
            if replaced == Some(recycle.old) {
                self.recycler.retired.insert(recycle.old);
                self.recycler.failures.remove(&recycle.old);
                self.counters.recycles.count(recycle.due.reason);
                log::info!(
                    "worker={} pid={} event=recycle-ready replacement={pid} reason={}",
                    recycle.slot,
                    recycle.old,
                    recycle.due.reason.name()
                );
            }
        }
        self.arm_worker_age(pid, now);
        self.recycler.unchecked.insert(pid);
        self.arm_memory_check(now);
    }

    /// With `max_worker_age`: the worker's deadline, drawn now, and no
    /// sooner than `Config::MIN_SERVE` from now.
    fn arm_worker_age(&mut self, pid: i32, now: Instant) {
        let Some(age) = self.config.max_worker_age else {
            return;
        };
        let Some(started) = self.pool.get(pid).map(|w| w.started) else {
            return;
        };
        let unit = self.recycler.jitter.unit();
        let at = (started + age_limit(age, self.config.max_worker_age_jitter, unit))
            .max(now + Config::MIN_SERVE);
        self.recycler.deadlines.insert(pid, at);
        self.timers.add(at, Timer::WorkerAge(pid));
    }

    /// With `max_worker_memory`: the next check, unless one is armed.
    fn arm_memory_check(&mut self, now: Instant) {
        if self.config.max_worker_memory.is_none() || self.recycler.memory_check.is_some() {
            return;
        }
        let at = now + self.config.memory_check_interval;
        self.recycler.memory_check = Some(at);
        self.timers.add(at, Timer::MemoryCheck);
    }

    /// When a recycling timer should really fire; `None` if it no longer
    /// applies (the worker is gone or no longer ready, the check disarmed).
    pub(super) fn recycle_timer_due(&self, at: Instant, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::WorkerAge(pid) => {
                self.pool.get(pid).filter(|w| w.is_ready())?;
                self.recycler.deadlines.get(&pid).copied()
            }
            Timer::MemoryCheck => (self.recycler.memory_check == Some(at)).then_some(at),
            _ => Some(at),
        }
    }

    pub(super) fn fire_recycle_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::WorkerAge(pid) => self.on_worker_age(pid),
            Timer::MemoryCheck => self.check_memory(now),
            _ => {}
        }
    }

    /// A worker reached its age limit (or the retry of its recycle).
    fn on_worker_age(&mut self, pid: i32) {
        // A reload may have lifted the limit since it was armed.
        let armed = self.recycler.deadlines.remove(&pid).is_some();
        if armed && self.config.max_worker_age.is_some() {
            let due = Due {
                reason: RecycleReason::Age,
                private: None,
            };
            self.queue_recycle(pid, due);
        }
    }

    /// Reads the private memory of each ready worker not already being
    /// recycled (nor waiting out a retry), and queues those over the limit.
    fn check_memory(&mut self, now: Instant) {
        self.recycler.memory_check = None;
        let Some(limit) = self.config.max_worker_memory else {
            return;
        };
        self.arm_memory_check(now);
        if self.recycler.too_low.is_some_and(|(_, until)| now < until) {
            return;
        }
        let r = &self.recycler;
        let candidates: Vec<i32> = self
            .pool
            .workers()
            .filter(|w| w.is_ready())
            .map(|w| w.pid)
            .filter(|pid| !r.replacing.contains_key(pid) && !r.queued.contains(pid))
            .filter(|pid| r.failures.get(pid).is_none_or(|(_, at)| *at <= now))
            .collect();
        let mut over = Vec::new();
        let mut fresh_over = None;
        let mut fresh_under = false;
        for pid in candidates {
            let Some(memory) = procfs::memory(pid) else {
                continue;
            };
            let first = self.recycler.unchecked.remove(&pid);
            // Read anyway: the next status shows them, at no cost of its own.
            if let Some(started) = self.pool.get(pid).map(|w| w.started) {
                self.usage_readings.note_memory(pid, started, memory, now);
            }
            let private = memory.private;
            match (private > limit, first) {
                (true, true) => fresh_over = Some((pid, private)),
                (true, false) => over.push((pid, private)),
                (false, true) => fresh_under = true,
                (false, false) => {}
            }
        }
        if let Some((pid, private)) = fresh_over {
            self.memory_limit_too_low(pid, private, limit, now);
            return;
        }
        if fresh_under {
            self.recycler.too_low = None;
        }
        for (pid, private) in over {
            let due = Due {
                reason: RecycleReason::Memory,
                private: Some(private),
            };
            self.queue_recycle(pid, due);
        }
    }

    /// A worker was over the memory limit at its first check: the limit is
    /// below what a fresh worker needs, and recycling would only replace
    /// it with another over the limit, at every check. Memory recycles
    /// wait instead, longer each time in a row; logged once.
    fn memory_limit_too_low(&mut self, pid: i32, private: u64, limit: u64, now: Instant) {
        let times = self
            .recycler
            .too_low
            .map_or(0, |(n, _)| n)
            .saturating_add(1);
        let delay = retry_delay(times);
        self.recycler.too_low = Some((times, now + delay));
        if times == 1 {
            let slot = self.pool.get(pid).map_or(0, |w| w.slot);
            log::warn!(
                "worker={slot} pid={pid} event=recycle-limit-too-low private_bytes={private} limit_bytes={limit} action=\"memory recycles back off, up to {}\"",
                Human(RETRY_CAP)
            );
        }
    }

    fn queue_recycle(&mut self, pid: i32, due: Due) {
        if self.recycler.replacing.contains_key(&pid) || !self.recycler.queued.insert(pid) {
            return;
        }
        self.recycler.due.push_back((pid, due));
    }

    /// Starts the recycles due, up to `max_surge` booting at once, unless
    /// a rolling restart or an upgrade is in progress (they wait for its
    /// end). O(1) when none is due.
    pub(super) fn advance_recycles(&mut self, now: Instant) {
        if self.recycler.due.is_empty()
            || self.phase != Phase::Running
            || self.rollout.is_some()
            || self.upgrade_in_progress()
        {
            return;
        }
        let mut spawned = Vec::new();
        while self.pool.booting_replacements() < self.config.max_surge {
            let Some((pid, due)) = self.recycler.due.pop_front() else {
                break;
            };
            self.recycler.queued.remove(&pid);
            // A reload may have lifted the limit since it was found due.
            let limited = match due.reason {
                RecycleReason::Age => self.config.max_worker_age.is_some(),
                RecycleReason::Memory => self.config.max_worker_memory.is_some(),
            };
            if !limited {
                continue;
            }
            let Some(slot) = self.recyclable_slot(pid) else {
                continue;
            };
            let Some(replacement) = self.spawn_worker(slot, true, now) else {
                self.recycle_failed(pid, slot, due.reason, now);
                continue;
            };
            self.log_recycle(slot, pid, replacement, due, now);
            self.recycler.booting.insert(
                replacement,
                Recycling {
                    old: pid,
                    slot,
                    due,
                },
            );
            self.recycler.replacing.insert(pid, replacement);
            spawned.push(replacement);
        }
        self.restart_ready_clocks(&spawned, now);
    }

    /// The slot of `pid` if it still serves it alone, ready, below the target.
    fn recyclable_slot(&self, pid: i32) -> Option<usize> {
        let worker = self.pool.get(pid).filter(|w| w.is_ready())?;
        let slot = self.pool.slot(worker.slot)?;
        (slot.active == Some(pid) && slot.incoming.is_none() && worker.slot < self.pool.target())
            .then_some(worker.slot)
    }

    fn log_recycle(&self, slot: usize, pid: i32, replacement: i32, due: Due, now: Instant) {
        let why = match (due.reason, due.private) {
            (RecycleReason::Memory, Some(private)) => format!(
                "reason=memory private_bytes={private} limit_bytes={}",
                self.config.max_worker_memory.unwrap_or(0)
            ),
            _ => {
                let uptime = self
                    .pool
                    .get(pid)
                    .map_or(Duration::ZERO, |w| now - w.started);
                format!(
                    "reason={} uptime_ms={}",
                    due.reason.name(),
                    uptime.as_millis()
                )
            }
        };
        log::info!("worker={slot} pid={pid} event=recycle {why} replacement={replacement}");
    }

    /// A replacement could not start or died before ready: the old worker
    /// keeps serving and is tried again after a backoff.
    fn recycle_failed(&mut self, old: i32, slot: usize, reason: RecycleReason, now: Instant) {
        let entry = self.recycler.failures.entry(old).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let delay = retry_delay(entry.0);
        entry.1 = now + delay;
        log::warn!(
            "worker={slot} pid={old} event=recycle-failed reason={} failures={} retry_in={} action=\"old worker keeps serving\"",
            reason.name(),
            entry.0,
            Human(delay)
        );
        // A memory recycle is tried again at the first check after.
        if reason == RecycleReason::Age {
            self.recycler.deadlines.insert(old, now + delay);
            self.timers.add(now + delay, Timer::WorkerAge(old));
        }
    }

    /// A worker exited: it is forgotten here. Returns its exit reason,
    /// `recycled` for an old worker stopped once replaced. A replacement
    /// that died unasked fails its recycle.
    pub(super) fn note_recycling_exit(
        &mut self,
        pid: i32,
        reason: ExitReason,
        now: Instant,
    ) -> ExitReason {
        let r = &mut self.recycler;
        r.deadlines.remove(&pid);
        r.failures.remove(&pid);
        r.unchecked.remove(&pid);
        if r.queued.remove(&pid) {
            r.due.retain(|(p, _)| *p != pid);
        }
        // An old worker that died meanwhile: its replacement still takes the slot.
        r.replacing.remove(&pid);
        if r.retired.remove(&pid) && reason == ExitReason::Stopped {
            return ExitReason::Recycled;
        }
        let Some(recycle) = r.booting.remove(&pid) else {
            return reason;
        };
        r.replacing.remove(&recycle.old);
        let serving = self.phase == Phase::Running && self.pool.get(recycle.old).is_some();
        if reason == ExitReason::Stopped {
            log::info!(
                "worker={} pid={} event=recycle-cancelled replacement={pid}",
                recycle.slot,
                recycle.old
            );
            // Still due: recycled after the rollout that cancelled it, unless
            // that rollout replaces it first (its exit drops it from the queue).
            if serving {
                self.queue_recycle(recycle.old, recycle.due);
            }
        } else if serving {
            self.recycle_failed(recycle.old, recycle.slot, recycle.due.reason, now);
        }
        reason
    }

    /// A HUP: the replacements booting are stopped (the rollout replaces
    /// every worker, with the new configuration); the old workers serve on,
    /// still due, and are recycled once the rollout ends if it failed and
    /// left them serving.
    pub(super) fn cancel_recycles(&mut self, now: Instant) {
        let booting: Vec<i32> = self.recycler.booting.keys().copied().collect();
        for pid in booting {
            self.stop_worker(pid, false, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_limits_fall_in_the_jitter_band() {
        let age = Duration::from_secs(100);
        assert_eq!(age_limit(age, 10, 0.0), age);
        assert_eq!(age_limit(age, 0, 0.99), age);
        assert_eq!(age_limit(age, 10, 0.5), Duration::from_secs(95));
        assert_eq!(age_limit(age, 100, 1.0), Duration::ZERO);
        let mut jitter = Jitter(42);
        let limits: Vec<Duration> = (0..1000)
            .map(|_| age_limit(age, 10, jitter.unit()))
            .collect();
        assert!(limits
            .iter()
            .all(|d| *d > Duration::from_secs(90) && *d <= age));
        // Spread over the band, not bunched.
        let low = limits
            .iter()
            .filter(|d| **d < Duration::from_secs(95))
            .count();
        assert!((400..600).contains(&low), "{low}");
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_delay(1), RETRY_BASE);
        assert_eq!(retry_delay(2), RETRY_BASE * 2);
        assert_eq!(retry_delay(40), RETRY_CAP);
    }
}
