//! The one guard over what a test leaves running: on drop it SIGKILLs every
//! process it was told about and all their descendants, and reaps the ones
//! that are children of the test, so a failed assertion leaves nothing
//! behind.
//!
//! It knows processes four ways: children of the test (`adopt`), roots by
//! pid (`watch_pid`), masters named by a pid file or its `.oldbin` now, at a
//! `note`, or at drop (`watch_pid_file`: later generations are not our
//! children), and processes whose command line names a directory
//! (`watch_dir`: a daemon is found that way before its pid file exists).
//! Process groups (`watch_group`) catch what a killed worker left behind.

use std::path::{Path, PathBuf};
use std::process::Child;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::support::{descendants_of, forkmaster, is_running, read_pid};

#[derive(Default)]
pub struct Guard {
    children: Vec<Child>,
    roots: Vec<i32>,
    pid_files: Vec<PathBuf>,
    seen: Vec<i32>,
    dirs: Vec<PathBuf>,
    groups: Vec<i32>,
}

impl Guard {
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Takes a child of the test: killed with its descendants and reaped.
    pub fn adopt(&mut self, child: Child) -> &mut Child {
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// A process (not necessarily our child) killed with its descendants.
    pub fn watch_pid(&mut self, pid: i32) {
        self.roots.push(pid);
    }

    /// Masters `path` or `path.oldbin` name at a `note` or at drop.
    pub fn watch_pid_file(&mut self, path: &Path) {
        if !self.pid_files.iter().any(|p| p == path) {
            self.pid_files.push(path.to_path_buf());
        }
    }

    /// Live processes whose command line names `dir` (as `<dir>/`).
    pub fn watch_dir(&mut self, dir: &Path) {
        self.dirs.push(dir.to_path_buf());
    }

    /// A process group, killed as a whole.
    pub fn watch_group(&mut self, pgid: i32) {
        self.groups.push(pgid);
    }

    /// Remembers the masters the watched pid files name now: one that has
    /// since been replaced is still killed at drop.
    pub fn note(&mut self) {
        for path in &self.pid_files {
            let oldbin = oldbin_of(path);
            for file in [path, &oldbin] {
                if let Some(pid) = read_pid(file) {
                    if !self.seen.contains(&pid) {
                        self.seen.push(pid);
                    }
                }
            }
        }
    }

    /// The live forkmaster processes the watched pid files name now.
    pub fn pid_file_masters(&self) -> Vec<i32> {
        let mut found = Vec::new();
        for path in &self.pid_files {
            for file in [path.clone(), oldbin_of(path)] {
                if let Some(pid) = read_pid(&file).filter(|p| is_forkmaster(*p)) {
                    found.push(pid);
                }
            }
        }
        found
    }

    /// Kills everything watched now; safe to call more than once.
    pub fn kill_all(&mut self) {
        self.note();
        let me = std::process::id() as i32;
        let mut roots: Vec<i32> = self.children.iter().map(|c| c.id() as i32).collect();
        roots.extend(&self.roots);
        // A pid file may name any process (tests write such files on
        // purpose): only forkmaster masters are ours to kill.
        roots.extend(self.seen.iter().filter(|p| is_forkmaster(**p)));
        for dir in &self.dirs {
            roots.extend(processes_naming(dir));
        }
        for root in roots.into_iter().filter(|p| *p != me && *p > 1) {
            if !is_running(root) {
                continue;
            }
            // Listed first: once the root dies its descendants are orphans
            // and no longer found under it.
            let doomed = descendants_of(root);
            kill(root);
            doomed.into_iter().for_each(kill);
        }
        for &pgid in &self.groups {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// `<path>.oldbin`, where an old master moves its pid file during an upgrade.
pub fn oldbin_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.oldbin", path.display()))
}

/// Whether `pid` is alive and runs our forkmaster binary, under any name (a
/// symlink or a copy; a pid can be reused).
pub fn is_forkmaster(pid: i32) -> bool {
    if !is_running(pid) {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let ours = std::fs::canonicalize(forkmaster()).ok();
    Some(&exe) == ours.as_ref()
        || exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("forkmaster"))
            && !exe.to_string_lossy().contains("forkmaster-demo")
}

/// Live processes other than the test whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && is_running(*pid))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect();
    found.sort_unstable();
    found
}
