//! What a worker starts with: its environment (every socket-inheritance
//! convention, forkmaster's own variables, `--env`), its fds, its process
//! group and parent-death signal, and its working directory.

use crate::support::*;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The environment a worker reports on `GET /env`, one `(KEY, VALUE)` per
/// line, in the order given (sorted by the demo), duplicates kept.
pub(crate) fn env_entries(target: &Target) -> Vec<(String, String)> {
    let response = get(target, "/env").unwrap_or_else(|e| panic!("GET /env on {target:?}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    response
        .body
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// A worker's environment as a map; panics if any key is set twice (then
/// which value the app sees depends on how it reads `environ`).
pub(crate) fn worker_env(target: &Target) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (key, value) in env_entries(target) {
        if let Some(earlier) = env.insert(key.clone(), value.clone()) {
            panic!("{key} is set twice in the worker's environment: {earlier:?} and {value:?}");
        }
    }
    env
}

/// The fd numbers a worker had open when its `main` started (`GET /fds`).
fn worker_fds(target: &Target) -> (Vec<i32>, String) {
    let response = get(target, "/fds").unwrap_or_else(|e| panic!("GET /fds: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    let fds = response
        .body
        .lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|fd| fd.parse().ok())
                .unwrap_or_else(|| panic!("bad /fds line {l:?}"))
        })
        .collect();
    (fds, response.body)
}

fn pid_of(fields: &HashMap<String, String>) -> i32 {
    fields["pid"].parse().expect("pid field")
}

fn cwd_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).expect("read /proc/PID/cwd")
}

#[test]
fn worker_env_describes_listeners_worker_and_master() {
    let dir = TempDir::new();
    let sock = dir.join("app.sock");
    let master = Fixture::new(&dir)
        .tcp()
        .unix("app.sock")
        .env("GREETING=hello world")
        .env("EMPTY=")
        .start();
    let log = master.wait_ready();
    let addr = listen_addr(&log, 0);
    let tcp = Target::Tcp(addr);
    let root = wait_serving(&tcp);
    let env = worker_env(&tcp);
    assert_eq!(master.children(), vec![pid_of(&root)], "one worker");

    assert_eq!(env["LISTEN_FDS"], "2");
    assert_eq!(
        env["LISTEN_PID"], root["pid"],
        "LISTEN_PID is the worker's own pid"
    );
    assert_eq!(env["LISTEN_FDNAMES"], "unknown:unknown");
    assert_eq!(
        env["SERVER_STARTER_PORT"],
        format!("{addr}=3;{}=4", sock.display())
    );
    assert_eq!(env["EINHORN_FD_COUNT"], "2");
    assert_eq!(env["EINHORN_FD_0"], "3");
    assert_eq!(env["EINHORN_FD_1"], "4");
    assert!(!env.contains_key("EINHORN_FD_2"), "{env:?}");
    assert_eq!(env["FORKMASTER_WORKER"], "0");
    assert_eq!(env["FORKMASTER_WORKERS"], "1");
    assert_eq!(env["FORKMASTER_GENERATION"], "1");
    assert_eq!(env["FORKMASTER_MASTER_PID"], master.pid().to_string());
    assert!(
        env["NOTIFY_SOCKET"].starts_with('/'),
        "a socket file: {:?}",
        env["NOTIFY_SOCKET"]
    );
    assert!(!env.contains_key("WATCHDOG_USEC"), "no watchdog: {env:?}");
    assert_eq!(env["GREETING"], "hello world");
    assert_eq!(env["EMPTY"], "");

    // The Unix listener serves the same worker, with the same environment.
    let unix = Target::unix(&sock);
    assert_eq!(wait_serving(&unix)["pid"], root["pid"]);
    assert_eq!(worker_env(&unix), env);
}

#[test]
fn notify_socket_is_set_only_with_ready_notify() {
    let dir = TempDir::new();
    let delayed = Fixture::new(&dir).tcp().ready("delay:100ms").start();
    let notified = Fixture::new(&dir).tcp().start();
    let delayed_tcp = Target::Tcp(listen_addr(&delayed.wait_ready(), 0));
    let notified_tcp = Target::Tcp(listen_addr(&notified.wait_ready(), 0));
    let env = worker_env(&delayed_tcp);
    assert!(!env.contains_key("NOTIFY_SOCKET"), "{env:?}");
    let env = worker_env(&notified_tcp);
    assert!(env.contains_key("NOTIFY_SOCKET"), "{env:?}");
}

#[test]
fn inherited_socket_variables_of_the_master_are_not_passed_on() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .tcp()
        .ready("delay:100ms")
        .master_env("LISTEN_FDS", "5")
        .master_env("LISTEN_PID", "1")
        .master_env("LISTEN_FDNAMES", "inherited")
        .master_env("NOTIFY_SOCKET", "/nonexistent/notify.sock")
        .master_env("FM_TEST_INHERITED", "kept")
        .start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    let root = wait_serving(&tcp);
    let env = worker_env(&tcp);
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_PID"], root["pid"]);
    assert_eq!(env["LISTEN_FDNAMES"], "unknown");
    assert!(!env.contains_key("NOTIFY_SOCKET"), "{env:?}");
    // Anything else the master inherited is passed on.
    assert_eq!(env["FM_TEST_INHERITED"], "kept");
}

#[test]
fn worker_fds_are_exactly_stdio_and_the_listeners() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).tcp().unix("app.sock").start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let (fds, listing) = worker_fds(&tcp);
    assert_eq!(fds, [0, 1, 2, 3, 4], "{listing}");
    for line in listing.lines().skip(3) {
        assert!(line.contains(" socket:["), "{listing}");
    }
}

#[test]
fn fds_the_master_inherited_do_not_leak_into_workers() {
    const LEAKED_FD: i32 = 7;
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .tcp()
        .unix("app.sock")
        .setup(|cmd| {
            // SAFETY: the closure runs in the forked child just before exec and
            // calls only dup2(2) and reads errno, both async-signal-safe; it
            // allocates nothing and takes no locks. dup2 leaves the new fd
            // without FD_CLOEXEC, so forkmaster inherits fd 7 (a second handle
            // on its log) the way a careless parent would leak one.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::dup2(2, LEAKED_FD) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
        .start();
    let log = master.wait_ready();
    // The setup worked: the master itself does hold the inherited fd.
    let held = std::fs::read_link(format!("/proc/{}/fd/{LEAKED_FD}", master.pid()))
        .expect("the master holds the inherited fd");
    assert_eq!(
        held,
        std::fs::canonicalize(&master.log_path).expect("canonical log path")
    );
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let (fds, listing) = worker_fds(&tcp);
    assert_eq!(fds, [0, 1, 2, 3, 4], "{listing}");
}

#[test]
fn worker_has_its_own_process_group_and_dies_with_the_master() {
    let dir = TempDir::new();
    let mut master = Fixture::new(&dir).tcp().start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let info = get(&tcp, "/info").expect("GET /info");
    assert_eq!(info.status, 200, "{info:?}");
    let f = info.fields();
    assert_eq!(f["pgid"], f["pid"], "own process group: {f:?}");
    assert_eq!(f["ppid"], master.pid().to_string(), "{f:?}");
    // The kernel agrees.
    let pid: i32 = f["pid"].parse().expect("pid");
    let (_, ppid, pgid) = proc_stat(pid).expect("worker's /proc stat");
    assert_eq!((ppid, pgid), (master.pid(), pid));

    // The parent-death signal (SIGKILL) at work: a master killed outright,
    // with no chance to stop its workers, still leaves no worker behind.
    master.signal(Signal::SIGKILL);
    master.wait_exit(secs(10));
    wait_for("the worker to die with its master", secs(10), || {
        (!is_running(pid)).then_some(())
    });
}

#[test]
fn demo_info_reports_the_parent_death_signal_sigkill() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).tcp().start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let info = get(&tcp, "/info").expect("GET /info");
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.fields()["pdeathsig"], "9", "{info:?}");
}

#[test]
fn working_directory_symlink_is_followed_anew_at_each_spawn() {
    let dir = TempDir::new();
    for release in ["rel1", "rel2"] {
        std::fs::create_dir(dir.join(release)).expect("mkdir release");
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink("rel1", &current).expect("symlink current");
    let master = Fixture::new(&dir)
        .tcp()
        .arg("--working-directory")
        .arg(current.display().to_string())
        .start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    let first = pid_of(&wait_serving(&tcp));
    let canonical = |p: &Path| std::fs::canonicalize(p).expect("canonicalize");
    assert_eq!(cwd_of(first), canonical(&dir.join("rel1")));

    // Deploy: atomically repoint `current` to the new release.
    let next = dir.join("current.next");
    std::os::unix::fs::symlink("rel2", &next).expect("symlink next");
    std::fs::rename(&next, &current).expect("rename over current");

    // The crash gets no response; the master respawns the slot.
    let _ = get(&tcp, "/crash");
    let second = master.wait_for("the respawned worker to serve", secs(20), |_| {
        get(&tcp, "/")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| pid_of(&r.fields()))
            .filter(|pid| *pid != first)
    });
    assert_eq!(cwd_of(second), canonical(&dir.join("rel2")));
}

#[test]
fn config_file_and_flags_merge_with_flags_winning() {
    let dir = TempDir::new();
    let cfg = dir.join("app.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen: ['127.0.0.1:0']\nworkers: 3\nready: notify\nenv: {{A: file, B: file}}\ncommand: ['{}']\n",
            demo()
        ),
    )
    .expect("write config");
    let master = Fixture::config(&dir, &cfg).workers(2).env("B=flag").start();
    let log = master.wait_log("event=all-ready workers=2 ", secs(20));
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let env = worker_env(&tcp);
    assert_eq!(env["A"], "file");
    assert_eq!(env["B"], "flag");
    assert_eq!(env["FORKMASTER_WORKERS"], "2");
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
}

#[test]
fn env_flag_cannot_duplicate_the_variables_forkmaster_sets() {
    let dir = TempDir::new();
    let mut master = Fixture::new(&dir)
        .tcp()
        .env("LISTEN_FDS=9")
        .env("FORKMASTER_WORKER=7")
        .start();
    // Either answer is fine: refuse the flag, or let forkmaster's values win.
    // Today the worker sees LISTEN_FDS=9 first, finds no listener at fd 4
    // and never boots, so the master gives up ("startup failed").
    let outcome = master.try_wait_for(secs(20), |m| {
        let log = m.log();
        if log.contains("event=all-ready") {
            Some(Ok(()))
        } else {
            log.lines()
                .find(|l| l.starts_with("forkmaster: "))
                .map(|l| Err(l.to_string()))
        }
    });
    match outcome {
        Some(Ok(())) => {
            let tcp = Target::Tcp(listen_addr(&master.log(), 0));
            wait_serving(&tcp);
            let env = worker_env(&tcp);
            assert_eq!(env["LISTEN_FDS"], "1");
            assert_eq!(env["FORKMASTER_WORKER"], "0");
        }
        Some(Err(line)) => {
            assert!(
                line.contains("--env"),
                "not a refusal of the flag: {line}\nlog:\n{}",
                master.log()
            );
            assert_eq!(master.wait_exit(secs(10)).code(), Some(1));
        }
        None => panic!("neither refused nor ready; log:\n{}", master.log()),
    }
}
