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
use forkmaster::{client, config, logging, pidfile, sys};
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
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for spec in &config.listeners {
        let (listener, how) = match inherited.take(spec) {
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
