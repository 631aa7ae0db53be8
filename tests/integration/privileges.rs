//! `--user`, `--group`, `--umask`: workers run as another user while the
//! master stays root; the files workers use are theirs; only root may switch.
//! Tests that switch users need root and say so when skipped.

use crate::support::*;
use nix::unistd::{Group, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

macro_rules! needs_root {
    ($name:expr) => {
        if !is_root() {
            eprintln!("skipped {}: needs root", $name);
            return;
        }
    };
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

/// `Uid`/`Gid` of /proc/<pid>/status: real, effective, saved, filesystem.
fn ids(pid: i32, field: &str) -> String {
    proc_status(pid, field).unwrap_or_else(|| panic!("no {field} for {pid}"))
}

fn all(id: u32) -> String {
    format!("{id}\t{id}\t{id}\t{id}")
}

/// The supplementary groups of a process, sorted.
fn groups(pid: i32) -> Vec<u32> {
    let mut groups: Vec<u32> = ids(pid, "Groups")
        .split_whitespace()
        .map(|g| g.parse().expect("gid"))
        .collect();
    groups.sort_unstable();
    groups
}

fn env_of(target: &Target) -> Vec<String> {
    let r = get(target, "/env").expect("GET /env");
    assert_eq!(r.status, 200);
    r.body.lines().map(str::to_string).collect()
}

#[test]
fn workers_run_as_the_user_and_the_master_stays_root() {
    needs_root!("workers_run_as_the_user_and_the_master_stays_root");
    let nobody = User::from_name("nobody").unwrap().expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let name = std::ffi::CString::new("nobody").unwrap();
    let mut expected_groups: Vec<u32> = nix::unistd::getgrouplist(&name, nobody.gid)
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    expected_groups.sort_unstable();
    expected_groups.dedup();

    let dir = TempDir::new();
    let (out, err) = (dir.join("out.log"), dir.join("err.log"));
    let sock = dir.join("app.sock");
    let pid_file = dir.join("app.pid");
    let mut master = Fixture::new(&dir)
        .workers(2)
        .args(&["--user", "nobody"])
        .pid_file(&pid_file)
        .unix("app.sock")
        .log_files(&out, &err)
        .start();
    master.log_path = err.clone();
    master.wait_ready();

    assert_eq!(ids(master.pid(), "Uid"), all(0), "the master left root");
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for worker in &workers {
        assert_eq!(ids(*worker, "Uid"), all(uid), "worker {worker}");
        assert_eq!(ids(*worker, "Gid"), all(gid), "worker {worker}");
        assert_eq!(groups(*worker), expected_groups, "worker {worker}");
    }

    let target = Target::unix(&sock);
    let env = env_of(&target);
    for var in [
        "USER=nobody".to_string(),
        "LOGNAME=nobody".to_string(),
        format!("HOME={}", nobody.dir.display()),
    ] {
        assert!(env.contains(&var), "no {var} in {env:?}");
    }

    assert_eq!(owner(&sock), (uid, gid), "socket file");
    assert_eq!(owner(&out), (uid, gid), "stdout file");
    assert_eq!(owner(&err), (uid, gid), "stderr file");

    // A crashed worker comes back as nobody.
    assert!(get(&target, "/crash").is_err(), "/crash answered");
    let replacement = master.wait_for("a replacement worker", secs(20), |_| {
        let new: Vec<i32> = master
            .children()
            .into_iter()
            .filter(|p| !workers.contains(p))
            .collect();
        (new.len() == 1).then(|| new[0])
    });
    master.wait_log(&format!("pid={replacement} event=ready"), secs(20));
    assert_eq!(ids(replacement, "Uid"), all(uid));
    assert_eq!(ids(replacement, "Gid"), all(gid));

    // A log file reopened after a rotation is given to nobody too.
    std::fs::rename(&err, dir.join("err.log.1")).unwrap();
    master.signal(Signal::SIGUSR1);
    wait_file(
        &err,
        &format!("event=log-reopened path={}", err.display()),
        secs(10),
    );
    assert_eq!(owner(&err), (uid, gid), "reopened stderr file");
}

#[test]
fn group_sets_the_workers_gid() {
    needs_root!("group_sets_the_workers_gid");
    let nogroup = Group::from_name("nogroup")
        .unwrap()
        .or_else(|| Group::from_name("nobody").unwrap())
        .expect("group nogroup or nobody");
    let gid = nogroup.gid.as_raw();
    let dir = TempDir::new();
    let sock = dir.join("app.sock");
    let master = Fixture::new(&dir)
        .workers(2)
        .args(&["--group", &nogroup.name])
        .unix("app.sock")
        .start();
    master.wait_ready();
    assert_eq!(
        ids(master.pid(), "Gid"),
        all(0),
        "the master left group root"
    );
    for worker in master.children() {
        assert_eq!(ids(worker, "Uid"), all(0), "worker {worker}");
        assert_eq!(ids(worker, "Gid"), all(gid), "worker {worker}");
        assert_eq!(groups(worker), vec![gid], "worker {worker}");
    }
    assert_eq!(owner(&sock).1, gid, "socket file group");
    wait_serving(&Target::unix(&sock));
}

#[test]
fn an_unknown_user_or_group_is_refused() {
    let dir = TempDir::new();
    let listen = dir.unix("app.sock");
    for (flag, value, what) in [
        ("--user", "no-such-user", "no such user"),
        ("--group", "no-such-group", "no such group"),
    ] {
        let out = run(&[flag, value, "-l", &listen, "--", demo()], secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr, format!("forkmaster: {flag} \"{value}\": {what}\n"));
        assert!(out.stdout.is_empty());
        assert!(!dir.join("app.sock").exists());
    }
}

/// A command that runs the rest as uid/gid 65534 without other groups;
/// `None` if the system has no tool for that.
fn as_nobody() -> Option<Command> {
    if Path::new("/usr/bin/setpriv").exists() {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ]);
        return Some(cmd);
    }
    if Path::new("/usr/sbin/runuser").exists() {
        let mut cmd = Command::new("/usr/sbin/runuser");
        cmd.args(["-u", "nobody", "--"]);
        return Some(cmd);
    }
    None
}

#[test]
fn switching_user_or_group_needs_root() {
    let dir = TempDir::new();
    let listen = dir.unix("app.sock");
    for (flag, value, what) in [("--user", "root", "user"), ("--group", "root", "group")] {
        // As root, drop to nobody first; as anyone else, run directly.
        let mut cmd = if is_root() {
            match as_nobody() {
                Some(cmd) => cmd,
                None => {
                    eprintln!("skipped switching_user_or_group_needs_root: no setpriv or runuser");
                    return;
                }
            }
        } else {
            Command::new("/usr/bin/env")
        };
        cmd.arg(forkmaster())
            .args([flag, value, "-l", &listen, "--", demo()]);
        let out = run_command(cmd, secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        let expected = format!(
            "forkmaster: {what} root: switching workers to another {what} needs root (running as uid "
        );
        assert!(lines[0].starts_with(&expected), "{stderr}");
        assert!(!dir.join("app.sock").exists());
    }
}

#[test]
fn umask_applies_to_created_files_and_workers() {
    let dir = TempDir::new();
    let (out, err) = (dir.join("out.log"), dir.join("err.log"));
    let sock = dir.join("app.sock");
    let mut master = Fixture::new(&dir)
        .args(&["--umask", "0077"])
        .unix("app.sock")
        .log_files(&out, &err)
        .start();
    master.log_path = err.clone();
    master.wait_ready();
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(&out), 0o600, "stdout file");
    assert_eq!(mode(&err), 0o600, "stderr file");
    assert_eq!(mode(&sock) & 0o077, 0, "socket file mode {:o}", mode(&sock));
    assert_eq!(proc_status(master.pid(), "Umask").as_deref(), Some("0077"));
    for worker in master.children() {
        assert_eq!(
            proc_status(worker, "Umask").as_deref(),
            Some("0077"),
            "worker {worker}"
        );
    }
    wait_serving(&Target::unix(&sock));
}
