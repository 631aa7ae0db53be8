//! Log lines on stderr: `demo pid=.. worker=.. <message>` for events, and
//! `forkmaster-demo: <message>` plus exit 1 for bad startup input.

use std::io::{self, Write};
use std::process;
use std::sync::OnceLock;

static PREFIX: OnceLock<String> = OnceLock::new();

/// Logs `demo pid=.. worker=.. <message>` on stderr.
macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log_line(&format!($($arg)*)) };
}

/// Prints `forkmaster-demo: <message>` on stderr and exits 1 (bad startup input).
macro_rules! fatal {
    ($($arg:tt)*) => { $crate::logging::fatal_line(&format!($($arg)*)) };
}

/// Names this process in every later log line; lines before it say just `demo`.
pub fn set_prefix(pid: u32, worker: &str) {
    let _ = PREFIX.set(format!("demo pid={pid} worker={worker}"));
}

/// Writes one log line with a single `write` so lines of concurrent workers do not interleave.
pub fn log_line(msg: &str) {
    let prefix = PREFIX.get().map_or("demo", String::as_str);
    let _ = io::stderr().write_all(format!("{prefix} {msg}\n").as_bytes());
}

pub fn fatal_line(msg: &str) -> ! {
    let _ = io::stderr().write_all(format!("forkmaster-demo: {msg}\n").as_bytes());
    process::exit(1);
}
