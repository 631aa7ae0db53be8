//! One accept thread per listener: waits for a connection or a stop, accepts,
//! and hands each connection to a thread of its own. Never shuts the shared
//! listener down (the master and other workers still use it).

use crate::app::App;
use crate::listener::Listener;
use crate::serve::serve;
use std::io;
use std::thread;
use std::time::Duration;

/// Accepts connections until a stop is requested.
pub fn accept_loop(app: &'static App, listener: Listener) {
    app.drain.add_acceptor();
    accept_until_stopped(app, &listener);
    app.drain.remove_acceptor();
}

fn accept_until_stopped(app: &'static App, listener: &Listener) {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [pollfd(listener.fd()), pollfd(app.drain.stop_fd())];
    while !app.drain.is_stopping() {
        // SAFETY: `fds` is a valid, writable array of exactly 2 pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log!("event=poll-error error={err:?}");
                thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if fds[1].revents != 0 || fds[0].revents & libc::POLLNVAL != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // Another worker may win the race and this accept then blocks until the next
        // connection; a stop interrupts it (see `Drain::exit_when_stopped`).
        if !app.drain.enter_accept() {
            return;
        }
        let accepted = listener.accept();
        let guard = app.drain.leave_accept(accepted.is_ok());
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                use io::ErrorKind::{ConnectionAborted, Interrupted, WouldBlock};
                if !matches!(e.kind(), WouldBlock | Interrupted | ConnectionAborted) {
                    log!("event=accept-error error={e:?}");
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK)
                    ) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let Some(guard) = guard else {
            return;
        };
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            let _guard = guard;
            if conn.set_timeouts().is_ok() {
                serve(app, conn);
            }
        });
        if let Err(e) = spawned {
            log!("event=spawn-error error={e:?}");
        }
    }
}
