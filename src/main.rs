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

/// The longest error printed in full, in characters.
const MAX_ERROR_CHARS: usize = 1000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.client {
        return client::run(command);
    }
    match start::run(&cli.options, &cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line of a readable length, whatever a value quoted in the
            // message holds (a config file of one 400 KB line, say).
            let text = e.to_string().replace('\n', "\\n");
            match text.char_indices().nth(MAX_ERROR_CHARS) {
                Some((cut, _)) => eprintln!(
                    "forkmaster: {}… ({} more bytes)",
                    &text[..cut],
                    text.len() - cut
                ),
                None => eprintln!("forkmaster: {text}"),
            }
            e.exit_code()
        }
    }
}
