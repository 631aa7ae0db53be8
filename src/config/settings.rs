//! The table of settings. Each is written here once; the flags
//! (`MasterFlags`, doc comments as help), the file keys, the `Layer` of
//! parsed values, the merge (flags over file), the defaults, the resolved
//! `Config` and the `--check` lines are all made from it. A row reads:
//!
//! ```text
//! key: Parsed [= default] => config_field: Type [=> resolve]
//!     [flag FlagType = parse,] yaml YamlType = parse, [merge fn,] show |value| lines;
//! ```

use super::parse::{self as p, Source};
use super::resolve::{self as r, Lookups};
use super::{describe, shell_words, Account, ConfigError, Group, ReadyMode, Retire};
use crate::duration::{parse_duration, Human};
use crate::ipc::health::{parse_addr, HealthAddr};
use crate::listen::{parse_mode, ListenSpec, WrittenListen};
use crate::master::{Term, UpgradeMode};
use clap::Args;
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

macro_rules! settings {
    ($(
        $(#[$flag_attr:meta])*
        $key:ident: $parsed:ty $(= $default:expr)? => $field:ident: $config_ty:ty $(=> $resolve:expr)?,
            $(flag $flag_ty:ty = $from_flag:expr,)? yaml $yaml_ty:ty = $from_yaml:expr,
            $(merge $merge:expr,)? show |$v:ident| $show:expr;
    )*) => {
        /// The master's flags; each but `--config` and `--check` is also a key
        /// of the config file. Values stay text here: `config` parses them with
        /// the file's rules, naming the flag in any error.
        #[derive(Args, Clone, Debug, Default)]
        pub struct MasterFlags {
            /// YAML config file; its keys are the long flag names with underscores. Flags override it.
            #[arg(short = 'c', long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $($(#[$flag_attr])* $(pub $key: $flag_ty,)?)*
            /// Load and validate the configuration, print what would run, and exit 0 or 1.
            #[arg(short = 't', long)]
            pub check: bool,
        }

        /// The file as written: serde's own type errors where it checks the
        /// type, loose values where our parser explains better.
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FileKeys { $($key: Option<$yaml_ty>,)* }

        /// One source of settings, parsed, not resolved; `None`: not said here.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Layer { $(pub $key: Option<$parsed>,)* }

        /// Everything the master needs, with defaults filled in and names
        /// looked up.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            pub config_path: Option<PathBuf>,
            /// The file's text as read: what an in-place upgrade hands on, so
            /// the new image can keep running the old workers as they were.
            pub config_text: Option<String>,
            $(pub $field: $config_ty,)*
        }

        impl Layer {
            /// Parses the keys of a file; errors start with the key.
            pub(super) fn from_file(keys: FileKeys) -> Result<Layer, String> {
                let key = |key: &'static str| move |why| format!("{key}: {why}");
                Ok(Layer { $($key: keys.$key.map($from_yaml).transpose().map_err(key(stringify!($key)))?,)* })
            }

            /// Parses the flags; errors start with the flag.
            pub(super) fn from_flags(flags: &MasterFlags) -> Result<Layer, ConfigError> {
                let mut layer = Layer::default();
                $($(
                    layer.$key = ($from_flag)(&flags.$key)
                        .map_err(|why| ConfigError::flag(stringify!($key), why))?;
                )?)*
                Ok(layer)
            }

            /// Lays `over` (the flags) on `base` (the file), fills defaults and
            /// looks names up; a failed lookup names the flag or file key.
            pub(super) fn resolve(
                over: Layer, base: Layer, path: Option<PathBuf>, lookups: &Lookups,
            ) -> Result<Config, ConfigError> {
                Ok(Config {
                    $($field: {
                        let source = if over.$key.is_some() { Source::Flag } else { Source::File };
                        let value = settings!(@merge $($merge)?)(over.$key, base.$key);
                        settings!(@resolve $($resolve)?)(settings!(@default value $(, $default)?), lookups)
                            .map_err(|why| ConfigError::at(source, stringify!($key), path.as_deref(), why))?
                    },)*
                    config_path: path,
                    config_text: None,
                })
            }
        }

        impl Config {
            /// What `--check` prints: the configuration as it would run, a
            /// `key: value` line per setting in table order.
            pub fn describe(&self) -> String {
                let mut out = String::new();
                if let Some(path) = &self.config_path {
                    let _ = writeln!(out, "config: {}", path.display());
                }
                $({
                    let $v = &self.$field;
                    for value in IntoIterator::into_iter($show) {
                        let _ = writeln!(out, "{}: {value}", stringify!($key));
                    }
                })*
                out
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
    /// Listener, repeatable, in fd order: PORT, HOST:PORT, [IPV6]:PORT or unix:PATH
    /// (unix:PATH;mode=0660 sets the socket file's mode), optionally prefixed
    /// NAME= (the name goes into LISTEN_FDNAMES).
    #[arg(short = 'l', long, value_name = "ADDR")]
    listen: Vec<WrittenListen> = Vec::new() => listeners: Vec<ListenSpec> => r::listeners,
        flag Vec<String> = p::listen_flags, yaml Vec<Value> = p::listen_entries, show |v| describe::listeners(v);
    /// Number of workers [default: 1].
    #[arg(short = 'w', long, value_name = "N", allow_hyphen_values = true)]
    workers: usize = 1 => workers: usize,
        flag Option<String> = p::text(p::workers), yaml Value = p::scalar(p::workers), show |v| Some(v);
    command: Vec<OsString> = Vec::new() => command: Vec<OsString>,
        yaml Vec<String> = p::command, show |v| Some(shell_words(v));
    /// Pid file, written atomically once the listeners are bound.
    #[arg(short = 'p', long, value_name = "FILE")]
    pid: PathBuf => pid_file: Option<PathBuf>,
        flag Option<PathBuf> = p::cloned, yaml PathBuf = p::ok, show |v| v.as_ref().map(|p| p.display());
    /// Base directory of the master's control and notify sockets (kept in a private
    /// `.forkmaster-<uid>` inside) [default: $RUNTIME_DIRECTORY, else the pid file's
    /// directory, else $XDG_RUNTIME_DIR or /tmp].
    #[arg(long, value_name = "DIR")]
    runtime_dir: PathBuf => runtime_dir: Option<PathBuf>,
        flag Option<PathBuf> = p::cloned, yaml PathBuf = p::ok, show |v| v.as_ref().map(|p| p.display());
    /// Directory each worker changes into at every spawn (a deploy symlink is followed anew).
    #[arg(long, value_name = "DIR")]
    working_directory: PathBuf => working_directory: Option<PathBuf>,
        flag Option<PathBuf> = p::cloned, yaml PathBuf = p::ok, show |v| v.as_ref().map(|p| p.display());
    /// Extra environment for the workers, repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    env: BTreeMap<String, String> = BTreeMap::new() => env: BTreeMap<String, String>,
        flag Vec<String> = p::env_flags, yaml BTreeMap<String, Value> = p::env_map, merge p::merge_maps,
        show |v| v.iter().map(|(key, value)| format!("{key}={value}"));
    /// Readiness: `notify` (worker sends READY=1 to NOTIFY_SOCKET) or `delay:DURATION`
    /// [default: delay:1s].
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    ready: ReadyMode = ReadyMode::Delay(Duration::from_secs(1)) => ready: ReadyMode,
        flag Option<String> = p::text(p::ready), yaml String = p::string(p::ready), show |v| Some(v);
    /// A worker not ready within this is killed and counts as a boot failure [default: 60s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    ready_timeout: Duration = Duration::from_secs(60) => ready_timeout: Duration,
        flag Option<String> = p::text(parse_duration), yaml String = p::string(parse_duration),
        show |v| Some(Human(*v));
    /// Watchdog (needs --ready notify): a worker must send WATCHDOG=1 within this or is
    /// killed and replaced [default: off].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    timeout: Option<Duration> = None => timeout: Option<Duration>,
        flag Option<String> = p::text(p::timeout), yaml String = p::string(p::timeout),
        show |v| Some(v.map_or("off".into(), |d| Human(d).to_string()));
    /// Signal a worker gets for a graceful stop [default: TERM].
    #[arg(long, value_name = "SIG", allow_hyphen_values = true)]
    stop_signal: Signal = Signal::SIGTERM => stop_signal: Signal,
        flag Option<String> = p::text(p::signal), yaml Value = p::scalar(p::signal), show |v| Some(v.as_str());
    /// Signal each ready worker gets on reopen-logs (USR1), for apps that write
    /// their own log files (e.g. USR1); off: none [default: off].
    #[arg(long, value_name = "SIG", allow_hyphen_values = true)]
    reopen_signal: Option<Signal> = None => reopen_signal: Option<Signal>,
        flag Option<String> = p::text(reopen_signal), yaml Value = p::scalar(reopen_signal),
        show |v| Some(v.map_or("off", |s| s.as_str()));
    /// How long a graceful stop may take before SIGKILL [default: 30s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    graceful_timeout: Duration = Duration::from_secs(30) => graceful_timeout: Duration,
        flag Option<String> = p::text(parse_duration), yaml String = p::string(parse_duration),
        show |v| Some(Human(*v));
    /// What TERM means: `quick` (as INT) or `graceful` (as QUIT, for orchestrators
    /// that stop with TERM) [default: quick].
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    term: Term = Term::Quick => term: Term,
        flag Option<String> = p::text(term), yaml String = p::string(term), show |v| Some(v);
    /// On a graceful stop, workers keep serving this long after /readyz turns 503,
    /// so load balancers stop sending first [default: 0].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    shutdown_delay: Duration = Duration::ZERO => shutdown_delay: Duration,
        flag Option<String> = p::text(parse_duration), yaml String = p::string(parse_duration),
        show |v| Some(Human(*v));
    /// Health endpoint for probes (GET /livez, GET /readyz): IP:PORT or unix:PATH [default: off].
    #[arg(long, value_name = "ADDR")]
    health_listen: HealthAddr => health_listen: Option<HealthAddr>,
        flag Option<String> = p::text(parse_addr), yaml String = p::string(parse_addr),
        show |v| v.as_ref().map(|a| a.to_string());
    /// Ready workers needed for /readyz and `forkmaster ready` [default: all].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    min_ready: usize => min_ready: Option<usize>,
        flag Option<String> = p::text(p::max_surge), yaml Value = p::scalar(p::max_surge),
        show |v| Some(v.map_or("all".into(), |n| n.to_string()));
    /// off, error, warn, info, debug or trace [default: RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL", allow_hyphen_values = true)]
    log_level: String => log_level: Option<String>,
        // Not shown by --check: the log itself tells its level.
        flag Option<String> = p::text(p::log_level), yaml String = p::string(p::log_level), show |_v| None::<&str>;
    /// How a new master retires the old one after USR2: gradual, all or manual
    /// [default: gradual].
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    retire: Retire = Retire::Gradual => retire: Retire,
        flag Option<String> = p::text(p::retire), yaml String = p::string(p::retire), show |v| Some(v);
    /// Load the app once per generation (the preloader) and fork the workers from it;
    /// the app must serve the preload protocol (docs/PRELOAD.md) [default: off, exec
    /// each worker].
    #[arg(long)]
    preload: bool = false => preload: bool,
        flag bool = p::switch, yaml bool = p::ok, show |v| v.then_some("yes");
    /// With --preload: how long the preloader may take to fork a worker before the
    /// spawn counts as failed [default: 10s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    spawn_timeout: Duration = Duration::from_secs(10) => spawn_timeout: Duration,
        flag Option<String> = p::text(parse_duration), yaml String = p::string(parse_duration),
        show |v| Some(Human(*v));
    /// How USR2 upgrades: `in-place` (the master execs the new binary itself and keeps
    /// its pid and workers: PID 1 of a container), `fork` (a new master, a new pid, the
    /// pid file's .oldbin handoff), or `auto`: in-place as PID 1 or under a single-child
    /// init (tini, dumb-init, docker-init, catatonit), fork otherwise [default: auto].
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    upgrade_mode: UpgradeMode = UpgradeMode::Auto => upgrade_mode: UpgradeMode,
        flag Option<String> = p::text(upgrade_mode), yaml String = p::string(upgrade_mode), show |v| Some(v);
    /// Replacement workers booting at once during a HUP rolling restart [default: 1].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    max_surge: usize = 1 => max_surge: usize,
        flag Option<String> = p::text(p::max_surge), yaml Value = p::scalar(p::max_surge), show |v| Some(v);
    /// Recycle a worker whose private memory (not shared copy-on-write: smaps_rollup
    /// Private_Clean + Private_Dirty) exceeds this SIZE (e.g. 512M, 1G); its replacement
    /// is ready before it stops [default: off].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    max_worker_memory: Option<u64> = None => max_worker_memory: Option<u64>,
        flag Option<String> = p::text(size_limit), yaml Value = p::scalar(size_limit),
        show |v| Some(v.map_or("off".into(), human_size));
    /// Recycle a worker this long after it started (at least 1s; each worker serves
    /// at least 1s once ready); its replacement is ready before it stops [default: off].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    max_worker_age: Option<Duration> = None => max_worker_age: Option<Duration>,
        flag Option<String> = p::text(age_limit), yaml String = p::string(age_limit),
        show |v| Some(v.map_or("off".into(), |d| Human(d).to_string()));
    /// Each worker's age limit is drawn in [age*(1-J), age] so workers do not recycle
    /// together: a percentage J [default: 10%].
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    max_worker_age_jitter: u32 = 10 => max_worker_age_jitter: u32,
        flag Option<String> = p::text(percent), yaml Value = p::scalar(percent),
        show |v| Some(format!("{v}%"));
    /// How often the private memory of ready workers is read, with max_worker_memory
    /// [default: 10s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    memory_check_interval: Duration = Duration::from_secs(10) => memory_check_interval: Duration,
        flag Option<String> = p::text(positive_duration), yaml String = p::string(positive_duration),
        show |v| Some(Human(*v));
    /// Where the master's and the workers' stdout go (reopened on USR1).
    #[arg(long, value_name = "FILE")]
    stdout_path: PathBuf => stdout_path: Option<PathBuf>,
        flag Option<PathBuf> = p::cloned, yaml PathBuf = p::ok, show |v| v.as_ref().map(|p| p.display());
    /// Where the master's and the workers' stderr (and the master's log) go
    /// (reopened on USR1).
    #[arg(long, value_name = "FILE")]
    stderr_path: PathBuf => stderr_path: Option<PathBuf>,
        flag Option<PathBuf> = p::cloned, yaml PathBuf = p::ok, show |v| v.as_ref().map(|p| p.display());
    /// Detach into the background; exit 0 once every worker is ready, 1 with
    /// the reason if startup failed.
    #[arg(short = 'D', long)]
    daemonize: bool = false => daemonize: bool,
        flag bool = p::switch, yaml bool = p::ok, show |v| v.then_some("yes");
    /// Run workers as this user (name or uid) with its groups; the master
    /// stays as the starting user.
    #[arg(long, value_name = "USER")]
    user: String => user: Option<Account> => r::user,
        flag Option<String> = p::text(p::name), yaml Value = p::scalar(p::name),
        show |v| v.as_ref().map(|u| format!("{} (uid {}, gid {})", u.name, u.uid, u.gid));
    /// Run workers with this primary group (name or gid) [default: the user's].
    #[arg(long, value_name = "GROUP")]
    group: String => group: Option<Group> => r::group,
        flag Option<String> = p::text(p::name), yaml Value = p::scalar(p::name),
        show |v| v.as_ref().map(|g| format!("{} (gid {})", g.name, g.gid));
    /// File mode creation mask for the master and workers, octal (e.g. 0027).
    #[arg(long, value_name = "MASK", allow_hyphen_values = true)]
    umask: u32 => umask: Option<u32>,
        flag Option<String> = p::text(parse_mode), yaml Value = p::umask, show |v| v.map(|m| format!("{m:04o}"));
}

/// `reopen_signal`: a signal, as `stop_signal` takes it, or `off`.
fn reopen_signal(text: &str) -> Result<Option<Signal>, String> {
    if text == "off" {
        return Ok(None);
    }
    match p::signal(text) {
        // `signal` speaks of stops; KILL and STOP fail here for another reason.
        Err(why) if why.contains("cannot be caught") => Err(format!(
            "{text:?}: cannot be caught, so no app can act on it"
        )),
        parsed => parsed.map(Some),
    }
}

/// `upgrade_mode`: `in-place`, `fork` or `auto`.
fn upgrade_mode(text: &str) -> Result<UpgradeMode, String> {
    match text {
        "in-place" => Ok(UpgradeMode::InPlace),
        "fork" => Ok(UpgradeMode::Fork),
        "auto" => Ok(UpgradeMode::Auto),
        _ => Err(format!("{text:?}: expected in-place, fork or auto")),
    }
}

/// `term`: `quick` or `graceful`.
fn term(text: &str) -> Result<Term, String> {
    match text {
        "quick" => Ok(Term::Quick),
        "graceful" => Ok(Term::Graceful),
        _ => Err(format!("{text:?}: expected quick or graceful")),
    }
}

/// A SIZE: whole bytes, or a whole number with K, M, G or T (powers of
/// 1024, `B` or `iB` after it allowed); `off` or `0` is no limit.
fn size_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t == "off" || t == "0" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if unit.starts_with('.') {
        return Err(format!(
            "{text:?}: a whole number of units (e.g. 1536M rather than 1.5G)"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 512M or 1G, or off"))?;
    let shift = match unit.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T, e.g. 512M)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .map(Some)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// Bytes as `size_limit` reads them back: `512M`, `1G`, `1000`.
fn human_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A whole percentage from 0 to 100, with or without `%`.
fn percent(text: &str) -> Result<u32, String> {
    match text.trim().trim_end_matches('%').trim().parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a whole percentage from 0 to 100, e.g. 10%"
        )),
    }
}

impl Config {
    /// A worker serves at least this long once ready before its age
    /// recycles it, and no `max_worker_age` is shorter: with a slow boot,
    /// an age near the boot time would replace each worker as soon as it
    /// is ready, the pool busy booting instead of serving.
    pub const MIN_SERVE: Duration = Duration::from_secs(1);
}

/// `max_worker_age`: `off`, `0` or at least `Config::MIN_SERVE`; a shorter age
/// would keep the pool booting replacements instead of serving.
fn age_limit(text: &str) -> Result<Option<Duration>, String> {
    match p::timeout(text)? {
        Some(d) if d < Config::MIN_SERVE => Err(format!(
            "{text:?}: at least {} (or off): a worker must boot and serve before it is replaced",
            Human(Config::MIN_SERVE)
        )),
        age => Ok(age),
    }
}

/// A duration of more than 0: a check every 0 s would never sleep.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: must be more than 0")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_mode_is_in_place_fork_or_auto() {
        assert_eq!(upgrade_mode("in-place"), Ok(UpgradeMode::InPlace));
        assert_eq!(upgrade_mode("fork"), Ok(UpgradeMode::Fork));
        assert_eq!(upgrade_mode("auto"), Ok(UpgradeMode::Auto));
        assert!(upgrade_mode("inplace").is_err());
    }

    #[test]
    fn sizes_are_bytes_or_binary_units() {
        assert_eq!(size_limit("512M"), Ok(Some(512 << 20)));
        assert_eq!(size_limit("1G"), Ok(Some(1 << 30)));
        assert_eq!(size_limit("64KiB"), Ok(Some(64 << 10)));
        assert_eq!(size_limit("1000"), Ok(Some(1000)));
        assert_eq!(size_limit("off"), Ok(None));
        assert_eq!(size_limit("0"), Ok(None));
        assert!(size_limit("1.5G").unwrap_err().contains("1536M"));
        assert!(size_limit("12X").unwrap_err().contains("unknown unit"));
        assert!(size_limit("99999999999T")
            .unwrap_err()
            .contains("too large"));
        for text in ["512M", "1G", "3K", "1000"] {
            assert_eq!(human_size(size_limit(text).unwrap().unwrap()), text);
        }
    }

    #[test]
    fn jitter_is_a_percentage_and_the_check_interval_positive() {
        assert_eq!(percent("10%"), Ok(10));
        assert_eq!(percent("0"), Ok(0));
        assert!(percent("101%").is_err());
        assert!(percent("-1").is_err());
        assert!(positive_duration("0").is_err());
        assert_eq!(positive_duration("5s"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn term_is_quick_or_graceful() {
        assert_eq!(term("quick"), Ok(Term::Quick));
        assert_eq!(term("graceful"), Ok(Term::Graceful));
        assert!(term("slow").is_err());
    }

    #[test]
    fn reopen_signal_is_off_or_a_signal_an_app_can_catch() {
        assert_eq!(reopen_signal("off"), Ok(None));
        assert_eq!(reopen_signal("USR1"), Ok(Some(Signal::SIGUSR1)));
        assert_eq!(reopen_signal("sighup"), Ok(Some(Signal::SIGHUP)));
        let kill = reopen_signal("KILL").unwrap_err();
        assert!(kill.contains("no app can act on it"), "{kill}");
        assert!(reopen_signal("NOPE").is_err());
    }
}
