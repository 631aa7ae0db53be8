//! `--stdout-path`/`--stderr-path`: the master's log and every worker's
//! output land in the files, workers write into pipes the master drains, and
//! after a rotation and USR1 every new line goes to the new files.

use crate::support::*;
use std::path::{Path, PathBuf};

/// A worker that writes one line to its stdout, then execs the demo app
/// (keeping its pid).
const STDOUT_THEN_DEMO: &str = r#"echo "stdout pid=$$ worker=$FORKMASTER_WORKER"; exec "$0""#;

struct Logged {
    dir: TempDir,
    out: PathBuf,
    err: PathBuf,
    pid_file: PathBuf,
    target: Target,
}

impl Logged {
    /// Log files in `<dir>/<logs>/`.
    fn new(logs: &str) -> Logged {
        let dir = TempDir::new();
        let logs = dir.join(logs);
        std::fs::create_dir_all(&logs).unwrap();
        Logged {
            out: logs.join("out.log"),
            err: logs.join("err.log"),
            pid_file: dir.join("app.pid"),
            target: Target::unix(dir.join("app.sock")),
            dir,
        }
    }

    /// Starts two workers; the guard's log is the stderr file from then on.
    /// Returns the master and what the master's inherited stderr received.
    fn start(&self) -> (Master, PathBuf) {
        let mut master = Fixture::new(&self.dir)
            .workers(2)
            .pid_file(&self.pid_file)
            .unix("app.sock")
            .log_files(&self.out, &self.err)
            .args(&["--reopen-signal", "USR1"])
            .command(&["/bin/sh", "-c", STDOUT_THEN_DEMO, demo()])
            .start();
        let inherited = std::mem::replace(&mut master.log_path, self.err.clone());
        master.wait_ready();
        (master, inherited)
    }
}

fn rotated(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.1", path.display()))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

#[test]
fn every_line_follows_the_files_across_a_rotation() {
    let app = Logged::new("logs");
    let (master, inherited) = app.start();
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");

    // Before: the master's log, the workers' stderr and stdout in the files.
    let err = file_text(&app.err);
    assert!(
        err.contains(&format!("forkmaster[{}] event=start", master.pid())),
        "{err}"
    );
    for pid in &workers {
        let err = wait_file(&app.err, &format!("demo pid={pid} "), secs(10));
        assert!(err.contains(&format!("demo pid={pid} worker=")), "{err}");
        wait_file(&app.out, &format!("stdout pid={pid} "), secs(10));
    }
    assert_eq!(
        file_text(&inherited),
        "",
        "output went to the stderr forkmaster was started with"
    );

    // Rotate, then reopen.
    std::fs::rename(&app.err, rotated(&app.err)).unwrap();
    std::fs::rename(&app.out, rotated(&app.out)).unwrap();
    let (code, out, stderr) = client(
        &["reopen-logs", "-p", app.pid_file.to_str().unwrap()],
        secs(10),
    );
    assert_eq!(code, 0, "{out}{stderr}");
    let reopened = format!("event=log-reopened path={}", app.err.display());
    wait_file(&app.err, &reopened, secs(10));
    // From here on nothing may be written to the rotated files.
    let (old_err_size, old_out_size) = (size(&rotated(&app.err)), size(&rotated(&app.out)));
    assert!(
        file_text(&rotated(&app.err)).contains("event=reopen-logs"),
        "{}",
        file_text(&rotated(&app.err))
    );
    assert_eq!(fd_target(master.pid(), 2), app.err.display().to_string());
    assert_eq!(fd_target(master.pid(), 1), app.out.display().to_string());

    // Every worker got USR1 after the switch: its line is in the new file.
    for pid in &workers {
        let usr1 = format!("demo pid={pid} worker=");
        master.wait_for(
            &format!("{usr1}.. event=usr1 in the new file"),
            secs(10),
            |_| {
                file_text(&app.err)
                    .lines()
                    .any(|l| l.starts_with(&usr1) && l.ends_with("event=usr1"))
                    .then_some(())
            },
        );
    }

    // More output: a worker crashes, the master logs it, its replacement
    // boots and writes to stdout and stderr.
    assert!(get(&app.target, "/crash").is_err(), "/crash answered");
    let err = wait_file(&app.err, "event=crash", secs(10));
    let crashed: i32 = err
        .lines()
        .find(|l| l.ends_with("event=crash"))
        .and_then(|l| fields(l).get("pid").and_then(|p| p.parse().ok()))
        .expect("crash line");
    assert!(workers.contains(&crashed), "{crashed} {workers:?}");
    wait_file(&app.err, &format!("pid={crashed} event=exit"), secs(10));
    let replacement = master.wait_for("a replacement worker", secs(20), |_| {
        let now = master.children();
        let new: Vec<i32> = now.into_iter().filter(|p| !workers.contains(p)).collect();
        (new.len() == 1).then(|| new[0])
    });
    let slot = slot_of(&err, crashed);
    wait_file(
        &app.err,
        &format!("worker={slot} pid={replacement} event=ready"),
        secs(20),
    );
    wait_file(&app.out, &format!("stdout pid={replacement} "), secs(10));
    assert!(
        file_text(&app.err).contains(&format!("demo pid={replacement} ")),
        "{}",
        file_text(&app.err)
    );

    assert_eq!(
        size(&rotated(&app.err)),
        old_err_size,
        "the rotated stderr file grew after the reopen:\n{}",
        file_text(&rotated(&app.err))
    );
    assert_eq!(size(&rotated(&app.out)), old_out_size);
    let old = file_text(&rotated(&app.err));
    assert_no_event(&old, "usr1");
    assert_no_event(&old, "crash");
    assert!(!file_text(&rotated(&app.out)).contains(&format!("pid={replacement} ")));
}

/// The slot of `pid` from the demo's `demo pid=.. worker=..` lines.
fn slot_of(log: &str, pid: i32) -> String {
    let prefix = format!("demo pid={pid} worker=");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no line from {pid}:\n{log}"))
        .to_string()
}

#[test]
fn a_log_directory_removed_before_usr1_keeps_the_old_files() {
    let app = Logged::new("logs");
    let (mut master, _) = app.start();
    let logs = app.err.parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&logs).unwrap();

    master.signal(Signal::SIGUSR1);
    // The old file, deleted but still open, is read through the master's fd.
    let old = PathBuf::from(format!("/proc/{}/fd/2", master.pid()));
    let text = wait_file(&old, "event=log-reopen-failed", secs(10));
    let line = text
        .lines()
        .find(|l| {
            l.contains("event=log-reopen-failed") && l.contains(&app.err.display().to_string())
        })
        .unwrap_or_else(|| panic!("no reopen failure for {}:\n{text}", app.err.display()));
    assert!(line.contains("no such file or directory"), "{line}");
    assert!(line.contains("kept the old file"), "{line}");
    // The workers' USR1 lines, too, land in the old file.
    wait_file_count(&old, "event=usr1", 2, secs(10));

    assert!(master.child.try_wait().unwrap().is_none(), "master exited");
    let served = get(&app.target, "/").expect("GET / after the failed reopen");
    assert_eq!(served.status, 200);
    assert!(!logs.exists(), "the log directory was recreated");

    // Once the directory is back, the next USR1 opens fresh files.
    std::fs::create_dir_all(&logs).unwrap();
    master.signal(Signal::SIGUSR1);
    wait_file(
        &app.err,
        &format!("event=log-reopened path={}", app.err.display()),
        secs(10),
    );
    wait_file_count(&app.err, "event=usr1", 2, secs(10));
    assert!(app.out.exists());
}

#[test]
fn the_master_writes_the_files_and_workers_write_into_pipes() {
    let app = Logged::new("logs");
    let (master, _) = app.start();
    let pid = master.pid();
    assert_eq!(fd_target(pid, 1), app.out.display().to_string());
    assert_eq!(fd_target(pid, 2), app.err.display().to_string());
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
    let mut pipes = Vec::new();
    for worker in &workers {
        let (out, err) = (fd_target(*worker, 1), fd_target(*worker, 2));
        assert!(out.starts_with("pipe:["), "worker {worker} fd 1: {out}");
        assert!(err.starts_with("pipe:["), "worker {worker} fd 2: {err}");
        assert_ne!(out, err, "stdout and stderr share a pipe");
        pipes.push((out, err));
    }
    // A pipe per worker and stream: no worker's line is spliced into another's.
    assert_ne!(pipes[0].0, pipes[1].0);
    assert_ne!(pipes[0].1, pipes[1].1);
}
