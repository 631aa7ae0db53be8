//! Operations on the process as a whole: forking it to daemonize, and asking
//! whether stdin is a terminal.

use nix::errno::Errno;
use nix::unistd::Pid;

/// Which side of a fork this process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    Parent { child: Pid },
    Child,
}

/// Forks the whole process, for `--daemonize`: unlike a worker's fork, the
/// child goes on to run arbitrary code (the master itself). Fails with the
/// fork error, or `EDEADLK` if the process has more than one thread.
///
/// Precondition: the process is single-threaded, because the child of a
/// multi-threaded process may run only async-signal-safe code until it execs
/// (another thread may have held a lock, the allocator's for one, at the
/// fork). Guaranteed by the one caller, `daemon::daemonize`, which `main` runs
/// before it starts logging, installs signal handlers or starts any thread.
/// Checked as well where `/proc` tells the thread count.
pub fn fork_single_threaded() -> Result<Forked, Errno> {
    if thread_count().is_some_and(|n| n > 1) {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: the process has one thread (precondition above, checked just
    // before), so the child inherits no lock another thread held.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            child: Pid::from_raw(pid),
        }),
    }
}

/// The number of threads of this process, if `/proc` says.
fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Whether fd 0 is a terminal (then WINCH means a resized window).
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor; any number is fine.
    unsafe { libc::isatty(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads() {
        let (started, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let _ = started.send(());
            let _ = stopped.recv();
        });
        ready.recv().unwrap();
        // The test harness runs tests in threads; this one adds another.
        assert!(thread_count().unwrap() >= 2);
        assert_eq!(fork_single_threaded(), Err(Errno::EDEADLK));
        stop.send(()).unwrap();
        helper.join().unwrap();
    }
}
