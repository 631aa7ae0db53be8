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

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
    /// Installs the handlers. Call once, before the first fork.
    pub fn install() -> std::io::Result<SignalPipe> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let numbers: Vec<_> = Signal::ALL.iter().map(|s| s.number()).collect();
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
            out.extend(
                buf[..n]
                    .iter()
                    .filter_map(|&b| Signal::from_number(b.into())),
            );
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
        out
    }
}

impl AsFd for SignalPipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}
