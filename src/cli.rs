//! Command-line flags. Every master option is also a key of the YAML config
//! file, so `MasterFlags` is made from the settings table in `config`, kept
//! as text and parsed there with the same rules as the file.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// The master's flags are generated from the settings table in `config`.
pub use crate::config::MasterFlags;

#[derive(Parser, Debug)]
#[command(
    name = "forkmaster",
    version,
    about = "Preforking master: binds the listeners once, forks N workers that exec COMMAND with \
             the sockets inherited (fd 3 onwards), and restarts them with zero downtime.",
    args_conflicts_with_subcommands = true,
    after_help = "Signals to the master: QUIT graceful stop, TERM/INT quick stop, \
                  TTIN/TTOU one more/less worker, WINCH stop workers, USR1 reopen logs, \
                  HUP reload and rolling restart, USR2 upgrade. See docs/SIGNALS.md."
)]
pub struct Cli {
    /// Drive a running master instead of starting one.
    #[command(subcommand)]
    pub client: Option<ClientCommand>,

    #[command(flatten)]
    pub options: MasterFlags,

    /// The app each worker execs, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Commands for init scripts and deploy tools. Exit codes: 0 done, 1 failed
/// (the old master kept serving), 2 usage, 3 no master running, 4 timed out.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Zero-downtime upgrade (USR2): re-exec the master, new workers take over.
    Upgrade(WaitArgs),
    /// Reload the config and restart the workers one by one (HUP).
    Reload(WaitArgs),
    /// Stop the master: gracefully (QUIT), or quickly with --quick (TERM).
    Stop(StopArgs),
    /// Show the master, its workers and the last upgrade and reload.
    Status(StatusArgs),
    /// Reopen log files (USR1), e.g. after logrotate.
    ReopenLogs(Locate),
    /// For exec probes: exit 0 if the master serves with `min_ready` workers
    /// ready (during an upgrade: the old or the new master), 1 if not
    /// (starting, stopping, too few ready), 3 if none runs.
    Ready(Locate),
    /// Print the master's metrics in the Prometheus text format (as its
    /// `/metrics`), e.g. for node_exporter's textfile collector.
    Metrics(Locate),
}

/// Which master: by pid file, or by the config file that names it.
#[derive(Args, Debug, Clone)]
pub struct Locate {
    /// The master's pid file.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub pid: Option<PathBuf>,

    /// The master's config file (its `pid:` key names the pid file).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The master's --runtime-dir, if it was given one (else the config's
    /// `runtime_dir:`, $RUNTIME_DIRECTORY and the pid file's directory are tried).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    #[command(flatten)]
    pub locate: Locate,

    /// Block until the outcome is known; the exit code tells it.
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this long [default: 120s].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    #[command(flatten)]
    pub wait: WaitArgs,

    /// Quick stop (TERM) instead of graceful (QUIT).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub locate: Locate,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}
