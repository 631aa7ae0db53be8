//! Recycling at its edges: a recycle cancelled by a HUP stays due and is
//! carried out once that reload ends, even a failed one; limits a fresh
//! worker cannot meet never make the master recycle in a loop.

use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn a_recycle_cancelled_by_a_failed_reload_is_carried_out_after_it() {
    let app = App::new(1, "");
    // The replacement boots for a while, so the HUP finds it booting.
    let slow = app.env_line(&[("DEMO_BOOT_DELAY", "1500ms")]);
    let limits = "max_worker_age: 3s\nmax_worker_age_jitter: 0\n";
    app.write_config(1, &format!("{slow}{limits}"));
    let master = app.start();
    let log = master.wait_log("event=recycle ", secs(30));
    let old = event_pid(&master_events(&log, "recycle")[0]);

    // A reload whose workers never become ready: it fails, and rolls back.
    let never = app.env_line(&[("DEMO_NO_READY", "1")]);
    app.write_config(1, &format!("{never}{limits}ready_timeout: 1s\n"));
    master.signal(Signal::SIGHUP);
    master.wait_log("event=recycle-cancelled", secs(10));
    master.wait_log("event=reload-failed", secs(30));

    // The old worker, long past its age, is recycled once the reload ended.
    let log = master.wait_log(&format!("pid={old} event=recycle-ready"), secs(30));
    let recycles = master_events(&log, "recycle");
    assert!(
        recycles.iter().filter(|e| event_pid(e) == old).count() >= 2,
        "{log}"
    );
    master.wait_log(&format!("pid={old} event=exit"), secs(30));
}

#[test]
fn age_limits_below_a_second_are_refused_naming_the_flag() {
    for age in ["1ms", "999ms"] {
        let out = run(
            &[
                "--max-worker-age",
                age,
                "-l",
                "127.0.0.1:0",
                "-t",
                "--",
                demo(),
            ],
            secs(10),
        );
        crate::config_errors::assert_one_line_error(
            &out,
            1,
            &["--max-worker-age", age, "at least 1s"],
        );
    }
}

#[test]
fn a_slow_booting_worker_serves_a_while_before_its_age_recycles_it() {
    let app = App::new(1, "");
    let env = app.env_line(&[("DEMO_BOOT_DELAY", "1500ms")]);
    app.write_config(
        1,
        &format!("{env}max_worker_age: 1s\nmax_worker_age_jitter: 0\n"),
    );
    let master = app.start();
    let log = master.wait_log_count("event=recycle ", 2, secs(30));
    // Each worker was due when ready, yet served a second first.
    for recycle in master_events(&log, "recycle").iter().take(2) {
        let uptime: u64 = recycle["uptime_ms"].parse().unwrap();
        assert!(uptime >= 2500, "{recycle:?}\n{log}");
    }
}

#[test]
fn a_memory_limit_below_a_fresh_worker_backs_off_instead_of_looping() {
    let dir = TempDir::new();
    let master = crate::fixture::Fixture::new(&dir)
        .workers(1)
        .unix("app.sock")
        .args(&[
            "--max-worker-memory",
            "1K",
            "--memory-check-interval",
            "100ms",
        ])
        .start();
    master.wait_ready();
    master.wait_log("event=recycle-limit-too-low", secs(10));
    // A measuring window, not synchronisation: at the check interval the
    // master would have recycled about 30 times in it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let log = master.log();
    let warned = master_events(&log, "recycle-limit-too-low");
    assert_eq!(warned.len(), 1, "{log}");
    assert_eq!(warned[0]["limit_bytes"], "1024", "{log}");
    let recycles = master_events(&log, "recycle").len();
    assert!(recycles <= 3, "{recycles} recycles:\n{log}");
}
