//! `forkmaster [OPTIONS] -- COMMAND [ARGS...]`: parse, validate, bind, serve.
//!
//! Exit codes: 0 clean stop (or a valid `--check`); 1 a runtime or startup
//! failure, or an invalid configuration; 2 a usage error (unknown flag).

use clap::Parser;
use forkmaster::cli::Cli;
use forkmaster::error::Error;
use forkmaster::master::Master;
use forkmaster::sockets::Listener;
use forkmaster::{config, logging, pidfile, sys};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn serve(config: config::Config) -> Result<(), Error> {
    // Nothing the master inherited may leak into workers.
    sys::set_cloexec_from_3(&[]);
    let base_env: Vec<_> = std::env::vars_os().collect();
    if let Some(path) = &config.pid_file {
        pidfile::ensure_not_running(path)?;
    }
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for spec in &config.listeners {
        let listener = Listener::bind(spec)?;
        log::info!(
            "event=listen addr={} fd={} name={}",
            listener.bound,
            3 + listeners.len(),
            spec.fd_name()
        );
        log::debug!("event=listen-socket master_fd={}", listener.fd.as_raw_fd());
        listeners.push(listener);
    }
    let master = Master::new(config.clone(), listeners, &base_env, 1)?;
    if let Some(path) = &config.pid_file {
        pidfile::write_pid(path, std::process::id() as i32)?;
    }
    master.run()
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("forkmaster: {e}");
    ExitCode::FAILURE
}
