//! contrib/init.d/forkmaster, the LSB init script, run for real against the
//! demo app: its binary, config and defaults file pointed at a temp dir
//! through the environment, every action checked by its LSB exit code and by
//! what actually runs.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/init.d/forkmaster")
}

/// Whether `pid` runs our forkmaster binary (a pid can be reused).
fn is_forkmaster(pid: i32) -> bool {
    let ours = std::fs::canonicalize(forkmaster()).ok();
    std::fs::read_link(format!("/proc/{pid}/exe")).ok() == ours
}

/// Live processes of our forkmaster binary whose command line names `config`.
fn masters_of(config: &Path) -> Vec<i32> {
    let config = config.to_string_lossy();
    let mut found: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| is_running(pid) && is_forkmaster(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == config))
                .unwrap_or(false)
        })
        .collect();
    found.sort_unstable();
    found
}

/// One service: a config in a temp dir, driven through the init script.
struct Service<'a> {
    dir: &'a TempDir,
    config: PathBuf,
    pid_file: PathBuf,
    runs: usize,
}

/// What an action printed and how it exited.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl<'a> Service<'a> {
    fn new(dir: &'a TempDir) -> Service<'a> {
        let config = dir.join("app.yml");
        let pid_file = dir.join("app.pid");
        let text = format!(
            "listen: ['unix:{sock}']\n\
             workers: 2\n\
             pid: {pid}\n\
             ready: notify\n\
             ready_timeout: 20s\n\
             graceful_timeout: 10s\n\
             stdout_path: {out}\n\
             stderr_path: {err}\n\
             reopen_signal: USR1\n\
             command: ['{demo}']\n",
            sock = dir.join("app.sock").display(),
            pid = pid_file.display(),
            out = dir.join("out.log").display(),
            err = dir.join("err.log").display(),
            demo = demo(),
        );
        std::fs::write(&config, text).expect("write config");
        Service {
            dir,
            config,
            pid_file,
            runs: 0,
        }
    }

    fn target(&self) -> Target {
        Target::unix(self.dir.join("app.sock"))
    }

    fn master_pid(&self) -> Option<i32> {
        read_pid(&self.pid_file)
    }

    /// Runs `contrib/init.d/forkmaster ACTION` to completion. Its output goes
    /// to files, so a daemon that kept a copy of a pipe could not hang us.
    fn run(&mut self, action: &str) -> Outcome {
        self.runs += 1;
        let out_path = self.dir.join(&format!("script-{}-{action}.out", self.runs));
        let err_path = self.dir.join(&format!("script-{}-{action}.err", self.runs));
        let mut child = Command::new(script())
            .arg(action)
            .env("FORKMASTER", forkmaster())
            .env("CONFIG", &self.config)
            .env("FORKMASTER_DEFAULTS", self.dir.join("no-such-defaults"))
            .env_remove("TIMEOUT")
            .env_remove("PIDFILE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
            .spawn()
            .expect("run the init script");
        let timeout = secs(60);
        let started = Instant::now();
        let deadline = started + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                for pid in descendants_of(child.id() as i32) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                panic!("init script {action} did not exit within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        eprintln!(
            "init script {action}: {status} in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Runs ACTION and insists on exit code `code`.
    fn expect(&mut self, action: &str, code: i32) -> Outcome {
        let outcome = self.run(action);
        assert_eq!(
            outcome.code,
            code,
            "init script {action}: {outcome}\nmaster log:\n{}",
            self.log("err.log")
        );
        outcome
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

/// The demo's answer on one request, which must succeed now: no retries.
fn serves_now(target: &Target) -> std::collections::HashMap<String, String> {
    let response = get(target, "/").unwrap_or_else(|e| panic!("{target:?}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    response.fields()
}

#[test]
fn init_script_drives_the_whole_life_of_a_service() {
    let dir = TempDir::new();
    let mut service = Service::new(&dir);
    // Every master the pid file (or its `.oldbin`) names at any point dies
    // with the test: the daemon is not our child.
    let mut cleanup = Guard::new();
    cleanup.watch_pid_file(&service.pid_file);
    let target = service.target();

    // Not started yet: status 3, and stop is a success (LSB).
    service.expect("status", 3);
    service.expect("stop", 0);

    // start: `forkmaster -D` exits 0 only once every worker is ready, so the
    // service answers at once.
    let start = service.expect("start", 0);
    cleanup.note();
    let first = service.master_pid().expect("pid file after start");
    assert!(start.stdout.contains(&first.to_string()), "{start}");
    assert!(is_running(first));
    let answer = serves_now(&target);
    assert_eq!(answer["generation"], "1", "{answer:?}");
    assert_eq!(masters_of(&service.config), vec![first]);

    let status = service.expect("status", 0);
    assert!(
        status.stdout.contains(&format!("master: pid={first} ")),
        "{status}"
    );

    // start again: already running, nothing changes.
    service.expect("start", 0);
    assert_eq!(service.master_pid(), Some(first));

    // upgrade: a new master takes over and the old one is gone when the
    // script returns.
    let workers_before = descendants_of(first);
    service.expect("upgrade", 0);
    cleanup.note();
    let second = service.master_pid().expect("pid file after upgrade");
    assert_ne!(second, first, "the pid file must name the new master");
    assert!(is_running(second));
    assert!(!is_running(first), "old master {first} still runs");
    for pid in workers_before {
        assert!(!is_running(pid), "old worker {pid} still runs");
    }
    assert!(!dir.join("app.pid.oldbin").exists());
    // The new master did not daemonize again: no second launcher lingers.
    assert_eq!(masters_of(&service.config), vec![second]);
    let answer = serves_now(&target);
    assert_eq!(answer["generation"], "2", "{answer:?}");
    service.expect("status", 0);

    // reload (HUP): same master, a new generation of workers. `reload
    // --wait` returns once the new workers are ready; the old ones may still
    // be finishing (and even take a last request) until they have left.
    service.expect("reload", 0);
    assert_eq!(service.master_pid(), Some(second));
    let workers = wait_for("the old workers to leave", secs(20), || {
        let workers = children_of(second);
        (workers.len() == 2).then_some(workers)
    });
    let answer = serves_now(&target);
    assert_eq!(answer["generation"], "3", "{answer:?}");

    // reopen-logs: after a rotation (rename), new lines from the master and
    // from every worker land in a fresh file, none in the rotated one.
    let err_log = dir.join("err.log");
    let rotated = dir.join("err.log.1");
    let out_log = dir.join("out.log");
    std::fs::rename(&err_log, &rotated).expect("rotate err.log");
    std::fs::rename(&out_log, dir.join("out.log.1")).expect("rotate out.log");
    service.expect("reopen-logs", 0);
    let usr1_logged = |text: &str, pid: i32| {
        let prefix = format!("demo pid={pid} ");
        text.lines()
            .any(|l| l.starts_with(&prefix) && l.ends_with("event=usr1"))
    };
    let err_reopened = format!("event=log-reopened path={}", err_log.display());
    wait_for("the reopened err.log to get every line", secs(20), || {
        let text = std::fs::read_to_string(&err_log).ok()?;
        (text.contains(&err_reopened) && workers.iter().all(|&p| usr1_logged(&text, p)))
            .then_some(())
    });
    assert!(out_log.exists(), "out.log was not reopened");
    // The rotated file may end with the line about out.log (stdout is
    // reopened first), never with anything logged after err.log was.
    let old = std::fs::read_to_string(&rotated).expect("read rotated log");
    assert!(!old.contains(in_source(&err_reopened)), "{old}");
    assert_no_event(&old, "usr1");

    // stop: graceful, and everything is gone when the script returns.
    let workers = descendants_of(second);
    let stop = service.expect("stop", 0);
    assert!(stop.stdout.contains("stopped"), "{stop}");
    assert!(!is_running(second), "master {second} still runs");
    for pid in workers {
        assert!(!is_running(pid), "worker {pid} still runs");
    }
    assert!(!service.pid_file.exists(), "pid file left behind");
    assert!(
        get(&target, "/").is_err(),
        "something still answers on the socket"
    );
    service.expect("status", 3);

    // A pid file naming a dead process: LSB's "dead but pid file exists".
    // pid_max is at most 2^22, so this pid cannot exist.
    std::fs::write(&service.pid_file, format!("{}\n", 1 << 23)).expect("write stale pid file");
    service.expect("status", 1);
    std::fs::remove_file(&service.pid_file).expect("remove stale pid file");

    // Commands that need a running master say it is not running (LSB 7).
    service.expect("upgrade", 7);
    service.expect("reload", 7);
    service.expect("reopen-logs", 7);
}

#[test]
fn init_script_start_reports_a_failed_startup() {
    let dir = TempDir::new();
    let mut service = Service::new(&dir);
    let mut cleanup = Guard::new();
    cleanup.watch_pid_file(&service.pid_file);
    let missing = dir.join("no-such-app");
    let text = std::fs::read_to_string(&service.config).expect("read config");
    let text = text.replace(demo(), &missing.display().to_string());
    std::fs::write(&service.config, text).expect("write config");

    let start = service.expect("start", 1);
    assert!(
        start.stderr.contains("No such file or directory"),
        "the reason must be shown: {start}"
    );
    assert!(!service.pid_file.exists(), "pid file left behind");
    service.expect("status", 3);
}

#[test]
fn init_script_usage_and_missing_files() {
    let dir = TempDir::new();
    let mut service = Service::new(&dir);
    let usage = service.expect("no-such-action", 2);
    assert!(usage.stderr.contains("Usage:"), "{usage}");

    std::fs::remove_file(&service.config).expect("remove config");
    service.expect("start", 6);
    service.expect("status", 4);
}

#[test]
fn init_script_is_shellcheck_clean() {
    let found = Command::new("shellcheck")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: shellcheck is not installed (apt-get install shellcheck)");
        return;
    }
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .arg(script())
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
