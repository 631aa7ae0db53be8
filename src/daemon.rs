//! `--daemonize`: detach from the terminal (double fork, setsid, stdin from
//! /dev/null) and let the launching process exit with the truth: 0 once
//! every worker is ready, 1 with the reason if startup failed. An init
//! script that starts forkmaster this way knows whether it runs.

use crate::error::{Error, Result};
use crate::sys::process::{fork_single_threaded, Forked};
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, pipe2, setsid};
use std::io::Read;
use std::os::fd::OwnedFd;

fn sys(call: &'static str) -> impl Fn(nix::errno::Errno) -> Error {
    move |source| Error::Sys { call, source }
}

/// Detaches. Returns, in the daemon, the pipe to report the outcome on
/// (`ready` or the error, one line). The launching process never returns:
/// it exits with the outcome.
pub fn daemonize() -> Result<OwnedFd> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // `main` detaches before it starts logging, the master loop or any
    // thread: the process is single-threaded, as this fork requires.
    match fork_single_threaded().map_err(sys("fork"))? {
        Forked::Parent { child } => {
            drop(write);
            let outcome = first_line(read);
            let _ = waitpid(child, None);
            match outcome.as_str() {
                "ready" => std::process::exit(0),
                "" => eprintln!("forkmaster: the daemon exited during startup (see its log)"),
                why => eprintln!("forkmaster: {why}"),
            }
            std::process::exit(1);
        }
        Forked::Child => {}
    }
    drop(read);
    setsid().map_err(sys("setsid"))?;
    // Still single-threaded.
    if let Forked::Parent { .. } = fork_single_threaded().map_err(sys("fork"))? {
        // The session leader leaves, so the daemon can never regain a terminal.
        std::process::exit(0);
    }
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys("open /dev/null"))?;
    dup2_stdin(&null).map_err(sys("dup2"))?;
    dup2_stdout(&null).map_err(sys("dup2"))?;
    dup2_stderr(&null).map_err(sys("dup2"))?;
    Ok(write)
}

/// Reads up to the first newline (or end of file), trimmed.
fn first_line(read: OwnedFd) -> String {
    let mut file = std::fs::File::from(read);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = file.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_string()
}
