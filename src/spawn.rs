//! What a worker is started with: its command, its environment and its fds.
//!
//! Each worker gets the listeners as fds 3, 4, ... and the variables of every
//! common socket-inheritance convention, so apps written for systemd socket
//! activation, Server::Starter or Einhorn run unchanged:
//!
//! | variable                | value                                         |
//! |-------------------------|-----------------------------------------------|
//! | `LISTEN_FDS`            | number of listeners                           |
//! | `LISTEN_PID`            | the worker's own pid                          |
//! | `LISTEN_FDNAMES`        | listener names, `:`-separated                 |
//! | `SERVER_STARTER_PORT`   | `127.0.0.1:8080=3;/tmp/app.sock=4`            |
//! | `EINHORN_FD_COUNT`, `EINHORN_FD_<i>` | count, and fd of listener i      |
//! | `FORKMASTER_WORKER`     | stable slot index, 0..N-1                     |
//! | `FORKMASTER_WORKERS`    | N                                             |
//! | `FORKMASTER_GENERATION` | the master's generation                       |
//! | `FORKMASTER_MASTER_PID` | the master's pid                              |
//! | `NOTIFY_SOCKET`         | the master's notify socket path (`ready: notify`) |
//! | `WATCHDOG_USEC`         | the watchdog timeout (`timeout`)              |
//!
//! With `--preload` the app is exec'd once per generation as the preloader,
//! with all of these but `FORKMASTER_WORKER`, `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC`, plus `FORKMASTER_PRELOAD_FD`; each worker's `spawn`
//! message carries what it adds (`spawn_env`).

use crate::config::{Config, ReadyMode};
use crate::listen::Address;
use crate::protocol;
use crate::sockets::Listener;
use crate::sys::{Credentials, ExecPlan};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The parts of a worker's start that are the same for every slot.
pub struct WorkerTemplate {
    command: Vec<OsString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    path_var: Option<OsString>,
    /// The program found on `PATH` once; `None` while it is not there (then
    /// each spawn looks again, so installing it needs no reload).
    found: Option<CString>,
    chdir: Option<CString>,
    listener_fds: Vec<RawFd>,
    credentials: Option<Credentials>,
    /// What a worker gets and a preloader does not (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`): a preloader serves no traffic.
    worker_only: Vec<(String, String)>,
}

impl WorkerTemplate {
    /// Builds the template from the config and the master's original
    /// environment. Fails on a NUL byte in the command or environment.
    pub fn new(
        config: &Config,
        listeners: &[Listener],
        base_env: &[(OsString, OsString)],
        notify_socket: &str,
        generation: u32,
    ) -> Result<WorkerTemplate, String> {
        let mut vars: Vec<(OsString, OsString)> = base_env
            .iter()
            .filter(|(k, _)| {
                !protocol::is_worker_var(k) && !config.env.contains_key(&*k.to_string_lossy())
            })
            .cloned()
            .collect();
        vars.extend(config.env.iter().map(|(k, v)| (k.into(), v.into())));
        if let Some(user) = &config.user {
            // As login(1) and systemd's User= set them, unless given.
            let home = user.home.clone().into_os_string();
            for (key, value) in [
                ("USER", user.name.clone().into()),
                ("LOGNAME", user.name.clone().into()),
                ("HOME", home),
            ] {
                if !config.env.contains_key(key) {
                    vars.retain(|(k, _)| k != key);
                    vars.push((key.into(), value));
                }
            }
        }
        let path_var = vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        for (key, value) in socket_vars(listeners) {
            vars.push((key.into(), value.into()));
        }
        let master_pid = std::process::id();
        vars.push((protocol::GENERATION.into(), generation.to_string().into()));
        vars.push((protocol::MASTER_PID.into(), master_pid.to_string().into()));
        let mut worker_only = Vec::new();
        if config.ready == ReadyMode::Notify {
            worker_only.push((protocol::NOTIFY_SOCKET.into(), notify_socket.into()));
        }
        if let Some(timeout) = config.timeout {
            worker_only.push((
                protocol::WATCHDOG_USEC.into(),
                timeout.as_micros().to_string(),
            ));
        }
        if worker_only
            .iter()
            .any(|(_, v): &(String, String)| v.contains('\0'))
        {
            return Err("env: a value holds a NUL byte".to_string());
        }
        let env = vars
            .into_iter()
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                CString::new(entry).map_err(|_| "env: a value holds a NUL byte".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let argv = config
            .command
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "command: an argument holds a NUL byte".to_string())?;
        let chdir = config
            .working_directory
            .as_ref()
            .map(|d| CString::new(d.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| "working_directory: holds a NUL byte".to_string())?;
        let found = find_program(&config.command[0], path_var.as_deref());
        Ok(WorkerTemplate {
            command: config.command.clone(),
            argv,
            env,
            path_var,
            found,
            chdir,
            listener_fds: listeners.iter().map(|l| l.fd.as_raw_fd()).collect(),
            credentials: credentials(config),
            worker_only,
        })
    }

    /// The program as the user wrote it, for messages.
    pub fn program(&self) -> &OsStr {
        &self.command[0]
    }

    /// Prepares the exec of slot `slot` out of `workers`, its stdout and
    /// stderr going to `stdio` (`None`: the master's own).
    pub fn plan(
        &self,
        slot: usize,
        workers: usize,
        error_fd: RawFd,
        stdio: (Option<RawFd>, Option<RawFd>),
    ) -> ExecPlan {
        let mut env = self.env.clone();
        let vars = self
            .worker_only
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()));
        let counts = [(protocol::WORKER, slot), (protocol::WORKERS, workers)];
        for (key, value) in vars.chain(counts.map(|(k, n)| (k, n.to_string()))) {
            // Checked for NUL when the template was made; digits hold none.
            if let Ok(entry) = CString::new(format!("{key}={value}")) {
                env.push(entry);
            }
        }
        self.exec_plan(env, error_fd, stdio)
    }

    /// Prepares the exec of a preloader (`--preload`): a worker's start
    /// without `FORKMASTER_WORKER`, `NOTIFY_SOCKET` and `WATCHDOG_USEC`, with
    /// `FORKMASTER_PRELOAD_FD` naming `preload_fd`, which it inherits.
    pub fn plan_preloader(
        &self,
        workers: usize,
        error_fd: RawFd,
        stdio: (Option<RawFd>, Option<RawFd>),
        preload_fd: RawFd,
    ) -> ExecPlan {
        let mut env = self.env.clone();
        for (key, value) in [
            (protocol::WORKERS, workers as i64),
            (protocol::PRELOAD_FD, i64::from(preload_fd)),
        ] {
            // Digits and ASCII names hold no NUL.
            if let Ok(entry) = CString::new(format!("{key}={value}")) {
                env.push(entry);
            }
        }
        self.exec_plan(env, error_fd, stdio)
    }

    /// The lowest fd number the preloader's socket end may take: above the
    /// listeners, which the child renumbers to 3, 4, ...
    pub fn preload_fd_floor(&self) -> RawFd {
        3 + self.listener_fds.len() as RawFd
    }

    /// What a preloader's `spawn` message carries in `env`: the variables a
    /// worker of `slot` adds to or changes from the preloader's environment.
    pub fn spawn_env(&self, slot: usize, workers: usize) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self.worker_only.iter().cloned().collect();
        env.insert(protocol::WORKER.into(), slot.to_string());
        env.insert(protocol::WORKERS.into(), workers.to_string());
        env
    }

    fn exec_plan(
        &self,
        env: Vec<CString>,
        error_fd: RawFd,
        stdio: (Option<RawFd>, Option<RawFd>),
    ) -> ExecPlan {
        let program = self.found.clone().unwrap_or_else(|| {
            let program = resolve_program(self.program(), self.path_var.as_deref());
            CString::new(program.into_os_string().into_vec()).unwrap_or_default()
        });
        ExecPlan::worker(
            program,
            self.argv.clone(),
            env,
            self.chdir.clone(),
            self.listener_fds.clone(),
            error_fd,
        )
        .with_stdio(stdio.0, stdio.1)
        .with_credentials(self.credentials.clone())
    }
}

/// Who workers run as: `user` with its groups, `group` as primary group.
fn credentials(config: &Config) -> Option<Credentials> {
    match (&config.user, &config.group) {
        (None, None) => None,
        (Some(user), group) => {
            let gid = group.as_ref().map_or(user.gid, |g| g.gid);
            let mut groups = user.groups.clone();
            if !groups.contains(&gid) {
                groups.push(gid);
            }
            Some(Credentials {
                uid: user.uid,
                gid,
                groups,
            })
        }
        (None, Some(group)) => Some(Credentials {
            uid: nix::unistd::geteuid().as_raw(),
            gid: group.gid,
            groups: vec![group.gid],
        }),
    }
}

/// `LISTEN_*`, `SERVER_STARTER_PORT` and `EINHORN_*` for these listeners
/// (all but `LISTEN_PID`, which only the child knows).
pub fn socket_vars(listeners: &[Listener]) -> Vec<(String, String)> {
    if listeners.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = listeners.iter().map(|l| l.spec.fd_name()).collect();
    let starter: Vec<String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let addr = match &l.bound {
                Address::Tcp(addr) => addr.to_string(),
                Address::Unix(path) => path.display().to_string(),
            };
            format!("{addr}={}", 3 + i)
        })
        .collect();
    let mut vars = vec![
        (
            protocol::LISTEN_FDS.to_string(),
            listeners.len().to_string(),
        ),
        (protocol::LISTEN_FDNAMES.to_string(), names.join(":")),
        (protocol::SERVER_STARTER_PORT.to_string(), starter.join(";")),
        (
            protocol::EINHORN_FD_COUNT.to_string(),
            listeners.len().to_string(),
        ),
    ];
    for i in 0..listeners.len() {
        vars.push((
            format!("{}{i}", protocol::EINHORN_FD_PREFIX),
            (3 + i).to_string(),
        ));
    }
    vars
}

/// The program to exec, when it can be settled once: a path with a `/` (it
/// is resolved by exec, from the working directory, at each spawn), or a
/// bare name found on `PATH`.
fn find_program(program: &OsStr, path_var: Option<&OsStr>) -> Option<CString> {
    let resolved = resolve_program(program, path_var);
    let settled = program.as_bytes().contains(&b'/') || resolved.as_os_str() != program;
    settled
        .then(|| CString::new(resolved.into_os_string().into_vec()).ok())
        .flatten()
}

/// Finds a bare program name on `PATH`, as execvp would, but in the parent:
/// PATH search is not async-signal-safe. A name with a `/` is used as given
/// (relative to the worker's working directory). Not found: the name itself,
/// so that exec fails with the real error.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> PathBuf {
    if program.as_bytes().contains(&b'/') {
        return PathBuf::from(program);
    }
    let search = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(search) {
        let candidate = if dir.as_os_str().is_empty() {
            Path::new(".").join(program)
        } else {
            dir.join(program)
        };
        if is_executable(&candidate) {
            return candidate;
        }
    }
    PathBuf::from(program)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        let sh = resolve_program(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin")));
        assert_eq!(sh, PathBuf::from("/bin/sh"));
        let missing = resolve_program(OsStr::new("no-such-app-xyz"), Some(OsStr::new("/bin")));
        assert_eq!(missing, PathBuf::from("no-such-app-xyz"));
        assert_eq!(
            resolve_program(OsStr::new("./app"), None),
            PathBuf::from("./app")
        );
    }
}
