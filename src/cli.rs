//! Command-line flags. Every master option is also a key of the YAML config
//! file (`config`), so flags are kept as text here and parsed in one place
//! with the same rules as the file, naming the flag in any error.

use clap::{Args, Parser};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "forkmaster",
    version,
    about = "Preforking master: binds the listeners once, forks N workers that exec COMMAND with \
             the sockets inherited (fd 3 onwards), and restarts them with zero downtime.",
    after_help = "Signals to the master: QUIT graceful stop, TERM/INT quick stop, \
                  TTIN/TTOU one more/less worker, WINCH stop workers, USR1 reopen logs, \
                  HUP reload and rolling restart, USR2 upgrade. See docs/SIGNALS.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub options: MasterFlags,

    /// The app each worker execs, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Default)]
pub struct MasterFlags {
    /// YAML config file; its keys are the long flag names with underscores. Flags override it.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listener, repeatable, in fd order: PORT, HOST:PORT, [IPV6]:PORT or unix:PATH,
    /// optionally prefixed NAME= (the name goes into LISTEN_FDNAMES).
    #[arg(short = 'l', long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Number of workers [default: 1].
    #[arg(short = 'w', long, value_name = "N")]
    pub workers: Option<String>,

    /// Pid file, written atomically once the listeners are bound.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub pid: Option<PathBuf>,

    /// Directory each worker changes into at every spawn (a deploy symlink is followed anew).
    #[arg(long, value_name = "DIR")]
    pub working_directory: Option<PathBuf>,

    /// Extra environment for the workers, repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Readiness: `notify` (worker sends READY=1 to NOTIFY_SOCKET) or `delay:DURATION`
    /// [default: delay:1s].
    #[arg(long, value_name = "MODE")]
    pub ready: Option<String>,

    /// A worker not ready within this is killed and counts as a boot failure [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub ready_timeout: Option<String>,

    /// Watchdog (needs --ready notify): a worker must send WATCHDOG=1 within this or is
    /// killed and replaced [default: off].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Signal a worker gets for a graceful stop [default: TERM].
    #[arg(long, value_name = "SIG")]
    pub stop_signal: Option<String>,

    /// How long a graceful stop may take before SIGKILL [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub graceful_timeout: Option<String>,

    /// error, warn, info, debug or trace [default: RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Load and validate the configuration, print what would run, and exit 0 or 1.
    #[arg(short = 't', long)]
    pub check: bool,
}
