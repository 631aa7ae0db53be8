//! `forkmaster [OPTIONS] -- COMMAND [ARGS...]` runs a master;
//! `forkmaster upgrade|reload|stop|status` drives a running one.
//!
//! Master exit codes: 0 clean stop (or a valid `--check`); 1 an invalid
//! configuration, or a startup or runtime failure; 2 a usage error.
//! Client exit codes are listed in `client`.

use clap::Parser;
use forkmaster::cli::Cli;
use forkmaster::error::Error;
use forkmaster::handoff::Inherited;
use forkmaster::launch::Launch;
use forkmaster::logs::LogFiles;
use forkmaster::master::Master;
use forkmaster::sockets::Listener;
use forkmaster::{client, config, daemon, logging, pidfile, sys, systemd};
use nix::sys::stat::Mode;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.client {
        return client::run(command);
    }
    let config = match config::load(&cli.options, &cli.command) {
        Ok(config) => config,
        Err(why) => {
            let e = Error::Config(why.to_string());
            report_to_old_master(&e);
            return fail(&e);
        }
    };
    if cli.options.check {
        let activated = systemd::activated_fds(
            &std::env::vars_os().collect::<Vec<_>>(),
            std::process::id() as i32,
        );
        if config.listeners.is_empty() && activated.is_empty() {
            return fail(&Error::Config(config::NO_LISTENER.into()));
        }
        print!("{}", config.describe());
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    if config.daemonize
        && config.stderr_path.is_none()
        && std::env::var_os(forkmaster::handoff::UPGRADE_VAR).is_none()
    {
        eprintln!(
            "forkmaster: warning: --daemonize without --stderr-path: the log goes to /dev/null"
        );
    }
    // A master started by an upgrade runs where its old master put it.
    let upgrading = std::env::var_os(forkmaster::handoff::UPGRADE_VAR).is_some();
    let report = match (config.daemonize && !upgrading)
        .then(daemon::daemonize)
        .transpose()
    {
        Ok(report) => report,
        Err(e) => return fail(&e),
    };
    // A copy to report a failure with, once the master owns the original.
    let failure_report = report.as_ref().and_then(|r| r.try_clone().ok());
    logging::init(config.log_level.as_deref());
    let launch = Launch::capture(&cli.options, &cli.command);
    match serve(launch, config, report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(report) = failure_report {
                let _ = nix::unistd::write(&report, format!("{e}\n").as_bytes());
            }
            report_to_old_master(&e);
            fail(&e)
        }
    }
}

fn serve(launch: Launch, config: config::Config, report: Option<OwnedFd>) -> Result<(), Error> {
    if let Some(mask) = config.umask {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    check_may_switch_user(&config)?;
    if let Some(path) = &config.pid_file {
        pidfile::ensure_not_running(path)?;
    }
    let mut logs = LogFiles::open(config.stdout_path.as_deref(), config.stderr_path.as_deref())
        .map_err(Error::Config)?;
    let (uid, gid) = worker_owner(&config);
    logs.chown(uid, gid);
    let mut inherited = Inherited::from_env(launch.inherited_fds.as_deref());
    inherited.add_activated(&systemd::activated_fds(
        &launch.env,
        std::process::id() as i32,
    ));
    let mut config = config;
    if config.listeners.is_empty() {
        // Socket activation without --listen: serve on everything passed.
        let adopted = inherited.take_all();
        if adopted.is_empty() {
            return Err(Error::Config(config::NO_LISTENER.into()));
        }
        config.listeners = adopted.iter().map(|l| l.spec.clone()).collect();
        for (i, listener) in adopted.iter().enumerate() {
            log::info!(
                "event=listen addr={} fd={} name={} how=activated",
                listener.bound,
                3 + i,
                listener.spec.fd_name()
            );
        }
        return run_master(launch, config, adopted, logs, report);
    }
    let mut listeners: Vec<(Listener, &str)> = Vec::with_capacity(config.listeners.len());
    for spec in &config.listeners {
        let (listener, how) = match inherited.take(spec) {
            Some(listener) if listener.external => (listener, "activated"),
            Some(listener) => (listener, "inherited"),
            None => match Listener::bind(spec) {
                Ok(listener) => (listener, "bound"),
                Err(e) => {
                    // Leave no socket file behind that we created.
                    for (listener, how) in &listeners {
                        if *how == "bound" {
                            Listener::unlink_if_ours(listener);
                        }
                    }
                    return Err(e);
                }
            },
        };
        if how == "bound" {
            listener.chown(uid, gid);
        }
        log::info!(
            "event=listen addr={} fd={} name={} how={how}",
            listener.bound,
            3 + listeners.len(),
            spec.fd_name()
        );
        listeners.push((listener, how));
    }
    let listeners: Vec<Listener> = listeners.into_iter().map(|(l, _)| l).collect();
    for addr in inherited.leftovers() {
        log::info!("event=listen-closed addr={addr} reason=\"no longer configured\"");
    }
    run_master(launch, config, listeners, logs, report)
}

fn run_master(
    launch: Launch,
    config: config::Config,
    listeners: Vec<Listener>,
    logs: LogFiles,
    report: Option<OwnedFd>,
) -> Result<(), Error> {
    // Nothing the master inherited may leak into workers.
    sys::set_cloexec_from_3(&[]);
    let master = Master::new(launch, config.clone(), listeners, logs, report)?;
    if let Some(path) = &config.pid_file {
        pidfile::write_pid(path, std::process::id() as i32)?;
    }
    master.run()
}

/// The owner for files workers use (socket and log files): the worker user.
fn worker_owner(config: &config::Config) -> (Option<u32>, Option<u32>) {
    let uid = config.user.as_ref().map(|u| u.uid);
    let gid = config
        .group
        .as_ref()
        .map(|g| g.gid)
        .or(config.user.as_ref().map(|u| u.gid));
    (uid, gid)
}

/// Only root may run workers as someone else: refuse clearly up front.
fn check_may_switch_user(config: &config::Config) -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    let egid = nix::unistd::getegid().as_raw();
    if let Some(user) = config.user.as_ref().filter(|u| u.uid != euid) {
        return Err(Error::Config(format!(
            "user {}: switching workers to another user needs root (running as uid {euid})",
            user.name
        )));
    }
    if let Some(group) = config.group.as_ref().filter(|g| g.gid != egid) {
        return Err(Error::Config(format!(
            "group {}: switching workers to another group needs root (running as uid {euid})",
            group.name
        )));
    }
    Ok(())
}

/// A new master that fails before it runs tells the old master why, for
/// `forkmaster upgrade --wait` (a failure while running is reported by the
/// master itself).
fn report_to_old_master(e: &Error) {
    let predecessor = std::env::var(forkmaster::handoff::UPGRADE_VAR)
        .ok()
        .and_then(|v| forkmaster::handoff::decode_predecessor(&v));
    if let (Some(old), false) = (predecessor, matches!(e, Error::UpgradeFailed(_))) {
        let message = forkmaster::protocol::upgrade_failed_message(&e.to_string());
        let _ = forkmaster::notify::send_to_master(old.pid, &message);
    }
}

fn fail(e: &Error) -> ExitCode {
    // One line, whatever a value quoted in the message holds.
    eprintln!("forkmaster: {}", e.to_string().replace('\n', "\\n"));
    ExitCode::FAILURE
}
