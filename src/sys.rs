//! The few places that need `unsafe`: signal handlers, and fork + exec of a
//! worker. Everything here is small and says why it is sound.
//!
//! Between fork and exec the child runs only async-signal-safe calls on memory
//! prepared before the fork (`ExecPlan`): no allocation, no locks, no panics.

use libc::{c_char, c_int, pid_t};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
/// the kernel itself would).
pub fn record_signals(signals: &[c_int], pipe: OwnedFd) -> Result<(), std::io::Error> {
    SIGNAL_PIPE.store(pipe.as_raw_fd(), Ordering::SeqCst);
    // The write end lives for the whole process.
    std::mem::forget(pipe);
    for &signal in signals {
        HANDLED.fetch_or(1 << signal, Ordering::SeqCst);
        // SAFETY: the action only calls write(2) and atomic operations, which
        // are async-signal-safe, and preserves errno.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                let saved = Errno::last_raw();
                let byte = signal as u8;
                let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
                let written = libc::write(fd, (&byte as *const u8).cast(), 1);
                if written != 1 {
                    OVERFLOW.fetch_or(1 << signal, Ordering::SeqCst);
                }
                Errno::set_raw(saved);
            })?;
        }
    }
    Ok(())
}

/// Takes the signals that overflowed the pipe since the last call.
pub fn take_overflowed_signals() -> u64 {
    OVERFLOW.swap(0, Ordering::SeqCst)
}

/// Whether fd 0 is a terminal (then WINCH means a resized window).
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Marks every open descriptor from 3 up close-on-exec, except `keep`, so
/// nothing the master inherited leaks into workers.
pub fn set_cloexec_from_3(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number that may since have closed only
        // fails with EBADF; no memory is involved.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

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
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` followed by room for the digits, filled in by the child.
    listen_pid: Box<[u8; 32]>,
    listen_pid_ptr: *mut u8,
    chdir: Option<CString>,
    /// Listener fds, to become 3, 4, ... in this order.
    listeners: Vec<RawFd>,
    /// Scratch space for the listeners' temporary copies.
    moved: Vec<RawFd>,
    error_fd: RawFd,
    parent: pid_t,
    /// A worker gets its own process group, a parent-death signal and the
    /// listeners renumbered from 3; a new master keeps the fds where they are.
    worker: bool,
    /// Descriptors to become the worker's stdout and stderr.
    stdio: [Option<RawFd>; 2],
    /// User, group and supplementary groups to switch to.
    credentials: Option<Credentials>,
}

/// Who a worker runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

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
    // SAFETY: sigfillset initialises the set; sigprocmask reads it and
    // writes the old mask into `old`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the master is single-threaded; the child only runs
    // `exec_child`, which is async-signal-safe and never returns.
    let result = match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => unsafe { exec_child(plan) },
        pid => Ok(pid),
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// The child side. Only async-signal-safe calls; ends in exec or `_exit`.
///
/// # Safety
/// Must be called only in a freshly forked child of a single-threaded parent.
unsafe fn exec_child(plan: &mut ExecPlan) -> ! {
    let handled = HANDLED.load(Ordering::Relaxed);
    for signal in 1..64 {
        if handled & (1 << signal) != 0 {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let empty: libc::sigset_t = {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // The Rust runtime ignores SIGPIPE; an ignored signal stays ignored across
    // exec, and the app expects the default.
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);

    if !plan.worker {
        for i in 0..plan.listeners.len() {
            // Clearing close-on-exec is all it takes to hand a listener on.
            if libc::fcntl(plan.listeners[i], libc::F_SETFD, 0) != 0 {
                fail(plan.error_fd, ChildStage::Setup);
            }
        }
        if let Some(dir) = &plan.chdir {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(plan.error_fd, ChildStage::Chdir);
            }
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        fail(plan.error_fd, ChildStage::Exec)
    }

    // Own process group: a terminal's ^C or a signal to the master's group
    // does not reach workers; the master signals them itself.
    if libc::setpgid(0, 0) != 0 {
        fail(plan.error_fd, ChildStage::Setup);
    }
    for (i, fd) in plan.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            if libc::dup2(*fd, 1 + i as c_int) < 0 {
                fail(plan.error_fd, ChildStage::Setup);
            }
        }
    }
    // Before the death signal: changing credentials clears it.
    if let Some(c) = &plan.credentials {
        if libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0
            || libc::setgid(c.gid) != 0
            || libc::setuid(c.uid) != 0
        {
            fail(plan.error_fd, ChildStage::Credentials);
        }
    }
    // Die with the master, so no orphan keeps serving on the port.
    if libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
    {
        fail(plan.error_fd, ChildStage::Setup);
    }
    if libc::getppid() != plan.parent {
        libc::_exit(1);
    }

    let pid = libc::getpid();
    write_decimal(plan.listen_pid_ptr.add(LISTEN_PID_PREFIX.len()), pid);

    // Move everything we still need above the target range 3..3+n first, so
    // that the dup2 calls below never overwrite a descriptor still to be read.
    let floor = 3 + plan.listeners.len() as c_int;
    let error_fd = libc::fcntl(plan.error_fd, libc::F_DUPFD_CLOEXEC, floor);
    if error_fd < 0 {
        fail(plan.error_fd, ChildStage::Setup);
    }
    for i in 0..plan.listeners.len() {
        let moved = libc::fcntl(plan.listeners[i], libc::F_DUPFD_CLOEXEC, floor);
        if moved < 0 {
            fail(error_fd, ChildStage::Setup);
        }
        plan.moved[i] = moved;
    }
    for i in 0..plan.moved.len() {
        // dup2 clears close-on-exec on the new descriptor: it is inherited.
        if libc::dup2(plan.moved[i], 3 + i as c_int) < 0 {
            fail(error_fd, ChildStage::Setup);
        }
    }

    if let Some(dir) = &plan.chdir {
        if libc::chdir(dir.as_ptr()) != 0 {
            fail(error_fd, ChildStage::Chdir);
        }
    }
    libc::execve(
        plan.program.as_ptr(),
        plan.argv_ptrs.as_ptr(),
        plan.envp_ptrs.as_ptr(),
    );
    fail(error_fd, ChildStage::Exec)
}

/// Writes the failure record and exits 127, the shell's "cannot execute".
unsafe fn fail(error_fd: RawFd, stage: ChildStage) -> ! {
    let errno = *libc::__errno_location();
    let pid = libc::getpid();
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
    libc::write(error_fd, record.as_ptr().cast(), ERROR_RECORD_LEN);
    libc::_exit(127)
}

/// Writes `n` in decimal followed by NUL at `dst` (room for 12 bytes needed).
unsafe fn write_decimal(dst: *mut u8, n: pid_t) {
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
        *dst.add(i) = digits[len - 1 - i];
        i += 1;
    }
    *dst.add(len) = 0;
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

    #[test]
    fn decimal() {
        let mut buf = [0xffu8; 16];
        // SAFETY: 16 bytes of room.
        unsafe { write_decimal(buf.as_mut_ptr(), 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
    }
}
