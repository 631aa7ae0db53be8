//! Starting a worker or a new master: the parent prepares everything the
//! child needs (`ExecPlan`), forks, and the child (`child`) only renumbers
//! fds and execs. A child that fails before exec writes a 12-byte error
//! record (pid, stage, errno) to the plan's error pipe and exits 127.

use super::child::exec_child;
use libc::{c_char, pid_t};
use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use std::ffi::CString;
use std::os::fd::RawFd;

/// Where a worker's setup failed before exec replaced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStage {
    Chdir = 1,
    Exec = 2,
    Setup = 3,
    Credentials = 4,
}

impl ChildStage {
    pub fn from_byte(b: u8) -> Option<ChildStage> {
        match b {
            1 => Some(ChildStage::Chdir),
            2 => Some(ChildStage::Exec),
            3 => Some(ChildStage::Setup),
            4 => Some(ChildStage::Credentials),
            _ => None,
        }
    }
}

/// A failure record a child writes to the error pipe: pid, stage, errno.
pub const ERROR_RECORD_LEN: usize = 12;

pub fn decode_error_record(buf: &[u8; ERROR_RECORD_LEN]) -> (i32, Option<ChildStage>, Errno) {
    let pid = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let stage = ChildStage::from_byte(buf[4]);
    let errno = i32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
    (pid, stage, Errno::from_raw(errno))
}

/// Everything a child needs between fork and exec, prepared by the parent.
pub struct ExecPlan {
    pub(super) program: CString,
    _argv: Vec<CString>,
    pub(super) argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    pub(super) envp_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` followed by room for the digits, filled in by the child.
    listen_pid: Box<[u8; 32]>,
    pub(super) listen_pid_ptr: *mut u8,
    pub(super) chdir: Option<CString>,
    /// Listener fds, to become 3, 4, ... in this order.
    pub(super) listeners: Vec<RawFd>,
    /// Scratch space for the listeners' temporary copies.
    pub(super) moved: Vec<RawFd>,
    pub(super) error_fd: RawFd,
    pub(super) parent: pid_t,
    /// A worker gets its own process group, a parent-death signal and the
    /// listeners renumbered from 3; a new master keeps the fds where they are.
    pub(super) worker: bool,
    /// Descriptors to become the worker's stdout and stderr.
    pub(super) stdio: [Option<RawFd>; 2],
    /// User, group and supplementary groups to switch to.
    pub(super) credentials: Option<Credentials>,
}

/// Who a worker runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

pub(super) const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl ExecPlan {
    /// Prepares a worker's exec: argv, envp and the fd layout. `env` must not
    /// hold `LISTEN_PID`; it is added here with the child's own pid.
    pub fn worker(
        program: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        chdir: Option<CString>,
        listeners: Vec<RawFd>,
        error_fd: RawFd,
    ) -> ExecPlan {
        let mut listen_pid = Box::new([0u8; 32]);
        listen_pid[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
        let listen_pid_ptr = listen_pid.as_mut_ptr();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if !listeners.is_empty() {
            envp_ptrs.push(listen_pid_ptr as *const c_char);
        }
        envp_ptrs.push(std::ptr::null());
        let moved = vec![-1; listeners.len()];
        ExecPlan {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            envp_ptrs,
            listen_pid,
            listen_pid_ptr,
            chdir,
            listeners,
            moved,
            error_fd,
            parent: std::process::id() as pid_t,
            worker: true,
            stdio: [None, None],
            credentials: None,
        }
    }

    /// Sends the worker's stdout and stderr to these descriptors.
    pub fn with_stdio(mut self, stdout: Option<RawFd>, stderr: Option<RawFd>) -> ExecPlan {
        self.stdio = [stdout, stderr];
        self
    }

    /// Runs the worker as another user.
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> ExecPlan {
        self.credentials = credentials;
        self
    }

    /// Prepares the exec of a new master (an upgrade): `listeners` stay at
    /// their numbers and are inherited; no new process group, no death signal.
    pub fn master(
        program: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        chdir: Option<CString>,
        listeners: Vec<RawFd>,
        error_fd: RawFd,
    ) -> ExecPlan {
        let mut plan = ExecPlan::worker(program, argv, env, chdir, Vec::new(), error_fd);
        plan.listeners = listeners;
        plan.worker = false;
        plan
    }
}

/// Forks a child that execs `plan`. Returns the child's pid; a failure of
/// the child's setup or exec is reported through `plan.error_fd`.
pub fn spawn(plan: &mut ExecPlan) -> Result<pid_t, Errno> {
    // Keep the box alive and unmoved across the fork; the child writes into it
    // through `listen_pid_ptr`.
    let _ = &plan.listen_pid;
    // Signals stay blocked across the fork until the child has reset our
    // handlers: a handler run in the child would write into the master's
    // self-pipe, and the master would act on a signal that was not its own.
    let mut old = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe
    // calls on memory prepared before the fork and never returns, so a fork
    // is sound even if this process had other threads.
    let result = match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        // SAFETY: this is the freshly forked child, before exec.
        0 => unsafe { exec_child(plan) },
        pid => Ok(pid),
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_record_round_trip() {
        let mut buf = [0u8; ERROR_RECORD_LEN];
        buf[..4].copy_from_slice(&4242i32.to_ne_bytes());
        buf[4] = ChildStage::Exec as u8;
        buf[8..].copy_from_slice(&libc::ENOENT.to_ne_bytes());
        assert_eq!(
            decode_error_record(&buf),
            (4242, Some(ChildStage::Exec), Errno::ENOENT)
        );
    }
}
