//! The watchdog: with `WATCHDOG_USEC` (and `WATCHDOG_PID` unset or ours) it
//! sends `WATCHDOG=1` every third of that interval until `/hang-watchdog`.

use crate::app::App;
use crate::config::env_nonempty;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

/// The ping interval asked for by the environment, if pings can be sent at all.
pub fn ping_interval(pid: u32, can_notify: bool) -> Option<Duration> {
    let pid_ok = env_nonempty("WATCHDOG_PID").is_none_or(|p| p.trim().parse().ok() == Some(pid));
    let usec = env_nonempty("WATCHDOG_USEC").and_then(|v| v.trim().parse::<u64>().ok());
    usec.filter(|u| *u > 0 && pid_ok && can_notify)
        .map(|usec| Duration::from_micros((usec / 3).max(1000)))
}

/// Pings until `/hang-watchdog` asks to stop (the master should then kill us).
pub fn ping_loop(app: &'static App, interval: Duration) {
    while !app.hang_watchdog.load(Ordering::SeqCst) {
        if let Err(e) = app.notifier.send("WATCHDOG=1") {
            log!("event=notify-error error={e:?}");
        }
        thread::sleep(interval);
    }
    log!("event=watchdog-stopped");
}
