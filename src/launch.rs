//! How this master was started, kept so that a USR2 upgrade can start the
//! next one the same way: the arguments, the directory (as `$PWD` names it,
//! so a deploy's `current` symlink is followed anew), and the environment
//! from before anything changed it.

use crate::cli::MasterFlags;
use crate::handoff::{self, Predecessor, INHERIT_VAR, NOTIFY_VAR, UPGRADE_VAR};
use crate::spawn::resolve_program;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub struct Launch {
    /// `argv` as given, `argv[0]` included.
    pub args: Vec<OsString>,
    pub start_dir: PathBuf,
    /// The environment at start, less our handoff variables.
    pub env: Vec<(OsString, OsString)>,
    /// Flags and command, to lay over the config file again on HUP.
    pub flags: MasterFlags,
    pub command: Vec<OsString>,
    /// Set when an old master started us (USR2).
    pub predecessor: Option<Predecessor>,
    /// The old master's notify socket, where we report to it.
    pub predecessor_notify: Option<PathBuf>,
    pub inherited_fds: Option<String>,
}

impl Launch {
    pub fn capture(flags: &MasterFlags, command: &[OsString]) -> Launch {
        let all: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let value = |key: &str| {
            all.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        let predecessor = value(UPGRADE_VAR).and_then(|v| handoff::decode_predecessor(&v));
        let inherited_fds = value(INHERIT_VAR);
        let predecessor_notify = all
            .iter()
            .find(|(k, _)| k == NOTIFY_VAR)
            .map(|(_, v)| PathBuf::from(v));
        let env = all
            .iter()
            .filter(|(k, _)| {
                k != INHERIT_VAR
                    && k != UPGRADE_VAR
                    && k != NOTIFY_VAR
                    && k != crate::protocol::UPGRADE_PID_FILE
                    && k != crate::protocol::INPLACE_STATE
            })
            .cloned()
            .collect();
        Launch {
            args: std::env::args_os().collect(),
            start_dir: start_dir(),
            env,
            flags: flags.clone(),
            command: command.to_vec(),
            predecessor,
            predecessor_notify,
            inherited_fds,
        }
    }

    /// The forkmaster binary to exec for an upgrade, looked up anew.
    pub fn program(&self) -> PathBuf {
        let argv0 = self
            .args
            .first()
            .cloned()
            .unwrap_or_else(|| "forkmaster".into());
        let path = self
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        resolve_program(&argv0, path)
    }
}

/// `$PWD` when it names the current directory (it keeps the symlinks the
/// user went through), else the resolved current directory.
fn start_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from) else {
        return cwd;
    };
    let same = match (std::fs::metadata(&pwd), std::fs::metadata(".")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        pwd
    } else {
        cwd
    }
}
