//! Signal handlers that only record: each signal's number goes as one byte
//! into the self-pipe, or into an overflow mask when the pipe is full. The
//! master loop drains the pipe first, then the mask.

use libc::c_int;
use nix::errno::Errno;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The write end of the self-pipe, for the signal handlers.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Signals whose byte did not fit into a full pipe; drained after the pipe.
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
/// The signals `record_signals` installed handlers for (bit n: signal n); a
/// forked child resets them before it unblocks signals.
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Installs handlers (through signal-hook) that write each signal's number as
/// one byte into `pipe`, so the loop sees signals in order and counted. When
/// the pipe is full the signal is kept in a bit mask instead (coalesced, as
/// the kernel itself would). Fails if a handler cannot be installed.
pub fn record_signals(signals: &[c_int], pipe: OwnedFd) -> Result<(), std::io::Error> {
    SIGNAL_PIPE.store(pipe.as_raw_fd(), Ordering::SeqCst);
    // The write end lives for the whole process.
    std::mem::forget(pipe);
    for &signal in signals {
        HANDLED.fetch_or(1 << signal, Ordering::SeqCst);
        let action = move || {
            let saved = Errno::last_raw();
            let byte = signal as u8;
            let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
            // SAFETY: writes one byte from a live local; write(2) is
            // async-signal-safe and at worst fails (then the mask keeps it).
            let written = unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
            if written != 1 {
                OVERFLOW.fetch_or(1 << signal, Ordering::SeqCst);
            }
            Errno::set_raw(saved);
        };
        // SAFETY: the action only calls write(2) and atomic operations, which
        // are async-signal-safe, and preserves errno.
        unsafe { signal_hook::low_level::register(signal, action) }?;
    }
    Ok(())
}

/// Takes the signals that overflowed the pipe since the last call.
pub fn take_overflowed_signals() -> u64 {
    OVERFLOW.swap(0, Ordering::SeqCst)
}

/// The signals we installed handlers for (bit n: signal n). A plain atomic
/// load, so the child may call it between fork and exec.
pub(super) fn handled_signals() -> u64 {
    HANDLED.load(Ordering::Relaxed)
}
