//! The harness itself: a wait on a dead master fails at once, a master that
//! exits on purpose still satisfies a wait, an absence check of a name src/
//! no longer has fails, and the guard leaves nothing running.

use crate::support::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_wait_on_a_master_that_exits_fails_at_once_with_its_status_and_log() {
    let dir = TempDir::new();
    // An unparsable listen address: the master exits 1 at once.
    let master = Fixture::new(&dir).listen("nope").start();
    let started = Instant::now();
    let message = panic_message(|| {
        master.wait_ready();
    });
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    assert!(message.contains("exited (exit status: 1)"), "{message}");
    assert!(message.contains("forkmaster: "), "no log tail: {message}");
}

#[test]
fn a_wait_on_what_an_exiting_master_logs_last_succeeds() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).listen("nope").start();
    let log = master.wait_log("forkmaster: ", secs(20));
    assert!(log.contains("nope"), "{log}");
}

#[test]
fn an_absence_check_of_a_name_src_no_longer_has_fails() {
    assert_no_event("", "all-ready");
    assert_not_logged("", "event=stop mode=quick signal=TERM");
    let message = panic_message(|| assert_no_event("", "no-such-event"));
    assert!(
        message.contains("event `no-such-event` no longer exists in src/"),
        "{message}"
    );
    let message = panic_message(|| assert_not_logged("", "event=stop mode=no-such-mode"));
    assert!(message.contains("no-such-mode"), "{message}");
    let message = panic_message(|| assert_not_logged("", "no such words in src"));
    assert!(message.contains("no longer exists in src/"), "{message}");
}

#[test]
fn the_guard_kills_and_reaps_what_it_was_given() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).workers(2).tcp().start();
    master.wait_ready();
    let mut pids = master.children();
    pids.push(master.pid());
    let mut guard = Guard::new();
    let sleeper = guard.adopt(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    pids.push(sleeper.id() as i32);
    drop(guard);
    drop(master);
    // SIGKILL takes effect when the process next runs: wait for that.
    for pid in pids {
        wait_for(&format!("{pid} to die with its guard"), secs(10), || {
            (!is_running(pid)).then_some(())
        });
    }
}
