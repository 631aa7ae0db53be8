//! A real app server behind a real proxy: nginx in front of forkmaster
//! running gunicorn, under a bounded load through nginx across upgrades and
//! rolling restarts, with not one failed request.
//!
//! Also the refusal those deploys rely on: another user's client exits 1.
//!
//! nginx and gunicorn are not build dependencies: when either is missing the
//! test says so loudly and passes, unless `FORKMASTER_REQUIRE_REAL_SERVERS=1`
//! (set by CI, which installs both) makes it fail instead.

use crate::support::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const UPGRADES: usize = 3;
const RELOADS: usize = 3;
const LOAD_THREADS: usize = 3;
/// Requests the load must make after each deploy step before the next one.
const REQUESTS_BETWEEN_STEPS: u64 = 50;
/// Bounds on the load whatever happens: requests per thread, and seconds.
const MAX_REQUESTS_PER_THREAD: u64 = 100_000;
const MAX_LOAD_SECS: u64 = 120;

/// A WSGI app that answers with the pid of the process serving.
const WSGI_APP: &str = r#"import os

def app(environ, start_response):
    body = ('pid=%d\n' % os.getpid()).encode()
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
"#;

/// `program` on `PATH`, or in the sbin directories a non-root `PATH` lacks.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|candidate| candidate.is_file());
    found
}

/// The programs' paths, or `None` (the test is skipped) when one is missing
/// and `FORKMASTER_REQUIRE_REAL_SERVERS=1` is not set; with it, a panic.
fn require_programs(test: &str, programs: &[&str]) -> Option<Vec<PathBuf>> {
    let found: Vec<_> = programs.iter().map(|p| find_program(p)).collect();
    let missing: Vec<_> = programs
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Some(found.into_iter().flatten().collect());
    }
    let message = format!(
        "{test}: {} not installed (e.g. apt-get install nginx gunicorn)",
        missing.join(" and ")
    );
    skip_unless_required(&message);
    None
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// nginx's whole config: one process in the foreground, every file it
/// writes in `dir`, proxying 127.0.0.1:`port` to the Unix socket.
fn nginx_config(dir: &TempDir, port: u16, socket: &str) -> String {
    let d = dir.path.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         upstream app {{ server unix:{socket}; }}\n\
         server {{\n\
         listen 127.0.0.1:{port};\n\
         location / {{ proxy_pass http://app; }}\n\
         }}\n\
         }}\n"
    )
}

/// Requests through nginx from a few threads until stopped (or a bound is
/// reached): how many were made, and the failures (non-200 or an error).
struct Load {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(target: Target) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..LOAD_THREADS)
            .map(|_| {
                let (stop, total, failures) = (stop.clone(), total.clone(), failures.clone());
                let target = target.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + secs(MAX_LOAD_SECS);
                    for _ in 0..MAX_REQUESTS_PER_THREAD {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let outcome = get(&target, "/");
                        total.fetch_add(1, Ordering::SeqCst);
                        let failure = match outcome {
                            Ok(r) if r.status == 200 => continue,
                            Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                            Err(e) => e,
                        };
                        failures.lock().expect("failures").push(failure);
                    }
                })
            })
            .collect();
        Load {
            stop,
            total,
            failures,
            threads,
        }
    }

    /// Waits until `n` more requests have been made.
    fn wait_requests(&self, n: u64) {
        let target = self.total.load(Ordering::SeqCst) + n;
        wait_for(&format!("{target} requests"), secs(30), || {
            (self.total.load(Ordering::SeqCst) >= target).then_some(())
        });
    }

    /// Stops the threads: (requests made, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.total.load(Ordering::SeqCst), failures)
    }
}

#[test]
fn nginx_in_front_of_gunicorn_loses_no_request_through_upgrades_and_reloads() {
    let Some(programs) = require_programs(
        "nginx_in_front_of_gunicorn_loses_no_request_through_upgrades_and_reloads",
        &["nginx", "gunicorn"],
    ) else {
        return;
    };
    let (nginx, gunicorn) = (&programs[0], &programs[1]);
    let started = Instant::now();
    let dir = TempDir::new();
    std::fs::write(dir.join("app.py"), WSGI_APP).expect("write app.py");
    let socket = dir.join("app.sock").display().to_string();
    let pid_file = dir.join("forkmaster.pid");

    // gunicorn takes the socket through LISTEN_FDS/LISTEN_PID: no --bind
    // (`--bind fd://3` would make it unlink the shared socket file when it
    // stops). Versions with a control socket need it off: each worker
    // would create the same one in the working directory.
    let mut help = Command::new(gunicorn);
    help.arg("--help");
    let help = run_command(help, secs(30));
    let mut command = vec![
        gunicorn.display().to_string(),
        "--chdir".into(),
        dir.path.display().to_string(),
        "--workers".into(),
        "1".into(),
        // The app is imported before gunicorn sends READY=1: a release that
        // cannot load fails the upgrade instead of counting as ready.
        "--preload".into(),
        "--graceful-timeout".into(),
        "20".into(),
    ];
    if String::from_utf8_lossy(&help.stdout).contains("--no-control-socket") {
        command.push("--no-control-socket".into());
    }
    command.push("app:app".into());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();

    // mode 0666: nginx's worker runs as an unprivileged user when started
    // as root, and must be able to connect.
    let mut master = Fixture::new(&dir)
        .workers(2)
        .listen(format!("unix:{socket};mode=0666"))
        .pid_file(&pid_file)
        .command(&command)
        .start();
    master.wait_ready();

    let port = free_port();
    std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, port, &socket))
        .expect("write nginx.conf");
    let error_log = dir.join("nginx-error.log");
    master.guard().adopt(
        Command::new(nginx)
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    let target = Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    let deadline = Instant::now() + secs(20);
    loop {
        match get(&target, "/") {
            Ok(r) if r.status == 200 => break,
            outcome if Instant::now() > deadline => panic!(
                "nginx passes no request to gunicorn: {outcome:?}\nnginx error log:\n{}\nforkmaster log:\n{}",
                file_text(&error_log),
                master.log()
            ),
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }

    let load = Load::start(target);
    load.wait_requests(REQUESTS_BETWEEN_STEPS);
    let pid_arg = pid_file.display().to_string();
    let steps =
        std::iter::repeat_n("upgrade", UPGRADES).chain(std::iter::repeat_n("reload", RELOADS));
    for step in steps {
        let (code, out, err) = client(
            &[step, "-p", &pid_arg, "--wait", "--timeout", "60s"],
            secs(90),
        );
        assert_eq!(code, 0, "{step}: {out}{err}\nlog:\n{}", master.log());
        master.guard().note();
        load.wait_requests(REQUESTS_BETWEEN_STEPS);
    }
    let (total, failures) = load.finish();
    eprintln!(
        "real_servers: nginx+gunicorn {} failed of {total} requests through {UPGRADES} upgrades and {RELOADS} reloads in {:?}",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed, first ones: {:?}\nnginx error log:\n{}\nforkmaster log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        file_text(&error_log),
        master.log()
    );
}

/// What the deploy recipes (contrib/capistrano, contrib/ansible, the init
/// script) rely on: a client run as a user the master does not answer is
/// told so and exits 1, not 3 ("not running"), so a deploy does not start a
/// second master beside the running one.
#[test]
fn a_client_the_master_refuses_exits_1_saying_whom_to_run_as() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_client_the_master_refuses_exits_1_saying_whom_to_run_as: needs root"
        );
        return;
    }
    let dir = TempDir::new();
    let pid_file = dir.join("forkmaster.pid");
    let master = Fixture::new(&dir).tcp().pid_file(&pid_file).start();
    master.wait_ready();
    let mut cmd = Command::new(forkmaster());
    cmd.args(["status", "-p"])
        .arg(&pid_file)
        .uid(65534)
        .gid(65534);
    let out = run_command(cmd, secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(in_source("answers only its own user")),
        "{err}"
    );
}
