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
use forkmaster::master::Master;
use forkmaster::sockets::Listener;
use forkmaster::{client, config, logging, pidfile, sys, systemd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.client {
        return client::run(command);
    }
    let config = match config::load(&cli.options, &cli.command) {
        Ok(config) => config,
        Err(why) => return fail(&Error::Config(why)),
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
    logging::init(config.log_level.as_deref());
    let launch = Launch::capture(&cli.options, &cli.command);
    match serve(launch, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn serve(launch: Launch, config: config::Config) -> Result<(), Error> {
    if let Some(path) = &config.pid_file {
        pidfile::ensure_not_running(path)?;
    }
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
        return run_master(launch, config, adopted);
    }
    let mut listeners = Vec::with_capacity(config.listeners.len());
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
    run_master(launch, config, listeners)
}

fn run_master(
    launch: Launch,
    config: config::Config,
    listeners: Vec<Listener>,
) -> Result<(), Error> {
    // Nothing the master inherited may leak into workers.
    sys::set_cloexec_from_3(&[]);
    let master = Master::new(launch, config.clone(), listeners)?;
    if let Some(path) = &config.pid_file {
        pidfile::write_pid(path, std::process::id() as i32)?;
    }
    master.run()
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("forkmaster: {e}");
    ExitCode::FAILURE
}
