//! Strays: processes a worker started that outlived it. The master is a
//! child subreaper, so a process whose parent dies is re-parented to it, not
//! to init; a child of the master that is not a worker, not a child the
//! master started itself (the new master of an upgrade, an in-place
//! upgrade's `-t` check, a preloader) and not in a live worker's process
//! group is a stray. A
//! stray is stopped as a worker is (the stop signal, SIGKILL at the graceful
//! timeout), and a stopping master exits only once its strays are gone.
//!
//! The master looks for strays (`find_strays`) in a pass that reaped a child
//! (a worker's exit hands its children to us, an unknown child's exit its
//! own) and when a stop begins: one bounded read of its own children list,
//! no scan of `/proc` and no per-worker work.
//!
//! Only verified targets are signalled: a stray is our child not yet reaped
//! (its pid cannot be reused before we reap it; every reaped pid leaves the
//! strays in the pass that reaps it, and each signal checks first that the
//! pid is still an unreaped child of ours), and its process group only
//! while it is a member and the group is its own or one a worker of ours
//! created (then that member keeps the group's number from being reused).

use super::{Master, Phase, QUICK_STOP_GRACE};
use crate::config::MAX_WORKERS;
use crate::duration::Human;
use crate::status::StrayStatus;
use crate::sys;
use crate::timers::Timer;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{getpgid, Pid};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// At most this many children are read per look: every worker (a rolling
/// restart's surge included) and then some.
const CHILDREN_LIMIT: usize = 4 * MAX_WORKERS;

/// A child of ours being stopped.
#[derive(Clone, Debug)]
pub struct Stray {
    /// Its process group when found.
    pub pgid: i32,
    /// What it was part of, for the log and `status`.
    pub of: String,
    /// When it gets SIGKILL; once `killed`, when we stop waiting for it.
    pub deadline: Instant,
    pub killed: bool,
}

/// The process group of an exited worker (pgid = the worker's pid).
#[derive(Clone, Debug)]
struct Group {
    /// What the worker was: `worker=2 pid=1234 generation=1`.
    of: String,
    /// When the worker was being stopped: its SIGKILL deadline. The group
    /// had the stop signal with it, so its members are not sent it twice
    /// (a second signal means "hurry" to many apps) and keep that deadline.
    stopping: Option<Instant>,
}

#[derive(Default)]
pub struct Strays {
    strays: HashMap<i32, Stray>,
    /// Process groups of exited workers, kept while a stray of the group is
    /// being stopped.
    groups: HashMap<i32, Group>,
    /// Still our children after SIGKILL and its grace (uninterruptible
    /// sleep): no longer waited for, never stopped again.
    abandoned: HashSet<i32>,
    /// A child may have been handed to us since the last look.
    look: bool,
    /// `/proc` did not list our children (logged once).
    unlisted: bool,
}

impl Strays {
    pub fn is_empty(&self) -> bool {
        self.strays.is_empty() && !self.look
    }

    /// Asks for a look at our children in this pass.
    pub fn look_again(&mut self) {
        self.look = true;
    }

    /// A worker exited (`stopping`: its SIGKILL deadline, if it was being
    /// stopped): its process group may outlive it.
    pub fn note_worker_group(&mut self, pid: i32, of: String, stopping: Option<Instant>) {
        self.groups.insert(pid, Group { of, stopping });
        self.look = true;
    }

    /// A reaped child: no longer a stray, nor abandoned.
    pub fn remove(&mut self, pid: i32) -> Option<Stray> {
        self.abandoned.remove(&pid);
        self.strays.remove(&pid)
    }

    /// Strays for `status`, by pid.
    pub fn statuses(&self, now: Instant) -> Vec<StrayStatus> {
        let mut out: Vec<StrayStatus> = self
            .strays
            .iter()
            .map(|(&pid, s)| StrayStatus {
                pid,
                pgid: s.pgid,
                of: s.of.clone(),
                killed: s.killed,
                deadline_secs: s.deadline.saturating_duration_since(now).as_secs_f64(),
            })
            .collect();
        out.sort_by_key(|s| s.pid);
        out
    }

    /// Drops the groups no stray is in any more.
    fn forget_empty_groups(&mut self) {
        if self.groups.is_empty() {
            return;
        }
        let used: HashSet<i32> = self.strays.values().map(|s| s.pgid).collect();
        self.groups.retain(|pgid, _| used.contains(pgid));
    }
}

impl Master {
    /// When a child may have been handed to us: stops every child that is
    /// neither a worker, nor the new master, nor in a live worker's group.
    pub(super) fn find_strays(&mut self, now: Instant) {
        if !std::mem::take(&mut self.strays.look) {
            return;
        }
        let Some(children) = sys::children(CHILDREN_LIMIT) else {
            if !std::mem::replace(&mut self.strays.unlisted, true) {
                log::warn!(
                    "event=strays-unlisted reason=\"/proc/self/task/*/children is missing: processes a worker leaves behind are not found\""
                );
            }
            return;
        };
        if self.preload.spawning() {
            // A worker forked by a preloader may be our child before it is
            // verified: look again once no spawn is in flight.
            self.strays.look_again();
            return;
        }
        let quick = self.phase == (Phase::Stopping { quick: true });
        for pid in children {
            if self.pool.get(pid).is_some()
                || self.role.own_child() == Some(pid)
                || self.preload.owns(pid)
                || self.strays.strays.contains_key(&pid)
                || self.strays.abandoned.contains(&pid)
            {
                continue;
            }
            let Ok(pgid) = getpgid(Some(Pid::from_raw(pid))) else {
                continue;
            };
            // Still in a live worker's group: stopped with that worker.
            if self.pool.get(pgid.as_raw()).is_none() {
                self.stop_stray(pid, pgid.as_raw(), quick, now);
            }
        }
        self.strays.forget_empty_groups();
    }

    /// A stop begins: look for strays, and hurry the ones being stopped
    /// when it is quick.
    pub(super) fn stop_all_strays(&mut self, quick: bool, now: Instant) {
        self.strays.look_again();
        if !quick {
            return;
        }
        let hurried: Vec<i32> = self
            .strays
            .strays
            .iter()
            .filter(|(_, s)| !s.killed && s.deadline > now + QUICK_STOP_GRACE)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in hurried {
            let deadline = now + QUICK_STOP_GRACE;
            if let Some(stray) = self.strays.strays.get_mut(&pid) {
                stray.deadline = deadline;
            }
            self.signal_stray(pid, NixSignal::SIGINT);
            self.timers.add(deadline, Timer::Kill(pid));
        }
    }

    fn stop_stray(&mut self, pid: i32, pgid: i32, quick: bool, now: Instant) {
        let (signal, grace) = if quick {
            (NixSignal::SIGINT, QUICK_STOP_GRACE)
        } else {
            (self.config.stop_signal, self.config.graceful_timeout)
        };
        let (of, stopping) = match self.strays.groups.get(&pgid) {
            Some(group) => (group.of.clone(), group.stopping),
            None => ("a process that left its worker's group".to_string(), None),
        };
        // Signalled with its worker's group: only the deadline is left.
        let deadline = stopping.map_or(now + grace, |at| at.min(now + grace));
        let signal = match stopping {
            Some(_) => None,
            None => Some(signal),
        };
        log::info!(
            "event=stray-stop pid={pid} pgid={pgid} of=\"{of}\" signal={} grace={}",
            signal.map_or("none", |s| s.as_str().trim_start_matches("SIG")),
            Human(deadline.saturating_duration_since(now))
        );
        self.strays.strays.insert(
            pid,
            Stray {
                pgid,
                of,
                deadline,
                killed: false,
            },
        );
        if let Some(signal) = signal {
            self.signal_stray(pid, signal);
        }
        self.timers.add(deadline, Timer::Kill(pid));
    }

    /// When a stray's `Kill` timer should fire, if it still applies.
    pub(super) fn stray_due(&self, pid: i32, at: Instant) -> Option<Instant> {
        let stray = self.strays.strays.get(&pid)?;
        (stray.deadline == at).then_some(at)
    }

    /// A stray's deadline passed: SIGKILL, or, if even that did not end it,
    /// stop waiting for it.
    pub(super) fn kill_stray(&mut self, pid: i32, now: Instant) {
        let Some(stray) = self.strays.strays.get_mut(&pid) else {
            return;
        };
        if stray.killed {
            log::warn!(
                "event=stray-abandoned pid={pid} of=\"{}\" reason=\"still there {} after SIGKILL\"",
                stray.of,
                Human(QUICK_STOP_GRACE)
            );
            self.strays.strays.remove(&pid);
            self.strays.abandoned.insert(pid);
            return;
        }
        stray.killed = true;
        stray.deadline = now + QUICK_STOP_GRACE;
        let deadline = stray.deadline;
        log::warn!(
            "event=stray-kill pid={pid} of=\"{}\" reason=\"did not stop in time\"",
            stray.of
        );
        self.signal_stray(pid, NixSignal::SIGKILL);
        self.timers.add(deadline, Timer::Kill(pid));
    }

    /// A child that was not a worker exited.
    /// `stray`: what it was being stopped as, taken out of the strays when
    /// it was reaped.
    pub(super) fn on_stray_exit(&mut self, pid: i32, stray: Option<Stray>, fields: String) {
        // Its children, if any, are ours now.
        self.strays.look_again();
        match stray {
            Some(stray) => log::info!("event=stray-exit pid={pid} of=\"{}\" {fields}", stray.of),
            None => log::debug!("event=stray-exit pid={pid} of=unknown {fields}"),
        }
    }

    /// Sends `signal` to a stray and, when the group is verified ours (see
    /// the module doc), to its whole process group.
    fn signal_stray(&self, pid: i32, signal: NixSignal) {
        let Some(stray) = self.strays.strays.get(&pid) else {
            return;
        };
        let target = Pid::from_raw(pid);
        // Only a child of ours not yet reaped: a reaped pid may be another
        // process's by now.
        if !unreaped_child(target) {
            return;
        }
        let still_in = getpgid(Some(target)).is_ok_and(|g| g.as_raw() == stray.pgid);
        let ours = stray.pgid == pid || self.strays.groups.contains_key(&stray.pgid);
        if !(still_in && ours && killpg(Pid::from_raw(stray.pgid), signal).is_ok()) {
            let _ = kill(target, signal);
        }
    }
}

/// Whether `pid` is a child of ours not yet reaped (running or a zombie).
fn unreaped_child(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
            Ok(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stray(pgid: i32, deadline: Instant) -> Stray {
        Stray {
            pgid,
            of: format!("pgid={pgid}"),
            deadline,
            killed: false,
        }
    }

    #[test]
    fn a_group_is_kept_while_a_stray_is_in_it() {
        let now = Instant::now();
        let mut strays = Strays::default();
        assert!(strays.is_empty());
        strays.note_worker_group(10, "worker=0 pid=10 generation=1".into(), None);
        strays.note_worker_group(11, "worker=1 pid=11 generation=1".into(), None);
        assert!(!strays.is_empty(), "a look is pending");
        strays.look = false;
        strays.strays.insert(20, stray(10, now));
        strays.forget_empty_groups();
        assert_eq!(strays.groups.keys().copied().collect::<Vec<_>>(), vec![10]);
        assert!(strays.remove(20).is_some());
        strays.forget_empty_groups();
        assert!(strays.groups.is_empty() && strays.is_empty());
    }

    #[test]
    fn only_unreaped_children_are_signalled() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(unreaped_child(pid), "running or a zombie: still ours");
        child.wait().unwrap();
        assert!(!unreaped_child(pid), "reaped: no longer ours");
        assert!(!unreaped_child(Pid::from_raw(1)), "not our child");
    }

    #[test]
    fn statuses_are_by_pid_with_time_left() {
        let now = Instant::now();
        let mut strays = Strays::default();
        strays
            .strays
            .insert(30, stray(30, now + Duration::from_secs(2)));
        strays.strays.insert(20, stray(10, now));
        let shown = strays.statuses(now);
        assert_eq!(shown.iter().map(|s| s.pid).collect::<Vec<_>>(), [20, 30]);
        assert_eq!(shown[0].deadline_secs, 0.0);
        assert_eq!(shown[1].deadline_secs, 2.0);
        assert_eq!(shown[1].of, "pgid=30");
    }
}
