//! The child's side of `spawn`, between fork and exec, in the order the steps
//! must run. Only async-signal-safe calls on memory the parent prepared
//! (`ExecPlan`): no allocation, no locks, no panics, no formatting. A step
//! that fails writes the error record and exits 127 (`fail`).
//!
//! Every step is an `unsafe fn` with one contract: it runs in the freshly
//! forked child, before exec. There the parent's signal handlers, process
//! group and fds are the child's own to change, and the fd numbers in the
//! plan are plain numbers again (no `OwnedFd` in this process will ever run).

use super::signals::handled_signals;
use super::spawn::{ChildStage, ExecPlan, ERROR_RECORD_LEN, LISTEN_PID_PREFIX};
use libc::{c_int, pid_t};
use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use std::os::fd::RawFd;

/// Runs the child to its exec; never returns.
///
/// # Safety
/// Only in the child of a fork, before exec (the contract of every step).
pub(super) unsafe fn exec_child(plan: &mut ExecPlan) -> ! {
    // SAFETY: in the forked child (our contract), as for each step below.
    unsafe { reset_signals() };
    if !plan.worker {
        // SAFETY: as above.
        unsafe { hand_on_listeners(plan) };
        // SAFETY: as above.
        unsafe { chdir_and_exec(plan, plan.error_fd) }
    }
    // SAFETY: as above.
    unsafe { enter_own_process_group(plan.error_fd) };
    // SAFETY: as above.
    unsafe { redirect_stdio(plan) };
    // SAFETY: as above; credentials before the death signal, which they clear.
    unsafe { switch_credentials(plan) };
    // SAFETY: as above.
    unsafe { die_with_parent(plan) };
    // SAFETY: as above.
    unsafe { fill_listen_pid(plan) };
    // SAFETY: as above.
    let error_fd = unsafe { renumber_listeners(plan) };
    // SAFETY: as above.
    unsafe { chdir_and_exec(plan, error_fd) }
}

/// Puts back the default action of every signal the master handles, then
/// unblocks all signals (`spawn` blocked them across the fork).
///
/// # Safety
/// Only in the forked child: in the master it would drop the handlers.
unsafe fn reset_signals() {
    let handled = handled_signals();
    for signal in 1..64 {
        if handled & (1 << signal) != 0 {
            // SAFETY: SIG_DFL installs no code of ours.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The Rust runtime ignores SIGPIPE; an ignored signal stays ignored across
    // exec, and the app expects the default.
    // SAFETY: SIG_DFL installs no code of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A new master inherits the listeners at their numbers: clearing
/// close-on-exec is all it takes to hand one on.
///
/// # Safety
/// Only in the forked child: the numbers belong to the parent's `OwnedFd`s.
unsafe fn hand_on_listeners(plan: &ExecPlan) {
    for &fd in &plan.listeners {
        // SAFETY: changes only the child's descriptor flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            // SAFETY: in the forked child (our contract).
            unsafe { fail(plan.error_fd, ChildStage::Setup) };
        }
    }
}

/// Own process group: a terminal's ^C or a signal to the master's group
/// does not reach workers; the master signals them itself.
///
/// # Safety
/// Only in the forked child: it would move the master out of its group.
unsafe fn enter_own_process_group(error_fd: RawFd) {
    // SAFETY: setpgid takes plain numbers and touches no memory.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        // SAFETY: in the forked child (our contract).
        unsafe { fail(error_fd, ChildStage::Setup) };
    }
}

/// Points the worker's stdout and stderr at the plan's descriptors.
///
/// # Safety
/// Only in the forked child: fds 1 and 2 are the master's otherwise.
unsafe fn redirect_stdio(plan: &ExecPlan) {
    for (i, fd) in plan.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            // SAFETY: dup2 on plain numbers; fds 1 and 2 are the child's own.
            if unsafe { libc::dup2(*fd, 1 + i as c_int) } < 0 {
                // SAFETY: in the forked child (our contract).
                unsafe { fail(plan.error_fd, ChildStage::Setup) };
            }
        }
    }
}

/// Switches to the worker's groups, group and user, in that order (after
/// setuid we may no longer change groups).
///
/// # Safety
/// Only in the forked child, and before `die_with_parent`: changing
/// credentials clears the parent-death signal.
unsafe fn switch_credentials(plan: &ExecPlan) {
    if let Some(c) = &plan.credentials {
        // SAFETY: setgroups reads `groups.len()` ids from the plan's vector,
        // alive and unchanged since before the fork; the others take numbers.
        let switched = unsafe {
            libc::setgroups(c.groups.len(), c.groups.as_ptr()) == 0
                && libc::setgid(c.gid) == 0
                && libc::setuid(c.uid) == 0
        };
        if !switched {
            // SAFETY: in the forked child (our contract).
            unsafe { fail(plan.error_fd, ChildStage::Credentials) };
        }
    }
}

/// Dies with the master, so no orphan keeps serving on the port; exits at
/// once if the master died before the death signal was armed.
///
/// # Safety
/// Only in the forked child, after `switch_credentials`.
unsafe fn die_with_parent(plan: &ExecPlan) {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let armed = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if armed != 0 {
        // SAFETY: in the forked child (our contract).
        unsafe { fail(plan.error_fd, ChildStage::Setup) };
    }
    // SAFETY: getppid cannot fail and touches no memory.
    if unsafe { libc::getppid() } != plan.parent {
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or flushing its buffers.
        unsafe { libc::_exit(1) };
    }
}

/// Writes the child's own pid after `LISTEN_PID=` in the environment the
/// plan hands to exec (only the child knows its pid).
///
/// # Safety
/// Only in the forked child: the parent may reuse the plan for another child.
unsafe fn fill_listen_pid(plan: &mut ExecPlan) {
    // SAFETY: getpid cannot fail and touches no memory.
    let pid = unsafe { libc::getpid() };
    // SAFETY: `listen_pid_ptr` points at the plan's 32-byte box, alive and
    // unmoved while the plan lives; bytes 11..23 lie inside it, and nothing
    // else reads or writes them until execve reads the environment.
    let room = unsafe {
        &mut *plan
            .listen_pid_ptr
            .add(LISTEN_PID_PREFIX.len())
            .cast::<[u8; 12]>()
    };
    write_decimal(room, pid);
}

/// Renumbers the listeners to 3, 4, ... and returns the error pipe, moved
/// out of the way. Everything still needed goes above the target range
/// 3..3+n first, so that no dup2 overwrites a descriptor still to be read.
///
/// # Safety
/// Only in the forked child: the fds it overwrites are the master's otherwise.
unsafe fn renumber_listeners(plan: &mut ExecPlan) -> RawFd {
    let floor = 3 + plan.listeners.len() as c_int;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a plain number; no memory involved.
    let error_fd = unsafe { libc::fcntl(plan.error_fd, libc::F_DUPFD_CLOEXEC, floor) };
    if error_fd < 0 {
        // SAFETY: in the forked child (our contract).
        unsafe { fail(plan.error_fd, ChildStage::Setup) };
    }
    for (&fd, moved) in plan.listeners.iter().zip(plan.moved.iter_mut()) {
        // SAFETY: as above.
        *moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if *moved < 0 {
            // SAFETY: in the forked child (our contract).
            unsafe { fail(error_fd, ChildStage::Setup) };
        }
    }
    for (i, &moved) in plan.moved.iter().enumerate() {
        // dup2 clears close-on-exec on the new descriptor: it is inherited.
        // SAFETY: dup2 on plain numbers, all the child's own.
        if unsafe { libc::dup2(moved, 3 + i as c_int) } < 0 {
            // SAFETY: in the forked child (our contract).
            unsafe { fail(error_fd, ChildStage::Setup) };
        }
    }
    error_fd
}

/// Enters the plan's directory, if any, and execs the program.
///
/// # Safety
/// Only in the forked child: it replaces the process.
unsafe fn chdir_and_exec(plan: &ExecPlan, error_fd: RawFd) -> ! {
    if let Some(dir) = &plan.chdir {
        // SAFETY: `dir` is a NUL-terminated string the plan keeps alive.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            // SAFETY: in the forked child (our contract).
            unsafe { fail(error_fd, ChildStage::Chdir) };
        }
    }
    // SAFETY: the program, argv and envp are NUL-terminated strings and
    // null-terminated pointer arrays the plan keeps alive (the LISTEN_PID
    // entry points into its box).
    unsafe {
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        )
    };
    // SAFETY: in the forked child (our contract).
    unsafe { fail(error_fd, ChildStage::Exec) }
}

/// Writes the failure record (pid, stage, errno) and exits 127, the shell's
/// "cannot execute".
///
/// # Safety
/// Only in the forked child: `error_fd` is a plain number there.
unsafe fn fail(error_fd: RawFd, stage: ChildStage) -> ! {
    let errno = Errno::last_raw();
    // SAFETY: getpid cannot fail and touches no memory.
    let pid = unsafe { libc::getpid() };
    let mut record = [0u8; ERROR_RECORD_LEN];
    let p = pid.to_ne_bytes();
    let e = errno.to_ne_bytes();
    let mut i = 0;
    while i < 4 {
        record[i] = p[i];
        record[8 + i] = e[i];
        i += 1;
    }
    record[4] = stage as u8;
    // SAFETY: writes the record from a live local buffer of that length.
    unsafe { libc::write(error_fd, record.as_ptr().cast(), ERROR_RECORD_LEN) };
    // SAFETY: _exit ends the child without running the parent's atexit
    // handlers or flushing its buffers.
    unsafe { libc::_exit(127) }
}

/// Writes `n` in decimal followed by NUL (at most 11 bytes).
fn write_decimal(dst: &mut [u8; 12], n: pid_t) {
    let mut digits = [0u8; 12];
    let mut len = 0;
    let mut v = n as u32;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut i = 0;
    while i < len {
        dst[i] = digits[len - 1 - i];
        i += 1;
    }
    dst[len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        let mut buf = [0xffu8; 12];
        write_decimal(&mut buf, 4194304);
        assert_eq!(&buf[..8], b"4194304\0");
        write_decimal(&mut buf, i32::MAX);
        assert_eq!(&buf[..11], b"2147483647\0");
    }
}
