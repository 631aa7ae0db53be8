//! Command-line flags. Every master option is also a key of the YAML config
//! file (`config`), so flags are kept as text here and parsed in one place
//! with the same rules as the file, naming the flag in any error.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

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

#[derive(Args, Clone, Debug, Default)]
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

    /// How a new master retires the old one after USR2: gradual, all or manual
    /// [default: gradual].
    #[arg(long, value_name = "MODE")]
    pub retire: Option<String>,

    /// Replacement workers booting at once during a HUP rolling restart [default: 1].
    #[arg(long, value_name = "N")]
    pub max_surge: Option<String>,

    /// Where the master's and the workers' stdout go (reopened on USR1).
    #[arg(long, value_name = "FILE")]
    pub stdout_path: Option<PathBuf>,

    /// Where the master's and the workers' stderr (and the master's log) go
    /// (reopened on USR1).
    #[arg(long, value_name = "FILE")]
    pub stderr_path: Option<PathBuf>,

    /// Detach into the background; exit 0 once every worker is ready, 1 with
    /// the reason if startup failed.
    #[arg(short = 'D', long)]
    pub daemonize: bool,

    /// Run workers as this user (name or uid) with its groups; the master
    /// stays as the starting user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run workers with this primary group (name or gid) [default: the user's].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// File mode creation mask for the master and workers, octal (e.g. 0027).
    #[arg(long, value_name = "MASK")]
    pub umask: Option<String>,

    /// Load and validate the configuration, print what would run, and exit 0 or 1.
    #[arg(short = 't', long)]
    pub check: bool,
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
