//! USR2 upgrades that fail, and upgrades disturbed halfway. Whatever breaks,
//! `forkmaster upgrade --wait` says so (exit 1, the cause on stderr), the old
//! master takes back its pid file and its workers, and no request fails.
//! Tests marked `#[ignore = "bug: ..."]` show where forkmaster falls short.

use crate::support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

/// What a load running through a failing upgrade may see.
#[derive(Clone, Copy)]
enum During {
    /// The new workers never accept: every answer comes from generation 1.
    OldGenerationOnly,
    /// The new workers accept connections without ever saying READY=1, and
    /// the ready timeout SIGKILLs them (documented in docs/SIGNALS.md): the
    /// connections they had accepted are lost. Generation 1 must answer
    /// throughout, and nothing may fail once the upgrade has failed.
    NewWorkersKilledUnready,
}

/// Runs `forkmaster upgrade LOCATE --wait` under a small load and asserts it
/// failed and the old master is back in charge with `workers` workers.
/// Returns the client's stderr.
fn upgrade_fails(
    app: &App,
    master: &mut Master,
    locate: &[&str],
    workers: usize,
    during: During,
) -> String {
    let old = master.pid();
    let load = Load::start(&app.target, 2);
    load.wait_answers(5);
    let before = load.generations().get("1").copied().unwrap_or(0);
    let mut args = vec!["upgrade"];
    args.extend_from_slice(locate);
    args.push("--wait");
    let (code, out, err) = client(&args, secs(60));
    assert_eq!(
        code,
        1,
        "the upgrade should fail: {out}{err}\nlog:\n{}",
        master.log()
    );
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("forkmaster: upgrade failed: "), "{err}");
    assert!(err.contains(&format!("; pid {old} keeps serving")), "{err}");
    assert_old_master_restored(app, master, workers);
    load.wait_answers(5);
    match during {
        During::OldGenerationOnly => {
            let generations = load.finish_without_failures();
            assert_eq!(
                generations.keys().collect::<Vec<_>>(),
                ["1"],
                "answers by generation: {generations:?}"
            );
        }
        During::NewWorkersKilledUnready => {
            let after = load.generations().get("1").copied().unwrap_or(0);
            assert!(after > before, "generation 1 stopped answering");
            let (_, errors) = load.finish();
            for e in &errors {
                assert!(
                    ["reset by peer", "no complete response", "Broken pipe"]
                        .iter()
                        .any(|dropped| e.contains(dropped)),
                    "not a dropped connection: {errors:?}"
                );
            }
            // Once the upgrade has failed, only the old generation serves.
            let load = Load::start(&app.target, 2);
            load.wait_answers(50);
            let generations = load.finish_without_failures();
            assert_eq!(generations.keys().collect::<Vec<_>>(), ["1"]);
        }
    }
    assert_eq!(app.token_served(), "boot-0");
    let log = master.log();
    assert!(
        log.contains(&format!("forkmaster[{old}] upgrade failed: ")),
        "{log}"
    );
    err
}

/// The old master owns the pid file again, no `.oldbin` is left, its
/// `workers` workers (its only children) are all ready, from generation 1.
fn assert_old_master_restored(app: &App, master: &mut Master, workers: usize) -> Value {
    let old = master.pid();
    // The master puts the pid file back before it records the failure.
    assert_eq!(read_pid(&app.pid_file), Some(old), "the pid file");
    assert_no_file(&app.oldbin());
    let status = app.wait_status(
        &format!("{workers} ready workers of the old master"),
        secs(30),
        |s| {
            s["ready"] == workers
                && s["target"] == workers
                && s["workers"].as_array().unwrap().len() == workers
        },
    );
    assert_eq!(status["pid"], old);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["upgrade"]["state"], "failed", "{status:#}");
    assert_eq!(status["upgrade"]["new_master"], Value::Null, "{status:#}");
    for w in status["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "ready", "{status:#}");
        assert_eq!(w["generation"], 1, "{status:#}");
    }
    let mut pids: Vec<i32> = App::worker_pids(&status)
        .iter()
        .map(|(_, pid)| *pid as i32)
        .collect();
    pids.sort_unstable();
    // No new master lingers: the workers are all the old master has.
    master.wait_for(
        "the old master's children to be its workers",
        secs(20),
        |_| (master.children() == pids).then_some(()),
    );
    status
}

/// `<dir>/bin/forkmaster`, a symlink to the real binary.
fn forkmaster_link(app: &App) -> PathBuf {
    let bin = app.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("forkmaster");
    std::os::unix::fs::symlink(forkmaster(), &link).unwrap();
    link
}

#[test]
fn a_missing_binary_fails_the_exec() {
    let app = App::new(2, "");
    let link = forkmaster_link(&app);
    let mut master = app.start_program(&link);
    std::fs::remove_file(&link).unwrap();
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        2,
        During::OldGenerationOnly,
    );
    assert!(
        err.contains(&format!(
            "exec {}: No such file or directory",
            link.display()
        )),
        "{err}"
    );
}

#[test]
fn a_binary_that_is_not_executable_fails_the_exec() {
    let app = App::new(2, "");
    let link = forkmaster_link(&app);
    let mut master = app.start_program(&link);
    let plain = app.dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&plain, &link).unwrap();
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        2,
        During::OldGenerationOnly,
    );
    assert!(
        err.contains(&format!("exec {}: Permission denied", link.display())),
        "{err}"
    );
}

#[test]
fn an_exec_failure_is_named_even_if_the_new_master_is_reaped_in_the_same_pass() {
    // Warnings only: nothing is logged between the fork and the read of
    // exec failures, and the first warning comes after it.
    let app = App::new(1, "log_level: warn\n");
    let link = forkmaster_link(&app);
    let mut master = app
        .fixture()
        .program(&link)
        .setup(|cmd| {
            cmd.stderr(Stdio::piped());
        })
        .start();
    let stderr = master.child.stderr.take().expect("stderr pipe");
    app.wait_status("the worker to be ready", secs(20), |s| s["ready"] == 1);
    std::fs::remove_file(&link).unwrap();
    // In the pass that handles USR2, the master reads exec failures (none
    // yet), then a datagram that it logs as not from a worker, then reaps.
    // Its stderr is full, so it waits in that log line while the child's
    // exec fails, and reaps the child only after that.
    master.signal(Signal::SIGSTOP);
    let addr = crate::support::master_socket(master.pid(), "notify");
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"STATUS=busy\n", &addr)
        .unwrap();
    let mut fill = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{}/fd/2", master.pid()))
        .unwrap();
    for chunk in [4096, 1] {
        while fill.write(&vec![b'.'; chunk]).is_ok() {}
    }
    drop(fill);
    master.signal(Signal::SIGUSR2);
    master.signal(Signal::SIGCONT);
    let old = master.pid();
    wait_for("the new master to exit", secs(20), || {
        zombie_children_of(old).first().copied()
    });
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let line = wait_for("the upgrade to fail", secs(20), || {
        let log = log.lock().unwrap();
        log.lines()
            .find(|l| l.contains("event=upgrade-failed"))
            .map(String::from)
    });
    assert!(
        line.contains(&format!(
            "upgrade failed: exec {}: No such file or directory",
            link.display()
        )),
        "{line}"
    );
}

/// Children of `pid` that exited and wait to be reaped.
#[test]
fn an_invalid_config_stops_the_new_master_at_boot() {
    let app = App::new(2, "");
    let mut master = app.start();
    app.write_config(2, "no_such_key: 1\n");
    let pid_file = app.pid_file.to_str().unwrap();
    // `-c` needs a config it can read: refused, and nothing is signalled.
    let (code, _, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(30));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `no_such_key`"), "{err}");
    assert_eq!(app.status()["upgrade"]["attempts"], 0);
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-p", pid_file],
        2,
        During::OldGenerationOnly,
    );
    assert!(err.contains("unknown field `no_such_key`"), "{err}");
    // The new master shares the old one's stderr: the log says why.
    let log = master.log();
    assert!(
        log.contains("forkmaster: config ") && log.contains("unknown field `no_such_key`"),
        "{log}"
    );
}

#[test]
fn upgrade_wait_names_an_invalid_config() {
    let app = App::new(1, "");
    let mut master = app.start();
    app.write_config(1, "no_such_key: 1\n");
    let pid_file = app.pid_file.to_str().unwrap();
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-p", pid_file],
        1,
        During::OldGenerationOnly,
    );
    assert!(err.contains("unknown field `no_such_key`"), "{err}");
}

#[test]
fn a_busy_port_stops_the_new_master_at_boot() {
    let app = App::new(2, "");
    let mut master = app.start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    app.write_config(
        2,
        &format!(
            "listen: ['unix:{}', '127.0.0.1:{port}']\n",
            app.socket().display()
        ),
    );
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        2,
        During::OldGenerationOnly,
    );
    assert!(err.contains("address already in use"), "{err}");
    let log = master.log();
    assert!(
        log.contains(&format!("listen 127.0.0.1:{port}: address already in use")),
        "{log}"
    );
    // The socket file the old master serves on is still there, and served.
    assert!(app.socket().exists());
    drop(busy);
}

#[test]
fn upgrade_wait_names_a_busy_port() {
    let app = App::new(1, "");
    let mut master = app.start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    app.write_config(
        1,
        &format!(
            "listen: ['unix:{}', '127.0.0.1:{port}']\n",
            app.socket().display()
        ),
    );
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        1,
        During::OldGenerationOnly,
    );
    assert!(err.contains("address already in use"), "{err}");
    drop(busy);
}

#[test]
fn new_workers_that_never_become_ready_fail_after_the_ready_timeout() {
    let app = App::new(2, "");
    let mut master = app.start();
    app.write_config(
        2,
        &format!(
            "ready_timeout: 1s\n{}",
            app.env_line(&[("DEMO_NO_READY", "1")])
        ),
    );
    // The new workers serve while never saying READY=1, until killed.
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        2,
        During::NewWorkersKilledUnready,
    );
    assert!(err.contains("not ready within 1s"), "{err}");
    assert!(master.log().contains("event=ready-timeout after=1s"));
}

#[test]
fn new_workers_that_crash_at_boot_fail_the_upgrade() {
    let app = App::new(2, "");
    let mut master = app.start();
    app.write_config(2, "command: ['/bin/false']\n");
    let err = upgrade_fails(
        &app,
        &mut master,
        &["-c", app.cfg()],
        2,
        During::OldGenerationOnly,
    );
    assert!(err.contains("exited with status 1 before ready"), "{err}");
    let log = master.log();
    assert!(log.contains("event=startup-failed attempts=3"), "{log}");
}

/// A config in which the new generation's last worker (`slot`) exits at
/// boot, after `delay`, while the others boot and become ready.
fn last_worker_fails(app: &App, workers: usize, slot: usize, delay: &str) {
    let slot = slot.to_string();
    app.write_config(
        workers,
        &app.env_line(&[
            ("DEMO_BOOT_DELAY", delay),
            ("DEMO_FAIL_WORKER", &slot),
            ("DEMO_FAIL_BOOT", "1"),
        ]),
    );
}

#[test]
fn a_failure_after_gradual_retirement_restores_every_old_worker() {
    let app = App::new(3, "");
    let mut master = app.start();
    let old = master.pid();
    last_worker_fails(&app, 3, 2, "300ms");
    // No load here: see a_failed_upgrade_lets_ready_new_workers_finish_their_requests.
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", master.log());
    assert!(
        err.contains("upgrade failed: new master pid=")
            && err.contains(": worker=2 exited with status 1 before ready; last stderr: ")
            && err.contains("error=DEMO_FAIL_BOOT\"; pid "),
        "{err}"
    );
    assert_old_master_restored(&app, &mut master, 3);
    let log = master.log();
    // Ready new workers retired old ones (one each; see
    // gradual_retirement_retires_one_old_worker_per_ready_new_worker)...
    assert!(
        log.lines().any(
            |l| l.contains(&format!("forkmaster[{old}] event=scale reason=retire"))
                && l.contains("workers=2 previous=3")
        ),
        "{log}"
    );
    // ...and the failure brought them all back.
    assert!(
        log.contains(&format!(
            "forkmaster[{old}] event=rollback workers=3 pid={old}"
        )),
        "{log}"
    );
    assert_eq!(wait_serving(&app.target)["generation"], "1");
}

/// Lines of `master`'s log (the file all generations share) from `pid`'s
/// master that hold every one of `needles`.
fn count_lines(log: &str, pid: i32, needles: &[&str]) -> usize {
    let tag = format!("forkmaster[{pid}] ");
    log.lines()
        .filter(|l| l.contains(&tag) && needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn a_failed_upgrade_lets_ready_new_workers_finish_their_requests() {
    let app = App::new(3, "");
    let mut master = app.start();
    // New workers 0 and 1 are ready after 1s; worker 2 fails at 1s, 2.1s
    // and 2.3s: the new master gives up about 3.3s after it started.
    last_worker_fails(&app, 3, 2, "1s");
    let new = begin_upgrade(&app, &mut master);
    let ready = master.try_wait_for(secs(20), |m| {
        (count_lines(&m.log(), new, &["event=ready boot_ms="]) == 2).then_some(())
    });
    assert!(ready.is_some(), "new workers not ready:\n{}", master.log());
    // Slow requests: the two new workers accept among at most five
    // processes, so some of the twelve are theirs.
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let target = app.target.clone();
            std::thread::spawn(move || get(&target, "/sleep?ms=4000"))
        })
        .collect();
    let answers: Vec<_> = requests.into_iter().map(|t| t.join().unwrap()).collect();
    let log = master.wait_log("event=upgrade-failed", secs(20));
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 12 requests cut off: {failed:?}\nlog:\n{log}",
        failed.len()
    );
}

/// Pins `pid` to one CPU (the first one we may use); with `idle`, also
/// gives it the SCHED_IDLE policy, so that it never preempts a normal
/// process on that CPU.
fn pin_to_one_cpu(pid: i32, idle: bool) {
    // SAFETY: cpu_set_t is plain data; all-zero bytes are an empty set.
    let mut ours: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `ours` is a writable cpu_set_t of `size` bytes.
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut ours) }, 0);
    // SAFETY: CPU_ISSET only reads the set.
    let cpu = (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &ours) })
        .expect("a CPU we may use");
    // SAFETY: as above; CPU_SET writes within the set.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: `one` is a valid cpu_set_t of `size` bytes, only read.
    assert_eq!(unsafe { libc::sched_setaffinity(pid, size, &one) }, 0);
    if idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param, only read.
        let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
}

#[test]
fn gradual_retirement_retires_one_old_worker_per_ready_new_worker() {
    let app = App::new(6, "");
    let mut master = app.start();
    let old = master.pid();
    app.set_token("new");
    // As `last_worker_fails`, with the workers' stderr straight into a
    // file: the new master, which copies its workers' stderr, is stopped
    // while the test reads it.
    let lines = app.dir.join("workers.log");
    let env = app.env_line(&[
        ("DEMO_BOOT_DELAY", "1s"),
        ("DEMO_FAIL_WORKER", "5"),
        ("DEMO_FAIL_BOOT", "1"),
    ]);
    let command = format!(
        "command: ['/bin/sh', '-c', 'exec \"$0\" 2>>{}', '{}']\n",
        lines.display(),
        demo()
    );
    app.write_config(6, &format!("{env}{command}"));
    let new = begin_upgrade(&app, &mut master);
    master.wait_log_count(&format!("forkmaster[{new}] worker="), 6, secs(10));
    // What a busy machine does now and then, made certain: the new master
    // reads five READY=1 in one pass (it was not scheduled while they came)
    // and the old master does not run until that pass is over.
    send_signal(new, Signal::SIGSTOP);
    pin_to_one_cpu(new, false);
    pin_to_one_cpu(old, true);
    let ready = master.try_wait_for(secs(20), |_| {
        (file_text(&lines).matches("token=new notified=true").count() == 5).then_some(())
    });
    send_signal(new, Signal::SIGCONT);
    assert!(ready.is_some(), "new workers not ready:\n{}", master.log());
    let log = master.wait_log(&format!("forkmaster[{old}] event=rollback"), secs(30));
    assert_eq!(
        count_lines(&log, new, &["event=ready boot_ms="]),
        5,
        "{log}"
    );
    let steps = count_lines(&log, old, &["event=scale reason=retire"]);
    assert!(
        log.lines().any(
            |l| l.contains(&format!("forkmaster[{old}] event=scale reason=retire"))
                && l.contains("ready=5 workers=1")
        ),
        "5 new workers were ready but the old master stepped down {steps} time(s):\n{log}"
    );
}

/// Sends USR2 and waits until the pid file names the new master.
fn begin_upgrade(app: &App, master: &mut Master) -> i32 {
    let old = master.pid();
    master.signal(Signal::SIGUSR2);
    let new = master.wait_for("the pid file to name a new master", secs(20), |_| {
        read_pid(&app.pid_file).filter(|pid| *pid != old)
    });
    assert_eq!(read_pid(&app.oldbin()), Some(old));
    new
}

/// The master of the pid file: its status once all its workers are ready.
fn wait_all_ready(app: &App, pid: i32, workers: usize) -> Value {
    app.wait_status(
        &format!("master {pid} to have {workers} ready workers"),
        secs(30),
        |s| s["pid"] == pid && s["ready"] == workers && s["target"] == workers,
    )
}

#[test]
fn the_new_master_carries_on_when_the_old_one_is_killed() {
    let app = App::new(2, "");
    let mut master = app.start();
    app.set_token("new");
    // The new workers boot for 2s: the old master is killed before any is ready.
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "2s")]));
    let new = begin_upgrade(&app, &mut master);
    master.signal(Signal::SIGKILL);
    master.wait_exit(secs(10));
    let status = wait_all_ready(&app, new, 2);
    assert_eq!(status["generation"], 2);
    assert_eq!(status["old_master"], Value::Null);
    assert_eq!(read_pid(&app.pid_file), Some(new));
    assert_no_file(&app.oldbin());
    let answer = wait_serving(&app.target);
    assert_eq!(answer["generation"], "2");
    assert_eq!(answer["token"], "new");
    let log = master.log();
    assert!(
        log.contains(&format!(
            "forkmaster[{new}] event=upgrade-done old_master={}",
            master.pid()
        )),
        "{log}"
    );
}

#[test]
fn the_old_master_takes_over_again_when_the_new_one_is_killed() {
    let app = App::new(2, "");
    let mut master = app.start();
    let old = master.pid();
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "1s")]));
    let load = Load::start(&app.target, 2);
    load.wait_answers(5);
    let new = begin_upgrade(&app, &mut master);
    send_signal(new, Signal::SIGKILL);
    master.wait_for("the pid file to name the old master", secs(20), |_| {
        (read_pid(&app.pid_file) == Some(old)).then_some(())
    });
    let status = assert_old_master_restored(&app, &mut master, 2);
    assert_eq!(
        status["upgrade"]["reason"],
        format!("new master pid={new} killed by SIGKILL before taking over")
    );
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upgrade: failed"), "{out}");
    load.wait_answers(5);
    let generations = load.finish_without_failures();
    assert_eq!(generations.keys().collect::<Vec<_>>(), ["1"]);
}

#[test]
fn a_second_usr2_during_an_upgrade_is_refused() {
    let app = App::new(2, "");
    let mut master = app.start();
    let old = master.pid();
    // The new workers boot for 2s: the upgrade is still in progress then.
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "2s")]));
    master.signal(Signal::SIGUSR2);
    let log = master.wait_log("event=upgrade-start role=old", secs(10));
    let new = log
        .split("event=upgrade-start role=old new_master=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse::<i32>().ok())
        .expect("new master pid in the log");
    master.signal(Signal::SIGUSR2);
    master.wait_log(
        &format!(
            "forkmaster[{old}] event=upgrade-refused reason=\"an upgrade is in progress: new master pid={new}\""
        ),
        secs(10),
    );
    // The first upgrade goes on and completes.
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    let status = wait_all_ready(&app, new, 2);
    assert_eq!(status["generation"], 2);
    assert_no_file(&app.oldbin());
    let log = master.log();
    assert_eq!(
        log.matches("event=upgrade-start role=old").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("event=upgrade-start role=new").count(),
        1,
        "{log}"
    );
    assert_eq!(wait_serving(&app.target)["generation"], "2");
}

#[test]
fn usr2_to_the_new_master_is_refused_while_the_old_one_runs() {
    let app = App::new(2, "retire: manual\n");
    let master = app.start();
    let old = master.pid();
    master.signal(Signal::SIGUSR2);
    master.wait_log("retire=manual action=", secs(30));
    let new = app.master_pid();
    assert_ne!(new, old);
    // The client refuses without signalling...
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(30));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "the previous upgrade is not finished: old master pid {old} still runs"
        )),
        "{err}"
    );
    // ...and the new master refuses a USR2 sent by hand.
    send_signal(new, Signal::SIGUSR2);
    master.wait_log(
        &format!(
            "forkmaster[{new}] event=upgrade-refused reason=\"the old master pid={old} is still running: retire it first\""
        ),
        secs(10),
    );
    let status = app.status();
    assert_eq!(status["pid"], new);
    assert_eq!(status["old_master"], old);
    assert_eq!(status["upgrade"]["attempts"], 0);
    assert_eq!(read_pid(&app.pid_file), Some(new));
    assert_eq!(read_pid(&app.oldbin()), Some(old));
    assert!(is_running(old));
    let log = master.log();
    assert_eq!(
        log.matches("event=upgrade-start role=new").count(),
        1,
        "{log}"
    );
}

#[test]
fn quit_to_the_old_master_during_an_upgrade_hands_over_to_the_new_one() {
    let app = App::new(2, "");
    let mut master = app.start();
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "1s")]));
    let load = Load::start(&app.target, 2);
    load.wait_answers(5);
    let new = begin_upgrade(&app, &mut master);
    master.signal(Signal::SIGQUIT);
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    let status = wait_all_ready(&app, new, 2);
    assert_eq!(status["generation"], 2);
    assert_eq!(read_pid(&app.pid_file), Some(new));
    assert_no_file(&app.oldbin());
    assert!(app.socket().exists());
    wait_for("the new generation to answer", secs(10), || {
        (0..5)
            .all(|_| get(&app.target, "/").is_ok_and(|r| r.fields()["generation"] == "2"))
            .then_some(())
    });
    load.finish_without_failures();
}
