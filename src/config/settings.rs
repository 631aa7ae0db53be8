//! The table of settings: each is written here once, and the flags
//! (`MasterFlags`), the YAML keys, the `Layer` of parsed values, the merge of
//! layers, the defaults, the resolved `Config` and the `--check` lines are
//! all generated from it.
//!
//! A row reads:
//!
//! ```text
//! key {
//!     /// Help text.                        (flag rows only)
//!     #[arg(long, ...)] flag: FlagType => from_flag,
//!     yaml: YamlType => from_yaml,         the key's serde type, then our parse
//!     parsed: Type = default,              the default makes it non-optional
//!     merge: fn,                           (optional) instead of "flags win"
//!     config: field: Type => resolve,      (resolve optional) the `Config` field
//!     describe: fn,                        its `--check` lines
//! }
//! ```

use super::describe::{self as show, Lines};
use super::parse::{self as p, Source, Sourced};
use super::resolve::{self as r, Site};
use super::{Account, ConfigError, Group, ReadyMode, Retire};
use crate::listen::{ListenSpec, WrittenListen};
use clap::Args;
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

macro_rules! settings {
    ($(
        $key:ident {
            $($(#[$flag_attr:meta])* flag: $flag_ty:ty => $from_flag:expr,)?
            yaml: $yaml_ty:ty => $from_yaml:expr,
            parsed: $parsed:ty $(= $default:expr)?,
            $(merge: $merge:expr,)?
            config: $field:ident: $config_ty:ty $(=> $resolve:expr)?,
            describe: $describe:expr,
        }
    )*) => {
        /// The master's flags; each but `--config` and `--check` is also a key
        /// of the config file. Values stay text here and are parsed by
        /// `config` with the file's rules, naming the flag in any error.
        #[derive(Args, Clone, Debug, Default)]
        pub struct MasterFlags {
            /// YAML config file; its keys are the long flag names with underscores. Flags override it.
            #[arg(short = 'c', long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $($(
                $(#[$flag_attr])*
                pub $key: $flag_ty,
            )?)*
            /// Load and validate the configuration, print what would run, and exit 0 or 1.
            #[arg(short = 't', long)]
            pub check: bool,
        }

        /// The YAML file as written. Values stay loose here so that each key's
        /// error can say what was expected in our words, not serde's.
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FileKeys {
            $($key: Option<$yaml_ty>,)*
        }

        /// One source of settings, parsed but not resolved; `None` means
        /// "not said here".
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Layer {
            $(pub $key: Option<$parsed>,)*
        }

        /// Everything the master needs, with defaults filled in and names
        /// looked up.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            pub config_path: Option<PathBuf>,
            $(pub $field: $config_ty,)*
        }

        impl Layer {
            /// Parses the keys of a file; errors start with the key.
            pub(super) fn from_file(keys: FileKeys) -> Result<Layer, String> {
                Ok(Layer {$(
                    $key: match keys.$key {
                        Some(value) => Some(($from_yaml)(value)
                            .map_err(|why| format!("{}: {why}", stringify!($key)))?),
                        None => None,
                    },
                )*})
            }

            /// Parses the flags; errors start with the flag.
            pub(super) fn from_flags(flags: &MasterFlags) -> Result<Layer, ConfigError> {
                #[allow(unused_mut)]
                let mut layer = Layer::default();
                $($(
                    layer.$key = ($from_flag)(&flags.$key).map_err(|why| {
                        ConfigError::flag(stringify!($key), why)
                    })?;
                )?)*
                Ok(layer)
            }

            /// This layer's values where given, `base`'s otherwise (maps merge).
            pub fn over(self, base: Layer) -> Layer {
                Layer {$(
                    $key: settings!(@merge $($merge)?)(self.$key, base.$key),
                )*}
            }

            /// Fills defaults and looks names up; errors name where each
            /// value was written.
            pub(super) fn resolve(
                self,
                config_path: Option<PathBuf>,
                lookups: &r::Lookups,
            ) -> Result<Config, ConfigError> {
                let site = |key| Site { key, config_path: config_path.as_deref(), lookups };
                Ok(Config {$(
                    $field: settings!(@resolve $($resolve)?)(
                        settings!(@default self.$key $(, $default)?),
                        &site(stringify!($key)),
                    )?,
                )*
                    config_path,
                })
            }
        }

        impl Config {
            /// One line per value, in table order, as `key: value`.
            pub(super) fn describe_settings(&self, out: &mut Lines) {
                $(($describe)(stringify!($key), &self.$field, out);)*
            }
        }
    };
    (@merge) => { Option::or };
    (@merge $merge:expr) => { $merge };
    (@default $value:expr) => { $value };
    (@default $value:expr, $default:expr) => { $value.unwrap_or_else(|| $default) };
    (@resolve) => { r::keep };
    (@resolve $resolve:expr) => { $resolve };
}

settings! {
    listen {
        /// Listener, repeatable, in fd order: PORT, HOST:PORT, [IPV6]:PORT or unix:PATH,
        /// optionally prefixed NAME= (the name goes into LISTEN_FDNAMES).
        #[arg(short = 'l', long, value_name = "ADDR")]
        flag: Vec<String> => p::listen_flags,
        yaml: Vec<Value> => p::listen_entries,
        parsed: Sourced<Vec<WrittenListen>> = Sourced::default(),
        config: listeners: Vec<ListenSpec> => r::listeners,
        describe: show::listeners,
    }
    workers {
        /// Number of workers [default: 1].
        #[arg(short = 'w', long, value_name = "N")]
        flag: Option<String> => p::text(p::workers),
        yaml: Value => p::scalar(p::workers),
        parsed: usize = 1,
        config: workers: usize,
        describe: show::plain,
    }
    command {
        yaml: Vec<String> => p::command,
        parsed: Vec<OsString> = Vec::new(),
        config: command: Vec<OsString>,
        describe: show::words,
    }
    pid {
        /// Pid file, written atomically once the listeners are bound.
        #[arg(short = 'p', long, value_name = "FILE")]
        flag: Option<PathBuf> => p::given,
        yaml: PathBuf => p::ok,
        parsed: PathBuf,
        config: pid_file: Option<PathBuf>,
        describe: show::path,
    }
    working_directory {
        /// Directory each worker changes into at every spawn (a deploy symlink is followed anew).
        #[arg(long, value_name = "DIR")]
        flag: Option<PathBuf> => p::given,
        yaml: PathBuf => p::ok,
        parsed: PathBuf,
        config: working_directory: Option<PathBuf>,
        describe: show::path,
    }
    env {
        /// Extra environment for the workers, repeatable.
        #[arg(long, value_name = "KEY=VALUE")]
        flag: Vec<String> => p::env_flags,
        yaml: BTreeMap<String, Value> => p::env_map,
        parsed: BTreeMap<String, String> = BTreeMap::new(),
        merge: p::merge_maps,
        config: env: BTreeMap<String, String>,
        describe: show::pairs,
    }
    ready {
        /// Readiness: `notify` (worker sends READY=1 to NOTIFY_SOCKET) or `delay:DURATION`
        /// [default: delay:1s].
        #[arg(long, value_name = "MODE")]
        flag: Option<String> => p::text(p::ready),
        yaml: String => p::string(p::ready),
        parsed: ReadyMode = ReadyMode::Delay(Duration::from_secs(1)),
        config: ready: ReadyMode,
        describe: show::plain,
    }
    ready_timeout {
        /// A worker not ready within this is killed and counts as a boot failure [default: 60s].
        #[arg(long, value_name = "DURATION")]
        flag: Option<String> => p::text(p::duration),
        yaml: String => p::string(p::duration),
        parsed: Duration = Duration::from_secs(60),
        config: ready_timeout: Duration,
        describe: show::duration,
    }
    timeout {
        /// Watchdog (needs --ready notify): a worker must send WATCHDOG=1 within this or is
        /// killed and replaced [default: off].
        #[arg(long, value_name = "DURATION")]
        flag: Option<String> => p::text(p::timeout),
        yaml: String => p::string(p::timeout),
        parsed: Option<Duration> = None,
        config: timeout: Option<Duration>,
        describe: show::duration_or_off,
    }
    stop_signal {
        /// Signal a worker gets for a graceful stop [default: TERM].
        #[arg(long, value_name = "SIG")]
        flag: Option<String> => p::text(p::signal),
        yaml: Value => p::scalar(p::signal),
        parsed: Signal = Signal::SIGTERM,
        config: stop_signal: Signal,
        describe: show::signal,
    }
    graceful_timeout {
        /// How long a graceful stop may take before SIGKILL [default: 30s].
        #[arg(long, value_name = "DURATION")]
        flag: Option<String> => p::text(p::duration),
        yaml: String => p::string(p::duration),
        parsed: Duration = Duration::from_secs(30),
        config: graceful_timeout: Duration,
        describe: show::duration,
    }
    log_level {
        /// error, warn, info, debug or trace [default: RUST_LOG, else info].
        #[arg(long, value_name = "LEVEL")]
        flag: Option<String> => p::text(p::log_level),
        yaml: String => p::string(p::log_level),
        parsed: String,
        config: log_level: Option<String>,
        // The log itself shows its level.
        describe: show::nothing,
    }
    retire {
        /// How a new master retires the old one after USR2: gradual, all or manual
        /// [default: gradual].
        #[arg(long, value_name = "MODE")]
        flag: Option<String> => p::text(p::retire),
        yaml: String => p::string(p::retire),
        parsed: Retire = Retire::Gradual,
        config: retire: Retire,
        describe: show::plain,
    }
    max_surge {
        /// Replacement workers booting at once during a HUP rolling restart [default: 1].
        #[arg(long, value_name = "N")]
        flag: Option<String> => p::text(p::max_surge),
        yaml: Value => p::scalar(p::max_surge),
        parsed: usize = 1,
        config: max_surge: usize,
        describe: show::plain,
    }
    stdout_path {
        /// Where the master's and the workers' stdout go (reopened on USR1).
        #[arg(long, value_name = "FILE")]
        flag: Option<PathBuf> => p::given,
        yaml: PathBuf => p::ok,
        parsed: PathBuf,
        config: stdout_path: Option<PathBuf>,
        describe: show::path,
    }
    stderr_path {
        /// Where the master's and the workers' stderr (and the master's log) go
        /// (reopened on USR1).
        #[arg(long, value_name = "FILE")]
        flag: Option<PathBuf> => p::given,
        yaml: PathBuf => p::ok,
        parsed: PathBuf,
        config: stderr_path: Option<PathBuf>,
        describe: show::path,
    }
    daemonize {
        /// Detach into the background; exit 0 once every worker is ready, 1 with
        /// the reason if startup failed.
        #[arg(short = 'D', long)]
        flag: bool => p::switch,
        yaml: bool => p::ok,
        parsed: bool = false,
        config: daemonize: bool,
        describe: show::yes,
    }
    user {
        /// Run workers as this user (name or uid) with its groups; the master
        /// stays as the starting user.
        #[arg(long, value_name = "USER")]
        flag: Option<String> => p::name(Source::Flag),
        yaml: Value => p::scalar(p::name_in_file),
        parsed: Sourced<String>,
        // Looked up at load, so that a bad name fails before any fork.
        config: user: Option<Account> => r::user,
        describe: show::account,
    }
    group {
        /// Run workers with this primary group (name or gid) [default: the user's].
        #[arg(long, value_name = "GROUP")]
        flag: Option<String> => p::name(Source::Flag),
        yaml: Value => p::scalar(p::name_in_file),
        parsed: Sourced<String>,
        config: group: Option<Group> => r::group,
        describe: show::group,
    }
    umask {
        /// File mode creation mask for the master and workers, octal (e.g. 0027).
        #[arg(long, value_name = "MASK")]
        flag: Option<String> => p::text(crate::listen::parse_mode),
        yaml: Value => p::umask,
        parsed: u32,
        config: umask: Option<u32>,
        describe: show::octal,
    }
}
