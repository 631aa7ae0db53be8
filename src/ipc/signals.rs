//! The signals the master obeys, as a domain enum, and the self-pipe that
//! carries them from the handlers into the event loop.
//!
//! | signal    | meaning                                          |
//! |-----------|--------------------------------------------------|
//! | QUIT      | graceful stop                                    |
//! | TERM, INT | quick stop                                       |
//! | HUP       | reload config, rolling restart of the workers    |
//! | USR1      | reopen log files, forwarded to workers           |
//! | USR2      | re-exec the master (zero-downtime upgrade)       |
//! | WINCH     | gracefully stop all workers, keep the master     |
//! | TTIN/TTOU | one more / one fewer worker                      |
//! | CHLD      | a child changed state: reap                      |
//!
//! As PID 1 of a pid namespace (a container's main process) the kernel
//! drops every signal the master has no handler for, so a signal with no
//! meaning for forkmaster (`IGNORED_AS_PID1`) would vanish without a trace:
//! there the master installs a handler for those too, and logs and ignores
//! them. Elsewhere their default action stands, as for any process (`ALRM`
//! terminates, `TSTP` stops). `PIPE` is ignored by the Rust runtime (a
//! write to a closed peer fails with `EPIPE`), and reset for the app.

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Signals with no meaning for forkmaster whose default action would end or
/// stop a process, logged and ignored when the master is PID 1 (the kernel
/// would drop them silently). Faults (`SEGV`, `BUS`, `ILL`, `FPE`, `TRAP`,
/// `SYS`) are left alone: the kernel forces those even on an init, and
/// `ABRT` is our own `abort()`, which must end the process.
pub const IGNORED_AS_PID1: [libc::c_int; 9] = [
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
    libc::SIGTSTP,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Quit,
    Term,
    Int,
    Hup,
    Usr1,
    Usr2,
    Winch,
    Ttin,
    Ttou,
    Chld,
}

impl Signal {
    pub const ALL: [Signal; 10] = [
        Signal::Quit,
        Signal::Term,
        Signal::Int,
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Winch,
        Signal::Ttin,
        Signal::Ttou,
        Signal::Chld,
    ];

    pub fn number(self) -> libc::c_int {
        match self {
            Signal::Quit => libc::SIGQUIT,
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Winch => libc::SIGWINCH,
            Signal::Ttin => libc::SIGTTIN,
            Signal::Ttou => libc::SIGTTOU,
            Signal::Chld => libc::SIGCHLD,
        }
    }

    pub fn from_number(n: libc::c_int) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Quit => "QUIT",
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Winch => "WINCH",
            Signal::Ttin => "TTIN",
            Signal::Ttou => "TTOU",
            Signal::Chld => "CHLD",
        }
    }
}

/// The read end of the self-pipe; the handlers hold the write end.
pub struct SignalPipe {
    read: OwnedFd,
}

impl SignalPipe {
    /// Installs the handlers (as PID 1, for `IGNORED_AS_PID1` too). Call
    /// once, before the first fork.
    pub fn install() -> std::io::Result<SignalPipe> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let mut numbers: Vec<_> = Signal::ALL.iter().map(|s| s.number()).collect();
        if std::process::id() == 1 {
            numbers.extend(IGNORED_AS_PID1);
        }
        crate::sys::record_signals(&numbers, write)?;
        Ok(SignalPipe { read })
    }

    /// Every signal received since the last call, in order of arrival.
    pub fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = nix::unistd::read(&self.read, &mut buf) {
            if n == 0 {
                break;
            }
            for &byte in &buf[..n] {
                match Signal::from_number(byte.into()) {
                    Some(signal) => out.push(signal),
                    None => log_ignored(byte.into()),
                }
            }
            if n < buf.len() {
                break;
            }
        }
        let overflowed = crate::sys::take_overflowed_signals();
        out.extend(
            Signal::ALL
                .into_iter()
                .filter(|s| overflowed & (1 << s.number()) != 0),
        );
        IGNORED_AS_PID1
            .into_iter()
            .filter(|&n| overflowed & (1 << n) != 0)
            .for_each(log_ignored);
        out
    }
}

/// Logs a signal the master has a handler for only so that, as PID 1, it
/// is not dropped unseen (`IGNORED_AS_PID1`).
fn log_ignored(number: libc::c_int) {
    let name = nix::sys::signal::Signal::try_from(number)
        .map(|s| s.as_str().trim_start_matches("SIG").to_string())
        .unwrap_or_else(|_| number.to_string());
    log::info!("event=signal signal={name} action=ignored reason=\"no meaning for forkmaster\"");
}

impl AsFd for SignalPipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signals_ignored_as_pid1_are_none_we_obey_and_fit_the_overflow_mask() {
        for n in IGNORED_AS_PID1 {
            assert!(Signal::from_number(n).is_none(), "signal {n} has a meaning");
            assert!((1..64).contains(&n), "signal {n} does not fit the mask");
        }
    }
}
