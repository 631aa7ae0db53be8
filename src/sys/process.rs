//! Operations on the process as a whole: forking it to daemonize, asking
//! whether stdin is a terminal, and keeping every descendant its own to reap
//! (child subreaper, the list of its children).

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

/// Makes this process the reaper of its orphaned descendants: a process
/// whose parent dies is re-parented to us instead of to init, so what a
/// worker started cannot escape the master by outliving the worker. Fails
/// only on a kernel older than 3.4.
pub fn become_subreaper() -> Result<(), Errno> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// This process's children as the kernel lists them
/// (`/proc/self/task/<tid>/children`), at most `limit` of them: each read is
/// bounded, whatever the number of children. `None` when `/proc` does not
/// say (no `/proc`, or a kernel without `CONFIG_PROC_CHILDREN`).
pub fn children(limit: usize) -> Option<Vec<i32>> {
    use std::io::Read;
    // A pid is at most 7 digits and a space (pid_max is at most 2^22).
    const PID_BYTES: usize = 8;
    // The master has one thread; a bound all the same.
    const MAX_TASKS: usize = 64;
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut children = Vec::new();
    let mut text = String::new();
    let mut listed = false;
    for task in tasks.flatten().take(MAX_TASKS) {
        // A thread that just ended has no list: skip it.
        let Ok(file) = std::fs::File::open(task.path().join("children")) else {
            continue;
        };
        listed = true;
        text.clear();
        let room = limit.saturating_sub(children.len()) * PID_BYTES;
        if file.take(room as u64).read_to_string(&mut text).is_err() {
            continue;
        }
        children.extend(
            text.split_ascii_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
                .take(limit.saturating_sub(children.len())),
        );
    }
    listed.then_some(children)
}

/// Whether fd 0 is a terminal (then WINCH means a resized window).
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor; any number is fine.
    unsafe { libc::isatty(0) == 1 }
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`
/// field 22): with the pid, it names one process, never a later one given
/// the same pid. `None` if it is gone or `/proc` does not say.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from after its closing one (field 3 is the first after it).
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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

    #[test]
    fn lists_children_bounded() {
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let pids: Vec<i32> = kids.iter().map(|k| k.id() as i32).collect();
        let listed = children(1 << 20).unwrap();
        assert!(
            pids.iter().all(|p| listed.contains(p)),
            "{pids:?} in {listed:?}"
        );
        assert!(children(2).unwrap().len() <= 2);
        for kid in &mut kids {
            let _ = kid.kill();
            let _ = kid.wait();
        }
    }
}
