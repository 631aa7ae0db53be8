//! Signals to the master, one test per row of its signal table:
//!
//! | signal    | expected                                                  |
//! |-----------|-----------------------------------------------------------|
//! | QUIT      | graceful stop: in-flight requests finish, then exit 0     |
//! | QUIT x2   | the graceful stop turns quick (workers get INT)           |
//! | TERM, INT | quick stop, exit 0                                        |
//! | TTIN/TTOU | one more / one fewer worker, highest slot first, never <0 |
//! | WINCH     | all workers stop gracefully, the master stays             |
//! | USR1      | forwarded to every worker, `event=reopen-logs`            |
//! | HUP, USR2 | (not yet implemented) nothing dies, serving goes on       |

use crate::support::*;
use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts `forkmaster -w N -l unix:<dir>/app.sock --ready notify EXTRA -- demo`.
fn start(dir: &TempDir, workers: usize, extra: &[&str]) -> Master {
    Fixture::new(dir)
        .workers(workers)
        .unix("app.sock")
        .args(extra)
        .start()
}

fn app(dir: &TempDir) -> Target {
    Target::unix(dir.join("app.sock"))
}

/// Sends `GET path` from its own thread; returns once a worker holds the
/// connection (the demo runs one `conn` thread per open connection).
fn request_in_flight(
    master: &Master,
    target: &Target,
    path: &str,
) -> JoinHandle<Result<Response, String>> {
    let busy = || {
        master
            .children()
            .into_iter()
            .any(|p| open_connections(p) > 0)
    };
    // Earlier connections linger briefly after their response: let them go first.
    master.wait_for("no open connection", secs(10), |_| (!busy()).then_some(()));
    let (target, path) = (target.clone(), path.to_string());
    let request = std::thread::spawn(move || get(&target, &path));
    master.wait_for("a worker to hold the request", secs(10), |_| {
        busy().then_some(())
    });
    request
}

/// Worker slot -> pid of the workers that became ready, by the master's log.
fn ready_slots(log: &str) -> Vec<(usize, i32)> {
    master_events(log, "ready")
        .iter()
        .map(|e| (e["worker"].parse().expect("slot"), event_pid(e)))
        .collect()
}

/// The master's `NOTIFY_SOCKET`, as its first worker got it.
fn notify_socket(master: &Master) -> String {
    let worker = master.children()[0];
    proc_environ(worker)
        .remove("NOTIFY_SOCKET")
        .unwrap_or_else(|| panic!("worker {worker} has no NOTIFY_SOCKET"))
}

/// Returns once the master has acted on every signal sent to it before.
///
/// A signal sent before datagram 1 is delivered (its byte is in the
/// self-pipe) at the latest when the master returns from the recvmsg that
/// reads datagram 1. Datagram 2 is sent only once datagram 1 shows in the log,
/// long after the master's read loop of that pass moved on, so the master
/// reads it in a later pass, after draining the pipe: once datagram 2 is
/// logged, every earlier signal has been handled.
fn settle(master: &mut Master, notify: &str) {
    let needle = format!("event=notify-ignored sender={} ", std::process::id());
    let before = master.log().matches(&needle).count();
    for n in 1..=2 {
        fence(master, notify, &needle, before + n);
    }
}

/// Sends a fence datagram until the master has logged `count` of them (it
/// rate-limits the log of ignored datagrams, so one may go unlogged).
fn fence(master: &mut Master, notify: &str, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + secs(10);
    loop {
        if let Err(e) = send_notify(notify, "STATUS=fence\n") {
            panic!("notify {notify}: {e}; log:\n{}", master.log());
        }
        let logged = master.try_wait_for(std::time::Duration::from_millis(200), |m| {
            (m.log().matches(needle).count() >= count).then_some(())
        });
        if logged.is_some() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "the master never logged fence {count}; log:\n{}",
                master.log()
            );
        }
    }
}

/// Whether the demo worker `pid` logged a line holding `event`.
fn demo_logged(log: &str, pid: i32, event: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with(&format!("demo pid={pid} ")) && l.contains(event))
}

fn assert_socket_removed(dir: &TempDir, log: &str) {
    let path = dir.join("app.sock");
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "{} still exists after the master exited; log:\n{log}",
        path.display()
    );
}

fn assert_gone(workers: &[i32], log: &str) {
    for &pid in workers {
        assert!(
            !is_running(pid),
            "worker {pid} outlived its master; log:\n{log}"
        );
    }
}

/// The master's own final `event=exit status=0` line (not a worker's).
fn assert_clean_exit(log: &str) {
    let own_exit = master_events(log, "exit")
        .iter()
        .any(|e| !e.contains_key("worker") && e.get("status").map(String::as_str) == Some("0"));
    assert!(
        own_exit,
        "no `event=exit status=0` of the master; log:\n{log}"
    );
}

#[test]
fn quit_lets_the_in_flight_request_finish_then_exits_cleanly() {
    let dir = TempDir::new();
    let mut master = start(&dir, 2, &[]);
    master.wait_ready();
    let workers = wait_children(&master, 2);

    let request = request_in_flight(&master, &app(&dir), "/sleep?ms=1500");
    master.signal(Signal::SIGQUIT);
    let response = request.join().expect("request thread");
    let status = master.wait_exit(secs(20));

    let log = master.log();
    let response = response.unwrap_or_else(|e| panic!("in-flight request: {e}; log:\n{log}"));
    assert_eq!(response.status, 200, "{response:?}");
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(
        log.contains("event=stop mode=graceful signal=QUIT workers=2"),
        "{log}"
    );
    // The worker holding the request got the stop signal while it ran.
    assert!(
        log.contains("event=stopping signal=TERM inflight=1"),
        "{log}"
    );
    assert_eq!(
        log.matches("event=exit status=0 stopped=yes").count(),
        2,
        "{log}"
    );
    assert_not_logged(&log, "mode=quick");
    assert_clean_exit(&log);
    assert_gone(&workers, &log);
    assert_socket_removed(&dir, &log);
}

#[test]
fn quit_kills_a_worker_that_ignores_its_stop_signal_after_the_graceful_timeout() {
    let dir = TempDir::new();
    // The demo only logs USR1, so it never stops on its own.
    let mut master = start(
        &dir,
        1,
        &["--stop-signal", "USR1", "--graceful-timeout", "500ms"],
    );
    master.wait_ready();
    let pid = wait_children(&master, 1)[0];

    let sent = Instant::now();
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(secs(20));
    let took = sent.elapsed();

    let log = master.log();
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}, before the graceful timeout; log:\n{log}"
    );
    for needle in [
        format!("worker=0 pid={pid} event=stop signal=USR1 grace=500ms"),
        format!("worker=0 pid={pid} event=kill "),
        format!("worker=0 pid={pid} event=exit signal=SIGKILL stopped=yes"),
    ] {
        assert!(log.contains(&needle), "no {needle:?} in log:\n{log}");
    }
    assert_clean_exit(&log);
    assert_gone(&[pid], &log);
}

/// QUIT while a long request runs, then `second`: the worker must get INT
/// and exit at once, cutting the request, and the master exit 0.
fn assert_quick_stop_during_graceful_stop(second: Signal) {
    let dir = TempDir::new();
    let mut master = start(&dir, 1, &[]);
    master.wait_ready();
    let pid = wait_children(&master, 1)[0];

    let request = request_in_flight(&master, &app(&dir), "/sleep?ms=60000");
    master.signal(Signal::SIGQUIT);
    master.wait_log("event=stopping signal=TERM inflight=1", secs(10));
    master.signal(second);
    let status = master.wait_exit(secs(20));
    let response = request.join().expect("request thread");

    let log = master.log();
    assert!(status.success(), "{status}; log:\n{log}");
    let name = second.as_str().trim_start_matches("SIG");
    for needle in [
        "event=stop mode=graceful signal=QUIT".to_string(),
        format!("event=stop mode=quick signal={name}"),
        format!("worker=0 pid={pid} event=stop signal=INT"),
        format!("demo pid={pid} worker=0 event=exit signal=INT"),
    ] {
        assert!(log.contains(&needle), "no {needle:?} in log:\n{log}");
    }
    assert!(
        !matches!(response, Ok(Response { status: 200, .. })),
        "the 60s request completed: the stop was not quick; log:\n{log}"
    );
    assert_gone(&[pid], &log);
}

#[test]
fn a_second_quit_makes_a_graceful_stop_quick() {
    assert_quick_stop_during_graceful_stop(Signal::SIGQUIT);
}

#[test]
fn term_during_a_graceful_stop_makes_it_quick() {
    assert_quick_stop_during_graceful_stop(Signal::SIGTERM);
}

/// `signal` stops every worker at once, even one with a request in flight.
fn assert_quick_stop(signal: Signal) {
    let dir = TempDir::new();
    let mut master = start(&dir, 2, &[]);
    master.wait_ready();
    let workers = wait_children(&master, 2);

    let request = request_in_flight(&master, &app(&dir), "/sleep?ms=60000");
    master.signal(signal);
    let status = master.wait_exit(secs(20));
    let response = request.join().expect("request thread");

    let log = master.log();
    assert!(status.success(), "{status}; log:\n{log}");
    let name = signal.as_str().trim_start_matches("SIG");
    assert!(
        log.contains(&format!("event=stop mode=quick signal={name} workers=2")),
        "{log}"
    );
    for pid in &workers {
        assert!(
            demo_logged(&log, *pid, "event=exit signal=INT"),
            "worker {pid} did not get INT; log:\n{log}"
        );
    }
    assert!(
        !matches!(response, Ok(Response { status: 200, .. })),
        "the 60s request completed: the stop was not quick; log:\n{log}"
    );
    assert_clean_exit(&log);
    assert_gone(&workers, &log);
    assert_socket_removed(&dir, &log);
}

#[test]
fn term_stops_quickly() {
    assert_quick_stop(Signal::SIGTERM);
}

#[test]
fn int_stops_quickly() {
    assert_quick_stop(Signal::SIGINT);
}

#[test]
fn ttin_adds_a_worker_in_the_next_slot() {
    let dir = TempDir::new();
    let master = start(&dir, 2, &[]);
    master.wait_ready();
    let before = wait_children(&master, 2);

    master.signal(Signal::SIGTTIN);
    let log = master.wait_log("event=all-ready workers=3", secs(20));
    assert!(
        log.contains("event=scale signal=TTIN workers=3 previous=2"),
        "{log}"
    );
    let (slot, added) = *ready_slots(&log).last().expect("a ready worker");
    assert_eq!(slot, 2, "{log}");
    let workers = wait_children(&master, 3);
    assert!(workers.contains(&added), "{workers:?} lacks {added}");
    assert!(before.iter().all(|p| workers.contains(p)), "{workers:?}");

    let slots: BTreeSet<String> = workers
        .iter()
        .map(|p| proc_environ(*p)["FORKMASTER_WORKER"].clone())
        .collect();
    assert_eq!(slots, BTreeSet::from(["0".into(), "1".into(), "2".into()]));
    assert_eq!(proc_environ(added)["FORKMASTER_WORKERS"], "3");
    wait_serving(&app(&dir));
}

#[test]
fn ttou_stops_the_highest_slot_first() {
    let dir = TempDir::new();
    let master = start(&dir, 3, &[]);
    let log = master.wait_ready();
    wait_children(&master, 3);
    let pid_of = |slot: usize| {
        ready_slots(&log)
            .into_iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("slot {slot} never ready; log:\n{log}"))
    };
    let (p0, p1, p2) = (pid_of(0), pid_of(1), pid_of(2));

    master.signal(Signal::SIGTTOU);
    let log = master.wait_log(
        &format!("worker=2 pid={p2} event=exit status=0 stopped=yes"),
        secs(20),
    );
    assert!(
        log.contains("event=scale signal=TTOU workers=2 previous=3"),
        "{log}"
    );
    assert!(
        log.contains(&format!("worker=2 pid={p2} event=stop signal=TERM")),
        "{log}"
    );
    assert_eq!(wait_children(&master, 2), {
        let mut v = vec![p0, p1];
        v.sort_unstable();
        v
    });

    master.signal(Signal::SIGTTOU);
    master.wait_log(
        &format!("worker=1 pid={p1} event=exit status=0 stopped=yes"),
        secs(20),
    );
    assert_eq!(wait_children(&master, 1), vec![p0]);
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["worker"], "0");
    assert_eq!(answer["pid"], p0.to_string());
}

#[test]
fn ttou_at_zero_workers_keeps_the_master_at_zero() {
    let dir = TempDir::new();
    let mut master = start(&dir, 1, &[]);
    master.wait_ready();
    let pid = wait_children(&master, 1)[0];

    master.signal(Signal::SIGTTOU);
    master.wait_log(
        &format!("worker=0 pid={pid} event=exit status=0 stopped=yes"),
        secs(20),
    );
    // Each TTOU is awaited: a signal sent while the same one is pending is lost.
    for n in 1..=3 {
        master.signal(Signal::SIGTTOU);
        master.wait_log_count("event=scale signal=TTOU workers=0 previous=0", n, secs(10));
    }
    assert_master_running(&mut master);
    assert_eq!(master.children(), Vec::<i32>::new());

    // One TTIN brings exactly one worker back: the count did not go below 0.
    master.signal(Signal::SIGTTIN);
    let log = master.wait_log("event=scale signal=TTIN workers=1 previous=0", secs(10));
    let back = wait_children(&master, 1)[0];
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["worker"], "0", "{log}");
    assert_eq!(answer["pid"], back.to_string());
}

#[test]
fn winch_stops_every_worker_but_keeps_the_master() {
    let dir = TempDir::new();
    let mut master = start(&dir, 2, &[]);
    master.wait_ready();
    let workers = wait_children(&master, 2);

    // The harness gives the master /dev/null as stdin, not a terminal.
    master.signal(Signal::SIGWINCH);
    let log = master.wait_log_count("event=exit status=0 stopped=yes", 2, secs(20));
    assert!(
        log.contains("event=scale signal=WINCH workers=0 previous=2"),
        "{log}"
    );
    for pid in &workers {
        assert!(
            demo_logged(&log, *pid, "event=stopping signal=TERM"),
            "worker {pid} was not stopped gracefully; log:\n{log}"
        );
    }
    wait_children(&master, 0);
    assert_master_running(&mut master);

    master.signal(Signal::SIGTTIN);
    master.wait_log("event=all-ready workers=1", secs(20));
    let back = wait_children(&master, 1)[0];
    assert!(!workers.contains(&back));
    let answer = wait_serving(&app(&dir));
    assert_eq!(answer["worker"], "0");
    assert_eq!(answer["pid"], back.to_string());
}

#[test]
fn usr1_is_forwarded_to_every_worker() {
    let dir = TempDir::new();
    let master = start(&dir, 2, &["--reopen-signal", "USR1"]);
    master.wait_ready();
    let workers = wait_children(&master, 2);

    master.signal(Signal::SIGUSR1);
    let log = master.wait_log_count("event=usr1", 2, secs(10));
    assert!(log.contains("event=reopen-logs workers=2"), "{log}");
    for pid in &workers {
        let lines = log
            .lines()
            .filter(|l| l.starts_with(&format!("demo pid={pid} ")) && l.contains("event=usr1"))
            .count();
        assert_eq!(lines, 1, "worker {pid} got USR1 {lines} times; log:\n{log}");
    }
    assert_eq!(master.children(), workers, "{log}");
}

/// The log after the last line holding `needle` (all of it if none does).
fn after_last<'a>(log: &'a str, needle: &str) -> &'a str {
    match log.rfind(needle) {
        Some(at) => &log[at..],
        None => log,
    }
}

#[test]
fn a_storm_of_signals_leaves_the_master_responsive_with_its_workers() {
    let dir = TempDir::new();
    // TTOU right after TTIN stops workers that may not have exec'd yet; the
    // stop signal must reach them, never the master (see
    // `a_stop_signal_for_a_worker_not_yet_exec_d_does_not_reach_the_master`).
    let mut master = start(&dir, 2, &[]);
    master.wait_ready();
    wait_children(&master, 2);
    let notify = notify_socket(&master);

    for i in 0..200 {
        let signal = if i % 2 == 0 {
            Signal::SIGTTIN
        } else {
            Signal::SIGTTOU
        };
        master.signal(signal);
        if i % 20 == 19 {
            master.signal(Signal::SIGUSR1);
        }
    }
    settle(&mut master, &notify);
    assert_master_running(&mut master);

    // Every TTIN and TTOU that arrived moved the count by one from where the
    // previous one left it, never below 0.
    let log = master.log();
    let scales = master_events(&log, "scale");
    assert!(!scales.is_empty(), "no TTIN/TTOU handled; log:\n{log}");
    let mut wanted = 2usize;
    for scale in &scales {
        let number = |key: &str| -> usize { scale[key].parse().expect("a count") };
        assert_eq!(number("previous"), wanted, "{scale:?}; log:\n{log}");
        wanted = match scale["signal"].as_str() {
            "TTIN" => wanted + 1,
            "TTOU" => wanted.saturating_sub(1),
            other => panic!("{other} scaled the workers; log:\n{log}"),
        };
        assert_eq!(number("workers"), wanted, "{scale:?}; log:\n{log}");
    }
    // The kernel drops a signal sent while the same one is still pending, and
    // a handler running for one of them lets the other in again and again,
    // so the storm does not arrive balanced: balance it with awaited signals.
    let mut handled = scales.len();
    while wanted != 2 {
        let signal = if wanted < 2 {
            Signal::SIGTTIN
        } else {
            Signal::SIGTTOU
        };
        master.signal(signal);
        handled += 1;
        let log = master.wait_log_count("event=scale signal=", handled, secs(10));
        let last = master_events(&log, "scale").pop().expect("a scale event");
        wanted = last["workers"].parse().expect("a count");
    }
    master
        .try_wait_for(secs(20), |m| {
            let log = m.log();
            after_last(&log, "event=scale signal=")
                .contains("event=all-ready workers=2")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("not all ready after the storm; log:\n{}", master.log()));

    let workers = wait_children(&master, 2);
    let slots: BTreeSet<String> = workers
        .iter()
        .map(|p| proc_environ(*p)["FORKMASTER_WORKER"].clone())
        .collect();
    assert_eq!(slots, BTreeSet::from(["0".into(), "1".into()]));
    let answer = wait_serving(&app(&dir));
    assert!(answer["worker"] == "0" || answer["worker"] == "1");
    let log = master.log();
    assert!(log.contains("event=reopen-logs"), "{log}");
    assert_not_logged(&log, "event=stop mode=");
    assert_no_panic(&log);
    assert_master_running(&mut master);
}

/// Between fork and exec a new worker still runs the master's signal
/// handlers, which write into the master's own signal pipe: a stop signal
/// sent to a worker that has not yet exec'd is taken by the master as sent to
/// itself. Here, QUIT just after startup: the master sends TERM to its 48
/// workers, some not yet exec'd, and then believes it got TERM itself.
#[test]
fn a_stop_signal_for_a_worker_not_yet_exec_d_does_not_reach_the_master() {
    for round in 0..10 {
        let dir = TempDir::new();
        let mut master = start(&dir, 48, &["--graceful-timeout", "5s"]);
        // QUIT while the master is still forking its 48 workers.
        master.wait_log("event=spawn", secs(10));
        master.signal(Signal::SIGQUIT);
        let status = master.wait_exit(secs(60));
        let log = master.log();
        assert!(status.success(), "round {round}: {status}; log:\n{log}");
        assert!(
            !log.contains(in_source("event=stop mode=quick")),
            "round {round}: only QUIT was sent, yet the master stopped quickly; log:\n{log}"
        );
    }
}
