//! The graceful stop: once TERM or QUIT asks for it, no new connection is
//! taken, in-flight requests finish, and the process exits 0 when none is left.
//!
//! Accept threads wait in poll(2) on their listener and on a stop pipe that a
//! stop makes readable. One that lost a race for a connection may still sit in
//! accept(2), where it could be handed a connection that exiting would reset,
//! so the exit waits for it to leave, interrupting it with SIGUSR2.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use std::{io, process};

struct State {
    stopping: bool,
    inflight: usize,
    /// Accept threads inside accept(2), which may still hand us a connection.
    accepting: usize,
    /// Accept threads still running, to interrupt with SIGUSR2 on a stop.
    acceptors: Vec<libc::pthread_t>,
}

pub struct Drain {
    /// `State::stopping`, readable without the lock.
    stopping: AtomicBool,
    state: Mutex<State>,
    cond: Condvar,
    /// A byte written here makes `stop_rx` readable for every accept thread's poll().
    stop_tx: UnixStream,
    stop_rx: UnixStream,
}

impl Drain {
    /// Fails only if the stop pipe cannot be created.
    pub fn new() -> io::Result<Drain> {
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        Ok(Drain {
            stopping: AtomicBool::new(false),
            state: Mutex::new(State {
                stopping: false,
                inflight: 0,
                accepting: 0,
                acceptors: Vec::new(),
            }),
            cond: Condvar::new(),
            stop_tx,
            stop_rx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The descriptor that becomes readable once a stop was requested.
    pub fn stop_fd(&self) -> RawFd {
        self.stop_rx.as_raw_fd()
    }

    /// Starts the graceful stop (once; later calls do nothing).
    pub fn begin_stop(&self, signal: &str) {
        let mut st = self.lock();
        if st.stopping {
            return;
        }
        st.stopping = true;
        self.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.stop_tx).write_all(b"x");
        log!("event=stopping signal={signal} inflight={}", st.inflight);
        self.cond.notify_all();
    }

    /// Sleeps for `delay`, or less if a stop is requested meanwhile.
    pub fn wait_unless_stopped(&self, delay: Duration) {
        let st = self.lock();
        drop(self.cond.wait_timeout_while(st, delay, |s| !s.stopping));
    }

    /// Blocks until a stop was requested and no connection is left, then exits 0.
    ///
    /// An accept thread blocked in accept(2) (it lost a race for a connection
    /// to another worker) could still be handed one; exiting then would reset
    /// it. So it is interrupted with SIGUSR2, again until it has left accept.
    pub fn exit_when_stopped(&self) -> ! {
        let mut st = self.lock();
        while !(st.stopping && st.inflight == 0 && st.accepting == 0) {
            if st.stopping && st.accepting > 0 {
                for &thread in &st.acceptors {
                    // SAFETY: threads remove themselves from `acceptors` (under this
                    // lock) before they end, so each id names a live thread.
                    unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
                }
                st = self
                    .cond
                    .wait_timeout(st, Duration::from_millis(10))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            } else {
                st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
        log!("event=exit status=0");
        process::exit(0);
    }

    /// Registers the calling thread as an accept thread, to be interrupted on a stop.
    pub fn add_acceptor(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().acceptors.push(me);
    }

    /// Unregisters the calling thread; it must not call accept(2) afterwards.
    pub fn remove_acceptor(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock()
            .acceptors
            // SAFETY: pthread_equal only compares two thread ids.
            .retain(|t| unsafe { libc::pthread_equal(*t, me) } == 0);
        self.cond.notify_all();
    }

    /// Called before accept(2): false if a stop was requested (do not accept).
    pub fn enter_accept(&self) -> bool {
        let mut st = self.lock();
        if st.stopping {
            return false;
        }
        st.accepting += 1;
        true
    }

    /// Called after accept(2), with whether it returned a connection; the
    /// connection is then counted until the returned guard is dropped.
    pub fn leave_accept(&'static self, accepted: bool) -> Option<Inflight> {
        let mut st = self.lock();
        st.accepting -= 1;
        self.cond.notify_all();
        if accepted {
            st.inflight += 1;
            Some(Inflight(self))
        } else {
            None
        }
    }
}

/// Counts an open connection; dropping it wakes the main thread when the last one ends.
pub struct Inflight(&'static Drain);

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.inflight -= 1;
        if st.inflight == 0 {
            self.0.cond.notify_all();
        }
    }
}
