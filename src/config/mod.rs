//! The master's configuration: a YAML file (`-c FILE`) overlaid by flags.
//!
//! Each setting is written once, in the table in `settings`. Loading takes
//! two steps: `parse` turns the file and the flags into `Layer`s of valid
//! values, touching nothing but the file, each error naming its origin
//! (`config app.yml: ready_timeout: ...` or `--ready-timeout ...`); then
//! `resolve` lays the flags over the file, fills defaults, looks users,
//! groups and listen hosts up, and checks the whole. A client that needs
//! only `pid:` (`pid_file_of`) stops after parsing: it works while DNS is
//! down or the workers' user does not exist.

mod describe;
mod keys;
mod parse;
mod resolve;
mod settings;

pub use describe::shell_words;
pub use parse::read_file;
#[cfg(test)]
use parse::{parse_file, signal as parse_signal};
#[cfg(test)]
use resolve::{lookup_group, lookup_user};
pub use settings::{Config, Layer, MasterFlags};

use parse::Source;

use crate::duration::Human;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// More workers than this is almost surely a typo.
pub const MAX_WORKERS: usize = 16_384;

/// The error for a master with nothing to listen on (checked once socket
/// activation had its say).
pub const NO_LISTENER: &str =
    "no listener: give --listen ADDR or `listen:` in the config file, or start with systemd socket activation";

/// How a new master retires the old one during an upgrade (USR2). In
/// `status` as `gradual`, `all` or `manual`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retire {
    /// The old master retires one worker per new worker ready (told by a
    /// count on its notify socket, as a TTOU would), QUIT when all are ready.
    Gradual,
    /// QUIT to the old master once all new workers are ready.
    All,
    /// Leave the old master running; the operator sends WINCH/QUIT (nginx style).
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyMode {
    /// The worker sends `READY=1` to the master's notify socket.
    Notify,
    /// The worker is ready once it has stayed alive this long.
    Delay(Duration),
}

/// A user to run workers as: its ids and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub groups: Vec<u32>,
}

/// A group to run workers as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// Why a configuration was refused; `Display` is the one line to show.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value in the config file, or the file itself, is wrong.
    File { path: PathBuf, message: String },
    /// A flag's value is wrong; `flag` is as typed, e.g. `--ready-timeout`.
    Flag { flag: String, message: String },
    /// The settings do not fit together, or one is missing.
    Invalid(String),
}

impl ConfigError {
    /// An error in the flag of the setting `key`.
    fn flag(key: &str, message: String) -> ConfigError {
        let flag = format!("--{}", key.replace('_', "-"));
        ConfigError::Flag { flag, message }
    }

    /// An error in the setting `key`, named as written: flag or file key.
    fn at(source: Source, key: &str, file: Option<&Path>, why: String) -> ConfigError {
        match (source, file) {
            (Source::Flag, _) => ConfigError::flag(key, why),
            (Source::File, Some(path)) => ConfigError::File {
                path: path.to_path_buf(),
                message: format!("{key}: {why}"),
            },
            (Source::File, None) => ConfigError::Invalid(format!("{key}: {why}")),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                let why = crate::error::io_reason(source);
                write!(f, "config {}: {why}", path.display())
            }
            ConfigError::File { path, message } => {
                write!(f, "config {}: {message}", path.display())
            }
            ConfigError::Flag { flag, message } => write!(f, "{flag} {message}"),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The master's errors are text for now; this keeps `?` working there.
impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// Loads the file (if any), lays the flags and `command` over it, fills
/// defaults, looks names up and checks the whole: what the master runs.
pub fn load(flags: &MasterFlags, command: &[OsString]) -> Result<Config, ConfigError> {
    load_with(flags, command, &resolve::SYSTEM)
}

fn load_with(
    flags: &MasterFlags,
    command: &[OsString],
    lookups: &resolve::Lookups,
) -> Result<Config, ConfigError> {
    let text = match &flags.config {
        Some(path) => Some(parse::read_text(path)?),
        None => None,
    };
    resolve_with(flags, command, text, lookups)
}

/// As `load`, with the file's text given rather than read: the
/// configuration an old image ran with, handed across an in-place upgrade.
pub fn load_text(
    flags: &MasterFlags,
    command: &[OsString],
    text: Option<String>,
) -> Result<Config, ConfigError> {
    resolve_with(flags, command, text, &resolve::SYSTEM)
}

fn resolve_with(
    flags: &MasterFlags,
    command: &[OsString],
    text: Option<String>,
    lookups: &resolve::Lookups,
) -> Result<Config, ConfigError> {
    let file = match (&flags.config, &text) {
        (Some(path), Some(text)) => parse::parse_file_at(path, text)?,
        _ => Layer::default(),
    };
    let mut over = Layer::from_flags(flags)?;
    over.command = (!command.is_empty()).then(|| command.to_vec());
    let mut config = Layer::resolve(over, file, flags.config.clone(), lookups)?;
    resolve::check_whole(&config)?;
    config.config_text = text.filter(|_| flags.config.is_some());
    Ok(config)
}

/// The `pid:` key of a config file, parsed with no lookup at all: what a
/// client needs to find the master. Fails if the file is unreadable or
/// invalid, as the master would.
pub fn pid_file_of(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    Ok(read_file(path)?.pid)
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyMode::Notify => write!(f, "notify"),
            ReadyMode::Delay(d) => write!(f, "delay:{}", Human(*d)),
        }
    }
}

impl fmt::Display for Retire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Retire::Gradual => "gradual",
            Retire::All => "all",
            Retire::Manual => "manual",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::Address;
    use nix::sys::signal::Signal;

    fn flags() -> MasterFlags {
        MasterFlags::default()
    }

    fn cmd() -> Vec<OsString> {
        vec!["app".into()]
    }

    fn flag_layer(flags: &MasterFlags) -> Result<Layer, String> {
        let mut layer = Layer::from_flags(flags).map_err(|e| e.to_string())?;
        layer.command = Some(cmd());
        Ok(layer)
    }

    /// The resolve step with the system's lookups, as the master runs it.
    fn resolved(layer: Layer) -> Result<Config, String> {
        let config = Layer::resolve(Layer::default(), layer, None, &resolve::SYSTEM)?;
        resolve::check_whole(&config)?;
        Ok(config)
    }

    /// A config file of its own for one test.
    fn config_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("fm-config-{}-{name}.yml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults() {
        let mut f = flags();
        f.listen = vec!["8080".into()];
        let c = load(&f, &cmd()).unwrap();
        assert_eq!(c.workers, 1);
        assert_eq!(c.ready, ReadyMode::Delay(Duration::from_secs(1)));
        assert_eq!(c.ready_timeout, Duration::from_secs(60));
        assert_eq!(c.timeout, None);
        assert_eq!(c.stop_signal, Signal::SIGTERM);
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.retire, Retire::Gradual);
        assert_eq!(c.max_surge, 1);
        assert!(!c.daemonize);
    }

    #[test]
    fn file_every_key() {
        let layer = parse_file(
            "listen:\n  - 8080\n  - web=127.0.0.1:9000\n  - {address: 'unix:/tmp/x.sock', name: api, backlog: 64, mode: '0660'}\n\
             workers: 4\npid: /tmp/fm.pid\nworking_directory: /srv/app/current\n\
             env: {PORT: 8080, MODE: prod}\nready: notify\nready_timeout: 30s\ntimeout: 10s\n\
             stop_signal: QUIT\ngraceful_timeout: 1m\nlog_level: debug\ncommand: [ruby, app.rb]\n\
             retire: manual\nmax_surge: 2\nstdout_path: /tmp/out.log\nstderr_path: /tmp/err.log\n\
             user: root\ngroup: 0\numask: '0027'\ndaemonize: true\n",
        )
        .unwrap();
        let c = resolved(layer).unwrap();
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[2].address, Address::Unix("/tmp/x.sock".into()));
        assert_eq!(c.listeners[2].backlog, 64);
        assert_eq!(c.listeners[2].mode, Some(0o660));
        assert_eq!(c.listeners[2].fd_name(), "api");
        assert_eq!(c.workers, 4);
        assert_eq!(c.env["PORT"], "8080");
        assert_eq!(c.ready, ReadyMode::Notify);
        assert_eq!(c.timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.stop_signal, Signal::SIGQUIT);
        assert_eq!(c.command, vec![OsString::from("ruby"), "app.rb".into()]);
        assert_eq!(c.retire, Retire::Manual);
        assert_eq!(c.stdout_path, Some(PathBuf::from("/tmp/out.log")));
        assert_eq!(c.user.as_ref().map(|u| u.uid), Some(0));
        assert_eq!(c.group.as_ref().map(|g| g.gid), Some(0));
        assert_eq!(c.umask, Some(0o027));
        assert!(c.daemonize);
        assert_eq!(c.max_surge, 2);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn flags_override_file_and_env_merges() {
        let file = parse_file("listen: [8080]\nworkers: 4\nenv: {A: file, B: file}\n").unwrap();
        let mut f = flags();
        f.workers = Some("2".into());
        f.env = vec!["B=flag".into()];
        let c = Layer::resolve(flag_layer(&f).unwrap(), file, None, &resolve::SYSTEM).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.env["A"], "file");
        assert_eq!(c.env["B"], "flag");
        assert_eq!(c.listeners.len(), 1);
    }

    #[test]
    fn file_errors_name_key_and_line() {
        let err = parse_file("workers: 2\nbogus: 1\n").err().unwrap();
        assert!(err.starts_with("line 2: unknown field `bogus`"), "{err}");
        let err = parse_file("ready_timeout: 30x\n").err().unwrap();
        assert!(err.starts_with("ready_timeout: \"30x\""), "{err}");
        let err = parse_file("listen: [{address: 80, colour: red}]\n")
            .err()
            .unwrap();
        assert!(err.contains("unknown key \"colour\""), "{err}");
        let err = parse_file("workers: many\n").err().unwrap();
        assert!(err.contains("workers: \"many\""), "{err}");
        let err = parse_file("listen: [{address: 80, mode: '0600'}]\n")
            .err()
            .unwrap();
        assert!(err.contains("unix sockets only"), "{err}");
        let err = parse_file("ready: [a]\n").err().unwrap();
        assert!(err.starts_with("line 1: ready: invalid type"), "{err}");
    }

    #[test]
    fn a_duplicate_key_is_reported_at_its_own_line() {
        let err = parse_file("workers: 2\nlisten: [80]\nworkers: 3\n")
            .err()
            .unwrap();
        assert!(err.starts_with("line 3: "), "{err}");
        assert!(err.contains("workers"), "{err}");
        let err = parse_file("listen: [80]\nenv:\n  A: x\n  B: y\n  A: z\nworkers: 1\n")
            .err()
            .unwrap();
        assert_eq!(err, "line 5: duplicate key `A`");
        // The same key in two different maps is no duplicate.
        parse_file("env:\n  A: x\nlisten:\n  - {address: 80, name: A}\n").unwrap();
    }

    #[test]
    fn zero_workers_is_refused_where_it_was_written() {
        let err = parse_file("workers: 0\n").err().unwrap();
        assert!(err.starts_with("workers: \"0\": at least 1"), "{err}");
        let mut f = flags();
        f.workers = Some("0".into());
        let err = flag_layer(&f).err().unwrap();
        assert!(err.starts_with("--workers \"0\": at least 1"), "{err}");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let mut f = flags();
        f.ready_timeout = Some("soon".into());
        assert!(flag_layer(&f)
            .err()
            .unwrap()
            .starts_with("--ready-timeout \"soon\""));
        let mut f = flags();
        f.listen = vec!["nope".into()];
        assert!(flag_layer(&f)
            .err()
            .unwrap()
            .starts_with("--listen \"nope\""));
        let mut f = flags();
        f.stop_signal = Some("KILL".into());
        assert!(flag_layer(&f).err().unwrap().contains("cannot be caught"));
        let mut f = flags();
        f.env = vec!["NOEQUALS".into()];
        assert_eq!(
            flag_layer(&f).err().unwrap(),
            "--env \"NOEQUALS\": expected KEY=VALUE"
        );
    }

    #[test]
    fn whole_config_checks() {
        let layer = || parse_file("listen: [8080]\n").unwrap();
        assert!(resolved(layer()).err().unwrap().contains("missing command"));
        let mut l = parse_file("listen: [8080]\ncommand: [app]\ntimeout: 5s\n").unwrap();
        assert!(resolved(l).err().unwrap().contains("needs `ready: notify`"));
        l = parse_file("listen: [8080, '0.0.0.0:8080']\ncommand: [app]\n").unwrap();
        assert!(resolved(l).err().unwrap().contains("given twice"));
    }

    #[test]
    fn accounts() {
        assert_eq!(lookup_user("0").unwrap().name, "root");
        assert!(lookup_user("no-such-user-xyz")
            .unwrap_err()
            .contains("no such user"));
        assert!(lookup_group("no-such-group-xyz")
            .unwrap_err()
            .contains("no such group"));
        let err = parse_file("umask: 27\n").err().unwrap();
        assert!(err.contains("quoted"), "{err}");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn describe_lists_what_would_run() {
        let mut f = flags();
        f.listen = vec!["web=127.0.0.1:8080".into()];
        let c = load(&f, &["my app".into(), "-x".into()]).unwrap();
        let text = c.describe();
        assert!(
            text.contains("listen: fd=3 127.0.0.1:8080 name=web"),
            "{text}"
        );
        assert!(text.contains("command: 'my app' -x"), "{text}");
        assert!(text.contains("timeout: off"), "{text}");
        assert!(!text.contains("daemonize"), "{text}");
    }

    const UNRESOLVABLE: &str =
        "user: no-such-user-xyz\nlisten: [no-such-host.invalid:80]\npid: /x.pid\ncommand: [app]\n";

    /// No DNS in unit tests: every host name fails as getaddrinfo would.
    fn no_hosts(host: &str, _port: u16) -> Result<std::net::SocketAddr, String> {
        Err(format!("cannot resolve host {host:?}: not in this test"))
    }

    #[test]
    fn a_client_finds_the_pid_file_without_any_lookup() {
        let path = config_file("client", UNRESOLVABLE);
        assert_eq!(pid_file_of(&path).unwrap(), Some(PathBuf::from("/x.pid")));
        std::fs::remove_file(&path).unwrap();
        let path = config_file("client-bad", "workers: many\n");
        let err = pid_file_of(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            err,
            format!(
                "config {}: workers: \"many\": not a whole number",
                path.display()
            )
        );
    }

    #[test]
    fn the_master_still_looks_names_up_and_names_their_origin() {
        let path = config_file("master", UNRESOLVABLE);
        let mut f = flags();
        f.config = Some(path.clone());
        let hosts = resolve::Lookups {
            host: no_hosts,
            ..resolve::SYSTEM
        };
        let err = load_with(&f, &[], &hosts).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config {}: listen: \"no-such-host.invalid:80\": cannot resolve host \"no-such-host.invalid\": not in this test",
                path.display()
            )
        );
        f.listen = vec!["8080".into()];
        let err = load_with(&f, &[], &hosts).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config {}: user: \"no-such-user-xyz\": no such user",
                path.display()
            )
        );
        f.user = Some("no-such-user-xyz".into());
        let err = load_with(&f, &[], &hosts).unwrap_err().to_string();
        assert_eq!(err, "--user \"no-such-user-xyz\": no such user");
        // A value the flags replace is never looked up.
        f.user = Some("0".into());
        assert_eq!(
            load_with(&f, &[], &hosts).unwrap().user.map(|u| u.uid),
            Some(0)
        );
        f.listen = vec!["web=no-such-host.invalid:80".into()];
        let err = load_with(&f, &[], &hosts).unwrap_err().to_string();
        assert!(
            err.starts_with("--listen \"web=no-such-host.invalid:80\": cannot resolve"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
