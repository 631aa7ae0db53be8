//! The client commands (`status`, `stop`, `upgrade`, `reload`,
//! `reopen-logs`) and their exit codes: 0 done, 1 failed, 2 usage, 3 no
//! master running, 4 timed out.

use crate::support::*;
use serde_json::Value;
use std::process::{Command, Stdio};

/// Every client command with `-p`/`-c` left for the caller to add.
const COMMANDS: [&[&str]; 6] = [
    &["status"],
    &["stop", "--wait"],
    &["stop", "--quick", "--wait"],
    &["reload", "--wait"],
    &["upgrade", "--wait"],
    &["reopen-logs"],
];

/// Runs `command` with `locate` appended; (code, stdout, stderr).
fn run_client(command: &[&str], locate: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = command.iter().chain(locate).copied().collect();
    client(&args, secs(30))
}

#[test]
fn status_shows_the_master_and_each_worker() {
    let app = App::new(2, "");
    let master = app.start();
    let pid = master.pid();
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(
        out.starts_with(&format!("master: pid={pid} generation=1 uptime=")),
        "{out}"
    );
    assert!(out.contains(" phase=running workers=2/2 ready\n"), "{out}");
    let workers = master.children();
    assert_eq!(workers.len(), 2);
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("SLOT"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for worker in &workers {
        let row = rows
            .iter()
            .find(|r| r.split_whitespace().nth(1) == Some(&worker.to_string()))
            .unwrap_or_else(|| panic!("no row for worker {worker}:\n{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(cells[0] == "0" || cells[0] == "1", "{row}");
        assert_eq!(cells[2], "ready", "{row}");
        assert_eq!(cells[3], "1", "{row}");
        assert_eq!(cells[12], "0", "{row}");
        assert_eq!(cells[13], "-", "{row}");
    }
}

#[test]
fn status_json_tells_restarts_and_the_last_exit() {
    let app = App::new(2, "");
    let master = app.start();
    let (code, out, err) = client(&["status", "-c", app.cfg(), "--json"], secs(10));
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["pid"], master.pid());
    assert_eq!(status["generation"], 1);
    assert_eq!(status["phase"], "running");
    assert_eq!(status["target"], 2);
    assert_eq!(status["ready"], 2);
    assert_eq!(status["old_master"], Value::Null);
    assert_eq!(status["upgrade"]["state"], "none");
    assert_eq!(status["reload"]["state"], "none");
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let mut children = master.children();
    children.sort_unstable();
    let mut pids: Vec<i32> = workers
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, children);
    for (slot, w) in workers.iter().enumerate() {
        assert_eq!(w["slot"], slot);
        assert_eq!(w["state"], "ready");
        assert_eq!(w["generation"], 1);
        assert_eq!(w["restarts"], 0);
        assert_eq!(w["last_exit"], Value::Null);
    }

    // One worker aborts; its slot gets a new worker and keeps the record.
    let crashed = get(&app.target, "/crash");
    assert!(crashed.is_err(), "{crashed:?}");
    let status = app.wait_status("the crashed slot to be filled again", secs(30), |s| {
        s["ready"] == 2
            && s["workers"].as_array().unwrap().len() == 2
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["restarts"] == 1)
    });
    let workers = status["workers"].as_array().unwrap();
    let (restarted, other): (Vec<&Value>, Vec<&Value>) =
        workers.iter().partition(|w| w["restarts"] == 1);
    assert_eq!(restarted.len(), 1, "{status:#}");
    let restarted = restarted[0];
    let slot = restarted["slot"].as_u64().unwrap() as usize;
    assert!(
        !pids.contains(&(restarted["pid"].as_i64().unwrap() as i32)),
        "{status:#}"
    );
    let last_exit = restarted["last_exit"].as_str().expect("last_exit");
    assert!(last_exit.contains("SIGABRT"), "{last_exit}");
    assert_eq!(other[0]["restarts"], 0);
    assert_eq!(other[0]["last_exit"], Value::Null);
    // The other worker was left alone.
    assert!(pids.contains(&(other[0]["pid"].as_i64().unwrap() as i32)));
    let log = master.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("worker={slot} pid="))
                && l.contains("event=exit signal=SIGABRT")),
        "{log}"
    );
}

/// The `SigPnd:`/`ShdPnd:` lines of `pid` that show a signal pending (for
/// a thread, or the whole process); none if nothing was sent to it.
fn pending_signals(pid: i32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|mask| !mask.trim_start_matches('0').is_empty())
        })
        .map(String::from)
        .collect()
}

#[test]
fn no_master_running_is_exit_3() {
    let dir = TempDir::new();
    let missing = dir.join("missing.pid");
    for command in COMMANDS {
        let (code, out, err) = run_client(command, &["-p", missing.to_str().unwrap()]);
        assert_eq!(code, 3, "{command:?}: {out}{err}");
        assert_eq!(
            err,
            format!(
                "forkmaster: not running: no pid file at {}\n",
                missing.display()
            ),
            "{command:?}"
        );
        assert!(out.is_empty());
    }

    // pid_max is at most 2^22: this pid cannot exist.
    let stale = dir.join("stale.pid");
    std::fs::write(&stale, "4194305\n").unwrap();
    for command in COMMANDS {
        let (code, out, err) = run_client(command, &["-p", stale.to_str().unwrap()]);
        assert_eq!(code, 3, "{command:?}: {out}{err}");
        assert!(
            err.contains(&format!(
                "not running: stale pid file {} (pid 4194305 is gone)",
                stale.display()
            )),
            "{command:?}: {err}"
        );
    }
}

#[test]
fn a_pid_file_naming_another_process_is_exit_3_and_nothing_is_signalled() {
    let dir = TempDir::new();
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id() as i32;
    let pid_file = dir.join("other.pid");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    // Each of these would end `sleep` (QUIT, TERM, HUP, USR1, USR2 all do).
    for command in COMMANDS {
        let (code, out, err) = run_client(command, &["-p", pid_file.to_str().unwrap()]);
        assert_eq!(code, 3, "{command:?}: {out}{err}");
        assert!(
            err.contains(&format!(
                "not running: pid {pid} from {} is not a forkmaster master",
                pid_file.display()
            )),
            "{command:?}: {err}"
        );
    }
    // A signal sent would show as a death or a pending signal by now (the
    // clients have exited, so their kill(2) calls have returned).
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep was signalled");
    assert!(is_running(pid));
    assert_eq!(pending_signals(pid), Vec::<String>::new());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn finding_no_pid_file_name_is_a_usage_error() {
    let dir = TempDir::new();
    let config = dir.join("nopid.yml");
    std::fs::write(
        &config,
        format!(
            "listen: ['{}']\ncommand: ['{}']\n",
            dir.unix("app.sock"),
            demo()
        ),
    )
    .unwrap();
    for command in COMMANDS {
        let (code, out, err) = run_client(command, &["-c", config.to_str().unwrap()]);
        assert_eq!(code, 2, "{command:?}: {out}{err}");
        assert_eq!(
            err,
            format!(
                "forkmaster: config {}: no `pid:` key, so the master cannot be found\n",
                config.display()
            ),
            "{command:?}"
        );
        let (code, out, err) = run_client(command, &[]);
        assert_eq!(code, 2, "{command:?}: {out}{err}");
        assert_eq!(
            err, "forkmaster: which master? give -p PIDFILE or -c CONFIG\n",
            "{command:?}"
        );
    }
}

#[test]
fn stop_wait_returns_once_the_master_is_gone() {
    let app = App::new(2, "");
    let mut master = app.start();
    let pid = master.pid();
    let (code, out, err) = client(&["stop", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{err}\n{}", master.log());
    assert!(out.starts_with(&format!("stopped: pid {pid} in ")), "{out}");
    // Gone: at most a zombie waiting for us, its parent.
    assert!(!is_running(pid));
    assert!(master.wait_exit(secs(10)).success());
    assert_no_file(&app.pid_file);
    assert_no_file(&app.socket());
    let log = master.log();
    assert!(
        log.contains("event=stop mode=graceful signal=QUIT"),
        "{log}"
    );
    assert!(log.contains("event=exit status=0"), "{log}");
}

#[test]
fn stop_quick_wait_returns_once_the_master_is_gone() {
    let app = App::new(2, "");
    let mut master = app.start();
    let pid = master.pid();
    let (code, out, err) = client(&["stop", "--quick", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{err}\n{}", master.log());
    assert!(out.starts_with(&format!("stopped: pid {pid} in ")), "{out}");
    assert!(!is_running(pid));
    assert!(master.wait_exit(secs(10)).success());
    assert_no_file(&app.pid_file);
    let log = master.log();
    assert!(log.contains("event=stop mode=quick signal=TERM"), "{log}");
}

#[test]
fn stop_wait_times_out_while_a_worker_ignores_its_stop_signal() {
    // The demo only logs USR1: the workers outlive the 1s we wait.
    let app = App::new(1, "stop_signal: USR1\ngraceful_timeout: 30s\n");
    let master = app.start();
    let pid = master.pid();
    let (code, out, err) = client(
        &["stop", "-c", app.cfg(), "--wait", "--timeout", "1s"],
        secs(30),
    );
    assert_eq!(code, 4, "{out}{err}");
    assert_eq!(
        err,
        format!("forkmaster: timed out after 1s: pid {pid} still runs\n")
    );
    assert!(is_running(pid));
    master.wait_log("event=usr1", secs(10));
    let status = app.status();
    assert_eq!(status["phase"], "stopping");
    assert_eq!(status["workers"][0]["state"], "stopping");
}

#[test]
fn upgrade_wait_times_out_while_the_new_workers_boot() {
    let app = App::new(2, "");
    let master = app.start();
    let old = master.pid();
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "5s")]));
    let (code, out, err) = client(
        &["upgrade", "-c", app.cfg(), "--wait", "--timeout", "1s"],
        secs(30),
    );
    assert_eq!(code, 4, "{out}{err}");
    let new = read_pid(&app.pid_file).expect("pid file");
    assert_ne!(new, old);
    // What it says depends on whether the new master was up when time ran out.
    let booting = format!(
        "forkmaster: timed out after 1s: new master pid {new} has 0/2 workers ready; \
         old master pid {old} still runs\n"
    );
    let starting =
        format!("forkmaster: timed out after 1s: waiting for the new master; pid {old} serves\n");
    assert!(err == booting || err == starting, "{err}");
    // Nothing was undone: the upgrade goes on.
    let status = app.status();
    assert_eq!(status["pid"], new);
    assert_eq!(status["old_master"], old);
    assert!(is_running(old));
    assert_eq!(wait_serving(&app.target)["generation"], "1");
    // The new master is not our child: the guard finds it by the pid file.
    assert_eq!(master.pid_file.as_ref(), Some(&app.pid_file));
}

#[test]
fn reopen_logs_sends_usr1_to_the_master_and_on_to_each_worker() {
    let app = App::new(2, "reopen_signal: USR1\n");
    let master = app.start();
    let pid = master.pid();
    let (code, out, err) = client(&["reopen-logs", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("sent USR1 to pid {pid}\n"));
    master.wait_log("event=reopen-logs workers=2", secs(10));
    master.wait_log_count("event=usr1", 2, secs(10));
    let log = master.log();
    for worker in master.children() {
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("demo pid={worker} ")) && l.ends_with("event=usr1")),
            "{log}"
        );
    }
    // Still serving, nothing restarted.
    let status = app.status();
    assert_eq!(status["ready"], 2);
    assert!(status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["restarts"] == 0));
}

/// Whether a thread of `pid` is blocked in accept4(2) (per /proc).
fn blocked_in_accept(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_accept4.to_string()))
    })
}

#[test]
fn stop_wait_is_not_held_up_by_a_worker_blocked_in_accept() {
    let app = App::new(4, "graceful_timeout: 30s\n");
    let master = app.start();
    // Requests until one worker's accept thread lost a race for a connection
    // and sits in accept(2) (each request wakes every worker).
    let blocked = master.wait_for("a worker blocked in accept(2)", secs(20), |_| {
        get(&app.target, "/").expect("GET /");
        master
            .children()
            .into_iter()
            .find(|w| blocked_in_accept(*w))
    });
    let (code, out, err) = client(
        &["stop", "-c", app.cfg(), "--wait", "--timeout", "5s"],
        secs(30),
    );
    assert_eq!(
        code,
        0,
        "worker {blocked} blocked in accept(2): {out}{err}\n{}",
        master.log()
    );
}
