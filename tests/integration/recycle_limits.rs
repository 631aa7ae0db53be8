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
