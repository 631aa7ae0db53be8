//! The master's configuration: a YAML file (`-c FILE`) overlaid by flags.
//!
//! Both sources are parsed into a `Layer` of optional, already-validated
//! values, each error naming its origin (`config app.yml: ready_timeout: ...`
//! or `--ready-timeout ...`). The flag layer is laid over the file layer and
//! the result filled with defaults into a `Config`.

use crate::cli::MasterFlags;
use crate::duration::{parse_duration, Human};
use crate::listen::{
    parse_address_with, parse_listen, parse_listen_with, parse_mode, ListenSpec, Resolve,
    DEFAULT_BACKLOG,
};
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// More workers than this is almost surely a typo.
pub const MAX_WORKERS: usize = 16_384;

/// How a new master retires the old one during an upgrade (USR2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Everything the master needs, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub config_path: Option<PathBuf>,
    pub listeners: Vec<ListenSpec>,
    pub workers: usize,
    pub pid_file: Option<PathBuf>,
    pub working_directory: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub timeout: Option<Duration>,
    pub stop_signal: Signal,
    pub graceful_timeout: Duration,
    pub log_level: Option<String>,
    pub command: Vec<OsString>,
    pub retire: Retire,
    pub max_surge: usize,
    pub stdout_path: Option<PathBuf>,
    pub stderr_path: Option<PathBuf>,
    pub daemonize: bool,
    /// Run workers as this user (and its groups), resolved at load.
    pub user: Option<Account>,
    pub group: Option<Group>,
    pub umask: Option<u32>,
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

/// One source of settings; `None` means "not said here".
#[derive(Debug, Default)]
pub struct Layer {
    pub listen: Option<Vec<ListenSpec>>,
    pub workers: Option<usize>,
    pub pid: Option<PathBuf>,
    pub working_directory: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub ready: Option<ReadyMode>,
    pub ready_timeout: Option<Duration>,
    pub timeout: Option<Option<Duration>>,
    pub stop_signal: Option<Signal>,
    pub graceful_timeout: Option<Duration>,
    pub log_level: Option<String>,
    pub command: Option<Vec<OsString>>,
    pub retire: Option<Retire>,
    pub max_surge: Option<usize>,
    pub stdout_path: Option<PathBuf>,
    pub stderr_path: Option<PathBuf>,
    pub daemonize: Option<bool>,
    pub user: Option<Account>,
    pub group: Option<Group>,
    pub umask: Option<u32>,
}

/// The YAML file as written. Values stay loose here so that each key's error
/// can say what was expected in our words, not serde's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    listen: Option<Vec<Value>>,
    workers: Option<Value>,
    pid: Option<PathBuf>,
    working_directory: Option<PathBuf>,
    env: Option<BTreeMap<String, Value>>,
    ready: Option<String>,
    ready_timeout: Option<String>,
    timeout: Option<String>,
    stop_signal: Option<Value>,
    graceful_timeout: Option<String>,
    log_level: Option<String>,
    command: Option<Vec<String>>,
    retire: Option<String>,
    max_surge: Option<Value>,
    stdout_path: Option<PathBuf>,
    stderr_path: Option<PathBuf>,
    daemonize: Option<bool>,
    user: Option<Value>,
    group: Option<Value>,
    umask: Option<Value>,
}

/// Loads the file (if any), lays the flags over it, validates, fills defaults.
pub fn load(flags: &MasterFlags, command: &[OsString]) -> Result<Config, String> {
    let file = match &flags.config {
        Some(path) => read_file(path)?,
        None => Layer::default(),
    };
    let flag_layer = flag_layer(flags, command)?;
    resolve(flags.config.clone(), flag_layer.over(file))
}

/// Reads and parses a config file; errors name the file.
pub fn read_file(path: &Path) -> Result<Layer, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config {}: {}", path.display(), crate::error::io_reason(&e)))?;
    parse_file(&text).map_err(|why| format!("config {}: {why}", path.display()))
}

/// Parses config file text into a layer.
pub fn parse_file(text: &str) -> Result<Layer, String> {
    parse_file_with(text, crate::listen::resolve_host)
}

/// `parse_file` with host names in `listen` looked up by `resolve`.
pub fn parse_file_with(text: &str, resolve: Resolve) -> Result<Layer, String> {
    let keys: FileKeys = if text.trim().is_empty() {
        FileKeys::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_reason(&e))?
    };
    let mut layer = Layer {
        pid: keys.pid,
        working_directory: keys.working_directory,
        stdout_path: keys.stdout_path,
        stderr_path: keys.stderr_path,
        daemonize: keys.daemonize,
        command: keys
            .command
            .map(|c| c.into_iter().map(OsString::from).collect()),
        ..Layer::default()
    };
    if let Some(entries) = keys.listen {
        let specs = entries
            .iter()
            .map(|entry| listen_entry(entry, resolve))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| format!("listen: {why}"))?;
        layer.listen = Some(specs);
    }
    if let Some(value) = keys.workers {
        layer.workers = Some(workers_value(&scalar(&value)).map_err(|w| format!("workers: {w}"))?);
    }
    for (key, value) in keys.env.unwrap_or_default() {
        validate_env_key(&key).map_err(|why| format!("env: {why}"))?;
        let value = scalar(&value);
        layer.env.insert(key, value);
    }
    if let Some(text) = keys.ready {
        layer.ready = Some(parse_ready(&text).map_err(|w| format!("ready: {w}"))?);
    }
    layer.ready_timeout = duration_key("ready_timeout", keys.ready_timeout)?;
    if let Some(text) = keys.timeout {
        layer.timeout = Some(parse_timeout(&text).map_err(|w| format!("timeout: {w}"))?);
    }
    if let Some(value) = keys.stop_signal {
        let text = scalar(&value);
        layer.stop_signal = Some(parse_signal(&text).map_err(|w| format!("stop_signal: {w}"))?);
    }
    layer.graceful_timeout = duration_key("graceful_timeout", keys.graceful_timeout)?;
    if let Some(level) = keys.log_level {
        validate_log_level(&level).map_err(|w| format!("log_level: {w}"))?;
        layer.log_level = Some(level);
    }
    if let Some(text) = keys.retire {
        layer.retire = Some(parse_retire(&text).map_err(|w| format!("retire: {w}"))?);
    }
    if let Some(value) = keys.max_surge {
        let n = max_surge_value(&scalar(&value)).map_err(|w| format!("max_surge: {w}"))?;
        layer.max_surge = Some(n);
    }
    if let Some(value) = keys.user {
        layer.user = Some(parse_user(&scalar(&value)).map_err(|w| format!("user: {w}"))?);
    }
    if let Some(value) = keys.group {
        layer.group = Some(parse_group(&scalar(&value)).map_err(|w| format!("group: {w}"))?);
    }
    if let Some(value) = keys.umask {
        if matches!(value, Value::Number(_)) {
            return Err(
                "umask: write it quoted, e.g. umask: '0027' (an unquoted number is ambiguous)"
                    .into(),
            );
        }
        layer.umask = Some(parse_mode(&scalar(&value)).map_err(|w| format!("umask: {w}"))?);
    }
    Ok(layer)
}

fn flag_layer(flags: &MasterFlags, command: &[OsString]) -> Result<Layer, String> {
    let mut layer = Layer {
        pid: flags.pid.clone(),
        working_directory: flags.working_directory.clone(),
        stdout_path: flags.stdout_path.clone(),
        stderr_path: flags.stderr_path.clone(),
        daemonize: flags.daemonize.then_some(true),
        command: (!command.is_empty()).then(|| command.to_vec()),
        ..Layer::default()
    };
    if !flags.listen.is_empty() {
        let specs = flags
            .listen
            .iter()
            .map(|text| parse_listen(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| format!("--listen {why}"))?;
        layer.listen = Some(specs);
    }
    if let Some(text) = &flags.workers {
        layer.workers = Some(workers_value(text).map_err(|w| format!("--workers {w}"))?);
    }
    for pair in &flags.env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
        validate_env_key(key).map_err(|why| format!("--env {why}"))?;
        layer.env.insert(key.to_string(), value.to_string());
    }
    if let Some(text) = &flags.ready {
        layer.ready = Some(parse_ready(text).map_err(|w| format!("--ready {w}"))?);
    }
    if let Some(text) = &flags.ready_timeout {
        layer.ready_timeout =
            Some(parse_duration(text).map_err(|w| format!("--ready-timeout {w}"))?);
    }
    if let Some(text) = &flags.timeout {
        layer.timeout = Some(parse_timeout(text).map_err(|w| format!("--timeout {w}"))?);
    }
    if let Some(text) = &flags.stop_signal {
        layer.stop_signal = Some(parse_signal(text).map_err(|w| format!("--stop-signal {w}"))?);
    }
    if let Some(text) = &flags.graceful_timeout {
        layer.graceful_timeout =
            Some(parse_duration(text).map_err(|w| format!("--graceful-timeout {w}"))?);
    }
    if let Some(level) = &flags.log_level {
        validate_log_level(level).map_err(|w| format!("--log-level {w}"))?;
        layer.log_level = Some(level.clone());
    }
    if let Some(text) = &flags.retire {
        layer.retire = Some(parse_retire(text).map_err(|w| format!("--retire {w}"))?);
    }
    if let Some(text) = &flags.max_surge {
        layer.max_surge = Some(max_surge_value(text).map_err(|w| format!("--max-surge {w}"))?);
    }
    if let Some(text) = &flags.user {
        layer.user = Some(parse_user(text).map_err(|w| format!("--user {w}"))?);
    }
    if let Some(text) = &flags.group {
        layer.group = Some(parse_group(text).map_err(|w| format!("--group {w}"))?);
    }
    if let Some(text) = &flags.umask {
        layer.umask = Some(parse_mode(text).map_err(|w| format!("--umask {w}"))?);
    }
    Ok(layer)
}

impl Layer {
    /// This layer's values where given, `base`'s otherwise; `env` maps merge.
    pub fn over(self, base: Layer) -> Layer {
        let mut env = base.env;
        env.extend(self.env);
        Layer {
            listen: self.listen.or(base.listen),
            workers: self.workers.or(base.workers),
            pid: self.pid.or(base.pid),
            working_directory: self.working_directory.or(base.working_directory),
            env,
            ready: self.ready.or(base.ready),
            ready_timeout: self.ready_timeout.or(base.ready_timeout),
            timeout: self.timeout.or(base.timeout),
            stop_signal: self.stop_signal.or(base.stop_signal),
            graceful_timeout: self.graceful_timeout.or(base.graceful_timeout),
            log_level: self.log_level.or(base.log_level),
            command: self.command.or(base.command),
            retire: self.retire.or(base.retire),
            max_surge: self.max_surge.or(base.max_surge),
            stdout_path: self.stdout_path.or(base.stdout_path),
            stderr_path: self.stderr_path.or(base.stderr_path),
            daemonize: self.daemonize.or(base.daemonize),
            user: self.user.or(base.user),
            group: self.group.or(base.group),
            umask: self.umask.or(base.umask),
        }
    }
}

/// The error for a master with nothing to listen on (checked once socket
/// activation had its say).
pub const NO_LISTENER: &str =
    "no listener: give --listen ADDR or `listen:` in the config file, or start with systemd socket activation";

/// Fills defaults and checks what only the whole can tell.
pub fn resolve(config_path: Option<PathBuf>, layer: Layer) -> Result<Config, String> {
    let config = Config {
        config_path,
        listeners: layer.listen.unwrap_or_default(),
        workers: layer.workers.unwrap_or(1),
        pid_file: layer.pid,
        working_directory: layer.working_directory,
        env: layer.env,
        ready: layer
            .ready
            .unwrap_or(ReadyMode::Delay(Duration::from_secs(1))),
        ready_timeout: layer.ready_timeout.unwrap_or(Duration::from_secs(60)),
        timeout: layer.timeout.flatten(),
        stop_signal: layer.stop_signal.unwrap_or(Signal::SIGTERM),
        graceful_timeout: layer.graceful_timeout.unwrap_or(Duration::from_secs(30)),
        log_level: layer.log_level,
        command: layer.command.unwrap_or_default(),
        retire: layer.retire.unwrap_or(Retire::Gradual),
        max_surge: layer.max_surge.unwrap_or(1),
        stdout_path: layer.stdout_path,
        stderr_path: layer.stderr_path,
        daemonize: layer.daemonize.unwrap_or(false),
        user: layer.user,
        group: layer.group,
        umask: layer.umask,
    };
    if config.command.is_empty() {
        return Err("missing command: give the app after `--` (forkmaster [OPTIONS] -- COMMAND [ARGS...]) or `command:` in the config file".into());
    }
    if config.command[0].is_empty() {
        return Err("command: empty program name".into());
    }
    if config.ready_timeout.is_zero() {
        return Err("ready_timeout: must be more than 0".into());
    }
    if config.timeout.is_some() && config.ready != ReadyMode::Notify {
        return Err("timeout: the watchdog needs `ready: notify` (workers send WATCHDOG=1 to NOTIFY_SOCKET)".into());
    }
    for (i, a) in config.listeners.iter().enumerate() {
        if config.listeners[..i].iter().any(|b| b.address == a.address) {
            return Err(format!("listen: {} is given twice", a.address));
        }
    }
    Ok(config)
}

impl Config {
    /// What `--check` prints: the configuration as it would run.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        if let Some(path) = &self.config_path {
            line(format!("config: {}", path.display()));
        }
        for (i, spec) in self.listeners.iter().enumerate() {
            let mut extra = format!("backlog={}", spec.backlog);
            if let Some(mode) = spec.mode {
                let _ = write!(extra, " mode={mode:04o}");
            }
            line(format!(
                "listen: fd={} {} name={} {extra}",
                3 + i,
                spec.address,
                spec.fd_name()
            ));
        }
        line(format!("workers: {}", self.workers));
        line(format!("command: {}", shell_words(&self.command)));
        if let Some(dir) = &self.working_directory {
            line(format!("working_directory: {}", dir.display()));
        }
        for (key, value) in &self.env {
            line(format!("env: {key}={value}"));
        }
        line(format!("ready: {}", self.ready));
        line(format!("ready_timeout: {}", Human(self.ready_timeout)));
        match self.timeout {
            Some(t) => line(format!("timeout: {}", Human(t))),
            None => line("timeout: off".into()),
        }
        line(format!("stop_signal: {}", self.stop_signal.as_str()));
        line(format!(
            "graceful_timeout: {}",
            Human(self.graceful_timeout)
        ));
        line(format!("retire: {}", self.retire));
        line(format!("max_surge: {}", self.max_surge));
        if let Some(user) = &self.user {
            line(format!(
                "user: {} (uid {}, gid {})",
                user.name, user.uid, user.gid
            ));
        }
        if let Some(group) = &self.group {
            line(format!("group: {} (gid {})", group.name, group.gid));
        }
        if let Some(umask) = self.umask {
            line(format!("umask: {umask:04o}"));
        }
        for (key, path) in [
            ("stdout_path", &self.stdout_path),
            ("stderr_path", &self.stderr_path),
        ] {
            if let Some(path) = path {
                line(format!("{key}: {}", path.display()));
            }
        }
        if self.daemonize {
            line("daemonize: yes".into());
        }
        if let Some(pid) = &self.pid_file {
            line(format!("pid: {}", pid.display()));
        }
        out
    }
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyMode::Notify => write!(f, "notify"),
            ReadyMode::Delay(d) => write!(f, "delay:{}", Human(*d)),
        }
    }
}

/// The command as a shell would read it back, for logs and `--check`.
pub fn shell_words(words: &[OsString]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.to_string_lossy();
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+%".contains(&b))
            {
                w.into_owned()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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

/// `gradual`, `all` or `manual`.
pub fn parse_retire(text: &str) -> Result<Retire, String> {
    match text {
        "gradual" => Ok(Retire::Gradual),
        "all" => Ok(Retire::All),
        "manual" => Ok(Retire::Manual),
        _ => Err(format!("{text:?}: expected gradual, all or manual")),
    }
}

/// A user by name or uid, with its primary group and supplementary groups.
pub fn parse_user(text: &str) -> Result<Account, String> {
    use nix::unistd::{Uid, User};
    let found = match text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(text),
    };
    let user = found
        .map_err(|e| format!("{text:?}: {}", e.desc()))?
        .ok_or_else(|| format!("{text:?}: no such user"))?;
    let name =
        std::ffi::CString::new(user.name.as_str()).map_err(|_| format!("{text:?}: bad name"))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid)
        .map_err(|e| format!("{text:?}: groups: {}", e.desc()))?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        groups,
    })
}

/// A group by name or gid.
pub fn parse_group(text: &str) -> Result<Group, String> {
    use nix::unistd::{Gid, Group as NixGroup};
    let found = match text.parse::<u32>() {
        Ok(gid) => NixGroup::from_gid(Gid::from_raw(gid)),
        Err(_) => NixGroup::from_name(text),
    };
    let group = found
        .map_err(|e| format!("{text:?}: {}", e.desc()))?
        .ok_or_else(|| format!("{text:?}: no such group"))?;
    Ok(Group {
        name: group.name,
        gid: group.gid.as_raw(),
    })
}

fn max_surge_value(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a whole number from 1 to {MAX_WORKERS}"
        )),
    }
}

/// `notify` or `delay:DURATION`.
pub fn parse_ready(text: &str) -> Result<ReadyMode, String> {
    if text == "notify" {
        return Ok(ReadyMode::Notify);
    }
    match text.strip_prefix("delay:") {
        Some(d) => parse_duration(d).map(ReadyMode::Delay),
        None => Err(format!(
            "{text:?}: expected `notify` or `delay:DURATION` (e.g. delay:1s)"
        )),
    }
}

/// A watchdog timeout; `off` or `0` turns it off.
fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

/// `TERM`, `SIGTERM` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let bad = || format!("{text:?}: not a signal (e.g. TERM, QUIT, INT, USR1)");
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let signal = Signal::from_str(&name).map_err(|_| bad())?;
    if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
        return Err(format!(
            "{text:?}: cannot be caught, so it cannot stop gracefully"
        ));
    }
    Ok(signal)
}

fn workers_value(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: not a whole number"))?;
    if n > MAX_WORKERS {
        return Err(format!("{text:?}: more than {MAX_WORKERS}"));
    }
    Ok(n)
}

fn validate_env_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        Err(format!("{key:?}: not a variable name"))
    } else if crate::protocol::is_worker_var(std::ffi::OsStr::new(key)) {
        Err(format!("{key:?}: set by forkmaster itself for each worker"))
    } else {
        Ok(())
    }
}

fn validate_log_level(level: &str) -> Result<(), String> {
    match level {
        "off" | "error" | "warn" | "info" | "debug" | "trace" => Ok(()),
        _ => Err(format!(
            "{level:?}: expected off, error, warn, info, debug or trace"
        )),
    }
}

fn duration_key(key: &str, text: Option<String>) -> Result<Option<Duration>, String> {
    text.map(|t| parse_duration(&t).map_err(|w| format!("{key}: {w}")))
        .transpose()
}

/// A YAML scalar as text (`8080`, `true`, `x`), for keys that take either.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        // A list or map where a scalar belongs: shown on one line.
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// One `listen:` entry: a string or port, or a map with `address`, `name`,
/// `backlog` and (for Unix sockets) `mode`.
fn listen_entry(value: &Value, resolve: Resolve) -> Result<ListenSpec, String> {
    let map = match value {
        Value::Mapping(map) => map,
        Value::String(_) | Value::Number(_) => return parse_listen_with(&scalar(value), resolve),
        _ => return Err("expected an address or a map with `address`".into()),
    };
    let mut address = None;
    let mut spec = ListenSpec {
        address: crate::listen::Address::Unix(PathBuf::new()),
        name: None,
        backlog: DEFAULT_BACKLOG,
        mode: None,
    };
    for (key, value) in map {
        let key = scalar(key);
        let text = scalar(value);
        match key.as_str() {
            "address" => {
                address =
                    Some(parse_address_with(&text, resolve).map_err(|w| format!("{text:?}: {w}"))?)
            }
            "name" => {
                let probe = parse_listen(&format!("{text}=0"))?;
                spec.name = probe.name;
            }
            "backlog" => {
                spec.backlog = text
                    .parse()
                    .ok()
                    .filter(|b| (1..=65535).contains(b))
                    .ok_or_else(|| format!("backlog {text:?}: expected 1 to 65535"))?;
            }
            "mode" if matches!(value, Value::Number(_)) => {
                return Err(format!(
                    "mode {text}: write it quoted, e.g. mode: '0660' (an unquoted number \
                     is read as decimal or 0o-octal, which is easy to get wrong)"
                ))
            }
            "mode" => spec.mode = Some(parse_mode(&text)?),
            other => {
                return Err(format!(
                    "unknown key {other:?} (expected address, name, backlog, mode)"
                ))
            }
        }
    }
    spec.address = address.ok_or("a map entry needs `address`")?;
    if spec.mode.is_some() && !matches!(spec.address, crate::listen::Address::Unix(_)) {
        return Err(format!(
            "{}: `mode` applies to unix sockets only",
            spec.address
        ));
    }
    Ok(spec)
}

fn yaml_reason(e: &serde_yaml::Error) -> String {
    // Keys quoted in the message may hold newlines: keep it to one line.
    let text = e.to_string().replace('\n', "\\n");
    // serde_yaml appends " at line L column C"; put the place first.
    match (e.location(), text.find(" at line ")) {
        (Some(loc), Some(at)) => format!("line {}: {}", loc.line(), &text[..at]),
        (Some(loc), None) => format!("line {}: {text}", loc.line()),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::Address;

    fn flags() -> MasterFlags {
        MasterFlags::default()
    }

    fn cmd() -> Vec<OsString> {
        vec!["app".into()]
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
        let c = resolve(None, layer).unwrap();
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
    }

    #[test]
    fn flags_override_file_and_env_merges() {
        let file = parse_file("listen: [8080]\nworkers: 4\nenv: {A: file, B: file}\n").unwrap();
        let mut f = flags();
        f.workers = Some("2".into());
        f.env = vec!["B=flag".into()];
        let c = resolve(None, flag_layer(&f, &cmd()).unwrap().over(file)).unwrap();
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
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let mut f = flags();
        f.ready_timeout = Some("soon".into());
        assert!(flag_layer(&f, &cmd())
            .err()
            .unwrap()
            .starts_with("--ready-timeout \"soon\""));
        let mut f = flags();
        f.listen = vec!["nope".into()];
        assert!(flag_layer(&f, &cmd())
            .err()
            .unwrap()
            .starts_with("--listen \"nope\""));
        let mut f = flags();
        f.stop_signal = Some("KILL".into());
        assert!(flag_layer(&f, &cmd())
            .err()
            .unwrap()
            .contains("cannot be caught"));
    }

    #[test]
    fn whole_config_checks() {
        let layer = || parse_file("listen: [8080]\n").unwrap();
        assert!(resolve(None, layer())
            .err()
            .unwrap()
            .contains("missing command"));
        let mut l = parse_file("listen: [8080]\ncommand: [app]\ntimeout: 5s\n").unwrap();
        assert!(resolve(None, l)
            .err()
            .unwrap()
            .contains("needs `ready: notify`"));
        l = parse_file("listen: [8080, '0.0.0.0:8080']\ncommand: [app]\n").unwrap();
        assert!(resolve(None, l).err().unwrap().contains("given twice"));
    }

    #[test]
    fn accounts() {
        assert_eq!(parse_user("0").unwrap().name, "root");
        assert!(parse_user("no-such-user-xyz")
            .unwrap_err()
            .contains("no such user"));
        assert!(parse_group("no-such-group-xyz")
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
    }
}
