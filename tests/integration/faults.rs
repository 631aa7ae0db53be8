//! Fault injection: what the master does when the world misbehaves around it.
//!
//! | fault                                        | expected                                        |
//! |----------------------------------------------|-------------------------------------------------|
//! | workers SIGKILLed/SIGSEGVed as they appear   | backoff holds respawns down; every slot returns |
//! | fork(2) fails (RLIMIT_NPROC)                 | `event=spawn-failed`, retried; upgrade/reload fail cleanly |
//! | the master's fds are exhausted               | no busy loop, a clear log line; recovers        |
//! | pid file directory removed or unwritable     | USR2 fails cleanly, the old master serves       |
//! | thousands of mixed TTIN/TTOU/HUP/USR1        | consistent: ready == target == the log's last word |
//! | 200 upgrades in a row under load             | no failed request, no fd or memory growth       |
//! | a flood of bogus notify datagrams            | the master answers, workers serve               |
//! | a pid file naming some other live process    | nothing is signalled                            |
//!
//! Every test ends with the same check (`assert_settled`): the master answers
//! `status`, ready == target, each listed worker is a live child of the
//! master, it has no other child and no zombie, and the pid file names it.
//! Tests marked `#[ignore = "bug: ..."]` show where forkmaster falls short.

use crate::support::*;
use nix::sys::resource::Resource;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts the app's master as `forkmaster -c CONFIG`, with core dumps off
/// (a SIGSEGVed worker must not write a core anywhere) and `setup` having the
/// last say on the command; waits until all workers are ready.
fn start(app: &App, setup: impl FnOnce(&mut Command)) -> Master {
    let master = app
        .fixture()
        .setup(|cmd| limit_in_child(cmd, Resource::RLIMIT_CORE, 0))
        .setup(setup)
        .start();
    master.wait_ready();
    master
}

/// The demo app with `workers` workers and the `extra` YAML lines, run in its
/// temp dir, so nothing a worker writes in its current directory lands in
/// the source tree.
fn new_app(workers: usize, extra: &str) -> App {
    let app = App::new(workers, extra);
    configure(&app, workers, extra);
    app
}

/// Rewrites the app's config with `extra`, keeping the working directory.
fn configure(app: &App, workers: usize, extra: &str) {
    let cwd = format!("working_directory: '{}'\n", app.dir.path.display());
    app.write_config(workers, &format!("{cwd}{extra}"));
}

/// The app with its pid file in the directory `run/` of its temp dir.
fn app_with_pid_dir(workers: usize) -> (App, std::path::PathBuf) {
    let mut app = new_app(workers, "");
    let run = app.dir.join("run");
    std::fs::create_dir(&run).expect("mkdir run");
    app.pid_file = run.join("app.pid");
    configure(
        &app,
        workers,
        &format!("pid: '{}'\n", app.pid_file.display()),
    );
    (app, run)
}

/// `forkmaster status --json` by this pid file, parsed; panics unless exit 0.
fn status_by(pid_file: &Path) -> Value {
    let (code, out, err) = client(
        &["status", "-p", pid_file.to_str().unwrap(), "--json"],
        secs(10),
    );
    assert_eq!(code, 0, "status -p {}: {out}{err}", pid_file.display());
    serde_json::from_str(&out).expect("status --json is JSON")
}

/// `forkmaster COMMAND -p PIDFILE ARGS...`: (exit code, stdout, stderr).
fn client_by(command: &str, pid_file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![command, "-p", pid_file.to_str().unwrap()];
    all.extend_from_slice(args);
    client(&all, secs(60))
}

/// Waits until none of `pids` runs any more.
fn wait_gone(pids: &BTreeSet<i32>, what: &str) {
    wait_for(what, secs(20), || {
        pids.iter().all(|p| !is_running(*p)).then_some(())
    });
}

/// The master's own `event=exit` lines (not its workers').
fn master_exits(log: &str) -> Vec<BTreeMap<String, String>> {
    master_events(log, "exit")
        .into_iter()
        .filter(|e| !e.contains_key("worker"))
        .map(|e| e.into_iter().collect())
        .collect()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Worker pids in a status, as a set.
fn pids_of(status: &Value) -> BTreeSet<i32> {
    App::worker_pids(status)
        .into_iter()
        .map(|(_, pid)| pid as i32)
        .collect()
}

fn count(status: &Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {status:#}"))
}

/// The state every test must end in, with `workers` workers: the master
/// answers `status`, running and not rolling, every slot below the target
/// holds a ready worker; each listed worker is alive and a child of the
/// master, which has no other child and no zombie; the pid file names the
/// master and a worker answers. Returns the status.
fn assert_settled(app: &App, master: &Master, workers: usize) -> Value {
    let status = app.wait_status(
        &format!("{workers} ready workers, nothing in progress"),
        secs(30),
        |s| {
            let listed = s["workers"].as_array().map_or(0, Vec::len);
            s["phase"] == "running"
                && s["target"] == workers
                && s["ready"] == workers
                && listed == workers
                && s["workers"]
                    .as_array()
                    .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
                && s["reload"]["state"] != "in-progress"
                && s["upgrade"]["new_master"].is_null()
        },
    );
    let pid = count(&status, "pid") as i32;
    assert_eq!(
        read_pid(&app.pid_file),
        Some(pid),
        "the pid file does not name the master; log:\n{}",
        master.log()
    );
    let slots: BTreeSet<u64> = App::worker_pids(&status)
        .into_iter()
        .map(|(slot, _)| slot)
        .collect();
    assert_eq!(slots, (0..workers as u64).collect(), "slots in {status:#}");
    let listed = pids_of(&status);
    // A worker stopped just before may still wait to be reaped: give the
    // master its SIGCHLD.
    let deadline = Instant::now() + secs(10);
    loop {
        let children: BTreeSet<i32> = children_of(pid).into_iter().collect();
        let zombies = zombie_children_of(pid);
        if children == listed && zombies.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "master {pid}: children {children:?}, zombies {zombies:?}, \
                 status lists {listed:?}; log:\n{}",
                master.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for &worker in &listed {
        assert!(
            matches!(proc_stat(worker), Some((state, ppid, _)) if ppid == pid && state != 'Z'),
            "worker {worker} is not a live child of {pid}: {:?}",
            proc_stat(worker)
        );
    }
    let answer = wait_serving(&app.target);
    assert!(
        listed.contains(&answer["pid"].parse().expect("a pid")),
        "{answer:?} came from no listed worker {listed:?}"
    );
    status
}

/// A `delay=` value of the master's log (`100ms`, `30s`).
fn millis(delay: &str) -> u64 {
    if let Some(ms) = delay.strip_suffix("ms") {
        return ms.parse().unwrap_or_else(|_| panic!("delay {delay:?}"));
    }
    let s: u64 = delay
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("delay {delay:?}"));
    s * 1000
}

#[test]
fn a_storm_of_worker_kills_is_held_down_by_backoff_and_every_slot_comes_back() {
    let app = new_app(4, "");
    let mut master = start(&app, |_| {});
    let before = app.status();
    assert_eq!(count(&before, "ready"), 4);

    // For 3 s, SIGKILL or SIGSEGV every worker the moment it shows up.
    let storm = Duration::from_secs(3);
    let started = Instant::now();
    let (mut kills, mut victims) = (0u64, BTreeSet::new());
    while started.elapsed() < storm {
        for pid in master.children() {
            let signal = if kills % 2 == 0 {
                Signal::SIGKILL
            } else {
                Signal::SIGSEGV
            };
            // It may be gone already: only the count of tries matters.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            kills += 1;
            victims.insert(pid);
        }
        assert_master_running(&mut master);
        std::thread::yield_now();
    }
    let during = master.log();
    assert_master_running(&mut master);

    // Without backoff every kill would be answered by a spawn within a
    // millisecond: hundreds per slot in 3 s. With it (100ms, doubling), a
    // slot respawns at most 5 times in 3 s: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s.
    let spawns = master_events(&during, "spawn").len();
    eprintln!(
        "kill storm: {kills} signals to {} workers, {spawns} spawns in {storm:?}",
        victims.len()
    );
    assert!(victims.len() > 4, "no worker was killed; log:\n{during}");
    assert!(
        spawns <= 4 * (1 + 6),
        "{spawns} spawns in {storm:?}: backoff did not hold; log:\n{during}"
    );
    // Each slot's delay grows with each failure in a row.
    let mut delays: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in master_events(&during, "respawn") {
        delays
            .entry(event["worker"].clone())
            .or_default()
            .push(millis(&event["delay"]));
    }
    for (slot, d) in &delays {
        assert!(
            d.windows(2).all(|w| w[1] > w[0]),
            "slot {slot}: delays {d:?} do not grow; log:\n{during}"
        );
    }
    let longest = delays.values().flatten().max().copied().unwrap_or(0);
    assert!(
        longest >= 800,
        "the longest delay was {longest}ms; {delays:?}"
    );
    let log = master.log();
    assert!(log.contains("event=exit signal=SIGKILL"), "{log}");
    assert!(log.contains("event=exit signal=SIGSEGV"), "{log}");

    // The storm is over: every slot comes back after its (by now long) backoff.
    let status = assert_settled(&app, &master, 4);
    // Nothing lost: every worker ever spawned was reaped and accounted for,
    // but the four serving now.
    let log = master.log();
    let spawned = master_events(&log, "spawn").len();
    let exited = master_events(&log, "exit")
        .iter()
        .filter(|e| e.contains_key("worker"))
        .count();
    assert_eq!(exited + 4, spawned, "log:\n{log}");
    for worker in status["workers"].as_array().unwrap() {
        assert!(worker["restarts"].as_u64().unwrap() > 0, "{status:#}");
    }
    assert_no_panic(&log);
}

/// A uid with no other process, for a master run unprivileged: RLIMIT_NPROC
/// counts every process of the user, and other tests run workers as nobody
/// in parallel. `n` tells apart the tests that need one at the same time.
fn private_uid(n: u32) -> u32 {
    40_000 + (std::process::id() % 5_000) * 4 + n
}

/// Makes the app's dir usable by `uid` (the socket, pid and temp files go there).
fn open_dir_to(app: &App, uid: u32) {
    std::os::unix::fs::chown(&app.dir.path, Some(uid), Some(uid)).expect("chown temp dir");
    set_mode(&app.dir.path, 0o755);
}

/// Runs the master as `uid`:`uid` with no supplementary groups and no
/// capabilities (std drops the groups when root changes uid).
fn as_user(uid: u32) -> impl FnOnce(&mut Command) {
    move |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
}

/// The `error="..."` of the master's `event=spawn-failed` lines.
fn spawn_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" forkmaster[") && l.contains("event=spawn-failed"))
        .collect()
}

#[test]
fn fork_failing_is_logged_and_retried_and_upgrade_and_reload_fail_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root to run the master as another user");
        return;
    }
    let uid = private_uid(0);
    let app = new_app(2, "");
    open_dir_to(&app, uid);
    let mut master = start(&app, as_user(uid));
    let pid = master.pid();
    assert_eq!(
        proc_status(pid, "Uid").unwrap().split_whitespace().next(),
        Some(uid.to_string().as_str())
    );
    let before = assert_settled(&app, &master, 2);

    // From now on every fork(2) of the master fails with EAGAIN: the uid
    // already has its workers' tasks, far over one. (Set on the running
    // master rather than at exec, so its first workers could start.) The
    // workers keep their own, unlimited, RLIMIT_NPROC.
    set_soft_limit(pid, Resource::RLIMIT_NPROC, 1);

    // TTIN: the fork fails, is logged, and retried with backoff.
    send_signal(pid, Signal::SIGTTIN);
    let log = master.wait_log_count("event=spawn-failed", 3, secs(10));
    let failures = spawn_failures(&log);
    assert!(
        failures[0]
            .contains("worker=2 event=spawn-failed error=\"fork: try again (a process limit"),
        "{failures:#?}; log:\n{log}"
    );
    let delays: Vec<u64> = master_events(&log, "respawn")
        .iter()
        .filter(|e| e["worker"] == "2")
        .map(|e| millis(&e["delay"]))
        .collect();
    assert!(
        delays.len() >= 2 && delays[1] > delays[0],
        "{delays:?}; log:\n{log}"
    );
    let status = app.status();
    assert_eq!((count(&status, "target"), count(&status, "ready")), (3, 2));
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");
    assert_master_running(&mut master);

    // TTOU gives up the slot: back to 2 of 2.
    send_signal(pid, Signal::SIGTTOU);
    wait_signals_handled(&mut master, pid);
    let status = assert_settled(&app, &master, 2);
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");

    // An upgrade cannot fork the new master: it fails, the old one serves.
    let (code, out, err) = client(
        &["upgrade", "-p", app.pid_file.to_str().unwrap(), "--wait"],
        secs(30),
    );
    assert_eq!(code, 1, "upgrade: {out}{err}");
    assert_eq!(
        err,
        format!("forkmaster: upgrade failed: fork: try again; pid {pid} keeps serving\n")
    );
    assert_no_file(&app.oldbin());
    let status = assert_settled(&app, &master, 2);
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");

    // A reload cannot fork a replacement: it fails, the old workers serve.
    let (code, out, err) = client(
        &["reload", "-p", app.pid_file.to_str().unwrap(), "--wait"],
        secs(30),
    );
    assert_eq!(code, 1, "reload: {out}{err}");
    assert!(
        err.contains("reload failed: worker=0 fork: try again"),
        "{err}"
    );
    let status = assert_settled(&app, &master, 2);
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");

    // TTIN again, then the limit is lifted: the slot fills after its backoff.
    let failed = spawn_failures(&master.log()).len();
    send_signal(pid, Signal::SIGTTIN);
    master.wait_log_count("worker=2 event=spawn-failed", failed + 1, secs(10));
    set_soft_limit(pid, Resource::RLIMIT_NPROC, u64::MAX);
    let status = assert_settled(&app, &master, 3);
    assert!(pids_of(&before).is_subset(&pids_of(&status)));
    let log = master.log();
    assert_no_panic(&log);
    assert_master_running(&mut master);
}

/// The lowest fd number `pid` does not use: the one its next open would get.
fn lowest_free_fd(pid: i32) -> u64 {
    let used: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the master's fds")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !used.contains(fd)).unwrap()
}

/// Connects to the master's control socket and leaves the connection
/// pending: nothing is read, nothing closed.
fn connect_control(pid: i32) -> std::os::unix::net::UnixStream {
    let path = crate::support::master_socket(pid, "control");
    std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()))
}

/// Puts the master `pid` at its fd limit (RLIMIT_NOFILE soft = its lowest
/// free fd, so its next socket, pipe or file fails with EMFILE) and leaves
/// connections pending on its control socket, which it cannot accept.
///
/// The limit is lowered on the running master: at exec, a limit low enough
/// to bite later would depend on exactly how many fds startup needs, and
/// connections alone cannot fill a master's table, which closes each one as
/// soon as it has answered.
fn exhaust_fds(pid: i32) -> Vec<std::os::unix::net::UnixStream> {
    set_soft_limit(pid, Resource::RLIMIT_NOFILE, lowest_free_fd(pid));
    (0..20).map(|_| connect_control(pid)).collect()
}

/// Takes the fd pressure off: the pending connections go, the limit rises.
fn relieve_fds(pid: i32, pending: Vec<std::os::unix::net::UnixStream>) {
    drop(pending);
    set_soft_limit(pid, Resource::RLIMIT_NOFILE, 1024);
}

#[test]
fn a_master_out_of_fds_keeps_its_workers_says_why_a_worker_cannot_start_and_recovers() {
    let app = new_app(2, "");
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    let before = assert_settled(&app, &master, 2);
    let pending = exhaust_fds(pid);

    // A new worker cannot even be set up: the master has no fd for its
    // pipes. Logged, and retried with backoff.
    send_signal(pid, Signal::SIGTTIN);
    master.wait_log(
        "worker=2 event=spawn-failed error=\"pipe: too many open files",
        secs(10),
    );
    // The workers serve on; the master still takes signals and datagrams.
    let answer = wait_serving(&app.target);
    assert!(pids_of(&before).contains(&answer["pid"].parse().unwrap()));
    wait_signals_handled(&mut master, pid);
    assert_master_running(&mut master);

    relieve_fds(pid, pending);
    let status = assert_settled(&app, &master, 3);
    assert!(
        pids_of(&before).is_subset(&pids_of(&status)),
        "a worker was lost"
    );
    let log = master.log();
    assert_no_panic(&log);
}

/// While a connection waits on the control socket that the master cannot
/// accept (EMFILE), the socket stays readable: poll(2) returns at once, the
/// failed accept is dropped without a word, and the loop goes round again.
#[test]
fn a_master_out_of_fds_does_not_spin_and_says_why_it_cannot_answer() {
    let app = new_app(2, "");
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    assert_settled(&app, &master, 2);
    let pending = exhaust_fds(pid);
    // Let the master see the first connection before measuring.
    wait_signals_handled(&mut master, pid);

    let cpu_before = cpu_time(pid).expect("master cpu time");
    // A measuring window, not a synchronisation: the pressure lasts 2 s.
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = cpu_time(pid).expect("master cpu time") - cpu_before;
    let log = master.log();
    let said = log
        .lines()
        .any(|l| l.contains(" forkmaster[") && l.to_lowercase().contains("too many open files"));
    relieve_fds(pid, pending);
    assert!(
        used < window / 10,
        "the master used {used:?} of CPU in {window:?} with a connection it cannot accept"
    );
    assert!(
        said,
        "nothing logged about the connections it cannot accept; log:\n{log}"
    );
    assert_settled(&app, &master, 2);
    assert_master_running(&mut master);
}

/// `status` against a master that does not answer in time blames the user:
/// the read timeout is taken for the refusal a master gives another user.
#[test]
fn status_of_a_master_that_cannot_answer_does_not_blame_the_user() {
    let app = new_app(1, "");
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    let pending = exhaust_fds(pid);
    let (code, out, err) = client(&["status", "-p", app.pid_file.to_str().unwrap()], secs(30));
    relieve_fds(pid, pending);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        !err.contains(in_source("answers only its own user")),
        "root was told to run as the master's user: {err}"
    );
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert_settled(&app, &master, 1);
    assert_master_running(&mut master);
}

#[test]
fn a_removed_pid_file_directory_fails_the_upgrade_cleanly_and_stop_still_works() {
    let (app, run) = app_with_pid_dir(2);
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    let before = assert_settled(&app, &master, 2);

    std::fs::remove_dir_all(&run).expect("rm -r run");
    // Without its pid file the client cannot find the master at all.
    let (code, out, err) = client_by("upgrade", &app.pid_file, &["--wait"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("not running: no pid file at"), "{err}");

    // USR2 by hand: the master cannot write PIDFILE.oldbin, so it does not
    // start a new master, and says why.
    send_signal(pid, Signal::SIGUSR2);
    let log = master.wait_log("event=upgrade-failed", secs(10));
    let oldbin = app.oldbin();
    assert!(
        log.contains(&format!(
            "upgrade failed: pid file {}: no such file or directory event=upgrade-failed",
            oldbin.display()
        )),
        "{log}"
    );
    assert_eq!(
        master_events(&log, event_in_source("upgrade-start")).len(),
        0,
        "{log}"
    );
    assert_eq!(
        master.children().into_iter().collect::<BTreeSet<_>>(),
        pids_of(&before)
    );
    wait_serving(&app.target);
    assert!(!run.exists(), "the master made the directory again");

    // The operator puts the directory and the pid file back, and has the
    // master reopen its files (USR1), which binds its sockets again in it:
    // the client finds the master again (the pid file it names is its own).
    std::fs::create_dir(&run).unwrap();
    std::fs::write(&app.pid_file, format!("{pid}\n")).unwrap();
    send_signal(pid, Signal::SIGUSR1);
    master.wait_log("event=sockets-restored", secs(10));
    let status = status_by(&app.pid_file);
    assert_eq!(status["upgrade"]["state"], "failed", "{status:#}");
    assert_eq!((count(&status, "ready"), count(&status, "target")), (2, 2));
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");

    // Now an upgrade goes through.
    let (code, out, err) = client_by("upgrade", &app.pid_file, &["--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(20)).success(), "{}", master.log());
    let status = assert_settled(&app, &master, 2);
    let new = count(&status, "pid") as i32;
    assert_ne!(new, pid);
    assert_no_file(&app.oldbin());

    // The directory goes again; a stop (QUIT by hand: the client has no
    // pid file to go by) still stops everything, cleanly.
    std::fs::remove_dir_all(&run).expect("rm -r run");
    let workers = pids_of(&status);
    send_signal(new, Signal::SIGQUIT);
    wait_gone(&workers, "the new master's workers to stop");
    wait_for("the new master to exit", secs(20), || {
        (!is_running(new)).then_some(())
    });
    assert!(!is_running(new));
    let log = master.log();
    let exits = master_exits(&log);
    assert_eq!(exits.len(), 2, "{log}");
    assert!(exits.iter().all(|e| e["status"] == "0"), "{log}");
    assert!(!run.exists(), "the master made the directory again");
    assert_no_panic(&log);
}

#[test]
fn an_unwritable_pid_file_directory_fails_the_upgrade_cleanly_and_stop_leaves_a_stale_file() {
    if !is_root() {
        eprintln!("skipped: needs root to run the master as another user");
        return;
    }
    // As root the master could write anyway: it runs as a user of its own.
    let uid = private_uid(1);
    let (app, run) = app_with_pid_dir(2);
    open_dir_to(&app, uid);
    std::os::unix::fs::chown(&run, Some(uid), Some(uid)).unwrap();
    let mut master = start(&app, as_user(uid));
    let pid = master.pid();
    let before = assert_settled(&app, &master, 2);

    set_mode(&run, 0o555);
    let (code, out, err) = client_by("upgrade", &app.pid_file, &["--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    let why = format!(
        "rename {} to {}: permission denied",
        app.pid_file.display(),
        app.oldbin().display()
    );
    assert_eq!(
        err,
        format!("forkmaster: upgrade failed: {why}; pid {pid} keeps serving\n")
    );
    let log = master.log();
    assert!(
        log.contains(&format!("upgrade failed: {why} event=upgrade-failed")),
        "{log}"
    );
    let status = assert_settled(&app, &master, 2);
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was lost");
    assert_no_file(&app.oldbin());

    // Writable again: the upgrade goes through.
    set_mode(&run, 0o755);
    let (code, out, err) = client_by("upgrade", &app.pid_file, &["--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(20)).success(), "{}", master.log());
    let status = assert_settled(&app, &master, 2);
    let new = count(&status, "pid") as i32;
    assert_ne!(new, pid);

    // Unwritable before a stop: the master stops all the same, and the pid
    // file it could not remove names a dead pid, which clients call stale.
    set_mode(&run, 0o555);
    let workers = pids_of(&status);
    let (code, out, err) = client_by("stop", &app.pid_file, &["--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("stopped: pid {new} in ")), "{out}");
    wait_gone(&workers, "the new master's workers to stop");
    assert_eq!(read_pid(&app.pid_file), Some(new));
    let (code, _, err) = client_by("status", &app.pid_file, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "stale pid file {} (pid {new} is gone)",
            app.pid_file.display()
        )),
        "{err}"
    );
    let log = master.log();
    let exits = master_exits(&log);
    assert_eq!(exits.len(), 2, "{log}");
    assert!(exits.iter().all(|e| e["status"] == "0"), "{log}");
    set_mode(&run, 0o755);
}

/// A master that cannot remove its pid file at exit leaves it without a
/// word: the operator finds a stale file and no reason in the log.
#[test]
fn a_pid_file_that_cannot_be_removed_at_exit_is_logged() {
    if !is_root() {
        eprintln!("skipped: needs root to run the master as another user");
        return;
    }
    let uid = private_uid(2);
    let (app, run) = app_with_pid_dir(1);
    open_dir_to(&app, uid);
    std::os::unix::fs::chown(&run, Some(uid), Some(uid)).unwrap();
    let mut master = start(&app, as_user(uid));
    set_mode(&run, 0o555);
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(secs(20));
    set_mode(&run, 0o755);
    assert!(status.success(), "{status}");
    let log = master.log();
    assert!(
        log.lines().any(|l| l.contains(" forkmaster[")
            && l.contains(&app.pid_file.display().to_string())
            && l.contains("permission denied")),
        "the pid file was left behind without a word; log:\n{log}"
    );
}

/// The worker count the master's log last set: by TTIN/TTOU/WINCH or a
/// retirement (`event=scale`), a reload (`event=reload-start`), a failed
/// reload going back to the configured count, or a restore.
fn target_by_log(log: &str, configured: usize) -> Option<usize> {
    let mut target = None;
    for line in log.lines().filter(|l| l.contains(" forkmaster[")) {
        let f = fields(line);
        match f.get("event").map(String::as_str) {
            Some("scale" | "reload-start" | "restore-workers") => {
                target = f.get("workers").and_then(|w| w.parse().ok());
            }
            Some("reload-failed") if line.contains("action=\"back to generation") => {
                target = Some(configured);
            }
            _ => {}
        }
    }
    target
}

#[test]
fn a_mixed_storm_of_ttin_ttou_hup_and_usr1_leaves_a_consistent_master() {
    let app = new_app(2, "");
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    assert_settled(&app, &master, 2);

    // 4000 signals in 40 bursts over about a second. Every HUP starts a
    // rolling restart (superseding the one in progress), every USR1 goes on
    // to each worker, TTIN and TTOU move the count.
    let kinds = [
        Signal::SIGTTIN,
        Signal::SIGHUP,
        Signal::SIGTTOU,
        Signal::SIGUSR1,
    ];
    let started = Instant::now();
    for burst in 0..40 {
        for i in 0..100 {
            send_signal(pid, kinds[(i + i / 4 + burst) % 4]);
        }
        // Pacing, not synchronisation: let the master act between bursts.
        std::thread::sleep(Duration::from_millis(25));
    }
    let took = started.elapsed();
    wait_signals_handled(&mut master, pid);
    assert_master_running(&mut master);

    // The master agrees with its own log about how many workers it wants,
    // and gets there: every slot ready, nothing left rolling.
    let log = master.log();
    let wanted = target_by_log(&log, 2).unwrap_or(2);
    let status = app.status();
    assert_eq!(count(&status, "target") as usize, wanted, "{status:#}");
    let handled = |event: &str| master_events(&log, event).len();
    eprintln!(
        "mixed storm: 4000 signals in {took:?}; handled {} scale, {} reload-start, {} reopen-logs; {wanted} workers wanted; {} workers killed by USR1",
        handled("scale"),
        handled("reload-start"),
        handled("reopen-logs"),
        log.matches("event=exit signal=SIGUSR1").count(),
    );
    assert!(
        handled("reload-start") > 0 && handled("reopen-logs") > 0,
        "{log}"
    );
    let status = assert_settled(&app, &master, wanted);
    let generation = count(&status, "generation");
    for worker in status["workers"].as_array().unwrap() {
        assert_eq!(worker["generation"], generation, "{status:#}");
    }

    // Back to two with awaited signals, so the last word is a scale line.
    loop {
        let now = count(&app.status(), "target");
        let signal = if now > 2 {
            Signal::SIGTTOU
        } else {
            Signal::SIGTTIN
        };
        send_signal(pid, signal);
        wait_signals_handled(&mut master, pid);
        if now == 3 {
            break;
        }
    }
    let log = master.log();
    let last = master_events(&log, "scale").pop().expect("a scale line");
    assert_eq!(last["workers"], "2", "{log}");
    assert_eq!(target_by_log(&log, 2), Some(2));
    assert_settled(&app, &master, 2);
    assert_no_panic(&log);
    assert_master_running(&mut master);
}

/// `reopen-logs` (USR1) during a rolling restart: the master passes USR1 on
/// to every worker, also to a replacement still booting, which has not set
/// up a handler yet, and USR1's default action ends a process. Real apps
/// boot for seconds before they handle signals (here: a shell that sleeps,
/// then execs the demo); logrotate at that moment fails the deploy.
#[test]
fn reopen_logs_during_a_reload_does_not_kill_the_booting_replacement() {
    let app = new_app(2, "");
    let slow = app.dir.join("slow");
    let script = format!(
        "if [ -e {} ]; then sleep 2; fi; exec \"$0\"",
        slow.display()
    );
    configure(
        &app,
        2,
        &format!(
            "reopen_signal: USR1\ncommand: ['/bin/sh', '-c', '{script}', '{}']\n",
            demo()
        ),
    );
    let mut master = start(&app, |_| {});
    assert_settled(&app, &master, 2);

    std::fs::write(&slow, "").unwrap();
    let (code, out, err) = client_by("reload", &app.pid_file, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let log = master.wait_log("event=spawn generation=2 role=replacement", secs(10));
    let replacement = master_events(&log, "spawn")
        .iter()
        .find(|e| e.contains_key("role"))
        .map(event_pid)
        .expect("the replacement's spawn line");
    // Its own process group (the master makes one per worker), with the
    // sleep: what a killed worker leaves behind must not outlive the test.
    master.guard().watch_group(replacement);
    let (code, out, err) = client_by("reopen-logs", &app.pid_file, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let status = app.wait_status("the reload to end", secs(30), |s| {
        s["reload"]["state"] != "in-progress"
    });
    let log = master.log();
    assert_eq!(status["reload"]["state"], "done", "{status:#}\n{log}");
    assert_not_logged(&log, "event=exit signal=SIGUSR1");
    assert_settled(&app, &master, 2);
}

/// What the flood sends, in turn: plain and forged notifications from a
/// process that is no worker, empty and malformed ones, and oversized ones
/// (over the 4096 bytes the master reads).
fn bogus_datagrams() -> Vec<Vec<u8>> {
    vec![
        b"READY=1\nSTATUS=forged\n".to_vec(),
        b"WATCHDOG=1\n".to_vec(),
        b"FORKMASTER_RETIRE=0\nFORKMASTER_UPGRADE_FAILED=forged\n".to_vec(),
        Vec::new(),
        b"\xff\xfe\x00=\n==\nREADY\nREADY=\n\x00\x00".to_vec(),
        vec![b'x'; 5000],
        [b"READY=1\n".as_slice(), &[b'y'; 70_000]].concat(),
    ]
}

/// Floods the notify socket of the master `pid` from `threads` threads for
/// `duration` (at most `limit` datagrams each); the datagrams sent.
fn flood_notify(
    pid: i32,
    threads: usize,
    duration: Duration,
    limit: usize,
) -> Vec<std::thread::JoinHandle<usize>> {
    let addr = crate::support::master_socket(pid, "notify");
    (0..threads)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                use std::os::unix::net::UnixDatagram;
                let socket = UnixDatagram::unbound().unwrap();
                // The queue is short (net.unix.max_dgram_qlen): a send waits
                // for the master to read. A master that stops reading fails it.
                socket.set_write_timeout(Some(secs(10))).unwrap();
                let datagrams = bogus_datagrams();
                let started = Instant::now();
                let mut sent = 0;
                while sent < limit && started.elapsed() < duration {
                    let d = &datagrams[sent % datagrams.len()];
                    socket
                        .send_to(d, &addr)
                        .unwrap_or_else(|e| panic!("datagram {sent} to {}: {e}", addr.display()));
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

#[test]
fn a_flood_of_bogus_notifications_leaves_the_master_responsive_and_its_workers_serving() {
    let app = new_app(2, "");
    let mut master = start(&app, |_| {});
    let pid = master.pid();
    let before = assert_settled(&app, &master, 2);

    // Up to 2 x 12000 datagrams for at most 3 s (bounded: each is a log line).
    let flood = flood_notify(pid, 2, Duration::from_secs(3), 12_000);
    let (mut rounds, mut slowest) = (0, Duration::ZERO);
    while !flood.iter().all(|t| t.is_finished()) {
        let asked = Instant::now();
        let status = status_by(&app.pid_file);
        slowest = slowest.max(asked.elapsed());
        assert_eq!(pids_of(&status), pids_of(&before), "{status:#}");
        let answer = get(&app.target, "/").expect("GET / during the flood");
        assert_eq!(answer.status, 200, "{answer:?}");
        rounds += 1;
    }
    let sent: usize = flood
        .into_iter()
        .map(|t| t.join().expect("flood thread"))
        .sum();
    assert_master_running(&mut master);
    wait_signals_handled(&mut master, pid);

    let log = master.log();
    let ignored = log.matches("event=notify-ignored").count();
    let bytes: usize = log
        .lines()
        .filter(|l| l.contains("event=notify-ignored"))
        .map(|l| l.len() + 1)
        .sum();
    eprintln!(
        "notify flood: {sent} datagrams; meanwhile {rounds} status answers (slowest \
         {slowest:?}) and requests served; {ignored} notify-ignored lines, {bytes} bytes of log"
    );
    assert!(sent >= 1000, "only {sent} datagrams sent");
    assert!(rounds > 0);
    // The log of ignored datagrams is rate-limited (a burst of 20, then 5 a
    // second): a flood costs a few lines that count what they left out, not
    // a line per datagram.
    assert!(
        ignored <= 20 + 5 * 10 + 2,
        "{ignored} lines for {sent} datagrams"
    );
    let said_suppressed: u64 = log
        .lines()
        .filter_map(|l| l.split("suppressed_before=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        said_suppressed + ignored as u64 >= (sent as u64).min(1000),
        "the log accounts for {said_suppressed} + {ignored} of {sent} datagrams"
    );
    // Forged readiness and retirement changed nothing.
    assert_not_logged(&log, "reason=retire");
    assert_eq!(master_events(&log, "ready").len(), 2, "{log}");
    let status = assert_settled(&app, &master, 2);
    assert_eq!(pids_of(&status), pids_of(&before), "a worker was replaced");
    assert_master_running(&mut master);
}

/// Upgrades one after another under load; fd count and RSS of the final
/// master against the first re-exec'd one (the original may hold fds the
/// test runner leaked to it).
fn upgrades_under_load(upgrades: usize) {
    let app = new_app(2, "");
    let mut master = start(&app, |_| {});
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);
    let started = Instant::now();
    let mut first = None;
    for i in 1..=upgrades {
        let old = app.master_pid();
        let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
        assert_eq!(code, 0, "upgrade {i}: {out}{err}\n{}", master.log());
        assert!(
            out.starts_with(&format!("upgraded: pid {old} -> ")),
            "{out}"
        );
        let new = app.master_pid();
        assert!(!is_running(old), "upgrade {i}: old master {old} still runs");
        assert_no_file(&app.oldbin());
        if i == 1 {
            assert!(master.wait_exit(secs(10)).success(), "{}", master.log());
            // Once its workers are ready and the old master gone, its fds are settled.
            assert_settled(&app, &master, 2);
            first = Some((new, fd_count(new), rss_kb(new).expect("VmRSS")));
        }
    }
    let took = started.elapsed();
    let generations = load.finish_without_failures();
    let answered: u64 = generations.values().sum();
    let status = assert_settled(&app, &master, 2);
    let last = count(&status, "pid") as i32;
    let (first_pid, fds_first, rss_first) = first.expect("one upgrade at least");
    let (fds_last, rss_last) = (fd_count(last), rss_kb(last).expect("VmRSS"));
    eprintln!(
        "{upgrades} upgrades in {took:?} ({:?} each), {answered} requests answered, none failed; \
         fds {fds_first} -> {fds_last}, VmRSS {rss_first} kB -> {rss_last} kB \
         (masters {first_pid} -> {last})",
        took / upgrades as u32
    );
    assert_eq!(count(&status, "generation"), 1 + upgrades as u64);
    assert_eq!(fds_last, fds_first, "the master's fd count changed");
    assert!(
        rss_last <= rss_first + rss_first / 5 + 512,
        "VmRSS grew from {rss_first} kB to {rss_last} kB"
    );
    assert_no_file(&app.oldbin());
    assert!(zombie_children_of(last).is_empty());
    let log = master.log();
    assert_no_panic(&log);
    assert_no_event(&log, "upgrade-failed");
}

#[test]
fn soak_200_upgrades_under_load() {
    upgrades_under_load(200);
}

/// Whether a signal is pending for `pid` (any thread, or the process).
fn has_pending_signal(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|mask| !mask.trim_start_matches('0').is_empty())
        })
}

/// The client commands that signal a master, without `--wait` (clients.rs
/// tries each with it), the harmless last.
const SIGNALLING: [&[&str]; 5] = [
    &["stop"],
    &["stop", "--quick"],
    &["reload"],
    &["upgrade"],
    &["reopen-logs"],
];

#[test]
fn clients_without_wait_signal_no_unrelated_process_named_by_the_pid_file_or_its_oldbin() {
    let dir = TempDir::new();
    let mut guard = Guard::new();
    let sleeper = guard.adopt(
        Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = sleeper.id() as i32;
    let pid_file = dir.join("app.pid");
    let oldbin = dir.join("app.pid.oldbin");
    // The pid file itself, then only a `.oldbin` (as mid-upgrade), naming it.
    for (file, present) in [(&pid_file, &pid_file), (&pid_file, &oldbin)] {
        let _ = std::fs::remove_file(&pid_file);
        std::fs::write(present, format!("{pid}\n")).unwrap();
        for command in SIGNALLING.iter().chain([&["status"][..]].iter()) {
            let mut args = command.to_vec();
            args.extend_from_slice(&["-p", file.to_str().unwrap()]);
            let (code, out, err) = client(&args, secs(30));
            assert_eq!(
                code,
                3,
                "{command:?} with {}: {out}{err}",
                present.display()
            );
            assert!(err.contains("not running"), "{command:?}: {err}");
        }
    }
    // QUIT, TERM, HUP, USR1 and USR2 each end `sleep`; the clients have
    // exited, so a signal sent would show by now as a death or pending.
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep was signalled");
    assert!(!has_pending_signal(pid), "a signal is pending for sleep");
}

/// Pid reuse can hand a stale pid file's pid to another app's master: the
/// clients check that the pid is a forkmaster master, not that it is the
/// master of this pid file, and signal it.
#[test]
fn clients_signal_no_master_of_another_pid_file() {
    let mine = new_app(1, "");
    let other = new_app(1, "");
    let mut master = start(&other, |_| {});
    let pid = master.pid();
    // Our master died without removing its pid file; its pid now belongs
    // to the other app's master.
    std::fs::write(&mine.pid_file, format!("{pid}\n")).unwrap();
    // The harmless ones first: the first failure tells.
    for command in SIGNALLING.iter().rev() {
        let (code, out, err) = client_by(command[0], &mine.pid_file, &command[1..]);
        assert_ne!(
            code,
            0,
            "{command:?} -p {} took pid {pid}, the master of {}, for ours: {out}{err}",
            mine.pid_file.display(),
            other.pid_file.display()
        );
        let status = other.try_status();
        let log = master.log();
        assert_master_running(&mut master);
        let status = status.expect("the other master answers");
        assert_eq!(status["upgrade"]["attempts"], 0, "{command:?}: {status:#}");
        assert_eq!(status["reload"]["attempts"], 0, "{command:?}: {status:#}");
        assert!(
            !log.contains(in_source("event=reopen-logs")),
            "{command:?}: {log}"
        );
    }
    assert_settled(&other, &master, 1);
}
