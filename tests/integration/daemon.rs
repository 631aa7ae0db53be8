//! `--daemonize`: the launching process exits with the truth (0 once every
//! worker is ready, 1 with the reason otherwise) and the daemon is detached.

use crate::support::*;
use nix::unistd::{getsid, Pid};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Whatever a daemonized master left running for this test: it is not our
/// child, so the guard finds it by its pid file and by its command line
/// naming the test's directory. (Init reaps it.)
struct Daemon {
    dir: PathBuf,
    _guard: Guard,
}

impl Daemon {
    fn new(dir: &TempDir, pid_file: &Path) -> Daemon {
        let mut guard = Guard::new();
        guard.watch_dir(&dir.path);
        guard.watch_pid_file(pid_file);
        Daemon {
            dir: dir.path.clone(),
            _guard: guard,
        }
    }

    /// Waits until the processes naming our directory are exactly `pids`;
    /// panics listing them.
    fn wait_only(&self, pids: &[i32]) {
        let deadline = std::time::Instant::now() + secs(20);
        loop {
            let left = processes_naming(&self.dir);
            if left == pids {
                return;
            }
            if std::time::Instant::now() > deadline {
                let described: Vec<String> = left
                    .iter()
                    .map(|pid| {
                        let cmdline =
                            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                        format!("{pid} (ppid {:?}): {args}", proc_stat(*pid).map(|s| s.1))
                    })
                    .collect();
                panic!(
                    "expected only {pids:?} to be left, found:\n{}",
                    described.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// `forkmaster -D -p PIDFILE -l unix:<dir>/app.sock --stderr-path ERR
/// --ready notify -- demo`, for `run`: the launcher's exit is the result.
fn daemonized<'a>(dir: &'a TempDir, pid_file: &Path, err: &Path) -> Fixture<'a> {
    Fixture::new(dir)
        .arg("-D")
        .pid_file(pid_file)
        .unix("app.sock")
        .args(&["--stderr-path", err.to_str().unwrap()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn daemonize_returns_once_every_worker_is_ready_and_detaches() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let pid_path = pid_file.to_str().unwrap();
    let err = dir.join("err.log");
    let daemon = Daemon::new(&dir, &pid_file);
    let out = daemonized(&dir, &pid_file, &err)
        .workers(2)
        // Slow to boot: a launcher that returned early would be caught.
        .env("DEMO_BOOT_DELAY=300ms")
        .run(secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nlog:\n{}",
        text(&out.stderr),
        file_text(&err)
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");

    let (code, json, stderr) = client(&["status", "-p", pid_path, "--json"], secs(10));
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&json).expect("status json");
    assert_eq!(status["target"], 2, "{json}");
    assert_eq!(
        status["ready"], 2,
        "ready right after the launcher returned: {json}"
    );

    let pid = read_pid(&pid_file).expect("pid file");
    assert_eq!(status["pid"], pid);
    let (_, ppid, _) = proc_stat(pid).expect("daemon running");
    assert_ne!(ppid, std::process::id() as i32, "the daemon is our child");
    let sid = getsid(Some(Pid::from_raw(pid))).expect("getsid").as_raw();
    let our_sid = getsid(None).expect("getsid").as_raw();
    assert_ne!(sid, our_sid, "the daemon is in our session");
    assert_ne!(
        sid, pid,
        "the daemon leads its session: it could get a terminal"
    );
    assert_eq!(fd_target(pid, 0), "/dev/null");
    assert_eq!(fd_target(pid, 1), "/dev/null");
    assert_eq!(fd_target(pid, 2), err.display().to_string());

    let log = file_text(&err);
    assert!(log.contains("event=all-ready workers=2"), "{log}");
    let served = wait_serving(&Target::unix(dir.join("app.sock")));
    assert_eq!(served["generation"], "1");

    let (code, out, stderr) = client(&["stop", "-p", pid_path, "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(!pid_file.exists());
    daemon.wait_only(&[]);
}

/// Runs `forkmaster -D` expected to fail; checks the one-line reason on
/// stderr, that nothing is left running and that no pid file remains.
fn launch_failing(dir: &TempDir, args: &[&str], reason: &str) -> Output {
    let pid_file = dir.join("app.pid");
    let err = dir.join("err.log");
    let daemon = Daemon::new(dir, &pid_file);
    let mut all = vec![
        "-D",
        "-p",
        pid_file.to_str().unwrap(),
        "--stderr-path",
        err.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = run(&all, secs(60));
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {stderr}\nlog:\n{}",
        file_text(&err)
    );
    assert_eq!(text(&out.stdout), "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr:?}");
    assert!(
        lines[0].starts_with("forkmaster: ") && lines[0].contains(reason),
        "expected `forkmaster: ...{reason}...`, got {stderr:?}"
    );
    assert!(!pid_file.exists(), "pid file left behind");
    daemon.wait_only(&[]);
    // The daemon's own log says the same.
    assert!(file_text(&err).contains(lines[0]), "{}", file_text(&err));
    out
}

#[test]
fn a_daemon_whose_workers_cannot_boot_fails_the_launcher() {
    let dir = TempDir::new();
    let listen = dir.unix("app.sock");
    launch_failing(
        &dir,
        &["-l", &listen, "--", "/bin/false"],
        "startup failed: worker=0 exited with status 1 before ready",
    );
    assert!(!dir.join("app.sock").exists(), "socket file left behind");
}

#[test]
fn a_daemon_that_cannot_listen_fails_the_launcher() {
    let dir = TempDir::new();
    // A live server holds the socket.
    let busy = dir.join("busy.sock");
    let _server = std::os::unix::net::UnixListener::bind(&busy).expect("bind");
    let listen = format!("unix:{}", busy.display());
    launch_failing(
        &dir,
        &["-l", &listen, "--", demo()],
        &format!("listen {listen}: a live server accepts on this socket"),
    );
    assert!(busy.exists(), "the live server's socket file was removed");

    // A directory that does not exist.
    let dir = TempDir::new();
    let listen = format!("unix:{}/missing/app.sock", dir.path.display());
    launch_failing(
        &dir,
        &["-l", &listen, "--", demo()],
        &format!("listen {listen}: no such file or directory"),
    );
}

#[test]
fn an_upgrade_of_a_daemon_leaves_only_the_new_master() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let pid_path = pid_file.to_str().unwrap();
    let err = dir.join("err.log");
    let daemon = Daemon::new(&dir, &pid_file);
    let out = daemonized(&dir, &pid_file, &err).workers(2).run(secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let old = read_pid(&pid_file).expect("pid file");

    let (code, out, stderr) = client(&["upgrade", "-p", pid_path, "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{stderr}\n{}", file_text(&err));
    let new = read_pid(&pid_file).expect("pid file");
    assert_ne!(new, old);
    assert!(
        out.starts_with(&format!("upgraded: pid {old} -> {new}")),
        "{out}"
    );
    let served = wait_serving(&Target::unix(dir.join("app.sock")));
    assert_eq!(served["generation"], "2");
    // Nothing but the new master is left: no launcher waiting on it.
    daemon.wait_only(&[new]);
    let log = file_text(&err);
    assert_no_event(&log, "rollback");
    assert_not_logged(&log, "forkmaster: ");
}

#[test]
fn a_daemon_killed_during_startup_fails_the_launcher() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let err = dir.join("err.log");
    let daemon = Daemon::new(&dir, &pid_file);
    let args = daemonized(&dir, &pid_file, &err)
        // Workers that never say they are ready: startup never ends.
        .env("DEMO_NO_READY=1")
        .command_line();
    let launcher = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, secs(60))
    });
    let pid = wait_for("the daemon's pid file", secs(20), || read_pid(&pid_file));
    wait_file(&err, "event=ready token=", secs(20));
    let workers = descendants_of(pid);
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    for worker in workers {
        let _ = nix::sys::signal::kill(Pid::from_raw(worker), Signal::SIGKILL);
    }
    let out = launcher.join().expect("launcher thread");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "forkmaster: the daemon exited during startup (see its log)\n"
    );
    drop(daemon);
}
