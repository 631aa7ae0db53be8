//! The workers and their slots. `Pool` alone edits either, so what the
//! master derives from them (ready workers, booting replacements, slots to
//! fill) stays true by construction and is read in O(1): no event scans
//! every slot, whatever the number of workers.
//!
//! A slot (`FORKMASTER_WORKER`) holds at most one *active* worker, the one
//! serving it, and during a rolling restart one *incoming* replacement. A
//! worker asked to stop leaves its slot at once; it stays in the pool,
//! detached, until it is reaped.

use crate::plan::{self, Action};
use crate::worker::{KillReason, Worker, WorkerState};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A worker position, stable across respawns.
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

/// Where a worker stood when it left the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It served its slot.
    Active,
    /// It was booting to replace its slot's worker.
    Incoming,
    /// It had been asked to stop and had left its slot.
    Detached,
}

/// A worker that became ready.
pub struct Readied {
    pub slot: usize,
    pub boot: Duration,
    /// It was a replacement and took over its slot (a rolling restart).
    pub took_over: bool,
    /// The worker it replaced there, to be stopped.
    pub replaced: Option<i32>,
}

#[derive(Default)]
pub struct Pool {
    workers: HashMap<i32, Worker>,
    slots: Vec<Slot>,
    /// How many workers we want (config, then TTIN/TTOU/WINCH, retirement).
    target: usize,
    /// Active workers that are ready.
    ready: usize,
    /// Slots with a replacement booting.
    incoming: usize,
    /// Slots below the target with no active worker and no backoff pending.
    fillable: BTreeSet<usize>,
}

impl Pool {
    pub fn new(target: usize, now: Instant) -> Pool {
        let mut pool = Pool::default();
        pool.set_target(target, now);
        pool
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// Active workers that are ready.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Replacements booting (a rolling restart's surge).
    pub fn booting_replacements(&self) -> usize {
        self.incoming
    }

    /// Every worker, stopping ones included.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn get(&self, pid: i32) -> Option<&Worker> {
        self.workers.get(&pid)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn pids(&self) -> Vec<i32> {
        self.workers.keys().copied().collect()
    }

    pub fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Wants `target` workers: slots newly below it become fillable (unless
    /// backing off); workers at or above it are stopped by the next `scale`.
    pub fn set_target(&mut self, target: usize, now: Instant) {
        let previous = std::mem::replace(&mut self.target, target);
        drop(self.fillable.split_off(&target));
        for i in previous..target {
            if self.is_fillable(i, now) {
                self.fillable.insert(i);
            }
        }
    }

    fn is_fillable(&self, slot: usize, now: Instant) -> bool {
        slot < self.target
            && self
                .slots
                .get(slot)
                .is_none_or(|s| s.active.is_none() && s.retry_at.is_none_or(|at| at <= now))
    }

    /// What brings the pool to its target: stop the workers of slots at or
    /// above it, fill the fillable slots below it. Costs O(actions).
    pub fn scale(&self) -> Vec<Action> {
        let above = self.slots.get(self.target..).unwrap_or_default();
        let occupied = above
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_some())
            .map(|(i, _)| self.target + i);
        plan::scale(occupied, self.fillable.iter().copied())
    }

    /// Forgets emptied slots beyond the target (their history goes too).
    pub fn trim(&mut self) {
        while self.slots.len() > self.target
            && self
                .slots
                .last()
                .is_some_and(|s| s.active.is_none() && s.incoming.is_none())
        {
            self.slots.pop();
        }
    }

    /// Adds a worker just forked for `slot`: as its active worker, or as the
    /// incoming replacement of a rolling restart.
    pub fn insert(&mut self, worker: Worker, incoming: bool) {
        let slot = worker.slot;
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        let s = &mut self.slots[slot];
        if incoming {
            if s.incoming.replace(worker.pid).is_none() {
                self.incoming += 1;
            }
        } else {
            s.active = Some(worker.pid);
            s.retry_at = None;
            self.fillable.remove(&slot);
        }
        self.workers.insert(worker.pid, worker);
    }

    /// A booting worker became ready (`READY=1` or its delay passed). A
    /// replacement takes over its slot; the worker it replaces is returned,
    /// to be stopped. `None` if it was not booting.
    pub fn mark_ready(
        &mut self,
        pid: i32,
        now: Instant,
        watchdog: Option<Instant>,
    ) -> Option<Readied> {
        let worker = self.workers.get_mut(&pid)?;
        if !matches!(worker.state, WorkerState::Booting { .. }) {
            return None;
        }
        worker.state = WorkerState::Ready {
            since: now,
            watchdog,
        };
        worker.was_ready = Some(now);
        let slot = worker.slot;
        let boot = now.duration_since(worker.started);
        let (mut took_over, mut replaced) = (false, None);
        if let Some(s) = self.slots.get_mut(slot).filter(|s| s.incoming == Some(pid)) {
            s.incoming = None;
            self.incoming -= 1;
            replaced = s.active.replace(pid);
            took_over = true;
            self.fillable.remove(&slot);
        }
        if let Some(old) = replaced {
            if self.workers.get(&old).is_some_and(Worker::is_ready) {
                self.ready -= 1;
            }
        }
        self.ready += 1;
        Some(Readied {
            slot,
            boot,
            took_over,
            replaced,
        })
    }

    /// Marks a worker stopping, to be killed at `kill_at`; it leaves its
    /// slot. A worker already stopping is only hurried (`quick`), never given
    /// more time. Returns its slot and its kill deadline, or `None` when
    /// there is nothing to do.
    pub fn mark_stopping(
        &mut self,
        pid: i32,
        kill_at: Instant,
        quick: bool,
        now: Instant,
    ) -> Option<(usize, Instant)> {
        let worker = self.workers.get_mut(&pid)?;
        let kill_at = match worker.state {
            WorkerState::Stopping { .. } if !quick => return None,
            WorkerState::Stopping { kill_at: earlier } => kill_at.min(earlier),
            _ => kill_at,
        };
        let was_ready = worker.is_ready();
        worker.state = WorkerState::Stopping { kill_at };
        let slot = worker.slot;
        self.leave_slot(pid, slot, was_ready);
        if self.is_fillable(slot, now) {
            self.fillable.insert(slot);
        }
        Some((slot, kill_at))
    }

    /// Takes a reaped worker out of the pool, with where it stood.
    pub fn remove(&mut self, pid: i32) -> Option<(Worker, Role)> {
        let worker = self.workers.remove(&pid)?;
        let role = self.leave_slot(pid, worker.slot, worker.is_ready());
        Some((worker, role))
    }

    fn leave_slot(&mut self, pid: i32, slot: usize, was_ready: bool) -> Role {
        let Some(s) = self.slots.get_mut(slot) else {
            return Role::Detached;
        };
        if s.active == Some(pid) {
            s.active = None;
            if was_ready {
                self.ready -= 1;
            }
            Role::Active
        } else if s.incoming == Some(pid) {
            s.incoming = None;
            self.incoming -= 1;
            Role::Incoming
        } else {
            Role::Detached
        }
    }

    /// Restarts a booting worker's ready clock at `deadline`; whether it was booting.
    pub fn restart_ready_clock(&mut self, pid: i32, deadline: Instant) -> bool {
        match self.workers.get_mut(&pid).map(|w| &mut w.state) {
            Some(WorkerState::Booting { deadline: old }) => {
                *old = deadline;
                true
            }
            _ => false,
        }
    }

    /// Sets when a booting worker counts as ready (`ready: delay:...`).
    pub fn set_ready_at(&mut self, pid: i32, at: Instant) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.ready_at = Some(at);
        }
    }

    /// Moves a ready worker's watchdog deadline (it pinged).
    pub fn postpone_watchdog(&mut self, pid: i32, deadline: Instant) {
        if let Some(Worker {
            state: WorkerState::Ready {
                watchdog: Some(at), ..
            },
            ..
        }) = self.workers.get_mut(&pid)
        {
            *at = deadline;
        }
    }

    /// Remembers why the master is killing a worker; its slot.
    pub fn set_killed(&mut self, pid: i32, reason: KillReason) -> Option<usize> {
        let worker = self.workers.get_mut(&pid)?;
        worker.killed = Some(reason);
        Some(worker.slot)
    }

    /// Counts a worker's death against its slot: `restarts`, and the failures
    /// in a row that set the backoff (reset by a healthy run of `ready_for`).
    pub fn count_death(&mut self, slot: usize, ready_for: Option<Duration>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.failures = plan::failures_after_exit(s.failures, ready_for);
            s.restarts += 1;
        }
    }

    /// Counts a failure to even start a worker in `slot` (fork failed).
    pub fn count_spawn_failure(&mut self, slot: usize) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        let s = &mut self.slots[slot];
        s.failures = s.failures.saturating_add(1);
    }

    /// The slot's worker ended with `why`: it is filled again after its
    /// backoff. Returns the backoff, its failures in a row, and when to
    /// retry if it must wait (`None`: it is fillable now).
    pub fn schedule_respawn(
        &mut self,
        slot: usize,
        why: String,
        now: Instant,
    ) -> Option<(Duration, u32, Option<Instant>)> {
        let s = self.slots.get_mut(slot)?;
        s.last_exit = Some(why);
        let delay = plan::backoff(s.failures);
        s.retry_at = (!delay.is_zero()).then(|| now + delay);
        let (failures, retry_at) = (s.failures, s.retry_at);
        // A slot whose spawn failed before any worker took it (a fork that
        // failed, a preloader's failed spawn) is still fillable: it waits
        // out its backoff like one whose worker died.
        if self.is_fillable(slot, now) {
            self.fillable.insert(slot);
        } else {
            self.fillable.remove(&slot);
        }
        Some((delay, failures, retry_at))
    }

    /// When a backing-off slot may be filled, if it still waits.
    pub fn retry_at(&self, slot: usize) -> Option<Instant> {
        self.slots.get(slot)?.retry_at
    }

    /// The backoff set for `at` is over: the slot may be filled.
    pub fn end_backoff(&mut self, slot: usize, now: Instant) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.retry_at = None;
        }
        if self.is_fillable(slot, now) {
            self.fillable.insert(slot);
        }
    }

    /// Sets a slot's history as an old image of an in-place upgrade kept it.
    pub fn restore_history(
        &mut self,
        slot: usize,
        failures: u32,
        restarts: u32,
        last_exit: Option<String>,
    ) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        let s = &mut self.slots[slot];
        s.failures = failures;
        s.restarts = restarts;
        s.last_exit = last_exit;
    }

    /// Sets when a worker was first ready (an in-place upgrade's restore).
    pub fn set_was_ready(&mut self, pid: i32, at: Instant) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.was_ready = Some(at);
        }
    }

    /// The replacements booting now.
    pub fn incoming_pids(&self) -> Vec<i32> {
        self.slots.iter().filter_map(|s| s.incoming).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(slot: usize, pid: i32, now: Instant) -> Worker {
        Worker::new(slot, pid, now, Duration::from_secs(60), 1)
    }

    #[test]
    fn counts_follow_every_transition() {
        let now = Instant::now();
        let mut pool = Pool::new(2, now);
        assert_eq!(pool.scale(), vec![Action::Spawn(0), Action::Spawn(1)]);
        pool.insert(worker(0, 10, now), false);
        pool.insert(worker(1, 11, now), false);
        assert_eq!(pool.scale(), vec![]);
        pool.mark_ready(10, now, None).unwrap();
        pool.mark_ready(11, now, None).unwrap();
        assert!(pool.mark_ready(11, now, None).is_none());
        assert_eq!(pool.ready(), 2);

        // A rolling restart: the replacement takes the slot when ready.
        pool.insert(worker(0, 20, now), true);
        assert_eq!(pool.booting_replacements(), 1);
        let readied = pool.mark_ready(20, now, None).unwrap();
        assert_eq!(readied.replaced, Some(10));
        assert_eq!((pool.ready(), pool.booting_replacements()), (2, 0));
        assert_eq!(pool.mark_stopping(10, now, false, now), Some((0, now)));
        assert_eq!(pool.ready(), 2, "a replaced worker no longer counted");
        assert_eq!(pool.remove(10).map(|(_, r)| r), Some(Role::Detached));

        // An active worker dies: its slot backs off, then is fillable.
        pool.remove(11).unwrap();
        assert_eq!(pool.ready(), 1);
        pool.count_death(1, None);
        let (delay, failures, retry_at) = pool.schedule_respawn(1, "crashed".into(), now).unwrap();
        assert_eq!((delay, failures), (plan::backoff(1), 1));
        assert_eq!(pool.scale(), vec![]);
        pool.end_backoff(1, retry_at.unwrap());
        assert_eq!(pool.scale(), vec![Action::Spawn(1)]);
    }

    #[test]
    fn a_slot_whose_spawn_failed_waits_out_its_backoff() {
        let now = Instant::now();
        let mut pool = Pool::new(1, now);
        assert_eq!(pool.scale(), vec![Action::Spawn(0)]);
        // No worker ever took the slot: the spawn itself failed.
        pool.count_spawn_failure(0);
        let (delay, _, retry_at) = pool.schedule_respawn(0, "fork".into(), now).unwrap();
        assert_eq!(delay, plan::backoff(1));
        assert_eq!(pool.scale(), vec![], "not before its backoff ends");
        pool.end_backoff(0, retry_at.unwrap());
        assert_eq!(pool.scale(), vec![Action::Spawn(0)]);
    }

    #[test]
    fn shrinking_stops_highest_first_and_trims() {
        let now = Instant::now();
        let mut pool = Pool::new(3, now);
        for (slot, pid) in [(0, 10), (1, 11), (2, 12)] {
            pool.insert(worker(slot, pid, now), false);
        }
        pool.set_target(1, now);
        assert_eq!(pool.scale(), vec![Action::Stop(2), Action::Stop(1)]);
        pool.mark_stopping(12, now, false, now);
        pool.mark_stopping(11, now, false, now);
        pool.trim();
        assert_eq!(pool.slots().len(), 1);
        assert_eq!(pool.len(), 3, "stopping workers stay until reaped");
        pool.set_target(2, now);
        assert_eq!(pool.scale(), vec![Action::Spawn(1)]);
    }

    #[test]
    fn a_stopped_worker_below_the_target_leaves_its_slot_fillable() {
        let now = Instant::now();
        let mut pool = Pool::new(1, now);
        pool.insert(worker(0, 10, now), false);
        pool.mark_ready(10, now, None);
        pool.mark_stopping(10, now, false, now);
        assert_eq!(pool.ready(), 0);
        assert_eq!(pool.scale(), vec![Action::Spawn(0)]);
    }
}
