//! Every name and message that crosses a process boundary, written once.
//!
//! | boundary                 | names                                             |
//! |--------------------------|---------------------------------------------------|
//! | master -> worker (env)   | `LISTEN_*` (systemd's sd_listen_fds), `SERVER_STARTER_PORT` (Server::Starter), `EINHORN_*` (Einhorn), `FORKMASTER_*`, `NOTIFY_SOCKET`, `WATCHDOG_USEC` (systemd's sd_notify) |
//! | worker -> master         | sd_notify datagrams: `READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=` |
//! | old master -> new master | `FORKMASTER_INHERIT_FDS`, `FORKMASTER_UPGRADE_HEALTH_FD`, `FORKMASTER_UPGRADE_FROM`, `FORKMASTER_UPGRADE_NOTIFY`, `FORKMASTER_UPGRADE_PID_FILE`, `FORKMASTER_UPGRADE_COUNTERS` (env) |
//! | old image -> new image (in-place upgrade, same pid) | `FORKMASTER_INPLACE_STATE` (env: the fd of a memfd of versioned JSON), `FORKMASTER_INHERIT_FDS` |
//! | old image <-> new binary's check (in-place upgrade) | `FORKMASTER_INPLACE_PREFLIGHT=1` (env), answered on stdout by `FORKMASTER_INPLACE_STATE_VERSION=N` |
//! | new master -> old master | `FORKMASTER_RETIRE=N`, `FORKMASTER_UPGRADE_FAILED=why` (datagrams) |
//! | systemd -> master        | `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` |
//! | client -> master         | the control socket: one JSON `Status` per connection |
//! | master <-> preloader     | `FORKMASTER_PRELOAD_FD` (env); JSON packets `hello`, `spawn`, `spawned`, `spawn_failed` (docs/PRELOAD.md) |
//! | master's user -> master  | the socket files `<base>/.forkmaster-<euid>/<pid>.control` and `<pid>.notify` (see `ipc::rundir`) |

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Worker environment: how many listeners (from fd 3), systemd's convention.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Worker environment: the pid the listeners are meant for (the worker's own).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Worker environment: listener names, `:`-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Worker environment: `ADDR=FD;...`, Server::Starter's convention.
pub const SERVER_STARTER_PORT: &str = "SERVER_STARTER_PORT";
/// Worker environment: Einhorn's listener count; `EINHORN_FD_<i>` each fd.
pub const EINHORN_FD_COUNT: &str = "EINHORN_FD_COUNT";
pub const EINHORN_FD_PREFIX: &str = "EINHORN_FD_";
/// Worker environment: the worker's stable slot, 0..N-1.
pub const WORKER: &str = "FORKMASTER_WORKER";
/// Worker environment: N, the number of workers wanted.
pub const WORKERS: &str = "FORKMASTER_WORKERS";
/// Worker environment: the generation (config revision) it was started with.
pub const GENERATION: &str = "FORKMASTER_GENERATION";
/// Worker environment: the master's pid.
pub const MASTER_PID: &str = "FORKMASTER_MASTER_PID";
/// Where sd_notify datagrams go (systemd's convention): for our workers, the
/// absolute path of the master's notify socket file.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog timeout in microseconds (systemd's convention).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid systemd's watchdog is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Upgrade handoff: the listeners an old master passes on (see `handoff`).
pub const INHERIT_FDS: &str = "FORKMASTER_INHERIT_FDS";
/// Upgrade handoff: the fd number of the old master's `health_listen`
/// socket, which the new master serves once it takes over.
pub const UPGRADE_HEALTH_FD: &str = "FORKMASTER_UPGRADE_HEALTH_FD";
/// Upgrade handoff: `<old master pid>:<highest generation>`.
pub const UPGRADE_FROM: &str = "FORKMASTER_UPGRADE_FROM";
/// Upgrade handoff: the path of the old master's notify socket, where the
/// new one reports (it may live in another runtime directory than ours).
pub const UPGRADE_NOTIFY: &str = "FORKMASTER_UPGRADE_NOTIFY";
/// Upgrade handoff: the old master's pid file (its directory resolved),
/// which the new master must keep: the clients find it there.
pub const UPGRADE_PID_FILE: &str = "FORKMASTER_UPGRADE_PID_FILE";
/// In-place upgrade: the fd number of a memfd holding the old image's state
/// as versioned JSON (workers, their fds, records); see `inplace`.
pub const INPLACE_STATE: &str = "FORKMASTER_INPLACE_STATE";
/// In-place upgrade's check: set for the new binary's `-t`, which then
/// prints `FORKMASTER_INPLACE_STATE_VERSION=<n>` (the state version it
/// reads) on stdout after the configuration passed; the old image execs it
/// only if `<n>` is the version it writes.
pub const INPLACE_PREFLIGHT: &str = "FORKMASTER_INPLACE_PREFLIGHT";
/// The key of that line.
pub const INPLACE_STATE_VERSION: &str = "FORKMASTER_INPLACE_STATE_VERSION";

/// Upgrade handoff: the old master's counters (`master::counters`), as
/// compact JSON, so the new master's metrics go on from its totals.
pub const UPGRADE_COUNTERS: &str = "FORKMASTER_UPGRADE_COUNTERS";
/// systemd's `RuntimeDirectory=` as the service gets it (`:`-separated when
/// several): where the sockets go unless `runtime_dir` says otherwise.
pub const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";

/// The line a new binary's preflight prints: it reads state `version`.
pub fn inplace_version_line(version: u32) -> String {
    format!("{INPLACE_STATE_VERSION}={version}")
}

/// The state version a preflight's stdout names, if it names one.
pub fn inplace_version_of(stdout: &str) -> Option<u32> {
    stdout.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(INPLACE_STATE_VERSION)?
            .strip_prefix('=')?
            .parse()
            .ok()
    })
}

/// Preloader environment: its end of the preload socketpair (docs/PRELOAD.md).
pub const PRELOAD_FD: &str = "FORKMASTER_PRELOAD_FD";
/// The preload protocol version this master speaks.
pub const PRELOAD_VERSION: u64 = 1;
/// The largest preload packet, either way; a longer one is a protocol error.
pub const PRELOAD_MAX_PACKET: usize = 65536;
/// Preload message types (the `type` member).
pub const PRELOAD_HELLO: &str = "hello";
pub const PRELOAD_SPAWN: &str = "spawn";
pub const PRELOAD_SPAWNED: &str = "spawned";
pub const PRELOAD_SPAWN_FAILED: &str = "spawn_failed";
/// Why a preloader exited without ever reading its end of the socket.
pub const PRELOAD_NOT_ANSWERED: &str =
    "the app did not answer on FORKMASTER_PRELOAD_FD: does it load forkmaster's preload helper?";

/// sd_notify keys the master acts on (systemd's sd_notify(3)).
pub const NOTIFY_READY: &str = "READY";
pub const NOTIFY_WATCHDOG: &str = "WATCHDOG";
pub const NOTIFY_STOPPING: &str = "STOPPING";
pub const NOTIFY_STATUS: &str = "STATUS";
/// New master to old master: how many of its workers are ready (gradual
/// retirement; a count cannot be merged by the kernel as TTOU signals are).
pub const NOTIFY_RETIRE: &str = "FORKMASTER_RETIRE";
/// New master to old master: why the upgrade failed.
pub const NOTIFY_UPGRADE_FAILED: &str = "FORKMASTER_UPGRADE_FAILED";

/// The private directory holding the sockets of the masters of user `euid`
/// under one base directory.
pub fn private_dir_name(euid: u32) -> String {
    format!(".forkmaster-{euid}")
}

/// The file name of a master's control socket in its private directory,
/// where it answers each connection with its status as one line of JSON.
pub fn control_file(pid: i32) -> String {
    format!("{pid}.{CONTROL_SUFFIX}")
}

/// The file name of a master's sd_notify socket in its private directory
/// (workers get its path as `NOTIFY_SOCKET`; a new master reports to its
/// old one there).
pub fn notify_file(pid: i32) -> String {
    format!("{pid}.{NOTIFY_SUFFIX}")
}

pub const CONTROL_SUFFIX: &str = "control";
pub const NOTIFY_SUFFIX: &str = "notify";

/// `FORKMASTER_RETIRE=N\n`.
pub fn retire_message(ready: usize) -> String {
    format!("{NOTIFY_RETIRE}={ready}\n")
}

/// `FORKMASTER_UPGRADE_FAILED=why\n`, the reason kept on one line.
pub fn upgrade_failed_message(why: &str) -> String {
    format!("{NOTIFY_UPGRADE_FAILED}={}\n", why.replace('\n', "\\n"))
}

/// Variables the master sets itself for each worker; inherited or configured
/// values of these are not passed on.
pub fn is_worker_var(key: &OsStr) -> bool {
    let key = key.as_bytes();
    key.starts_with(b"LISTEN_")
        || key.starts_with(b"EINHORN_")
        || key.starts_with(b"FORKMASTER_")
        || key.starts_with(b"WATCHDOG_")
        || key == NOTIFY_SOCKET.as_bytes()
        || key == SERVER_STARTER_PORT.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inplace_version_line_is_read_back_and_junk_is_not() {
        let said = format!(
            "workers: 2\nconfiguration ok\n{}\n",
            inplace_version_line(1)
        );
        assert_eq!(inplace_version_of(&said), Some(1));
        assert_eq!(inplace_version_of("configuration ok\n"), None);
        assert_eq!(
            inplace_version_of("FORKMASTER_INPLACE_STATE_VERSION=x\n"),
            None
        );
        assert_eq!(
            inplace_version_of("FORKMASTER_INPLACE_STATE_VERSIONS=1\n"),
            None
        );
    }

    #[test]
    fn the_version_line_is_read_back_and_junk_is_not() {
        let said = format!(
            "workers: 2\nconfiguration ok\n{}\n",
            inplace_version_line(1)
        );
        assert_eq!(inplace_version_of(&said), Some(1));
        assert_eq!(inplace_version_of("configuration ok\n"), None);
        assert_eq!(
            inplace_version_of("FORKMASTER_INPLACE_STATE_VERSION=x\n"),
            None
        );
        assert_eq!(
            inplace_version_of("FORKMASTER_INPLACE_STATE_VERSIONS=1\n"),
            None
        );
    }

    #[test]
    fn worker_vars_are_ours_alone() {
        for key in [
            LISTEN_FDS,
            LISTEN_PID,
            NOTIFY_SOCKET,
            WATCHDOG_USEC,
            "EINHORN_FD_0",
            WORKER,
            INHERIT_FDS,
        ] {
            assert!(is_worker_var(OsStr::new(key)), "{key}");
        }
        assert!(!is_worker_var(OsStr::new("PATH")));
        assert!(!is_worker_var(OsStr::new("LISTENER")));
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(retire_message(3), "FORKMASTER_RETIRE=3\n");
        assert_eq!(
            upgrade_failed_message("a\nb"),
            "FORKMASTER_UPGRADE_FAILED=a\\nb\n"
        );
    }
}
