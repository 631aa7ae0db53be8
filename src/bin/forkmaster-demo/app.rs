//! What every thread shares: the answers fixed at boot, the notify client,
//! the watchdog switch and the graceful-stop state.

use crate::drain::Drain;
use crate::notify::Notifier;
use std::sync::atomic::AtomicBool;

pub struct App {
    /// The body of `GET /`.
    pub body: String,
    /// The body of `GET /fds`: the descriptors open when `main` started.
    pub fds: String,
    /// The parent-death signal as read on the main thread at start.
    pub pdeathsig: libc::c_int,
    pub notifier: Notifier,
    /// Set by `/hang-watchdog`: the watchdog pings stop.
    pub hang_watchdog: AtomicBool,
    pub drain: Drain,
}
