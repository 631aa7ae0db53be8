//! Text into a `Layer`: the YAML file and the flags, each value validated
//! and each error naming its key. Pure: it reads the file and nothing else;
//! users, groups and listen host names stay as written for `resolve`.

use super::settings::{FileKeys, Layer};
use super::{ConfigError, ReadyMode, Retire, MAX_WORKERS};
use crate::duration::parse_duration;
use crate::files::ReadError;
use crate::listen::{parse_mode, parse_target, write_listen, Target, WrittenListen};
use nix::sys::signal::Signal;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Where a value was written, for an error found after the merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Flag,
}

/// A parser of one value; its error says why, for the caller to prefix.
pub type Parse<T> = fn(&str) -> Result<T, String>;

/// A config file is read whole; anything larger is surely not one.
const CONFIG_FILE_LIMIT: u64 = 1 << 20;

/// Reads and parses a config file; errors name the file. It must be a
/// regular file (it is read again on every HUP, and opening a FIFO would
/// block), at most 1 MiB.
pub fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = read_text(path)?;
    parse_file_at(path, &text)
}

/// `text`, the file at `path`, parsed; errors name the file.
pub fn parse_file_at(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    parse_file(text).map_err(|message| ConfigError::File {
        path: path.to_path_buf(),
        message,
    })
}

/// Reads a config file's text (see `read_file`); errors name the file.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = crate::files::read_bounded(path, CONFIG_FILE_LIMIT).map_err(|e| match e {
        ReadError::Io(source) => read_error(source),
        ReadError::NotFound => read_error(std::io::Error::from_raw_os_error(libc::ENOENT)),
        ReadError::NotRegular(_) => read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{e} (a config is read again at every HUP)"),
        )),
        ReadError::TooLarge(_) => read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        )),
    })?;
    String::from_utf8(bytes).map_err(|_| ConfigError::File {
        path: path.to_path_buf(),
        message: "not UTF-8 text".into(),
    })
}

/// Parses config file text into a layer; errors start with the key or line.
/// A file with no setting at all is an error: it is far more likely a
/// deploy that wrote half a file than a wish for every default.
pub fn parse_file(text: &str) -> Result<Layer, String> {
    if matches!(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
        Ok(serde_yaml_ng::Value::Null)
    ) {
        return Err("no settings: the file is empty".into());
    }
    let keys: Result<FileKeys, _> = serde_yaml_ng::from_str(text);
    // A key given twice is an error even where the parser would keep the
    // last value (maps such as `env:`), and it is told at its own line.
    let scan = match &keys {
        Ok(_) => true,
        Err(e) => e.to_string().starts_with("duplicate "),
    };
    if scan {
        if let Some((line, key)) = super::keys::find_duplicate(text) {
            return Err(format!("line {line}: duplicate key `{key}`"));
        }
    }
    Layer::from_file(keys.map_err(|e| yaml_reason(&e))?)
}

// Adapters from each source's raw form to a value parser, named in the table.

/// A flag of text, parsed by `parse` when given.
pub fn text<T>(parse: Parse<T>) -> impl Fn(&Option<String>) -> Result<Option<T>, String> {
    move |flag| flag.as_deref().map(parse).transpose()
}

/// A YAML string, parsed by `parse`.
pub fn string<T>(parse: Parse<T>) -> impl Fn(String) -> Result<T, String> {
    move |text| parse(&text)
}

/// A YAML scalar of any type (`8080`, `true`, `x`), parsed as text.
pub fn scalar<T>(parse: Parse<T>) -> impl Fn(Value) -> Result<T, String> {
    move |value| parse(&scalar_text(&value))
}

/// A value taken as serde read it.
pub fn ok<T>(value: T) -> Result<T, String> {
    Ok(value)
}

/// A flag taken as clap read it.
pub fn cloned<T: Clone>(flag: &Option<T>) -> Result<Option<T>, String> {
    Ok(flag.clone())
}

/// A switch: said when on, not said when off (so the file can say it).
pub fn switch(flag: &bool) -> Result<Option<bool>, String> {
    Ok(flag.then_some(true))
}

/// A user or group, by name or id: looked up by `resolve`, not here.
pub fn name(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

/// Later layers replace a setting, except maps, which merge key by key.
pub fn merge_maps(
    over: Option<BTreeMap<String, String>>,
    base: Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    match (over, base) {
        (Some(over), Some(mut base)) => {
            base.extend(over);
            Some(base)
        }
        (over, base) => over.or(base),
    }
}

pub fn listen_flags(flags: &[String]) -> Result<Option<Vec<WrittenListen>>, String> {
    let specs: Result<Vec<_>, _> = flags.iter().map(|t| write_listen(t)).collect();
    Ok((!flags.is_empty()).then_some(specs?))
}

pub fn listen_entries(entries: Vec<Value>) -> Result<Vec<WrittenListen>, String> {
    entries.iter().map(listen_entry).collect()
}

pub fn env_flags(pairs: &[String]) -> Result<Option<BTreeMap<String, String>>, String> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected KEY=VALUE"))?;
        validate_env_key(key)?;
        env.insert(key.to_string(), value.to_string());
    }
    Ok((!env.is_empty()).then_some(env))
}

pub fn env_map(map: BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, String> {
    map.into_iter()
        .map(|(key, value)| validate_env_key(&key).map(|()| (key, scalar_text(&value))))
        .collect()
}

pub fn command(words: Vec<String>) -> Result<Vec<OsString>, String> {
    Ok(words.into_iter().map(OsString::from).collect())
}

pub fn umask(value: Value) -> Result<u32, String> {
    if matches!(value, Value::Number(_)) {
        return Err("write it quoted, e.g. umask: '0027' (an unquoted number is ambiguous)".into());
    }
    parse_mode(&scalar_text(&value))
}

/// At least 1: a master started with none would accept connections that
/// nobody serves. (WINCH and TTOU may still take a running master to 0.)
pub fn workers(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: not a whole number"))?;
    if n == 0 {
        return Err(format!(
            "{text:?}: at least 1 (with none, connections would queue unserved; WINCH stops a running master's workers)"
        ));
    }
    if n > MAX_WORKERS {
        return Err(format!("{text:?}: more than {MAX_WORKERS}"));
    }
    Ok(n)
}

pub fn max_surge(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a whole number from 1 to {MAX_WORKERS}"
        )),
    }
}

/// `notify` or `delay:DURATION`.
pub fn ready(text: &str) -> Result<ReadyMode, String> {
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
pub fn timeout(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

/// `TERM`, `SIGTERM` or a number.
pub fn signal(text: &str) -> Result<Signal, String> {
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

/// `gradual`, `all` or `manual`.
pub fn retire(text: &str) -> Result<Retire, String> {
    match text {
        "gradual" => Ok(Retire::Gradual),
        "all" => Ok(Retire::All),
        "manual" => Ok(Retire::Manual),
        _ => Err(format!("{text:?}: expected gradual, all or manual")),
    }
}

pub fn log_level(level: &str) -> Result<String, String> {
    match level {
        "off" | "error" | "warn" | "info" | "debug" | "trace" => Ok(level.to_string()),
        _ => Err(format!(
            "{level:?}: expected off, error, warn, info, debug or trace"
        )),
    }
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

/// A YAML scalar as text (`8080`, `true`, `x`), for keys that take either.
fn scalar_text(value: &Value) -> String {
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
fn listen_entry(value: &Value) -> Result<WrittenListen, String> {
    let map = match value {
        Value::Mapping(map) => map,
        Value::String(_) | Value::Number(_) => return write_listen(&scalar_text(value)),
        _ => return Err("expected an address or a map with `address`".into()),
    };
    let mut spec = write_listen("0")?;
    let mut address = None;
    for (key, value) in map {
        let key = scalar_text(key);
        let text = scalar_text(value);
        match key.as_str() {
            "address" => {
                address = Some(parse_target(&text).map_err(|w| format!("{text:?}: {w}"))?);
                spec.text = text;
            }
            "name" => spec.name = write_listen(&format!("{text}=0"))?.name,
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
    spec.target = address.ok_or("a map entry needs `address`")?;
    let unix = matches!(
        spec.target,
        Target::Address(crate::listen::Address::Unix(_))
    );
    if spec.mode.is_some() && !unix {
        return Err(format!(
            "{}: `mode` applies to unix sockets only",
            spec.target
        ));
    }
    Ok(spec)
}

fn yaml_reason(e: &serde_yaml_ng::Error) -> String {
    // Keys quoted in the message may hold newlines: keep it to one line.
    let text = e.to_string().replace('\n', "\\n");
    // The parser appends " at line L column C"; put the place first.
    match (e.location(), text.find(" at line ")) {
        (Some(loc), Some(at)) => format!("line {}: {}", loc.line(), &text[..at]),
        (Some(loc), None) => format!("line {}: {text}", loc.line()),
        _ => text,
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::config::resolve::{self, Lookups};
    use crate::config::{Account, Group, MasterFlags};
    use crate::proptests::{config, explains, mutated};
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// Name services without I/O: hosts resolve to one address, names with
    /// an `x` do not exist.
    const FAKE: Lookups = Lookups {
        host: |_, port| Ok(std::net::SocketAddr::from(([10, 0, 0, 1], port))),
        user: |name| match name.contains('x') {
            true => Err(format!("{name:?}: no such user")),
            false => Ok(Account {
                name: name.to_string(),
                uid: 1000,
                gid: 1000,
                home: PathBuf::from("/"),
                groups: vec![1000],
            }),
        },
        group: |name| match name.contains('x') {
            true => Err(format!("{name:?}: no such group")),
            false => Ok(Group {
                name: name.to_string(),
                gid: 1000,
            }),
        },
    };

    /// Valid files with a stretch cut out and random text put in, or
    /// random text alone.
    fn files() -> impl Strategy<Value = String> {
        const SAMPLES: &[&str] = &[
            "listen: [8080, 'web=127.0.0.1:9000']\nworkers: 4\nready: notify\ncommand: [app]\n",
            "listen:\n  - {address: 'unix:/tmp/x.sock', name: api, backlog: 64, mode: '0660'}\n",
            "env: {A: 1, B: x}\nready_timeout: 30s\ntimeout: 10s\nstop_signal: QUIT\n",
            "graceful_timeout: 1m\nretire: manual\nmax_surge: 2\numask: '0027'\nlog_level: debug\n",
            "pid: /tmp/x.pid\nworking_directory: /srv\nstdout_path: /tmp/o\ndaemonize: true\n",
            "user: app\ngroup: 0\nlisten: [host.example:80]\ncommand: [app]\nready: notify\n",
        ];
        mutated(SAMPLES, "[a-z_: \\[\\]{}',\"\n0-9./=#&*!|>-]")
    }

    /// Flag values: near-valid text for each kind, or anything.
    fn flag_value() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "[0-9]{0,6}[mshx.]{0,2}",
            "(notify|delay:|off|TERM|SIGKILL|gradual|manual|debug|0027|root|x)[a-z0-9:=]{0,3}",
            "[a-zA-Z0-9_=.:/\\[\\] -]{0,12}",
            any::<String>(),
        ])
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn files_never_panic_and_explain_on_one_line(text in files()) {
            match parse_file(&text) {
                // Whatever parses, resolves or is refused with a reason.
                Ok(layer) => {
                    let config = Layer::resolve(Layer::default(), layer, None, &FAKE);
                    if let Err(err) = config.and_then(|c| resolve::check_whole(&c)) {
                        explains(&text, &err.to_string())?;
                    }
                }
                Err(err) => explains(&text, &err)?,
            }
        }

        #[test]
        fn flags_never_panic_and_explain_on_one_line(
            values in prop::collection::vec(flag_value(), 14),
            lists in prop::collection::vec(prop::collection::vec(".{0,24}", 0..3), 2),
        ) {
            let v = |i: usize| values[i].clone();
            let flags = MasterFlags {
                listen: lists[0].clone(),
                env: lists[1].clone(),
                workers: v(0),
                ready: v(1),
                ready_timeout: v(2),
                timeout: v(3),
                stop_signal: v(4),
                graceful_timeout: v(5),
                log_level: v(6),
                retire: v(7),
                max_surge: v(8),
                user: v(9),
                group: v(10),
                umask: v(11),
                pid: v(12).map(PathBuf::from),
                working_directory: v(13).map(PathBuf::from),
                ..MasterFlags::default()
            };
            let input = format!("{flags:?}");
            match Layer::from_flags(&flags) {
                Ok(mut layer) => {
                    layer.command = Some(vec!["app".into()]);
                    let config = Layer::resolve(layer, Layer::default(), None, &FAKE);
                    if let Err(err) = config.and_then(|c| resolve::check_whole(&c)) {
                        explains(&input, &err.to_string())?;
                    }
                }
                Err(err) => {
                    let err = err.to_string();
                    explains(&input, &err)?;
                    prop_assert!(err.starts_with("--"), "{err}");
                }
            }
        }
    }
}
