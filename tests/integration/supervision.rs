//! Supervision: what the master does when a worker crashes, exits, cannot
//! boot, never gets ready or stops pinging the watchdog; backoff of a crash
//! loop; the startup failure contract; and what is left when the master dies.

use crate::support::*;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// `forkmaster -w N -l unix:<dir>/app.sock --ready notify -- demo`, to
/// which each test adds its own. Workers run in `dir`, so a core dump from
/// `/crash` lands there.
fn fixture(dir: &TempDir, workers: usize) -> Fixture<'_> {
    Fixture::new(dir)
        .workers(workers)
        .unix("app.sock")
        .arg("--working-directory")
        .arg(dir.path.to_string_lossy())
}

fn app(dir: &TempDir) -> Target {
    Target::unix(dir.join("app.sock"))
}

/// The master's log lines (not the demo's) holding `needle`.
fn master_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(" forkmaster[") && l.contains(needle))
        .collect()
}

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since midnight UTC of a log line's `2026-11-23T17:57:26.123Z`
/// stamp (the master logs wall-clock time, truncated to the millisecond).
fn stamp_ms(line: &str) -> i64 {
    let time = line
        .get(11..23)
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let parts: Vec<f64> = time
        .split(':')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("bad time in {line:?}")))
        .collect();
    ((parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]) * 1000.0).round() as i64
}

/// Milliseconds since midnight UTC now, truncated like the log's stamps.
fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    (since_epoch.as_millis() as i64).rem_euclid(DAY_MS)
}

/// Milliseconds from `from` to `to` (both since midnight), across midnight.
fn ms_since(from: i64, to: i64) -> i64 {
    let d = (to - from).rem_euclid(DAY_MS);
    if d > DAY_MS / 2 {
        d - DAY_MS
    } else {
        d
    }
}

/// `d` as a duration flag value, e.g. `2000ms`.
fn flag(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Pid of the last worker of `slot` that became ready.
fn last_ready(log: &str, slot: usize) -> i32 {
    master_events(log, "ready")
        .iter()
        .rev()
        .find(|e| e["worker"] == slot.to_string())
        .map(event_pid)
        .unwrap_or_else(|| panic!("worker {slot} never ready; log:\n{log}"))
}

#[test]
fn a_crashed_worker_is_logged_by_signal_and_respawned_in_its_slot() {
    let dir = TempDir::new();
    let master = fixture(&dir, 2).start();
    master.wait_ready();
    wait_children(&master, 2);

    let crashed = get(&app(&dir), "/crash");
    assert!(crashed.is_err(), "/crash answered: {crashed:?}");
    let log = master.wait_log("event=respawn delay=", secs(10));
    let exit = &master_events(&log, "exit")[0];
    let (slot, dead) = (exit["worker"].clone(), event_pid(exit));
    assert_eq!(exit["signal"], "SIGABRT", "{log}");
    assert!(
        log.contains(&format!(
            "worker={slot} event=respawn delay=100ms failures=1"
        )),
        "{log}"
    );

    let log = master.wait_log_count("event=ready boot_ms=", 3, secs(20));
    let ready = master_events(&log, "ready");
    let replacement = ready.last().expect("ready");
    assert_eq!(replacement["worker"], slot, "{log}");
    let new = event_pid(replacement);
    assert_ne!(new, dead);
    assert_eq!(proc_environ(new)["FORKMASTER_WORKER"], slot);
    assert!(!is_running(dead));
    // The other worker was left alone.
    let other = ready.iter().find(|e| e["worker"] != slot).expect("other");
    assert!(is_running(event_pid(other)), "{log}");
    wait_children(&master, 2);
    wait_serving(&app(&dir));
}

#[test]
fn a_worker_exit_status_is_logged_and_the_worker_respawned() {
    let dir = TempDir::new();
    let master = fixture(&dir, 1).start();
    let log = master.wait_ready();
    let dead = last_ready(&log, 0);

    let exited = get(&app(&dir), "/exit?code=3");
    assert!(exited.is_err(), "/exit answered: {exited:?}");
    let log = master.wait_log_count("event=ready boot_ms=", 2, secs(20));
    let exit = format!("worker=0 pid={dead} event=exit status=3 reason=\"exited with status 3\"");
    assert!(log.contains(&exit), "no {exit:?} in log:\n{log}");
    assert!(
        log.contains("worker=0 event=respawn delay=100ms failures=1"),
        "{log}"
    );
    let new = last_ready(&log, 0);
    assert_ne!(new, dead);
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["pid"], new.to_string());
    assert_eq!(answer["worker"], "0");
}

#[test]
fn a_crash_loop_backs_off_exponentially() {
    let dir = TempDir::new();
    let master = fixture(&dir, 1).start();
    // Each worker crashes right after it is ready, long before it would count
    // as healthy (plan::HEALTHY_AFTER, 10s): the failures pile up.
    let mut crashed_at = Vec::new();
    for round in 1..=4 {
        let log = master.wait_log_count("event=ready boot_ms=", round, secs(20));
        let pid = last_ready(&log, 0);
        crashed_at.push(now_ms());
        let crashed = get(&app(&dir), "/crash");
        assert!(crashed.is_err(), "/crash answered: {crashed:?}");
        master.wait_log(&format!("pid={pid} event=exit signal=SIGABRT"), secs(10));
    }
    let log = master.wait_log_count("event=ready boot_ms=", 5, secs(20));

    let respawns = master_events(&log, "respawn");
    let delays: Vec<&str> = respawns.iter().map(|e| e["delay"].as_str()).collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms", "800ms"], "{log}");
    let failures: Vec<&str> = respawns.iter().map(|e| e["failures"].as_str()).collect();
    assert_eq!(failures, ["1", "2", "3", "4"], "{log}");

    // Each respawn really waited its delay: the replacement was spawned at
    // least that long after the crash was asked for.
    let spawns = master_lines(&log, "event=spawn");
    assert_eq!(spawns.len(), 5, "{log}");
    for (k, delay) in [100, 200, 400, 800].into_iter().enumerate() {
        let waited = ms_since(crashed_at[k], stamp_ms(spawns[k + 1]));
        assert!(
            waited >= delay,
            "respawn {} came {waited}ms after the crash, delay {delay}ms; log:\n{log}",
            k + 1
        );
    }
}

#[test]
fn a_worker_that_cannot_boot_fails_the_startup_with_one_error_line() {
    let dir = TempDir::new();
    let sock = dir.unix("app.sock");
    let out = run(&["-l", &sock, "--", "/bin/false"], secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("forkmaster:"))
        .collect();
    assert_eq!(
        errors,
        ["forkmaster: startup failed: worker=0 exited with status 1 before ready"],
        "stderr:\n{stderr}"
    );
    assert_eq!(stderr.lines().last(), Some(errors[0]), "stderr:\n{stderr}");
    assert_eq!(
        stderr.matches("event=exit status=1").count(),
        3,
        "three attempts; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("event=startup-failed attempts=3"),
        "{stderr}"
    );
    assert!(!dir.join("app.sock").exists(), "socket left behind");
}

#[test]
fn a_missing_program_fails_the_startup_naming_the_exec_error() {
    let dir = TempDir::new();
    let sock = dir.unix("app.sock");
    let out = run(&["-l", &sock, "--", "./no-such-app"], secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("worker=0 exec ./no-such-app: No such file or directory"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some("forkmaster: startup failed: worker=0 exec ./no-such-app: No such file or directory"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn a_worker_failing_its_boot_fails_the_startup_with_its_status() {
    let dir = TempDir::new();
    let sock = dir.unix("app.sock");
    let out = run(
        &["-l", &sock, "--env", "DEMO_FAIL_BOOT=3", "--", demo()],
        secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "forkmaster: startup failed: worker=0 exited with status 3 before ready; last stderr: "
        ) && last.ends_with("event=boot-failed status=3 error=DEMO_FAIL_BOOT\""),
        "stderr:\n{stderr}"
    );
}

/// A symlink `<dir>/app` to the demo: removing it makes the next exec fail.
fn linked_app(dir: &TempDir) -> String {
    let link = dir.join("app");
    std::os::unix::fs::symlink(demo(), &link).expect("symlink the demo");
    link.to_string_lossy().into_owned()
}

#[test]
fn an_exec_failure_after_startup_is_reported_as_such_and_retried() {
    let dir = TempDir::new();
    let program = linked_app(&dir);
    let mut master = fixture(&dir, 1).command(&[&program]).start();
    let log = master.wait_ready();
    let first = last_ready(&log, 0);

    std::fs::remove_file(&program).expect("remove the app");
    send_signal(first, Signal::SIGKILL);
    let log = master.wait_log("event=exec-failed", secs(10));
    let failed = master_lines(&log, "event=exec-failed")[0];
    let expected = format!("worker=0 exec {program}: No such file or directory pid=");
    assert!(failed.contains(&expected), "{failed}");
    let pid = event_pid(&fields(failed));
    let exit = format!(
        "worker=0 pid={pid} event=exit status=127 reason=\"exec {program}: No such file or directory\""
    );
    let log = master.wait_log(&exit, secs(10));
    assert_not_logged(&log, "exited with status 127");
    assert_master_running(&mut master);

    // The master keeps retrying with backoff; once the app is back, it serves.
    std::os::unix::fs::symlink(demo(), &program).expect("restore the app");
    let log = master.wait_log_count("event=ready boot_ms=", 2, secs(20));
    let back = last_ready(&log, 0);
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["pid"], back.to_string());
}

/// Every exec failure must be reported as one, however many workers fail at
/// once. The master reads the exec-error pipe before it reaps; a child that
/// writes its record and exits in between is reaped first, its exit reported
/// as a plain `exited with status 127`, and its record then dropped because
/// the pid is no longer a worker. Many workers failing at once, and a busy
/// notify socket (as with many workers pinging a watchdog), widen that window.
#[test]
fn exec_failures_of_many_workers_at_once_are_all_reported() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = TempDir::new();
    let program = linked_app(&dir);
    let master = fixture(&dir, 64).command(&[&program]).start();
    master.wait_ready();
    let workers = wait_children(&master, 64);
    let notify = proc_environ(workers[0])["NOTIFY_SOCKET"].clone();

    let done = Arc::new(AtomicBool::new(false));
    let busy = {
        let done = Arc::clone(&done);
        let name = notify.trim_start_matches('@').to_string();
        std::thread::spawn(move || {
            let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("address");
            let client = UnixDatagram::unbound().expect("socket");
            client.set_nonblocking(true).expect("nonblocking");
            while !done.load(Ordering::SeqCst) {
                if client.send_to_addr(b"STATUS=busy\n", &addr).is_err() {
                    std::thread::yield_now();
                }
            }
        })
    };
    std::fs::remove_file(&program).expect("remove the app");
    for pid in workers {
        send_signal(pid, Signal::SIGKILL);
    }
    // Three rounds of failed respawns of all 64 slots (backoff 100, 200, 400ms).
    let log = master.try_wait_for(secs(30), |m| {
        let log = m.log();
        (log.matches("event=exit status=127").count() >= 192).then_some(log)
    });
    done.store(true, Ordering::SeqCst);
    busy.join().expect("busy thread");
    let log = log.unwrap_or_else(|| master.log());
    let exits = master_lines(&log, "event=exit status=127");
    assert!(exits.len() >= 192, "{} exec failures", exits.len());
    let generic: Vec<&&str> = exits
        .iter()
        .filter(|l| !l.contains("reason=\"exec "))
        .collect();
    assert!(
        generic.is_empty(),
        "{} of {} exec failures reported as a plain status: {generic:#?}",
        generic.len(),
        exits.len()
    );
}

#[test]
fn delay_readiness_waits_the_delay() {
    let dir = TempDir::new();
    let master = fixture(&dir, 1).ready("delay:300ms").start();
    let log = master.wait_ready();
    let ready = &master_events(&log, "ready")[0];
    let boot_ms: u64 = ready["boot_ms"].parse().expect("boot_ms");
    assert!(boot_ms >= 300, "ready after {boot_ms}ms; log:\n{log}");
}

#[test]
fn notify_readiness_waits_for_ready_1() {
    let dir = TempDir::new();
    let master = fixture(&dir, 1).env("DEMO_BOOT_DELAY=300ms").start();
    let log = master.wait_ready();
    assert!(log.contains("event=booting delay_ms=300"), "{log}");
    let ready = &master_events(&log, "ready")[0];
    let boot_ms: u64 = ready["boot_ms"].parse().expect("boot_ms");
    assert!(boot_ms >= 300, "ready after {boot_ms}ms; log:\n{log}");
}

#[test]
fn workers_never_ready_at_first_start_fail_the_startup_after_three_attempts() {
    let dir = TempDir::new();
    let started = now_ms();
    let mut master = fixture(&dir, 1)
        .args(&["--ready-timeout", "500ms"])
        .env("DEMO_NO_READY=1")
        .start();
    let status = master.wait_exit(secs(30));
    let log = master.log();
    assert_eq!(status.code(), Some(1), "{status}; log:\n{log}");

    let timeouts = master_events(&log, "ready-timeout");
    assert_eq!(timeouts.len(), 3, "{log}");
    // Each attempt is spawned after the previous one was given up, and gets
    // its full 500ms: each timeout comes at least 500ms after the previous
    // one (the first, 500ms after the master started).
    let mut earliest = started;
    for (timeout, line) in timeouts
        .iter()
        .zip(master_lines(&log, "event=ready-timeout"))
    {
        assert_eq!(timeout["after"], "500ms");
        let waited = ms_since(earliest, stamp_ms(line));
        assert!(waited >= 500, "timed out after {waited}ms; log:\n{log}");
        earliest = stamp_ms(line);
        let pid = event_pid(timeout);
        let exit = format!("pid={pid} event=exit signal=SIGKILL reason=\"not ready within 500ms\"");
        assert!(log.contains(&exit), "no {exit:?} in log:\n{log}");
    }
    assert!(
        log.contains("event=startup-failed attempts=3 reason=\"worker=0 not ready within 500ms\""),
        "{log}"
    );
    assert_eq!(
        log.lines().last(),
        Some("forkmaster: startup failed: worker=0 not ready within 500ms"),
        "{log}"
    );
}

#[test]
fn a_worker_never_ready_while_others_serve_is_killed_and_replaced() {
    let dir = TempDir::new();
    // Slot 1 never says READY=1; slot 0 is healthy, and has ample time to
    // get ready on a loaded machine.
    let script = r#"if [ "$FORKMASTER_WORKER" = 1 ]; then DEMO_NO_READY=1; export DEMO_NO_READY; fi; exec "$0""#;
    let ready_timeout = flag(secs(2));
    let mut master = fixture(&dir, 2)
        .args(&["--ready-timeout", &ready_timeout])
        .command(&["/bin/sh", "-c", script, demo()])
        .start();
    let log = master.wait_log_count("worker=1 event=respawn delay=", 2, secs(30));
    let timeouts: Vec<_> = master_events(&log, "ready-timeout");
    assert!(timeouts.len() >= 2, "{log}");
    assert!(timeouts.iter().all(|t| t["worker"] == "1"), "{log}");
    assert_ne!(event_pid(&timeouts[0]), event_pid(&timeouts[1]));
    assert!(log.contains("worker=1 event=respawn delay=200ms"), "{log}");
    assert_not_logged(&log, "startup-failed");
    assert_master_running(&mut master);
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["worker"], "0");
    assert_eq!(answer["pid"], last_ready(&master.log(), 0).to_string());
}

#[test]
fn the_watchdog_spares_a_pinging_worker_and_replaces_a_silent_one() {
    let dir = TempDir::new();
    // 2s rather than 1s: the demo pings every third of it, and a thread can
    // stall for most of a second on a machine loaded by parallel tests.
    let timeout = secs(2);
    let master = fixture(&dir, 1)
        .args(&["--timeout", &flag(timeout)])
        .start();
    let log = master.wait_ready();
    let pid = last_ready(&log, 0);

    // Two and a half watchdog periods: without its pings honoured the worker
    // would be killed after one; it must still be the same, untouched worker.
    let hold = Instant::now() + timeout * 5 / 2;
    while Instant::now() < hold {
        let log = master.log();
        assert!(
            !log.contains(in_source("event=watchdog-timeout")) && master.children() == [pid],
            "the pinging worker {pid} was replaced; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let hang = get(&app(&dir), "/hang-watchdog").expect("GET /hang-watchdog");
    assert_eq!(hang.status, 200);
    let log = master.wait_log(
        &format!("worker=0 pid={pid} event=watchdog-timeout"),
        secs(10),
    );
    assert!(log.contains("event=hang-watchdog"), "{log}");
    let log = master.wait_log_count("event=ready boot_ms=", 2, secs(20));
    let exit = format!("worker=0 pid={pid} event=exit signal=SIGKILL reason=\"watchdog timeout\"");
    assert!(log.contains(&exit), "no {exit:?} in log:\n{log}");
    let new = last_ready(&log, 0);
    assert_ne!(new, pid);
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["pid"], new.to_string());
}

#[test]
fn a_sigkilled_master_leaves_no_worker_and_frees_its_port() {
    let dir = TempDir::new();
    let mut master = Fixture::new(&dir).workers(2).tcp().start();
    let log = master.wait_ready();
    let addr = listen_addr(&log, 0);
    let workers = wait_children(&master, 2);
    // No request: a connection the server closed first would hold the port
    // in TIME-WAIT, and binding it again could fail for that reason alone.

    master.signal(Signal::SIGKILL);
    master.wait_exit(secs(10));
    wait_for("the workers to die with their master", secs(5), || {
        workers.iter().all(|p| !is_running(*p)).then_some(())
    });
    // A killed demo's main thread shows as a zombie while its other threads,
    // which share the fd table, are still exiting: wait for the port too.
    wait_for(&format!("{addr} to be free"), secs(5), || {
        TcpListener::bind(addr).ok()
    });
}

#[test]
fn a_notification_from_a_process_that_is_not_a_worker_is_ignored() {
    let dir = TempDir::new();
    // Slot 0 serves; slot 1 stays booting for a minute.
    let script = r#"if [ "$FORKMASTER_WORKER" = 1 ]; then DEMO_BOOT_DELAY=60s; export DEMO_BOOT_DELAY; fi; exec "$0""#;
    let mut master = fixture(&dir, 2)
        .command(&["/bin/sh", "-c", script, demo()])
        .start();
    let log = master.wait_log("event=ready boot_ms=", secs(20));
    let booting = master_events(&log, "spawn")
        .iter()
        .find(|e| e["worker"] == "1")
        .map(event_pid)
        .unwrap_or_else(|| panic!("no worker 1; log:\n{log}"));
    let env = get(&app(&dir), "/env").expect("GET /env");
    let socket = env
        .body
        .lines()
        .find_map(|l| l.strip_prefix("NOTIFY_SOCKET="))
        .unwrap_or_else(|| panic!("no NOTIFY_SOCKET in {env:?}"))
        .to_string();
    assert!(socket.starts_with('/'), "a socket file: {socket}");

    // Claims in the message do not matter; the kernel-reported sender does.
    let forged = format!("READY=1\nMAINPID={booting}\nSTATUS=forged\n");
    send_notify(&socket, &forged).expect("send to NOTIFY_SOCKET");
    let log = master.wait_log(
        &format!(
            "event=notify-ignored sender={} reason=\"not a worker\"",
            std::process::id()
        ),
        secs(10),
    );
    assert_eq!(log.matches("event=ready boot_ms=").count(), 1, "{log}");
    assert_no_event(&log, "all-ready");
    assert!(is_running(booting), "{log}");
    assert_master_running(&mut master);
}

#[test]
fn a_ready_timeout_shorter_than_the_spawn_pass_kills_no_ready_worker() {
    // Forking 600 workers takes the master longer than the 400 ms ready
    // timeout (about 1 s on a 2-core machine, 3 s when it is loaded); the
    // workers are ready at once but the master reads their READY=1 only
    // after the pass. Their clocks must start when it can hear them. The
    // timeout leaves the last-forked workers, which boot after the pass on a
    // loaded machine, 400 ms to be heard.
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .workers(600)
        .unix("app.sock")
        .args(&["--ready-timeout", "400ms"])
        .start();
    let log = master.wait_log("event=all-ready workers=600", secs(60));
    assert_no_event(&log, "ready-timeout");
    assert_eq!(log.matches("event=spawn").count(), 600);
}
