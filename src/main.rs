//! `forkmaster [OPTIONS] -- COMMAND [ARGS...]` runs a master;
//! `forkmaster upgrade|reload|stop|status|reopen-logs` drives a running one.
//!
//! Master exit codes: 0 clean stop (or a valid `--check`); 1 an invalid
//! configuration, or a startup or runtime failure; 2 a usage error (clap).
//! Client exit codes are listed in `client`.

use clap::Parser;
use forkmaster::cli::Cli;
use forkmaster::{client, start};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.client {
        return client::run(command);
    }
    match start::run(&cli.options, &cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever a value quoted in the message holds.
            eprintln!("forkmaster: {}", e.to_string().replace('\n', "\\n"));
            e.exit_code()
        }
    }
}
