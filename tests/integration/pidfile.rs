//! The pid file: written atomically once the listeners are bound, refused
//! when it names a live master of it, taken over when stale (a dead pid, or
//! a live process that is not its master), read without ever hanging, and
//! removed at exit only while it still names this master.

use crate::config_errors::assert_one_line_error;
use crate::support::*;
use std::net::TcpStream;
use std::path::Path;

/// `PID_MAX_LIMIT` is 2^22 on Linux, so no process can ever have this pid.
const IMPOSSIBLE_PID: u32 = 4_194_304 + 1;

/// Waits until the pid file exists with some content, and returns it.
fn wait_pid_file(master: &mut Master, path: &Path) -> String {
    master
        .try_wait_for(secs(20), |_| {
            std::fs::read_to_string(path).ok().filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| panic!("no pid file at {}; log:\n{}", path.display(), master.log()))
}

fn start_with_pid_file(dir: &TempDir, pid_file: &Path) -> Master {
    Fixture::new(dir).pid_file(pid_file).tcp().start()
}

fn quit(master: &mut Master) {
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", master.log());
}

#[test]
fn pid_file_holds_the_master_pid_once_listening_and_goes_at_quit() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let mut master = start_with_pid_file(&dir, &pid_file);
    // Written atomically: the first content ever seen is the whole pid.
    let content = wait_pid_file(&mut master, &pid_file);
    assert_eq!(content, format!("{}\n", master.pid()));
    // Written only once listening: the socket already takes connections.
    let addr = listen_addr(&master.log(), 0);
    TcpStream::connect_timeout(&addr, secs(5)).expect("listening when the pid file appears");
    master.wait_ready();
    wait_serving(&Target::Tcp(addr));
    quit(&mut master);
    assert!(!pid_file.exists(), "pid file left after QUIT");
}

#[test]
fn pid_file_naming_a_live_master_of_it_refuses_to_start_and_binds_nothing() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let sock = dir.join("app.sock");
    let mut first = start_with_pid_file(&dir, &pid_file);
    wait_pid_file(&mut first, &pid_file);
    first.wait_ready();
    let live = first.pid();
    let out = Fixture::new(&dir)
        .pid_file(&pid_file)
        .unix("app.sock")
        .run(secs(10));
    assert_one_line_error(
        &out,
        1,
        &[
            &format!("pid file {}", pid_file.display()),
            &format!("live process {live}"),
        ],
    );
    assert!(
        !sock.exists(),
        "bound a listener despite the running master"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file still there"),
        format!("{live}\n")
    );
}

/// A pid reused after a reboot or a container restart: the file names a
/// live process that is not the master of this pid file (here the test
/// itself, and pid 1). It is taken over, as a stale one is.
#[test]
fn pid_file_naming_a_live_process_that_is_not_its_master_is_taken_over() {
    for live in [std::process::id(), 1] {
        let dir = TempDir::new();
        let pid_file = dir.join("app.pid");
        std::fs::write(&pid_file, format!("{live}\n")).expect("write pid file");
        let mut master = start_with_pid_file(&dir, &pid_file);
        wait_pid_file_is_ours(&mut master, &pid_file);
        let log = master.wait_ready();
        assert!(
            log.contains(&format!("event=stale-pid-file path={}", pid_file.display()))
                && log.contains(&format!("pid={live} reason=")),
            "{log}"
        );
        quit(&mut master);
    }
}

/// Odd things at the pid file's path never hang the master or a client,
/// and never reach the log beyond a short quoted prefix.
#[test]
fn odd_files_at_the_pid_path_are_refused_or_taken_over_without_hanging() {
    let dir = TempDir::new();
    // A FIFO: opening it for reading would block until a writer comes.
    let fifo = dir.join("fifo.pid");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let out = Fixture::new(&dir).pid_file(&fifo).tcp().run(secs(10));
    assert_one_line_error(
        &out,
        1,
        &[
            &format!("pid file {}", fifo.display()),
            "a FIFO, not a regular file",
        ],
    );
    let status = run(&["status", "-p", &fifo.display().to_string()], secs(10));
    assert_eq!(status.status.code(), Some(3), "{status:?}");

    // A huge file, and a link to a secret: taken over, quoted by a prefix.
    let huge = dir.join("huge.pid");
    std::fs::write(&huge, "9".repeat(50 << 20)).expect("write huge pid file");
    let secret = dir.join("secret");
    let words = "the quick brown fox jumps over the lazy dog";
    std::fs::write(&secret, format!("{words} {words}\n")).expect("write secret");
    let link = dir.join("link.pid");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    for path in [&huge, &link] {
        let mut master = start_with_pid_file(&dir, path);
        wait_pid_file_is_ours(&mut master, path);
        let log = master.wait_ready();
        assert!(log.contains("event=stale-pid-file"), "{log}");
        assert!(
            log.lines().all(|l| l.len() < 400) && !log.contains("lazy dog"),
            "the pid file's content reached the log:\n{log}"
        );
        quit(&mut master);
    }
    assert!(
        std::fs::read_to_string(&secret).unwrap().starts_with(words),
        "the secret behind the link was written to"
    );
}

/// The temporary file a pid file is written through has a name nobody can
/// guess, and is never opened through a link placed in its way.
#[test]
fn the_pid_file_is_never_written_through_a_planted_link() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let target = dir.join("target");
    std::fs::write(&target, "untouched\n").expect("write target");
    // Every name the old scheme could have used for the next pids.
    let me = std::process::id();
    for pid in me..me + 5000 {
        let _ = std::os::unix::fs::symlink(&target, dir.join(&format!("app.pid.tmp.{pid}")));
    }
    let mut master = start_with_pid_file(&dir, &pid_file);
    wait_pid_file_is_ours(&mut master, &pid_file);
    master.wait_ready();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
    assert!(
        !std::fs::symlink_metadata(&pid_file)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the pid file is a link"
    );
    quit(&mut master);
}

/// Waits until the pid file names this master (after taking over an old one).
fn wait_pid_file_is_ours(master: &mut Master, path: &Path) {
    let ours = format!("{}\n", master.pid());
    master
        .try_wait_for(secs(20), |_| {
            std::fs::read_to_string(path).ok().filter(|t| *t == ours)
        })
        .unwrap_or_else(|| {
            panic!(
                "pid file {} never named {}; log:\n{}",
                path.display(),
                master.pid(),
                master.log()
            )
        });
}

#[test]
fn stale_pid_file_naming_an_impossible_pid_is_taken_over() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    std::fs::write(&pid_file, format!("{IMPOSSIBLE_PID}\n")).expect("write pid file");
    let mut master = start_with_pid_file(&dir, &pid_file);
    wait_pid_file_is_ours(&mut master, &pid_file);
    let log = master.wait_ready();
    assert!(
        log.contains(&format!("event=stale-pid-file path={}", pid_file.display()))
            && log.contains(&format!("pid={IMPOSSIBLE_PID} action=take-over")),
        "{log}"
    );
    wait_serving(&Target::Tcp(listen_addr(&log, 0)));
    quit(&mut master);
    assert!(!pid_file.exists(), "pid file left after QUIT");
}

#[test]
fn pid_file_with_garbage_is_taken_over() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    std::fs::write(&pid_file, "not a pid\n").expect("write pid file");
    let mut master = start_with_pid_file(&dir, &pid_file);
    wait_pid_file_is_ours(&mut master, &pid_file);
    let log = master.wait_ready();
    assert!(
        log.contains(&format!("event=stale-pid-file path={}", pid_file.display()))
            && log.contains("action=take-over"),
        "{log}"
    );
    wait_serving(&Target::Tcp(listen_addr(&log, 0)));
}

#[test]
fn pid_file_naming_another_process_at_exit_is_left_alone() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let mut master = start_with_pid_file(&dir, &pid_file);
    wait_pid_file_is_ours(&mut master, &pid_file);
    master.wait_ready();
    // Another master took the pid file over while this one still runs.
    let other = format!("{}\n", std::process::id());
    std::fs::write(&pid_file, &other).expect("overwrite pid file");
    quit(&mut master);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("the other master's pid file is kept"),
        other
    );
}

#[test]
fn writing_the_pid_file_leaves_no_temp_files() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let mut master = start_with_pid_file(&dir, &pid_file);
    wait_pid_file_is_ours(&mut master, &pid_file);
    let log_name = master
        .log_path
        .file_name()
        .expect("log file name")
        .to_string_lossy()
        .into_owned();
    let entries = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir.path)
            .expect("read temp dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    // The master's private socket directory sits beside its pid file.
    let private = format!(".forkmaster-{}", nix::unistd::geteuid());
    assert_eq!(
        entries(),
        [private.clone(), "app.pid".to_string(), log_name.clone()]
    );
    quit(&mut master);
    assert_eq!(entries(), [private.clone(), log_name]);
    let left: Vec<_> = std::fs::read_dir(dir.join(&private))
        .expect("read the private directory")
        .collect();
    assert!(left.is_empty(), "the master removes its sockets: {left:?}");
}

#[test]
fn pid_file_in_a_missing_directory_fails_naming_it() {
    let dir = TempDir::new();
    let pid_file = dir.join("missing/app.pid");
    let out = Fixture::new(&dir).pid_file(&pid_file).tcp().run(secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_no_panic(&stderr);
    // The listen line is logged first; the error is the last line.
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "forkmaster: pid file {}: no such file or directory",
            pid_file.display()
        ),
        "{stderr}"
    );
}
