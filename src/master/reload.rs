//! HUP: re-read the config file and replace the workers one slot at a time
//! (at most `max_surge` replacements booting at once). A replacement that
//! fails to become ready stops the rollout; the old workers still running
//! keep serving and the previous configuration stays in force.
//!
//! While this master is the old side of an upgrade, HUP instead brings back
//! its workers from the configuration in memory (the nginx rollback).

use super::{Master, Phase, UpgradeRole};
use crate::config::{self, Config};
use crate::spawn::WorkerTemplate;
use crate::status::RolloutStatus;
use std::collections::VecDeque;
use std::time::Instant;

pub struct Rollout {
    /// Slots still to replace, in order.
    queue: VecDeque<usize>,
    /// How many slots it set out to replace, for `status`.
    total: usize,
    /// What to go back to if a replacement fails; `None` while rolling
    /// back (a failure then just stops).
    previous: Option<(Config, WorkerTemplate, u32)>,
    /// The new generation of an in-place upgrade (USR2): every slot at
    /// once, and the outcome recorded as the upgrade's.
    pub upgrade: bool,
}

impl Master {
    pub(super) fn on_hup(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            log::info!("event=signal signal=HUP action=ignored reason=stopping");
            return;
        }
        if matches!(self.role, UpgradeRole::Old(_)) {
            log::info!(
                "event=restore-workers workers={} reason=\"upgrade in progress: config not re-read\"",
                self.config.workers
            );
            self.change_target(self.config.workers);
            return;
        }
        if self.rollout.as_ref().is_some_and(|r| r.upgrade) {
            log::info!(
                "event=signal signal=HUP action=deferred reason=\"in-place upgrade rolling over\""
            );
            self.hup_after_upgrade = true;
            return;
        }
        // Read first: an invalid file must not disturb a rollout in progress.
        let reloaded = self.reloaded_config();
        if reloaded.is_ok() {
            self.abandon_rollout("superseded by a new HUP", now);
        }
        self.reloads.begin(now);
        self.notify_reloading("reloading (HUP)");
        match reloaded {
            Ok((config, template)) => self.start_rollout(config, template, false, now),
            Err(why) => {
                log::error!(
                    "event=reload-failed reason=\"{why}\" action=\"nothing changed\"",
                    why = crate::logging::esc(&why)
                );
                self.reloads.end(Some(why));
                if self.rollout.is_none() {
                    self.notify_ready();
                }
            }
        }
    }

    /// The config file read afresh with the flags laid over it, and the
    /// worker template it makes.
    fn reloaded_config(&self) -> Result<(Config, WorkerTemplate), String> {
        let mut config = if self.config.config_path.is_some() {
            config::load(&self.launch.flags, &self.launch.command)?
        } else {
            self.config.clone()
        };
        if config.listeners != self.config.listeners {
            log::warn!(
                "event=reload listeners=unchanged reason=\"a change of listeners needs USR2 (upgrade)\""
            );
            config.listeners = self.config.listeners.clone();
        }
        if config.pid_file != self.config.pid_file {
            log::warn!("event=reload pid=unchanged reason=\"a new pid file needs a restart (stop, then start)\"");
            config.pid_file = self.config.pid_file.clone();
        }
        let template = WorkerTemplate::new(
            &config,
            &self.listeners,
            &self.launch.env,
            &self.notify.env_value,
            self.generations_issued + 1,
        )?;
        if (&config.stdout_path, &config.stderr_path)
            != (&self.config.stdout_path, &self.config.stderr_path)
        {
            log::warn!(
                "event=reload log_files=unchanged reason=\"new log files need USR2 (upgrade)\""
            );
            config.stdout_path = self.config.stdout_path.clone();
            config.stderr_path = self.config.stderr_path.clone();
        }
        Ok((config, template))
    }

    pub(super) fn start_rollout(
        &mut self,
        config: Config,
        template: WorkerTemplate,
        upgrade: bool,
        now: Instant,
    ) {
        // Its replacements would take the slots of recycles booting.
        self.cancel_recycles(now);
        // As Unicorn's HUP: the file's worker count wins over TTIN/TTOU/WINCH.
        let running = self.pool.target();
        if running != self.config.workers && running != config.workers {
            log::info!(
                "event=reload workers={} previous={running} reason=\"config sets the worker count; TTIN/TTOU changes are not kept\"",
                config.workers
            );
        }
        let old_config = std::mem::replace(&mut self.config, config);
        let old_template = std::mem::replace(&mut self.template, template);
        let previous = (old_config, old_template, self.generation);
        self.generations_issued += 1;
        self.generation = self.generations_issued;
        self.change_target(self.config.workers);
        let target = self.pool.target();
        let queue: VecDeque<usize> = self.pool.slots()[..self.pool.slots().len().min(target)]
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_some())
            .map(|(i, _)| i)
            .collect();
        if upgrade {
            log::info!(
                "event=upgrade-start mode=in-place generation={} workers={target}",
                self.generation
            );
        } else {
            log::info!(
                "event=reload-start generation={} workers={target} max_surge={}",
                self.generation,
                self.config.max_surge
            );
        }
        self.rollout = Some(Rollout {
            total: queue.len(),
            queue,
            previous: Some(previous),
            upgrade,
        });
        self.advance_rollout(now);
    }

    /// How far the rollout in progress has come, for `status`: slots done
    /// are those neither queued nor booting a replacement.
    pub(super) fn rollout_status(&self) -> Option<RolloutStatus> {
        let rollout = self.rollout.as_ref()?;
        let pending = rollout.queue.len()
            + self.pool.booting_replacements()
            + self.preload.pending_incoming();
        Some(RolloutStatus {
            replaced: rollout.total.saturating_sub(pending),
            total: rollout.total,
            rollback: rollout.previous.is_none(),
        })
    }

    /// Boots replacements up to `max_surge`; ends the rollout when all are in.
    pub(super) fn advance_rollout(&mut self, now: Instant) {
        if self.hup_after_upgrade && !self.rollout.as_ref().is_some_and(|r| r.upgrade) {
            self.hup_after_upgrade = false;
            log::info!("event=signal signal=HUP action=resumed reason=\"in-place upgrade ended\"");
            self.on_hup(now);
            return;
        }
        let Some(rollout) = &mut self.rollout else {
            return;
        };
        // With `--preload`, replacements asked of the preloader boot too.
        let mut booting = self.pool.booting_replacements() + self.preload.pending_incoming();
        let mut starts = Vec::new();
        let upgrade = rollout.upgrade;
        let surge = match rollout.upgrade {
            true => usize::MAX,
            false => self.config.max_surge,
        };
        while booting < surge {
            let Some(slot) = rollout.queue.pop_front() else {
                break;
            };
            // An emptied slot is filled by scaling, with the new template.
            let occupied = self.pool.slot(slot).is_some_and(|s| s.active.is_some());
            if slot < self.pool.target() && occupied {
                starts.push(slot);
                booting += 1;
            }
        }
        let done = rollout.queue.is_empty() && booting == 0;
        let spawned: Vec<i32> = starts
            .into_iter()
            .filter_map(|slot| self.spawn_worker(slot, true, now))
            .collect();
        self.restart_ready_clocks(&spawned, now);
        // An in-place upgrade is done, as `upgrade --wait` sees it, once no
        // worker of an older generation is left (so its duration is the
        // whole of it, not just until the new workers were ready).
        let generation = self.generation;
        let old_left = upgrade && self.pool.workers().any(|w| w.generation != generation);
        if !done || old_left {
            return;
        }
        if let Some(rollout) = self.rollout.take() {
            if rollout.previous.is_some() && rollout.upgrade {
                self.upgrades.end(None);
                // A deferred HUP runs in the next pass.
                self.dirty = true;
                log::info!(
                    "event=upgrade-done mode=in-place generation={} workers={}",
                    self.generation,
                    self.pool.target()
                );
            } else if rollout.previous.is_some() {
                self.reloads.end(None);
                log::info!(
                    "event=reload-done generation={} workers={}",
                    self.generation,
                    self.pool.target()
                );
            } else {
                log::info!("event=rollback-done generation={}", self.generation);
            }
            self.log_if_all_ready();
        }
    }

    /// A replacement failed: stop the rollout, go back to the previous
    /// configuration, keep the old workers still running, and replace the
    /// slots already rolled forward with workers of the previous
    /// configuration again (one at a time, as a rollout), so no worker of
    /// the abandoned configuration is left.
    pub(super) fn fail_rollout(&mut self, reason: String, now: Instant) {
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        self.stop_incoming(now);
        let Some((config, template, generation)) = rollout.previous else {
            log::error!(
                "event=rollback-failed reason=\"{reason}\" action=\"stopped\"",
                reason = crate::logging::esc(&reason)
            );
            return;
        };
        let what = match rollout.upgrade {
            true => "upgrade-failed mode=in-place",
            false => "reload-failed",
        };
        log::error!(
            "event={what} reason=\"{reason}\" action=\"back to generation {generation}\"",
            reason = crate::logging::esc(&reason)
        );
        let abandoned = self.generation;
        self.config = config;
        self.template = template;
        self.generation = generation;
        self.change_target(self.config.workers);
        match rollout.upgrade {
            true => self.upgrades.end(Some(reason)),
            false => self.reloads.end(Some(reason)),
        }
        self.notify_ready();
        let queue: VecDeque<usize> = (self.pool.slots().iter().enumerate())
            .filter(|(_, s)| {
                let active = s.active.and_then(|pid| self.pool.get(pid));
                active.is_some_and(|w| w.generation == abandoned)
            })
            .map(|(i, _)| i)
            .collect();
        if !queue.is_empty() {
            log::info!("event=rollback-start slots={}", queue.len());
            self.rollout = Some(Rollout {
                total: queue.len(),
                queue,
                previous: None,
                upgrade: false,
            });
        }
        self.dirty = true;
    }

    /// The generation a failing rollout would go back to, while one is in
    /// progress (its preloader is kept until then).
    pub(super) fn rollout_fallback_generation(&self) -> Option<u32> {
        let (_, _, generation) = self.rollout.as_ref()?.previous.as_ref()?;
        Some(*generation)
    }

    /// Ends a rollout without rolling back (a stop, or a newer HUP).
    pub(super) fn abandon_rollout(&mut self, why: &str, now: Instant) {
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        log::info!(
            "event=reload-abandoned reason=\"{why}\"",
            why = crate::logging::esc(&why)
        );
        self.stop_incoming(now);
        match (rollout.previous.is_some(), rollout.upgrade) {
            (true, true) => self.upgrades.end(Some(format!("abandoned: {why}"))),
            (true, false) => self.reloads.end(Some(format!("abandoned: {why}"))),
            (false, _) => {}
        }
    }

    fn stop_incoming(&mut self, now: Instant) {
        self.drop_queued_incoming();
        for pid in self.pool.incoming_pids() {
            self.stop_worker(pid, false, now);
        }
    }
}
