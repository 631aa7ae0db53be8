//! Nothing a worker started outlives it: an app behind a shell wrapper
//! (`sh -c 'app & wait'`), with or without `setsid` taking the app out of
//! the worker's process group, is stopped with its worker after a crash, a
//! reload, an upgrade and a stop; `status` shows what the master still
//! waits for; and what a SIGKILLed master leaves is what the docs say.

use crate::support::*;
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener};

/// The demo app run in the background by a shell that waits for it, as
/// wrappers do; `setsid` puts it in a session (and group) of its own. The
/// app is not the worker, so readiness is a delay.
fn wrapped<'a>(dir: &'a TempDir, workers: usize, setsid: bool) -> Fixture<'a> {
    let run = if setsid { "setsid \"$0\"" } else { "\"$0\"" };
    let script = format!("unset LISTEN_PID; {run} & wait");
    Fixture::new(dir)
        .workers(workers)
        .tcp()
        .ready("delay:50ms")
        .env("DEMO_NO_READY=1")
        .pid_file(dir.join("app.pid"))
        .command(&["/bin/sh", "-c", &script, demo()])
}

/// Starts a wrapped app and waits until it serves: the master, where it
/// listens, and every process of its first generation (each also handed to
/// the guard: on the code before the fix they outlive the master).
fn start_wrapped(dir: &TempDir, workers: usize, setsid: bool) -> (Master, SocketAddr, Vec<i32>) {
    let mut master = wrapped(dir, workers, setsid).start();
    master.wait_ready();
    let addr = listen_addr(&master.log(), 0);
    let target = Target::Tcp(addr);
    wait_serving(&target);
    // Every worker's app runs: a shell and an app per worker.
    let tree = master.wait_for("every wrapped app to run", secs(20), |m| {
        let tree = descendants_of(m.pid());
        (tree.len() >= 2 * workers).then_some(tree)
    });
    for &pid in &tree {
        master.guard().watch_pid(pid);
    }
    (master, addr, tree)
}

fn pid_file(dir: &TempDir) -> String {
    dir.join("app.pid").display().to_string()
}

/// Waits until none of `pids` runs.
fn wait_gone(master: &Master, pids: &[i32], what: &str) {
    master.wait_for(what, secs(20), |_| {
        let left: Vec<i32> = pids.iter().copied().filter(|p| is_running(*p)).collect();
        left.is_empty().then_some(())
    });
}

/// `n` answers, each from a process of generation `generation` not in `old`.
fn assert_only_new_generation(addr: SocketAddr, old: &[i32], generation: &str, n: usize) {
    for _ in 0..n {
        let answer = get(&Target::Tcp(addr), "/").expect("GET /").fields();
        let pid: i32 = answer["pid"].parse().expect("pid");
        assert!(!old.contains(&pid), "answered by old process {pid}");
        assert_eq!(answer["generation"], generation, "answer {answer:?}");
    }
}

/// `stop --wait` returns only once nothing is left: no process of `tree`
/// runs and the port can be bound again.
fn stop_and_check_port(dir: &TempDir, addr: SocketAddr, tree: &[i32]) {
    let (code, out, err) = client(&["stop", "-p", &pid_file(dir), "--wait"], secs(60));
    assert_eq!(code, 0, "stop --wait: {out}{err}");
    let left: Vec<i32> = tree.iter().copied().filter(|p| is_running(*p)).collect();
    assert!(left.is_empty(), "left after stop --wait: {left:?}");
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} after stop --wait: {e}"));
}

fn killed_worker_leaves_nothing(setsid: bool) {
    let dir = TempDir::new();
    let (master, addr, tree) = start_wrapped(&dir, 1, setsid);
    let worker = master.children()[0];
    nix::sys::signal::kill(Pid::from_raw(worker), Signal::SIGKILL).expect("kill worker");
    wait_gone(&master, &tree, "the killed worker's app to be stopped");
    master.wait_log_count("event=spawn", 2, secs(20));
    let answer = wait_serving(&Target::Tcp(addr));
    assert!(!tree.contains(&answer["pid"].parse().expect("pid")));
    assert!(master.log().contains(in_source("event=stray-stop")));
}

#[test]
fn a_killed_workers_app_is_stopped_with_it() {
    killed_worker_leaves_nothing(false);
}

#[test]
fn a_killed_workers_app_in_its_own_session_is_stopped_with_it() {
    killed_worker_leaves_nothing(true);
}

fn reload_leaves_no_old_generation(setsid: bool) {
    let dir = TempDir::new();
    let (master, addr, old) = start_wrapped(&dir, 2, setsid);
    let (code, out, err) = client(&["reload", "-p", &pid_file(&dir), "--wait"], secs(60));
    assert_eq!(code, 0, "reload --wait: {out}{err}");
    wait_gone(&master, &old, "the old generation to be gone");
    assert_only_new_generation(addr, &old, "2", 20);
    let tree = descendants_of(master.pid());
    stop_and_check_port(&dir, addr, &tree);
}

#[test]
fn a_reload_leaves_no_process_of_the_old_generation() {
    reload_leaves_no_old_generation(false);
}

#[test]
fn a_reload_leaves_no_process_of_the_old_generation_in_its_own_session() {
    reload_leaves_no_old_generation(true);
}

#[test]
fn an_upgrade_leaves_no_process_of_the_old_master() {
    let dir = TempDir::new();
    let (mut master, addr, old) = start_wrapped(&dir, 2, true);
    let (code, out, err) = client(&["upgrade", "-p", &pid_file(&dir), "--wait"], secs(60));
    assert_eq!(code, 0, "upgrade --wait: {out}{err}");
    // The old master exits only once what its workers started is gone.
    assert!(master.wait_exit(secs(60)).success());
    let left: Vec<i32> = old.iter().copied().filter(|p| is_running(*p)).collect();
    assert!(
        left.is_empty(),
        "left after the old master exited: {left:?}"
    );
    assert!(master.log().contains(in_source("event=stray-exit")));
    assert_only_new_generation(addr, &old, "2", 20);
    let new = read_pid(&dir.join("app.pid")).expect("new master's pid");
    let tree = descendants_of(new);
    stop_and_check_port(&dir, addr, &tree);
}

#[test]
fn stop_wait_returns_once_nothing_holds_the_port() {
    for setsid in [false, true] {
        let dir = TempDir::new();
        let (_master, addr, tree) = start_wrapped(&dir, 2, setsid);
        stop_and_check_port(&dir, addr, &tree);
    }
}

/// One worker whose child ignores the stop signal (only SIGKILL ends it),
/// with this graceful timeout.
fn start_with_a_stubborn_child(dir: &TempDir, graceful_timeout: &str) -> Master {
    Fixture::new(dir)
        .workers(1)
        .tcp()
        .ready("delay:50ms")
        .pid_file(dir.join("app.pid"))
        .args(&["--graceful-timeout", graceful_timeout])
        .command(&[
            "/bin/sh",
            "-c",
            "sh -c 'trap \"\" TERM; exec sleep 600' & wait",
        ])
        .start()
}

#[test]
fn status_shows_a_stray_until_it_is_killed_at_the_deadline() {
    let dir = TempDir::new();
    let mut master = start_with_a_stubborn_child(&dir, "3s");
    master.wait_ready();
    let sleeper = master.wait_for("the worker's child", secs(20), |m| {
        descendants_of(m.pid()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    });
    master.guard().watch_pid(sleeper);
    let worker = master.children()[0];
    master.signal(Signal::SIGQUIT);
    let pid_file = pid_file(&dir);
    let stray = master.wait_for("a stray in status --json", secs(20), |_| {
        let (code, out, _) = client(&["status", "-p", &pid_file, "--json"], secs(10));
        let status: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        status["strays"].as_array()?.first().cloned()
    });
    assert_eq!(stray["pid"], sleeper, "{stray}");
    assert_eq!(stray["pgid"], worker, "{stray}");
    let of = stray["of"].as_str().expect("of");
    assert!(of.contains(&format!("worker=0 pid={worker}")), "{stray}");
    let deadline = stray["deadline_secs"].as_f64().expect("deadline_secs");
    assert!(deadline > 0.0 && deadline <= 3.0, "{stray}");
    let (code, text, _) = client(&["status", "-p", &pid_file], secs(10));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("STRAY") && text.contains(&format!("{sleeper}")),
        "{text}"
    );
    // Still waiting for it, the master has not exited.
    assert!(is_running(sleeper));
    assert!(master.wait_exit(secs(30)).success());
    assert!(!is_running(sleeper), "the stray outlived its master");
    let log = master.log();
    assert!(log.contains(in_source("event=stray-kill")), "{log}");
}

/// What docs/SIGNALS.md says a SIGKILLed master leaves: its workers die
/// (parent-death signal), what they started does not, and keeps serving on
/// the port until the service manager or the container ends it.
#[test]
fn a_sigkilled_master_leaves_what_its_workers_started() {
    let dir = TempDir::new();
    let (mut master, addr, tree) = start_wrapped(&dir, 1, false);
    let worker = master.children()[0];
    let app: Vec<i32> = tree.iter().copied().filter(|p| *p != worker).collect();
    master.guard().watch_group(worker);
    master.signal(Signal::SIGKILL);
    master.wait_exit(secs(20));
    wait_for("the worker to die with its master", secs(20), || {
        (!is_running(worker)).then_some(())
    });
    assert!(app.iter().all(|p| is_running(*p)), "{app:?}");
    let answer = wait_serving(&Target::Tcp(addr));
    assert!(app.contains(&answer["pid"].parse().expect("pid")));
    assert!(TcpListener::bind(addr).is_err(), "the port is still held");
}

/// A helper a worker double-forks inside its own process group belongs to
/// that worker: re-parented to the master, it is left alone while its worker
/// lives, and stopped with it.
#[test]
fn an_orphan_in_a_live_workers_group_is_left_alone() {
    let dir = TempDir::new();
    let mut master = Fixture::new(&dir)
        .workers(2)
        .tcp()
        .pid_file(dir.join("app.pid"))
        .command(&["/bin/sh", "-c", "(sleep 600 &); exec \"$0\"", demo()])
        .start();
    master.wait_ready();
    // Each worker's helper, handed to the master when its subshell exited.
    let helpers = |m: &Master| -> Vec<(i32, i32)> {
        m.children()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .filter_map(|p| proc_stat(p).map(|(_, _, pgid)| (p, pgid)))
            .collect()
    };
    let found = master.wait_for("both helpers re-parented to the master", secs(20), |m| {
        let found = helpers(m);
        (found.len() == 2).then_some(found)
    });
    for &(helper, _) in &found {
        master.guard().watch_pid(helper);
    }
    let (doomed, doomed_worker) = found[0];
    let (kept, kept_worker) = found[1];
    nix::sys::signal::kill(Pid::from_raw(doomed_worker), Signal::SIGKILL).expect("kill worker");
    wait_gone(
        &master,
        &[doomed],
        "the killed worker's helper to be stopped",
    );
    assert!(is_running(kept), "the helper of a live worker was stopped");
    assert!(is_running(kept_worker));
    let tree = descendants_of(master.pid());
    let addr = listen_addr(&master.log(), 0);
    stop_and_check_port(&dir, addr, &tree);
}

/// A quick stop (`TERM`) during a graceful one hurries the strays too:
/// `SIGINT` now and SIGKILL 5 s later, instead of the graceful timeout.
#[test]
fn a_quick_stop_hurries_the_strays() {
    let dir = TempDir::new();
    let mut master = start_with_a_stubborn_child(&dir, "120s");
    master.wait_ready();
    let tree = master.wait_for("the worker's child", secs(20), |m| {
        let tree = descendants_of(m.pid());
        (tree.len() == 2).then_some(tree)
    });
    for &pid in &tree {
        master.guard().watch_pid(pid);
    }
    master.signal(Signal::SIGQUIT);
    let pid_file = pid_file(&dir);
    master.wait_for("a stray in status --json", secs(20), |_| {
        let (code, out, _) = client(&["status", "-p", &pid_file, "--json"], secs(10));
        let status: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        (!status["strays"].as_array()?.is_empty()).then_some(())
    });
    master.signal(Signal::SIGTERM);
    // A shell's background job ignores SIGINT too: the SIGKILL 5 s after it
    // ends the stray, well within the 120 s graceful timeout.
    assert!(master.wait_exit(secs(20)).success());
    assert!(tree.iter().all(|p| !is_running(*p)), "{tree:?}");
    let log = master.log();
    let quick = log
        .find("event=stop mode=quick")
        .expect("quick stop logged");
    assert!(
        log[quick..].contains(in_source("event=stray-kill")),
        "{log}"
    );
}
