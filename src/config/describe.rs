//! What `--check` prints: the configuration as it would run, one
//! `key: value` line per setting, in the order of the settings table.

use super::{Account, Config, Group};
use crate::duration::Human;
use crate::listen::ListenSpec;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{Display, Write as _};
use std::path::PathBuf;
use std::time::Duration;

/// The lines being written.
pub type Lines = String;

impl Config {
    /// What `--check` prints: the configuration as it would run.
    pub fn describe(&self) -> String {
        let mut out = Lines::new();
        if let Some(path) = &self.config_path {
            line(&mut out, "config", path.display());
        }
        self.describe_settings(&mut out);
        out
    }
}

fn line(out: &mut Lines, key: &str, value: impl Display) {
    let _ = writeln!(out, "{key}: {value}");
}

pub fn plain(key: &str, value: &impl Display, out: &mut Lines) {
    line(out, key, value);
}

pub fn nothing<T>(_: &str, _: &T, _: &mut Lines) {}

pub fn path(key: &str, value: &Option<PathBuf>, out: &mut Lines) {
    if let Some(path) = value {
        line(out, key, path.display());
    }
}

pub fn duration(key: &str, value: &Duration, out: &mut Lines) {
    line(out, key, Human(*value));
}

pub fn duration_or_off(key: &str, value: &Option<Duration>, out: &mut Lines) {
    match value {
        Some(d) => line(out, key, Human(*d)),
        None => line(out, key, "off"),
    }
}

pub fn signal(key: &str, value: &Signal, out: &mut Lines) {
    line(out, key, value.as_str());
}

pub fn yes(key: &str, value: &bool, out: &mut Lines) {
    if *value {
        line(out, key, "yes");
    }
}

pub fn octal(key: &str, value: &Option<u32>, out: &mut Lines) {
    if let Some(mask) = value {
        line(out, key, format_args!("{mask:04o}"));
    }
}

pub fn words(key: &str, value: &[OsString], out: &mut Lines) {
    line(out, key, shell_words(value));
}

pub fn pairs(key: &str, value: &BTreeMap<String, String>, out: &mut Lines) {
    for (name, text) in value {
        line(out, key, format_args!("{name}={text}"));
    }
}

/// Each listener with the fd a worker finds it on.
pub fn listeners(key: &str, value: &[ListenSpec], out: &mut Lines) {
    for (i, spec) in value.iter().enumerate() {
        let mut extra = format!("backlog={}", spec.backlog);
        if let Some(mode) = spec.mode {
            let _ = write!(extra, " mode={mode:04o}");
        }
        let (address, name) = (&spec.address, spec.fd_name());
        line(
            out,
            key,
            format_args!("fd={} {address} name={name} {extra}", 3 + i),
        );
    }
}

pub fn account(key: &str, value: &Option<Account>, out: &mut Lines) {
    if let Some(user) = value {
        line(
            out,
            key,
            format_args!("{} (uid {}, gid {})", user.name, user.uid, user.gid),
        );
    }
}

pub fn group(key: &str, value: &Option<Group>, out: &mut Lines) {
    if let Some(group) = value {
        line(out, key, format_args!("{} (gid {})", group.name, group.gid));
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
