//! The command line: `--listen` (repeatable), `--token-file`, `--boot-delay`,
//! each as `--flag VALUE` or `--flag=VALUE`; `-h`/`--help` prints the usage.

use std::{env, process};

const USAGE: &str = "usage: forkmaster-demo [--listen HOST:PORT|unix:/path]... \
                     [--token-file FILE] [--boot-delay DURATION]\n";

#[derive(Default)]
pub struct Args {
    pub listen: Vec<String>,
    pub token_file: Option<String>,
    pub boot_delay: Option<String>,
}

/// Reads the process arguments; exits 1 with a message on an unknown flag or a
/// missing value, 0 after printing the usage.
pub fn parse_args() -> Args {
    let mut args = Args::default();
    let mut it = env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .unwrap_or_else(|a| fatal!("argument is not UTF-8: {a:?}"));
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--listen" => None,
            "--token-file" => Some(&mut args.token_file),
            "--boot-delay" => Some(&mut args.boot_delay),
            _ => fatal!("unknown argument {flag:?}\n{USAGE}"),
        };
        let value = inline
            .or_else(|| it.next().and_then(|v| v.into_string().ok()))
            .unwrap_or_else(|| fatal!("{flag} needs a value"));
        match slot {
            Some(slot) => *slot = Some(value),
            None => args.listen.push(value),
        }
    }
    args
}
