//! Signals: TERM and QUIT start the graceful stop, INT exits 0 at once, HUP
//! and USR1 are only logged; all are read by one thread (signal-hook).
//! SIGUSR2 is ours alone: it interrupts a blocked accept(2) on a stop.

use crate::app::App;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::{io, mem, process, ptr};

const HANDLED: [libc::c_int; 5] = [SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1];

/// Sets the process up before any thread starts (threads inherit the mask):
/// unblocks the handled signals, ignores SIGPIPE, installs the SIGUSR2 interrupt.
pub fn prepare_signals() {
    // SAFETY: sigset_t is plain data for which all-zero bytes are valid.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in HANDLED {
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // An exec'ing master may have left signals blocked.
    // SAFETY: pthread_sigmask only reads `set`; the old mask is not asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut()) };
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SIGUSR2 interrupts a blocked accept(2) on a stop: a handler that does
    // nothing, installed without SA_RESTART so the call fails with EINTR.
    // SAFETY: sigaction is plain data for which all-zero bytes are valid.
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = interrupt as *const () as usize;
    // SAFETY: `action.sa_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is initialised and its handler is async-signal-safe (it does nothing).
    unsafe { libc::sigaction(libc::SIGUSR2, &action, ptr::null_mut()) };
}

extern "C" fn interrupt(_: libc::c_int) {}

/// Routes the handled signals to their iterator; fails if a handler cannot be installed.
pub fn install() -> io::Result<Signals> {
    Signals::new(HANDLED)
}

/// Acts on each signal as it arrives; runs for the life of the process.
pub fn signal_loop(app: &'static App, mut signals: Signals) {
    for sig in signals.forever() {
        match sig {
            SIGTERM => app.drain.begin_stop("TERM"),
            SIGQUIT => app.drain.begin_stop("QUIT"),
            SIGINT => {
                log!("event=exit signal=INT status=0");
                process::exit(0);
            }
            SIGUSR1 => log!("event=usr1"),
            SIGHUP => log!("event=hup"),
            _ => {}
        }
    }
}
