//! systemd integration, seen from systemd's side: the test binds the notify
//! socket (with `SO_PASSCRED`, so every datagram is known by its sender's
//! pid) and checks the exact sequence a master sends through start, HUP,
//! USR2 and stop; watchdog pings; and socket activation with `LISTEN_FDS`.

use crate::support::*;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One datagram: who sent it (from the kernel) and what it says.
#[derive(Debug, PartialEq)]
struct Note {
    pid: i32,
    text: String,
}

const WATCHDOG: &str = "WATCHDOG=1\n";

/// The supervisor's end of `NOTIFY_SOCKET`.
struct Supervisor {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Supervisor {
    fn bind(dir: &TempDir, name: &str) -> Supervisor {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        setsockopt(&socket, sockopt::PassCred, &true).expect("SO_PASSCRED");
        Supervisor { socket, path }
    }

    /// One datagram, waiting at most `timeout` (`None`: do not wait).
    fn receive(&self, timeout: Option<std::time::Duration>) -> Option<Note> {
        let flags = match timeout {
            Some(t) => {
                // A zero timeout would mean "block forever".
                let t = t.max(std::time::Duration::from_millis(1));
                self.socket.set_read_timeout(Some(t)).expect("SO_RCVTIMEO");
                MsgFlags::empty()
            }
            None => MsgFlags::MSG_DONTWAIT,
        };
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
            {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(_) => return None,
            };
            let len = msg.bytes;
            let pid = msg
                .cmsgs()
                .ok()
                .and_then(|mut c| {
                    c.find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                        _ => None,
                    })
                })
                .unwrap_or(0);
            return Some(Note {
                pid,
                text: String::from_utf8_lossy(&buf[..len]).into_owned(),
            });
        }
    }

    /// The next datagram that is not a watchdog ping; panics at the deadline.
    fn next(&self, what: &str) -> Note {
        let deadline = Instant::now() + secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for the notification: {what}");
            }
            match self.receive(Some(left)) {
                Some(note) if note.text == WATCHDOG => continue,
                Some(note) => return note,
                None => continue,
            }
        }
    }

    /// Every datagram already queued, watchdog pings included.
    fn queued(&self) -> Vec<Note> {
        std::iter::from_fn(|| self.receive(None)).collect()
    }

    /// Every datagram already queued, without watchdog pings.
    fn pending(&self) -> Vec<Note> {
        self.queued()
            .into_iter()
            .filter(|n| n.text != WATCHDOG)
            .collect()
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

/// `RELOADING=1\nMONOTONIC_USEC=<now>\nSTATUS=<status>\n` from `pid`, with a
/// timestamp taken after `since` (our CLOCK_MONOTONIC) and before now.
fn assert_reloading(note: &Note, pid: i32, status: &str, since: u64) {
    let now = monotonic_usec();
    let rest = note
        .text
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("expected RELOADING=1, got {note:?}"));
    let (usec, tail) = rest
        .split_once('\n')
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC line: {note:?}"));
    assert!(
        !usec.is_empty() && usec.bytes().all(|b| b.is_ascii_digit()),
        "MONOTONIC_USEC is not digits: {note:?}"
    );
    let usec: u64 = usec.parse().expect("MONOTONIC_USEC");
    assert!(
        (since..=now).contains(&usec),
        "MONOTONIC_USEC={usec} is not between {since} and {now}: {note:?}"
    );
    assert_eq!(tail, format!("STATUS={status}\n"), "{note:?}");
    assert_eq!(note.pid, pid, "sent by the wrong process: {note:?}");
}

fn ready_note(pid: i32, generation: u32) -> Note {
    Note {
        pid,
        text: format!("READY=1\nSTATUS=2/2 workers ready, generation {generation}\n"),
    }
}

/// Reads exactly one response from a keep-alive connection; its body.
fn read_response(stream: &mut UnixStream) -> String {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if raw.len() >= end + 4 + len {
                return String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
            }
        }
        let n = stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response: {raw:?}");
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn notifies_ready_reloading_mainpid_and_stopping_in_order() {
    let dir = TempDir::new();
    let systemd = Supervisor::bind(&dir, "notify.sock");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let sock = dir.join("app.sock");
    let listen = dir.unix("app.sock");
    let mut master = Fixture::new(&dir)
        .workers(2)
        .pid_file(&pid_file)
        .listen(&listen)
        // The worker held below must not be killed before we let it go.
        .args(&["--graceful-timeout", "300s"])
        .setup(notify_to(&systemd))
        .start();
    let first = master.pid();

    assert_eq!(systemd.next("READY at start"), ready_note(first, 1));

    // HUP: RELOADING, then READY once the rolling restart is done.
    let since = monotonic_usec();
    let (code, out, err) = client(&["reload", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "reload: {out}{err}\n{}", master.log());
    assert_reloading(
        &systemd.next("RELOADING for HUP"),
        first,
        "reloading (HUP)",
        since,
    );
    assert_eq!(systemd.next("READY after HUP"), ready_note(first, 2));

    // Hold an old worker, and so the old master, alive: a served keep-alive
    // connection with the next request begun. The worker waits for the rest
    // of it even while stopping, until we hang up.
    // (A replaced worker may still accept a connection before its stop
    // signal lands: retry until a generation 2 worker answers.)
    let mut held = master.wait_for("a generation 2 worker to answer", secs(20), |_| {
        let mut stream = UnixStream::connect(&sock).expect("connect");
        stream.set_read_timeout(Some(secs(10))).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let body = read_response(&mut stream);
        (fields(&body)["generation"] == "2").then_some(stream)
    });
    held.write_all(b"GET / HTTP/1.1\r\n").unwrap();

    // USR2: RELOADING from the old master, then MAINPID + READY from the new
    // one, sent before the old master was told to quit.
    let since = monotonic_usec();
    let upgrade = {
        let pid = pid.to_string();
        std::thread::spawn(move || client(&["upgrade", "-p", &pid, "--wait"], secs(120)))
    };
    assert_reloading(
        &systemd.next("RELOADING for USR2"),
        first,
        "upgrading (USR2)",
        since,
    );
    let mainpid = systemd.next("MAINPID from the new master");
    let old_running = is_running(first);
    let pid_file_named = read_pid(&pid_file);
    let new = mainpid.pid;
    assert_ne!(new, first, "{mainpid:?}");
    assert_eq!(
        mainpid.text,
        format!("MAINPID={new}\nREADY=1\nSTATUS=2/2 workers ready, generation 3\n"),
        "MAINPID must name its sender, the new master"
    );
    assert!(
        old_running,
        "the old master was gone when MAINPID arrived; log:\n{}",
        master.log()
    );
    assert_eq!(
        pid_file_named,
        Some(new),
        "the pid file did not name the new master when MAINPID arrived"
    );
    drop(held);
    let (code, out, err) = upgrade.join().expect("upgrade thread");
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    assert!(
        out.starts_with(&format!("upgraded: pid {first} -> {new}")),
        "{out}"
    );
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());

    // The old master retired without a word: no READY, no STOPPING=1.
    assert_eq!(
        systemd.pending(),
        vec![],
        "the retired master (pid {first}) or the new one sent more; log:\n{}",
        master.log()
    );

    let (code, out, err) = client(&["stop", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "stop: {out}{err}\n{}", master.log());
    assert_eq!(
        systemd.next("STOPPING at stop"),
        Note {
            pid: new,
            text: "STOPPING=1\n".into()
        }
    );
    // The new master is gone: anything it sent is queued by now.
    assert_eq!(systemd.pending(), vec![], "{}", master.log());
}

#[test]
fn a_failed_upgrade_or_reload_reports_ready_again() {
    let dir = TempDir::new();
    let systemd = Supervisor::bind(&dir, "notify.sock");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let config = dir.join("forkmaster.yml");
    let write_config = |command: &str| {
        let text = format!(
            "pid: {pid}\nlisten: ['{listen}']\nworkers: 2\nready: notify\ncommand: ['{command}']\n",
            listen = dir.unix("app.sock"),
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config(demo());
    let mut master = Fixture::config(&dir, &config)
        .setup(notify_to(&systemd))
        .start();
    master.watch_pid_file(&pid_file);
    let old = master.pid();
    assert_eq!(systemd.next("READY at start"), ready_note(old, 1));

    write_config(dir.join("no-such-app").to_str().unwrap());
    let since = monotonic_usec();
    let (code, out, err) = client(&["upgrade", "-p", pid, "--wait"], secs(120));
    assert_eq!(code, 1, "upgrade: {out}{err}\n{}", master.log());
    assert!(err.contains("upgrade failed"), "{err}");

    assert_reloading(
        &systemd.next("RELOADING for USR2"),
        old,
        "upgrading (USR2)",
        since,
    );
    // The old master takes the service back: MAINPID names it again.
    let back = systemd.next("MAINPID + READY after the failure");
    assert_eq!(back.pid, old);
    assert_eq!(
        back.text,
        format!("MAINPID={old}\n{}", ready_note(old, 1).text)
    );
    let served = get(&Target::unix(dir.join("app.sock")), "/").expect("GET /");
    assert_eq!(served.fields()["generation"], "1");
    assert_eq!(read_pid(&pid_file), Some(old));

    // A reload that cannot read its config: RELOADING, then READY again.
    std::fs::write(&config, "workers: [not a number\n").unwrap();
    let since = monotonic_usec();
    let (code, out, err) = client(&["reload", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 1, "reload: {out}{err}\n{}", master.log());
    assert_reloading(
        &systemd.next("RELOADING for HUP"),
        old,
        "reloading (HUP)",
        since,
    );
    assert_eq!(
        systemd.next("READY after the failed reload"),
        ready_note(old, 1)
    );

    // The old master is the service again: its stop is the service's.
    let (code, out, err) = client(&["stop", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "stop: {out}{err}\n{}", master.log());
    assert_eq!(
        systemd.next("STOPPING at stop"),
        Note {
            pid: old,
            text: "STOPPING=1\n".into()
        }
    );
    assert!(master.wait_exit(secs(30)).success());
    // Nothing from the new master that failed.
    assert_eq!(systemd.pending(), vec![], "{}", master.log());
}

/// Starts a one-worker master notifying `systemd`, with `WATCHDOG_USEC=200000`
/// and `WATCHDOG_PID` as given (`$$`: the master's own pid, set by the shell
/// that execs it; `None`: unset).
/// What systemd gives a `Type=notify` service without a watchdog.
fn notify_to(systemd: &Supervisor) -> impl FnOnce(&mut Command) + '_ {
    |cmd| {
        cmd.env("NOTIFY_SOCKET", &systemd.path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
    }
}

fn start_watched(
    dir: &TempDir,
    systemd: &Supervisor,
    name: &str,
    watchdog_pid: Option<&str>,
) -> Master {
    let pid_file = dir.join(&format!("{name}.pid"));
    let listen = dir.unix(&format!("{name}-app.sock"));
    let script = match watchdog_pid {
        Some("$$") => r#"WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@""#,
        _ => r#"exec "$0" "$@""#,
    };
    Fixture::new(dir)
        .pid_file(&pid_file)
        .listen(listen)
        .through_shell(script)
        .setup(|cmd| {
            cmd.env("NOTIFY_SOCKET", &systemd.path)
                .env("WATCHDOG_USEC", "200000")
                .env_remove("WATCHDOG_PID");
            if let Some(pid) = watchdog_pid.filter(|p| *p != "$$") {
                cmd.env("WATCHDOG_PID", pid);
            }
        })
        .start()
}

fn count_pings(systemd: &Supervisor, from: i32, seen: &mut usize) -> usize {
    for note in systemd.queued() {
        assert_eq!(note.pid, from, "{note:?}");
        if note.text == WATCHDOG {
            *seen += 1;
        }
    }
    *seen
}

#[test]
fn watchdog_pings_go_out_only_when_meant_for_the_master() {
    let dir = TempDir::new();
    let unset = Supervisor::bind(&dir, "unset.sock");
    let own = Supervisor::bind(&dir, "own.sock");
    let other = Supervisor::bind(&dir, "other.sock");
    let a = start_watched(&dir, &unset, "unset", None);
    let b = start_watched(&dir, &own, "own", Some("$$"));
    let c = start_watched(&dir, &other, "other", Some("1"));

    for (master, systemd, what) in [(&a, &unset, "unset"), (&b, &own, "own pid")] {
        let mut seen = 0;
        master.wait_for(
            &format!("3 WATCHDOG=1 with WATCHDOG_PID {what}"),
            secs(10),
            |_| (count_pings(systemd, master.pid(), &mut seen) >= 3).then_some(()),
        );
    }

    // WATCHDOG_PID names another process: not a single ping. The status is
    // answered by the same loop pass that fires due timers, after them: once
    // it reports an uptime of 10 ping intervals, any ping would be queued.
    let pid_file = dir.join("other.pid");
    let pid_file = pid_file.to_str().unwrap();
    c.wait_log("event=all-ready", secs(20));
    c.wait_for("the master to be up for 1s", secs(20), |_| {
        let (code, json, _) = client(&["status", "-p", pid_file, "--json"], secs(10));
        let json: serde_json::Value = serde_json::from_str(&json).ok()?;
        (code == 0 && json["uptime_secs"].as_f64()? >= 1.0).then_some(())
    });
    let notes = other.queued();
    assert_eq!(
        notes,
        vec![Note {
            pid: c.pid(),
            text: "READY=1\nSTATUS=1/1 workers ready, generation 1\n".into()
        }],
        "only READY=1 expected; log:\n{}",
        c.log()
    );
}

fn env_lines(target: &Target) -> Vec<String> {
    let r = get(target, "/env").expect("GET /env");
    assert_eq!(r.status, 200);
    r.body.lines().map(str::to_string).collect()
}

#[test]
fn workers_never_see_the_supervisors_notify_socket() {
    let dir = TempDir::new();
    let systemd = Supervisor::bind(&dir, "notify.sock");
    let start = |name: &str, ready: &str| {
        Fixture::new(&dir)
            .unix(name)
            .ready(ready)
            .setup(|cmd| {
                cmd.env("NOTIFY_SOCKET", &systemd.path)
                    .env("WATCHDOG_USEC", "600000000")
                    .env_remove("WATCHDOG_PID");
            })
            .start()
    };
    let delay = start("delay.sock", "delay:100ms");
    let notify = start("notify-app.sock", "notify");
    delay.wait_ready();
    notify.wait_ready();

    let env = env_lines(&Target::unix(dir.join("delay.sock")));
    let leaked: Vec<_> = env
        .iter()
        .filter(|l| l.starts_with("NOTIFY_SOCKET=") || l.starts_with("WATCHDOG_"))
        .collect();
    assert!(leaked.is_empty(), "without --ready notify: {leaked:?}");

    let env = env_lines(&Target::unix(dir.join("notify-app.sock")));
    let notify_socket: Vec<_> = env
        .iter()
        .filter(|l| l.starts_with("NOTIFY_SOCKET=") || l.starts_with("WATCHDOG_"))
        .collect();
    assert_eq!(
        notify_socket,
        vec![&format!(
            "NOTIFY_SOCKET={}",
            crate::support::master_notify_socket(notify.pid())
        )],
        "with --ready notify"
    );
}

/// Starts forkmaster as systemd socket activation does: `listener` as fd 3,
/// `LISTEN_FDS=1`, and `LISTEN_PID` the master's own pid (`None`: set by a
/// shell that then execs forkmaster, keeping its pid) or the one given.
fn start_activated(
    fixture: Fixture,
    listener: &UnixListener,
    listen_pid: Option<&str>,
    fdnames: Option<&str>,
) -> Master {
    let script = match listen_pid {
        None => r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#,
        Some(_) => r#"exec "$0" "$@""#,
    };
    let fd = listener.as_raw_fd();
    let (listen_pid, fdnames) = (listen_pid.map(str::to_string), fdnames.map(str::to_string));
    fixture
        .through_shell(script)
        .setup(move |cmd| {
            cmd.env("LISTEN_FDS", "1")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDNAMES")
                .env_remove("NOTIFY_SOCKET");
            if let Some(pid) = listen_pid {
                cmd.env("LISTEN_PID", pid);
            }
            if let Some(names) = fdnames {
                cmd.env("LISTEN_FDNAMES", names);
            }
            // SAFETY: between fork and exec the closure only calls fcntl(2)
            // and dup2(2), which are async-signal-safe, and allocates
            // nothing; `fd` stays open in the parent (we borrow `listener`)
            // until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 onto itself would keep close-on-exec set.
                    let rc = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
        .start()
}

fn assert_is_socket(path: &Path) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
}

#[test]
fn serves_on_an_activated_socket_without_listen_and_leaves_it_on_stop() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let fixture = Fixture::new(&dir).workers(2).pid_file(&pid_file);
    let mut master = start_activated(fixture, &listener, None, None);
    let log = master.wait_ready();
    let line = format!(
        "event=listen addr=unix:{} fd=3 name=unknown how=activated",
        path.display()
    );
    assert!(log.contains(&line), "no {line:?} in:\n{log}");

    let target = Target::unix(&path);
    let served = wait_serving(&target);
    assert_eq!(served["generation"], "1");
    let env = env_lines(&target);
    assert!(env.contains(&"LISTEN_FDS=1".to_string()), "{env:?}");
    assert!(
        env.contains(&"LISTEN_FDNAMES=unknown".to_string()),
        "{env:?}"
    );

    let (code, out, err) = client(&["stop", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "stop: {out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    // systemd owns the socket file: it stays, and the socket still listens.
    assert_is_socket(&path);
    UnixStream::connect(&path).expect("the activated socket still listens");
}

#[test]
fn adopts_an_activated_socket_by_name() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let other = dir.join("other.sock");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let named = format!("web=unix:{}", other.display());
    let fixture = Fixture::new(&dir).pid_file(&pid_file).listen(&named);
    let mut master = start_activated(fixture, &listener, None, Some("web"));
    let log = master.wait_ready();
    let line = format!(
        "event=listen addr=unix:{} fd=3 name=web how=activated",
        path.display()
    );
    assert!(log.contains(&line), "no {line:?} in:\n{log}");
    assert!(
        !other.exists(),
        "bound {} instead of adopting",
        other.display()
    );

    let target = Target::unix(&path);
    wait_serving(&target);
    let env = env_lines(&target);
    assert!(env.contains(&"LISTEN_FDNAMES=web".to_string()), "{env:?}");

    let (code, out, err) = client(&["stop", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "stop: {out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    assert_is_socket(&path);
}

#[test]
fn ignores_activation_meant_for_another_pid() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");

    // Nothing else to listen on: the usual error, exit 1.
    let fixture = Fixture::new(&dir).no_ready();
    let mut master = start_activated(fixture, &listener, Some("1"), None);
    let status = master.wait_exit(secs(30));
    let log = master.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].starts_with("forkmaster: no listener: "), "{log}");

    // With --listen it binds its own, and the socket meant for another
    // process is not adopted.
    let own = dir.join("own.sock");
    let listen = format!("unix:{}", own.display());
    let master = start_activated(
        Fixture::new(&dir).listen(&listen),
        &listener,
        Some("1"),
        None,
    );
    let log = master.wait_ready();
    assert!(
        log.contains(&format!(
            "event=listen addr={listen} fd=3 name=unknown how=bound"
        )),
        "{log}"
    );
    assert_not_logged(&log, "how=activated");
    let env = env_lines(&Target::unix(&own));
    assert!(env.contains(&"LISTEN_FDS=1".to_string()), "{env:?}");
}

#[test]
fn an_upgrade_keeps_an_activated_socket_adopted_by_name() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let other = dir.join("other.sock");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let named = format!("web=unix:{}", other.display());
    let fixture = Fixture::new(&dir).pid_file(&pid_file).listen(&named);
    let mut master = start_activated(fixture, &listener, None, Some("web"));
    master.wait_ready();

    let (code, out, err) = client(&["upgrade", "-p", pid, "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    let log = master.log();
    assert!(
        !other.exists(),
        "the new master bound {} instead of keeping the activated socket; log:\n{log}",
        other.display()
    );
    assert_no_event(&log, "listen-closed");
    let target = Target::unix(&path);
    let served = wait_serving(&target);
    assert_eq!(served["generation"], "2");
    let env = env_lines(&target);
    assert!(env.contains(&"LISTEN_FDNAMES=web".to_string()), "{env:?}");
}

#[test]
fn an_upgrade_keeps_the_names_of_activated_sockets() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let fixture = Fixture::new(&dir).pid_file(&pid_file);
    let mut master = start_activated(fixture, &listener, None, Some("web"));
    master.wait_ready();
    let target = Target::unix(&path);
    let env = env_lines(&target);
    assert!(env.contains(&"LISTEN_FDNAMES=web".to_string()), "{env:?}");

    let (code, out, err) = client(&["upgrade", "-p", pid, "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    let served = wait_serving(&target);
    assert_eq!(served["generation"], "2");
    let env = env_lines(&target);
    let listen: Vec<_> = env.iter().filter(|l| l.starts_with("LISTEN_")).collect();
    assert!(
        listen.contains(&&"LISTEN_FDNAMES=web".to_string()),
        "{listen:?}\n{}",
        master.log()
    );
}

#[test]
fn an_activated_socket_matched_by_address_survives_an_upgrade_and_stop() {
    let dir = TempDir::new();
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let pid_file = dir.join("app.pid");
    let pid = pid_file.to_str().unwrap();
    let listen = format!("unix:{}", path.display());
    let fixture = Fixture::new(&dir).pid_file(&pid_file).listen(&listen);
    let mut master = start_activated(fixture, &listener, None, None);
    let log = master.wait_ready();
    assert!(
        log.contains(&format!(
            "event=listen addr={listen} fd=3 name=unknown how=activated"
        )),
        "{log}"
    );

    let (code, out, err) = client(&["upgrade", "-p", pid, "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    let target = Target::unix(&path);
    assert_eq!(wait_serving(&target)["generation"], "2");
    let log = master.log();
    let new = read_pid(&pid_file).expect("pid file");
    assert!(
        log.contains(&format!(
            "forkmaster[{new}] event=listen addr={listen} fd=3 name=unknown how=activated"
        )),
        "{log}"
    );

    // Still systemd's socket after the handoff: the new master leaves it too.
    let (code, out, err) = client(&["stop", "-p", pid, "--wait"], secs(60));
    assert_eq!(code, 0, "stop: {out}{err}\n{}", master.log());
    assert_is_socket(&path);
}

#[test]
fn a_rollback_hands_the_service_back_to_the_old_master() {
    let dir = TempDir::new();
    let systemd = Supervisor::bind(&dir, "notify.sock");
    let pid_file = dir.join("app.pid");
    let master = Fixture::new(&dir)
        .args(&["--retire", "manual"])
        .workers(2)
        .pid_file(&pid_file)
        .unix("app.sock")
        .setup(notify_to(&systemd))
        .start();
    let old = master.pid();
    assert_eq!(systemd.next("READY at start"), ready_note(old, 1));

    let since = monotonic_usec();
    master.signal(Signal::SIGUSR2);
    assert_reloading(&systemd.next("RELOADING"), old, "upgrading (USR2)", since);
    let mainpid = systemd.next("MAINPID from the new master");
    let new = mainpid.pid;
    assert!(
        mainpid.text.starts_with(&format!("MAINPID={new}\n")),
        "{mainpid:?}"
    );

    // Rollback: the old master kept its workers; the new one is stopped.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new), Signal::SIGQUIT).unwrap();
    let mut notes = Vec::new();
    while !notes
        .iter()
        .any(|n: &Note| n.pid == old && n.text.contains("READY=1\n"))
    {
        notes.push(systemd.next("READY from the old master after the rollback"));
    }
    assert_eq!(read_pid(&pid_file), Some(old));
    assert!(
        !notes.iter().any(|n| n.text.contains("STOPPING=1")),
        "the service was reported stopping while the old master serves: {notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.text.contains(&format!("MAINPID={old}\n"))),
        "systemd was never told the old master is the main process again: {notes:?}"
    );
}
