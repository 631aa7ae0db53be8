//! From parsed settings to what the master runs with: user and group names
//! looked up (getpwnam, getgrnam, getgrouplist), listen host names resolved
//! (getaddrinfo), and the checks only the whole configuration can make.
//! Only the master needs this; a client reading `pid:` stops at `parse`.

use super::{Account, Config, ConfigError, Group, ReadyMode};
use crate::listen::{resolve_host, ListenSpec, Resolve, WrittenListen};

/// The name services the resolve step asks; tests pass ones without I/O.
pub struct Lookups {
    pub host: Resolve,
    pub user: fn(&str) -> Result<Account, String>,
    pub group: fn(&str) -> Result<Group, String>,
}

/// The system's own: DNS and /etc/hosts, passwd and group databases.
pub const SYSTEM: Lookups = Lookups {
    host: resolve_host,
    user: lookup_user,
    group: lookup_group,
};

/// A setting that needs no lookup.
pub fn keep<T>(value: T, _: &Lookups) -> Result<T, String> {
    Ok(value)
}

pub fn listeners(specs: Vec<WrittenListen>, lookups: &Lookups) -> Result<Vec<ListenSpec>, String> {
    specs
        .into_iter()
        .map(|spec| spec.resolve(lookups.host))
        .collect()
}

pub fn user(name: Option<String>, lookups: &Lookups) -> Result<Option<Account>, String> {
    name.map(|name| (lookups.user)(&name)).transpose()
}

pub fn group(name: Option<String>, lookups: &Lookups) -> Result<Option<Group>, String> {
    name.map(|name| (lookups.group)(&name)).transpose()
}

/// A user by name or uid, with its primary group and supplementary groups.
pub fn lookup_user(text: &str) -> Result<Account, String> {
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
pub fn lookup_group(text: &str) -> Result<Group, String> {
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

/// What only the whole can tell, once every value is known.
pub fn check_whole(config: &Config) -> Result<(), ConfigError> {
    let invalid = |text: &str| Err(ConfigError::Invalid(text.to_string()));
    if config.command.is_empty() {
        return invalid("missing command: give the app after `--` (forkmaster [OPTIONS] -- COMMAND [ARGS...]) or `command:` in the config file");
    }
    if config.command[0].is_empty() {
        return invalid("command: empty program name");
    }
    if config.ready_timeout.is_zero() {
        return invalid("ready_timeout: must be more than 0");
    }
    if config.preload && config.spawn_timeout.is_zero() {
        return invalid("spawn_timeout: must be more than 0");
    }
    if config.timeout.is_some() && config.ready != ReadyMode::Notify {
        return invalid("timeout: the watchdog needs `ready: notify` (workers send WATCHDOG=1 to NOTIFY_SOCKET)");
    }
    for (i, a) in config.listeners.iter().enumerate() {
        if config.listeners[..i].iter().any(|b| b.address == a.address) {
            return invalid(&format!("listen: {} is given twice", a.address));
        }
    }
    Ok(())
}
