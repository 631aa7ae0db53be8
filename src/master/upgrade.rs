//! USR2, both sides of it.
//!
//! The old master renames its pid file to `PIDFILE.oldbin` and forks a child
//! that execs the forkmaster binary anew, from the start directory and with
//! the start environment, handing the listeners over (see `handoff`). If
//! that new master exits before taking over, the old one renames the pid file
//! back, restores its worker count and keeps serving.
//!
//! The new master retires the old one as its own workers become ready:
//! `retire: gradual` sends TTOU per ready worker and QUIT when all are,
//! `all` sends QUIT when all are, `manual` leaves it to the operator.
//!
//! With `upgrade_mode: in-place` (or `auto` as PID 1) USR2 goes to
//! `inplace` instead: the master execs the new binary itself.

use super::workers::ExitStatus;
use super::{Master, Phase};
use crate::config::Retire;
use crate::error::errno_reason;
use crate::handoff::{self, Predecessor};
use crate::pidfile;
use crate::status::OperationState;
use crate::sys::{self, ExecPlan};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use std::ffi::{CString, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Instant;

/// This master's part in an upgrade.
pub enum UpgradeRole {
    None,
    /// We are the old master: we started this new one, which takes over.
    Old(NewMaster),
    /// We are the new master, started by this old one (which may have
    /// exited since). `quit_sent`: it was told to retire.
    New {
        old: Predecessor,
        quit_sent: bool,
    },
    /// An in-place upgrade checks the new binary (`-t`) before the exec.
    Preflight(super::inplace::Preflight),
}

/// The new master we started.
pub struct NewMaster {
    pub pid: i32,
    /// Our worker count when it started, restored if it fails.
    workers_before: usize,
    /// Why it failed, as it told us before exiting.
    report: Option<String>,
}

impl UpgradeRole {
    pub fn new_master_of(old: Predecessor) -> UpgradeRole {
        UpgradeRole::New {
            old,
            quit_sent: false,
        }
    }

    /// The new master we started, while it runs.
    pub fn new_master(&self) -> Option<i32> {
        match self {
            UpgradeRole::Old(new) => Some(new.pid),
            _ => None,
        }
    }

    /// A child this role started itself (the new master of a fork upgrade,
    /// an in-place upgrade's `-t` check): never a stray.
    pub fn own_child(&self) -> Option<i32> {
        self.new_master().or_else(|| self.preflight())
    }

    /// The pid of the in-place upgrade's `-t` check, while it runs.
    pub fn preflight(&self) -> Option<i32> {
        match self {
            UpgradeRole::Preflight(check) => Some(check.pid),
            _ => None,
        }
    }

    /// When the in-place upgrade's `-t` check must have answered.
    pub fn preflight_deadline(&self) -> Option<Instant> {
        match self {
            UpgradeRole::Preflight(check) => Some(check.deadline),
            _ => None,
        }
    }

    /// The old master that started us.
    pub fn old_master(&self) -> Option<Predecessor> {
        match self {
            UpgradeRole::New { old, .. } => Some(*old),
            _ => None,
        }
    }

    /// Whether the old master that started us still runs. It forked us, so
    /// it is our parent until it exits: no pid is probed that could have
    /// been reused.
    pub fn old_master_runs(&self) -> bool {
        self.old_master()
            .is_some_and(|old| nix::unistd::getppid().as_raw() == old.pid)
    }
}

impl Master {
    /// An upgrade is under way: we started a new master that runs, or we
    /// are the new master and not all our workers are ready yet.
    pub(super) fn upgrade_in_progress(&self) -> bool {
        match self.role {
            // An in-place upgrade rolling its new generation in.
            UpgradeRole::None => self.rollout.as_ref().is_some_and(|r| r.upgrade),
            UpgradeRole::Old(_) | UpgradeRole::Preflight(_) => true,
            UpgradeRole::New { .. } => self.upgrades.state == OperationState::InProgress,
        }
    }

    pub(super) fn on_usr2(&mut self, now: Instant) {
        if let Some(why) = self.upgrade_refusal() {
            log::warn!(
                "event=upgrade-refused reason=\"{why}\"",
                why = crate::logging::esc(&why)
            );
            return;
        }
        if let Some(reason) = self.upgrade_in_place() {
            self.begin_in_place(reason, now);
            return;
        }
        self.upgrades.begin(now);
        self.notify_reloading("upgrading (USR2)");
        if let Err(why) = self.hand_off_pid_file() {
            self.fail_upgrade(why);
            return;
        }
        // The new master's metrics go on from our totals.
        self.counters_now().pass_on(&mut self.launch.env);
        match self.exec_new_master() {
            Ok(pid) => {
                log::info!(
                    "event=upgrade-start role=old new_master={pid} program={}",
                    crate::logging::esc(self.launch.program().display())
                );
                self.health_handed = self.health.is_some();
                self.role = UpgradeRole::Old(NewMaster {
                    pid,
                    workers_before: self.pool.target(),
                    report: None,
                });
            }
            Err(why) => {
                self.restore_pid_file();
                self.fail_upgrade(why);
            }
        }
    }

    /// Why a USR2 must be refused now, if it must.
    fn upgrade_refusal(&self) -> Option<String> {
        if self.phase != Phase::Running {
            return Some("stopping".into());
        }
        if let Some(new) = self.role.new_master() {
            return Some(format!("an upgrade is in progress: new master pid={new}"));
        }
        if let Some(old) = self
            .role
            .old_master()
            .filter(|_| self.role.old_master_runs())
        {
            return Some(format!(
                "the old master pid={} is still running: retire it first",
                old.pid
            ));
        }
        if self.role.preflight().is_some() {
            return Some("an in-place upgrade is checking the new binary".into());
        }
        if let Some(rollout) = &self.rollout {
            return Some(match rollout.upgrade {
                true => "an in-place upgrade is in progress".into(),
                false => "a rolling restart (HUP) is in progress".into(),
            });
        }
        let oldbin = self.config.pid_file.as_deref().map(pidfile::oldbin_path)?;
        match pidfile::read_pid(&oldbin) {
            Ok(Some(pid)) if pid != self.pid && pidfile::is_alive(pid) => {
                Some(format!("{} names live process {pid}", oldbin.display()))
            }
            _ => None,
        }
    }

    /// Renames the pid file to `.oldbin` so the new master can write its own.
    fn hand_off_pid_file(&self) -> Result<(), String> {
        let Some(path) = &self.config.pid_file else {
            return Ok(());
        };
        let oldbin = pidfile::oldbin_path(path);
        match std::fs::rename(path, &oldbin) {
            Ok(()) => Ok(()),
            // Someone removed it: write the .oldbin afresh.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                pidfile::write_pid(&oldbin, self.pid).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!(
                "rename {} to {}: {}",
                path.display(),
                oldbin.display(),
                crate::error::io_reason(&e)
            )),
        }
    }

    /// Puts the pid file back after a failed upgrade, unless a live process
    /// other than us holds it.
    fn restore_pid_file(&self) {
        let Some(path) = &self.config.pid_file else {
            return;
        };
        match pidfile::read_pid(path) {
            Ok(Some(pid)) if pid != self.pid && pidfile::is_alive(pid) => {
                log::warn!(
                    "event=pid-file-kept path={} pid={pid} reason=\"a live process holds it\"",
                    crate::logging::esc(path.display())
                );
                return;
            }
            _ => {}
        }
        let oldbin = pidfile::oldbin_path(path);
        let renamed = matches!(pidfile::read_pid(&oldbin), Ok(Some(pid)) if pid == self.pid)
            && std::fs::rename(&oldbin, path).is_ok();
        if !renamed {
            if let Err(e) = pidfile::write_pid(path, self.pid) {
                log::error!(
                    "event=pid-file-restore-failed error=\"{e}\"",
                    e = crate::logging::esc(&e)
                );
            }
        }
    }

    /// Forks and execs the new master with the listeners inherited.
    fn exec_new_master(&mut self) -> Result<i32, String> {
        let program = cstring(
            self.launch.program().into_os_string().into_vec(),
            "program path",
        )?;
        let argv = self.exec_argv()?;
        let fds = self.handed_listeners();
        let health_fd = self.health.as_ref().map(|h| h.listener_fd());
        let mut env = handoff::upgrade_env(
            &self.launch.env,
            &fds,
            self.pid,
            self.generations_issued,
            self.notify.path(),
            self.config
                .pid_file
                .as_deref()
                .and_then(pidfile::canonical)
                .as_deref(),
        );
        if let Some(fd) = health_fd {
            env.push((
                crate::protocol::UPGRADE_HEALTH_FD.into(),
                fd.to_string().into(),
            ));
        }
        let env = exec_env(env)?;
        let chdir = cstring(
            self.launch.start_dir.as_os_str().as_bytes().to_vec(),
            "the start directory",
        )?;
        let mut plan = ExecPlan::master(
            program,
            argv,
            env,
            Some(chdir),
            fds.iter().map(|h| h.fd).chain(health_fd).collect(),
            self.exec_errors_write.as_raw_fd(),
        );
        sys::spawn(&mut plan).map_err(|e| format!("fork: {}", errno_reason(e)))
    }

    /// The master's own command line, for the exec of a new binary.
    pub(super) fn exec_argv(&self) -> Result<Vec<CString>, String> {
        self.launch
            .args
            .iter()
            .map(|a| cstring(a.as_bytes().to_vec(), "an argument"))
            .collect()
    }

    /// The listeners as a new binary inherits them (`FORKMASTER_INHERIT_FDS`).
    pub(super) fn handed_listeners(&self) -> Vec<handoff::Handed> {
        self.listeners
            .iter()
            .map(|l| handoff::Handed {
                fd: l.fd.as_raw_fd(),
                address: l.bound.clone(),
                external: l.external,
                name: l.systemd_name.clone(),
            })
            .collect()
    }

    fn fail_upgrade(&mut self, why: String) {
        log::error!(
            "upgrade failed: {why} event=upgrade-failed",
            why = crate::logging::esc(&why)
        );
        self.upgrades.end(Some(why));
        // The new master may have told systemd it was the main process.
        self.notify_systemd(&format!(
            "MAINPID={}\nREADY=1\n{}",
            self.pid,
            self.status_line()
        ));
    }

    /// The new master exited (we reaped it). Before it took over, this is a
    /// failed upgrade: take the pid file back and restore the workers.
    pub(super) fn on_new_master_exit(
        &mut self,
        status: ExitStatus,
        exec_failure: Option<String>,
        _now: Instant,
    ) {
        let UpgradeRole::Old(upgrade) = std::mem::replace(&mut self.role, UpgradeRole::None) else {
            return;
        };
        if self.phase != Phase::Running {
            log::info!(
                "event=new-master-exit pid={} {} phase=stopping",
                upgrade.pid,
                status.fields()
            );
            return;
        }
        let reason = match (exec_failure, upgrade.report) {
            (Some(exec), _) => exec,
            (None, Some(report)) => format!("new master pid={}: {report}", upgrade.pid),
            (None, None) => format!("new master pid={} {status} before taking over", upgrade.pid),
        };
        self.restore_pid_file();
        if self.pool.target() < upgrade.workers_before {
            self.change_target(upgrade.workers_before);
        }
        log::info!(
            "event=rollback workers={} pid={}",
            self.pool.target(),
            self.pid
        );
        self.fail_upgrade(reason);
    }

    /// New master: one more of our workers is ready. With `retire: gradual`
    /// the old master retires one of its own per ready new worker.
    pub(super) fn on_new_worker_ready(&mut self) {
        let UpgradeRole::New {
            old,
            quit_sent: false,
        } = self.role
        else {
            return;
        };
        if self.config.retire != Retire::Gradual {
            return;
        }
        let ready = self.pool.ready();
        let message = crate::protocol::retire_message(ready);
        if self.tell_old_master(&message) {
            log::debug!("event=retire-step old_master={} ready={ready}", old.pid);
        }
    }

    /// New master: sends `message` to the old master's notify socket, at the
    /// path it passed us; whether it was sent.
    pub(super) fn tell_old_master(&self, message: &str) -> bool {
        self.launch
            .predecessor_notify
            .as_deref()
            .is_some_and(|path| crate::ipc::notify::send_to_master(path, message).is_ok())
    }

    /// Old master: a message from the new master we started.
    pub(super) fn on_new_master_message(&mut self, message: crate::ipc::notify::Message) {
        let UpgradeRole::Old(upgrade) = &mut self.role else {
            return;
        };
        if let Some(reason) = message.upgrade_failed {
            upgrade.report = Some(reason);
        }
        if let Some(ready) = message.retire {
            // As many TTOUs as the new master has ready workers.
            let target = upgrade.workers_before.saturating_sub(ready);
            let previous = self.pool.target();
            if target < previous && self.phase == Phase::Running {
                log::info!(
                    "event=scale reason=retire new_master={} ready={ready} workers={target} previous={previous}",
                    upgrade.pid,
                );
                self.pool.set_target(target, Instant::now());
                self.dirty = true;
            }
        }
    }

    /// All our workers are ready. A new master takes over: tells systemd it
    /// is the main process now, then retires the old master.
    pub(super) fn on_all_ready(&mut self) {
        // Ours to answer from now on: the old master stops answering.
        if let Some(health) = self.health_held.take() {
            self.health = Some(health);
        }
        let UpgradeRole::New {
            old,
            quit_sent: quit_sent @ false,
        } = &mut self.role
        else {
            // While a new master takes over, our worker count only shrinks
            // (TTOU): nothing to tell systemd, which follows the new master.
            if self.role.new_master().is_none() {
                self.notify_ready();
            }
            return;
        };
        *quit_sent = true;
        let old = *old;
        // The upgrade that made us is done: we serve with every worker.
        self.upgrades.end(None);
        // Before the old master exits, or systemd would stop the service.
        self.notify_systemd(&format!(
            "MAINPID={}\nREADY=1\n{}",
            self.pid,
            self.status_line()
        ));
        if !self.role.old_master_runs() {
            log::info!(
                "event=upgrade-done old_master={} reason=\"old master already gone\"",
                old.pid
            );
            if let Some(path) = &self.config.pid_file {
                pidfile::remove_if_ours(&pidfile::oldbin_path(path), old.pid);
            }
            return;
        }
        match self.config.retire {
            Retire::Manual => log::info!(
                "event=upgrade-ready old_master={} retire=manual action=\"send it WINCH then QUIT\" workers={}",
                old.pid,
                self.pool.ready()
            ),
            Retire::Gradual | Retire::All => {
                let _ = kill(Pid::from_raw(old.pid), NixSignal::SIGQUIT);
                log::info!("event=retire-old-master pid={} signal=QUIT", old.pid);
            }
        }
    }
}

/// `bytes` as a C string for an exec; `what` names it in the error.
pub(super) fn cstring(bytes: Vec<u8>, what: &str) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} holds a NUL byte"))
}

/// An exec's environment, `KEY=VALUE` C strings.
pub(super) fn exec_env(env: Vec<(OsString, OsString)>) -> Result<Vec<CString>, String> {
    env.into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            cstring(entry, "the environment")
        })
        .collect()
}
