//! Starting a master: load and check the configuration, detach if asked,
//! take or bind the listeners, write the pid file, then hand over to the
//! event loop (`master`).
//!
//! A master started by an upgrade (USR2) inherits its listeners and runs
//! where its old master put it; if it fails before its loop runs, it tells
//! the old master why, for `forkmaster upgrade --wait`.
//!
//! A master re-executed by an in-place upgrade (same pid) takes its old
//! image's handover first (`inplace`), before anything else may open an
//! fd. Nothing in its startup may then make it exit while the old workers
//! live: if its new configuration fails to load, or loads but cannot start
//! (a port taken, a log or socket directory missing, ...), it starts with
//! the old one carried in the state, the same listeners kept aside for it,
//! and records the upgrade failed (`serve`: one fallback for every step).

use crate::cli::MasterFlags;
use crate::config::{self, Config, ConfigError};
use crate::error::{Error, Result};
use crate::handoff::Inherited;
use crate::ipc::control::{self, QueryError, Search};
use crate::ipc::output::LogFiles;
use crate::ipc::rundir::{self, RunDir};
use crate::ipc::{notify, systemd};
use crate::launch::Launch;
use crate::listen::{Address, ListenSpec};
use crate::master::{Master, Resume};
use crate::sockets::Listener;
use crate::{daemon, logging, pidfile, protocol, sys};
use nix::sys::stat::Mode;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Runs a master until it stops. `Err` is printed by the caller, once; the
/// launching process of `--daemonize` and an old master waiting on this
/// upgrade have been told already.
pub fn run(flags: &MasterFlags, command: &[OsString]) -> Result<()> {
    let handover = (!flags.check).then(crate::inplace::take_from_env).flatten();
    let loaded = config::load(flags, command)
        .map_err(Error::Config)
        .and_then(keeps_the_pid_file);
    let (config, resume, handover_error) = match (loaded, handover) {
        (loaded, Some(Ok(handover))) => {
            let (config, resume) = in_place(loaded, handover, flags, command)?;
            (config, Some(resume), None)
        }
        (loaded, Some(Err(why))) => (loaded?, None, Some(why)),
        (loaded, None) => (loaded.inspect_err(report_to_old_master)?, None, None),
    };
    if flags.check {
        return check(&config);
    }
    let upgrading =
        std::env::var_os(protocol::UPGRADE_FROM).is_some() || crate::inplace::is_inplace();
    if config.daemonize && config.stderr_path.is_none() && !upgrading {
        eprintln!(
            "forkmaster: warning: --daemonize without --stderr-path: the log goes to /dev/null"
        );
    }
    // A master started by an upgrade runs where its old master put it.
    let report = (config.daemonize && !upgrading)
        .then(daemon::daemonize)
        .transpose()?;
    // A copy to report a failure with, once the master owns the original.
    let failure_report = report.as_ref().and_then(|r| r.try_clone().ok());
    logging::init(config.log_level.as_deref());
    if let Some(why) = handover_error {
        log::error!(
            "event=inplace-handover-lost error=\"{}\"",
            logging::esc(&why)
        );
    }
    serve(flags, command, config, report, resume).inspect_err(|e| {
        if let Some(report) = failure_report {
            let _ = nix::unistd::write(&report, format!("{e}\n").as_bytes());
        }
        report_to_old_master(e);
    })
}

/// In place: the configuration to start with, and what to resume. The
/// old workers are ours: if the new configuration cannot be loaded, or
/// would move the pid file, we run on with the one they were started with.
fn in_place(
    loaded: Result<Config>,
    handover: crate::inplace::Handover,
    flags: &MasterFlags,
    command: &[OsString],
) -> Result<(Config, Resume)> {
    let old = config::load_text(flags, command, handover.state.config_text.clone());
    let failure = match (&loaded, &old) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(new), Ok(old)) if new.pid_file != old.pid_file => Some(kept_for_life(
            "pid: an upgrade keeps the pid file",
            "to move the pid file",
            [&old.pid_file, &new.pid_file],
            "none",
        )),
        // The clients find the control socket under it (as through the pid
        // file): it moves at a restart, never under a running master.
        (Ok(new), Ok(old)) if new.runtime_dir != old.runtime_dir => Some(kept_for_life(
            "runtime_dir: an in-place upgrade keeps the runtime directory",
            "to move it",
            [&old.runtime_dir, &new.runtime_dir],
            "(default)",
        )),
        _ => None,
    };
    let old = old.ok();
    let config = match (loaded, &old) {
        (Ok(new), _) if failure.is_none() => new,
        (_, Some(old)) => old.clone(),
        (Ok(new), None) => new,
        // Neither loads: nothing to supervise the old workers with.
        (Err(e), None) => return Err(e),
    };
    let resume = Resume {
        handover,
        old_config: old,
        config_failure: failure,
    };
    Ok((config, resume))
}

/// Why a new configuration cannot move `paths` (old, new), a path kept for
/// the life of the process: `kept` and `to_move` word it, `unset` names no
/// path.
fn kept_for_life(
    kept: &str,
    to_move: &str,
    paths: [&Option<std::path::PathBuf>; 2],
    unset: &str,
) -> String {
    let [old, new] = paths.map(|p| {
        p.as_deref()
            .map_or_else(|| unset.to_string(), |p| p.display().to_string())
    });
    format!(
        "{kept} {old}, but the configuration now says {new}: {to_move}, stop and start the service"
    )
}

/// A new master of an upgrade keeps its old master's pid file: the clients
/// (`upgrade --wait`, init scripts) find the master through it, so one that
/// dropped or moved it would serve where nobody looks.
fn keeps_the_pid_file(config: Config) -> Result<Config> {
    let Some(old) = std::env::var_os(protocol::UPGRADE_PID_FILE).map(std::path::PathBuf::from)
    else {
        return Ok(config);
    };
    let new = config.pid_file.as_deref().and_then(pidfile::canonical);
    if new.as_deref() == Some(old.as_path()) {
        return Ok(config);
    }
    Err(Error::Config(ConfigError::Invalid(format!(
        "pid: an upgrade keeps the pid file {}, but the configuration now says {}: \
         to move the pid file, stop and start the service",
        old.display(),
        new.map_or_else(|| "none".to_string(), |p| p.display().to_string())
    ))))
}

/// `--check`: what would run, or why it cannot.
fn check(config: &Config) -> Result<()> {
    let activated = systemd::activated_fds(
        &std::env::vars_os().collect::<Vec<_>>(),
        std::process::id() as i32,
    );
    if config.listeners.is_empty() && activated.is_empty() {
        return Err(Error::Config(ConfigError::Invalid(
            config::NO_LISTENER.into(),
        )));
    }
    check_paths(config).map_err(|e| Error::Config(ConfigError::Invalid(e)))?;
    let mut out = std::io::stdout().lock();
    // A reader that went away (`| head`) is no failure of the config.
    let _ = writeln!(out, "{}configuration ok", config.describe());
    // Asked by an old image before it execs us in place: we read its state.
    if std::env::var_os(protocol::INPLACE_PREFLIGHT).is_some() {
        let _ = writeln!(
            out,
            "{}",
            protocol::inplace_version_line(crate::inplace::VERSION)
        );
    }
    Ok(())
}

/// What `--check` can see of a worker's start without starting one: the
/// working directory is a directory, and the program exists and may be
/// executed, found as a worker finds it (a bare name on the workers' `PATH`,
/// a relative path from the working directory). As the master's user: a
/// `user:` switch may still be refused at spawn.
fn check_paths(config: &Config) -> std::result::Result<(), String> {
    let reason = |e: &std::io::Error| crate::error::io_reason(e);
    let cwd = match &config.working_directory {
        Some(dir) => {
            let meta = std::fs::metadata(dir)
                .map_err(|e| format!("working_directory: {}: {}", dir.display(), reason(&e)))?;
            if !meta.is_dir() {
                return Err(format!(
                    "working_directory: {}: not a directory",
                    dir.display()
                ));
            }
            dir.clone()
        }
        None => std::env::current_dir().unwrap_or_default(),
    };
    let program = &config.command[0];
    let path_var = match config.env.get("PATH") {
        Some(path) => Some(OsString::from(path)),
        None => std::env::var_os("PATH"),
    };
    let found = crate::spawn::resolve_program(program, path_var.as_deref());
    if !found.as_os_str().as_bytes().contains(&b'/') {
        return Err(format!(
            "command: {}: not found on PATH ({})",
            found.display(),
            path_var
                .as_deref()
                .map_or("unset".into(), |p| p.to_string_lossy())
        ));
    }
    let path = cwd.join(&found);
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("command: {}: {}", path.display(), reason(&e)))?;
    if !meta.is_file() {
        return Err(format!("command: {}: not a regular file", path.display()));
    }
    if nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(format!("command: {}: not executable", path.display()));
    }
    Ok(())
}

fn serve(
    flags: &MasterFlags,
    command: &[OsString],
    config: Config,
    report: Option<OwnedFd>,
    resume: Option<Resume>,
) -> Result<()> {
    let launch = Launch::capture(flags, command);
    let mut inherited = Inherited::from_env(launch.inherited_fds.as_deref());
    inherited.add_activated(&systemd::activated_fds(
        &launch.env,
        std::process::id() as i32,
    ));
    // An upgrade's previous master (or image, in place) hands its health
    // listener over too.
    let handed_health = (launch.predecessor.is_some() || resume.is_some())
        .then(crate::ipc::health::HealthServer::take_handed)
        .flatten();
    let Some(resume) = resume else {
        return start(
            launch,
            config,
            report,
            (inherited, handed_health),
            &mut None,
        )?
        .run();
    };
    // In place the old workers are ours: the new configuration may not
    // start (a busy port, a missing directory), and then the old one, which
    // ran a moment ago with these same listeners, log files and runtime
    // directory, starts instead. The listeners are kept aside for it.
    let spare = inherited.try_clone();
    let spare_health = handed_health.as_ref().and_then(|fd| fd.try_clone().ok());
    let old_config = resume.old_config.clone();
    let mut resume = Some(resume);
    let failure = match start(
        launch,
        config,
        report,
        (inherited, handed_health),
        &mut resume,
    ) {
        Ok(master) => {
            drop(spare_health);
            // Not needed: held on, the duplicates would keep a listener the
            // new configuration dropped listening (a port nobody accepts
            // on) and hold the others twice.
            drop(spare);
            return master.run();
        }
        Err(e) => e,
    };
    let (Some(mut resume), Some(old_config), Ok(spare)) = (resume, old_config, spare) else {
        return Err(failure);
    };
    if resume.config_failure.is_some() {
        // That was the old configuration already.
        return Err(failure);
    }
    log::error!(
        "event=inplace-fallback error=\"{}\" action=\"old configuration\"",
        logging::esc(&failure)
    );
    resume.config_failure = Some(failure.to_string());
    let launch = Launch::capture(flags, command);
    start(
        launch,
        old_config,
        None,
        (spare, spare_health),
        &mut Some(resume),
    )?
    .run()
}

/// Everything a master needs before its loop, from `config`: log files,
/// listeners, runtime directory, control and notify sockets, pid file.
/// In place, `resume` is taken only once nothing more can fail: an `Err`
/// leaves it, and the old listeners (kept aside by the caller), untouched.
fn start(
    launch: Launch,
    mut config: Config,
    report: Option<OwnedFd>,
    (mut inherited, handed_health): (Inherited, Option<OwnedFd>),
    resume: &mut Option<Resume>,
) -> Result<Master> {
    let in_place = resume.is_some();
    if let Some(mask) = config.umask {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    check_may_switch_user(&config)?;
    let base = rundir::master_base(
        config.runtime_dir.as_deref(),
        &launch.env,
        config.pid_file.as_deref(),
    );
    // In place, the pid file names us already.
    if let Some(path) = config.pid_file.as_ref().filter(|_| !in_place) {
        let search = Search {
            bases: vec![base.clone()],
            uids: vec![nix::unistd::geteuid().as_raw()],
        };
        pidfile::ensure_not_running(path, |pid| is_master_of(&search, pid, path))?;
    }
    let mut logs = LogFiles::open(config.stdout_path.as_deref(), config.stderr_path.as_deref())?;
    let (uid, gid) = worker_owner(&config);
    logs.chown(uid, gid);
    let inherited_addresses = inherited.addresses();
    let listeners = if config.listeners.is_empty() {
        // Socket activation without --listen: serve on everything passed.
        let adopted = adopt_all(&mut inherited)?;
        config.listeners = adopted.iter().map(|l| l.spec.clone()).collect();
        adopted
    } else {
        open_listeners(&config, &launch.start_dir, &mut inherited, (uid, gid))?
    };
    // Socket files bound here, removed again if a later step fails (in
    // place the old configuration then starts without them).
    let bound_here: Vec<(std::path::PathBuf, (u64, u64))> = listeners
        .iter()
        .filter(|l| !l.external && !inherited_addresses.contains(&l.bound))
        .filter_map(|l| match (&l.bound, l.socket_file) {
            (Address::Unix(path), Some(id)) => Some((path.clone(), id)),
            _ => None,
        })
        .collect();
    let unlink_bound_here = || {
        use std::os::unix::fs::MetadataExt;
        for (path, id) in &bound_here {
            let same = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id);
            if same {
                let _ = std::fs::remove_file(path);
            }
        }
    };
    // Nothing the master inherited may leak into workers.
    sys::set_cloexec_from_3(&[]);
    let pid_file = config.pid_file.clone();
    // Workers of another user must pass through to the notify socket.
    let traversable = uid.is_some_and(|uid| uid != nix::unistd::geteuid().as_raw());
    let rundir = RunDir::create(&base, traversable).map_err(|why| match &pid_file {
        // Beside a pid file whose directory is missing: that is the news.
        Some(path) if !pidfile_dir(path).is_dir() => Error::PidFile {
            path: path.clone(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        },
        _ => Error::Config(ConfigError::Invalid(why)),
    });
    let master = rundir
        .and_then(|rundir| {
            Master::new(
                launch,
                config,
                listeners,
                logs,
                report,
                rundir,
                resume,
                handed_health,
            )
        })
        .inspect_err(|_| unlink_bound_here())?;
    for addr in inherited.leftovers() {
        log::info!(
            "event=listen-closed addr={addr} reason=\"no longer configured\"",
            addr = crate::logging::esc(&addr)
        );
    }
    if let Some(path) = &pid_file {
        match pidfile::write_pid(path, std::process::id() as i32) {
            Ok(()) => {}
            // In place it names us already: no reason to drop the workers.
            Err(e) if in_place => {
                log::warn!("event=pid-file-unwritten error=\"{}\"", logging::esc(&e))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(master)
}

/// The directory a pid file is in (`.` for a bare name).
fn pidfile_dir(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    }
}

/// Every socket systemd passed, when no listener is configured.
fn adopt_all(inherited: &mut Inherited) -> Result<Vec<Listener>> {
    let adopted = inherited.take_all();
    if adopted.is_empty() {
        return Err(Error::Config(ConfigError::Invalid(
            config::NO_LISTENER.into(),
        )));
    }
    for (i, listener) in adopted.iter().enumerate() {
        log::info!(
            "event=listen addr={} fd={} name={} how=activated",
            crate::logging::esc(&listener.bound),
            3 + i,
            crate::logging::esc(listener.spec.fd_name())
        );
    }
    Ok(adopted)
}

/// The configured listeners, in order: each taken from what was inherited
/// (an upgrade, socket activation) or bound anew. A relative unix socket
/// path is bound, and published to workers, relative to the start directory
/// (`$PWD`): a new master of an upgrade starts in its old master's start
/// directory, so the path means the same socket across upgrades. On failure
/// no socket file we created is left behind.
fn open_listeners(
    config: &Config,
    start_dir: &Path,
    inherited: &mut Inherited,
    owner: (Option<u32>, Option<u32>),
) -> Result<Vec<Listener>> {
    let mut listeners: Vec<(Listener, &str)> = Vec::with_capacity(config.listeners.len());
    let unlink_bound = |listeners: &[(Listener, &str)]| {
        for (listener, _) in listeners.iter().filter(|(_, how)| *how == "bound") {
            listener.unlink_if_ours();
        }
    };
    for spec in &config.listeners {
        let spec = &absolute(spec, start_dir);
        let (listener, how) = match inherited.take(spec) {
            Some(listener) if listener.external => (listener, "activated"),
            Some(listener) => (listener, "inherited"),
            None => match Listener::bind(spec) {
                Ok(listener) => {
                    listener.chown(owner.0, owner.1);
                    (listener, "bound")
                }
                Err(e) => {
                    unlink_bound(&listeners);
                    return Err(e);
                }
            },
        };
        log::info!(
            "event=listen addr={} fd={} name={} how={how}",
            crate::logging::esc(&listener.bound),
            3 + listeners.len(),
            crate::logging::esc(spec.fd_name())
        );
        listeners.push((listener, how));
    }
    Ok(listeners.into_iter().map(|(l, _)| l).collect())
}

/// `spec` with a relative unix socket path made absolute against `dir`.
fn absolute(spec: &ListenSpec, dir: &Path) -> ListenSpec {
    let mut spec = spec.clone();
    if let Address::Unix(path) = &spec.address {
        if path.is_relative() {
            spec.address = Address::Unix(dir.join(path));
        }
    }
    spec
}

/// The owner for files workers use (socket and log files): the worker user.
pub(crate) fn worker_owner(config: &Config) -> (Option<u32>, Option<u32>) {
    let uid = config.user.as_ref().map(|u| u.uid);
    let gid = config
        .group
        .as_ref()
        .map(|g| g.gid)
        .or(config.user.as_ref().map(|u| u.gid));
    (uid, gid)
}

/// Only root may run workers as someone else: refuse clearly up front.
fn check_may_switch_user(config: &Config) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    let egid = nix::unistd::getegid().as_raw();
    if let Some(user) = config.user.as_ref().filter(|u| u.uid != euid) {
        return Err(Error::Config(ConfigError::Invalid(format!(
            "user {}: switching workers to another user needs root (running as uid {euid})",
            user.name
        ))));
    }
    if let Some(group) = config.group.as_ref().filter(|g| g.gid != egid) {
        return Err(Error::Config(ConfigError::Invalid(format!(
            "group {}: switching workers to another group needs root (running as uid {euid})",
            group.name
        ))));
    }
    Ok(())
}

/// Whether `pid` is a forkmaster master of the pid file `path` (or may be:
/// one that does not answer us is given the benefit of the doubt).
fn is_master_of(search: &Search, pid: i32, path: &std::path::Path) -> bool {
    match control::query_in(search, pid) {
        Ok(status) => {
            let ours = pidfile::canonical(path).map(|p| p.display().to_string());
            status.pid_file.is_some() && status.pid_file == ours
        }
        Err(QueryError::NoMaster | QueryError::Unverified(_)) => false,
        Err(QueryError::Refused | QueryError::NoAnswer) => true,
    }
}

/// A new master that fails before its loop runs tells the old master why
/// (a failure while running is reported by the master itself).
fn report_to_old_master(e: &Error) {
    let old_notify = std::env::var_os(protocol::UPGRADE_NOTIFY).map(std::path::PathBuf::from);
    if let (Some(old), false) = (old_notify, matches!(e, Error::UpgradeFailed(_))) {
        let message = protocol::upgrade_failed_message(&e.to_string());
        let _ = notify::send_to_master(&old, &message);
    }
}
